"""The one block-device interface between the target layer and the engine.

A protected volume, a point-in-time view and a plain file all implement
:class:`BlockDevice`. Calls are synchronous on purpose: the event loop makes
them inline (page-cache I/O costs microseconds; a thread hop per command costs
far more), and only :meth:`BlockDevice.flush` may block on the disk.

Offsets and lengths are in blocks of :attr:`BlockDevice.block_size` bytes.

A device may also offer ``read_span(lba, count) -> FileSpan | None``: where the
blocks lie, as they are now, in one region of a real file, so that a transport
can send them with ``sendfile`` instead of copying them through a buffer. None
means "call read" (the blocks are not one plain file region just now). And
``read_view(lba, count) -> memoryview | None``, the same blocks as a view of the
file's mapping (:class:`FileMap`), for small reads, where ``sendfile`` costs more
system calls than it saves.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Protocol, TypeGuard, runtime_checkable

from volume_manager.errors import AlignmentError, OutOfRangeError, ReadOnlyError

__all__ = ["BlockDevice", "FileBlockDevice", "FileMap", "FileSpan", "SpanSource",
           "SpanSourceClosed", "check_range", "copy_mapped", "is_mapped"]


@runtime_checkable
class BlockDevice(Protocol):
    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    def read(self, lba: int, count: int) -> bytes | bytearray:
        """Return ``count`` blocks starting at ``lba``."""
        ...

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        """Write whole blocks at ``lba``; with ``fua`` return only once durable."""
        ...

    def unmap(self, lba: int, count: int) -> None:
        """Deallocate blocks; they read back as zeros."""
        ...

    def flush(self) -> None:
        """Return once every write acknowledged before the call is durable."""
        ...


class SpanSource:
    """A descriptor that :class:`FileSpan` objects read from, owned by the device that
    hands them out. It is closed only under its lock, and spans are sent under it, so a
    device closed by another thread while a span waits to be sent can never make the
    send read some other file that reused the descriptor number."""

    __slots__ = ("_fd", "_lock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def sendfile(self, out_fd: int, offset: int, count: int) -> int:
        """``os.sendfile`` of up to ``count`` bytes at ``offset`` to the non-blocking
        socket ``out_fd``; raises BlockingIOError as it does, and SpanSourceClosed once
        the device is closed."""
        with self._lock:
            if self._fd < 0:
                raise SpanSourceClosed("the device behind this read was closed")
            return os.sendfile(out_fd, self._fd, offset, count)

    def pread(self, length: int, offset: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                raise SpanSourceClosed("the device behind this read was closed")
            return os.pread(self._fd, length, offset)


class SpanSourceClosed(OSError):
    """A span's device was closed before the span was sent: its data is gone."""


@dataclass(frozen=True, slots=True)
class FileSpan:
    """``length`` bytes at ``offset`` of a :class:`SpanSource`: read data a transport may
    send straight from the page cache (``os.sendfile``) instead of copying it through a
    buffer.

    The bytes are those of the file when they are sent (over loopback, when the peer
    copies them), not when the span was made. They are still the read's result because
    nothing the host ordered before the read's completion can change them by then: see
    ``Volume.read_span``. A transport that needs the bytes themselves (digests, a partial
    send handed to a buffering transport) calls :meth:`read`."""

    source: SpanSource
    offset: int
    length: int

    @property
    def nbytes(self) -> int:
        return self.length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> FileSpan:
        start, stop, step = key.indices(self.length)
        if step != 1:
            raise ValueError("a file span slices with step 1 only")
        return FileSpan(self.source, self.offset + start, max(stop - start, 0))

    def read(self) -> bytes:
        """The bytes now; zeros past the end of the file."""
        data = self.source.pread(self.length, self.offset)
        if len(data) < self.length:
            data += bytes(self.length - len(data))
        return data

    def send(self, out_fd: int) -> int:
        """Send as much as the socket takes now; returns the bytes sent, fewer than
        ``length`` only when the socket is full, so a caller may wait for it to be
        writable and send the rest. Past the end of the file (cut short under us) the
        span is sent as zeros, as :meth:`read` returns it. Raises OSError for a broken
        connection or SpanSourceClosed."""
        sent, left, offset = 0, self.length, self.offset
        try:
            while left:
                n = self.source.sendfile(out_fd, offset, left)
                if n == 0:  # the file ended early
                    n = os.write(out_fd, _ZEROS[: min(left, len(_ZEROS))])
                sent += n
                offset += n
                left -= n
        except (BlockingIOError, InterruptedError):
            pass
        return sent


_ZEROS = bytes(64 << 10)  # what a span sends for bytes past the end of its file


# A mapping up to this size is kept while the device is open: its page tables (4 KiB
# for each 2 MiB region touched) stay within 16 MiB. A larger one is made afresh every
# _MAP_REFRESH_READS reads, which bounds them at 32 MiB even when every read lands in a
# new region; the kernel frees them with the old mapping.
_MAP_KEEP_BYTES = 8 << 30
_MAP_REFRESH_READS = 8192
# Reads past the end of the mapping (a primary file shorter than its device, which a
# later write may extend) look at the file's size again after this many.
_MAP_RECHECK_MISSES = 4096


class _ReadMap(mmap.mmap):
    """The mapping a :class:`FileMap` hands out views of: its type marks those views
    (:func:`is_mapped`)."""

    __slots__ = ()


