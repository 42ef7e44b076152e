"""The real file layer's caching hint, looked at through mincore(2)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

from volume_manager import Volume
from volume_manager.fileio import OsFiles

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PAGE = mmap.PAGESIZE


_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path: Path) -> int:
    """How many pages of the file are in the page cache now (mapping a file does not
    read it: mincore only looks)."""
    size = path.stat().st_size
    pages = (size + _PAGE - 1) // _PAGE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        try:
            rc = _libc.mincore(addr, size, vec)
            assert rc == 0, os.strerror(ctypes.get_errno())
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec)


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


def test_a_volume_opens_its_primary_with_the_hint(tmp_path: Path) -> None:
    primary = tmp_path / "p.img"
    cached_file(primary, 2 << 20)
    Volume.create(str(tmp_path / "sec"), str(primary)).close()
    with primary.open("rb") as f:
        f.read()
    assert resident_pages(primary) > 0
    vol = Volume.open(str(tmp_path / "sec"))
    try:
        assert resident_pages(primary) == 0
        # Reads through the volume bring back only what they ask for (no readahead).
        vol.read(0, 8)
        assert 0 < resident_pages(primary) <= 4
    finally:
        vol.close()
