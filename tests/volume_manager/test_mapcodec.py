"""Tests of the delta-map file encoding (volume_manager.mapcodec)."""

from __future__ import annotations

import struct

import crc32c
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from volume_manager.errors import CorruptMapError
from volume_manager.extents import EXTENT_DTYPE, ZERO_SEG, empty, from_columns
from volume_manager.mapcodec import HEADER_SIZE, MAGIC, VERSION, DeltaMap, decode, encode

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def big_map(n: int) -> np.ndarray:
    """n extents with a gap between each, 1 in 5 of them unmaps."""
    idx = np.arange(n, dtype=np.uint64)
    count = (idx % 7 + 1).astype(np.uint32)
    lba = idx * np.uint64(10) + np.uint64(3)
    seg = np.where(idx % 5 == 0, ZERO_SEG, idx % 11).astype(np.uint32)
    off = np.where(seg == ZERO_SEG, 0, idx * np.uint64(4096))
    return from_columns(lba, count, seg, idx * np.uint64(3) + np.uint64(1), off)


@st.composite
def maps(draw: st.DrawFn, max_extents: int = 40) -> np.ndarray:
    """Random valid maps using the full width of every field."""
    n = draw(st.integers(0, max_extents))
    counts = draw(st.lists(st.integers(1, U32), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(0, 1 << 40), min_size=n, max_size=n))
    lbas, at = [], 0
    for gap, count in zip(gaps, counts, strict=True):
        lbas.append(at + gap)
        at += gap + count
    segs = draw(st.lists(st.sampled_from([0, 1, 77, U32 - 1, ZERO_SEG]), min_size=n, max_size=n))
    seqs = draw(st.lists(st.integers(0, U64), min_size=n, max_size=n))
    offs = [0 if s == ZERO_SEG else draw(st.integers(0, U64)) for s in segs]
    return from_columns(lbas, counts, segs, seqs, offs)


@st.composite
def delta_maps(draw: st.DrawFn, max_extents: int = 40) -> DeltaMap:
    lo = draw(st.integers(0, U64))
    hi = draw(st.integers(lo, U64))
    bs = draw(st.sampled_from([512, 1024, 4096, 65536, 1 << 31]))
    return DeltaMap(lo, hi, bs, draw(st.booleans()), draw(maps(max_extents)))


def forge(
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    block_size: int = 4096,
    from_seq: int = 1,
    to_seq: int = 2,
    flags: int = 0,
    reserved: int = 0,
    count: int | None = None,
    reserved2: int = 0,
    body: bytes = b"",
) -> bytes:
    """A file with correct CRCs but arbitrary field values, laid out independently of encode()."""
    if count is None:
        count = len(body) // 32
    head = struct.pack(
        "<8sIIQQIIQQI",
        magic,
        version,
        block_size,
        from_seq,
        to_seq,
        flags,
        reserved,
        count,
        reserved2,
        crc32c.crc32c(body),
    )
    return head + struct.pack("<I", crc32c.crc32c(head)) + body


# ---------------------------------------------------------------- round trip


@settings(max_examples=150, deadline=None)
@given(delta_maps())
@example(DeltaMap(0, 0, 512, True, empty()))
@example(DeltaMap(5, 900_000, 4096, False, big_map(100_000)))
def test_round_trip(dm: DeltaMap) -> None:
    data = encode(dm)
    assert len(data) == HEADER_SIZE + 32 * len(dm.extents)
    back = decode(data)
    assert back == dm
    assert back.extents.dtype == EXTENT_DTYPE
    assert (back.from_seq, back.to_seq, back.block_size, back.granular) == (
        dm.from_seq,
        dm.to_seq,
        dm.block_size,
        dm.granular,
    )
    assert encode(back) == data
    assert decode(memoryview(data)) == dm
    assert decode(bytearray(data)) == dm


def test_layout_matches_format() -> None:
    """The header, byte by byte, as FORMAT.md describes it."""
    ext = from_columns([7], [3], [2], [9], [8192])
    data = encode(DeltaMap(4, 11, 512, True, ext))
    assert HEADER_SIZE == 64
    fields = struct.unpack_from("<8sIIQQIIQQII", data)
    assert fields[:10] == (MAGIC, 1, 512, 4, 11, 1, 0, 1, 0, crc32c.crc32c(data[64:]))
    assert fields[10] == crc32c.crc32c(data[:60])
    assert data[64:] == struct.pack("<QIIQQ", 7, 3, 2, 9, 8192)
    assert data == forge(block_size=512, from_seq=4, to_seq=11, flags=1, body=data[64:])


