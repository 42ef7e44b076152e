"""The overlay of unapplied writes: records whose log entries are not yet durable.

The write-ahead rule says primary data may reach the disk only after the log
record describing it is durable. Writes therefore land here first; a group
commit makes the log durable and then applies the overlay to the primary in
sequence order. Until then, reads of these blocks are patched from here. The
overlay holds no data, only where each record's data sits in the log: the data
is copied once, from the caller's buffer into the log's write buffer in memory
(logbuf.py), and read from there when applied or read.

The hot path is an append: records are kept in sequence order, and a dict
from fixed-size *chunks* of the block space to the records touching them
answers "does this read overlap anything?" with a lookup or two, so neither a
write nor a read pays for the size of the overlay. Overlapping records are
not merged; a read lays them on its buffer oldest first, so the newest wins.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CHUNK_BLOCKS", "RECORD_FIELDS", "PendingMap", "Piece", "pieces"]

CHUNK_SHIFT = 7
CHUNK_BLOCKS = 1 << CHUNK_SHIFT
_W = 6  # fields per record in the flat array
_LINK = 5  # the field holding the previous record wholly inside the same chunk
# One record as the array's bytes: frombytes of a packed row costs about a third of
# extend() with a tuple, which converts item by item (this is on every host write).
_ROW = struct.Struct(f"={_W}q")


@dataclass(slots=True)
class Piece:
    lba: int
    count: int
    seq: int
    fh: int   # log segment holding the data; -1: the blocks read as zeros (an unmap)
    off: int  # byte offset of the data of block ``lba`` in that segment


RECORD_FIELDS = _W


def pieces(records: array[int]) -> list[Piece]:
    """Rows of records (PendingMap.upto, take_upto) as Pieces."""
    return [Piece(*records[k: k + _LINK]) for k in range(0, len(records), _W)]


# Why flat arrays and not one object per record: an insert is on every host
# write, and allocating objects there costs both the allocation and the cyclic
# garbage collector's repeated walks over tens of thousands of live records.
# Records live in one array of ints. A record that lies inside one chunk (nearly
# every small write) costs one extend and one dict store: the chunk maps to its
# newest such record, and each record links to the one before it in its chunk.
# Only records crossing a chunk edge are listed per chunk, in ``_wide``.


class PendingMap:
    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._rec = array("q")  # (lba, count, seq, fh, off, link) per record, seq order
        self._base = 0          # record number of _rec's first record
        self._newest: dict[int, int] = {}
        self._wide: dict[int, array[int]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._rec) // _W

    def insert(self, lba: int, count: int, seq: int, fh: int, off: int) -> None:
        """Add a record; ``seq`` must be larger than every seq already held."""
        rec = self._rec
        i = self._base + len(rec) // _W
        self.bytes += count * self._bs
        first = lba >> CHUNK_SHIFT
        last = (lba + count - 1) >> CHUNK_SHIFT
        if first == last:  # most writes
            newest = self._newest
            rec.frombytes(_ROW.pack(lba, count, seq, fh, off, newest.get(first, -1)))
            newest[first] = i
            return
        rec.frombytes(_ROW.pack(lba, count, seq, fh, off, -1))
        wide = self._wide
        for c in range(first, last + 1):
            cur = wide.get(c)
            if cur is None:
                wide[c] = array("q", (i,))
            else:
                cur.append(i)

    def _candidates(self, lba: int, count: int) -> list[int]:
        """Numbers of the records in the chunks [lba, lba+count) touches."""
        rec, base = self._rec, self._base
        newest, wide = self._newest, self._wide
        first, last = lba >> CHUNK_SHIFT, (lba + count - 1) >> CHUNK_SHIFT
        found: list[int] = []
        for c in range(first, last + 1) if first != last else (first,):
            i = newest.get(c, -1)
            while i >= base:
                found.append(i)
                i = rec[(i - base) * _W + _LINK]
            more = wide.get(c)
            if more is not None:
                found.extend(more)
        return found

    def _touching(self, lba: int, count: int) -> list[Piece]:
        """Records overlapping [lba, lba+count), oldest first."""
        found = self._candidates(lba, count)
        if not found:
            return []
        rec, base = self._rec, self._base
        end = lba + count
        out = []
        for i in sorted(set(found)):
            k = (i - base) * _W
            p_lba = rec[k]
            if p_lba < end and p_lba + rec[k + 1] > lba:
                out.append(Piece(*rec[k: k + _LINK]))
        return out

    def overlay(self, lba: int, count: int, buf: bytearray,
                pread: Callable[[int, int, int], bytes | bytearray | memoryview]) -> None:
        """Lay every record overlapping [lba, lba+count) on ``buf`` (which holds
        those blocks as the primary has them), oldest first, reading the data
        with ``pread`` (from the log's write buffer: Volume._read_log)."""
        bs = self._bs
        end = lba + count
        for p in self._touching(lba, count):
            start = max(p.lba, lba)
            stop = min(p.lba + p.count, end)
            a = (start - lba) * bs
            n = (stop - start) * bs
            if p.fh < 0:
                buf[a: a + n] = bytes(n)
            else:
                buf[a: a + n] = pread(p.fh, n, p.off + (start - p.lba) * bs)

    def overlaps(self, lba: int, count: int) -> bool:
        """Whether any record overlaps [lba, lba+count): on every live read, so
        the chunks that hold nothing answer first."""
        if not self._rec:
            return False
        first, last = lba >> CHUNK_SHIFT, (lba + count - 1) >> CHUNK_SHIFT
        newest, wide = self._newest, self._wide
        if first == last and first not in newest and first not in wide:
            return False
        rec, base = self._rec, self._base
        end = lba + count
        for i in self._candidates(lba, count):
            k = (i - base) * _W
            if rec[k] < end and rec[k] + rec[k + 1] > lba:
                return True
        return False

    def _count_upto(self, seq: int) -> int:
        """How many records, from the oldest, have seq <= ``seq``."""
        rec = self._rec
        # seq is field 2 of each record and ascending: bisect over record numbers
        lo, hi = 0, len(rec) // _W
        while lo < hi:
            mid = (lo + hi) // 2
            if rec[mid * _W + 2] <= seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def upto(self, seq: int) -> array[int]:
        """Every record of seq <= ``seq``, in sequence order, as rows of RECORD_FIELDS
        ints (lba, count, seq, fh, off, and one unused), left in place: the group
        commit's input, with no object per record (see :func:`pieces`)."""
        return self._rec[: self._count_upto(seq) * _W]

    def take_upto(self, seq: int) -> array[int]:
        """Remove and return, as :meth:`upto`, every record of seq <= ``seq``."""
        taken = self.upto(seq)
        self.drop_upto(seq)
        return taken

    def drop_upto(self, seq: int) -> None:
        """Remove every record of seq <= ``seq`` (the group commit, once it has applied
        what :meth:`upto` gave it)."""
        lo = self._count_upto(seq)
        if lo == 0:
            return
        rec = self._rec
        n = len(rec) // _W
        rest = rec[lo * _W:]
        self._rec = array("q")
        self._base += n
        self._newest = {}
        self._wide = {}
        self.bytes = 0
        for k in range(0, len(rest), _W):
            self.insert(*rest[k: k + _LINK])
