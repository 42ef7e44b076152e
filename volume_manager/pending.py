"""The overlay of unapplied extents: writes whose log records are not yet durable.

The write-ahead rule says primary data may reach the disk only after the log
record describing it is durable. Writes therefore land here first; a group
commit makes the log durable and then applies the overlay to the primary.
Until then, reads of these blocks are served from here.

Pieces never overlap: a new write cuts away what it covers. Lookups are binary
searches over the sorted starts, so the cost follows the pieces touched.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PendingMap", "Piece"]


@dataclass(slots=True)
class Piece:
    lba: int
    count: int
    seq: int
    data: memoryview | None  # None: the blocks read as zeros (an unmap)


class PendingMap:
    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._starts: list[int] = []
        self._pieces: list[Piece] = []
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._pieces)

    def _cut(self, p: Piece, lba: int, count: int) -> Piece:
        """The part of ``p`` inside [lba, lba+count) (which must overlap it)."""
        start = max(p.lba, lba)
        end = min(p.lba + p.count, lba + count)
        data = None
        if p.data is not None:
            a = (start - p.lba) * self._bs
            data = p.data[a: a + (end - start) * self._bs]
        return Piece(start, end - start, p.seq, data)

    def _overlapping(self, lba: int, count: int) -> tuple[int, int]:
        """Index range of pieces that overlap [lba, lba+count)."""
        i = bisect_right(self._starts, lba)
        if i and self._pieces[i - 1].lba + self._pieces[i - 1].count > lba:
            i -= 1
        j = bisect_left(self._starts, lba + count, i)
        return i, j

    def insert(self, lba: int, count: int, seq: int, data: memoryview | None) -> None:
        i, j = self._overlapping(lba, count)
        keep: list[Piece] = []
        if i < j:
            first, last = self._pieces[i], self._pieces[j - 1]
            if first.lba < lba:
                keep.append(self._cut(first, first.lba, lba - first.lba))
            end = lba + count
            if last.lba + last.count > end:
                tail = self._cut(last, end, last.lba + last.count - end)
            else:
                tail = None
            for p in self._pieces[i:j]:
                self.bytes -= p.count * self._bs
            new = [*keep, Piece(lba, count, seq, data)]
            if tail is not None:
                new.append(tail)
        else:
            new = [Piece(lba, count, seq, data)]
        for p in new:
            self.bytes += p.count * self._bs
        self._pieces[i:j] = new
        self._starts[i:j] = [p.lba for p in new]

    def lookup(self, lba: int, count: int) -> list[Piece]:
        """Pieces inside [lba, lba+count), trimmed to it, in block order."""
        i, j = self._overlapping(lba, count)
        return [self._cut(p, lba, count) for p in self._pieces[i:j]]

    def take_upto(self, seq: int) -> list[Piece]:
        """Remove and return every piece written at or before ``seq``."""
        taken = [p for p in self._pieces if p.seq <= seq]
        if len(taken) == len(self._pieces):
            self._pieces = []
            self._starts = []
            self.bytes = 0
        elif taken:
            self._pieces = [p for p in self._pieces if p.seq > seq]
            self._starts = [p.lba for p in self._pieces]
            self.bytes = sum(p.count for p in self._pieces) * self._bs
        return taken

    def __iter__(self) -> Iterator[Piece]:
        return iter(list(self._pieces))
