"""Log record codec (pure): the framing of every record in a log segment.

See FORMAT.md, "Log records". A record is a 40-byte header followed by its
payload. The CRC32C covers header bytes 4..40 and then the payload, so a torn
or flipped byte anywhere in the record is caught, and a stale record left in a
reused region is caught by the dense sequence numbers.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from crc32c import crc32c

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "SEGMENT_HEADER",
    "SEGMENT_HEADER_SIZE",
    "RecordFlag",
    "RecordHeader",
    "RecordType",
    "SegmentHeader",
    "check_crc",
    "decode_header",
    "decode_segment_header",
    "encode_header",
    "encode_segment_header",
]

# Frozen: these numbers are on disk. Never reuse a retired value.
class RecordType(enum.IntEnum):
    WRITE = 1
    UNMAP = 2
    MARK = 3


class RecordFlag(enum.IntFlag):
    NONE = 0
    FUA = 0x01      # the host asked for forced unit access
    REWIND = 0x02   # written by a rewind
    PLAYBACK = 0x04  # written by a selective playback onto this volume


# crc u32 | type u8 | flags u8 | reserved u16 | seq u64 | ts_ns u64 | lba u64 |
# count u32 | length u32
HEADER = struct.Struct("<IBBHQQQII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 40
_REST = struct.Struct("<BBHQQQII")  # the header after the CRC field

# magic 8s | version u32 | block_size u32 | segment u64 | first_seq u64 | volume uuid 16s |
# reserved 12x | crc u32 (of the 60 bytes before it)
SEGMENT_HEADER = struct.Struct("<8sIIQQ16s12xI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
assert SEGMENT_HEADER_SIZE == 64
SEGMENT_MAGIC = b"CDPLOGS1"
SEGMENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class RecordHeader:
    type: RecordType
    flags: RecordFlag
    seq: int
    ts_ns: int
    lba: int
    count: int
    length: int
    crc: int


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    block_size: int
    segment: int
    first_seq: int
    volume_uuid: bytes


def encode_header(rtype: int, flags: int, seq: int, ts_ns: int, lba: int, count: int,
                  payload: bytes | memoryview) -> bytes:
    """Header bytes for a record carrying ``payload`` (CRC computed over both)."""
    rest = _REST.pack(rtype, flags, 0, seq, ts_ns, lba, count, len(payload))
    crc = crc32c(payload, crc32c(rest)) if payload else crc32c(rest)
    return crc.to_bytes(4, "little") + rest


def decode_header(buf: bytes | memoryview) -> RecordHeader | None:
    """Parse a header; ``None`` when it cannot be one (bad type, reserved bits set).

    The CRC is not checked here because it also covers the payload; see
    :func:`check_crc`.
    """
    if len(buf) < HEADER_SIZE:
        return None
    crc, rtype, flags, reserved, seq, ts, lba, count, length = HEADER.unpack_from(buf)
    if reserved or rtype not in _TYPES or flags & ~_FLAG_MASK:
        return None
    return RecordHeader(RecordType(rtype), RecordFlag(flags), seq, ts, lba, count, length, crc)


def check_crc(header_bytes: bytes | memoryview, payload: bytes | memoryview) -> bool:
    crc = int.from_bytes(header_bytes[:4], "little")
    calc = crc32c(header_bytes[4:HEADER_SIZE])
    if len(payload):
        calc = crc32c(payload, calc)
    return calc == crc


_TYPES = frozenset(int(t) for t in RecordType)
_FLAG_MASK = int(RecordFlag.FUA | RecordFlag.REWIND | RecordFlag.PLAYBACK)


def encode_segment_header(h: SegmentHeader) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, h.block_size, h.segment,
                               h.first_seq, h.volume_uuid, 0)[:-4]
    return body + crc32c(body).to_bytes(4, "little")


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader | None:
    """Parse a segment header; ``None`` if it is short, torn or not ours."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        return None
    magic, version, bs, seg, first, uuid, crc = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
        return None
    if crc32c(bytes(buf[: SEGMENT_HEADER_SIZE - 4])) != crc:
        return None
    return SegmentHeader(bs, seg, first, uuid)
