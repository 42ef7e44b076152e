"""Long operations on a protected volume: rewind, clone, playback, merge, fade-out.

Each works in steps of at most :data:`STEP_BYTES`, reports progress as
``(done, total)`` and checks its ``cancel`` event between steps, so a caller
can run it in a worker without stalling I/O. Merge and fade-out are crash-safe
in the order FORMAT.md fixes: new files first and durable, then one catalog
transaction, then deletion of what the catalog no longer names.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from volume_manager import extents as ext
from volume_manager import mapcodec
from volume_manager.blockdev import BlockDevice, check_range
from volume_manager.catalog import Catalog, MapRow
from volume_manager.errors import BusyError, EngineError, PointError
from volume_manager.history import PointInTimeView, changes_between, maps_between, resolve
from volume_manager.points import Point
from volume_manager.records import RecordFlag
from volume_manager.segments import segment_name
from volume_manager.sparse import copy_sparse

if TYPE_CHECKING:
    from volume_manager.volume import Progress, Volume

__all__ = [
    "Cancelled",
    "FadeResult",
    "RewindResult",
    "clone",
    "fade",
    "finish_fade",
    "merge",
    "playback",
    "rewind",
]

STEP_BYTES = 1 << 20


class Cancelled(EngineError):
    """The job was cancelled between two steps; what it did so far is consistent."""


@dataclass(frozen=True, slots=True)
class RewindResult:
    point_seq: int
    before_marker: str
    after_marker: str
    blocks_rewritten: int


@dataclass(frozen=True, slots=True)
class FadeResult:
    baseline_seq: int
    maps_removed: int
    segments_removed: int
    bytes_freed: int          # log segments + map files deleted
    baseline_bytes_written: int


def _steps(m: np.ndarray, block_size: int) -> list[tuple[int, int, int, int]]:
    """Split a map's extents into (lba, count, seg, off) steps of <= STEP_BYTES."""
    per = max(1, STEP_BYTES // block_size)
    out = []
    for lba, count, seg, _seq, off in m.tolist():
        done = 0
        while done < count:
            n = min(per, count - done)
            o = off + done * block_size if seg != ext.ZERO_SEG else 0
            out.append((lba + done, n, seg, o))
            done += n
    return out


def _tick(cancel: threading.Event | None, progress: Progress | None, done: int,
          total: int) -> None:
    if progress is not None:
        progress(done, total)
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"cancelled after {done} of {total} blocks")


def rewind(vol: Volume, point: str | Point | int, *, progress: Progress | None = None,
           cancel: threading.Event | None = None) -> RewindResult:
    """Rewind the live volume in place to ``point``.

    Only blocks changed after the point are rewritten, as ordinary logged
    writes, between two markers: ``before-rewind-N`` (undo with a rewind to it)
    and ``after-rewind-N``.
    """
    with vol._job_lock:
        seq = resolve(vol, point)
        n = vol.catalog.get_int("rewinds") + 1
        # Users may name markers like ours: skip numbers whose names are taken,
        # or the rewind would fail (after rewriting blocks, for after-rewind-N).
        while f"before-rewind-{n}" in vol.markers or f"after-rewind-{n}" in vol.markers:
            n += 1
        with vol.catalog.transaction() as db:
            Catalog.put(db, "rewinds", n)
        before = vol.mark(f"before-rewind-{n}")
        changed = changes_between(vol, seq, before.seq)
        total = int(changed["count"].sum()) if len(changed) else 0
        done = 0
        bs = vol.block_size
        with PointInTimeView(vol, seq) as view:
            for lba, count, _seg, _off in _steps(changed, bs):
                data = view.read(lba, count)
                if data == bytes(len(data)):
                    vol.unmap(lba, count, flags=RecordFlag.REWIND)
                else:
                    vol.write(lba, data, flags=RecordFlag.REWIND)
                done += count
                _tick(cancel, progress, done, total)
        vol.flush()
        after = vol.mark(f"after-rewind-{n}")
        return RewindResult(seq, before.name, after.name, total)


def _copy_pieces(vol: Volume, m: np.ndarray, dest: BlockDevice | int, done: int, total: int,
                 progress: Progress | None, cancel: threading.Event | None) -> int:
    """Write every piece of map ``m`` (data from the log) to a device or file handle."""
    bs = vol.block_size
    fs = vol.files
    for lba, count, seg, off in _steps(m, bs):
        if isinstance(dest, int):
            if seg == ext.ZERO_SEG:
                fs.punch_hole(dest, lba * bs, count * bs)
            else:
                fs.pwrite(dest, fs.pread(vol.segment_fh(seg), count * bs, off), lba * bs)
        elif seg == ext.ZERO_SEG:
            dest.unmap(lba, count)
        else:
            dest.write(lba, fs.pread(vol.segment_fh(seg), count * bs, off))
        done += count
        _tick(cancel, progress, done, total)
    return done


