"""The real file layer's caching hints, and how a volume uses them for its primary,
looked at through mincore(2)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import random
import time
from pathlib import Path

from volume_manager import Volume, VolumeOptions
from volume_manager.fileio import OsFiles

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PAGE = mmap.PAGESIZE


_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path: Path) -> int:
    """How many pages of the file are in the page cache now."""
    return resident_range(path, 0, path.stat().st_size)


def resident_range(path: Path, start: int, end: int) -> int:
    """Pages of [start, end) in the page cache (mapping a file does not read it:
    mincore only looks)."""
    size = path.stat().st_size
    pages = (size + _PAGE - 1) // _PAGE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        try:
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec[start // _PAGE : (end + _PAGE - 1) // _PAGE])


def cached_file(path: Path, size: int) -> None:
    """A file of ``size`` random bytes, all of it durable and in the page cache (the
    hint drops clean pages only)."""
    with path.open("wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    with path.open("rb") as f:
        while f.read(1 << 20):
            pass


def test_advise_random_drops_the_cached_pages_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "f"
    cached_file(path, 4 << 20)
    data = path.read_bytes()
    assert resident_pages(path) > 0
    files = OsFiles()
    fh = files.open(str(path))
    try:
        files.advise_random(fh)
        assert resident_pages(path) == 0
        assert files.pread(fh, len(data), 0) == data
    finally:
        files.close(fh)


def opened_cold(tmp_path: Path, size: int) -> tuple[Volume, Path, bytes]:
    """A volume over a primary of ``size`` random bytes (also returned), none of them
    cached."""
    primary = tmp_path / "p.img"
    cached_file(primary, size)
    Volume.create(str(tmp_path / "sec"), str(primary)).close()
    data = primary.read_bytes()
    assert resident_pages(primary) > 0
    vol = Volume.open(str(tmp_path / "sec"))
    assert resident_pages(primary) == 0
    return vol, primary, data


def wait_resident(path: Path, start: int, end: int, want: int) -> int:
    deadline = time.monotonic() + 10  # the prefetch is asynchronous
    while (n := resident_range(path, start, end)) < want and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_a_volume_opens_its_primary_with_the_hint(tmp_path: Path) -> None:
    vol, primary, data = opened_cold(tmp_path, 2 << 20)
    try:
        # A read brings in only what it asks for: no kernel readahead.
        assert vol.read(0, 8) == data[:4096]
        assert 0 < resident_pages(primary) <= 4
    finally:
        vol.close()


def test_sequential_reads_are_read_ahead_and_random_ones_are_not(tmp_path: Path) -> None:
    mib, chunk = 1 << 20, 128 << 10
    vol, primary, data = opened_cold(tmp_path, 32 * mib)
    bs = vol.block_size
    try:
        # Two reads far apart: no stream, nothing read beyond them.
        assert vol.read(0, 8) == data[:4096]
        assert vol.read(20 * mib // bs, 8) == data[20 * mib : 20 * mib + 4096]
        time.sleep(0.2)
        assert resident_pages(primary) <= 8
        # A stream: its second read starts the window ahead of it.
        at = 4 * mib
        for _ in range(2):
            assert vol.read(at // bs, chunk // bs) == data[at : at + chunk]
            at += chunk
        ahead = wait_resident(primary, at, at + 4 * mib, 4 * mib // _PAGE)
        assert ahead == 4 * mib // _PAGE
        # Spans (sendfile reads) follow the stream too, and move its window on.
        span = vol.read_span(at // bs, 8 * mib // bs)
        assert span is not None and span.read() == data[at : at + 8 * mib]
        at += 8 * mib
        assert vol.read_span(at // bs, chunk // bs) is not None
        at += chunk
        assert wait_resident(primary, at, at + 4 * mib, 4 * mib // _PAGE) == 4 * mib // _PAGE
    finally:
        vol.close()


def test_the_log_bypasses_the_page_cache(tmp_path: Path) -> None:
    """Records wait in the write buffer (memory), and with ``direct_log`` are written
    out past the page cache (O_DIRECT: this file system has it); reads and history
    still see them."""
    vol = Volume.create(str(tmp_path / "sec"), str(tmp_path / "p.img"), size=16 << 20,
                        options=VolumeOptions(commit_interval=None, direct_log=True))
    try:
        blocks = [os.urandom(4096) for _ in range(512)]
        for i, b in enumerate(blocks):
            vol.write(i * 8, b)
        (seg,) = Path(vol.log_dir).iterdir()
        assert seg.stat().st_size < 4096  # buffered: not in the file yet
        assert vol.read(8, 8) == blocks[1]  # served from the buffer
        vol.write_out()
        assert seg.stat().st_size >= 512 * 4096  # written out, not yet durable ...
        assert resident_pages(seg) <= 1  # ... and not through the page cache
        vol.flush()
        assert resident_pages(seg) <= 1
        vol.write(0, b"x" * 4096)
        # History reads back (from the disk): the state before the last write.
        with vol.view(f"seq:{vol.seq - 1}") as past:
            for i in (0, 1, 511):
                assert past.read(i * 8, 8) == blocks[i]
        assert vol.read(0, 8) == b"x" * 4096
        assert vol.read(8, 8) == blocks[1]
    finally:
        vol.close()
    # A clean close leaves the segment ending at its last record (no zero padding).
    assert seg.stat().st_size == 64 + 513 * (40 + 4096)


class RecordedDrops(OsFiles):
    """The real file layer, noting each drop_cache call."""

    def __init__(self) -> None:
        self.drops: list[tuple[int, int, int]] = []

    def drop_cache(self, fh: int, offset: int, length: int) -> None:  # type: ignore[override]
        self.drops.append((fh, offset, length))
        OsFiles.drop_cache(fh, offset, length)


def test_a_commit_with_no_new_records_drops_nothing(tmp_path: Path) -> None:
    """A commit that covers no new log bytes (here: one that only writes a checkpoint)
    must not ask to drop the active segment "to the end" (length 0), which would reach
    records appended after it."""
    files = RecordedDrops()
    vol = Volume.create(str(tmp_path / "sec"), str(tmp_path / "p.img"), size=1 << 20,
                        files=files, options=VolumeOptions(commit_interval=None))
    try:
        vol.write(0, b"a" * 4096)
        vol.flush()
        assert files.drops and all(length > 0 for _, _, length in files.drops)
        files.drops.clear()
        vol.ask_checkpoint()
        vol.flush()
        assert files.drops == []
    finally:
        vol.close()


def test_direct_log_round_trip(tmp_path: Path) -> None:
    """With ``direct_log``, records of every size (the end of the log at every offset
    in a block), a segment roll and slabs of several MiB: a crash after a write-out
    keeps what was written out, a clean close leaves nothing to report, and every
    point reads back."""
    opts = VolumeOptions(commit_interval=None, direct_log=True, segment_bytes=5 << 20)
    vol = Volume.create(str(tmp_path / "sec"), str(tmp_path / "p.img"), size=8 << 20,
                        options=opts)
    rng = random.Random(5)
    image = bytearray(8 << 20)
    seen: dict[int, bytes] = {}
    try:
        for i in range(300):
            count = rng.choice((1, 1, 3, 8, 64, 2048))
            lba = rng.randrange(len(image) // 512 - count)
            data = rng.randbytes(count * 512)
            vol.write(lba, data)
            image[lba * 512 : (lba + count) * 512] = data
            if i % 50 == 49:
                vol.flush()
                seen[vol.seq] = bytes(image)
        vol.write_out()
        upto = vol.seq
        seen[upto] = bytes(image)
    finally:
        vol.abandon()
    assert len(list(Path(tmp_path / "sec" / "log").iterdir())) >= 2
    vol = Volume.open(str(tmp_path / "sec"), options=opts)
    try:
        assert vol.seq == upto
        assert vol.read(0, len(image) // 512) == image
        for seq, img in seen.items():
            with vol.view(f"seq:{seq}") as v:
                assert v.read(0, len(image) // 512) == img
    finally:
        vol.close()
    vol = Volume.open(str(tmp_path / "sec"), options=opts)
    try:
        assert vol.recovery_report == []
        assert vol.read(0, len(image) // 512) == image
    finally:
        vol.close()
