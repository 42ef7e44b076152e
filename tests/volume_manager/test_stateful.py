"""Stateful and property tests of a real Volume against an in-memory reference model.

The model is the list of images at every sequence number (``hist[seq]`` is the
whole volume after record ``seq``, with the block range that record touched),
plus what the engine must remember about it: the markers, the map boundaries,
the baseline after fade-outs and the ranges made coarse by merges. A point is
*retained* if it lies in [baseline, seq] and not strictly inside a merged range.

The state machine drives writes, unmaps, flushes, markers, rewinds, clones,
playbacks, merges, fade-outs and reopens (clean and crashed) against a volume
of real files in a temporary directory, and checks after every step that the
live volume, a sample of retained points, the views it holds open and the
catalog agree with the model (and at the end, every retained point).
Log segments are tiny (8 KiB) so that rolls, checkpoints and the deletion of
segments by fade-outs happen within a few steps. For a deeper search set
VM_STATEFUL_EXAMPLES (default 60) and VM_STATEFUL_STEPS (default 30).

The property tests at the end state the merge laws at the volume level: a merge
does not change the images at the ends of the merged range, merging in two
steps equals merging at once, and merges respect markers (inner ones go, pinned
ones refuse, outer ones stay).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileBlockDevice
from volume_manager.errors import (
    BusyError,
    EngineError,
    MarkerExistsError,
    PointError,
    VolumeClosedError,
)
from volume_manager.history import PointInTimeView

BS = 512
NBLOCKS = 64
SEGMENT_BYTES = 8 << 10
# The smallest write buffer: with segments this small, most records are let go
# before they are applied and read back from the log file (Volume._spill).
OPTIONS = VolumeOptions(commit_interval=None, segment_bytes=SEGMENT_BYTES, buffer_bytes=0)
NAME_POOL = ("alpha", "beta", "gamma", "delta", "eps", "zeta.1", "eta_2")

# A burst of I/O: (kind, lba, count, tag, fua); kind is the block content or "unmap".
# Low LBAs are drawn often so that writes overlap.
IO_BURST = st.lists(
    st.tuples(
        st.sampled_from(["unique", "unique", "unique", "zeros", "fill", "unmap"]),
        st.one_of(st.integers(0, 15), st.integers(0, NBLOCKS - 1)),
        st.integers(1, 8),
        st.integers(0, 3),
        st.sampled_from([False, False, False, True]),
    ),
    min_size=1,
    max_size=6,
)


def block_content(mode: str, seq: int, block: int, tag: int) -> bytes:
    """One block of test data: unique per (seq, block), zeros, or a repeated byte."""
    if mode == "zeros":
        return bytes(BS)
    if mode == "fill":
        return bytes([tag]) * BS
    stamp = f"s{seq:05d}b{block:03d}t{tag:03d}|".encode()
    return (stamp * (BS // len(stamp) + 1))[:BS]


def initial_image() -> bytes:
    """The primary before protection starts: a pattern in the first half, holes after."""
    head = b"".join(block_content("unique", 0, b, 7) for b in range(NBLOCKS // 2))
    return head + bytes(BS * (NBLOCKS - NBLOCKS // 2))


def blk(image: bytes, b: int) -> bytes:
    return image[b * BS : (b + 1) * BS]


def diff_blocks(got: bytes, want: bytes) -> list[int]:
    return [b for b in range(len(want) // BS) if blk(got, b) != blk(want, b)]


@dataclass(frozen=True)
class Rec:
    """The model's record ``seq``: the image after it and the blocks it touched."""

    image: bytes
    touched: tuple[int, int] | None  # (lba, count) of a write/unmap; None for a marker

    def __repr__(self) -> str:  # images are 32 KiB: keep failure reports readable
        return f"Rec(touched={self.touched})"


