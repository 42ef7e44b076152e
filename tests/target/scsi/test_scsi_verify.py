"""VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, SYNCHRONIZE CACHE, PRE-FETCH (scsi.md §6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_IU,
    EXPECT_LBA_OOB,
    EXPECT_MISCOMPARE,
    EXPECT_WRITE_PROTECTED,
    NBLOCKS,
    NEXUS,
    VERIFY,
    WRITE_VERIFY,
    Sense,
    cdb10,
    cdb16,
    compare_and_write,
    file_device,
    information,
    pattern,
    ready_lu,
    run,
    rw,
    sense_of,
    volume,
)

from target.scsi.command import ScsiCommand
from target.scsi.lu import LogicalUnit

BYTCHK = 0x02


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    lu = ready_lu(file_device(tmp_path))
    run(lu, cdb10(0x2A, 0, NBLOCKS), pattern(0, NBLOCKS))
    return lu


@pytest.mark.parametrize("size", (10, 12, 16))
def test_verify(lu: LogicalUnit, size: int) -> None:
    op = VERIFY[size]
    assert sense_of(run(lu, rw(size, op, 4, 3), edtl=0)) == EXPECT_GOOD  # medium only
    assert sense_of(run(lu, rw(size, op, 4, 3, BYTCHK), pattern(4, 3))) == EXPECT_GOOD
    assert sense_of(run(lu, rw(size, op, 4, 3, 0x10 | BYTCHK), pattern(4, 3))) == EXPECT_GOOD
    bad = bytearray(pattern(4, 3))
    bad[BS + 17] ^= 0xFF
    resp = run(lu, rw(size, op, 4, 3, BYTCHK), bytes(bad))
    assert sense_of(resp) == EXPECT_MISCOMPARE
    assert information(resp.sense or b"") == BS + 17
    # MismatchNoCmp: a corrupt buffer with BYTCHK=0 is not looked at.
    assert sense_of(run(lu, rw(size, op, 4, 3), bytes(bad))) == EXPECT_GOOD


VERIFY_ERRORS: list[tuple[str, int, int, int, Sense]] = [
    ("beyond eol", NBLOCKS - 1, 2, 0, EXPECT_LBA_OOB),
    ("zero blocks past end", NBLOCKS + 1, 0, 0, EXPECT_LBA_OOB),
    ("vrprotect", 0, 1, 0x20, EXPECT_INVALID_FIELD_IN_CDB),
    ("bytchk 10b", 0, 1, 0x04, EXPECT_INVALID_FIELD_IN_CDB),
]


@pytest.mark.parametrize("size", (10, 12, 16))
@pytest.mark.parametrize(("name", "lba", "n", "flags", "expect"), VERIFY_ERRORS,
                         ids=[c[0] for c in VERIFY_ERRORS])
def test_verify_and_write_verify_errors(lu: LogicalUnit, size: int, name: str, lba: int,
                                        n: int, flags: int, expect: Sense) -> None:
    before = lu.device.read(0, NBLOCKS)
    assert sense_of(run(lu, rw(size, VERIFY[size], lba, n, flags), edtl=0)) == expect
    resp = run(lu, rw(size, WRITE_VERIFY[size], lba, n, flags), bytes(n * BS))
    assert sense_of(resp) == expect
    assert lu.device.read(0, NBLOCKS) == before


@pytest.mark.parametrize("size", (10, 12, 16))
@pytest.mark.parametrize("flags", [0, BYTCHK, 0x10, 0x10 | BYTCHK])
def test_write_and_verify_writes(lu: LogicalUnit, size: int, flags: int) -> None:
    data = pattern(0, 2, seed=size + flags)
    resp = run(lu, rw(size, WRITE_VERIFY[size], 30, 2, flags), data)
    assert sense_of(resp) == EXPECT_GOOD
    assert resp.flush_before_status  # verified on the medium, so made durable first
    assert lu.device.read(30, 2) == data


def test_write_and_verify_on_read_only(tmp_path: Path) -> None:
    file_device(tmp_path)
    lu = ready_lu(file_device(tmp_path, read_only=True))
    resp = run(lu, rw(10, WRITE_VERIFY[10], 0, 1), bytes(BS))
    assert sense_of(resp) == EXPECT_WRITE_PROTECTED


@pytest.mark.parametrize("blocks", [1, 2, 255])
@pytest.mark.parametrize("at_end", [False, True])
def test_compare_and_write(tmp_path: Path, blocks: int, at_end: bool) -> None:
    lu = ready_lu(file_device(tmp_path, nblocks=600))
    lba = 600 - blocks if at_end else 0
    old, new = pattern(lba, blocks), pattern(lba, blocks, seed=7)
    run(lu, cdb10(0x2A, lba, blocks), old)
    resp = run(lu, compare_and_write(lba, blocks), old + new)
    assert sense_of(resp) == EXPECT_GOOD and not resp.flush_before_status
    assert lu.device.read(lba, blocks) == new
    # The medium now holds ``new``: comparing against ``old`` fails at byte 0, writes nothing.
    resp = run(lu, compare_and_write(lba, blocks), old + pattern(lba, blocks, seed=9))
    assert sense_of(resp) == EXPECT_MISCOMPARE
    assert information(resp.sense or b"") == 0
    assert lu.device.read(lba, blocks) == new


def test_compare_and_write_miscompare_offset_and_fua(lu: LogicalUnit) -> None:
    current = pattern(10, 2)
    wrong = bytearray(current)
    wrong[BS + 100] ^= 1
    resp = run(lu, compare_and_write(10, 2), bytes(wrong) + bytes(2 * BS))
    assert sense_of(resp) == EXPECT_MISCOMPARE and information(resp.sense or b"") == BS + 100
    assert lu.device.read(10, 2) == current
    resp = run(lu, compare_and_write(10, 2, 0x18), current + bytes(2 * BS))  # DPO + FUA
    assert sense_of(resp) == EXPECT_GOOD and resp.flush_before_status


CAW_ERRORS: list[tuple[str, bytes, int, Sense]] = [
    ("beyond eol", compare_and_write(NBLOCKS - 1, 2), 4 * BS, EXPECT_LBA_OOB),
    ("lba -1", compare_and_write(2**64 - 1, 1), 2 * BS, EXPECT_LBA_OOB),
    ("wrprotect", compare_and_write(0, 1, 0x40), 2 * BS, EXPECT_INVALID_FIELD_IN_CDB),
    ("data too short", compare_and_write(0, 2), 2 * BS, EXPECT_INVALID_IU),
    ("data too long", compare_and_write(0, 1), 3 * BS, EXPECT_INVALID_IU),
]


@pytest.mark.parametrize(("name", "cdb", "size", "expect"), CAW_ERRORS,
                         ids=[c[0] for c in CAW_ERRORS])
def test_compare_and_write_errors(lu: LogicalUnit, name: str, cdb: bytes, size: int,
                                  expect: Sense) -> None:
    before = lu.device.read(0, NBLOCKS)
    data = (before * 2)[:size]
    assert sense_of(run(lu, cdb, data)) == expect
    assert lu.device.read(0, NBLOCKS) == before


def test_compare_and_write_zero_blocks(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, compare_and_write(5, 0), b"")) == EXPECT_GOOD


def test_compare_and_write_zero_blocks_with_data_is_invalid(lu: LogicalUnit) -> None:
    # libiscsi's CompareAndWrite.Simple asks for 256 blocks, which the one-byte field
    # wraps to 0, with 2 * 256 blocks of data, and expects INVALID FIELD IN CDB.
    before = lu.device.read(0, NBLOCKS)
    resp = run(lu, compare_and_write(0, 0), bytes(2 * 4 * BS))
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert lu.device.read(0, NBLOCKS) == before


@pytest.mark.parametrize("cdb", [cdb10(0x35), cdb10(0x35, 10, 5, 0x02), cdb16(0x91, 0, 0),
                                 cdb16(0x91, NBLOCKS - 1, 1)])
def test_synchronize_cache_flushes_before_status(lu: LogicalUnit, cdb: bytes) -> None:
    resp = run(lu, cdb, edtl=0)
    assert sense_of(resp) == EXPECT_GOOD and resp.flush_before_status
    done = lu.complete_flush(ScsiCommand(cdb, None, 0, NEXUS), resp)
    assert done.status == resp.status and not done.flush_before_status


@pytest.mark.parametrize("cdb", [cdb10(0x35, NBLOCKS + 1, 0), cdb16(0x91, NBLOCKS - 1, 2),
                                 cdb10(0x34, NBLOCKS, 1), cdb16(0x90, 2**64 - 1, 1)])
def test_sync_and_prefetch_beyond_eol(lu: LogicalUnit, cdb: bytes) -> None:
    assert sense_of(run(lu, cdb, edtl=0)) == EXPECT_LBA_OOB


@pytest.mark.parametrize("cdb", [cdb10(0x34, 0, 8), cdb10(0x34, 0, 0, 0x02),
                                 cdb16(0x90, NBLOCKS - 1, 1), cdb16(0x90, NBLOCKS, 0)])
def test_prefetch(lu: LogicalUnit, cdb: bytes) -> None:
    resp = run(lu, cdb, edtl=0)
    assert sense_of(resp) == EXPECT_GOOD and not resp.flush_before_status


def test_compare_and_write_on_a_protected_volume(tmp_path: Path) -> None:
    vol = volume(tmp_path)
    try:
        lu = ready_lu(vol)
        old, new = pattern(3, 1), pattern(3, 1, seed=4)
        run(lu, cdb10(0x2A, 3, 1), old)
        assert sense_of(run(lu, compare_and_write(3, 1), old + new)) == EXPECT_GOOD
        assert sense_of(run(lu, compare_and_write(3, 1), old + new)) == EXPECT_MISCOMPARE
        assert vol.read(3, 1) == new
    finally:
        vol.close()
