"""The overlay of unapplied writes: records whose log entries are not yet durable.

The write-ahead rule says primary data may reach the disk only after the log
record describing it is durable. Writes therefore land here first; a group
commit makes the log durable and then applies the overlay to the primary in
sequence order. Until then, reads of these blocks are patched from here. The
overlay holds no data, only where each record's data sits in the log: the data
is written once, straight from the caller's buffer into the log's page cache,
and read back from there (a page-cache hit) when applied or read.

The hot path is an append: records are kept in sequence order, and a dict
from fixed-size *chunks* of the block space to the records touching them
answers "does this read overlap anything?" with a lookup or two, so neither a
write nor a read pays for the size of the overlay. Overlapping records are
not merged; a read lays them on its buffer oldest first, so the newest wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CHUNK_BLOCKS", "PendingMap", "Piece"]

CHUNK_SHIFT = 7
CHUNK_BLOCKS = 1 << CHUNK_SHIFT


@dataclass(slots=True)
class Piece:
    lba: int
    count: int
    seq: int
    fh: int   # log segment holding the data; -1: the blocks read as zeros (an unmap)
    off: int  # byte offset of the data of block ``lba`` in that segment


class PendingMap:
    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._records: list[Piece] = []
        self._chunks: dict[int, list[Piece]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def insert(self, lba: int, count: int, seq: int, fh: int, off: int) -> None:
        """Add a record; ``seq`` must be larger than every seq already held."""
        p = Piece(lba, count, seq, fh, off)
        self._records.append(p)
        self.bytes += count * self._bs
        chunks = self._chunks
        first = lba >> CHUNK_SHIFT
        last = (lba + count - 1) >> CHUNK_SHIFT
        if first == last:  # most writes: no loop
            lst = chunks.get(first)
            if lst is None:
                chunks[first] = [p]
            else:
                lst.append(p)
            return
        for c in range(first, last + 1):
            lst = chunks.get(c)
            if lst is None:
                chunks[c] = [p]
            else:
                lst.append(p)

    def _touching(self, lba: int, count: int) -> list[Piece]:
        """Records overlapping [lba, lba+count), oldest first."""
        chunks = self._chunks
        first, last = lba >> CHUNK_SHIFT, (lba + count - 1) >> CHUNK_SHIFT
        if first == last:
            found = chunks.get(first)
            if not found:
                return []
            hits = found
        else:
            seen: dict[int, Piece] = {}
            for c in range(first, last + 1):
                for p in chunks.get(c, ()):
                    seen[p.seq] = p
            hits = [seen[s] for s in sorted(seen)]
        end = lba + count
        return [p for p in hits if p.lba < end and p.lba + p.count > lba]

    def overlay(self, lba: int, count: int, buf: bytearray,
                pread: Callable[[int, int, int], bytes]) -> None:
        """Lay every record overlapping [lba, lba+count) on ``buf`` (which holds
        those blocks as the primary has them), oldest first, reading the data
        from the log (page cache) with ``pread``."""
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
        if not self._records:
            return False
        return bool(self._touching(lba, count))

    def take_upto(self, seq: int) -> list[Piece]:
        """Remove and return, in sequence order, every record of seq <= ``seq``."""
        recs = self._records
        if not recs or recs[0].seq > seq:
            return []
        if recs[-1].seq <= seq:
            self._records = []
            self._chunks = {}
            self.bytes = 0
            return recs
        i = next(i for i, p in enumerate(recs) if p.seq > seq)
        taken, self._records = recs[:i], recs[i:]
        self._chunks = {}
        for p in self._records:
            for c in range(p.lba >> CHUNK_SHIFT, ((p.lba + p.count - 1) >> CHUNK_SHIFT) + 1):
                self._chunks.setdefault(c, []).append(p)
        self.bytes = sum(p.count for p in self._records) * self._bs
        return taken