class Model:
    """What a volume must hold, independent of how the engine stores it."""

    def __init__(self, image: bytes) -> None:
        self.hist: list[Rec] = [Rec(image, None)]
        self.baseline = 0
        self.merged: list[tuple[int, int]] = []
        self.markers: dict[str, tuple[int, bool]] = {}  # name -> (seq, pinned)
        self.bounds: list[int] = []  # map to_seqs, ascending
        self.flushed = 0
        self.rewinds = 0

    @property
    def seq(self) -> int:
        return len(self.hist) - 1

    @property
    def image(self) -> bytes:
        return self.hist[-1].image

    def retained(self, s: int) -> bool:
        return self.baseline <= s <= self.seq and not any(lo < s < hi for lo, hi in self.merged)

    def retained_points(self) -> list[int]:
        return [s for s in range(self.baseline, self.seq + 1) if self.retained(s)]

    def write(self, lba: int, blocks: list[bytes]) -> int:
        img = bytearray(self.image)
        img[lba * BS : (lba + len(blocks)) * BS] = b"".join(blocks)
        self.hist.append(Rec(bytes(img), (lba, len(blocks))))
        return self.seq

    def unmap(self, lba: int, count: int) -> int:
        return self.write(lba, [bytes(BS)] * count)

    def mark(self, name: str, pinned: bool) -> int:
        self.hist.append(Rec(self.image, None))
        self.markers[name] = (self.seq, pinned)
        self.bounds.append(self.seq)
        return self.seq

    def touched_between(self, lo: int, hi: int) -> dict[int, int]:
        """Block -> seq of its newest write/unmap among records lo < seq <= hi."""
        last: dict[int, int] = {}
        for s in range(lo + 1, hi + 1):
            t = self.hist[s].touched
            if t is not None:
                for b in range(t[0], t[0] + t[1]):
                    last[b] = s
        return last

    def marker_at(self, s: int) -> list[str]:
        return sorted(n for n, (ms, _) in self.markers.items() if ms == s)


