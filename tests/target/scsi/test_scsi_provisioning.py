"""UNMAP, WRITE SAME (10/16) and GET LBA STATUS (scsi.md §6), on files and protected volumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_FIELD_IN_PARAM,
    EXPECT_INVALID_IU,
    EXPECT_LBA_OOB,
    EXPECT_PARAM_LIST_LENGTH,
    EXPECT_WRITE_PROTECTED,
    NBLOCKS,
    Sense,
    cdb10,
    cdb16,
    file_device,
    get_lba_status,
    pattern,
    ready_lu,
    run,
    sense_of,
    unmap_cdb,
    unmap_params,
    volume,
)

from target.scsi.lu import LogicalUnit
from volume_manager.blockdev import FileBlockDevice


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    lu = ready_lu(file_device(tmp_path))
    run(lu, cdb10(0x2A, 0, NBLOCKS), pattern(0, NBLOCKS))
    return lu


def unmap(lu: LogicalUnit, *ranges: tuple[int, int]) -> Sense | None:
    params = unmap_params(*ranges)
    return sense_of(run(lu, unmap_cdb(len(params)), params))


def test_unmap_reads_back_zeros(lu: LogicalUnit) -> None:
    assert unmap(lu, (4, 3), (100, 1), (4, 2)) == EXPECT_GOOD  # overlaps allowed
    data = lu.device.read(0, NBLOCKS)
    expected = bytearray(pattern(0, NBLOCKS))
    for lba, n in ((4, 3), (100, 1)):
        expected[lba * BS:(lba + n) * BS] = bytes(n * BS)
    assert data == bytes(expected)


UNMAP_CASES: list[tuple[str, list[tuple[int, int]], Sense | None]] = [
    ("zero blocks at capacity", [(NBLOCKS, 0)], EXPECT_GOOD),
    ("no descriptors", [], EXPECT_GOOD),
    ("last block", [(NBLOCKS - 1, 1)], EXPECT_GOOD),
    ("one past end", [(NBLOCKS - 1, 2)], EXPECT_LBA_OOB),
    ("lba 2^64-1", [(2**64 - 1, 1)], EXPECT_LBA_OOB),
    ("second descriptor bad", [(0, 1), (NBLOCKS, 1)], EXPECT_LBA_OOB),
    ("too many blocks", [(0, 1 << 19), (0, 1 << 19), (0, 1)], EXPECT_INVALID_FIELD_IN_PARAM),
    ("too many descriptors", [(0, 0)] * 257, EXPECT_INVALID_FIELD_IN_PARAM),
]


@pytest.mark.parametrize(("name", "ranges", "expect"), UNMAP_CASES,
                         ids=[c[0] for c in UNMAP_CASES])
def test_unmap_cases(lu: LogicalUnit, name: str, ranges: list[tuple[int, int]],
                     expect: Sense | None) -> None:
    before = lu.device.read(0, NBLOCKS)
    assert unmap(lu, *ranges) == expect
    if expect is not EXPECT_GOOD:
        assert lu.device.read(0, NBLOCKS) == before  # a failed UNMAP unmaps nothing


@pytest.mark.parametrize("length", range(1, 8))
def test_unmap_short_parameter_list(lu: LogicalUnit, length: int) -> None:
    assert sense_of(run(lu, unmap_cdb(length), bytes(length))) == EXPECT_PARAM_LIST_LENGTH


def test_unmap_zero_length_and_anchor(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, unmap_cdb(0), b"")) == EXPECT_GOOD
    params = unmap_params((0, 1))
    resp = run(lu, unmap_cdb(len(params), anchor=True), params)
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB


def test_unmap_descriptor_length_beyond_list(lu: LogicalUnit) -> None:
    params = bytearray(unmap_params((0, 1)))
    params[3] = 32  # claims two descriptors, carries one
    assert sense_of(run(lu, unmap_cdb(len(params)), bytes(params))) == EXPECT_PARAM_LIST_LENGTH


def ws10(lba: int, n: int, flags: int = 0) -> bytes:
    return cdb10(0x41, lba, n, flags)


def ws16(lba: int, n: int, flags: int = 0) -> bytes:
    return cdb16(0x93, lba, n, flags)


def test_write_same_writes_the_block(lu: LogicalUnit) -> None:
    block = pattern(9, 1)
    for cdb in (ws10(10, 5), ws16(20, 5)):
        assert sense_of(run(lu, cdb, block)) == EXPECT_GOOD
    assert lu.device.read(10, 5) == block * 5 == lu.device.read(20, 5)


def test_write_same_zero_blocks_means_to_the_end(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, ws16(NBLOCKS - 10, 0, 0x08), bytes(BS))) == EXPECT_GOOD
    assert lu.device.read(NBLOCKS - 10, 10) == bytes(10 * BS)
    assert lu.device.read(NBLOCKS - 11, 1) == pattern(NBLOCKS - 11, 1)


def test_write_same_ndob_and_unmap(lu: LogicalUnit) -> None:
    assert sense_of(run(lu, ws16(0, 3, 0x09), None, edtl=0)) == EXPECT_GOOD  # NDOB + UNMAP
    assert lu.device.read(0, 3) == bytes(3 * BS)
    # UNMAP with a non-zero block still deallocates (what LIO does and libiscsi's
    # WriteSame10.UnmapUntilEnd expects): the blocks read back as zeros (LBPRZ=1).
    lu.device.write(5, pattern(1, 1) * 2)
    assert sense_of(run(lu, ws10(5, 2, 0x08), pattern(1, 1))) == EXPECT_GOOD
    assert lu.device.read(5, 2) == bytes(2 * BS)


WRITE_SAME_ERRORS: list[tuple[str, bytes, bytes | None, Sense]] = [
    ("beyond eol", ws10(NBLOCKS - 1, 2), bytes(BS), EXPECT_LBA_OOB),
    ("lba 2^31", ws10(2**31, 1), bytes(BS), EXPECT_LBA_OOB),
    ("lba -1", ws16(2**64 - 1, 1), bytes(BS), EXPECT_LBA_OOB),
    ("anchor", ws10(0, 1, 0x18), bytes(BS), EXPECT_INVALID_FIELD_IN_CDB),
    ("anchor without unmap", ws16(0, 1, 0x10), bytes(BS), EXPECT_INVALID_FIELD_IN_CDB),
    ("wrprotect", ws10(0, 1, 0x20), bytes(BS), EXPECT_INVALID_FIELD_IN_CDB),
    ("lbdata", ws10(0, 1, 0x02), bytes(BS), EXPECT_INVALID_FIELD_IN_CDB),
    ("two blocks of data", ws10(0, 1), bytes(2 * BS), EXPECT_INVALID_IU),
    ("half a block", ws16(0, 1), bytes(BS // 2), EXPECT_INVALID_IU),
    ("no data", ws10(0, 1), None, EXPECT_INVALID_IU),
]


@pytest.mark.parametrize(("name", "cdb", "data", "expect"), WRITE_SAME_ERRORS,
                         ids=[c[0] for c in WRITE_SAME_ERRORS])
def test_write_same_errors(lu: LogicalUnit, name: str, cdb: bytes, data: bytes | None,
                           expect: Sense) -> None:
    before = lu.device.read(0, NBLOCKS)
    assert sense_of(run(lu, cdb, data, edtl=len(data or b""))) == expect
    assert lu.device.read(0, NBLOCKS) == before


def test_write_same_too_long(tmp_path: Path) -> None:
    lu = ready_lu(file_device(tmp_path, nblocks=(1 << 20) + 1))
    resp = run(lu, ws16(0, 0), bytes(BS))  # to the end: one block more than the maximum
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB


def test_provisioning_on_read_only(tmp_path: Path) -> None:
    file_device(tmp_path)
    lu = ready_lu(file_device(tmp_path, read_only=True))
    params = unmap_params((0, 1))
    assert sense_of(run(lu, unmap_cdb(len(params)), params)) == EXPECT_WRITE_PROTECTED
    assert sense_of(run(lu, ws10(0, 1), bytes(BS))) == EXPECT_WRITE_PROTECTED


class ThinFile(FileBlockDevice):
    """A file device that remembers which blocks are deallocated (for GET LBA STATUS)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, block_size=BS)
        self.unmapped: set[int] = set()

    def unmap(self, lba: int, count: int) -> None:
        super().unmap(lba, count)
        self.unmapped.update(range(lba, lba + count))

    def lba_status(self, lba: int, count: int) -> Iterator[tuple[int, int, bool]]:
        start = lba
        for i in range(lba + 1, lba + count + 1):
            if i == lba + count or (i in self.unmapped) != (start in self.unmapped):
                yield start, i - start, start not in self.unmapped
                start = i