def test_decoded_extents_are_private_and_read_only() -> None:
    buf = bytearray(encode(DeltaMap(0, 3, 512, True, from_columns([1], [2], [3], [3], [0]))))
    dm = decode(buf)
    buf[64:] = bytes(32)  # the caller reuses its buffer...
    assert dm.extents["lba"][0] == 1  # ...without touching the decoded map
    with pytest.raises(ValueError):
        dm.extents["lba"][0] = 5


def test_delta_map_validates_and_compares() -> None:
    ext = from_columns([1, 5], [2, 2], [3, 3], [3, 4], [0, 1024])
    assert DeltaMap(0, 4, 512, True, ext) == DeltaMap(0, 4, 512, True, ext.copy())
    assert DeltaMap(0, 4, 512, True, ext) != DeltaMap(0, 4, 512, False, ext)
    assert DeltaMap(0, 4, 512, True, ext) != DeltaMap(0, 4, 512, True, ext[:1])
    with pytest.raises(TypeError):
        hash(DeltaMap(0, 4, 512, True, ext))
    with pytest.raises(ValueError, match="not a map"):
        DeltaMap(0, 4, 512, True, ext[::-1].copy())
    with pytest.raises(ValueError, match="not a map"):
        DeltaMap(0, 4, 512, True, np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="interval"):
        DeltaMap(5, 4, 512, True, ext)
    for bs in (0, 256, 1000, 1 << 32):
        with pytest.raises(ValueError, match="block_size"):
            DeltaMap(0, 4, bs, True, ext)


# ---------------------------------------------------------------- corruption


SMALL = settings(max_examples=200, deadline=None)


@SMALL
@given(delta_maps(max_extents=6), st.data())
def test_every_single_byte_corruption_is_detected(dm: DeltaMap, data: st.DataObject) -> None:
    # Both CRCs together cover every byte, so no position is exempt.
    blob = bytearray(encode(dm))
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    blob[pos] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(CorruptMapError):
        decode(bytes(blob))


@SMALL
@given(delta_maps(max_extents=6), st.data())
def test_truncation_and_extension_are_detected(dm: DeltaMap, data: st.DataObject) -> None:
    blob = encode(dm)
    cut = data.draw(st.integers(0, len(blob) - 1), label="length")
    with pytest.raises(CorruptMapError):
        decode(blob[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=64), label="extra")
    with pytest.raises(CorruptMapError, match="length mismatch"):
        decode(blob + extra)


BODY = from_columns([1, 9], [4, 4], [0, ZERO_SEG], [5, 6], [0, 0]).tobytes()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (forge()[:63], "too short"),
        (forge(magic=b"CDPLOGS1"), "bad magic"),
        (forge(version=2), "unknown delta map version 2"),
        (forge()[:60] + b"\0\0\0\0", "header CRC mismatch"),
        (forge(reserved=1), "reserved header fields"),
        (forge(reserved2=1 << 40), "reserved header fields"),
        (forge(flags=2), "unknown flags 0x2"),
        (forge(block_size=0), "block_size 0 is not a power of two"),
        (forge(block_size=256), "block_size 256"),
        (forge(block_size=4097), "block_size 4097"),
        (forge(from_seq=3, to_seq=2), "from_seq 3 > to_seq 2"),
        (forge(body=BODY, count=3), "length mismatch"),
        (forge(body=BODY, count=1), "length mismatch"),
        (forge(count=1 << 60), "length mismatch"),
        (forge(body=BODY)[:-1] + b"\x01", "entries CRC mismatch"),
        (forge(body=BODY[32:] + BODY[:32]), "not a map"),
        (forge(body=BODY[:32] * 2), "not a map"),
        (forge(body=from_columns([1], [0], [0], [1], [0]).tobytes()), "not a map"),
        (forge(body=from_columns([U64], [1], [0], [1], [0]).tobytes()), "not a map"),
    ],
    ids=lambda v: v.replace(" ", "-") if isinstance(v, str) else "blob",
)
def test_precise_errors(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptMapError, match=message):
        decode(blob)


def test_forged_valid_file_decodes() -> None:
    # The forging helper is honest: with sane fields it yields a valid file.
    dm = decode(forge(block_size=512, from_seq=0, to_seq=6, flags=1, body=BODY))
    assert dm == DeltaMap(0, 6, 512, True, np.frombuffer(BODY, dtype=EXTENT_DTYPE))
