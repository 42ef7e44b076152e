"""The delta-map file encoding: pure bytes in, bytes out.

A delta map holds, for one volume, the blocks changed by the log records of
the interval ``(from_seq, to_seq]`` as a map (see :mod:`volume_manager.extents`).

On-disk layout, little-endian, FROZEN::

    offset size
         0    8  magic        b"CDPDMAP1"
         8    4  version      1
        12    4  block_size   power of two >= 512
        16    8  from_seq     exclusive
        24    8  to_seq       inclusive
        32    4  flags        bit 0: granular; other bits must be 0
        36    4  reserved     0
        40    8  count        number of extents
        48    8  reserved2    0 (pads the header to 64 bytes)
        56    4  entries_crc  CRC32C of the extent bytes
        60    4  header_crc   CRC32C of header bytes 0..59
        64  32n  extents      EXTENT_DTYPE records

The two CRCs between them cover every byte of the file, so any corruption
that CRC32C detects (all bursts up to 32 bits) makes :func:`decode` fail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c
import numpy as np

from volume_manager.errors import CorruptMapError
from volume_manager.extents import EXTENT_DTYPE, is_map

__all__ = ["FLAG_GRANULAR", "HEADER_SIZE", "MAGIC", "VERSION", "DeltaMap", "decode", "encode"]

MAGIC = b"CDPDMAP1"
VERSION = 1
FLAG_GRANULAR = 1
_KNOWN_FLAGS = FLAG_GRANULAR

_HEADER = struct.Struct("<8sIIQQIIQQII")
HEADER_SIZE = _HEADER.size
assert struct.calcsize(_HEADER.format) == 64
# header_crc is the last field and covers everything before it.
_HEADER_CRC_AT = HEADER_SIZE - 4

_U64_MAX = (1 << 64) - 1


def _block_size_problem(block_size: int) -> str | None:
    if block_size < 512 or block_size > 0xFFFFFFFF or block_size & (block_size - 1):
        return f"block_size {block_size} is not a power of two between 512 and 2**31"
    return None


@dataclass(frozen=True, slots=True, eq=False)
class DeltaMap:
    """The changes of the log interval ``(from_seq, to_seq]`` of one volume.

    ``extents`` is stored as a read-only view of the array passed in (no
    copy): the map cannot be changed through the DeltaMap, but the caller must
    not mutate its own array afterwards either. Equality compares the arrays
    element-wise; DeltaMaps are unhashable.
    """

    from_seq: int  # exclusive
    to_seq: int  # inclusive
    block_size: int
    # True: built straight from the log, every write in the interval is still
    # recoverable; False: produced by a merge, only the state at to_seq is.
    granular: bool
    extents: np.ndarray

    def __post_init__(self) -> None:
        if not (0 <= self.from_seq <= self.to_seq <= _U64_MAX):
            raise ValueError(f"invalid seq interval ({self.from_seq}, {self.to_seq}]")
        problem = _block_size_problem(self.block_size)
        if problem is not None:
            raise ValueError(problem)
        if not is_map(self.extents):
            raise ValueError("extents are not a map (wrong dtype, unsorted, overlap or count 0)")
        frozen = self.extents.view()
        frozen.flags.writeable = False
        object.__setattr__(self, "extents", frozen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeltaMap):
            return NotImplemented
        return (
            self.from_seq == other.from_seq
            and self.to_seq == other.to_seq
            and self.block_size == other.block_size
            and self.granular == other.granular
            and np.array_equal(self.extents, other.extents)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an ndarray


def encode(m: DeltaMap) -> bytes:
    """Serialise a delta map; the output is a pure function of the map's value."""
    body = np.ascontiguousarray(m.extents, dtype=EXTENT_DTYPE).tobytes()
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        m.block_size,
        m.from_seq,
        m.to_seq,
        FLAG_GRANULAR if m.granular else 0,
        0,
        len(m.extents),
        0,
        crc32c.crc32c(body),
        0,
    )
    header_crc = crc32c.crc32c(header[:_HEADER_CRC_AT])
    return header[:_HEADER_CRC_AT] + header_crc.to_bytes(4, "little") + body


def decode(data: bytes | bytearray | memoryview) -> DeltaMap:
    """Parse and fully validate a delta map file; raise CorruptMapError on any defect.

    The extents are copied out of ``data``, so the result never aliases the
    caller's buffer (which may be an mmap about to be closed); the DeltaMap
    then holds them read-only like every DeltaMap.
    """
    view = memoryview(data).cast("B")
    size = view.nbytes
    if size < HEADER_SIZE:
        raise CorruptMapError(f"delta map too short: {size} bytes, header needs {HEADER_SIZE}")
    (
        magic,
        version,
        block_size,
        from_seq,
        to_seq,
        flags,
        reserved,
        count,
        reserved2,
        entries_crc,
        header_crc,
    ) = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptMapError(f"bad magic {magic!r}, expected {MAGIC!r}")
    # Version before CRC: another version may lay out (and checksum) the header differently.
    if version != VERSION:
        raise CorruptMapError(f"unknown delta map version {version}, expected {VERSION}")
    actual = crc32c.crc32c(view[:_HEADER_CRC_AT])
    if actual != header_crc:
        raise CorruptMapError(
            f"header CRC mismatch: stored {header_crc:#010x}, computed {actual:#010x}"
        )
    if reserved or reserved2:
        raise CorruptMapError(f"reserved header fields not zero: {reserved:#x}, {reserved2:#x}")
    if flags & ~_KNOWN_FLAGS:
        raise CorruptMapError(f"unknown flags {flags & ~_KNOWN_FLAGS:#x}")
    problem = _block_size_problem(block_size)
    if problem is not None:
        raise CorruptMapError(problem)
    if from_seq > to_seq:
        raise CorruptMapError(f"from_seq {from_seq} > to_seq {to_seq}")
    expected = HEADER_SIZE + count * EXTENT_DTYPE.itemsize
    if size != expected:
        raise CorruptMapError(
            f"length mismatch: file has {size} bytes, header says {count} extents = {expected}"
        )
    body = view[HEADER_SIZE:]
    actual = crc32c.crc32c(body)
    if actual != entries_crc:
        raise CorruptMapError(
            f"entries CRC mismatch: stored {entries_crc:#010x}, computed {actual:#010x}"
        )
    extents = np.frombuffer(body, dtype=EXTENT_DTYPE, count=count).copy()
    if not is_map(extents):
        raise CorruptMapError(
            "extents are not a map: unsorted, overlapping, zero count or ending past 2**64"
        )
    return DeltaMap(from_seq, to_seq, block_size, bool(flags & FLAG_GRANULAR), extents)
