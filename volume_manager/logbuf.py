"""The log's write buffer: records are copied into memory, written out later.

A record used to go into the segment's page cache with one ``pwritev`` on the
writer's thread, the event loop: about 6 of the engine's 15 us per small write
here. Now the writer copies the record into a slab of anonymous memory (about
1.5 us for 4 KiB), and whoever makes the log durable (a group commit, or the
log writer streaming it out every MiB) writes the slabs to the segment in whole
aligned blocks, one system call for many records (past the page cache with
VolumeOptions.direct_log, the default, or through it), and then syncs. Until the records' data is
applied to the primary, the slab also serves it: overlay reads and the apply
itself read memory, not the log file.

A slab covers a stretch of one segment from an aligned file offset. The block
holding the end of the log is written with zeros after the end and rewritten,
with the same bytes in front, by the next write-out; a new slab starts at that
block and carries its head over. FORMAT.md ("Log writing") says why a reader
treats such zeros as the end of the log, and why rewriting the block is safe.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field

from volume_manager.fileio import DIRECT_ALIGN, libc

__all__ = ["ALIGN", "SLAB_BYTES", "Slab", "SlabPool", "align_down", "align_up"]

ALIGN = DIRECT_ALIGN
_MASK = ALIGN - 1
# Small enough that a slab is let go soon after its records are applied, large
# enough that a 1 MiB write rarely starts a new one.
SLAB_BYTES = 4 << 20
ZERO_BLOCK = bytes(ALIGN)
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
_MADV_FREE: int | None = getattr(mmap, "MADV_FREE", None)
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; Python 3.11's mmap does not name it
# Through ctypes, which lets go of the GIL for the call (mmap.madvise holds it).
_madvise = libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int


def align_down(n: int) -> int:
    return n & ~_MASK


def align_up(n: int) -> int:
    return (n + _MASK) & ~_MASK


@dataclass(eq=False, slots=True)
class Slab:
    """Log bytes of segment ``seg`` from file offset ``start`` (aligned) on."""

    seg: int
    fh: int              # the segment's handle that unapplied records name (Piece.fh)
    start: int
    mem: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)
    used: int = 0        # bytes of the slab holding log
    written: int = 0     # bytes of the slab whose write-out is done
    last_seq: int = 0    # newest record in the slab (0: none yet)

    @property
    def cap(self) -> int:
        return len(self.mem)

    def holds(self, fh: int, off: int, n: int) -> bool:
        return fh == self.fh and self.start <= off and off + n <= self.start + self.used


class SlabPool:
    """Slabs of the usual size kept for reuse: a fresh mapping pays a page fault
    per 4 KiB on first touch, and unmapping a used one frees every page (under
    1 MiB writes the two were a third of the target's system time). It keeps up
    to ``keep`` slabs, what a burst of writes had in flight at once; once the volume
    is idle their pages are lazily freed (:meth:`idle`)."""

    def __init__(self, keep: int) -> None:
        self._free: list[tuple[mmap.mmap, memoryview]] = []
        self._keep = keep
        self._holds = 0
        self._parked: list[Slab] = []
        self._lazy = 0  # the free slabs _free[:_lazy] have their pages lazily freed
        self.mapped = 0  # fresh mappings made (for tests and profiling)
        self.mapped_ahead = 0  # of which added from another thread (add)

    def take(self, seg: int, fh: int, start: int, cap: int) -> Slab:
        if cap == SLAB_BYTES and self._free:
            mem, view = self._free.pop()  # the newest first: lazily freed ones last
            self._lazy = min(self._lazy, len(self._free))
        else:
            # Populated at once: a fault per page as the copies touch them cost
            # twice as much here (6.7-7.2 against 3.2-3.4 us per 4 KiB record).
            mem = mmap.mmap(-1, max(cap, SLAB_BYTES), flags=_FLAGS)
            view = memoryview(mem)
            self.mapped += 1
        return Slab(seg, fh, start, mem, view)

    @staticmethod
    def fresh() -> mmap.mmap:
        """A new slab's memory, mapped and populated by another thread than the
        writer's, for :meth:`add`. It touches no pool state and lets go of the GIL
        while the kernel zeroes the pages (``mmap.mmap`` holds it through
        ``MAP_POPULATE``: the writer would wait as long as if it mapped them itself)."""
        mem = mmap.mmap(-1, SLAB_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(mem)
        try:
            address = ctypes.addressof(anchor)
            if _madvise(address, SLAB_BYTES, _MADV_POPULATE_WRITE) != 0:
                ctypes.memset(address, 0, SLAB_BYTES)  # a kernel before 5.14: touch them
        finally:
            del anchor  # the mapping may be closed again
        return mem

    def add(self, mem: mmap.mmap) -> bool:
        """Keep ``mem`` from :meth:`fresh` as a free slab, unless the pool is full."""
        if len(self._free) >= self._keep:
            return False
        self._free.append((mem, memoryview(mem)))
        self.mapped += 1
        self.mapped_ahead += 1
        return True

    def give(self, slab: Slab) -> None:
        if self._holds:
            self._parked.append(slab)
        else:
            self._keep_free(slab)

    def _keep_free(self, slab: Slab) -> None:
        # Others are unmapped when the last reference goes (a slice handed to a
        # reader may outlive the slab for a moment; closing would break it).
        if slab.cap == SLAB_BYTES and len(self._free) < self._keep:
            self._free.append((slab.mem, slab.view))

    def hold(self) -> None:
        """Until the matching :meth:`release`, slabs given back are not reused: their
        bytes stay as they are for a reader that took them before (the group commit
        applying records outside the volume's lock)."""
        self._holds += 1

    @property
    def parked(self) -> bool:
        return bool(self._parked)

    def release_upto(self, seq: int) -> None:
        """While held: give back for real the parked slabs whose records are all at or
        before ``seq``, which a reader going through the records in sequence order has
        passed. Kept parked until the pass ended, they made the writer map fresh slabs
        meanwhile: under 1 MiB writes here, 51-104 per GiB with the buffer kept between
        bursts; with this and a pool of twice the buffer, 0-1."""
        keep = []
        for slab in self._parked:
            if slab.last_seq <= seq:
                self._keep_free(slab)
            else:
                keep.append(slab)
        self._parked = keep

    def release(self) -> None:
        self._holds -= 1
        if not self._holds:
            parked, self._parked = self._parked, []
            for slab in parked:
                self._keep_free(slab)

    @property
    def hot(self) -> bool:
        """Some free slabs hold their pages for sure (not lazily freed by idle())."""
        return len(self._free) > self._lazy

    def idle(self) -> None:
        """The writes have stopped for now: the kernel may take the free slabs' pages
        back whenever it needs memory (``MADV_FREE``, as allocators do with freed
        memory), and until it does, reusing them costs nothing. Unmapped here instead,
        every burst mapped and zeroed its buffer afresh (with the slabs parked during
        applies, a fifth of the event loop's time under 1 MiB writes here). A page
        taken back reads as zeros on its next touch, and the write buffer writes every
        byte it reads, so nothing is lost. Without ``MADV_FREE``: all but one go."""
        if _MADV_FREE is not None:
            try:
                for mem, _view in self._free[self._lazy :]:
                    mem.madvise(_MADV_FREE)
            except OSError:  # a kernel before 4.5
                pass
            else:
                self._lazy = len(self._free)
                return
        self.trim(1)
        self._lazy = len(self._free)  # the one left is not "hot": idle() is not asked again

    def trim(self, keep: int = 1) -> None:
        """Let go of all but ``keep`` free slabs."""
        del self._free[keep:]
        self._lazy = min(self._lazy, len(self._free))

    def __len__(self) -> int:
        return len(self._free)
