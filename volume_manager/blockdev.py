"""The one block-device interface between the target layer and the engine.

A protected volume, a point-in-time view and a plain file all implement
:class:`BlockDevice`. Calls are synchronous on purpose: the event loop makes
them inline (page-cache I/O costs microseconds; a thread hop per command costs
far more), and only :meth:`BlockDevice.flush` may block on the disk.

Offsets and lengths are in blocks of :attr:`BlockDevice.block_size` bytes.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from volume_manager.errors import AlignmentError, OutOfRangeError, ReadOnlyError

__all__ = ["BlockDevice", "FileBlockDevice", "check_range"]


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