class FileMap:
    """A read-only shared mapping of a file, for reads that a transport sends as they are
    (``ScsiCommand.spans_ok``): such a read returns a memoryview of it, and the kernel
    copies the pages from the page cache into the socket in the send. That saves the
    ``pread`` and the bytes object of each read: 3-5 us of CPU per 4 KiB read here.

    A view's bytes are the file's when they are sent, as with :class:`FileSpan`, and safe
    for the same reason (``Volume.read_span``). Only the kernel should read them. A page
    it cannot read (a disk error, a file cut short by someone else) fails the send with
    EFAULT, where a read in user space would end the process with SIGBUS. So a transport
    that must keep the bytes copies them with :func:`copy_mapped`, and views go only
    where spans go: never to a data digest.

    ``fd`` stays the caller's: keep it open while this is open. Not thread-safe: the
    device calls it under its lock."""

    __slots__ = ("_fd", "_limit", "_map", "_misses", "_reads", "_view", "length")

    def __init__(self, fd: int, limit: int) -> None:
        """Map ``fd`` for reads within its first ``limit`` bytes (the device's size)."""
        self._fd = fd
        self._limit = limit
        self._map: _ReadMap | None = None
        self._view: memoryview | None = None
        self.length = 0  # bytes mapped: the file's size when mapped, up to limit
        self._reads = self._misses = 0
        self._remap()

    def _remap(self) -> None:
        self.close()
        length = min(os.lseek(self._fd, 0, os.SEEK_END), self._limit)
        self._reads = self._misses = 0
        if length <= 0:
            return
        m = _ReadMap(self._fd, length, prot=mmap.PROT_READ)
        # As for the file (fileio.OsFiles.advise_random): no readahead when a fault
        # reads a page that is not cached; the device reads ahead itself.
        m.madvise(mmap.MADV_RANDOM)
        self._map, self._view, self.length = m, memoryview(m), length

    def view(self, offset: int, end: int) -> memoryview | None:
        """Bytes [offset, end) of the file, or None when they lie past the mapping."""
        if end > self.length:
            self._misses += 1
            if self.length < self._limit and self._misses >= _MAP_RECHECK_MISSES:
                self._remap()
            if end > self.length:
                return None
        elif self.length > _MAP_KEEP_BYTES:
            self._reads += 1
            if self._reads >= _MAP_REFRESH_READS:
                self._remap()
        view = self._view
        assert view is not None
        return view[offset:end]

    def close(self) -> None:
        """Drop the mapping; views still held keep it until they go."""
        m, self._map, self._view, self.length = self._map, None, None, 0
        if m is not None:
            with contextlib.suppress(BufferError):  # views are out: the last one unmaps it
                m.close()


def is_mapped(buf: object) -> TypeGuard[memoryview]:
    """Whether ``buf`` is a view of a :class:`FileMap`."""
    return type(buf) is memoryview and type(buf.obj) is _ReadMap


_bounce: tuple[int, threading.Lock] | None = None


def copy_mapped(view: memoryview) -> bytes:
    """The bytes of a :class:`FileMap` view, copied by the kernel (through a memfd), so
    that a page that cannot be read raises OSError (EFAULT) instead of SIGBUS."""
    global _bounce
    if _bounce is None:
        _bounce = (os.memfd_create("cdpswitch-bounce", os.MFD_CLOEXEC), threading.Lock())
    fd, lock = _bounce
    with lock:
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done:], done)
        return os.pread(fd, done, 0)


def check_range(lba: int, count: int, num_blocks: int) -> None:
    """Raise :class:`OutOfRangeError` unless ``[lba, lba+count)`` lies on the device."""
    if lba < 0 or count < 0 or lba + count > num_blocks:
        raise OutOfRangeError(
            f"blocks {lba}..{lba + count - 1} are outside the device (0..{num_blocks - 1})"
        )


def blocks_in(data: bytes | bytearray | memoryview, block_size: int) -> int:
    """Number of whole blocks in ``data``; raise if it is not a multiple."""
    n = len(data)
    if n % block_size:
        raise AlignmentError(f"{n} bytes is not a multiple of the {block_size}-byte block")
    return n // block_size


class FileBlockDevice:
    """A plain file or block device, unprotected (used for clones, playback targets)."""

    def __init__(self, path: str | os.PathLike[str], *, block_size: int = 512,
                 read_only: bool = False) -> None:
        self._fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        self._block_size = block_size
        self._num_blocks = size // block_size
        self._read_only = read_only

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def read_only(self) -> bool:
        return self._read_only

    def read(self, lba: int, count: int) -> bytes:
        check_range(lba, count, self._num_blocks)
        return os.pread(self._fd, count * self._block_size, lba * self._block_size)

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        if self._read_only:
            raise ReadOnlyError("device is read-only")
        check_range(lba, blocks_in(data, self._block_size), self._num_blocks)
        os.pwrite(self._fd, data, lba * self._block_size)
        if fua:
            os.fdatasync(self._fd)

    def unmap(self, lba: int, count: int) -> None:
        if self._read_only:
            raise ReadOnlyError("device is read-only")
        check_range(lba, count, self._num_blocks)
        os.pwrite(self._fd, bytes(count * self._block_size), lba * self._block_size)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