class VolumeMachine(RuleBasedStateMachine):
    """A real Volume and the Model, driven in lockstep.

    Rules are grouped so that about a third of the steps change the volume
    (``io`` twice, the two ``mark`` rules); rarer uses of history share one rule
    each (``inspect``, ``view``, ``reopen``).
    """

    names = Bundle("names")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="vm-stateful-")
        self.sec = os.path.join(self.tmp, "secondary")
        primary = os.path.join(self.tmp, "primary.img")
        image = initial_image()
        with open(primary, "wb") as f:
            f.write(image)
        self.vol = Volume.create(self.sec, primary, block_size=BS, options=OPTIONS)
        self.model = Model(image)
        self.rng = random.Random(0)
        self.n_files = 0
        self.views: list[tuple[PointInTimeView, int]] = []  # held open across steps

    def __repr__(self) -> str:
        return f"VolumeMachine(seq={self.model.seq}, markers={self.model.markers})"

    # ------------------------------------------------------------- helpers
    def point_name(self, data: st.DataObject, s: int) -> str:
        """A POINT naming seq ``s``: one of its markers, or seq:N."""
        choices = [f"seq:{s}", *self.model.marker_at(s)]
        return data.draw(st.sampled_from(choices), label="point")

    def draw_retained(self, data: st.DataObject, label: str = "seq") -> int:
        return data.draw(st.sampled_from(self.model.retained_points()), label=label)

    def check_image_at(self, point: str, s: int) -> None:
        want = self.model.hist[s].image
        with self.vol.view(point) as v:
            got = v.read(0, NBLOCKS)
            assert got == want, (f"view {point} (seq:{s}) differs in blocks"
                                 f" {diff_blocks(got, want)}")
            # Small reads take the one-extent lookup, not the general merge of pieces.
            for n in (1, 2, 3):
                for lba in range(NBLOCKS - n + 1):
                    assert v.read(lba, n) == want[lba * BS:(lba + n) * BS], (
                        f"view {point} (seq:{s}): read of {n} blocks at {lba} differs")

    def snapshot(self) -> tuple[int, bytes, list[tuple[int, int]], dict[str, int]]:
        vol = self.vol
        maps = [(x.from_seq, x.to_seq) for x in vol.maps]
        return vol.seq, vol.read(0, NBLOCKS), maps, {n: r.seq for n, r in vol.markers.items()}

    def new_path(self, what: str) -> str:
        self.n_files += 1
        return os.path.join(self.tmp, f"{what}-{self.n_files}.img")

    # ------------------------------------------------------ rules: changes
    @initialize(seed=st.integers(0, 2**32 - 1))
    def seed_sampler(self, seed: int) -> None:
        self.rng = random.Random(seed)

    @initialize(target=names, name=st.sampled_from(NAME_POOL))
    def first_name(self, name: str) -> str:
        return name

    @rule(target=names, name=st.sampled_from(NAME_POOL))
    def add_name(self, name: str) -> str:
        return name

    @rule(ops=IO_BURST)
    def io(self, ops: list[tuple[str, int, int, int, bool]]) -> None:
        for kind, lba, count, tag, fua in ops:
            count = min(count, NBLOCKS - lba)
            if kind == "unmap":
                assert self.vol.unmap(lba, count) == self.model.unmap(lba, count)
                continue
            seq = self.model.seq + 1
            blocks = [block_content(kind, seq, lba + i, tag) for i in range(count)]
            got = self.vol.write(lba, b"".join(blocks), fua=fua)
            assert got == self.model.write(lba, blocks)
            if fua:
                self.model.flushed = got

    @rule(ops=IO_BURST)
    def more_io(self, ops: list[tuple[str, int, int, int, bool]]) -> None:
        self.io(ops)

    @rule(name=names, pinned=st.sampled_from([False, False, False, True]), flush=st.booleans())
    def mark_named(self, name: str, pinned: bool, flush: bool) -> None:
        if flush:
            self.vol.flush()
            self.model.flushed = self.model.seq
        if name in self.model.markers:
            before = self.snapshot()
            with pytest.raises(MarkerExistsError):
                self.vol.mark(name)
            assert self.snapshot() == before
            return
        row = self.vol.mark(name, pinned=pinned)
        assert (row.name, row.seq, row.pinned) == (name, self.model.mark(name, pinned), pinned)
        self.model.flushed = row.seq

    @rule()
    def mark_unnamed(self) -> None:
        row = self.vol.mark()
        assert row.name not in self.model.markers
        assert row.seq == self.model.mark(row.name, False)
        assert not row.pinned
        self.model.flushed = row.seq

    @rule(data=st.data())
    def rewind(self, data: st.DataObject) -> None:
        m = self.model
        p = self.draw_retained(data)
        res = self.vol.rewind(self.point_name(data, p))
        m.rewinds += 1
        before = m.mark(f"before-rewind-{m.rewinds}", False)
        assert res.point_seq == p
        assert res.before_marker == f"before-rewind-{m.rewinds}"
        # The engine rewrites, in block order, each maximal run of blocks whose
        # newest change since p comes from one record, as one write (an unmap
        # when the run is all zeros at p); then flushes and marks.
        last = m.touched_between(p, before)
        target = m.hist[p].image
        runs: list[tuple[int, int]] = []
        for b in sorted(last):
            if runs and runs[-1][0] + runs[-1][1] == b and last[runs[-1][0]] == last[b]:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((b, 1))
        for lba, count in runs:
            m.write(lba, [blk(target, b) for b in range(lba, lba + count)])
        m.flushed = m.seq
        after = m.mark(f"after-rewind-{m.rewinds}", False)
        assert res.after_marker == f"after-rewind-{m.rewinds}"
        assert res.blocks_rewritten == len(last)
        assert self.vol.seq == after
        assert m.image == target
        event(f"rewind of {'some' if last else 'no'} blocks")
        # before-rewind-N holds the image before the rewind: undo is a rewind to it.
        self.check_image_at(f"before-rewind-{m.rewinds}", before)

    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        m = self.model
        ends = [m.baseline, *m.bounds]
        if len(ends) >= 3 and data.draw(st.integers(0, 3), label="valid range") > 0:
            i = data.draw(st.integers(0, len(ends) - 3), label="lo index")
            lo = ends[i]
            hi = data.draw(st.sampled_from(ends[i + 2 :]), label="hi")
        else:  # any two boundaries, mostly refused
            lo = data.draw(st.sampled_from(ends), label="lo")
            hi = data.draw(st.sampled_from(ends), label="hi")
        start, end = self.point_name(data, lo), self.point_name(data, hi)
        inside = [s for s in m.bounds if lo < s <= hi]
        inner = {n for n, (s, _) in m.markers.items() if lo < s < hi}
        pinned = {n for n in inner if m.markers[n][1]}
        busy = pinned or any(lo < s < hi for _, s in self.views)
        before = self.snapshot()
        if len(inside) < 2 or busy:
            event("merge refused: " + ("busy" if len(inside) >= 2 else "< 2 maps"))
            if len(inside) >= 2:
                expected = pytest.raises(BusyError)
            else:
                expected = pytest.raises(EngineError, match="nothing to merge")
            with expected:
                self.vol.merge(start, end)
            assert self.snapshot() == before
            return
        event("merge done")
        # Often with a view open outside (lo, hi): it must outlive the merge.
        outside = [s for s in m.retained_points() if not lo < s < hi]
        if data.draw(st.booleans(), label="open a view outside"):
            s = data.draw(st.sampled_from(outside), label="view seq")
            self.views.append((self.vol.view(self.point_name(data, s)), s))
        row = self.vol.merge(start, end)
        assert (row.from_seq, row.to_seq, row.granular) == (lo, hi, False)
        for n in inner:
            del m.markers[n]
        m.bounds = [s for s in m.bounds if not lo < s < hi]
        m.merged.append((lo, hi))
        assert self.snapshot()[:2] == before[:2]
        for n in inner:  # markers inside the merged range are gone for good
            with pytest.raises(PointError):
                self.vol.resolve(n)
        if hi - lo >= 2:
            with pytest.raises(PointError):
                self.vol.view(f"seq:{lo + 1}")
        self.check_image_at(f"seq:{lo}", lo)
        self.check_image_at(f"seq:{hi}", hi)

    @rule(data=st.data())
    def fade(self, data: st.DataObject) -> None:
        m = self.model
        p = data.draw(st.sampled_from([*m.bounds, *m.bounds, m.baseline]), label="p")
        point = self.point_name(data, p)
        before = self.snapshot()
        pinned = [n for n, (s, pin) in m.markers.items() if pin and s < p]
        busy = p > m.baseline and any(s < p for _, s in self.views)
        if pinned or busy:
            event("fade refused: " + ("pinned" if pinned else "open view"))
            with pytest.raises(BusyError):
                self.vol.fade(point)
            assert self.snapshot() == before
            assert self.vol.baseline_seq == m.baseline
            return
        event("fade done" if p > m.baseline else "fade no-op")
        # Often with a view open at or after p: it must outlive the fade-out.
        later = [s for s in m.retained_points() if s >= p]
        if data.draw(st.booleans(), label="open a later view"):
            s = data.draw(st.sampled_from(later), label="view seq")
            self.views.append((self.vol.view(self.point_name(data, s)), s))
        res = self.vol.fade(point)
        assert res.baseline_seq == p == self.vol.baseline_seq
        dropped = [n for n, (s, _) in m.markers.items() if s < p]
        for n in dropped:
            del m.markers[n]
        m.bounds = [s for s in m.bounds if s > p]
        m.baseline = max(m.baseline, p)
        assert self.snapshot()[:2] == before[:2]
        for n in dropped:
            with pytest.raises(PointError):
                self.vol.resolve(n)
        if p > 0:
            with pytest.raises(PointError):
                self.vol.resolve(f"seq:{p - 1}")
        self.check_image_at(f"seq:{p}", p)

    # ------------------------------------------- rules: reading history
    @rule(
        data=st.data(),
        what=st.sampled_from(["clone", "playback", "bad_points", "check_point", "flush"]),
    )
    def inspect(self, data: st.DataObject, what: str) -> None:
        """Uses of history that must leave the volume as it was (and a flush)."""
        if what == "flush":
            self.vol.flush()
            self.model.flushed = self.model.seq
            return
        before = self.snapshot()
        getattr(self, what)(data)
        assert self.snapshot() == before

    def clone(self, data: st.DataObject) -> None:
        p = self.draw_retained(data)
        dest = self.new_path("clone")
        assert self.vol.clone(self.point_name(data, p), dest) == p
        with open(dest, "rb") as f:
            got = f.read()
        want = self.model.hist[p].image
        assert got == want, diff_blocks(got, want)
        assert not os.path.exists(dest + ".partial")
        os.unlink(dest)

    def playback(self, data: st.DataObject) -> None:
        m = self.model
        a = self.draw_retained(data, "a")
        b = data.draw(st.sampled_from([s for s in m.retained_points() if s >= a]), label="b")
        lba = data.draw(st.integers(0, NBLOCKS - 1), label="lba")
        count = data.draw(st.integers(0, NBLOCKS - lba), label="count")
        prefill = bytes([data.draw(st.integers(1, 255), label="prefill")]) * (BS * NBLOCKS)
        dest_path = self.new_path("playback")
        with open(dest_path, "wb") as f:
            f.write(prefill)
        dev = FileBlockDevice(dest_path, block_size=BS)
        try:
            start, end = self.point_name(data, a), self.point_name(data, b)
            n = self.vol.playback(start, end, lba, count, dev)
        finally:
            dev.close()
        with open(dest_path, "rb") as f:
            got = f.read()
        os.unlink(dest_path)
        # Exactly the blocks changed in (a, b] inside the range, with their value
        # at b (zeros for an unmap); everything else keeps the prefill.
        changed = [x for x in m.touched_between(a, b) if lba <= x < lba + count]
        want = bytearray(prefill)
        for x in changed:
            want[x * BS : (x + 1) * BS] = blk(m.hist[b].image, x)
        assert got == bytes(want), diff_blocks(got, bytes(want))
        assert n == len(changed)
        if a < b:  # backwards is refused
            with pytest.raises(PointError):
                self.vol.playback(end, start, lba, count, dev)

    def bad_points(self, data: st.DataObject) -> None:
        """Points that are not retained are refused by view, rewind, clone and playback."""
        m = self.model
        bad = [f"seq:{m.seq + data.draw(st.integers(1, 5), label='ahead')}", "never-made"]
        if m.baseline > 0:
            bad.append(f"seq:{m.baseline - 1}")
        bad += [
            f"seq:{s}"
            for lo, hi in m.merged
            for s in (lo + 1, hi - 1)
            if lo < s < hi and s >= m.baseline
        ]
        bad += [n for n in NAME_POOL if n not in m.markers]
        point = data.draw(st.sampled_from(bad), label="bad point")
        with pytest.raises(PointError):
            self.vol.view(point)
        with pytest.raises(PointError):
            self.vol.rewind(point)
        dest = self.new_path("clone")
        with pytest.raises(PointError):
            self.vol.clone(point, dest)
        assert not os.path.exists(dest) and not os.path.exists(dest + ".partial")
        with pytest.raises(PointError):
            self.vol.playback(point, "now", 0, NBLOCKS, FakeTarget())
        assert self.vol.catalog.get_int("rewinds") == m.rewinds

    def check_point(self, data: st.DataObject) -> None:
        p = self.draw_retained(data)
        self.check_image_at(self.point_name(data, p), p)

    @rule(data=st.data())
    def view(self, data: st.DataObject) -> None:
        """Open a view kept across steps (at most 3), or close one."""
        if self.views and (len(self.views) >= 3 or data.draw(st.booleans(), label="close")):
            i = data.draw(st.integers(0, len(self.views) - 1), label="view")
            v, _ = self.views.pop(i)
            v.close()
            with pytest.raises(VolumeClosedError):
                v.read(0, 1)
            return
        p = self.draw_retained(data)
        self.views.append((self.vol.view(self.point_name(data, p)), p))

    # ------------------------------------------------------- rules: reopen
    @rule(crash=st.booleans())
    def reopen(self, crash: bool) -> None:
        m = self.model
        if not crash:
            self.vol.close()  # closes the open views too
            for v, _ in self.views:
                with pytest.raises(VolumeClosedError):
                    v.read(0, 1)
            self.views.clear()
            self.vol = Volume.open(self.sec, options=OPTIONS)
            assert self.vol.recovery_report == []
            assert self.vol.seq == m.seq
            m.flushed = m.seq
            return
        # A crash of the process, not of the machine: every record written is in
        # the page cache, so nothing may be lost; open views die with the process.
        for v, _ in self.views:
            v.close()
        self.views.clear()
        self.vol.abandon()
        self.vol = Volume.open(self.sec, options=OPTIONS)
        assert m.flushed <= self.vol.seq <= m.seq
        truncated = [r for r in self.vol.recovery_report if "truncated" in r]
        assert not truncated, self.vol.recovery_report
        del m.hist[self.vol.seq + 1 :]
        for n in [n for n, (s, _) in m.markers.items() if s > m.seq]:
            del m.markers[n]
        m.bounds = [s for s in m.bounds if s <= m.seq]
        m.flushed = m.seq

    # ---------------------------------------------------------- invariants
    @invariant()
    def live_matches_model(self) -> None:
        assert self.vol.seq == self.model.seq
        got = self.vol.read(0, NBLOCKS)
        assert got == self.model.image, (
            f"live volume differs in {diff_blocks(got, self.model.image)}"
        )

    @invariant()
    def catalog_matches_model(self) -> None:
        m = self.model
        got = {n: (r.seq, r.pinned) for n, r in self.vol.markers.items()}
        assert got == m.markers
        assert self.vol.baseline_seq == m.baseline
        maps = [(x.from_seq, x.to_seq) for x in self.vol.maps]
        assert [t for _, t in maps] == m.bounds
        assert [f for f, _ in maps] == [m.baseline, *m.bounds][: len(maps)]
        # merges and fade-outs leave no stray files behind
        assert sorted(os.listdir(self.vol.map_dir)) == sorted(x.row.file for x in self.vol.maps)
        first_live = self.vol.catalog.get_int("first_live_seg")
        assert all(int(n[:16], 16) >= first_live for n in os.listdir(self.vol.log_dir))

    @invariant()
    def open_views_keep_their_images(self) -> None:
        for v, s in self.views:
            got = v.read(0, NBLOCKS)
            want = self.model.hist[s].image
            assert got == want, f"open view {v.label} differs in {diff_blocks(got, want)}"

    @invariant()
    def sampled_points_read_back(self) -> None:
        m = self.model
        points = [(n, s) for n, (s, _) in m.markers.items()]
        points += [(f"seq:{s}", s) for s in m.retained_points()]
        for name, s in self.rng.sample(points, min(3, len(points))):
            self.check_image_at(name, s)

    def teardown(self) -> None:
        failing = sys.exc_info()[1] is not None  # hypothesis calls this in a finally:
        try:
            if not failing and not self.vol._closed:
                m = self.model
                event(f"final seq >= {m.seq // 25 * 25}")
                for name, (s, _) in m.markers.items():
                    self.check_image_at(name, s)
                for s in m.retained_points():
                    self.check_image_at(f"seq:{s}", s)
                self.vol.close()
        finally:
            if not self.vol._closed:
                self.vol.abandon()
            shutil.rmtree(self.tmp, ignore_errors=True)


