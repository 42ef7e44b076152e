"""Reading history: resolving POINTs, changes between two points, and read-only views.

The state of a volume at seq ``p`` is the baseline (at ``baseline_seq``) with
every record in ``(baseline_seq, p]`` laid on top, newest first. Those records
come from three places: delta maps that lie wholly inside the interval, the log
itself for a map cut by the interval (only while that map is granular), and the
in-memory index of the open interval. The cost of building a view follows the
number of maps and records touched, never the size of the volume.
"""

from __future__ import annotations

import bisect
from array import array
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from volume_manager import extents as ext
from volume_manager.blockdev import check_range
from volume_manager.errors import CorruptLogError, PointError, ReadOnlyError, VolumeClosedError
from volume_manager.points import AtMarker, AtSeq, AtTime, Latest, Point, parse_point
from volume_manager.records import RecordType
from volume_manager.segments import LogWalker

if TYPE_CHECKING:
    from volume_manager.volume import MapInfo, Volume

__all__ = ["PointInTimeView", "changes_between", "resolve", "scan_extents"]


def scan_extents(vol: Volume, seg: int, off: int, lo: int, hi: int) -> np.ndarray:
    """Extents of the data/unmap records with lo < seq <= hi, read from the log.

    (seg, off) is where some record at or before lo+1 starts; the walk verifies
    every record it passes.
    """
    handles = {s.id: s.fh for s in vol._segments.values()}
    first = _first_seq_at(vol, seg, off)
    walker = LogWalker(vol.files, handles, seg, off, first, stop_after_seq=hi)
    lba, count, sg, seq, offs = [], [], [], [], []
    for rec, _payload in walker.records():
        h = rec.header
        if h.seq <= lo or h.type == RecordType.MARK:
            continue
        lba.append(h.lba)
        count.append(h.count)
        seq.append(h.seq)
        if h.type == RecordType.WRITE:
            sg.append(rec.seg)
            offs.append(rec.data_offset)
        else:
            sg.append(ext.ZERO_SEG)
            offs.append(0)
    if walker.last_seq < hi:
        raise PointError(f"the log is damaged before seq:{hi}: {walker.stop.reason}")
    return ext.from_columns(lba, count, sg, seq, offs)


def _first_seq_at(vol: Volume, seg: int, off: int) -> int:
    """Sequence number of the record starting at (seg, off)."""
    from volume_manager.records import HEADER, SEGMENT_HEADER_SIZE

    s = vol._segments.get(seg)
    if s is None:
        raise PointError(f"log segment {seg} needed for this point is gone")
    if off == SEGMENT_HEADER_SIZE:
        return s.first_seq
    hdr = vol.files.pread(s.fh, HEADER.size, off)
    # The end of a segment, whose file may go on with zero padding (segments.py).
    if len(hdr) < HEADER.size or not any(hdr):
        return vol._segments[seg + 1].first_seq if seg + 1 in vol._segments else vol._seq + 1
    return int(HEADER.unpack(hdr)[4])


def _layers(vol: Volume, lo: int, hi: int) -> list[np.ndarray]:
    """Extent arrays that together hold every record with lo < seq <= hi."""
    out: list[np.ndarray] = []
    last_to = vol.baseline_seq
    for m in vol.maps:
        last_to = m.to_seq
        if m.to_seq <= lo:
            continue
        if m.from_seq >= hi:
            break
        if m.from_seq >= lo and m.to_seq <= hi:
            out.append(vol.map_extents(m))
            continue
        if not m.granular:
            raise PointError(f"history inside seq:{m.from_seq}..seq:{m.to_seq} was merged;"
                             " pick one of its ends")
        out.append(scan_extents(vol, m.row.start_seg, m.row.start_off, max(lo, m.from_seq),
                                min(hi, m.to_seq)))
    if hi > last_to:
        with vol._lock:
            out.append(vol._tail.extents(max(lo, last_to), hi))
    return out


def changes_between(vol: Volume, lo: int, hi: int) -> np.ndarray:
    """A map of the newest record per block among lo < seq <= hi.

    Its pieces are read from the log files: records still only in the write
    buffer are written out first (not durably; a reader needs no more)."""
    if hi > vol._durable_seq:
        vol.write_out()
    return ext.compose(_layers(vol, lo, hi), vol.block_size)


def _check_retained(vol: Volume, seq: int, text: str) -> int:
    if seq > vol.seq:
        raise PointError(f"{text} is in the future (newest write is seq:{vol.seq})")
    if seq < vol.baseline_seq:
        raise PointError(f"{text} is older than retained history (oldest point is"
                         f" seq:{vol.baseline_seq})")
    maps = vol.maps
    i = bisect.bisect_left(maps, seq, key=_to_seq)  # the map whose span holds seq
    if i < len(maps):
        m = maps[i]
        if m.from_seq < seq < m.to_seq and not m.granular:
            raise PointError(f"{text} lies in history that was merged (seq:{m.from_seq}.."
                             f"seq:{m.to_seq}); recoverable ends: seq:{m.from_seq},"
                             f" seq:{m.to_seq}")
    return seq


