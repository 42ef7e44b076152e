"""The file layer: every byte the engine reads or writes goes through here.

Keeping the engine's file I/O behind this narrow interface lets the power-loss
tests swap in a crash simulator (``tests/volume_manager/crashsim.py``) that
records writes and syncs and produces the states a power cut can leave. The
real implementation, :class:`OsFiles`, is a set of thin aliases for ``os``
calls so the hot path pays no extra layer (``pread``/``pwrite`` are the ``os``
functions themselves).

Durability model the engine relies on (and the simulator enforces):

* data written with ``pwrite`` is volatile until ``fdatasync`` of that file;
* ``truncate`` is volatile until ``fdatasync`` of that file;
* creating, renaming and unlinking a name are volatile until ``fsync_dir`` of
  the parent directory;
* ``rename`` is atomic.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Protocol

__all__ = ["DIRECT_ALIGN", "Buffer", "FileLayer", "OsFiles", "libc"]

Buffer = bytes | bytearray | memoryview
# What a direct handle's writes are aligned to, in file offset, length and memory
# address: the largest logical block size of today's disks, and the page size.
DIRECT_ALIGN = 4096


class FileLayer(Protocol):
    def open(self, path: str, *, create: bool = False, read_only: bool = False,
             direct: bool = False) -> int:
        """``direct``: a handle for writing whole aligned blocks (``DIRECT_ALIGN``) from
        aligned memory past the page cache (O_DIRECT), where the file system allows it;
        otherwise an ordinary handle, which takes the same writes. Durability is the
        same either way: only ``fdatasync`` makes a write durable."""
        ...
    def close(self, fh: int) -> None: ...
    def pread(self, fh: int, length: int, offset: int) -> bytes: ...
    def readinto(self, fh: int, buf: memoryview, offset: int) -> int:
        """Read into ``buf`` (one copy less than ``pread`` for a caller that assembles a
        buffer); returns the bytes read, fewer only at the end of the file."""
        ...
    def pwrite(self, fh: int, data: Buffer, offset: int) -> int: ...
    def pwritev(self, fh: int, buffers: list[Buffer], offset: int) -> int: ...
    def fdatasync(self, fh: int) -> None: ...
    def truncate(self, fh: int, size: int) -> None: ...
    def size(self, fh: int) -> int: ...
    def punch_hole(self, fh: int, offset: int, length: int) -> None: ...
    def data_extents(self, fh: int) -> list[tuple[int, int]]: ...
    def start_writeback(self, fh: int, offset: int, length: int) -> None:
        """A hint: begin writing these pages to disk now, without waiting.

        Durability still comes only from ``fdatasync``; this only lets the disk
        work while the caller goes on, so a later sync has less left to do.
        """
        ...

    def advise_random(self, fh: int) -> None:
        """A hint: this file is read and rewritten in place at random, in small pieces.

        No effect on what is read or on durability; only on how the kernel caches it
        (see :meth:`OsFiles.advise_random`).
        """
        ...

    def prefetch(self, fh: int, offset: int, length: int) -> None:
        """A hint: these bytes will be read soon; start reading them now, without
        waiting (the engine's own readahead for a file hinted with ``advise_random``)."""
        ...

    def drop_cache(self, fh: int, offset: int, length: int) -> None:
        """A hint: these bytes, written and synced, will not be read again soon; the
        page cache may let them go (clean pages only; ``length`` 0: to the end)."""
        ...

    def reserve(self, fh: int, offset: int, length: int) -> None:
        """Allocate disk space for these bytes without changing the file's size, so
        that writing them later cannot fail for lack of space: raises ENOSPC now
        instead. File systems that cannot do it leave the space unreserved."""
        ...

    def fsync_dir(self, path: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def makedirs(self, path: str) -> None: ...
    def free_bytes(self, path: str) -> int: ...


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# The C library, loaded once for the engine's calls that Python does not offer (the
# write buffer's madvise too: logbuf.py).
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int


class OsFiles:
    """The real file layer: plain POSIX calls on the local file system."""

    pread = staticmethod(os.pread)

    @staticmethod
    def readinto(fh: int, buf: memoryview, offset: int) -> int:
        return os.preadv(fh, [buf], offset)
    pwrite = staticmethod(os.pwrite)
    pwritev = staticmethod(os.pwritev)
    fdatasync = staticmethod(os.fdatasync)
    close = staticmethod(os.close)
    truncate = staticmethod(os.ftruncate)
    unlink = staticmethod(os.unlink)
    listdir = staticmethod(os.listdir)

    def open(self, path: str, *, create: bool = False, read_only: bool = False,
             direct: bool = False) -> int:
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create:
            flags |= os.O_CREAT
        if direct:
            try:
                return os.open(path, flags | os.O_CLOEXEC | os.O_DIRECT, 0o600)
            except OSError as exc:  # tmpfs and some others: no O_DIRECT
                if exc.errno != errno.EINVAL:
                    raise
        return os.open(path, flags | os.O_CLOEXEC, 0o600)

    def reserve(self, fh: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        if _fallocate(fh, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENODEV):
            raise OSError(err, os.strerror(err))

    def size(self, fh: int) -> int:
        return os.lseek(fh, 0, os.SEEK_END)

    def punch_hole(self, fh: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        rc = _fallocate(fh, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENODEV):
            raise OSError(err, os.strerror(err))
        # Block devices and file systems without hole punching: write zeros.
        chunk = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            n = min(len(chunk), end - offset)
            os.pwrite(fh, chunk[:n] if n < len(chunk) else chunk, offset)
            offset += n

    def start_writeback(self, fh: int, offset: int, length: int) -> None:
        # SYNC_FILE_RANGE_WRITE: queue the dirty pages for writeback, don't wait.
        _sync_file_range(fh, offset, length, _SYNC_FILE_RANGE_WRITE)

    def advise_random(self, fh: int) -> None:
        # The primary takes every applied write in place, most of them a few KiB at
        # scattered offsets. Since Linux 6.16, ext4 caches files in large folios
        # (up to 2 MiB, made by readahead and by large writes), and a 4 KiB write
        # into one walks all of its buffer heads, in write_begin, write_end and
        # again at writeback: 23% of the target's CPU on 4 KiB writes here, about
        # 30 us per write. No readahead (RANDOM) keeps the pages this file brings in
        # at 4 KiB; its clean pages already cached, which may be large, are dropped
        # once, now.
        # The kernel's readahead goes with it: Volume reads ahead of a sequential
        # reader itself, with prefetch, which for such a file also caches 4 KiB pages.
        os.posix_fadvise(fh, 0, 0, os.POSIX_FADV_RANDOM)
        os.posix_fadvise(fh, 0, 0, os.POSIX_FADV_DONTNEED)

    @staticmethod
    def prefetch(fh: int, offset: int, length: int) -> None:
        os.posix_fadvise(fh, offset, length, os.POSIX_FADV_WILLNEED)

    @staticmethod
    def drop_cache(fh: int, offset: int, length: int) -> None:
        # Partly covered pages at either end stay (the kernel rounds inward).
        os.posix_fadvise(fh, offset, length, os.POSIX_FADV_DONTNEED)

    def data_extents(self, fh: int) -> list[tuple[int, int]]:
        """(offset, length) of the allocated regions, so sparse copies keep holes."""
        end = os.lseek(fh, 0, os.SEEK_END)
        out: list[tuple[int, int]] = []
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fh, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    return [(0, end)] if end else []
                raise
            stop = os.lseek(fh, start, os.SEEK_HOLE)
            out.append((start, stop - start))
            pos = stop
        return out

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def free_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
