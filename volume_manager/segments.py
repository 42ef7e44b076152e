"""Log segments: naming, and the verifying scanner every reader of the log uses.

A segment is ``log/<id as 16 hex digits>.seg``: a 64-byte segment header, then
records back to back (FORMAT.md). The scanner checks each record's framing, its
CRC32C and that sequence numbers are dense, and stops at the first record that
fails, saying where and why; it never yields a record it could not verify.

Zeros from the end of the last record to the end of the file, within the block
that record ends in, are the end of the segment, not damage: the log is
written out in whole blocks (logbuf.py), and a segment is trimmed to its last
record only when it is sealed and synced, or closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from volume_manager.fileio import DIRECT_ALIGN, FileLayer
from volume_manager.records import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordHeader,
    SegmentHeader,
    check_crc,
    decode_header,
    decode_segment_header,
)

__all__ = ["LogScanner", "ScanRecord", "ScanStop", "parse_segment_name", "segment_name"]

_CHUNK = 4 << 20
# Bounds a corrupt length field so the scanner never tries to read gigabytes.
MAX_RECORD_PAYLOAD = 64 << 20


def segment_name(seg: int) -> str:
    return f"{seg:016x}.seg"


def parse_segment_name(name: str) -> int | None:
    if len(name) != 20 or not name.endswith(".seg"):
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ScanRecord:
    header: RecordHeader
    seg: int
    offset: int  # of the record header

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.header.length


@dataclass(frozen=True, slots=True)
class ScanStop:
    """Where a scan ended. ``reason`` is None for a clean end of the segment."""

    seg: int
    offset: int
    reason: str | None


class LogScanner:
    """Verified records of one segment from ``offset`` on.

    ``expect_seq`` is the sequence number the first record must carry. After
    iteration, :attr:`stop` says where and why the scan ended. With
    ``payloads=True`` each record comes with its payload bytes.
    """

    def __init__(self, files: FileLayer, fh: int, seg: int, offset: int, expect_seq: int,
                 *, stop_after_seq: int | None = None) -> None:
        self._files = files
        self._fh = fh
        self._seg = seg
        self._start = offset
        self._expect = expect_seq
        self._stop_after = stop_after_seq
        self._size = files.size(fh)
        self._buf = b""
        self._base = 0
        self.stop = ScanStop(seg, offset, None)
        self.at_end = False  # the scan ended at the end of the segment's records

    def _get(self, off: int, n: int) -> memoryview:
        if off < self._base or off + n > self._base + len(self._buf):
            want = max(n, _CHUNK)
            self._buf = self._files.pread(self._fh, want, off)
            self._base = off
        a = off - self._base
        return memoryview(self._buf)[a: a + n]

    def _padding(self, off: int) -> bool:
        """Whether [off, end of file) is the zero padding of a block write-out."""
        size = self._size
        if size % DIRECT_ALIGN or size - off >= DIRECT_ALIGN:
            return False
        data = self._get(off, size - off)
        return data.nbytes == size - off and bytes(data).count(0) == data.nbytes

    def records(self) -> Iterator[tuple[ScanRecord, memoryview]]:
        off = self._start
        expect = self._expect
        while True:
            if self._stop_after is not None and expect > self._stop_after:
                self.stop = ScanStop(self._seg, off, None)
                return
            if off == self._size or self._padding(off):
                self.stop = ScanStop(self._seg, off, None)
                self.at_end = True
                return
            if off + HEADER_SIZE > self._size:
                self.stop = ScanStop(self._seg, off, "truncated record header")
                return
            hb = self._get(off, HEADER_SIZE)
            h = decode_header(hb)
            if h is None:
                self.stop = ScanStop(self._seg, off, "not a record header")
                return
            if h.length > MAX_RECORD_PAYLOAD or off + HEADER_SIZE + h.length > self._size:
                self.stop = ScanStop(self._seg, off, "record runs past the end of the segment")
                return
            hbytes = bytes(hb)
            payload = self._get(off + HEADER_SIZE, h.length)
            if not check_crc(hbytes, payload):
                self.stop = ScanStop(self._seg, off, f"checksum mismatch in record seq {h.seq}")
                return
            if h.seq != expect:
                self.stop = ScanStop(self._seg, off,
                                     f"sequence gap: found {h.seq}, expected {expect}")
                return
            yield ScanRecord(h, self._seg, off), payload
            off += HEADER_SIZE + h.length
            expect += 1


def read_segment_header(files: FileLayer, fh: int) -> SegmentHeader | None:
    return decode_segment_header(files.pread(fh, SEGMENT_HEADER_SIZE, 0))


class LogWalker:
    """Verified records across consecutive segments, from a position on.

    ``segments`` maps segment id to an open handle. A segment after the first
    must start with a valid header whose ``first_seq`` continues the sequence.
    :attr:`stop` tells where the walk ended; its ``reason`` is None for a clean
    end of the log (or for reaching ``stop_after_seq``).
    """

    def __init__(self, files: FileLayer, segments: dict[int, int], start_seg: int,
                 start_off: int, expect_seq: int, *, stop_after_seq: int | None = None) -> None:
        self._files = files
        self._segments = segments
        self._seg = start_seg
        self._off = start_off
        self._expect = expect_seq
        self._stop_after = stop_after_seq
        self.stop = ScanStop(start_seg, start_off, None)
        self.last_seq = expect_seq - 1
        # Where the records of each segment scanned to its clean end end (a file
        # may go on with zero padding: module docstring).
        self.ends: dict[int, int] = {}

    def records(self) -> Iterator[tuple[ScanRecord, memoryview]]:
        seg, off = self._seg, self._off
        ids = sorted(s for s in self._segments if s >= seg)
        first = True
        for k, sid in enumerate(ids):
            fh = self._segments[sid]
            if not first:
                if sid != seg + 1:
                    self.stop = ScanStop(sid, 0, f"segment {seg + 1} is missing")
                    return
                if all(self._files.size(self._segments[i]) == 0 for i in ids[k:]):
                    # Made by segment rolls whose headers, buffered with the records
                    # after them, were never written out: no record is in them.
                    return
                hdr = read_segment_header(self._files, fh)
                if hdr is None:
                    self.stop = ScanStop(sid, 0, "torn or foreign segment header")
                    return
                if hdr.first_seq != self.last_seq + 1:
                    self.stop = ScanStop(sid, 0, f"segment starts at seq {hdr.first_seq},"
                                                 f" expected {self.last_seq + 1}")
                    return
                off = SEGMENT_HEADER_SIZE
            first = False
            seg = sid
            scanner = LogScanner(self._files, fh, sid, off, self.last_seq + 1,
                                 stop_after_seq=self._stop_after)
            for rec, payload in scanner.records():
                self.last_seq = rec.header.seq
                yield rec, payload
            self.stop = scanner.stop
            if scanner.stop.reason is not None:
                return
            if scanner.at_end:
                self.ends[sid] = scanner.stop.offset
            if self._stop_after is not None and self.last_seq >= self._stop_after:
                return
