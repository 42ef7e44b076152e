"""Tests of volume_manager.extents against a block-by-block reference model.

The model is a dict ``block -> (seq, seg, byte offset of that block)`` painted
from the input extents in seq order, so a later record simply overwrites an
earlier one. compose must agree with it on every block.

Merge laws (the apply/merge model used by delta-based backup tools such as
walb-tools, restated for our maps):

* Applying a series of delta maps to an image one after the other, oldest
  first, leaves the same image as applying the single map obtained by
  composing them: merging never changes what a restore produces.
* Composition is associative: merging A with B first and then C gives the
  same map as merging B with C first and then A. Together with the first law
  this lets a merge job combine neighbouring deltas in any grouping.
* Composition ignores the order of its inputs, since "newest" is decided by
  seq and not by position.
* Composition is idempotent: a map composed with itself (or alone) is itself.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import astuple, dataclass, replace
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volume_manager.extents import (
    EXTENT_DTYPE,
    MAX_COUNT,
    ZERO_SEG,
    clip,
    compose,
    covered_blocks,
    empty,
    from_columns,
    holes,
    is_map,
)

SEGS = 4
SEG_BLOCKS = 64
MAX_RECORD = 16
LBA_SPAN = 64

Block = tuple[int, int, int]  # (seq, seg, byte offset of the block in seg)
Case = tuple[list[np.ndarray], int]  # (input arrays, block size)


@dataclass(frozen=True, slots=True)
class Rec:
    lba: int
    count: int
    seg: int
    seq: int
    off: int


def to_array(rows: Iterable[Rec]) -> np.ndarray:
    rows = list(rows)
    if not rows:
        return empty()
    return from_columns(*(list(col) for col in zip(*map(astuple, rows), strict=True)))


def rows_of(a: np.ndarray) -> list[Rec]:
    return [Rec(*r) for r in a.tolist()]


def block_of(r: Rec, i: int, bs: int) -> Block:
    return (r.seq, r.seg, 0 if r.seg == ZERO_SEG else r.off + i * bs)


def paint(parts: Iterable[np.ndarray], bs: int) -> dict[int, Block]:
    """The reference model: every input extent painted in seq order."""
    model: dict[int, Block] = {}
    for r in sorted((r for p in parts for r in rows_of(p)), key=lambda r: r.seq):
        for i in range(r.count):
            model[r.lba + i] = block_of(r, i, bs)
    return model


def map_blocks(m: np.ndarray, bs: int) -> dict[int, Block]:
    out: dict[int, Block] = {}
    for r in rows_of(m):
        for i in range(r.count):
            assert r.lba + i not in out, "map extents overlap"
            out[r.lba + i] = block_of(r, i, bs)
    return out


def joinable(a: Rec, b: Rec, bs: int) -> bool:
    return (
        a.seq == b.seq
        and a.seg == b.seg
        and b.lba == a.lba + a.count
        and (a.seg == ZERO_SEG or b.off == a.off + a.count * bs)
        and a.count + b.count <= MAX_COUNT
    )


def assert_canonical(m: np.ndarray, bs: int) -> None:
    assert m.dtype == EXTENT_DTYPE
    assert is_map(m)
    rows = rows_of(m)
    assert all(r.off == 0 for r in rows if r.seg == ZERO_SEG)
    for a, b in pairwise(rows):
        assert not joinable(a, b, bs), f"uncoalesced neighbours {a} {b}"


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert rows_of(a) == rows_of(b)


# ---------------------------------------------------------------- strategies


@st.composite
def records(draw: st.DrawFn, max_records: int = 10) -> list[Rec]:
    """Whole log records with unique seqs, 1 in 4 of them unmaps."""
    base = draw(st.sampled_from([0, 0, 1 << 40, (1 << 64) - 200]))
    seqs = draw(st.lists(st.integers(1, 1 << 63), max_size=max_records, unique=True))
    recs = []
    for seq in seqs:
        count = draw(st.integers(1, MAX_RECORD))
        lba = base + draw(st.integers(0, LBA_SPAN))
        if draw(st.integers(0, 3)) == 0:
            recs.append(Rec(lba, count, ZERO_SEG, seq, 0))
        else:
            seg = draw(st.integers(0, SEGS - 1))
            first = draw(st.integers(0, SEG_BLOCKS - count))
            recs.append(Rec(lba, count, seg, seq, first))  # off in blocks; scaled later
    return recs


def scaled(recs: list[Rec], bs: int) -> list[Rec]:
    return [replace(r, off=r.off * bs) for r in recs]


def piece(r: Rec, start: int, end: int, bs: int) -> Rec:
    off = 0 if r.seg == ZERO_SEG else r.off + start * bs
    return Rec(r.lba + start, end - start, r.seg, r.seq, off)


@st.composite
def parts_from(draw: st.DrawFn, recs: list[Rec], bs: int, max_parts: int = 4) -> list[np.ndarray]:
    """Spread pieces of the records over several unsorted input arrays.

    A record may appear whole, cut into pieces, or as overlapping pieces in
    several arrays: same-seq overlaps are always the same record's data.
    """
    nparts = draw(st.integers(1, max_parts))
    buckets: list[list[Rec]] = [[] for _ in range(nparts)]
    for r in recs:
        for _ in range(draw(st.integers(1, 3))):
            start = draw(st.integers(0, r.count - 1))
            end = draw(st.integers(start + 1, r.count))
            if draw(st.booleans()):
                start, end = 0, r.count
            buckets[draw(st.integers(0, nparts - 1))].append(piece(r, start, end, bs))
    rnd = draw(st.randoms(use_true_random=False))
    for b in buckets:
        rnd.shuffle(b)
    return [to_array(b) for b in buckets]


block_sizes = st.sampled_from([512, 4096])


@st.composite
def composed_case(draw: st.DrawFn) -> Case:
    bs = draw(block_sizes)
    recs = scaled(draw(records()), bs)
    return draw(parts_from(recs, bs)), bs


# ------------------------------------------------------------------ compose

FAST = settings(max_examples=100, deadline=None)


@FAST
@given(composed_case())
def test_compose_matches_model(case: Case) -> None:
    parts, bs = case
    m = compose(parts, bs)
    assert_canonical(m, bs)
    assert map_blocks(m, bs) == paint(parts, bs)
    assert covered_blocks(m) == len(paint(parts, bs))


@FAST
@given(composed_case(), st.randoms(use_true_random=False))
def test_compose_ignores_input_order(case: Case, rnd: random.Random) -> None:
    parts, bs = case
    expected = compose(parts, bs)
    rows = [r for p in parts for r in rows_of(p)]
    rnd.shuffle(rows)
    cut = rnd.randint(0, len(rows))
    regrouped = [to_array(rows[cut:]), to_array(rows[:cut])]
    assert_same(compose(regrouped, bs), expected)
    assert_same(compose(list(reversed(parts)), bs), expected)


@settings(max_examples=60, deadline=None)
@given(block_sizes, st.data())
def test_compose_is_associative(bs: int, data: st.DataObject) -> None:
    recs = scaled(data.draw(records(max_records=12)), bs)
    a, b, c = (compose(data.draw(parts_from(recs, bs, max_parts=2)), bs) for _ in range(3))
    # Inputs need not be maps either: use the raw arrays too.
    x, y, z = (np.concatenate(data.draw(parts_from(recs, bs, max_parts=2))) for _ in range(3))
    for p, q, r in ((a, b, c), (x, y, z)):
        left = compose([compose([p, q], bs), r], bs)
        right = compose([p, compose([q, r], bs)], bs)
        assert_same(left, right)
        assert_same(left, compose([p, q, r], bs))


@FAST
@given(composed_case(), st.integers(0, LBA_SPAN + MAX_RECORD), st.integers(0, 40))
def test_compose_is_idempotent(case: Case, lo: int, n: int) -> None:
    parts, bs = case
    m = compose(parts, bs)
    assert_same(compose([m], bs), m)
    assert_same(compose([m, m], bs), m)
    # Pieces of the map itself add nothing.
    base = int(m["lba"][0]) if m.size else 0
    assert_same(compose([clip(m, base + lo, n, bs), m], bs), m)


# A fixed fake log: segment number -> its bytes.
BS = 512
SEGMENTS = {s: random.Random(s).randbytes(SEG_BLOCKS * BS) for s in range(SEGS)}
ZERO_BLOCK = bytes(BS)


def apply(image: dict[int, bytes], m: np.ndarray) -> dict[int, bytes]:
    """Write the blocks a delta map describes onto a copy of ``image``."""
    out = dict(image)
    for r in rows_of(m):
        for i in range(r.count):
            if r.seg == ZERO_SEG:
                out[r.lba + i] = ZERO_BLOCK
            else:
                at = r.off + i * BS
                out[r.lba + i] = SEGMENTS[r.seg][at : at + BS]
    return out


@FAST
@given(records(max_records=14), st.data())
def test_applying_composed_deltas_equals_applying_each(
    recs: list[Rec], data: st.DataObject
) -> None:
    recs = sorted(scaled(recs, BS), key=lambda r: r.seq)
    low = max(0, min(r.lba for r in recs) - 8) if recs else 0
    image = {low + b: bytes([b]) * BS for b in range(0, LBA_SPAN + MAX_RECORD + 16, 3)}
    # Consecutive seq intervals, each turned into one delta map.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(recs)), max_size=4)))
    bounds = [0, *cuts, len(recs)]
    deltas = [compose([to_array(recs[a:b])], BS) for a, b in pairwise(bounds)]

    one_by_one = image
    for d in deltas:
        one_by_one = apply(one_by_one, d)
    assert apply(image, compose(deltas, BS)) == one_by_one
    # ...and the same as replaying every record in seq order.
    replay = image
    for r in recs:
        replay = apply(replay, to_array([r]))
    assert one_by_one == replay


def test_compose_edge_cases() -> None:
    assert compose([], 512).size == 0
    assert compose([empty(), empty()], 512).dtype == EXTENT_DTYPE
    # count 0 covers nothing; an unmap's offset is normalised to 0.
    m = compose([from_columns([5, 1], [0, 2], [1, ZERO_SEG], [9, 3], [0, 777])], 512)
    assert rows_of(m) == [Rec(1, 2, ZERO_SEG, 3, 0)]
    # Same record in two contiguous pieces is coalesced.
    m = compose([from_columns([0, 4], [4, 4], [2, 2], [7, 7], [1024, 1024 + 4 * 512])], 512)
    assert rows_of(m) == [Rec(0, 8, 2, 7, 1024)]
    # Same seq and seg but not contiguous data: kept apart.
    m = compose([from_columns([0, 4], [4, 4], [2, 2], [7, 7], [0, 0])], 512)
    assert len(m) == 2


def test_compose_nested_extents() -> None:
    # Worst case shape for the pair expansion: every extent covers every interval.
    n = 200
    lba = np.arange(n, dtype=np.uint64)
    count = (2 * (n - lba)).astype(np.uint32)
    for seq in (np.arange(n), np.arange(n)[::-1]):
        parts = [from_columns(lba, count, np.ones(n, np.uint32), seq.astype(np.uint64), lba * 512)]
        m = compose(parts, 512)
        assert_canonical(m, 512)
        assert map_blocks(m, 512) == paint(parts, 512)


@pytest.mark.parametrize("seed", range(4))
def test_compose_many_random_extents(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    lba = rng.integers(0, 5000, n, dtype=np.uint64)
    count = rng.integers(1, 60, n, dtype=np.uint32)
    seg = np.where(rng.random(n) < 0.2, ZERO_SEG, rng.integers(0, 3, n)).astype(np.uint32)
    seq = rng.permutation(n).astype(np.uint64) + 1
    off = rng.integers(0, 1 << 30, n, dtype=np.uint64) * 512
    off[seg == ZERO_SEG] = 0
    parts = [from_columns(lba, count, seg, seq, off)]
    m = compose(parts, 512)
    assert_canonical(m, 512)
    assert map_blocks(m, 512) == paint(parts, 512)


def test_compose_splits_runs_longer_than_count_field() -> None:
    a = from_columns([0, MAX_COUNT], [MAX_COUNT, 10], [1, 1], [9, 9], [0, MAX_COUNT * 512])
    m = compose([a], 512)
    assert rows_of(m) == rows_of(a)
    assert covered_blocks(m) == MAX_COUNT + 10


def test_compose_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="EXTENT_DTYPE"):
        compose([np.zeros(3, dtype=np.uint64)], 512)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        compose([from_columns([(1 << 64) - 2], [5], [1], [1], [0])], 512)
    with pytest.raises(ValueError, match="block_size"):
        compose([empty()], 0)


def test_inputs_are_not_modified() -> None:
    a = from_columns([0, 2], [4, 4], [1, 1], [1, 2], [0, 0])
    before = a.copy()
    m = compose([a], 512)
    c = clip(m, 1, 2, 512)
    c["seq"] = 99
    assert rows_of(a) == rows_of(before)
    assert 99 not in m["seq"]


# --------------------------------------------------------------- clip, holes


@FAST
@given(composed_case(), st.data())
def test_clip_and_holes_match_model(case: Case, data: st.DataObject) -> None:
    parts, bs = case
    m = compose(parts, bs)
    lo, n = data.draw(ranges_near(m))
    model = paint(parts, bs)
    inside = {b: v for b, v in model.items() if lo <= b < lo + n}

    c = clip(m, lo, n, bs)
    assert_canonical(c, bs)
    assert map_blocks(c, bs) == inside

    expected_holes = set(range(lo, lo + n)) - set(inside)
    for src in (m, c):
        found = holes(src, lo, n)
        assert all(cnt >= 1 for _, cnt in found)
        # Maximal runs: sorted with a covered block between any two.
        assert all(a + ac < b for (a, ac), (b, _) in pairwise(found))
        assert {b for s, cnt in found for b in range(s, s + cnt)} == expected_holes


def ranges_near(m: np.ndarray) -> st.SearchStrategy[tuple[int, int]]:
    """(lba, count) ranges whose ends fall on or right next to extent boundaries."""
    first = int(m["lba"][0]) if m.size else 0
    edges = sorted({first, *m["lba"].tolist(), *(m["lba"] + m["count"]).tolist()})
    point = st.one_of(
        st.builds(lambda e, d: e + d, st.sampled_from(edges), st.integers(-2, 2)),
        st.integers(first - 8, first + LBA_SPAN + MAX_RECORD),
    ).map(lambda b: min(max(b, 0), 1 << 64))
    return st.tuples(point, point).map(lambda t: (min(t), max(t) - min(t)))


def test_clip_trims_both_ends() -> None:
    m = from_columns([10, 30], [10, 10], [1, ZERO_SEG], [1, 2], [4096, 0])
    c = clip(m, 13, 20, 512)
    assert rows_of(c) == [Rec(13, 7, 1, 1, 4096 + 3 * 512), Rec(30, 3, ZERO_SEG, 2, 0)]
    assert rows_of(clip(m, 14, 2, 512)) == [Rec(14, 2, 1, 1, 4096 + 4 * 512)]
    assert clip(m, 20, 10, 512).size == 0
    assert clip(m, 0, 0, 512).size == 0
    assert clip(empty(), 0, 100, 512).size == 0
    with pytest.raises(ValueError):
        clip(m, -1, 5, 512)


def test_holes_at_top_of_address_space() -> None:
    top = 1 << 64
    m = from_columns([top - 10], [4], [1], [1], [0])
    assert holes(m, top - 12, 12) == [(top - 12, 2), (top - 6, 6)]
    assert holes(empty(), 5, 0) == []
    assert holes(empty(), 5, 3) == [(5, 3)]


# ----------------------------------------------------------- is_map, columns


def test_is_map() -> None:
    assert is_map(empty())
    assert is_map(from_columns([0, 4], [4, 1], [1, 1], [1, 1], [0, 0]))  # adjacent is fine
    assert not is_map(from_columns([4, 0], [1, 4], [1, 1], [1, 1], [0, 0]))  # unsorted
    assert not is_map(from_columns([0, 3], [4, 1], [1, 1], [1, 1], [0, 0]))  # overlap
    assert not is_map(from_columns([0], [0], [1], [1], [0]))  # zero count
    assert not is_map(from_columns([(1 << 64) - 1], [1], [1], [1], [0]))  # ends past 2**64
    assert not is_map(np.zeros(2, dtype=np.uint64))
    assert not is_map(np.zeros((1, 1), dtype=EXTENT_DTYPE))


def test_from_columns() -> None:
    a = from_columns([1, 2], [3, 4], [5, ZERO_SEG], [(1 << 64) - 1, 0], [8, 0])
    assert a.dtype == EXTENT_DTYPE and a.dtype.itemsize == 32
    assert rows_of(a) == [Rec(1, 3, 5, (1 << 64) - 1, 8), Rec(2, 4, ZERO_SEG, 0, 0)]
    assert from_columns([], [], [], [], []).size == 0
    with pytest.raises(ValueError, match="lengths"):
        from_columns([1], [1, 2], [1], [1], [1])
    with pytest.raises(OverflowError):
        from_columns([1], [1 << 32], [1], [1], [1])
    with pytest.raises(OverflowError):
        from_columns([-1], [1], [1], [1], [1])
    with pytest.raises(OverflowError):
        from_columns(np.array([1]), np.array([-1]), [1], [1], [1])
    with pytest.raises(TypeError):
        from_columns(np.array([1.5]), [1], [1], [1], [1])