def clone(vol: Volume, point: str | Point | int, dest_path: str, *,
          progress: Progress | None = None, cancel: threading.Event | None = None) -> int:
    """Write a new image file identical to the volume at ``point``; returns its seq."""
    fs = vol.files
    if fs.exists(dest_path):
        raise EngineError(f"{dest_path} already exists; clone writes a new image")
    with vol._job_lock:
        seq = resolve(vol, point)
        changed = changes_between(vol, vol.baseline_seq, seq)
        total = int(changed["count"].sum()) if len(changed) else 0
        tmp = dest_path + ".partial"
        copy_sparse(fs, vol._baseline, tmp, vol.num_blocks * vol.block_size, None)
        fh = fs.open(tmp)
        try:
            _copy_pieces(vol, changed, fh, 0, total, progress, cancel)
            fs.fdatasync(fh)
        except BaseException:
            fs.close(fh)
            fs.unlink(tmp)
            raise
        fs.close(fh)
        fs.rename(tmp, dest_path)
        fs.fsync_dir(os.path.dirname(os.path.abspath(dest_path)))
        return seq


def playback(vol: Volume, start: str | Point | int, end: str | Point | int, lba: int,
             count: int, dest: BlockDevice, *, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> int:
    """Replay onto ``dest`` the changes of interval (start, end] within blocks
    [lba, lba+count); returns the number of blocks written."""
    check_range(lba, count, vol.num_blocks)
    if dest.block_size != vol.block_size:
        raise EngineError(f"block sizes differ: {dest.block_size} vs {vol.block_size}")
    check_range(lba, count, dest.num_blocks)
    with vol._job_lock:
        lo, hi = resolve(vol, start), resolve(vol, end)
        if lo > hi:
            raise PointError(f"playback interval is backwards: seq:{lo} > seq:{hi}")
        changed = ext.clip(changes_between(vol, lo, hi), lba, count, vol.block_size)
        total = int(changed["count"].sum()) if len(changed) else 0
        _copy_pieces(vol, changed, dest, 0, total, progress, cancel)
        dest.flush()
        return total


def _boundary(vol: Volume, point: str | Point | int, what: str) -> int:
    seq = resolve(vol, point)
    if seq != vol.baseline_seq:
        i = bisect.bisect_left(vol.maps, seq, key=lambda m: m.to_seq)
        if i == len(vol.maps) or vol.maps[i].to_seq != seq:
            raise PointError(f"{what} {point} (seq:{seq}) is not a marker or map boundary")
    return seq


def _check_views(vol: Volume, lo: int, hi: int, what: str) -> None:
    for v in vol.views:
        s = v.seq  # type: ignore[attr-defined]
        if lo < s < hi or (what == "fade" and s < hi):
            raise BusyError(f"an open image at seq:{s} needs history that the {what} removes")


def merge(vol: Volume, start: str | Point | int, end: str | Point | int, *,
          klass: str | None = None) -> MapRow:
    """Merge the adjacent maps between two boundaries into one (coarser) map, labelled
    with retention class ``klass`` (default: the newest merged map's)."""
    with vol._job_lock:
        lo, hi = _boundary(vol, start, "start"), _boundary(vol, end, "end")
        olds = maps_between(vol, lo, hi)
        if len(olds) < 2:
            raise EngineError(f"nothing to merge between seq:{lo} and seq:{hi} "
                              f"({len(olds)} map)")
        inner = [mk for mk in vol.markers.values() if lo < mk.seq < hi]
        pinned = [mk.name for mk in inner if mk.pinned]
        if pinned:
            raise BusyError(f"pinned markers inside the range: {', '.join(pinned)}")
        _check_views(vol, lo, hi, "merge")
        extents = ext.compose([vol.map_extents(m) for m in olds], vol.block_size)
        dm = mapcodec.DeltaMap(lo, hi, vol.block_size, False, extents)
        fname = vol._write_map_file(dm)
        if klass is None:
            klass = olds[-1].row.klass
        row = MapRow(0, lo, hi, olds[-1].row.to_ts_ns, fname, len(extents), False, klass,
                     olds[0].row.start_seg, olds[0].row.start_off,
                     mapcodec.HEADER_SIZE + extents.nbytes)
        with vol.catalog.transaction() as db:
            for m in olds:
                db.execute("DELETE FROM maps WHERE id=?", (m.row.id,))
            for mk in inner:
                db.execute("DELETE FROM markers WHERE name=?", (mk.name,))
            row_id = Catalog.add_map(db, row)
        row = MapRow(row_id, *_row_tail(row))
        from volume_manager.volume import MapInfo

        i = bisect.bisect_left(vol.maps, olds[0].to_seq, key=lambda m: m.to_seq)
        assert vol.maps[i] is olds[0]
        vol.maps[i: i + len(olds)] = [MapInfo(row, extents)]
        for mk in inner:
            del vol.markers[mk.name]
        for m in olds:
            if m.row.file != fname:
                _unlink(vol, os.path.join(vol.map_dir, m.row.file))
        vol.files.fsync_dir(vol.map_dir)
        return row


def _row_tail(row: MapRow) -> tuple:  # type: ignore[type-arg]
    return (row.from_seq, row.to_seq, row.to_ts_ns, row.file, row.entries, row.granular,
            row.klass, row.start_seg, row.start_off, row.bytes)


def _unlink(vol: Volume, path: str) -> int:
    try:
        fh = vol.files.open(path, read_only=True)
        size = vol.files.size(fh)
        vol.files.close(fh)
        vol.files.unlink(path)
    except FileNotFoundError:
        return 0
    return size


def fade(vol: Volume, before: str | Point | int, *, progress: Progress | None = None,
         cancel: threading.Event | None = None) -> FadeResult:
    """Roll the baseline forward to ``before`` and free the history older than it."""
    with vol._job_lock:
        p = _boundary(vol, before, "fade point")
        if p == vol.baseline_seq:
            return FadeResult(p, 0, 0, 0, 0)
        pinned = [mk.name for mk in vol.markers.values() if mk.seq < p and mk.pinned]
        if pinned:
            raise BusyError(f"pinned markers older than the fade point: {', '.join(pinned)}")
        _check_views(vol, 0, p, "fade")
        # A checkpoint at the end of the log first, so that redo after a crash
        # never needs a segment the fade-out deletes.
        vol.ask_checkpoint()
        vol.flush()
        # Past this point the baseline is being rewritten and there is no way
        # back, only forward (recovery finishes it too): cancel is honoured
        # only before.
        if cancel is not None and cancel.is_set():
            raise Cancelled("fade-out cancelled before it started")
        with vol.catalog.transaction() as db:
            Catalog.put(db, "fade_to", p)
        return finish_fade(vol, progress=progress)


def finish_fade(vol: Volume, *, progress: Progress | None = None) -> FadeResult:
    """Steps 2-4 of a fade-out whose intent (``fade_to``) is in the catalog.

    Idempotent: rewriting the baseline with the same composed data again is
    harmless, so recovery simply calls this once more.
    """
    p = vol.catalog.get_int("fade_to")
    fs = vol.files
    olds = [m for m in vol.maps if m.to_seq <= p]
    changed = ext.compose([vol.map_extents(m) for m in olds], vol.block_size)
    total = int(changed["count"].sum()) if len(changed) else 0
    _copy_pieces(vol, changed, vol._baseline, 0, total, progress, None)
    fs.fdatasync(vol._baseline)
    # The first record after p decides which segments are still needed.
    nxt = next((m for m in vol.maps if m.to_seq > p), None)
    keep_seg = nxt.row.start_seg if nxt is not None else vol.catalog.get_int("tail_seg")
    ts = max((m.row.to_ts_ns for m in olds), default=vol.catalog.get_int("baseline_ts"))
    doomed = sorted(s for s in vol._segments if s < keep_seg)
    with vol.catalog.transaction() as db:
        for m in olds:
            db.execute("DELETE FROM maps WHERE id=?", (m.row.id,))
        db.execute("DELETE FROM markers WHERE seq < ?", (p,))
        Catalog.put(db, "baseline_seq", p)
        Catalog.put(db, "baseline_ts", ts)
        Catalog.put(db, "first_live_seg", keep_seg)
        db.execute("DELETE FROM segments WHERE id < ?", (keep_seg,))
        Catalog.put(db, "fade_to", -1)
    freed = 0
    for m in olds:
        vol.maps.remove(m)
        freed += _unlink(vol, os.path.join(vol.map_dir, m.row.file))
    for name in [n for n, mk in vol.markers.items() if mk.seq < p]:
        del vol.markers[name]
    # An open view (at p or later) may read data from the segments about to go:
    # from now on it reads the new baseline plus only the changes after p.
    for v in list(vol.views):
        if isinstance(v, PointInTimeView) and v.seq >= p:
            v._use_map(changes_between(vol, p, v.seq))
    for sid in doomed:
        s = vol._segments.pop(sid)
        fs.close(s.fh)
        freed += _unlink(vol, os.path.join(vol.log_dir, segment_name(sid)))
    fs.fsync_dir(vol.map_dir)
    fs.fsync_dir(vol.log_dir)
    return FadeResult(p, len(olds), len(doomed), freed, total * vol.block_size)


def view(vol: Volume, point: str | Point | int) -> PointInTimeView:
    seq = resolve(vol, point)
    return PointInTimeView(vol, seq, label=str(point))