def resolve(vol: Volume, point: str | Point | int) -> int:
    """The sequence number a POINT names; PointError if it is not recoverable."""
    if vol._closed:
        raise VolumeClosedError("volume is closed")
    text = str(point)
    if isinstance(point, int):
        point = AtSeq(point)
    elif isinstance(point, str):
        point = parse_point(point)
    match point:
        case Latest():
            return vol.seq
        case AtSeq(seq=seq):
            return _check_retained(vol, seq, text)
        case AtMarker(name=name):
            marker = vol.markers.get(name)
            if marker is None:
                known = ", ".join(sorted(vol.markers)[:10]) or "none"
                raise PointError(f"no marker named {name!r} (markers: {known})")
            return marker.seq
        case AtTime(ts_ns=ts):
            return _check_retained(vol, _seq_at_time(vol, ts), text)
    raise PointError(f"bad POINT {text!r}")


def _seq_at_time(vol: Volume, ts: int) -> int:
    """The newest recoverable point whose write happened at or before ``ts``."""
    if ts < vol.catalog.get_int("baseline_ts"):
        raise PointError("that time is older than retained history")
    maps = vol.maps
    i = bisect.bisect_right([m.row.to_ts_ns for m in maps], ts)
    if i < len(maps):
        m = maps[i]
        if not m.granular:
            return m.from_seq
        best = m.from_seq
        handles = {s.id: s.fh for s in vol._segments.values()}
        walker = LogWalker(vol.files, handles, m.row.start_seg, m.row.start_off,
                           _first_seq_at(vol, m.row.start_seg, m.row.start_off),
                           stop_after_seq=m.to_seq)
        for rec, _ in walker.records():
            if rec.header.seq > m.from_seq and rec.header.ts_ns <= ts:
                best = rec.header.seq
        return best
    with vol._lock:
        times = vol._tail.time_rows()
        seqs, tss = times[:, 0], times[:, 1]
        hit = seqs[tss <= ts] if len(seqs) else seqs
        if len(hit):
            return int(hit.max())
    return maps[-1].to_seq if maps else vol.baseline_seq


def read_layered(vol: Volume, changes: np.ndarray, starts: list[int], lba: int,
                 count: int, hole: bool = False) -> bytes | bytearray:
    """Blocks [lba, lba+count) of the baseline with ``changes`` (a map of every change
    since the baseline, whose data lives in the log) laid on top.

    ``starts`` is ``changes["lba"].tolist()``: a plain list bisects faster than a
    strided numpy field, and the slice's rows come out as tuples in one call.
    ``hole``: the caller knows these blocks are a hole in the baseline (zeros).
    """
    bs = vol.block_size
    fs = vol.files
    end = lba + count
    i = max(bisect.bisect_right(starts, lba) - 1, 0)
    j = bisect.bisect_left(starts, end, i)
    pieces = []
    covered = 0
    for p_lba, p_count, p_seg, _seq, p_off in changes[i:j].tolist():
        start = max(p_lba, lba)
        stop = min(p_lba + p_count, end)
        if stop > start:
            pieces.append((start, stop, p_seg, p_off + (start - p_lba) * bs))
            covered += stop - start
    # The common small read: all of it in the baseline, or all in one log record.
    if not pieces:
        return _baseline_bytes(vol, lba, count, hole)
    if covered == count and len(pieces) == 1 and pieces[0][2] != ext.ZERO_SEG:
        _, _, p_seg, p_off = pieces[0]
        return _log_bytes(vol, p_seg, p_off, count * bs)
    buf = bytearray(count * bs)  # zeros: a read past the end of a sparse file stays so
    view = memoryview(buf)
    if covered < count and not hole:
        fs.readinto(vol._baseline, view, lba * bs)
    for start, stop, p_seg, p_off in pieces:
        a = (start - lba) * bs
        n = (stop - start) * bs
        if p_seg == ext.ZERO_SEG:
            view[a: a + n] = bytes(n)
        elif fs.readinto(vol.segment_fh(p_seg), view[a: a + n], p_off) != n:
            raise _short_log(p_seg, p_off, n)
    return buf


def _baseline_bytes(vol: Volume, lba: int, count: int, hole: bool) -> bytes:
    """Blocks [lba, lba+count) of the baseline alone; ``hole``: known to be zeros."""
    size = count * vol.block_size
    if hole:
        return bytes(size)
    data = vol.files.pread(vol._baseline, size, lba * vol.block_size)
    # A short read past the end of a sparse file is zeros.
    return data if len(data) == size else data + bytes(size - len(data))