class FakeTarget:
    """A playback target that must never be written to."""

    block_size = BS
    num_blocks = NBLOCKS
    read_only = False

    def read(self, lba: int, count: int) -> bytes:
        raise AssertionError("read")

    def write(self, lba: int, data: bytes, *, fua: bool = False) -> None:
        raise AssertionError("write")

    def unmap(self, lba: int, count: int) -> None:
        raise AssertionError("unmap")

    def flush(self) -> None:
        raise AssertionError("flush")


VolumeMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VM_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("VM_STATEFUL_STEPS", "30")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
TestVolumeMachine = VolumeMachine.TestCase


# --------------------------------------------------------------------------
# Merge laws at the volume level
# --------------------------------------------------------------------------

# An interval's worth of writes: (lba, count, byte) triples; byte 0 is an unmap.
interval_st = st.lists(
    st.tuples(st.integers(0, 15), st.integers(1, 6), st.integers(0, 5)), min_size=0, max_size=5
)
LAW_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def fresh(tmp_path):  # type: ignore[no-untyped-def]
    """A factory of new volumes under tmp_path (hypothesis reuses the fixture)."""
    made: list[Volume] = []

    def make() -> Volume:
        d = tempfile.mkdtemp(dir=tmp_path)
        vol = Volume.create(
            os.path.join(d, "sec"),
            os.path.join(d, "primary.img"),
            size=NBLOCKS * BS,
            block_size=BS,
            options=OPTIONS,
        )
        made.append(vol)
        return vol

    yield make
    for vol in made:
        vol.close()


