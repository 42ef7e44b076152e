"""PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE(6), two nexuses (scsi.md §9, libiscsi Prout*)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_FIELD_IN_PARAM,
    EXPECT_PARAM_LIST_LENGTH,
    NEXUS,
    OTHER,
    Sense,
    cdb10,
    file_device,
    inquiry,
    mode_sense6,
    pattern,
    ready_lu,
    report_luns,
    request_sense,
    run,
    sense_of,
)

from target.scsi.command import ScsiResponse
from target.scsi.lu import LogicalUnit
from target.scsi.reservations import PrType
from target.scsi.sense import ScsiStatus

I1, I2 = NEXUS, OTHER
K1, K2 = 0x1111, 0x2222
CONFLICT = "conflict"

REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REGISTER_IGNORE, MOVE = range(8)


def prin(action: int, alloc: int = 1024) -> bytes:
    return struct.pack(">BB5xHB", 0x5E, action, alloc, 0)


def prout(action: int, rtype: int = 0, length: int = 24, scope: int = 0) -> bytes:
    return struct.pack(">BBB2xIB", 0x5F, action, (scope << 4) | rtype, length, 0)


def params(key: int = 0, sark: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">QQ4xB3x", key, sark, flags)


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    lu = ready_lu(file_device(tmp_path))
    run(lu, bytes(6), nexus=I2)  # I2 consumes its POWER ON unit attention
    return lu


def out(lu: LogicalUnit, nexus: str, action: int, key: int = 0, sark: int = 0,
        rtype: int = 0, flags: int = 0) -> Sense | str | None:
    resp = run(lu, prout(action, rtype), params(key, sark, flags), nexus=nexus)
    return outcome(resp)


def outcome(resp: ScsiResponse) -> Sense | str | None:
    if resp.status == ScsiStatus.RESERVATION_CONFLICT:
        assert resp.sense is None
        return CONFLICT
    return sense_of(resp)


def read_keys(lu: LogicalUnit, nexus: str = I1) -> tuple[int, list[int]]:
    data = bytes(run(lu, prin(0), nexus=nexus).data_in)
    gen, length = struct.unpack(">II", data[:8])
    return gen, [int.from_bytes(data[i:i + 8]) for i in range(8, 8 + length, 8)]


def read_reservation(lu: LogicalUnit, nexus: str = I1) -> tuple[int, int] | None:
    data = bytes(run(lu, prin(1), nexus=nexus).data_in)
    if int.from_bytes(data[4:8]) == 0:
        return None
    return int.from_bytes(data[8:16]), data[21] & 0x0F


def test_register_rules(lu: LogicalUnit) -> None:
    assert out(lu, I1, REGISTER, key=5, sark=K1) == CONFLICT  # unregistered needs key 0
    assert out(lu, I1, REGISTER, sark=0) == EXPECT_GOOD  # no-op
    assert read_keys(lu) == (0, [])
    assert out(lu, I1, REGISTER, sark=K1) == EXPECT_GOOD
    assert out(lu, I1, REGISTER, key=0, sark=K2) == CONFLICT  # re-register with wrong key
    assert out(lu, I2, REGISTER, sark=K2) == EXPECT_GOOD
    assert read_keys(lu) == (2, [K1, K2])
    assert out(lu, I1, REGISTER_IGNORE, key=999, sark=0x33) == EXPECT_GOOD
    assert read_keys(lu) == (3, [0x33, K2])
    assert out(lu, I1, REGISTER, key=0x33, sark=0) == EXPECT_GOOD  # unregister
    assert read_keys(lu) == (4, [K2])


def test_unregistered_nexus_conflicts_on_other_actions(lu: LogicalUnit) -> None:
    for action in (RESERVE, RELEASE, CLEAR, PREEMPT):
        assert out(lu, I1, action, key=0, rtype=1) == CONFLICT
    out(lu, I1, REGISTER, sark=K1)
    assert out(lu, I1, RESERVE, key=K2, rtype=1) == CONFLICT  # wrong key


PROUT_ERRORS: list[tuple[str, bytes, bytes, Sense]] = [
    ("short list", prout(REGISTER, length=23), params(sark=K1)[:23], EXPECT_PARAM_LIST_LENGTH),
    ("long list", prout(REGISTER, length=28), params(sark=K1) + bytes(4),
     EXPECT_PARAM_LIST_LENGTH),
    ("aptpl", prout(REGISTER), params(sark=K1, flags=0x01), EXPECT_INVALID_FIELD_IN_PARAM),
    ("spec_i_pt", prout(REGISTER), params(sark=K1, flags=0x08), EXPECT_INVALID_FIELD_IN_PARAM),
    ("all_tg_pt", prout(REGISTER), params(sark=K1, flags=0x04), EXPECT_INVALID_FIELD_IN_PARAM),
    ("register and move", prout(MOVE), params(sark=K1), EXPECT_INVALID_FIELD_IN_CDB),
    ("bad type", prout(RESERVE, rtype=2), params(K1), EXPECT_INVALID_FIELD_IN_CDB),
    ("bad scope", prout(RESERVE, rtype=1, scope=1), params(K1), EXPECT_INVALID_FIELD_IN_CDB),
    ("service action 9", prout(9), params(), EXPECT_INVALID_FIELD_IN_CDB),
]


@pytest.mark.parametrize(("name", "cdb", "data", "expect"), PROUT_ERRORS,
                         ids=[c[0] for c in PROUT_ERRORS])
def test_prout_errors(lu: LogicalUnit, name: str, cdb: bytes, data: bytes,
                      expect: Sense) -> None:
    assert sense_of(run(lu, cdb, data)) == expect
    assert read_keys(lu) == (0, [])


@pytest.mark.parametrize("action", range(32))
def test_prin_service_action_range(lu: LogicalUnit, action: int) -> None:
    expect = EXPECT_GOOD if action < 4 else EXPECT_INVALID_FIELD_IN_CDB
    assert sense_of(run(lu, prin(action))) == expect


def test_report_capabilities(lu: LogicalUnit) -> None:
    data = bytes(run(lu, prin(2)).data_in)
    assert int.from_bytes(data[0:2]) == 8 == len(data)
    assert data[2] & 0x01 == 0 and data[3] & 0x80 and (data[3] >> 4) & 7 <= 5
    assert data[4:6] == bytes([0xEA, 0x01])


def test_read_full_status(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    out(lu, I1, RESERVE, key=K1, rtype=PrType.WRITE_EXCLUSIVE)
    data = bytes(run(lu, prin(3)).data_in)
    gen, length = struct.unpack(">II", data[:8])
    assert gen == 2 and length == len(data) - 8
    pos, seen = 8, []
    while pos < len(data):
        key, flags, scope_type = int.from_bytes(data[pos:pos + 8]), data[pos + 12], data[pos + 13]
        tid_len = int.from_bytes(data[pos + 20:pos + 24])
        tid = data[pos + 24:pos + 24 + tid_len]
        assert tid[0] == 0x45 and tid_len % 4 == 0 and tid_len >= 24
        seen.append((key, flags & 1, scope_type, tid[4:].rstrip(b"\0")))
        pos += 24 + tid_len
    assert seen == [(K1, 1, 1, I1.encode()), (K2, 0, 0, I2.encode())]


def test_reserve_release(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    assert out(lu, I1, RESERVE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS) == EXPECT_GOOD
    assert out(lu, I1, RESERVE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS) == EXPECT_GOOD
    assert out(lu, I1, RESERVE, key=K1, rtype=PrType.WRITE_EXCLUSIVE) == CONFLICT
    assert out(lu, I2, RESERVE, key=K2, rtype=PrType.EXCLUSIVE_ACCESS) == CONFLICT
    assert read_reservation(lu) == (K1, PrType.EXCLUSIVE_ACCESS)
    gen = read_keys(lu)[0]
    assert out(lu, I2, RELEASE, key=K2, rtype=PrType.EXCLUSIVE_ACCESS) == EXPECT_GOOD  # no-op
    assert read_reservation(lu) is not None
    assert out(lu, I1, RELEASE, key=K1, rtype=PrType.WRITE_EXCLUSIVE) == (0x05, 0x26, 0x04)
    assert out(lu, I1, RELEASE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS) == EXPECT_GOOD
    assert read_reservation(lu) is None
    assert read_keys(lu)[0] == gen  # RESERVE/RELEASE leave PRGENERATION alone


# type -> (I2 registered?) -> (I2 may read, I2 may write)
ACCESS: list[tuple[PrType, bool, bool, bool]] = [
    (PrType.WRITE_EXCLUSIVE, False, True, False),
    (PrType.WRITE_EXCLUSIVE, True, True, False),
    (PrType.EXCLUSIVE_ACCESS, False, False, False),
    (PrType.EXCLUSIVE_ACCESS, True, False, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, False, True, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, True, True, True),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, False, False, False),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, True, True, True),
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, False, True, False),
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, True, True, True),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, False, False, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, True, True, True),
]


@pytest.mark.parametrize(("rtype", "registered", "may_read", "may_write"), ACCESS)
def test_access_by_type(lu: LogicalUnit, rtype: PrType, registered: bool, may_read: bool,
                        may_write: bool) -> None:
    out(lu, I1, REGISTER, sark=K1)
    if registered:
        out(lu, I2, REGISTER, sark=K2)
    assert out(lu, I1, RESERVE, key=K1, rtype=rtype) == EXPECT_GOOD
    read = outcome(run(lu, cdb10(0x28, 0, 1), edtl=BS, nexus=I2))
    write = outcome(run(lu, cdb10(0x2A, 0, 1), pattern(0, 1), nexus=I2))
    assert (read == EXPECT_GOOD, write == EXPECT_GOOD) == (may_read, may_write)
    assert write in (EXPECT_GOOD, CONFLICT) and read in (EXPECT_GOOD, CONFLICT)
    # The holder always may; some commands never conflict.
    assert outcome(run(lu, cdb10(0x2A, 1, 1), pattern(1, 1))) == EXPECT_GOOD
    for cdb in (inquiry(), report_luns(), request_sense(), bytes(6), cdb10(0x25), prin(0)):
        assert outcome(run(lu, cdb, nexus=I2)) == EXPECT_GOOD


def test_holder_unregistering_drops_reservation_without_ua_to_itself(lu: LogicalUnit) -> None:
    for rtype in (PrType.WRITE_EXCLUSIVE, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY):
        out(lu, I1, REGISTER, sark=K1)
        out(lu, I2, REGISTER, sark=K2)
        out(lu, I1, RESERVE, key=K1, rtype=rtype)
        assert out(lu, I1, REGISTER, key=K1, sark=0) == EXPECT_GOOD
        assert read_reservation(lu) is None  # I1 reads it without hitting a UA
        assert sense_of(run(lu, bytes(6))) == EXPECT_GOOD
        expect = (0x06, 0x2A, 0x04) if rtype.registrants else EXPECT_GOOD
        assert sense_of(run(lu, bytes(6), nexus=I2)) == expect
        out(lu, I2, REGISTER, key=K2, sark=0)


def test_all_registrants_reservation_outlives_its_creator(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    out(lu, I1, RESERVE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    assert read_reservation(lu) == (0, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    out(lu, I1, REGISTER, key=K1, sark=0)
    assert read_reservation(lu) == (0, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    assert outcome(run(lu, cdb10(0x28, 0, 1), edtl=BS)) == CONFLICT  # I1 is out now
    out(lu, I2, REGISTER, key=K2, sark=0)
    assert read_reservation(lu) is None


def test_clear(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    out(lu, I1, RESERVE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS)
    gen = read_keys(lu)[0]
    assert out(lu, I2, CLEAR, key=K2) == EXPECT_GOOD
    assert read_keys(lu, I2) == (gen + 1, []) and read_reservation(lu, I2) is None
    assert sense_of(run(lu, bytes(6))) == (0x06, 0x2A, 0x03)
    assert sense_of(run(lu, bytes(6), nexus=I2)) == EXPECT_GOOD


@pytest.mark.parametrize("action", [PREEMPT, PREEMPT_ABORT])
def test_preempt_takes_the_reservation(lu: LogicalUnit, action: int) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    out(lu, I1, RESERVE, key=K1, rtype=PrType.WRITE_EXCLUSIVE)
    gen = read_keys(lu)[0]
    assert out(lu, I2, action, key=K2, sark=K1, rtype=PrType.EXCLUSIVE_ACCESS) == EXPECT_GOOD
    assert read_keys(lu, I2) == (gen + 1, [K2])
    assert read_reservation(lu, I2) == (K2, PrType.EXCLUSIVE_ACCESS)
    assert sense_of(run(lu, bytes(6))) == (0x06, 0x2A, 0x05)
    assert outcome(run(lu, cdb10(0x28, 0, 1), edtl=BS)) == CONFLICT


def test_preempt_without_reservation_and_errors(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I2, REGISTER, sark=K2)
    assert out(lu, I2, PREEMPT, key=K2, sark=0x999, rtype=1) == CONFLICT  # unknown key
    assert out(lu, I2, PREEMPT, key=K2, sark=0, rtype=1) == CONFLICT
    assert out(lu, I2, PREEMPT, key=K2, sark=K1, rtype=1) == EXPECT_GOOD
    assert read_keys(lu, I2)[1] == [K2] and read_reservation(lu, I2) is None
    out(lu, I2, RESERVE, key=K2, rtype=PrType.WRITE_EXCLUSIVE)
    assert out(lu, I2, PREEMPT, key=K2, sark=0, rtype=1) == EXPECT_INVALID_FIELD_IN_PARAM


def test_reserve6(lu: LogicalUnit) -> None:
    reserve, release = bytes([0x16, 0, 0, 0, 0, 0]), bytes([0x17, 0, 0, 0, 0, 0])
    assert outcome(run(lu, reserve, edtl=0)) == EXPECT_GOOD
    assert outcome(run(lu, reserve, edtl=0)) == EXPECT_GOOD  # the holder may re-reserve
    assert outcome(run(lu, reserve, edtl=0, nexus=I2)) == CONFLICT
    assert outcome(run(lu, mode_sense6(0x3F), nexus=I2)) == CONFLICT  # Reserve6.2Initiators
    assert outcome(run(lu, bytes(6), nexus=I2)) == CONFLICT
    for cdb in (inquiry(), report_luns(), request_sense(), prin(0), release):
        assert outcome(run(lu, cdb, nexus=I2)) == EXPECT_GOOD  # RELEASE from I2: a no-op
    assert outcome(run(lu, cdb10(0x28, 0, 1), edtl=BS, nexus=I2)) == CONFLICT
    lu.reset()
    run(lu, bytes(6), nexus=I2)  # the reset's unit attention
    assert outcome(run(lu, cdb10(0x28, 0, 1), edtl=BS, nexus=I2)) == EXPECT_GOOD
    run(lu, bytes(6))
    assert outcome(run(lu, reserve, edtl=0)) == EXPECT_GOOD
    lu.nexus_lost(I1)
    assert outcome(run(lu, reserve, edtl=0, nexus=I2)) == EXPECT_GOOD
    assert outcome(run(lu, release, edtl=0, nexus=I2)) == EXPECT_GOOD
    # RESERVE(6) while persistent registrations exist conflicts.
    out(lu, I2, REGISTER, sark=K2)
    assert outcome(run(lu, reserve, edtl=0, nexus=I2)) == CONFLICT
    assert sense_of(run(lu, bytes([0x16, 0x02, 0, 0, 0, 0]), edtl=0, nexus=I2)) == \
        EXPECT_INVALID_FIELD_IN_CDB


def test_registrations_survive_reset_and_nexus_loss(lu: LogicalUnit) -> None:
    out(lu, I1, REGISTER, sark=K1)
    out(lu, I1, RESERVE, key=K1, rtype=PrType.EXCLUSIVE_ACCESS)
    lu.reset()
    lu.nexus_lost(I1)
    assert sense_of(run(lu, bytes(6), nexus=I2)) == (0x06, 0x29, 0x03)
    assert read_keys(lu, I2) == (1, [K1])
    assert read_reservation(lu, I2) == (K1, PrType.EXCLUSIVE_ACCESS)
