"""Sparse copies: holes stay holes, and all-zero chunks become holes."""

from __future__ import annotations

from collections.abc import Callable

from volume_manager.fileio import FileLayer

__all__ = ["copy_sparse"]


def copy_sparse(fs: FileLayer, src: int, dst_path: str, size: int,
                 progress: Callable[[int, int], None] | None, chunk: int = 1 << 20) -> None:
    """Copy a file keeping holes, and leaving all-zero chunks as holes too."""
    dst = fs.open(dst_path, create=True)
    try:
        fs.truncate(dst, 0)
        fs.truncate(dst, size)
        regions = fs.data_extents(src)
        total = sum(n for _, n in regions)
        done = 0
        zero = bytes(chunk)
        for start, length in regions:
            pos, end = start, start + length
            while pos < end:
                n = min(chunk, end - pos)
                data = fs.pread(src, n, pos)
                if data != zero[: len(data)]:
                    fs.pwrite(dst, data, pos)
                pos += n
                done += n
                if progress is not None:
                    progress(done, total)
        fs.fdatasync(dst)
    finally:
        fs.close(dst)