def build(
    vol: Volume,
    intervals: list[list[tuple[int, int, int]]],
    *,
    first: int = 0,
    pinned: bool = False,
) -> list[int]:
    """Write each interval and close it with a marker m<first>, m<first+1>, ...

    Returns the markers' seqs.
    """
    seqs = []
    for i, writes in enumerate(intervals, start=first):
        for lba, count, byte in writes:
            if byte == 0:
                vol.unmap(lba, count)
            else:
                vol.write(lba, bytes([byte + 16 * i]) * (count * BS))
        seqs.append(vol.mark(f"m{i}", pinned=pinned).seq)
    return seqs


def images(vol: Volume, points: list[str | int]) -> list[bytes]:
    out = []
    for p in points:
        with vol.view(p) as v:
            out.append(v.read(0, NBLOCKS))
    return out


@LAW_SETTINGS
@given(intervals=st.lists(interval_st, min_size=3, max_size=6), data=st.data())
def test_merge_keeps_the_images_at_its_ends(fresh, intervals, data) -> None:  # type: ignore[no-untyped-def]
    vol = fresh()
    seqs = [0, *build(vol, intervals)]
    i = data.draw(st.integers(0, len(seqs) - 3), label="start")
    j = data.draw(st.integers(i + 2, len(seqs) - 1), label="end")
    points = [f"seq:{s}" for s in seqs]
    before = images(vol, points)
    live = vol.read(0, NBLOCKS)
    vol.merge(points[i], points[j])
    # The merged range's ends and every boundary outside it are unchanged.
    kept = [k for k in range(len(seqs)) if not i < k < j]
    assert images(vol, [points[k] for k in kept]) == [before[k] for k in kept]
    assert vol.read(0, NBLOCKS) == live
    # ... also after the maps are read back from disk.
    vol.close()
    vol2 = Volume.open(vol.directory, options=OPTIONS)
    try:
        assert images(vol2, [points[k] for k in kept]) == [before[k] for k in kept]
    finally:
        vol2.close()


