"""A writable block device over a read-only one: the scratch area of a writable image.

A point-in-time image is read-only by nature (its history is fixed); a host that needs to
write to one (mount a journaled file system, run fsck) gets a ``ScratchOverlay``: writes
land in a sparse scratch file of its own, reads take the scratch copy where one exists and
the image elsewhere. The volume and its history are never touched.

Theory of operation:

- The overlay works in chunks of ``CHUNK`` bytes (or the block size, if larger). The first
  write into a chunk copies the rest of that chunk from the base, so a chunk is either
  wholly in the scratch file or not at all; which chunks are is the file's allocation,
  found with SEEK_DATA/SEEK_HOLE when the overlay opens, so it needs no map file and comes
  back after a restart. File systems allocate in blocks of at most 4 KiB here, which is
  why CHUNK is 4 KiB: a smaller write never makes a neighbour look written.
- UNMAP writes zeros over the range in the scratch file (it must mask the base).
- ``flush`` makes the scratch file durable (fdatasync); FUA writes do so at once.
"""

from __future__ import annotations

import os

import numpy as np

from volume_manager.blockdev import BlockDevice, check_range
from volume_manager.errors import VolumeClosedError
from volume_manager.fileio import OsFiles

__all__ = ["CHUNK", "ScratchOverlay"]

CHUNK = 4096


class ScratchOverlay:
    """``BlockDevice`` over ``base`` keeping writes in the file at ``path``."""

    def __init__(self, base: BlockDevice, path: str) -> None:
        self.base = base
        self.path = path
        self.block_size = base.block_size
        self.num_blocks = base.num_blocks
        self._chunk = max(CHUNK, self.block_size)
        self._per_chunk = self._chunk // self.block_size
        size = self.num_blocks * self.block_size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            nchunks = -(-size // self._chunk)
            self._present = np.zeros(nchunks, dtype=bool)
            for start, length in OsFiles().data_extents(self._fd):
                end = min(start + length, size)
                self._present[start // self._chunk : -(-end // self._chunk)] = True
        except BaseException:
            os.close(self._fd)
            raise
        self._closed = False

    @property
    def read_only(self) -> bool:
        return False

    @property
    def written_bytes(self) -> int:
        """Bytes of the scratch area in use."""
        return int(self._present.sum()) * self._chunk

    def read(self, lba: int, count: int) -> bytes | bytearray:
        check_range(lba, count, self.num_blocks)
        self._check_open()
        first, last = lba // self._per_chunk, (lba + count - 1) // self._per_chunk
        present = self._present[first : last + 1]
        if count == 0 or not present.any():
            return self.base.read(lba, count)
        bs = self.block_size
        if present.all():
            return os.pread(self._fd, count * bs, lba * bs)
        out = bytearray(self.base.read(lba, count))
        # Splice in the runs of chunks the scratch file holds.
        for run_start, run_end in _runs(present):
            lo = max(lba, (first + run_start) * self._per_chunk)
            hi = min(lba + count, (first + run_end) * self._per_chunk)
            out[(lo - lba) * bs : (hi - lba) * bs] = os.pread(self._fd, (hi - lo) * bs, lo * bs)
        return bytes(out)

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        bs = self.block_size
        count, rest = divmod(len(data), bs)
        if rest:
            raise ValueError(f"write of {len(data)} bytes is not whole {bs}-byte blocks")
        check_range(lba, count, self.num_blocks)
        self._check_open()
        if count == 0:
            return
        self._fill_edges(lba, count)
        os.pwrite(self._fd, data, lba * bs)
        self._present[lba // self._per_chunk : (lba + count - 1) // self._per_chunk + 1] = True
        if fua:
            os.fdatasync(self._fd)

    def unmap(self, lba: int, count: int) -> None:
        check_range(lba, count, self.num_blocks)
        step = max(1, (1 << 20) // self.block_size)
        for start in range(lba, lba + count, step):
            n = min(step, lba + count - start)
            self.write(start, bytes(n * self.block_size))

    def flush(self) -> None:
        self._check_open()
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def _check_open(self) -> None:
        if self._closed:
            raise VolumeClosedError(f"image scratch area {self.path} is closed")

    def _fill_edges(self, lba: int, count: int) -> None:
        """Copy from the base the parts of the first and last chunk the write leaves
        uncovered, for chunks not yet in the scratch file."""
        per, bs = self._per_chunk, self.block_size
        for chunk in {lba // per, (lba + count - 1) // per}:
            if self._present[chunk]:
                continue
            c_lo = chunk * per
            c_hi = min(c_lo + per, self.num_blocks)
            if lba <= c_lo and lba + count >= c_hi:
                continue  # the write covers the whole chunk
            os.pwrite(self._fd, self.base.read(c_lo, c_hi - c_lo), c_lo * bs)
            self._present[chunk] = True

    def __enter__(self) -> ScratchOverlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
