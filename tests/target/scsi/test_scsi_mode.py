"""MODE SENSE (6/10) and MODE SELECT (6/10), scsi.md §5."""

from __future__ import annotations

from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_FIELD_IN_PARAM,
    EXPECT_LBA_OOB,
    EXPECT_MODE_CHANGED,
    EXPECT_PARAM_LIST_LENGTH,
    EXPECT_POWER_ON,
    EXPECT_SAVING_NOT_SUPPORTED,
    NBLOCKS,
    OTHER,
    Sense,
    cdb10,
    cdb16,
    field_pointer,
    file_device,
    mode_select6,
    mode_select10,
    mode_sense6,
    mode_sense10,
    ready_lu,
    run,
    sense_of,
)

from target.scsi.lu import LogicalUnit


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    return ready_lu(file_device(tmp_path))


def sense6(lu: LogicalUnit, page: int, **kw: int | bool) -> bytes:
    resp = run(lu, mode_sense6(page, **kw), edtl=255)  # type: ignore[arg-type]
    assert sense_of(resp) == EXPECT_GOOD
    data = bytes(resp.data_in)
    assert data[0] == len(data) - 1
    return data


def test_caching_page_dbd(lu: LogicalUnit) -> None:
    data = sense6(lu, 0x08)
    assert data[2] == 0x10  # DPOFUA, not WP
    assert data[3] == 0  # no block descriptor
    assert data[4:6] == b"\x08\x12" and data[6] & 0x04  # WCE on by default
    assert len(data) == 4 + 20


def test_all_pages_in_ascending_order_and_consistent(lu: LogicalUnit) -> None:
    data = sense6(lu, 0x3F)
    pages, pos = [], 4
    while pos < len(data):
        pages.append(bytes(data[pos:pos + 2 + data[pos + 1]]))
        pos += 2 + data[pos + 1]
    assert [p[0] for p in pages] == [0x08, 0x0A]
    control = sense6(lu, 0x0A)[4:]
    assert pages[1] == control
    # ModeSense6.Control sanity: TST 0, QAM 1, QERR 0, UA_INTLCK_CTRL 0, AUTOLOAD 0.
    assert control[2] >> 5 == 0 and control[3] >> 4 in (0, 1) and (control[3] >> 1) & 3 != 2
    assert (control[4] >> 4) & 3 != 1 and control[5] & 7 <= 2


def test_block_descriptors(lu: LogicalUnit) -> None:
    data = sense6(lu, 0x08, dbd=False)
    assert data[3] == 8 and int.from_bytes(data[4:8]) == NBLOCKS
    assert int.from_bytes(data[9:12]) == BS
    resp = run(lu, mode_sense10(0x08, llbaa=True), edtl=512)
    d10 = bytes(resp.data_in)
    assert int.from_bytes(d10[0:2]) == len(d10) - 2
    assert d10[4] & 1 and int.from_bytes(d10[6:8]) == 16  # LONGLBA
    assert int.from_bytes(d10[8:16]) == NBLOCKS and int.from_bytes(d10[20:24]) == BS
    d10 = bytes(run(lu, mode_sense10(0x08), edtl=512).data_in)
    assert int.from_bytes(d10[6:8]) == 8


def test_page_control(lu: LogicalUnit) -> None:
    changeable = sense6(lu, 0x08, pc=1)
    assert changeable[4:6] == b"\x08\x12" and changeable[6] == 0x04
    assert sum(changeable[7:]) == 0
    assert sense6(lu, 0x3F, pc=2) == sense6(lu, 0x3F)
    resp = run(lu, mode_sense6(0x08, pc=3))
    assert sense_of(resp) == EXPECT_SAVING_NOT_SUPPORTED


MODE_SENSE_ERRORS: list[tuple[bytes, Sense, int]] = [
    (mode_sense6(0x1C), EXPECT_INVALID_FIELD_IN_CDB, 2),
    (mode_sense6(0x00), EXPECT_INVALID_FIELD_IN_CDB, 2),
    (mode_sense6(0x08, subpage=1), EXPECT_INVALID_FIELD_IN_CDB, 3),
    (mode_sense6(0x3F, subpage=5), EXPECT_INVALID_FIELD_IN_CDB, 3),
    (mode_sense10(0x19), EXPECT_INVALID_FIELD_IN_CDB, 2),
]


@pytest.mark.parametrize(("cdb", "expect", "byte"), MODE_SENSE_ERRORS)
def test_mode_sense_errors(lu: LogicalUnit, cdb: bytes, expect: Sense, byte: int) -> None:
    resp = run(lu, cdb)
    assert sense_of(resp) == expect
    assert field_pointer(resp.sense or b"")[:2] == (True, byte)


@pytest.mark.parametrize("alloc", [0, 1, 4, 12, 255])
def test_mode_sense_residuals(lu: LogicalUnit, alloc: int) -> None:
    full = sense6(lu, 0x3F)
    resp = run(lu, mode_sense6(0x3F, alloc=alloc), edtl=alloc)
    assert bytes(resp.data_in) == full[:alloc]
    assert resp.residual_overflow == 0
    assert resp.residual_underflow == alloc - min(alloc, len(full))