@LAW_SETTINGS
@given(intervals=st.lists(interval_st, min_size=3, max_size=6), data=st.data())
def test_merge_in_two_steps_equals_merge_at_once(fresh, intervals, data) -> None:  # type: ignore[no-untyped-def]
    a = data.draw(st.integers(0, len(intervals) - 2), label="a")
    b = data.draw(st.integers(a + 1, len(intervals) - 1), label="b")
    c = data.draw(st.integers(b + 1, len(intervals)), label="c")
    stepwise, direct = fresh(), fresh()
    seqs = [0, *build(stepwise, intervals)]
    assert [0, *build(direct, intervals)] == seqs
    # Merging (a, b] first needs two maps in it; otherwise the first step is a no-op.
    if b - a >= 2:
        stepwise.merge(f"seq:{seqs[a]}", f"seq:{seqs[b]}")
    stepwise.merge(f"seq:{seqs[a]}", f"seq:{seqs[c]}")
    direct.merge(f"seq:{seqs[a]}", f"seq:{seqs[c]}")
    ends = [f"seq:{seqs[a]}", f"seq:{seqs[c]}", "now"]
    assert images(stepwise, ends) == images(direct, ends)
    assert [(m.from_seq, m.to_seq) for m in stepwise.maps] == [
        (m.from_seq, m.to_seq) for m in direct.maps
    ]
    # The composed map itself is the same: "newest wins" does not depend on grouping.
    sm = next(m for m in stepwise.maps if m.to_seq == seqs[c])
    dm = next(m for m in direct.maps if m.to_seq == seqs[c])
    s_ext, d_ext = stepwise.map_extents(sm), direct.map_extents(dm)
    assert s_ext.tolist() == d_ext.tolist()