def _log_bytes(vol: Volume, seg: int, off: int, size: int) -> bytes:
    """``size`` bytes of log segment ``seg`` at ``off``, where a map says data is."""
    data = vol.files.pread(vol.segment_fh(seg), size, off)
    if len(data) != size:
        raise _short_log(seg, off, size)
    return data


def _short_log(seg: int, off: int, n: int) -> CorruptLogError:
    return CorruptLogError(f"log segment {seg} is shorter than its map says (offset {off},"
                           f" {n} bytes)", segment=seg, offset=off)


class _Lookup(NamedTuple):
    """A composed map in the shapes a small read looks it up fastest in: ``starts``
    as a list (bisect on a list is the quickest search here), the other columns as
    compact arrays indexed once per read, and the map itself for the general case.
    One tuple, swapped whole, so a read never sees columns of two different maps."""

    map: np.ndarray
    starts: list[int]
    ends: array[int]
    segs: array[int]
    offs: array[int]
    # Where the baseline file holds data (byte offsets): a read of blocks that are
    # holes there needs no system call, and a thin volume's baseline is mostly holes.
    data_starts: list[int]
    data_ends: list[int]

    def baseline_hole(self, a: int, b: int) -> bool:
        """Whether bytes [a, b) of the baseline are all hole (they read as zeros)."""
        starts = self.data_starts
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and self.data_ends[i] > a:
            return False
        return i + 1 == len(starts) or starts[i + 1] >= b


def _lookup(vol: Volume, m: np.ndarray) -> _Lookup:
    lba = m["lba"].astype(np.int64)
    data = vol.files.data_extents(vol._baseline)
    return _Lookup(m, lba.tolist(), array("q", (lba + m["count"]).tobytes()),
                   array("q", m["seg"].astype(np.int64).tobytes()),
                   array("q", m["off"].astype(np.int64).tobytes()),
                   [a for a, _ in data], [a + n for a, n in data])


class PointInTimeView:
    """The volume as it was at one point: a read-only block device.

    Built from the baseline and one composed map of every change up to the
    point; a read is one binary search plus the preads of the pieces it covers.
    """

    def __init__(self, vol: Volume, seq: int, *, label: str | None = None) -> None:
        with vol._job_lock:
            self.seq = seq
            self.label = label or f"seq:{seq}"
            self._vol = vol
            self._bs = vol.block_size
            self._use_map(changes_between(vol, vol.baseline_seq, seq))
            vol.views.add(self)
        self._closed = False

    def _use_map(self, m: np.ndarray) -> None:
        """Read through map ``m`` (every change since the baseline) from now on.

        A fade-out calls this with the changes after its point, since it
        rewrites the baseline and deletes the log segments older than it.
        """
        self._lookup = _lookup(self._vol, m)

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._vol.num_blocks

    @property
    def read_only(self) -> bool:
        return True

    def read(self, lba: int, count: int) -> bytes | bytearray:
        if self._closed:
            raise VolumeClosedError("view is closed")
        vol = self._vol
        check_range(lba, count, vol.num_blocks)
        look = self._lookup
        starts = look.starts
        end = lba + count
        i = bisect.bisect_right(starts, lba) - 1
        # The bulk of image traffic is small reads that touch at most one extent:
        # answered from the lookup columns without slicing the map.
        if count and (i + 1 == len(starts) or starts[i + 1] >= end):
            bs = self._bs
            size = count * bs
            if i < 0 or look.ends[i] <= lba:
                return _baseline_bytes(vol, lba, count, look.baseline_hole(lba * bs, end * bs))
            seg = look.segs[i]
            if look.ends[i] >= end and seg != ext.ZERO_SEG:
                return _log_bytes(vol, seg, look.offs[i] + (lba - starts[i]) * bs, size)
        return read_layered(vol, look.map, starts, lba, count,
                            look.baseline_hole(lba * self._bs, end * self._bs))

    def changed_extents(self) -> np.ndarray:
        """Blocks that differ from the baseline, with where their data lives."""
        return self._lookup.map

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        raise ReadOnlyError(f"{self.label} is a point-in-time image and is read-only")

    def unmap(self, lba: int, count: int) -> None:
        raise ReadOnlyError(f"{self.label} is a point-in-time image and is read-only")

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._vol.views.discard(self)

    def __enter__(self) -> PointInTimeView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def maps_between(vol: Volume, lo: int, hi: int) -> list[MapInfo]:
    """Live maps lying wholly inside (lo, hi]. The maps are contiguous and in sequence
    order, so this is two binary searches (a policy's merges call it often)."""
    maps = vol.maps
    start = bisect.bisect_left(maps, lo, key=_from_seq)
    end = bisect.bisect_right(maps, hi, key=_to_seq)
    return maps[start:end] if start < end else []


def _to_seq(m: MapInfo) -> int:
    return m.to_seq


def _from_seq(m: MapInfo) -> int:
    return m.from_seq