def caching_select(wce: bool, *, extra: bytes = b"") -> bytes:
    page = bytearray(sense6_page_default())
    page[2] = 0x04 if wce else 0
    return bytes(4) + bytes(page) + extra


def sense6_page_default() -> bytes:
    return bytes([0x08, 0x12, 0x04]) + bytes(17)


def test_mode_select_wce_off_then_writes_flush(lu: LogicalUnit) -> None:
    params = caching_select(False)
    resp = run(lu, mode_select6(len(params)), params)
    assert sense_of(resp) == EXPECT_GOOD
    assert resp.flush_before_status  # turning the cache off flushes what it held
    assert sense6(lu, 0x08)[6] & 0x04 == 0
    assert run(lu, cdb10(0x2A, 0, 1), bytes(BS)).flush_before_status
    params = caching_select(True)
    assert not run(lu, mode_select6(len(params)), params).flush_before_status
    assert not run(lu, cdb10(0x2A, 0, 1), bytes(BS)).flush_before_status


def test_mode_select_raises_unit_attention_for_other_nexuses(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, bytes(6), nexus=OTHER)) == EXPECT_POWER_ON
    params = caching_select(False)
    run(lu, mode_select6(len(params)), params)
    assert sense_of(run(lu, bytes(6))) == EXPECT_GOOD  # not to the one that changed it
    assert sense_of(run(lu, bytes(6), nexus=OTHER)) == EXPECT_MODE_CHANGED
    assert sense_of(run(lu, bytes(6), nexus=OTHER)) == EXPECT_GOOD
    # Selecting the same values again changes nothing and raises no UA.
    run(lu, mode_select6(len(params)), params)
    assert sense_of(run(lu, bytes(6), nexus=OTHER)) == EXPECT_GOOD


def test_mode_select10_with_block_descriptor_and_d_sense(lu: LogicalUnit) -> None:
    control = bytearray(bytes(run(lu, mode_sense10(0x0A, dbd=True), edtl=512).data_in)[8:])
    control[2] |= 0x04  # D_SENSE
    bd = (NBLOCKS).to_bytes(4) + bytes([0]) + BS.to_bytes(3)
    params = bytes(6) + (8).to_bytes(2) + bd + bytes(control)
    assert sense_of(run(lu, mode_select10(len(params)), params)) == EXPECT_GOOD
    resp = run(lu, cdb16(0x88, NBLOCKS, 1), edtl=BS)
    assert resp.sense is not None and resp.sense[0] == 0x72  # descriptor format now
    assert sense_of(resp) == EXPECT_LBA_OOB


def select_with(params: bytes, lu: LogicalUnit, **kw: bool) -> Sense | None:
    return sense_of(run(lu, mode_select6(len(params), **kw), params))


MODE_SELECT_ERRORS: list[tuple[str, bytes, dict[str, bool], Sense]] = [
    ("pf=0", caching_select(False), {"pf": False}, EXPECT_INVALID_FIELD_IN_CDB),
    ("sp=1", caching_select(False), {"sp": True}, EXPECT_INVALID_FIELD_IN_CDB),
    ("mode data length set", b"\x17" + caching_select(False)[1:], {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("change non-changeable bit", bytes(4) + bytes([0x08, 0x12, 0x05]) + bytes(17), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("wrong page length", bytes(4) + bytes([0x08, 0x0A]) + bytes(10), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("unknown page", bytes(4) + bytes([0x1C, 0x0A]) + bytes(10), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("subpage format", bytes(4) + bytes([0x48, 0x12]) + bytes(18), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("truncated page", caching_select(False)[:10], {}, EXPECT_PARAM_LIST_LENGTH),
    ("short header", b"\x00\x00", {}, EXPECT_PARAM_LIST_LENGTH),
    ("wrong block length", bytes([0, 0, 0, 8]) + bytes(5) + (4096).to_bytes(3), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
    ("bad descriptor length", bytes([0, 0, 0, 4, 0, 0, 0, 0]), {},
     EXPECT_INVALID_FIELD_IN_PARAM),
]


@pytest.mark.parametrize(("name", "params", "kw", "expect"), MODE_SELECT_ERRORS,
                         ids=[c[0] for c in MODE_SELECT_ERRORS])
def test_mode_select_errors_change_nothing(lu: LogicalUnit, name: str, params: bytes,
                                           kw: dict[str, bool], expect: Sense) -> None:
    before = sense6(lu, 0x3F)
    assert select_with(params, lu, **kw) == expect
    assert sense6(lu, 0x3F) == before


def test_mode_select_empty_list_is_a_no_op(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, mode_select6(0), b"")) == EXPECT_GOOD


def test_mode_select_data_shorter_than_parameter_list(lu: LogicalUnit) -> None:
    params = caching_select(False)
    resp = run(lu, mode_select6(len(params)), params[:8], edtl=8)
    assert sense_of(resp) == EXPECT_PARAM_LIST_LENGTH


def test_write_protect_bit_follows_device(tmp_path: Path) -> None:
    file_device(tmp_path)
    lu = ready_lu(file_device(tmp_path, read_only=True))
    assert sense6(lu, 0x08)[2] == 0x90  # WP + DPOFUA