@LAW_SETTINGS
@given(intervals=st.lists(interval_st, min_size=4, max_size=6), data=st.data())
def test_merge_and_markers(fresh, intervals, data) -> None:  # type: ignore[no-untyped-def]
    n = len(intervals)
    i = data.draw(st.integers(0, n - 2), label="start")  # boundary index; 0 = seq:0
    j = data.draw(st.integers(i + 2, n), label="end")
    k = data.draw(st.integers(i + 1, j - 1), label="pinned")  # boundary strictly inside
    names = [None, *[f"m{x}" for x in range(n)]]
    inner = names[i + 1 : j]
    outer = [x for x in names if x is not None and x not in inner]

    # A pinned marker inside the range refuses the merge, and nothing changes.
    pinned_vol = fresh()
    for x, writes in enumerate(intervals):
        build(pinned_vol, [writes], first=x, pinned=(x + 1 == k))
    assert pinned_vol.markers[names[k]].pinned
    start = "seq:0" if i == 0 else names[i]
    maps_before = [(m.from_seq, m.to_seq, m.row.file) for m in pinned_vol.maps]
    images_before = images(pinned_vol, names[1:])
    with pytest.raises(BusyError, match=names[k]):
        pinned_vol.merge(start, names[j])
    assert [(m.from_seq, m.to_seq, m.row.file) for m in pinned_vol.maps] == maps_before
    assert sorted(os.listdir(pinned_vol.map_dir)) == sorted(f for _, _, f in maps_before)
    assert set(pinned_vol.markers) == set(names[1:])
    assert images(pinned_vol, names[1:]) == images_before

    # Without the pin the merge goes through: inner markers vanish, outer ones stay.
    vol = fresh()
    build(vol, intervals)
    before = dict(zip(names[1:], images(vol, names[1:]), strict=True))
    vol.merge(start, names[j])
    assert set(vol.markers) == set(outer)
    for x in inner:
        with pytest.raises(PointError):
            vol.resolve(x)
    for x in outer:
        assert images(vol, [x])[0] == before[x]
    vol.close()
    reopened = Volume.open(vol.directory, options=OPTIONS)
    try:
        assert set(reopened.markers) == set(outer)
        assert sorted(os.listdir(reopened.map_dir)) == sorted(m.row.file for m in reopened.maps)
        for x in outer:
            assert images(reopened, [x])[0] == before[x]
    finally:
        reopened.close()


def test_pinned_marker_made_by_mark_blocks_merge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vol = Volume.create(
        str(tmp_path / "sec"), str(tmp_path / "p.img"), size=NBLOCKS * BS, options=OPTIONS
    )
    try:
        vol.write(0, b"a" * BS)
        vol.mark("first")
        vol.write(1, b"b" * BS)
        vol.mark("keep", pinned=True)
        vol.write(2, b"c" * BS)
        vol.mark("last")
        with pytest.raises(BusyError):
            vol.merge("first", "last")
        with pytest.raises(BusyError):
            vol.fade("last")
        assert set(vol.markers) == {"first", "keep", "last"}
        assert len(vol.maps) == 3
        assert vol.markers["keep"].pinned
    finally:
        vol.close()
    vol = Volume.open(str(tmp_path / "sec"), options=OPTIONS)
    try:
        assert vol.markers["keep"].pinned
    finally:
        vol.close()
