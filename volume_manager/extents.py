"""Block-ordered extent arrays and "newest wins" composition.

An extent says: blocks ``[lba, lba + count)`` were last written by log record
``seq`` and their data sits in log segment ``seg`` from byte ``off`` on (block
``i`` of the extent at ``off + (i - lba) * block_size``). ``seg == ZERO_SEG``
means the blocks read as zeros (an unmap); ``off`` is then 0.

A *map* is an extent array sorted by ``lba`` whose extents do not overlap and
all have ``count >= 1``. Everything here is vectorised: Python only loops over
the input arrays or touches O(1) extents, never one iteration per extent.

The functions never modify their arguments and never return a view of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

__all__ = [
    "EXTENT_DTYPE",
    "MAX_COUNT",
    "ZERO_SEG",
    "clip",
    "compose",
    "covered_blocks",
    "empty",
    "from_columns",
    "holes",
    "is_map",
]

# Written to disk by the map codec: the layout must never change.
EXTENT_DTYPE = np.dtype(
    [("lba", "<u8"), ("count", "<u4"), ("seg", "<u4"), ("seq", "<u8"), ("off", "<u8")]
)
assert EXTENT_DTYPE.itemsize == 32

ZERO_SEG = 0xFFFFFFFF
# The count field is 32 bits wide; coalescing must never build a longer extent.
MAX_COUNT = 0xFFFFFFFF

_U64_LIMIT = 1 << 64


def empty() -> np.ndarray:
    """Return an extent array with no extents."""
    return np.zeros(0, dtype=EXTENT_DTYPE)


def from_columns(
    lba: Sequence[int] | np.ndarray,
    count: Sequence[int] | np.ndarray,
    seg: Sequence[int] | np.ndarray,
    seq: Sequence[int] | np.ndarray,
    off: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """Build an extent array from one sequence per field (all the same length).

    Values must be integers; one that does not fit its field raises
    ``OverflowError`` instead of wrapping around.
    """
    columns = {"lba": lba, "count": count, "seg": seg, "seq": seq, "off": off}
    arrays: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        arrays[name] = _column(name, values, EXTENT_DTYPE[name])
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"columns have different lengths: {sorted(sizes)}")
    out = np.zeros(sizes.pop(), dtype=EXTENT_DTYPE)
    for name, arr in arrays.items():
        out[name] = arr
    return out


def _column(name: str, values: Sequence[int] | np.ndarray, ftype: np.dtype) -> np.ndarray:
    if isinstance(values, np.ndarray):
        # astype wraps silently, so range-check numpy input before converting.
        if values.size and values.dtype.kind not in "iu":
            raise TypeError(f"column {name!r} must hold integers, got {values.dtype}")
        if values.size:
            info = np.iinfo(ftype)
            if int(values.min()) < 0 or int(values.max()) > info.max:
                raise OverflowError(f"column {name!r} has values outside {ftype}")
        arr = values.astype(ftype)
    else:
        # numpy raises OverflowError itself for out-of-range Python ints.
        arr = np.array(values, dtype=ftype)
    if arr.ndim != 1:
        raise ValueError(f"column {name!r} must be one-dimensional")
    return arr


def _check_array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != EXTENT_DTYPE or a.ndim != 1:
        raise ValueError(f"expected a 1-D array of EXTENT_DTYPE, got {a.dtype} with ndim {a.ndim}")
    return a


def is_map(m: np.ndarray) -> bool:
    """True if ``m`` is a map: sorted by lba, no overlaps, every count >= 1.

    Extents whose end would pass 2**64 are rejected too, since the end of such
    an extent cannot be represented.
    """
    if not isinstance(m, np.ndarray) or m.dtype != EXTENT_DTYPE or m.ndim != 1:
        return False
    if m.size == 0:
        return True
    lba = m["lba"]
    count = m["count"].astype(np.uint64)
    end = lba + count  # wraps on overflow; caught by the next test
    if np.any(m["count"] == 0) or np.any(end < lba):
        return False
    return bool(np.all(lba[1:] >= end[:-1]))


def covered_blocks(m: np.ndarray) -> int:
    """Total number of blocks the map ``m`` covers."""
    return int(_check_array(m)["count"].sum(dtype=np.uint64))


def compose(parts: Sequence[np.ndarray], block_size: int) -> np.ndarray:
    """Merge extent arrays into one coalesced map; each block goes to its newest writer.

    Inputs may be unsorted and overlap in any way. A block covered by several
    input extents is owned by the one with the highest ``seq``. Two overlapping
    extents with the same ``seq`` must describe the same record's data; which
    one wins is then irrelevant because the output is canonical: maximal runs
    of blocks with the same seq and seg and contiguous data become one extent
    (split only if a run exceeds ``MAX_COUNT`` blocks).

    Cost: O(N log N + P) time and O(N + P) memory for N input extents, where
    P is the number of (input extent, elementary interval it covers) pairs.
    The extents of one map are disjoint, so k maps as input give P < 2kN;
    but N mutually overlapping extents (e.g. nested ones) give P = Theta(N**2)
    in the worst case. Callers holding many heavily overlapping arrays should
    compose them in small groups first.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    arrays = [_check_array(p) for p in parts]
    if not arrays:
        return empty()
    ext = np.concatenate(arrays)
    nonempty = ext["count"] > 0
    if not nonempty.all():
        ext = ext[nonempty]  # copying structured rows is slow: only when needed
    if ext.size == 0:
        return empty()

    starts = ext["lba"]
    ends = starts + ext["count"].astype(np.uint64)
    if np.any(ends < starts):
        raise ValueError("an extent ends past 2**64 blocks")

    # Elementary intervals: between consecutive distinct boundaries no input
    # extent starts or ends, so each one has a single owner.
    bounds = _sorted_unique(np.concatenate((starts, ends)))
    first = np.searchsorted(bounds, starts)
    span = np.searchsorted(bounds, ends) - first  # >= 1 because count >= 1

    # Rank inputs by seq so "newest" becomes "largest rank"; stable sort keeps
    # the outcome deterministic for equal seqs.
    by_seq = np.argsort(ext["seq"], kind="stable")
    rank = np.empty(ext.size, dtype=np.int64)
    rank[by_seq] = np.arange(ext.size, dtype=np.int64)

    # Expand each input extent into one pair per elementary interval it covers.
    pair_src, pair_step = _expand(span)
    pair_elem = first[pair_src] + pair_step
    best = np.full(bounds.size - 1, -1, dtype=np.int64)
    np.maximum.at(best, pair_elem, rank[pair_src])

    elem = np.flatnonzero(best >= 0)
    # Gather field by field: fancy indexing a structured array is ~10x slower.
    owner = by_seq[best[elem]]
    piece_lba = bounds[elem]
    piece_count = bounds[elem + 1] - piece_lba
    # Unmap pieces get a junk offset here; _coalesce ignores it and writes 0.
    skipped = (piece_lba - starts[owner]) * np.uint64(block_size)
    piece_off = ext["off"][owner] + skipped
    piece_seg = ext["seg"][owner]
    piece_seq = ext["seq"][owner]
    return _coalesce(piece_lba, piece_count, piece_seg, piece_seq, piece_off, block_size)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique, by sorting: numpy 2.4's hash-based np.unique is ~50x slower on large u8 arrays."""
    values = np.sort(values)
    keep = np.empty(values.size, dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _expand(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For item i repeated lengths[i] times: (i per output slot, 0..lengths[i]-1 per slot)."""
    lengths = lengths.astype(np.int64)
    src = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    base = np.cumsum(lengths) - lengths
    return src, np.arange(src.size, dtype=np.int64) - base[src]


def _coalesce(
    lba: np.ndarray,
    count: np.ndarray,
    seg: np.ndarray,
    seq: np.ndarray,
    off: np.ndarray,
    block_size: int,
) -> np.ndarray:
    """Join sorted, non-overlapping pieces that continue the same record's data."""
    n = lba.size
    if n == 0:
        return empty()
    count = count.astype(np.uint64)
    joins = np.zeros(n, dtype=bool)
    contiguous = lba[1:] == lba[:-1] + count[:-1]
    same_data = (seg[1:] == ZERO_SEG) | (off[1:] == off[:-1] + count[:-1] * np.uint64(block_size))
    joins[1:] = (seq[1:] == seq[:-1]) & (seg[1:] == seg[:-1]) & contiguous & same_data
    run_start = np.flatnonzero(~joins)
    run_count = np.add.reduceat(count, run_start)

    # A run longer than the count field allows is cut into MAX_COUNT pieces.
    chunks = ((run_count + np.uint64(MAX_COUNT - 1)) // np.uint64(MAX_COUNT)).astype(np.int64)
    src, chunk_no = _expand(chunks)
    skip = chunk_no.astype(np.uint64) * np.uint64(MAX_COUNT)
    head = run_start[src]

    out = np.zeros(src.size, dtype=EXTENT_DTYPE)
    out["lba"] = lba[head] + skip
    out["count"] = np.minimum(run_count[src] - skip, np.uint64(MAX_COUNT))
    out["seg"] = seg[head]
    out["seq"] = seq[head]
    data_off = off[head] + skip * np.uint64(block_size)
    out["off"] = np.where(seg[head] == ZERO_SEG, np.uint64(0), data_off)
    return out


def _check_range(lba: int, count: int) -> None:
    if lba < 0 or count < 0 or lba + count > _U64_LIMIT:
        raise ValueError(f"invalid block range: lba={lba} count={count}")


def _window(m: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Index range [i, j) of the extents of map ``m`` that intersect [lo, hi).

    np.searchsorted copies a strided field view (O(n)), so bisect does the
    binary search straight on the view: O(log n) element reads.
    """
    if hi <= lo or m.size == 0:
        return 0, 0
    lbas = m["lba"]
    i = bisect.bisect_right(lbas, lo) - 1
    if i < 0 or int(lbas[i]) + int(m["count"][i]) <= lo:
        i += 1
    j = bisect.bisect_left(lbas, hi)
    return i, max(i, j)


def clip(m: np.ndarray, lba: int, count: int, block_size: int) -> np.ndarray:
    """The part of map ``m`` inside [lba, lba + count), edge extents trimmed.

    Cost O(log n + k) for k extents in the range. The result is a new array.
    """
    m = _check_array(m)
    _check_range(lba, count)
    hi = lba + count
    i, j = _window(m, lba, hi)
    out = m[i:j].copy()
    if out.size == 0:
        return out
    head_lba = int(out["lba"][0])
    if head_lba < lba:
        cut = lba - head_lba
        out["lba"][0] = lba
        out["count"][0] -= cut
        if out["seg"][0] != ZERO_SEG:
            out["off"][0] += cut * block_size
    tail_end = int(out["lba"][-1]) + int(out["count"][-1])
    if tail_end > hi:
        out["count"][-1] -= tail_end - hi
    return out


def holes(m: np.ndarray, lba: int, count: int) -> list[tuple[int, int]]:
    """The maximal (lba, count) runs inside [lba, lba + count) that map ``m`` leaves uncovered.

    ``m`` may extend beyond the range; only the extents that intersect it are
    looked at, so the cost is O(log n + k).
    """
    m = _check_array(m)
    _check_range(lba, count)
    hi = lba + count
    if count == 0:
        return []
    i, j = _window(m, lba, hi)
    if i == j:
        return [(lba, count)]
    win_lba = m["lba"][i:j]
    win_end = win_lba + m["count"][i:j].astype(np.uint64)
    found: list[tuple[int, int]] = []
    first = int(win_lba[0])
    if first > lba:
        found.append((lba, first - lba))
    # Gaps between window extents lie inside the range by construction.
    inner = np.flatnonzero(win_lba[1:] > win_end[:-1])
    gap_lba = win_end[:-1][inner]
    gap_count = win_lba[1:][inner] - gap_lba
    found.extend(zip(gap_lba.tolist(), gap_count.tolist(), strict=True))
    last = int(win_end[-1])
    if last < hi:
        found.append((last, hi - last))
    return found
