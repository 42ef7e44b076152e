"""The in-memory index of the open interval: records after the newest delta map.

When a marker closes the interval, this index becomes the marker's delta map;
point-in-time reads inside the open interval use it directly.
"""

from __future__ import annotations

from array import array

import numpy as np

from volume_manager import extents as ext

__all__ = ["TailIndex"]


class TailIndex:
    """Index of the records after the newest map (the open interval), in memory.

    Two interleaved arrays keep the hot path to one ``extend`` each: ``rec``
    holds (lba, count, seg, seq, off) per data/unmap record, ``times`` holds
    (seq, ts_ns) per record of any type, for time lookups.
    """

    def __init__(self) -> None:
        self.rec = array("Q")
        self.times = array("Q")

    def add(self, lba: int, count: int, seg: int, seq: int, off: int) -> None:
        self.rec.extend((lba, count, seg, seq, off))

    def extend(self, later: TailIndex) -> None:
        """Append the records of a tail that follows this one."""
        self.rec.extend(later.rec)
        self.times.extend(later.times)

    def _rows(self) -> np.ndarray:
        return np.frombuffer(self.rec, dtype=np.uint64).reshape(-1, 5) if self.rec \
            else np.zeros((0, 5), np.uint64)

    def time_rows(self) -> np.ndarray:
        """(seq, ts_ns) rows of every record, in sequence order."""
        return np.frombuffer(self.times, dtype=np.uint64).reshape(-1, 2) if self.times \
            else np.zeros((0, 2), np.uint64)

    @property
    def last_ts(self) -> int:
        return self.times[-1]

    def __bool__(self) -> bool:
        return bool(self.times)

    def split(self, seq: int) -> TailIndex:
        """Cut at ``seq``: return the records up to it and keep the rest."""
        rows, times = self._rows(), self.time_rows()
        a = int(np.searchsorted(rows[:, 3], seq, side="right"))
        b = int(np.searchsorted(times[:, 0], seq, side="right"))
        head = TailIndex()
        head.rec = array("Q", rows[:a].tobytes())
        head.times = array("Q", times[:b].tobytes())
        self.rec = array("Q", rows[a:].tobytes())
        self.times = array("Q", times[b:].tobytes())
        return head

    def extents(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Data/unmap records with lo < seq <= hi as an (unsorted) extent array."""
        rows = self._rows()
        seq = rows[:, 3]
        a = int(np.searchsorted(seq, lo, side="right"))
        b = len(seq) if hi is None else int(np.searchsorted(seq, hi, side="right"))
        out = np.empty(max(b - a, 0), dtype=ext.EXTENT_DTYPE)
        for i, name in enumerate(("lba", "count", "seg", "seq", "off")):
            out[name] = rows[a:b, i]
        return out
