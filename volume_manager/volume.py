"""A protected volume: primary backstore + write log, markers and maps on a secondary.

Theory of operation (FORMAT.md has the bytes):

* ``write``/``unmap`` append one record to the active log segment's write
  buffer in memory (logbuf.py) and put it in the *pending* overlay. They do
  not touch the primary, and make no system call.
* A group commit (``flush``, a FUA write, the background committer, or a full
  overlay) writes the buffered log out to its segments and makes every record
  appended so far durable with one ``fdatasync`` per dirty segment, and only
  then applies the overlay to the primary. So the primary never leads the
  durable log, even under power loss; recovery redoes the log tail onto it.
* ``mark`` appends a marker record, makes the log durable, and turns the
  records since the previous marker into an immutable, block-ordered delta map.
* Reads of the live volume come from the primary with the overlay on top.

Locks: ``_lock`` guards the hot-path state and is held for microseconds;
``_job_lock`` (re-entrant) serialises the slow bookkeeping (markers, maps,
views, jobs) so that they see a stable list of maps. fsync and log writes run
outside ``_lock`` so writers go on while a commit waits on the disk. Taken in
this order: ``_job_lock``, ``_commit_lock``, ``_log_io_lock`` (log write-out),
``_primary_lock``, ``_lock``, then one of ``_next_cond`` (the next segment,
prepared ahead), ``_commit_wake`` or ``_write_wake`` (waking the committer or
the log writer). ``_room`` is a condition on ``_lock``: a writer that finds the
write buffer full waits on it, holding none of the locks a group commit takes (a
rewind writes with ``_job_lock`` held, which commits never take). A caller that must
not wait (the target's event loop) asks :meth:`Volume.has_room` first and, if there
is none, :meth:`Volume.when_room` for a call back.

Threads, when there is a commit interval: the committer (group commits), the
preparer (segments and buffer memory ahead of the writer) and, with
``direct_log``, the log writer (the buffer's write-out as records come).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import mmap
import os
import struct
import threading
import time
import uuid as uuidlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from crc32c import crc32c

from volume_manager import extents as ext
from volume_manager import mapcodec
from volume_manager.blockdev import FileMap, FileSpan, SpanSource, blocks_in, check_range
from volume_manager.catalog import Catalog, MapRow, MarkerRow
from volume_manager.errors import (
    CorruptMapError,
    EngineError,
    MarkerExistsError,
    PointError,
    ReadOnlyError,
    SecondaryFullError,
    VolumeClosedError,
)
from volume_manager.fileio import Buffer, FileLayer, OsFiles
from volume_manager.logbuf import ALIGN, SLAB_BYTES, ZERO_BLOCK, Slab, SlabPool
from volume_manager.pending import PendingMap
from volume_manager.points import check_marker_name
from volume_manager.records import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordFlag,
    RecordType,
    SegmentHeader,
    encode_segment_header,
)
from volume_manager.segments import segment_name
from volume_manager.sparse import copy_sparse
from volume_manager.tail import TailIndex

if TYPE_CHECKING:
    from volume_manager import history as history_mod
    from volume_manager import jobs as jobs_mod

__all__ = ["MapInfo", "Progress", "Volume", "VolumeOptions"]

FORMAT_VERSION = 1
# Plain ints for the hot path (IntEnum comparisons cost more).
_WRITE = int(RecordType.WRITE)
_UNMAP = int(RecordType.UNMAP)
_FUA = int(RecordFlag.FUA)
_HEADER_REST = struct.Struct("<BBHQQQII")
_U32 = struct.Struct("<I")
# Segments made ready ahead of the writer (Volume._prepare_next): one took up
# to 0.6 s to reserve while commits ran, longer than a segment of 1 MiB writes.
_PREPARED_AHEAD = 2
# Free write-buffer slabs below which the preparer maps more ahead of the writer, and
# how many it maps then.
_SLABS_LOW = 4
_SLABS_AHEAD = 8
_WRITEBACK_BYTES = 1 << 20
# Records at least this large are applied with the volume's lock let go (Volume._apply).
_UNLOCKED_APPLY_BYTES = 64 << 10
# How far ahead of a sequential reader the primary is read (see _read_ahead).
_READ_AHEAD = 8 << 20
_now_ns = time.time_ns
# Rows of the tail index's arrays as bytes (see volume_manager.pending._ROW for why).
_TAIL_ROW = struct.Struct("=5Q")
_TIME_ROW = struct.Struct("=2Q")
log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]

CATALOG = "catalog.db"
LOG_DIR = "log"
MAP_DIR = "maps"
BASELINE = "baseline.img"


@dataclass(frozen=True, slots=True)
class VolumeOptions:
    segment_bytes: int = 64 << 20
    # The overlay of unapplied writes is bounded: past the soft limit the
    # committer is woken, past the hard limit the writer commits inline. The
    # gap is what writers may run ahead of the group commits, which go at the
    # disk's pace: a burst of writes faster than the disk is absorbed as long
    # as it fits (as a write-back cache would, with the log's order kept). With
    # 256 MiB, 1 GiB of 1 MiB writes took 5.2-6.3 s here, the event loop
    # committing inline a third of the time; with 2 GiB, 2.6-3.1 s. The
    # overlay costs about 48 bytes of index per record; its data is in the
    # write buffer (below) or, past it, the log's page cache.
    pending_soft_bytes: int = 8 << 20
    pending_hard_bytes: int = 2 << 30
    # Memory the log's write buffer keeps (logbuf.py). Past it, buffered log
    # that is written out is let go before its records are applied: they are
    # then read back from the log file (the page cache, as a rule).
    buffer_bytes: int = 256 << 20
    # The buffer's memory after a burst: kept for the next one, its pages lazily
    # freed (the kernel takes them back if it needs memory) once the volume is idle
    # for a commit interval, and unmapped after this many seconds idle. Mapped and
    # zeroed afresh for every burst, it cost a fifth of the event loop's time under
    # 1 MiB writes here.
    buffer_keep_seconds: float = 60.0
    # Disk space for the active segment is reserved ahead of the records in
    # steps of this many bytes (FileLayer.reserve), so that a full secondary
    # fails the write that needs the space, when it is made, and never the
    # later write-out of records already acknowledged. (A file system without
    # fallocate reserves nothing: there a full secondary fails the volume at the
    # write-out, and writes acknowledged but not flushed are lost.) Reserving
    # a whole segment at once made 1 MiB writes slower here, not faster.
    reserve_bytes: int = 4 << 20
    # Write the log out with O_DIRECT (past the page cache, where the file system
    # has it), by a log writer thread of its own as the records come (with a
    # committer). Through the page cache every logged byte was copied into it and
    # written back by the kernel: with the committer's writeback hints and dropping
    # the log's pages once applied, half of the target's CPU under 1 MiB writes
    # here. Direct, the whole target took 1.3-1.5 ms of CPU per 1 MiB write against
    # 2.3-2.7 ms, and 805-976 MiB/s against 535-651 (tgtd: 598-738). With it the
    # buffer never lets go of slabs before their records are applied (that would
    # mean reading them back from the disk): a writer that finds it full waits.
    direct_log: bool = True
    # Background group commit: the log is made durable and the overlay applied
    # at least this often. None: only on flush/FUA/limits (tests drive commits).
    commit_interval: float | None = 0.5
    write_cache: bool = True  # False: every write is durable before it returns


@dataclass(slots=True)
class MapInfo:
    """A live delta map: its catalog row, and its extents once loaded."""

    row: MapRow
    _extents: np.ndarray | None = field(default=None, repr=False)

    @property
    def from_seq(self) -> int:
        return self.row.from_seq

    @property
    def to_seq(self) -> int:
        return self.row.to_seq

    @property
    def granular(self) -> bool:
        return self.row.granular


@dataclass(slots=True)
class _Segment:
    id: int
    first_seq: int
    fh: int
    end: int = 0  # bytes in the segment once sealed (the active one: see _seg_end)
    wfh: int = -1  # direct handle the write buffer is written out with, until sealed and synced


@dataclass(slots=True)
class _NextSegment:
    """A segment file made ready ahead of its roll (Volume._prepare_next)."""

    id: int
    fh: int
    wfh: int
    reserved: int  # bytes of disk space reserved in it


class Volume:
    """A protected volume. Implements :class:`volume_manager.blockdev.BlockDevice`."""

    # Hot-path state, set by recovery when the volume opens.
    _seq: int                      # newest record
    _durable_seq: int              # newest record known durable in the log
    _primary_synced: int           # newest record known durable on the primary
    _active: _Segment              # the segment records are appended to
    _seg_end: int                  # where the next record goes in it
    _tail_start: tuple[int, int]   # (segment, offset) of the first record after the newest map
    _wb_pos: int = 0               # log bytes of the active segment already sent to writeback
    _wb_asked: bool = False        # the committer is asked to start writeback past _wb_pos
    _committer: threading.Thread | None = None  # the group-commit thread, if any
    _log_writer: threading.Thread | None = None  # writes the log out (direct_log)

    # ------------------------------------------------------------------ setup
    def __init__(self, directory: str, *, files: FileLayer | None = None,
                 options: VolumeOptions | None = None, catalog_hook: Callable[..., None] |
                 None = None) -> None:
        # Use Volume.create or Volume.open.
        self.directory = directory
        self.files: FileLayer = files or OsFiles()
        self.options = options or VolumeOptions()
        self.catalog = Catalog(os.path.join(directory, CATALOG), after_commit=catalog_hook)
        self._lock = threading.Lock()
        self._job_lock = threading.RLock()
        self._commit_lock = threading.Lock()
        self._log_io_lock = threading.Lock()  # writing the buffered log out
        self._primary_lock = threading.Lock()  # the primary's fdatasync and checkpoints
        self._commit_wake = threading.Condition(threading.Lock())
        # The committer was asked to run and has not yet woken for it: later asks
        # skip the condition (half of all 4 KiB writes asked while the overlay
        # was past its soft limit), and an ask made while it is busy is not lost.
        self._wake_asked = False
        # The next segments, made ready by the preparer thread (_prepare_next):
        # the id being prepared (0: none) and those ready, in order.
        self._next_cond = threading.Condition(threading.Lock())
        self._preparing = 0
        self._next: list[_NextSegment] = []
        self._next_asked = False
        self._slabs_asked = False  # the preparer is asked to map slabs ahead
        self._write_wake = threading.Condition(threading.Lock())  # for the log writer
        # A writer that found the buffer full waits for slabs to be let go (with a
        # log writer: _relieve_buffer).
        self._room = threading.Condition(self._lock)
        # when_room's callbacks, with when they began to wait; under _lock.
        self._room_waiters: list[tuple[Callable[[], object], int]] = []
        self._closed = False
        self._failed: BaseException | None = None
        self.views: set[object] = set()
        self.recovery_report: list[str] = []
        # I/O since open, for status and metrics (plain ints: one thread writes each).
        self.reads = self.read_bytes = self.writes = self.written_bytes = 0
        # Writes that found the write buffer full (the disk behind the host), and the
        # time they waited for room, summed over them: a full write-back cache's signs.
        self.buffer_full_waits = 0
        self.buffer_full_ns = 0
        self._refusing: str | None = None

    @property
    def log_dir(self) -> str:
        return os.path.join(self.directory, LOG_DIR)

    @property
    def map_dir(self) -> str:
        return os.path.join(self.directory, MAP_DIR)

    @classmethod
    def create(cls, directory: str, primary: str, *, size: int | None = None,
               block_size: int = 512, files: FileLayer | None = None,
               options: VolumeOptions | None = None, progress: Progress | None = None,
               catalog_hook: Callable[..., None] | None = None) -> Volume:
        """Start protecting ``primary``: write its baseline, then open for I/O.

        A missing primary file is created (thin) with ``size`` bytes.
        """
        fs = files or OsFiles()
        if block_size < 512 or block_size & (block_size - 1):
            raise EngineError(f"block size {block_size} is not a power of two >= 512")
        fs.makedirs(directory)
        if fs.exists(os.path.join(directory, CATALOG)):
            raise EngineError(f"{directory} already holds a protected volume")
        if not fs.exists(primary):
            if size is None:
                raise EngineError(f"primary {primary} does not exist and no size was given")
            if size <= 0 or size % block_size:
                raise EngineError(f"size {size} is not a positive multiple of {block_size}")
            pfh = fs.open(primary, create=True)
            fs.truncate(pfh, size)
            fs.fdatasync(pfh)
            fs.fsync_dir(os.path.dirname(os.path.abspath(primary)))
        else:
            pfh = fs.open(primary)
        psize = fs.size(pfh)
        if psize < block_size:
            fs.close(pfh)
            raise EngineError(f"primary {primary} is smaller than one block")
        for sub in (LOG_DIR, MAP_DIR):
            fs.makedirs(os.path.join(directory, sub))
        copy_sparse(fs, pfh, os.path.join(directory, BASELINE), psize, progress)
        fs.close(pfh)
        fs.fsync_dir(directory)
        vol = cls(directory, files=fs, options=options, catalog_hook=catalog_hook)
        now = _now_ns()
        with vol.catalog.transaction() as db:
            for key, value in {
                "format": FORMAT_VERSION, "uuid": uuidlib.uuid4().hex,
                "block_size": block_size, "num_blocks": psize // block_size,
                "primary": os.path.abspath(primary), "baseline_seq": 0, "baseline_ts": now,
                "checkpoint_seq": 0, "checkpoint_seg": 1, "checkpoint_off": SEGMENT_HEADER_SIZE,
                "tail_seg": 1, "tail_off": SEGMENT_HEADER_SIZE, "first_live_seg": 1,
                "fade_to": -1, "rewinds": 0, "created_ns": now,
            }.items():
                Catalog.put(db, key, value)
        vol._load()
        return vol

    @classmethod
    def open(cls, directory: str, *, files: FileLayer | None = None,
             options: VolumeOptions | None = None,
             catalog_hook: Callable[..., None] | None = None) -> Volume:
        """Open a protected volume, recovering from any crash first."""
        fs = files or OsFiles()
        if not fs.exists(os.path.join(directory, CATALOG)):
            raise EngineError(f"{directory} holds no protected volume (no {CATALOG})")
        vol = cls(directory, files=fs, options=options, catalog_hook=catalog_hook)
        if vol.catalog.get("format") != FORMAT_VERSION:
            vol.catalog.close()
            raise EngineError(f"{directory}: unknown format {vol.catalog.get('format')!r}")
        vol._load()
        return vol

    def _load(self) -> None:
        from volume_manager import recovery

        cat = self.catalog
        self.block_size = cat.get_int("block_size")
        self.num_blocks = cat.get_int("num_blocks")
        self.uuid = bytes.fromhex(str(cat.get("uuid")))
        self.primary_path = str(cat.get("primary"))
        self._primary = self.files.open(self.primary_path)
        self.files.advise_random(self._primary)
        self._pread = self.files.pread  # bound once: read is the hot path
        # Spans need a real descriptor (the crash simulator's handles are not), of their
        # own: see SpanSource.
        self._spans = (SpanSource(os.dup(self._primary))
                       if isinstance(self.files, OsFiles) else None)  # fmt: skip
        self._map = (FileMap(self._primary, self.num_blocks * self.block_size)
                     if isinstance(self.files, OsFiles) else None)  # fmt: skip
        self._primary_len = 0  # bytes the primary file is known to hold (read_span)
        self._ra_next = -1     # where a sequential reader's next read would start
        self._ra_from = self._ra_until = 0  # the primary is read ahead over this range
        self._baseline = self.files.open(os.path.join(self.directory, BASELINE))
        self._segments: dict[int, _Segment] = {}
        self._pending = PendingMap(self.block_size)
        self._slabs: list[Slab] = []  # the write buffer, oldest first (logbuf.py)
        self._spilled_seq = 0  # records up to this one are no longer buffered (_spill)
        self._buffer_slabs = max(2, self.options.buffer_bytes // SLAB_BYTES)
        # Free slabs kept: twice the buffer, since slabs let go of while a commit
        # applies their records stay mapped until it has passed them (SlabPool.hold),
        # so a burst has up to that many at once; kept, none is mapped afresh once a
        # burst is under way. Lazily freed, then unmapped, when idle (_commit_loop).
        self._pool = SlabPool(2 * self._buffer_slabs)
        self._scratch = memoryview(mmap.mmap(-1, ALIGN))  # the block at the end of the log
        self._soft_limit = self.options.pending_soft_bytes
        self._segment_bytes = self.options.segment_bytes
        self._write_cache = self.options.write_cache
        self._tail = TailIndex()
        self._unsynced: set[int] = set()
        self._dir_dirty = False
        # Checkpoint requests (segment rolls, fade-out, close), numbered: the newest
        # asked for, taken by a commit that will write it, and written; and the
        # record the newest checkpoint written is at (-1: none since open).
        self._ck_asked = self._ck_taken = self._ck_done = 0
        self._ck_seq = -1
        self._dropped = (0, 0)  # the log's page cache is let go up to (segment, offset)
        self.markers: dict[str, MarkerRow] = {m.name: m for m in cat.markers()}
        self.maps: list[MapInfo] = [MapInfo(r) for r in cat.maps()]
        recovery.recover(self)
        self._start_buffer()
        self._committer = None
        self._preparer: threading.Thread | None = None
        if self.options.commit_interval is not None:
            self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                               name=f"commit:{os.path.basename(self.directory)}")
            self._committer.start()
            self._preparer = threading.Thread(target=self._prepare_loop, daemon=True,
                                              name=f"space:{os.path.basename(self.directory)}")
            # It starts at the first roll: a volume that is not written reserves nothing.
            self._preparer.start()
            if self.options.direct_log:
                self._log_writer = threading.Thread(
                    target=self._write_loop, daemon=True,
                    name=f"logw:{os.path.basename(self.directory)}")
                self._log_writer.start()

    # ------------------------------------------------------------- properties
    @property
    def read_only(self) -> bool:
        return False

    @property
    def seq(self) -> int:
        """Sequence number of the newest record."""
        return self._seq

    @property
    def baseline_seq(self) -> int:
        return self.catalog.get_int("baseline_seq")

    # ---------------------------------------------------------------- hot path
    def read(self, lba: int, count: int) -> bytes:
        if lba < 0 or count < 0 or lba + count > self.num_blocks:
            check_range(lba, count, self.num_blocks)
        size = count * self.block_size
        off = lba * self.block_size
        self._note_read(off, off + size)
        with self._lock:
            if self._closed:
                raise VolumeClosedError("volume is closed")
            data = self._pread(self._primary, size, off)
            if self._pending.overlaps(lba, count):
                buf = bytearray(data)
                buf.extend(bytes(size - len(buf)))
                self._pending.overlay(lba, count, buf, self._read_log)
                return bytes(buf)
        if len(data) < size:  # a primary file shorter than its size is sparse
            data += bytes(size - len(data))
        return data

    def read_view(self, lba: int, count: int) -> memoryview | None:
        """``count`` blocks at ``lba`` as a view of the primary file's mapping
        (blockdev.FileMap), for a transport that sends them as they are, as it would a
        span; None when :meth:`read` must answer, as for :meth:`read_span`. Safe for
        the reason given there."""
        bs = self.block_size
        start = lba * bs
        end = start + count * bs
        if lba < 0 or count <= 0 or lba + count > self.num_blocks:
            check_range(lba, count, self.num_blocks)
            return None
        pending = self._pending
        with self._lock:
            if self._closed:
                raise VolumeClosedError("volume is closed")
            fmap = self._map
            if fmap is None or (pending.bytes and pending.overlaps(lba, count)):
                return None
            view = fmap.view(start, end)
        if view is not None:
            self._note_read(start, end)
        return view

    def read_span(self, lba: int, count: int) -> FileSpan | None:
        """Where ``count`` blocks at ``lba`` lie in the primary file, for a transport to
        send with ``sendfile`` (blockdev.py); None when :meth:`read` must answer: some
        of them are unapplied writes (served from the log), the primary file is shorter
        (its sparse tail reads as zeros), or the file layer is not the real one.

        Safe because the primary only changes by applying writes the host sent before
        this read (they are unapplied now, so the range is refused) or after it, which
        the host cannot order before the read's completion unless it waits for it."""
        check_range(lba, count, self.num_blocks)
        bs = self.block_size
        end = (lba + count) * bs
        with self._lock:
            if self._closed:
                raise VolumeClosedError("volume is closed")
            spans = self._spans
            if spans is None or self._pending.overlaps(lba, count):
                return None
            if end > self._primary_len:
                self._primary_len = self.files.size(self._primary)
                if end > self._primary_len:
                    return None
        self._note_read(lba * bs, end)
        return FileSpan(spans, lba * bs, count * bs)

    def _note_read(self, start: int, end: int) -> None:
        """Count a read of primary bytes [start, end), and keep the primary read ahead
        of a reader going sequentially."""
        self.reads += 1
        self.read_bytes += end - start
        if start == self._ra_next:
            self._read_ahead(end)
        self._ra_next = end

    def _read_ahead(self, end: int) -> None:
        """A reader reached ``end`` reading sequentially: keep the primary read ahead of
        it, in steps of at least half the window. The kernel's own readahead is off for
        the primary (fileio.OsFiles.advise_random says why); without this, cold
        sequential reads ran at a third of the disk's speed here. One stream is
        followed; a jump backwards or past the window starts a new one."""
        until = self._ra_until
        if self._ra_from <= end and end + _READ_AHEAD // 2 <= until:
            return
        start = until if self._ra_from <= end < until else end
        self._ra_from, self._ra_until = end, end + _READ_AHEAD
        with contextlib.suppress(OSError):  # only a hint
            self.files.prefetch(self._primary, start, end + _READ_AHEAD - start)

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False,
              flags: int = 0) -> int:
        """Write whole blocks; returns the record's sequence number."""
        count, rest = divmod(len(data), self.block_size)
        if rest or lba < 0 or lba + count > self.num_blocks:
            check_range(lba, blocks_in(data, self.block_size), self.num_blocks)
        if count == 0:
            return self._seq
        if self._refusing is not None and not flags & RecordFlag.REWIND:
            raise SecondaryFullError(f"writes refused: {self._refusing}")
        if fua:
            flags |= _FUA
        if len(self._slabs) > self._buffer_slabs and self._log_writer is not None:
            self._wait_for_room()  # (not has_room(), with its two cheapest tests: per write)
        seq = self._append(_WRITE, flags, lba, count, data)
        self.writes += 1
        self.written_bytes += count * self.block_size
        if (fua or self._pending.bytes > self._soft_limit or not self._write_cache
                or len(self._slabs) > self._buffer_slabs):
            self._after_append(fua)
        return seq

    def unmap(self, lba: int, count: int, *, flags: RecordFlag = RecordFlag.NONE) -> int:
        check_range(lba, count, self.num_blocks)
        if count == 0:
            return self._seq
        seq = self._append(RecordType.UNMAP, flags, lba, count, b"")
        self._after_append(False)
        return seq

    def flush(self) -> None:
        """Return once log and primary are durable up to the newest write."""
        if self._closed:  # _commit may return early when nothing is left to do
            raise VolumeClosedError("volume is closed")
        self._commit(sync_primary=True)

    def has_room(self) -> bool:
        """Whether a write now goes into the write buffer without waiting. False while
        the buffer holds more than ``buffer_bytes`` with a log writer: the next write
        would wait for the group commit's apply to let slabs go (_wait_for_room). One
        write may take the buffer past that; the one after it waits. Lock-free: for the
        event loop, before each write."""
        return (len(self._slabs) <= self._buffer_slabs or self._log_writer is None
                or self._closed or self._failed is not None)  # fmt: skip

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once when :meth:`has_room` may be true again: slabs were let
        go, the volume failed or is closing (a write then raises at once). At once, in
        this thread, if it is true now. Otherwise from the thread that freed the room,
        holding the volume's lock: the callback must only hand over to its own thread
        (``loop.call_soon_threadsafe``)."""
        with self._lock:
            if not self.has_room():
                self.buffer_full_waits += 1
                self._room_waiters.append((callback, time.monotonic_ns()))
                return
        callback()

    def cancel_room_wait(self, callback: Callable[[], object]) -> bool:
        """Forget a :meth:`when_room` callback that is no longer wanted (its caller went
        away), so that the volume does not hold it until room comes; the time it waited
        still counts in ``buffer_full_ns``. False if it was not waiting (called back
        already, or never registered)."""
        with self._lock:
            for i, (waiting, since) in enumerate(self._room_waiters):
                if waiting is callback:
                    del self._room_waiters[i]
                    self.buffer_full_ns += time.monotonic_ns() - since
                    return True
        return False

    def _fail(self, exc: BaseException) -> None:
        """The volume failed (in a commit or one of its threads): writes raise from now
        on, so those waiting for room are called back."""
        self._failed = exc
        with self._lock:
            self._wake_room_waiters()

    def _wake_room_waiters(self) -> None:
        """Call back every caller of when_room (with _lock held)."""
        waiters, self._room_waiters = self._room_waiters, []
        now = time.monotonic_ns()
        for callback, since in waiters:
            self.buffer_full_ns += now - since
            try:
                callback()
            except Exception:  # theirs to report: the committer must go on
                log.exception("a callback waiting for room in %s failed", self.directory)

    def _after_append(self, fua: bool) -> None:
        if len(self._slabs) > self._buffer_slabs:
            self._relieve_buffer()
        if fua or not self.options.write_cache:
            self._commit(sync_primary=True)
        elif self._pending.bytes > self.options.pending_soft_bytes:
            if self._committer is None or self._pending.bytes > self.options.pending_hard_bytes:
                self._commit(sync_primary=False)
            elif not self._wake_asked:
                self._wake_committer()

    def _append(self, rtype: int, flags: int, lba: int, count: int,
                payload: bytes | bytearray | memoryview) -> int:
        # One copy: the caller's buffer goes into the log's write buffer with the
        # header in front; nothing keeps a reference to it. This runs once per
        # host write: every line here is paid per I/O.
        plen = len(payload)
        size = HEADER_SIZE + plen
        with self._lock:
            if self._closed or self._failed is not None:
                self._check_usable()
            seq = self._seq + 1
            ts = _now_ns()
            off = self._seg_end
            end = off + size
            if end > self._reserved or end > self._segment_bytes:
                try:
                    # Rolling to a new segment reserves space in it, which can
                    # find the secondary full too, and must fail the same way.
                    if end > self._segment_bytes and off > SEGMENT_HEADER_SIZE:
                        self._roll_segment(seq, size)
                        off = self._seg_end
                        end = off + size
                    if end > self._reserved:
                        self._reserve(end)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise SecondaryFullError(
                            f"secondary store {self.directory} is full: the write was not"
                            " done and history is intact; free space or fade out old history"
                        ) from exc
                    raise
            seg = self._active
            slab = self._slab
            pos = off - slab.start
            if pos + size > slab.view.nbytes:
                slab = self._next_slab(size)
                pos = off - slab.start
            # The record goes straight into the write buffer: header fields, data,
            # then the CRC of both in front.
            view = slab.view
            _HEADER_REST.pack_into(view, pos + 4, rtype, flags, 0, seq, ts, lba, count, plen)
            crc = crc32c(view[pos + 4: pos + HEADER_SIZE])
            if plen:
                view[pos + HEADER_SIZE: pos + size] = payload
                crc = crc32c(payload, crc)
            _U32.pack_into(view, pos, crc)
            slab.used = pos + size
            slab.last_seq = seq
            self._seg_end = end
            if end - self._wb_pos >= _WRITEBACK_BYTES and not self._wb_asked and \
                    self._committer is not None:
                # Another MiB of log buffered: the log writer (or the committer)
                # writes it out now, so the disk works while writers go on and the
                # next group commit's fdatasync has less left to wait for.
                self._wb_asked = True
                if self._log_writer is not None:
                    with self._write_wake:
                        self._write_wake.notify()
                else:
                    self._wake_committer()
            self._seq = seq
            # The active segment is always synced by a commit; _unsynced only
            # names sealed segments (added when they roll).
            t = self._tail
            t.times.frombytes(_TIME_ROW.pack(seq, ts))
            if rtype == _WRITE:
                t.rec.frombytes(_TAIL_ROW.pack(lba, count, seg.id, seq, off + HEADER_SIZE))
                self._pending.insert(lba, count, seq, seg.fh, off + HEADER_SIZE)
            elif rtype == _UNMAP:
                t.rec.frombytes(_TAIL_ROW.pack(lba, count, ext.ZERO_SEG, seq, 0))
                self._pending.insert(lba, count, seq, -1, 0)
            return seq

    def _wake_committer(self) -> None:
        with self._commit_wake:
            self._wake_asked = True
            self._commit_wake.notify()

    def _check_usable(self) -> None:
        if self._closed:
            raise VolumeClosedError("volume is closed")
        if self._failed is not None:
            raise EngineError(f"volume failed: {self._failed}") from self._failed

    def _roll_segment(self, first_seq: int, need: int) -> None:
        """Seal the active segment and start a new one with room reserved for a
        record of ``need`` bytes (called with _lock held). Its header goes into the
        write buffer like a record."""
        new_id = self._active.id + 1
        hdr = encode_segment_header(SegmentHeader(self.block_size, new_id, first_seq, self.uuid))
        ready = self._take_next(new_id)
        if ready is None:
            reserved = self._reservation(0, SEGMENT_HEADER_SIZE + need)
            fh, wfh = self._create_segment(new_id, reserved)
        else:
            fh, wfh, reserved = ready.fh, ready.wfh, ready.reserved
            if SEGMENT_HEADER_SIZE + need > reserved:  # a record larger than a segment
                end = self._reservation(reserved, SEGMENT_HEADER_SIZE + need)
                try:
                    self.files.reserve(wfh, reserved, end - reserved)
                except OSError:
                    self._discard_next(ready, unlink=False)  # the next roll reuses the name
                    raise
                reserved = end
        self._active.end = self._seg_end
        self._unsynced.add(self._active.id)  # sealed with unsynced bytes
        seg = self._segments[new_id] = _Segment(new_id, first_seq, fh, wfh=wfh)
        self._active = seg
        slab = self._pool.take(new_id, fh, 0, SLAB_BYTES)
        slab.view[:SEGMENT_HEADER_SIZE] = hdr
        slab.used = SEGMENT_HEADER_SIZE
        self._slabs.append(slab)
        self._slab = slab
        self._seg_end = SEGMENT_HEADER_SIZE
        self._reserved = reserved
        self._wb_pos = 0
        self._dir_dirty = True
        self._ck_asked += 1
        if self._preparer is not None:
            with self._next_cond:
                self._next_asked = True
                self._next_cond.notify_all()

    def _create_segment(self, seg_id: int, reserve: int) -> tuple[int, int]:
        """Create segment ``seg_id``'s file (emptied if a failed roll left it) with
        ``reserve`` bytes of disk space reserved; its read and write handles. On an
        error nothing stays open: the file is not yet part of the log (it has no
        header), and the next try reuses the name."""
        path = os.path.join(self.log_dir, segment_name(seg_id))
        fh = self.files.open(path, create=True)
        wfh = -1
        try:
            self.files.truncate(fh, 0)
            wfh = self.files.open(path, direct=self.options.direct_log)
            self.files.reserve(wfh, 0, reserve)
        except OSError:
            for h in (fh, wfh):
                if h >= 0:
                    with contextlib.suppress(OSError):
                        self.files.close(h)
            raise
        return fh, wfh

    def _take_next(self, new_id: int) -> _NextSegment | None:
        """The prepared segment ``new_id``, waiting if the preparer is at it now
        (the writer caught up with it); None if there is none (called with _lock
        held)."""
        with self._next_cond:
            while self._preparing == new_id:
                self._next_cond.wait()
            ready = self._next.pop(0) if self._next else None
        if ready is not None and ready.id != new_id:  # not expected: leave the files be
            with self._next_cond:
                stale, self._next = [ready, *self._next], []
            for r in stale:
                self._discard_next(r, unlink=False)
            ready = None
        return ready

    def _prepare_loop(self) -> None:
        """The preparer thread: the next segments, after every roll, and write-buffer
        slabs when the pool runs low."""
        while True:
            with self._next_cond:
                while not self._next_asked and not self._slabs_asked and not self._closed:
                    self._next_cond.wait()
                segment, self._next_asked = self._next_asked, False
            if self._closed:
                return
            if self._slabs_asked:
                self._map_slabs_ahead()
            if segment:
                self._prepare_next()

    def _map_slabs_ahead(self) -> None:
        """Map write-buffer slabs before the writer needs them (the preparer thread).
        Mapped by the event loop as a burst filled the buffer for the first time, they
        took a tenth of its time in the first GiB of 1 MiB writes here: 574-588 MiB/s,
        against 732-855 with this (slabs are populated without the GIL: SlabPool.fresh)."""
        made = []
        try:
            for _ in range(_SLABS_AHEAD):
                made.append(SlabPool.fresh())
        except OSError:
            pass  # no memory: the writer maps its own, and meets the error if it must
        finally:
            with self._lock:
                self._slabs_asked = False
                if not self._closed:
                    for mem in made:
                        if not self._pool.add(mem):
                            break

    def _prepare_next(self) -> None:
        """Create the segment after the active one, with space for all of it
        reserved, before the writer needs it (the preparer thread). With the
        writer reserving 4 MiB steps itself, its fallocates waited for the file
        system while commits ran, up to half a second each on ext4 here: a third
        of the event loop's time under 1 MiB writes (1 GiB in 3.8-4.4 s against
        2.4-2.7 s without them). Until the roll the file is empty, and an empty
        last segment is the end of the log (FORMAT.md). Best effort: on any error
        the writer makes the segment itself when it rolls, and meets a full
        secondary there."""
        with self._lock:
            if self._closed:
                return
            with self._next_cond:
                if self._preparing or len(self._next) >= _PREPARED_AHEAD:
                    return
                new_id = self._next[-1].id + 1 if self._next else self._active.id + 1
                self._preparing = new_id
        ready = None
        try:
            reserved = self._reservation(0, self._segment_bytes)
            fh, wfh = self._create_segment(new_id, reserved)
            ready = _NextSegment(new_id, fh, wfh, reserved)
        except OSError:
            pass  # the roll makes it, and meets the error there
        finally:
            with self._next_cond:
                self._preparing = 0
                if ready is not None:
                    self._next.append(ready)
                    self._next_asked = True  # the next one after it
                self._next_cond.notify_all()

    def _discard_next(self, ready: _NextSegment, unlink: bool = True) -> None:
        for h in (ready.fh, ready.wfh):
            with contextlib.suppress(OSError):
                self.files.close(h)
        if unlink:
            with contextlib.suppress(OSError):
                self.files.unlink(os.path.join(self.log_dir, segment_name(ready.id)))

    def _reservation(self, start: int, end: int) -> int:
        """Where a reservation from ``start`` that must reach ``end`` ends: a step
        further, but not past the segment's size limit unless ``end`` is; at a
        block boundary."""
        step = max(self.options.reserve_bytes, 1)
        end = max(end, min(start + step, self._segment_bytes))
        return end + (-end) % ALIGN  # the write-out writes whole blocks

    def _reserve(self, end: int) -> None:
        new = self._reservation(self._reserved, end)
        self.files.reserve(self._active.wfh, self._reserved, new - self._reserved)
        self._reserved = new

    # ------------------------------------------------------------ write buffer
    def _start_buffer(self) -> None:
        """After recovery: the write buffer starts at the end of the active
        segment, with the head of its last block (rewritten with the next
        record) read back from the file."""
        seg = self._active
        if seg.wfh < 0:
            seg.wfh = self.files.open(os.path.join(self.log_dir, segment_name(seg.id)),
                                      direct=self.options.direct_log)
        end = self._seg_end
        start = end - end % ALIGN
        slab = self._pool.take(seg.id, seg.fh, start, SLAB_BYTES)
        head = self.files.pread(seg.fh, end - start, start)
        if len(head) != end - start:
            raise EngineError(f"log segment {seg.id} is shorter than its records")
        slab.view[: len(head)] = head
        slab.used = slab.written = end - start
        self._slabs.append(slab)
        self._slab = slab
        self._reserved = end

    def _next_slab(self, need: int) -> Slab:
        """A new slab for the active segment, from the block holding the end of
        the log on (called with _lock held, when the record of ``need`` bytes does
        not fit in the current one)."""
        old = self._slab
        end = self._seg_end
        start = end - end % ALIGN
        carry = end - start
        cap = max(SLAB_BYTES, carry + need)
        slab = self._pool.take(old.seg, old.fh, start, cap + (-cap) % ALIGN)
        if len(self._pool) < _SLABS_LOW and self._preparer is not None and \
                not self._slabs_asked:
            self._slabs_asked = True
            with self._next_cond:
                self._next_cond.notify_all()
        if carry:
            a = start - old.start
            slab.view[:carry] = old.view[a: a + carry]
        # The carried head is the old slab's to write; this slab rewrites its block.
        slab.used = slab.written = carry
        self._slabs.append(slab)
        self._slab = slab
        return slab

    def _read_log(self, fh: int, length: int, offset: int) -> Buffer:
        """``length`` log bytes of the segment open as ``fh``: from the write
        buffer while it holds them (unapplied records are, unless spilled), else the file.
        Called with _lock held."""
        for slab in reversed(self._slabs):
            if slab.holds(fh, offset, length):
                a = offset - slab.start
                return slab.view[a: a + length]
        return self.files.pread(fh, length, offset)

    def write_out(self) -> None:
        """Write every record appended so far to its log segment (not durably).

        Readers of the log files (history, jobs) call this once they know the
        newest record they need; a group commit calls it before its fdatasync."""
        with self._log_io_lock:
            self._write_out_locked()

    def _write_out_locked(self, start_writeback: bool = True) -> None:
        with self._lock:
            todo = [(s, s.written, s.used) for s in self._slabs if s.used > s.written]
        for slab, a, b in todo:
            self._write_slab(slab, a, b, start_writeback)
            slab.written = b  # only under _log_io_lock does it move
        if len(self._slabs) > self._buffer_slabs and self._log_writer is None:
            with self._lock:
                self._spill()

    def _relieve_buffer(self) -> None:
        """The write buffer holds more than ``buffer_bytes``: the committer is
        behind, in an fdatasync or applying.

        With a log writer (direct_log), make sure a commit is coming: the next
        write waits for its apply to let slabs go (_wait_for_room). The disk is
        the limit, as for a write-back cache that is full. Letting go of unapplied
        slabs instead made the apply read their records back from the disk, under
        1 MiB writes half of the committer's time and a third of the throughput.

        Through the page cache, let go of what is written out (its pages serve
        the apply); if that is not enough, write out here, unless a write-out is
        under way (it lets go when done): waiting for it would stall the writer.
        Cheaper than mapping fresh slabs (about 1 against 2.5 ms per 4 MiB here),
        and the buffer's memory stays bounded."""
        if self._log_writer is not None:
            with self._lock:
                if not self._wake_asked:
                    self._wake_committer()
            return
        with self._lock:
            self._spill()
        if len(self._slabs) > self._buffer_slabs and self._log_io_lock.acquire(blocking=False):
            try:
                # No writeback hint from here: with the disk behind, queueing more
                # for it blocked the writer (the event loop) for up to half a second.
                self._write_out_locked(start_writeback=False)
            finally:
                self._log_io_lock.release()

    def _wait_for_room(self) -> None:
        """Before a write, with a log writer: wait while the buffer is over its size,
        until the group commit's apply lets slabs go (_relieve_buffer)."""
        with self._room:
            since = time.monotonic_ns()
            self.buffer_full_waits += 1
            while len(self._slabs) > self._buffer_slabs and not self._closed \
                    and self._failed is None:
                if not self._wake_asked:
                    self._wake_committer()
                # (A timeout too: a committer that fails notifies no one.)
                self._room.wait(0.1)
            self.buffer_full_ns += time.monotonic_ns() - since

    def _spill(self) -> None:
        """Let go of the oldest written-out slabs while the buffer holds more than
        ``buffer_bytes``, applied or not: their records are in the log file now,
        where _read_log finds them, as a rule in the page cache (called with _lock
        held; not with a log writer, whose log is not cached: _relieve_buffer)."""
        over = len(self._slabs) - self._buffer_slabs
        keep = []
        for slab in self._slabs:
            # Only the newest slabs can be short of written out (appended since
            # write_out looked): the ones let go are always the oldest.
            if over > 0 and slab is not self._slab and slab.written >= slab.used:
                self._pool.give(slab)
                self._spilled_seq = max(self._spilled_seq, slab.last_seq)
                over -= 1
            else:
                keep.append(slab)
        self._slabs = keep

    def _write_slab(self, slab: Slab, a: int, b: int, start_writeback: bool = True) -> None:
        """Write slab bytes [a, b) to the file, in whole blocks: from the start of
        the block holding ``a``, and the block holding ``b`` padded with zeros.
        Bytes past ``b`` may be being appended meanwhile, so that block goes
        through a scratch copy."""
        lo, mid = a - a % ALIGN, b - b % ALIGN
        bufs: list[Buffer] = []
        if mid > lo:
            bufs.append(slab.view[lo:mid])
        if b > mid:
            scratch, n = self._scratch, b - mid
            scratch[:n] = slab.view[mid:b]
            scratch[n:] = ZERO_BLOCK[n:]
            bufs.append(scratch)
        seg = self._segments[slab.seg]
        size = sum(len(x) for x in bufs)
        try:
            done = self.files.pwritev(seg.wfh, bufs, slab.start + lo)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # A file system that took O_DIRECT at open but not these writes:
            # go on with an ordinary handle.
            path = os.path.join(self.log_dir, segment_name(seg.id))
            self.files.close(seg.wfh)
            seg.wfh = self.files.open(path)
            done = self.files.pwritev(seg.wfh, bufs, slab.start + lo)
        if done != size:
            raise OSError(errno.EIO, f"short write to log segment {seg.id}")
        if start_writeback and not self.options.direct_log:
            # Through the page cache: the disk starts on it now, so the commit's
            # fdatasync has less left to wait for.
            with contextlib.suppress(OSError):  # only a hint
                self.files.start_writeback(seg.wfh, slab.start + lo, size)

    def _release_slabs(self, applied: int) -> None:
        """Let go of the slabs whose records are all written out and applied, up to
        ``applied``, and wake writers waiting for room (called with _lock held: by the
        apply after each copy it made without the lock, and when a commit ends)."""
        keep = []
        for slab in self._slabs:
            if slab is self._slab or slab.last_seq > applied or slab.written < slab.used:
                keep.append(slab)
            else:
                self._pool.give(slab)
        if len(keep) < len(self._slabs):
            self._slabs = keep
            self._room.notify_all()
            if self._room_waiters and len(keep) <= self._buffer_slabs:
                self._wake_room_waiters()

    # ------------------------------------------------------------ group commit
    def ask_checkpoint(self) -> None:
        """Have the next commit write a checkpoint (redo after a crash starts there)."""
        with self._lock:  # segment rolls ask too, from the writers' thread
            self._ck_asked += 1

    def _commit(self, *, sync_primary: bool) -> None:
        need = self._seq
        with self._commit_lock:
            # Group commit: while this caller waited for the lock, another
            # commit may already have covered everything it needs.
            if self._durable_seq >= need and self._ck_asked == self._ck_done:
                if not sync_primary or self._primary_synced >= need:
                    return
                # Only the primary's sync is left, which may be under way: no
                # new log commit (every durable record is applied already).
                target, next_pos, ck_asked, ck_mine = self._durable_seq, (0, 0), 0, False
            else:
                target, next_pos, ck_asked, ck_mine = self._commit_log()
        if not sync_primary and not ck_mine:
            return  # a writer pushed by the overlay's limit waits for no checkpoint
        # Outside _commit_lock: the primary's fdatasync writes back every page
        # applied since the last one (at a segment roll, up to a segment's worth
        # of scattered blocks, a quarter of a second here), and the next group
        # commit of the log, which writers may be waiting for, need not wait
        # for it. The write-ahead rule holds: all of it was applied after its
        # log records were durable.
        with self._primary_lock:
            if self._primary_synced < target:
                self.files.fdatasync(self._primary)
                self._primary_synced = target
            # A caller of flush() also needs any checkpoint asked for before it
            # written (fade-out deletes what redo would need otherwise); one at a
            # newer record written meanwhile serves as well.
            if ck_asked > self._ck_done:
                if target > self._ck_seq:
                    self._write_checkpoint(target, next_pos)
                    self._ck_seq = target
                self._ck_done = ck_asked

    def _commit_log(self) -> tuple[int, tuple[int, int], int, bool]:
        """The log part of a group commit (called with _commit_lock held): write the
        buffered log out, make it durable, apply it. Returns the record it reached,
        the log position after it, the checkpoint request it saw and whether it took
        that request (the caller writes the checkpoint)."""
        with self._lock:
            if self._closed:
                raise VolumeClosedError("volume is closed")
            target = self._seq
            active = self._active  # (a writer may roll to a new one meanwhile)
            segs = [self._segments[s] for s in sorted(self._unsynced)
                    if s != active.id] + [active]
            self._unsynced.clear()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            next_pos = (self._active.id, self._seg_end)
            ck_asked = self._ck_asked
        try:
            self.write_out()
            for s in segs:
                if s is not active and s.wfh >= 0:
                    # Sealed: the zeros after its last record go (readers
                    # pass from a segment to the next at its end of file).
                    self.files.truncate(s.fh, s.end)
                self.files.fdatasync(s.fh)
                if s is not active and s.wfh >= 0:
                    self.files.close(s.wfh)
                    s.wfh = -1
            if dir_dirty:
                self.files.fsync_dir(self.log_dir)
        except OSError as exc:
            self._fail(exc)
            raise
        with self._lock:
            self._durable_seq = max(self._durable_seq, target)
            # The records stay in the overlay until applied: _apply lets go of the lock
            # around large copies, and reads of their blocks come from the log meanwhile.
            records = self._pending.upto(target)
            slabs = list(self._slabs)
            spilled = self._spilled_seq
            self._pool.hold()
            try:
                self._apply(records, slabs, spilled)
                self._pending.drop_upto(target)
                self._release_slabs(target)
            finally:
                self._pool.release()
        self._drop_behind(segs, next_pos)
        ck_mine = ck_asked > self._ck_taken
        if ck_mine:
            self._ck_taken = ck_asked
        return target, next_pos, ck_asked, ck_mine

    def _drop_behind(self, segs: list[_Segment], upto: tuple[int, int]) -> None:
        """Let the page cache go of the log that is now durable and applied, up to
        ``upto`` (segment, offset), as databases do with their write-ahead logs (with
        VolumeOptions.direct_log the log has no pages there: a no-op). It is
        read again only for history (views, rewind, clone, playback), rarely and mostly
        long after; kept, it would grow with every write and push the primary's pages
        out. New page-cache pages also cost a first touch each on this VM: with this,
        CPU per 4 KiB write through the target fell by about a tenth here (59 to 54 us),
        system time per 1 MiB write by a quarter to a half. Called with _commit_lock
        held."""
        seg0, off0 = self._dropped
        for s in segs:
            if s.id < seg0:
                continue
            start = off0 if s.id == seg0 else 0
            if s.id == upto[0]:  # the active segment: only what this commit covered
                length = upto[1] - start
                if length <= 0:  # (0 would mean "to the end": records not yet durable)
                    continue
            else:
                length = 0  # sealed: to its end
            with contextlib.suppress(OSError):  # only a hint (a faded segment is gone)
                self.files.drop_cache(s.fh, start, length)
        self._dropped = upto

    def _apply(self, records: array[int], slabs: list[Slab], spilled: int) -> None:
        """Write durable records (PendingMap rows) to the primary, in sequence order,
        from the write buffer's ``slabs`` as they were when the commit took them, or,
        for records it had let go of by then (seq <= ``spilled``, see _spill), from the
        log file. Called with _lock held; it lets go of it around each large copy, so
        the event loop goes on meanwhile: held for a whole commit under 1 MiB writes,
        it had stopped the loop for a sixth of a second per commit, half of the run.
        Small records keep it: letting go per 4 KiB copy cost more CPU per write in
        handing the GIL back and forth than the loop gained. Slabs let go of meanwhile
        keep their bytes (SlabPool.hold). Per host write: no object per record."""
        bs = self.block_size
        fs = self.files
        primary = self._primary
        pool = self._pool
        k = 0  # records and slabs are both in sequence order: one pass over each
        slab = slabs[0] if slabs else None
        rows = iter(records)
        for lba, count, seq, fh, off, _link in zip(rows, rows, rows, rows, rows, rows, strict=True):
            n = count * bs
            if fh < 0:
                fs.punch_hole(primary, lba * bs, n)
                continue
            data: Buffer | None = None
            if seq > spilled:
                while slab is not None and not slab.holds(fh, off, n):
                    k += 1
                    slab = slabs[k] if k < len(slabs) else None
                if slab is not None:
                    a = off - slab.start
                    data = slab.view[a: a + n]
                else:  # not expected: records newer than the spilled are buffered
                    k = 0
                    slab = slabs[0] if slabs else None
            if data is None:  # the log file has it: durable before any apply
                data = fs.pread(fh, n, off)
                if len(data) != n:
                    raise EngineError(f"log segment is shorter than record {seq}")
            if n < _UNLOCKED_APPLY_BYTES:
                fs.pwrite(primary, data, lba * bs)
                continue
            self._lock.release()
            try:
                fs.pwrite(primary, data, lba * bs)
                if n >= _WRITEBACK_BYTES:
                    # The disk starts on it while the next is copied, so the primary's
                    # fdatasync that ends a flush has less to wait for (its log record
                    # is durable already: the write-ahead rule holds).
                    fs.start_writeback(primary, lba * bs, n)
            finally:
                self._lock.acquire()
            # The slabs this pass has gone by are free now: those let go of meanwhile
            # and those it applied (the buffer has room again for a waiting writer).
            self._release_slabs(seq)
            if pool.parked:
                pool.release_upto(seq)

    def _write_checkpoint(self, seq: int, pos: tuple[int, int]) -> None:
        """Record that the primary is durable through ``seq``; redo starts after it.

        The same transaction refreshes the catalog's segment index (an index
        only: recovery trusts the log directory and the segment headers).
        """
        with self._lock:
            segs = sorted((s.id, s.first_seq, self._seg_end if s is self._active else s.end)
                          for s in self._segments.values())
        with self.catalog.transaction() as db:
            Catalog.put(db, "checkpoint_seq", seq)
            Catalog.put(db, "checkpoint_seg", pos[0])
            Catalog.put(db, "checkpoint_off", pos[1])
            Catalog.set_segments(db, segs)

    def _early_writeback(self) -> None:
        """Write out the log buffered since the last call (asked for by _append
        every _WRITEBACK_BYTES); durability still comes from the next commit."""
        with self._lock:
            self._wb_asked = False
            if self._closed:
                return
            self._wb_pos = self._seg_end
        self.write_out()

    def _write_loop(self) -> None:
        """The log writer thread (direct_log): writes the buffered log out every
        _WRITEBACK_BYTES, as the committer does through the page cache. Direct
        writes wait for the disk, which would hold up the commits, and, once the
        buffer was full, the event loop (that had written out itself: 289-545 MiB/s
        of 1 MiB writes here against 805-976 with this thread)."""
        while True:
            with self._write_wake:
                while not self._wb_asked and not self._closed:
                    self._write_wake.wait()
            if self._closed:
                return
            try:
                self._early_writeback()
            except VolumeClosedError:
                return
            except Exception as exc:
                self._fail(exc)
                return

    def _commit_loop(self) -> None:
        interval = self.options.commit_interval
        assert interval is not None
        last = busy = time.monotonic()
        while True:
            with self._commit_wake:
                if not self._wake_asked:
                    self._commit_wake.wait(max(0.0, last + interval - time.monotonic()))
                self._wake_asked = False
            if self._closed:
                return
            try:
                if self._wb_asked and self._log_writer is None:
                    self._early_writeback()
                # Woken only for writeback: the commit waits for its interval, the
                # overlay's soft limit or a full buffer (a writer waits for room).
                now = time.monotonic()
                if now - last < interval and self._pending.bytes <= self._soft_limit \
                        and len(self._slabs) <= self._buffer_slabs:
                    continue
                last = now
                if self._seq > self._durable_seq or self._ck_asked > self._ck_done:
                    self._commit(sync_primary=False)
                    busy = now
                elif self._pool.hot:
                    with self._lock:  # idle for an interval: the burst's memory may go
                        self._pool.idle()
                elif len(self._pool) > 1 and now - busy >= self.options.buffer_keep_seconds:
                    with self._lock:  # idle for long: it goes
                        self._pool.trim()
            except VolumeClosedError:
                return
            except Exception as exc:
                self._fail(exc)
                return

    # ------------------------------------------------- retention bookkeeping
    def set_map_class(self, from_seq: int, to_seq: int, klass: str) -> int:
        """Label the live maps within [from_seq, to_seq] with retention class ``klass``
        (the policy engine's record of which class last processed them); returns how
        many maps were relabelled."""
        with self._job_lock:
            hits = [i for i, m in enumerate(self.maps)
                    if from_seq <= m.from_seq and m.to_seq <= to_seq and m.row.klass != klass]
            if not hits:
                return 0
            with self.catalog.transaction() as db:
                for i in hits:
                    db.execute("UPDATE maps SET class=? WHERE id=?", (klass, self.maps[i].row.id))
            for i in hits:
                m = self.maps[i]
                self.maps[i] = MapInfo(dataclasses.replace(m.row, klass=klass), m._extents)
            return len(hits)

    def set_pinned(self, name: str, pinned: bool) -> MarkerRow:
        """Pin a marker (no merge or fade-out removes it) or unpin it."""
        with self._job_lock:
            marker = self.markers.get(name)
            if marker is None:
                raise PointError(f"no marker named {name!r}")
            with self.catalog.transaction() as db:
                db.execute("UPDATE markers SET pinned=? WHERE name=?", (int(pinned), name))
            marker = self.markers[name] = dataclasses.replace(marker, pinned=pinned)
            return marker

    def refuse_writes(self, reason: str | None) -> None:
        """Refuse host writes (``SecondaryFullError`` with ``reason``) until called with
        None: a space budget's ``refuse_writes`` action. Rewinds and other jobs of the
        switch still write (they are how space is won back)."""
        self._refusing = reason

    @property
    def writes_refused(self) -> str | None:
        return self._refusing

    def segment_sizes(self) -> list[tuple[int, int, int]]:
        """(id, first seq, bytes) of every live log segment, oldest first."""
        with self._lock:
            return [(s.id, s.first_seq, self._seg_end if s is self._active else s.end)
                    for s in sorted(self._segments.values(), key=lambda s: s.id)]

    # ----------------------------------------------------------------- markers
    def mark(self, name: str | None = None, *, pinned: bool = False) -> MarkerRow:
        """Insert a marker; returns once it is durable and its delta map exists."""
        if name is not None:
            check_marker_name(name)
        with self._job_lock:
            if name is not None and name in self.markers:
                raise MarkerExistsError(f"marker {name!r} already exists at "
                                        f"seq:{self.markers[name].seq}")
            label = name or f"m{self._seq + 1}"
            if label in self.markers:
                raise MarkerExistsError(f"marker {label!r} already exists")
            seq = self._append(RecordType.MARK, 0, 0, 0, label.encode())
            with self._lock:
                tail, self._tail = self._tail, TailIndex()
                tail_start = self._tail_start
                self._tail_start = (self._active.id, self._seg_end)
            ts = tail.last_ts
            marker = MarkerRow(label, seq, ts, pinned)
            try:
                self._commit(sync_primary=False)
                self._persist_interval(tail, tail_start, seq, ts, marker)
            except OSError as exc:
                # No map (e.g. the secondary is full): give the interval back to
                # the open one, so the next marker's map still covers its records.
                # The MARK record stays in the log; recovery restores the marker
                # from it unless a later map covers it.
                with self._lock:
                    tail.extend(self._tail)
                    self._tail = tail
                    self._tail_start = tail_start
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SecondaryFullError(
                        f"secondary store {self.directory} is full: marker {label!r} was not"
                        " made; free space or fade out old history") from exc
                raise
            return marker

    def _persist_interval(self, tail: TailIndex, start: tuple[int, int], seq: int, ts: int,
                          marker: MarkerRow) -> None:
        """Write the delta map of the interval a marker closes, then catalog both."""
        prev = self.maps[-1].to_seq if self.maps else self.baseline_seq
        extents = ext.compose([tail.extents()], self.block_size)
        dm = mapcodec.DeltaMap(prev, seq, self.block_size, True, extents)
        fname = self._write_map_file(dm, durable=False)
        row = MapRow(0, prev, seq, ts, fname, len(extents), True, "", start[0], start[1],
                     mapcodec.HEADER_SIZE + extents.nbytes)
        with self.catalog.transaction() as db:
            Catalog.add_marker(db, marker)
            row_id = Catalog.add_map(db, row)
            Catalog.put(db, "tail_seg", self._tail_start[0])
            Catalog.put(db, "tail_off", self._tail_start[1])
        row = MapRow(row_id, *_fields(row)[1:])
        self.maps.append(MapInfo(row, extents))
        self.markers[marker.name] = marker

    def _write_map_file(self, dm: mapcodec.DeltaMap, *, durable: bool = True) -> str:
        """Write a map file. A map is derived data: the log keeps every record
        after the baseline, so a map file lost or torn by a crash is rebuilt
        (see :meth:`map_extents`); ``durable=False`` skips the two syncs."""
        fname = f"{dm.from_seq:016x}-{dm.to_seq:016x}.dmap"
        path = os.path.join(self.map_dir, fname)
        data = mapcodec.encode(dm)
        fh = self.files.open(path, create=True)
        try:
            self.files.truncate(fh, 0)
            self.files.pwrite(fh, data, 0)
            if durable:
                self.files.fdatasync(fh)
        finally:
            self.files.close(fh)
        if durable:
            self.files.fsync_dir(self.map_dir)
        return fname

    def map_extents(self, m: MapInfo) -> np.ndarray:
        """The extents of a live map, loaded (and checksum-verified) on first use;
        a missing or damaged file is rebuilt from the log, and that is reported."""
        if m._extents is None:
            try:
                m._extents = self._read_map_file(m).extents
            except (CorruptMapError, OSError) as exc:
                from volume_manager.recovery import rebuild_map

                m._extents = rebuild_map(self, m, str(exc))
        return m._extents

    def _read_map_file(self, m: MapInfo) -> mapcodec.DeltaMap:
        """Read and decode (checksums verified) the file of a live map."""
        fh = self.files.open(os.path.join(self.map_dir, m.row.file), read_only=True)
        try:
            data = self.files.pread(fh, self.files.size(fh), 0)
        finally:
            self.files.close(fh)
        return mapcodec.decode(data)

    def verify(self, progress: Progress | None = None) -> list[str]:
        """Check every log record and every map file; return the problems found.

        Recovery only verifies the log from the last checkpoint on; this walks
        all retained history (it reads every byte of the log, so it is a long
        job). Nothing is changed: damage is reported, with where it is.
        """
        from volume_manager.segments import LogWalker

        problems: list[str] = []
        with self._job_lock:
            if not self._segments:
                return problems
            first = min(self._segments)
            handles = {s.id: s.fh for s in self._segments.values()}
            with self._lock:
                newest = self._seq
            self.write_out()
            walker = LogWalker(self.files, handles, first, SEGMENT_HEADER_SIZE,
                               self._segments[first].first_seq, stop_after_seq=newest)
            for rec, _ in walker.records():
                if progress is not None and rec.header.seq % 4096 == 0:
                    progress(rec.header.seq - self.baseline_seq, newest - self.baseline_seq)
            if walker.last_seq < newest:
                stop = walker.stop
                problems.append(f"log segment {stop.seg} offset {stop.offset}: {stop.reason};"
                                f" records seq:{walker.last_seq + 1}..seq:{newest} cannot be"
                                " verified")
            for m in self.maps:
                try:
                    self._read_map_file(m)
                except (EngineError, OSError) as exc:
                    problems.append(f"delta map {m.row.file}: {exc}")
        return problems

    def segment_fh(self, seg: int) -> int:
        s = self._segments.get(seg)
        if s is None:
            raise EngineError(f"log segment {seg} is gone")
        return s.fh

    # ------------------------------------------------------------- history API
    def resolve(self, point: str | int) -> int:
        """Sequence number of a POINT (marker, ``seq:N``, timestamp, ``-15m``, ``now``)."""
        from volume_manager import history

        with self._job_lock:
            return history.resolve(self, point)

    def view(self, point: str | int) -> history_mod.PointInTimeView:
        """A read-only block device showing the volume at ``point``."""
        from volume_manager import jobs

        return jobs.view(self, point)

    def rewind(self, point: str | int, **kw: object) -> jobs_mod.RewindResult:
        from volume_manager import jobs

        return jobs.rewind(self, point, **kw)  # type: ignore[arg-type]

    def clone(self, point: str | int, dest_path: str, **kw: object) -> int:
        from volume_manager import jobs

        return jobs.clone(self, point, dest_path, **kw)  # type: ignore[arg-type]

    def playback(self, start: str | int, end: str | int, lba: int, count: int,
                 dest: object, **kw: object) -> int:
        from volume_manager import jobs

        return jobs.playback(self, start, end, lba, count, dest, **kw)  # type: ignore[arg-type]

    def merge(self, start: str | int, end: str | int, *, klass: str | None = None) -> MapRow:
        from volume_manager import jobs

        return jobs.merge(self, start, end, klass=klass)

    def fade(self, before: str | int, **kw: object) -> jobs_mod.FadeResult:
        from volume_manager import jobs

        return jobs.fade(self, before, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------- close
    def close(self) -> None:
        """Flush, write a checkpoint so the next open has nothing to redo, close."""
        if self._closed:
            return
        with self._job_lock:
            for v in list(self.views):
                v.close()  # type: ignore[attr-defined]
            if self._failed is None:
                self.ask_checkpoint()
                self.flush()
                # The zeros after the last record (logbuf.py) go: the file ends
                # where the log does, as the next open expects after a clean close.
                seg = self._active
                if self.files.size(seg.fh) > self._seg_end:
                    self.files.truncate(seg.fh, self._seg_end)
                    self.files.fdatasync(seg.fh)
            self._shutdown()

    def abandon(self) -> None:
        """Drop the volume without flushing, as a crash would (tests)."""
        self._shutdown(clean=False)

    def _shutdown(self, clean: bool = True) -> None:
        with self._lock:
            self._closed = True
        with self._commit_wake:
            self._commit_wake.notify_all()
        with self._next_cond:
            self._next_cond.notify_all()
        with self._write_wake:
            self._write_wake.notify_all()
        with self._room:
            self._room.notify_all()
            self._wake_room_waiters()
        if self._committer is not None and self._committer is not threading.current_thread():
            self._committer.join()
        if self._preparer is not None:
            self._preparer.join()
        if self._log_writer is not None:
            self._log_writer.join()
        for s in self._segments.values():
            self.files.close(s.fh)
            if s.wfh >= 0:
                self.files.close(s.wfh)
        self._segments.clear()
        for ready in reversed(self._next):  # a crash leaves them (recovery deletes them)
            self._discard_next(ready, unlink=clean)
        self._next.clear()
        self._slabs.clear()
        self._pool.trim(0)
        if self._spans is not None:
            self._spans.close()
        if self._map is not None:
            with self._lock:
                self._map.close()
        self.files.close(self._primary)
        self.files.close(self._baseline)
        self.catalog.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("volume is read-only")


def _fields(row: MapRow) -> tuple:  # type: ignore[type-arg]
    return (row.id, row.from_seq, row.to_seq, row.to_ts_ns, row.file, row.entries,
            row.granular, row.klass, row.start_seg, row.start_off, row.bytes)
