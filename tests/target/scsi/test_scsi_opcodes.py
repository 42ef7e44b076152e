"""REPORT SUPPORTED OPERATION CODES (scsi.md §7; libiscsi ReportSupportedOpcodes.*)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_OPCODE,
    file_device,
    mode_sense6,
    ready_lu,
    run,
    sense_of,
)

from target.scsi.cdb import OPCODES, SERVICE_ACTION_IN_16
from target.scsi.lu import LogicalUnit
from target.scsi.opcodes import SUPPORTED


def rsoc(options: int, opcode: int = 0, sa: int = 0, *, rctd: bool = False,
         alloc: int = 65535, action: int = 0x0C) -> bytes:
    return struct.pack(">BBBBHIxB", 0xA3, action, (0x80 if rctd else 0) | options, opcode, sa,
                       alloc, 0)


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    return ready_lu(file_device(tmp_path))


def all_commands(lu: LogicalUnit, rctd: bool = False) -> list[tuple[int, int, int, int]]:
    resp = run(lu, rsoc(0, rctd=rctd), edtl=65535)
    assert sense_of(resp) == EXPECT_GOOD
    data = bytes(resp.data_in)
    assert int.from_bytes(data[0:4]) == len(data) - 4
    step = 20 if rctd else 8
    out = []
    for pos in range(4, len(data), step):
        op, sa, flags, length = struct.unpack(">BxHxBH", data[pos:pos + 8])
        if rctd:
            assert flags & 0x02 and data[pos + 8:pos + 10] == b"\x00\x0a"
        if not flags & 0x01:
            assert sa == 0  # SA must be 0 when SERVACTV=0
        out.append((op, sa, flags & 0x01, length))
    return out


def test_table_matches_what_execute_accepts() -> None:
    plain = {op for op, sa in SUPPORTED if sa is None}
    with_sa = {(op, sa) for op, sa in SUPPORTED if sa is not None}
    assert plain | {op for op, _ in with_sa} == set(OPCODES)
    assert {sa for op, sa in with_sa if op == 0x9E} == set(SERVICE_ACTION_IN_16)
    for (op, sa), usage in SUPPORTED.items():
        assert usage[0] == op
        if sa is not None:
            assert usage[1] & 0x1F == sa


def test_all_commands_and_one_command_agree(lu: LogicalUnit) -> None:
    listed = all_commands(lu)
    assert len(listed) == len(SUPPORTED)
    assert listed == all_commands(lu, rctd=True)
    for op, sa, servactv, length in listed:
        if servactv:
            assert sense_of(run(lu, rsoc(1, op, sa))) == EXPECT_INVALID_FIELD_IN_CDB
            resp = run(lu, rsoc(2, op, sa), edtl=65535)
        else:
            assert sense_of(run(lu, rsoc(2, op, sa))) == EXPECT_INVALID_FIELD_IN_CDB
            resp = run(lu, rsoc(1, op, sa), edtl=65535)
        data = bytes(resp.data_in)
        assert data[1] & 0x07 == 3 and int.from_bytes(data[2:4]) == length
        assert data[4] == op and len(data) == 4 + length


def test_dpo_fua_usage_matches_mode_sense(lu: LogicalUnit) -> None:
    dpofua = bytes(run(lu, mode_sense6(0x3F), edtl=255).data_in)[2] & 0x10
    for op in (0x28, 0x2A, 0x88, 0x8A, 0xA8, 0xAA, 0x89):
        data = bytes(run(lu, rsoc(1, op), edtl=65535).data_in)
        assert (data[5] & 0x18 == 0x18) == bool(dpofua)


def test_rctd_one_command_has_timeouts(lu: LogicalUnit) -> None:
    data = bytes(run(lu, rsoc(1, 0x28, rctd=True), edtl=65535).data_in)
    assert data[1] & 0x80 and len(data) == 4 + 10 + 12 and data[14:16] == b"\x00\x0a"


@pytest.mark.parametrize(("cdb", "support"), [(rsoc(1, 0x48), 1), (rsoc(2, 0x9E, 0x11), 1),
                                              (rsoc(2, 0x5E, 4), 1), (rsoc(1, 0x00), 3)])
def test_not_supported_is_reported_not_failed(lu: LogicalUnit, cdb: bytes, support: int) -> None:
    data = bytes(run(lu, cdb, edtl=512).data_in)
    assert data[1] & 0x07 == support


@pytest.mark.parametrize(("cdb", "expect"), [
    (rsoc(3), EXPECT_INVALID_FIELD_IN_CDB),
    (rsoc(7), EXPECT_INVALID_FIELD_IN_CDB),
    (rsoc(0, action=0x0A), EXPECT_INVALID_FIELD_IN_CDB),  # REPORT TARGET PORT GROUPS
    (rsoc(0, alloc=4), EXPECT_GOOD),
])
def test_rsoc_fields(lu: LogicalUnit, cdb: bytes, expect: tuple[int, int, int] | None) -> None:
    assert sense_of(run(lu, cdb)) == expect


def test_unsupported_opcodes_stay_unsupported(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, bytes([0x8B]) + bytes(15), edtl=BS)) == EXPECT_INVALID_OPCODE
