"""Model-based test: block commands through an LU on a protected volume agree with a bytearray.

Writes, WRITE SAME (with and without UNMAP), UNMAP, COMPARE AND WRITE and reads of
every CDB size run against both a real ``Volume`` behind a ``LogicalUnit`` and a
trivially correct model; overlapping LBAs come from a small address space.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_MISCOMPARE,
    READ,
    WRITE,
    cdb10,
    cdb16,
    compare_and_write,
    ready_lu,
    run,
    rw,
    sense_of,
    unmap_cdb,
    unmap_params,
    volume,
)

from target.scsi.command import ScsiCommand

NBLOCKS = 32
lbas = st.integers(0, NBLOCKS - 1)
counts = st.integers(1, 4)
fills = st.integers(0, 255)
sizes = st.sampled_from([6, 10, 12, 16])


class LuAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.vol = volume(self.tmp, nblocks=NBLOCKS)
        self.lu = ready_lu(self.vol)
        self.model = bytearray(NBLOCKS * BS)

    def _fit(self, lba: int, n: int) -> int:
        return min(n, NBLOCKS - lba)

    @rule(size=sizes, lba=lbas, n=counts, fill=fills, fua=st.booleans())
    def write(self, size: int, lba: int, n: int, fill: int, fua: bool) -> None:
        n = self._fit(lba, n)
        data = bytes([fill]) * (n * BS)
        resp = run(self.lu, rw(size, WRITE[size], lba, n, 0x08 if fua and size != 6 else 0), data)
        assert sense_of(resp) == EXPECT_GOOD
        self.model[lba * BS:(lba + n) * BS] = data

    @rule(lba=lbas, n=counts, fill=fills, unmap=st.booleans())
    def write_same(self, lba: int, n: int, fill: int, unmap: bool) -> None:
        n = self._fit(lba, n)
        resp = run(self.lu, cdb16(0x93, lba, n, 0x08 if unmap else 0), bytes([fill]) * BS)
        assert sense_of(resp) == EXPECT_GOOD
        # UNMAP=1 deallocates whatever the block holds; LBPRZ=1: it reads as zeros
        self.model[lba * BS:(lba + n) * BS] = bytes([0 if unmap else fill]) * (n * BS)

    @rule(ranges=st.lists(st.tuples(lbas, counts), max_size=3))
    def unmap(self, ranges: list[tuple[int, int]]) -> None:
        ranges = [(lba, self._fit(lba, n)) for lba, n in ranges]
        params = unmap_params(*ranges)
        assert sense_of(run(self.lu, unmap_cdb(len(params)), params)) == EXPECT_GOOD
        for lba, n in ranges:
            self.model[lba * BS:(lba + n) * BS] = bytes(n * BS)

    @rule(lba=lbas, n=counts, fill=fills, honest=st.booleans())
    def compare_and_write(self, lba: int, n: int, fill: int, honest: bool) -> None:
        n = self._fit(lba, n)
        current = bytes(self.model[lba * BS:(lba + n) * BS])
        compare = current if honest else bytes(b ^ 0x5A for b in current)
        resp = run(self.lu, compare_and_write(lba, n), compare + bytes([fill]) * (n * BS))
        if honest:
            assert sense_of(resp) == EXPECT_GOOD
            self.model[lba * BS:(lba + n) * BS] = bytes([fill]) * (n * BS)
        else:
            assert sense_of(resp) == EXPECT_MISCOMPARE

    @rule(size=sizes, lba=lbas, n=counts)
    def read(self, size: int, lba: int, n: int) -> None:
        n = self._fit(lba, n)
        resp = run(self.lu, rw(size, READ[size], lba, n), edtl=n * BS)
        assert bytes(resp.data_in) == self.model[lba * BS:(lba + n) * BS]

    @rule()
    def synchronize_cache(self) -> None:
        cmd_cdb = cdb10(0x35)
        resp = run(self.lu, cmd_cdb, edtl=0)
        assert resp.flush_before_status
        assert self.lu.complete_flush(ScsiCommand(cmd_cdb, None, 0), resp).status == 0

    @invariant()
    def capacity_unchanged(self) -> None:
        data = bytes(run(self.lu, cdb10(0x25), edtl=8).data_in)
        assert struct.unpack(">II", data) == (NBLOCKS - 1, BS)

    def teardown(self) -> None:
        assert self.vol.read(0, NBLOCKS) == self.model
        self.vol.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


LuAgainstModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                            deadline=None)
TestLuAgainstModel = LuAgainstModel.TestCase
