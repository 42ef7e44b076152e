"""Recovery: bring a volume back to a consistent state when it is opened.

The numbered steps are those of FORMAT.md, "Recovery"; each is idempotent, so a
crash during recovery is recovered by running it again.

1. Delete segment files older than ``first_live_seg`` (left by a fade-out that
   switched the catalog but crashed before deleting).
2. Open the live segments; finish a fade-out whose intent is recorded.
3. Delete map files the catalog does not list (a merge or mark that crashed
   before its catalog switch); load and verify every listed map, rebuilding
   from the log any that fails its checksum.
4. Walk the log from the older of the checkpoint and the tail start, verifying
   every record; redo onto the primary each record after the checkpoint;
   rebuild the open interval's index and the marker/map of any marker record
   the catalog lacks.
5. At the first record that fails, truncate the log there (reported) and drop
   catalog entries that point past it. Zero padding after a segment's last
   record (a block write-out not yet trimmed) is trimmed, not reported.
6. Make the primary durable and write a checkpoint at the end of the log.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from volume_manager import extents as ext
from volume_manager import mapcodec
from volume_manager.catalog import Catalog, MarkerRow
from volume_manager.errors import CorruptMapError
from volume_manager.records import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordHeader,
    RecordType,
    SegmentHeader,
    check_crc,
    decode_header,
    encode_segment_header,
)
from volume_manager.segments import (
    MAX_RECORD_PAYLOAD,
    LogWalker,
    ScanStop,
    parse_segment_name,
    read_segment_header,
    segment_name,
)
from volume_manager.tail import TailIndex

if TYPE_CHECKING:
    from volume_manager.volume import MapInfo, Volume

__all__ = ["recover"]


def recover(vol: Volume) -> None:
    from volume_manager.volume import _Segment

    fs, cat, report = vol.files, vol.catalog, vol.recovery_report
    first_live = cat.get_int("first_live_seg")
    # 1. orphans of an interrupted fade-out
    ids = []
    for name in fs.listdir(vol.log_dir):
        sid = parse_segment_name(name)
        if sid is None:
            continue
        if sid < first_live:
            fs.unlink(os.path.join(vol.log_dir, name))
        else:
            ids.append(sid)
    ids.sort()
    # 2. open segments; a missing segment in the middle ends the log there
    for sid in ids:
        fh = fs.open(os.path.join(vol.log_dir, segment_name(sid)))
        hdr = read_segment_header(fs, fh)
        first_seq = hdr.first_seq if hdr is not None else -1
        vol._segments[sid] = _Segment(sid, first_seq, fh, fs.size(fh))
    # After a process crash the newest records may live only in the page cache.
    # Make the log durable before anything derived from it (redo onto the
    # primary, a fade-out's baseline, rebuilt maps, a checkpoint) can reach the
    # disk: the write-ahead rule holds during recovery too.
    for s in vol._segments.values():
        fs.fdatasync(s.fh)
    fs.fsync_dir(vol.log_dir)
    if cat.get_int("fade_to", -1) >= 0:
        from volume_manager import jobs

        jobs.finish_fade(vol)
        report.append(f"finished an interrupted fade-out to seq:{vol.baseline_seq}")
    # 3. maps
    listed = {m.row.file for m in vol.maps}
    for name in fs.listdir(vol.map_dir):
        if name not in listed:
            fs.unlink(os.path.join(vol.map_dir, name))
    _scan_and_redo(vol)
    for m in vol.maps:
        vol.map_extents(m)  # 8. verified on load; a damaged file is rebuilt


def _positions(vol: Volume) -> tuple[int, int, int]:
    """(expected seq, segment, offset) where the walk starts."""
    cat = vol.catalog
    ck = (cat.get_int("checkpoint_seq"), cat.get_int("checkpoint_seg"),
          cat.get_int("checkpoint_off"))
    last_to = vol.maps[-1].to_seq if vol.maps else vol.baseline_seq
    tail = (last_to, cat.get_int("tail_seg"), cat.get_int("tail_off"))
    start = min(ck, tail)
    return start[0] + 1, start[1], start[2]


def _scan_and_redo(vol: Volume) -> None:
    from volume_manager.volume import _Segment

    fs, cat, report = vol.files, vol.catalog, vol.recovery_report
    bs = vol.block_size
    ck_seq = cat.get_int("checkpoint_seq")
    last_to = vol.maps[-1].to_seq if vol.maps else vol.baseline_seq
    expect, start_seg, start_off = _positions(vol)
    vol._tail = TailIndex()
    vol._tail_start = (cat.get_int("tail_seg"), cat.get_int("tail_off"))
    vol._seq = expect - 1
    handles = {s.id: s.fh for s in vol._segments.values()}
    if start_seg not in handles:
        if handles:
            report.append(f"log segment {start_seg}, where redo starts, is missing;"
                          " the log was ignored")
        handles = {}
    walker = LogWalker(fs, handles, start_seg, start_off, expect)
    pending_markers: list[tuple[int, int, str, tuple[int, int]]] = []
    end_pos = (start_seg, start_off)
    t = vol._tail
    for rec, payload in walker.records():
        h = rec.header
        end_pos = (rec.seg, rec.end)
        if h.seq > ck_seq:
            if h.type == RecordType.WRITE:
                fs.pwrite(vol._primary, payload, h.lba * bs)
            elif h.type == RecordType.UNMAP:
                fs.punch_hole(vol._primary, h.lba * bs, h.count * bs)
        if h.seq <= last_to:
            continue
        t.times.extend((h.seq, h.ts_ns))
        if h.type == RecordType.MARK:
            pending_markers.append((h.seq, h.ts_ns, bytes(payload).decode(), end_pos))
        elif h.type == RecordType.WRITE:
            t.add(h.lba, h.count, rec.seg, h.seq, rec.data_offset)
        else:
            t.add(h.lba, h.count, ext.ZERO_SEG, h.seq, 0)
    last = walker.last_seq
    stop = walker.stop
    # Zero padding after the last record of a segment (a block write-out that a
    # trim did not follow before the crash): the file ends where its records do.
    for sid, end in walker.ends.items():
        s = vol._segments.get(sid)
        if s is not None and fs.size(s.fh) > end:
            fs.truncate(s.fh, end)
            fs.fdatasync(s.fh)
            s.end = end
    # 5. truncate at the first bad record and drop what lies past it
    if stop.reason is not None:
        report.append(f"log truncated at segment {stop.seg} offset {stop.offset}: {stop.reason};"
                      f" kept every record up to seq:{last}")
    if stop.reason is not None and handles:
        # Records past the damage may have reached the primary already (a
        # durable record damaged later). Put the blocks they name back as they
        # were at ``last``, before the evidence is truncated away (idempotent).
        lost = _lost_ranges(vol, stop, last)
        if lost is None:
            lost = [(0, vol.num_blocks)]
        if lost:
            vol._seq = last
            n = _restore_primary(vol, lost, last)
            report.append(f"restored {n} blocks of the primary that records past the end of"
                          f" the log may have written to their state at seq:{last}")
    if handles:
        stop_seg = stop.seg if stop.reason is not None else end_pos[0]
        for sid in sorted(vol._segments):
            if sid > stop_seg or (sid == stop_seg and stop.reason is not None
                                  and stop.offset < SEGMENT_HEADER_SIZE):
                s = vol._segments.pop(sid)
                empty = fs.size(s.fh) == 0  # a roll that wrote nothing yet: no news
                fs.close(s.fh)
                fs.unlink(os.path.join(vol.log_dir, segment_name(sid)))
                if (sid != stop_seg or stop.offset) and not empty:
                    report.append(f"deleted log segment {sid} past the end of the log")
        if stop.reason is not None and stop.seg in vol._segments:
            fh = vol._segments[stop.seg].fh
            fs.truncate(fh, stop.offset)
            fs.fdatasync(fh)
            vol._segments[stop.seg].end = stop.offset
        fs.fsync_dir(vol.log_dir)
    dropped_markers = [m for m in vol.markers.values() if m.seq > last]
    dropped_maps = [m for m in vol.maps if m.to_seq > last]
    if dropped_markers or dropped_maps:
        with cat.transaction() as db:
            for m in dropped_markers:
                db.execute("DELETE FROM markers WHERE name=?", (m.name,))
                del vol.markers[m.name]
                report.append(f"marker {m.name!r} at seq:{m.seq} was past the end of the log")
            for mp in dropped_maps:
                db.execute("DELETE FROM maps WHERE id=?", (mp.row.id,))
                vol.maps.remove(mp)
    if dropped_maps or ck_seq > last:
        # The log now ends before what the catalog pointed at: restart the walk
        # from the newest surviving map, whose records were skipped above.
        new_to = vol.maps[-1].to_seq if vol.maps else vol.baseline_seq
        pos = ((dropped_maps[0].row.start_seg, dropped_maps[0].row.start_off) if dropped_maps
               else (cat.get_int("tail_seg"), cat.get_int("tail_off")))
        with cat.transaction() as db:
            for key, value in (("checkpoint_seq", new_to), ("checkpoint_seg", pos[0]),
                               ("checkpoint_off", pos[1]), ("tail_seg", pos[0]),
                               ("tail_off", pos[1])):
                Catalog.put(db, key, value)
        _scan_and_redo(vol)
        return
    vol._seq = last
    # active segment: the last one left, or a new one when there is none
    if vol._segments:
        active = vol._segments[max(vol._segments)]
        seg_end = fs.size(active.fh)
        if stop.reason is None and end_pos[0] == active.id:
            seg_end = end_pos[1]
    else:
        sid = max(cat.get_int("first_live_seg"), start_seg)
        path = os.path.join(vol.log_dir, segment_name(sid))
        fh = fs.open(path, create=True)
        fs.truncate(fh, 0)
        fs.pwrite(fh, encode_segment_header(SegmentHeader(bs, sid, vol._seq + 1, vol.uuid)), 0)
        fs.fdatasync(fh)
        fs.fsync_dir(vol.log_dir)
        active = _Segment(sid, vol._seq + 1, fh)
        vol._segments[sid] = active
        seg_end = SEGMENT_HEADER_SIZE
        if vol._tail_start[0] < sid or not t:
            vol._tail_start = (sid, SEGMENT_HEADER_SIZE)
    vol._active = active
    vol._seg_end = seg_end
    vol._durable_seq = vol._seq
    vol._primary_synced = vol._seq
    # markers whose catalog entries were lost: rebuild them from the records
    for seq, ts, name, pos in pending_markers:
        if seq > vol._seq:
            break
        if name in vol.markers:
            # A mark that failed (secondary full) and was made again later: the
            # first record keeps the name, the interval simply goes on.
            report.append(f"marker record {name!r} at seq:{seq} repeats a name; skipped")
            continue
        tail = vol._tail
        split = tail.split(seq)
        start = vol._tail_start
        vol._tail_start = pos
        vol._persist_interval(split, start, seq, ts, MarkerRow(name, seq, ts, False))
        report.append(f"restored marker {name!r} at seq:{seq} from the log")
    # 6. primary durable, checkpoint at the end
    fs.fdatasync(vol._primary)
    vol._write_checkpoint(vol._seq, (vol._active.id, vol._seg_end))
    with cat.transaction() as db:
        Catalog.put(db, "tail_seg", vol._tail_start[0])
        Catalog.put(db, "tail_off", vol._tail_start[1])


def _lost_ranges(vol: Volume, stop: ScanStop, last: int) -> list[tuple[int, int]] | None:
    """(lba, count) of every record at and after ``stop``, read from their headers.

    None when that cannot be known: a header that does not decode or is not
    consistent with its place in the log, a segment before the damage is
    missing, or bytes that are neither records nor zeros follow the damage.
    A record that is all there but fails its checksum is trusted for its range
    when its header is consistent (sequence number, geometry, length): a torn
    payload, the common case after a power cut, must not cost a rewrite of the
    whole volume.
    """
    fs = vol.files
    if stop.offset < SEGMENT_HEADER_SIZE and stop.seg - 1 not in vol._segments:
        return None
    out: list[tuple[int, int]] = []
    expect = last + 1
    for sid in sorted(s for s in vol._segments if s >= stop.seg):
        fh = vol._segments[sid].fh
        size = fs.size(fh)
        off = max(stop.offset if sid == stop.seg else 0, SEGMENT_HEADER_SIZE)
        while off < size:
            raw = fs.pread(fh, HEADER_SIZE, off)
            h = decode_header(raw)
            if h is None or h.length > MAX_RECORD_PAYLOAD:
                if _zeros(vol, fh, off, size):
                    break
                return None
            end = off + HEADER_SIZE + h.length
            if end <= size and not check_crc(raw, fs.pread(fh, h.length, off + HEADER_SIZE)) \
                    and not _plausible(vol, h, expect):
                return None
            expect = h.seq + 1
            if h.type != RecordType.MARK:
                if h.lba + h.count > vol.num_blocks:
                    return None
                out.append((h.lba, h.count))
            off = end
    return out


def _plausible(vol: Volume, h: RecordHeader, expect: int) -> bool:
    """Whether a record header that failed its checksum still fits its place."""
    if h.seq != expect or h.lba + h.count > vol.num_blocks:
        return False
    if h.type == RecordType.WRITE:
        return h.count > 0 and h.length == h.count * vol.block_size
    if h.type == RecordType.UNMAP:
        return h.count > 0 and h.length == 0
    return h.count == 0 and h.lba == 0


def _zeros(vol: Volume, fh: int, off: int, end: int) -> bool:
    step = 1 << 20
    while off < end:
        n = min(step, end - off)
        if vol.files.pread(fh, n, off).count(0) != n:
            return False
        off += n
    return True


def _restore_primary(vol: Volume, ranges: list[tuple[int, int]], seq: int) -> int:
    """Write the blocks of ``ranges`` onto the primary as they were at ``seq``."""
    from volume_manager import history

    fs, bs = vol.files, vol.block_size
    layers = []
    for m in vol.maps:
        if m.from_seq >= seq:
            break
        if m.to_seq <= seq:
            try:
                layers.append(vol.map_extents(m))
                continue
            except (CorruptMapError, OSError):
                pass  # the log still holds every record of the interval
        layers.append(history.scan_extents(vol, m.row.start_seg, m.row.start_off, m.from_seq,
                                           min(m.to_seq, seq)))
    newest = vol.maps[-1].to_seq if vol.maps else vol.baseline_seq
    if seq > newest:
        layers.append(vol._tail.extents(newest, seq))
    changed = ext.compose(layers, bs)
    starts = changed["lba"].tolist()
    step = max(1, (1 << 20) // bs)
    done = 0
    for lba, count in ranges:
        for a in range(lba, lba + count, step):
            n = min(step, lba + count - a)
            fs.pwrite(vol._primary, history.read_layered(vol, changed, starts, a, n), a * bs)
            done += n
    fs.fdatasync(vol._primary)
    return done


def rebuild_map(vol: Volume, m: MapInfo, why: str) -> np.ndarray:
    """Rebuild a missing or damaged map file from the log records of its interval."""
    from volume_manager import history

    layer = history.scan_extents(vol, m.row.start_seg, m.row.start_off, m.from_seq, m.to_seq)
    extents = ext.compose([layer], vol.block_size)
    dm = mapcodec.DeltaMap(m.from_seq, m.to_seq, vol.block_size, m.granular, extents)
    vol._write_map_file(dm, durable=False)
    vol.recovery_report.append(f"delta map {m.row.file} was damaged ({why}); rebuilt from the log")
    return extents
