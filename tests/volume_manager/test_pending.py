"""The overlay of unapplied writes against a block -> (seq, bytes) model.

The overlay holds only where each record's data sits in the log; here the
"log" is one bytearray per record, read through a pread function.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from volume_manager.pending import CHUNK_BLOCKS, RECORD_FIELDS, PendingMap, pieces

BS = 4
SPAN = 3 * CHUNK_BLOCKS

ops = st.lists(
    st.tuples(st.integers(0, SPAN - 1), st.integers(1, CHUNK_BLOCKS + 20), st.booleans()),
    max_size=40,
)
windows = st.lists(st.tuples(st.integers(0, SPAN + 40), st.integers(1, 2 * CHUNK_BLOCKS)),
                   min_size=1, max_size=8)


def _image(model: dict[int, bytes], lo: int, n: int, base: bytes) -> bytes:
    return b"".join(model.get(b, base[(b - lo) * BS:(b - lo + 1) * BS]) for b in range(lo, lo + n))


@settings(max_examples=200, deadline=None)
@given(ops, windows, st.integers(0, 45))
def test_overlay_matches_model(writes: list[tuple[int, int, bool]],
                               reads: list[tuple[int, int]], cut: int) -> None:
    log: dict[int, bytes] = {}

    def pread(fh: int, n: int, off: int) -> bytes:
        return log[fh][off: off + n]

    pm = PendingMap(BS)
    model: dict[int, tuple[int, bytes]] = {}
    for seq, (lba, count, is_unmap) in enumerate(writes, start=1):
        data = None if is_unmap else bytes((seq + i) % 251 + 1 for i in range(count * BS))
        if data is None:
            pm.insert(lba, count, seq, -1, 0)
        else:
            log[seq] = b"header" + data  # data at offset 6 of its "segment"
            pm.insert(lba, count, seq, seq, 6)
        for i in range(count):
            block = bytes(BS) if data is None else data[i * BS:(i + 1) * BS]
            model[lba + i] = (seq, block)
    assert pm.bytes == sum(c for _, c, _ in writes) * BS
    for lo, n in reads:
        base = bytes([0xEE]) * (n * BS)
        buf = bytearray(base)
        pm.overlay(lo, n, buf, pread)
        assert bytes(buf) == _image({b: v[1] for b, v in model.items()}, lo, n, base)
        assert pm.overlaps(lo, n) == any(lo <= b < lo + n for b in model)
    # take_upto returns the old records in order; what is left still overlays right
    rows = pm.take_upto(cut)
    taken = pieces(rows)
    assert len(rows) == len(taken) * RECORD_FIELDS
    assert [p.seq for p in taken] == list(range(1, min(cut, len(writes)) + 1))
    primary: dict[int, bytes] = {}
    for p in taken:
        data = bytes(p.count * BS) if p.fh < 0 else pread(p.fh, p.count * BS, p.off)
        for i in range(p.count):
            primary[p.lba + i] = data[i * BS:(i + 1) * BS]
    for lo, n in reads:
        base = _image(primary, lo, n, bytes([0xEE]) * (n * BS))
        buf = bytearray(base)
        pm.overlay(lo, n, buf, pread)
        assert bytes(buf) == _image({b: v[1] for b, v in model.items()}, lo, n, base)
    assert pm.bytes == sum(c for _, c, _ in writes[len(taken):]) * BS
    left = pieces(pm.take_upto(1 << 62))
    assert [p.seq for p in left] == list(range(len(taken) + 1, len(writes) + 1))
    assert pm.bytes == 0 and len(pm) == 0 and not pm.overlaps(0, SPAN + 40)