def lba_status(lu: LogicalUnit, lba: int, alloc: int = 200) -> list[tuple[int, int, int]]:
    resp = run(lu, get_lba_status(lba, alloc), edtl=alloc)
    assert sense_of(resp) == EXPECT_GOOD
    data = bytes(resp.data_in)
    assert int.from_bytes(data[0:4]) == len(data) - 4 or len(data) == alloc
    return [(int.from_bytes(data[p:p + 8]), int.from_bytes(data[p + 8:p + 12]), data[p + 12])
            for p in range(8, len(data) - 15, 16)]


def test_get_lba_status_without_provider_reports_mapped(lu: LogicalUnit) -> None:
    assert lba_status(lu, 10) == [(10, NBLOCKS - 10, 0)]
    assert sense_of(run(lu, get_lba_status(NBLOCKS))) == EXPECT_LBA_OOB
    assert sense_of(run(lu, get_lba_status(2**64 - 1))) == EXPECT_LBA_OOB


def test_get_lba_status_with_provider(tmp_path: Path) -> None:
    file_device(tmp_path)
    lu = ready_lu(ThinFile(tmp_path / "disk.img"))
    assert unmap(lu, (8, 4)) == EXPECT_GOOD
    assert lba_status(lu, 8) == [(8, 4, 1), (12, NBLOCKS - 12, 0)]
    assert lba_status(lu, 0) == [(0, 8, 0), (8, 4, 1), (12, NBLOCKS - 12, 0)]
    assert lba_status(lu, 0, alloc=24) == [(0, 8, 0)]  # as many as fit


def test_unmap_and_write_same_on_a_protected_volume(tmp_path: Path) -> None:
    vol = volume(tmp_path)
    try:
        lu = ready_lu(vol)
        run(lu, cdb10(0x2A, 0, 16), pattern(0, 16))
        seq = vol.seq
        assert unmap(lu, (2, 3)) == EXPECT_GOOD
        assert sense_of(run(lu, ws16(8, 2, 0x08), bytes(BS))) == EXPECT_GOOD
        assert vol.seq > seq  # journalled like writes
        data = vol.read(0, 16)
        assert data[2 * BS:5 * BS] == bytes(3 * BS) and data[8 * BS:10 * BS] == bytes(2 * BS)
        assert data[:2 * BS] == pattern(0, 2)
    finally:
        vol.close()
