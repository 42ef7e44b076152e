"""Unit tests of a protected volume's public behaviour, and of bad input.

Every bad call must raise a clear, specific exception and change nothing: the
tests take a snapshot of the observable state (seq, contents, markers, maps,
baseline) before the call and compare it afterwards.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileBlockDevice
from volume_manager.errors import (
    AlignmentError,
    BusyError,
    EngineError,
    MarkerExistsError,
    OutOfRangeError,
    PointError,
    ReadOnlyError,
    SecondaryFullError,
    VolumeClosedError,
)
from volume_manager.fileio import OsFiles
from volume_manager.jobs import Cancelled
from volume_manager.points import (
    AtMarker,
    AtSeq,
    AtTime,
    Latest,
    check_marker_name,
    parse_point,
)
from volume_manager.segments import parse_segment_name

BS = 512
NBLOCKS = 64
OPTIONS = VolumeOptions(commit_interval=None, segment_bytes=64 << 10)


def blocks(byte: int | str, n: int = 1) -> bytes:
    if isinstance(byte, str):
        byte = ord(byte)
    return bytes([byte]) * (BS * n)


def make(tmp_path, name: str = "vol", **kw) -> Volume:  # type: ignore[no-untyped-def]
    kw.setdefault("options", OPTIONS)
    return Volume.create(
        str(tmp_path / name), str(tmp_path / f"{name}.img"), size=NBLOCKS * BS, block_size=BS, **kw
    )


@pytest.fixture
def vol(tmp_path):  # type: ignore[no-untyped-def]
    v = make(tmp_path)
    yield v
    v.close()


def state(v: Volume) -> tuple:  # type: ignore[type-arg]
    """Everything a bad call must leave unchanged."""
    return (
        v.seq,
        v.read(0, NBLOCKS),
        {n: (m.seq, m.pinned) for n, m in v.markers.items()},
        [(m.from_seq, m.to_seq, m.granular, m.row.file) for m in v.maps],
        v.baseline_seq,
        sorted(os.listdir(v.map_dir)),
        sorted(os.listdir(v.log_dir)),
        v.catalog.get_int("rewinds"),
    )


def image_at(v: Volume, point: str | int) -> bytes:
    with v.view(point) as view:
        return view.read(0, NBLOCKS)


def history(v: Volume) -> dict[str, object]:
    """A small history: a@1 (m1 at 2), b@3 (m2 at 4), c@5 (m3 at 6), d@7 (open)."""
    out: dict[str, object] = {}
    for i, (lba, ch) in enumerate([(0, "a"), (1, "b"), (2, "c")], start=1):
        v.write(lba, blocks(ch, 2))
        out[f"m{i}"] = v.mark(f"m{i}")
    v.write(4, blocks("d"))
    return out


# ----------------------------------------------------------------- I/O basics
def test_write_read_unmap_and_seq(vol) -> None:  # type: ignore[no-untyped-def]
    assert vol.seq == 0 and vol.baseline_seq == 0
    assert vol.read(0, NBLOCKS) == bytes(BS * NBLOCKS)
    assert vol.write(3, blocks("x", 2)) == 1
    assert vol.write(4, blocks("y")) == 2
    assert vol.read(2, 4) == bytes(BS) + blocks("x") + blocks("y") + bytes(BS)
    assert vol.unmap(3, 1) == 3
    assert vol.read(3, 2) == bytes(BS) + blocks("y")
    # Empty writes and unmaps are no-ops, not records.
    assert vol.write(5, b"") == 3
    assert vol.unmap(5, 0) == 3
    assert vol.seq == 3
    vol.flush()
    assert vol.read(3, 2) == bytes(BS) + blocks("y")
    assert vol.block_size == BS and vol.num_blocks == NBLOCKS and not vol.read_only


def test_memoryview_and_bytearray_writes(vol) -> None:  # type: ignore[no-untyped-def]
    buf = bytearray(blocks("q", 2))
    vol.write(0, memoryview(buf))
    vol.write(2, buf)
    buf[:] = bytes(len(buf))  # the caller reusing its buffer must not change the volume
    assert vol.read(0, 4) == blocks("q", 4)
    with vol.view("now") as v:
        assert v.read(0, 4) == blocks("q", 4)


@pytest.mark.parametrize("length", [1, 100, BS - 1, BS + 1, 3 * BS - 7])
def test_unaligned_write_is_refused(vol, length) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    before = state(vol)
    with pytest.raises(AlignmentError, match="multiple"):
        vol.write(0, b"z" * length)
    assert state(vol) == before


@pytest.mark.parametrize(
    ("lba", "count"),
    [(-1, 1), (NBLOCKS, 1), (NBLOCKS - 1, 2), (0, NBLOCKS + 1), (-5, 10), (1 << 40, 1)],
)
def test_out_of_range_io_is_refused(vol, lba, count) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    before = state(vol)
    with pytest.raises(OutOfRangeError):
        vol.read(lba, count)
    with pytest.raises(OutOfRangeError):
        vol.write(lba, blocks("z", count) if count > 0 else b"")
    with pytest.raises(OutOfRangeError):
        vol.unmap(lba, count)
    with vol.view("now") as v, pytest.raises(OutOfRangeError):
        v.read(lba, count)
    assert state(vol) == before


def test_negative_count_is_refused(vol) -> None:  # type: ignore[no-untyped-def]
    before = state(vol)
    with pytest.raises(OutOfRangeError):
        vol.read(0, -1)
    with pytest.raises(OutOfRangeError):
        vol.unmap(4, -2)
    assert state(vol) == before


def test_io_on_a_closed_volume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path)
    v.write(0, blocks("a"))
    view = v.view("now")
    v.close()
    v.close()  # idempotent
    for call in (
        lambda: v.read(0, 1),
        lambda: v.write(0, blocks("b")),
        lambda: v.unmap(0, 1),
        v.flush,
        lambda: view.read(0, 1),
        lambda: v.mark("late"),
        lambda: v.view("now"),
        lambda: v.resolve("seq:0"),
        lambda: v.rewind("seq:0"),
        lambda: v.merge("seq:0", "now"),
        lambda: v.fade("now"),
    ):
        with pytest.raises(VolumeClosedError):
            call()


# ------------------------------------------------------------------- views
def test_view_is_read_only(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    m = vol.mark("m")
    before = state(vol)
    with vol.view("m") as v:
        assert v.read_only
        assert v.seq == m.seq
        with pytest.raises(ReadOnlyError):
            v.write(0, blocks("z"))
        with pytest.raises(ReadOnlyError):
            v.unmap(0, 1)
        with pytest.raises(ReadOnlyError):
            v.write(0, b"z")  # even a malformed write is refused as read-only
        v.flush()  # harmless
        assert v.read(0, 1) == blocks("a")
    assert state(vol) == before


def test_view_does_not_change_after_more_writes(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a", 4))
    vol.mark("m1")
    vol.write(2, blocks("b", 4))
    views = {p: vol.view(p) for p in ("m1", "seq:1", "seq:3", "now")}
    want = {p: views[p].read(0, NBLOCKS) for p in views}
    assert want["m1"] == want["seq:1"] == blocks("a", 4) + bytes(BS * (NBLOCKS - 4))
    # more writes, unmaps, a marker, a flush, a rewind: views stay as they were
    vol.write(0, blocks("c", 8))
    vol.unmap(1, 2)
    vol.mark("m2")
    vol.flush()
    vol.write(7, blocks("d"))
    vol.rewind("m1")
    for p, v in views.items():
        assert v.read(0, NBLOCKS) == want[p], p
        v.close()
    assert vol.read(0, NBLOCKS) == want["m1"]


def test_view_of_each_point(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    expect = {
        0: bytes(BS * NBLOCKS),
        1: blocks("a", 2),
        3: blocks("a") + blocks("b", 2),
        5: blocks("a") + blocks("b") + blocks("c", 2),
        7: blocks("a") + blocks("b") + blocks("c", 2) + blocks("d"),
    }
    for s, head in expect.items():
        img = head + bytes(BS * NBLOCKS - len(head))
        assert image_at(vol, f"seq:{s}") == img
    assert image_at(vol, "m1") == image_at(vol, "seq:1")  # the MARK record changes nothing
    assert image_at(vol, "now") == vol.read(0, NBLOCKS)


# ----------------------------------------------------------------- markers
@pytest.mark.parametrize(
    "name",
    [
        "seq:3",
        "seq_3",
        "2026-01-01",
        "20260101",
        "2026-01-01T10",
        "now",
        "-5m",
        "",
        " ",
        "has space",
        "tab\there",
        ".hidden",
        "-dash",
        "12345",
        "a" * 129,
        "a/b",
        "naïve",
        "new\nline",
    ],
)
def test_invalid_marker_names_are_refused(vol, name) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    before = state(vol)
    with pytest.raises(PointError):
        check_marker_name(name)
    with pytest.raises(PointError):
        vol.mark(name)
    assert state(vol) == before


@pytest.mark.parametrize(
    "name",
    ["a", "before-upgrade", "v1.2.3", "_x", "A" * 128, "1h", "seq", "nowhere", "2026-01-01x"],
)
def test_valid_marker_names(vol, name) -> None:  # type: ignore[no-untyped-def]
    check_marker_name(name)
    row = vol.mark(name)
    assert vol.resolve(name) == row.seq
    assert parse_point(name) == AtMarker(name)


def test_duplicate_marker_is_refused(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    vol.mark("once")
    vol.write(1, blocks("b"))
    before = state(vol)
    with pytest.raises(MarkerExistsError, match="once"):
        vol.mark("once")
    assert state(vol) == before
    vol.close()
    reopened = Volume.open(vol.directory, options=OPTIONS)
    try:
        with pytest.raises(MarkerExistsError):
            reopened.mark("once", pinned=True)
        assert reopened.markers["once"].seq == 2
        assert not reopened.markers["once"].pinned
    finally:
        reopened.close()


def test_mark_returns_the_row(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    t0 = time.time_ns()
    row = vol.mark("named", pinned=True)
    assert (row.name, row.seq, row.pinned) == ("named", 2, True)
    assert t0 <= row.ts_ns <= time.time_ns()
    anon = vol.mark()
    assert anon.seq == 3 and not anon.pinned
    check_marker_name(anon.name)
    assert vol.markers == {"named": row, anon.name: anon}
    assert [(m.from_seq, m.to_seq, m.granular) for m in vol.maps] == [(0, 2, True), (2, 3, True)]


def test_unknown_marker(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    before = state(vol)
    for call in (
        lambda: vol.resolve("nope"),
        lambda: vol.view("nope"),
        lambda: vol.rewind("nope"),
        lambda: vol.merge("nope", "m3"),
        lambda: vol.fade("nope"),
    ):
        with pytest.raises(PointError, match="nope"):
            call()
    assert state(vol) == before


# ------------------------------------------------------------------ points
def test_points_in_the_future_are_refused(vol, tmp_path) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    (tmp_path / "t.img").write_bytes(bytes(BS * NBLOCKS))
    target = FileBlockDevice(tmp_path / "t.img", block_size=BS)
    before = state(vol)
    future = f"seq:{vol.seq + 5}"
    for call in (
        lambda: vol.resolve(future),
        lambda: vol.view(future),
        lambda: vol.rewind(future),
        lambda: vol.resolve(vol.seq + 1),
        lambda: vol.clone(future, str(tmp_path / "c.img")),
        lambda: vol.playback("seq:0", future, 0, 1, target),
    ):
        with pytest.raises(PointError, match="future"):
            call()
    target.close()
    assert not (tmp_path / "c.img").exists()
    assert (tmp_path / "t.img").read_bytes() == bytes(BS * NBLOCKS)
    assert vol.resolve(f"seq:{vol.seq}") == vol.seq == vol.resolve("now")
    assert state(vol) == before


def test_points_before_retained_history_after_fade(vol) -> None:  # type: ignore[no-untyped-def]
    rows = history(vol)
    m2 = rows["m2"].seq  # type: ignore[attr-defined]
    keep = image_at(vol, "m3")
    vol.fade("m2")
    assert vol.baseline_seq == m2
    assert set(vol.markers) == {"m2", "m3"}
    before = state(vol)
    for point in ("seq:0", "seq:1", f"seq:{m2 - 1}"):
        with pytest.raises(PointError, match="older than retained"):
            vol.view(point)
        with pytest.raises(PointError):
            vol.rewind(point)
    with pytest.raises(PointError, match="m1"):
        vol.resolve("m1")
    assert state(vol) == before
    assert image_at(vol, "m3") == keep
    assert image_at(vol, f"seq:{m2}") == image_at(vol, "m2")


def _iso(ts_ns: int, *, local: bool = False) -> str:
    """An ISO-8601 string of a time in ns, rounded up to whole microseconds."""
    us = -(-ts_ns // 1000)
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    if local:
        return dt.astimezone().replace(tzinfo=None).isoformat()
    return dt.isoformat()


def test_timestamp_points(vol) -> None:  # type: ignore[no-untyped-def]
    """A time resolves to the last write at or before it: from the open interval,
    a granular map walked in the log, and the end of a merged map."""
    times: dict[int, int] = {}  # seq -> a time between it and the next record
    for i in range(6):
        vol.write(i, blocks(65 + i))
        time.sleep(0.002)
        times[vol.seq] = time.time_ns()
        time.sleep(0.002)
        if i in (1, 3):
            row = vol.mark(f"t{i}")
            time.sleep(0.002)
            times[row.seq] = row.ts_ns

    def check() -> None:
        for s, t in times.items():
            assert vol.resolve(_iso(t)) == s, (s, _iso(t))
            assert vol.resolve(_iso(t, local=True)) == s  # naive ISO is local time
        for name in ("t1", "t3"):
            mk = vol.markers[name]
            assert vol.resolve(_iso(mk.ts_ns)) == mk.seq
            assert vol.resolve(AtTime(mk.ts_ns)) == mk.seq
            assert vol.resolve(AtTime(mk.ts_ns - 1)) == mk.seq - 1

    check()  # t1, t3 closed granular maps; seqs after t3 are in the open interval
    assert image_at(vol, _iso(times[2])) == image_at(vol, "seq:2")
    vol.close()
    v2 = Volume.open(vol.directory, options=OPTIONS)
    try:
        vol = v2
        check()  # the same after reopening: times come from the log, not memory
        # Before creation: refused. Now (or later): the newest write.
        with pytest.raises(PointError):
            v2.resolve("-1h")
        with pytest.raises(PointError):
            v2.resolve("2000-01-01T00:00:00+00:00")
        assert v2.resolve(_iso(time.time_ns() + 10**9)) == v2.seq
        assert v2.resolve("-0s") == v2.seq
    finally:
        v2.close()


def test_timestamp_inside_a_merged_map(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    a = vol.mark("a")
    time.sleep(0.002)
    vol.write(0, blocks("b"))
    time.sleep(0.002)
    middle = time.time_ns()
    time.sleep(0.002)
    vol.mark("b")
    vol.write(0, blocks("c"))
    c = vol.mark("c")
    vol.merge("a", "c")
    # The write just before ``middle`` lies inside the merged range: the newest
    # recoverable point at or before that time is the merged range's start.
    assert vol.resolve(_iso(middle)) == a.seq
    assert vol.resolve(AtTime(c.ts_ns)) == c.seq


def test_relative_point_before_creation(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    before = state(vol)
    for point in ("-1h", "-1d", "-2h30m", "-1w"):
        with pytest.raises(PointError, match="older than retained"):
            vol.resolve(point)
        with pytest.raises(PointError):
            vol.view(point)
    assert state(vol) == before


# -------------------------------------------------------- merge and fade-out
def test_merge_needs_two_maps(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    before = state(vol)
    for a, b in (("m1", "m2"), ("m2", "m1"), ("m2", "m2"), ("seq:0", "m1"), ("m3", "m3")):
        with pytest.raises(EngineError, match="nothing to merge"):
            vol.merge(a, b)
    assert state(vol) == before


def test_merge_and_fade_need_boundaries(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    before = state(vol)
    for bad in ("seq:1", "seq:3", "seq:5", "now", "seq:7"):
        with pytest.raises(PointError, match="not a marker or map boundary"):
            vol.merge("seq:0", bad)
        with pytest.raises(PointError, match="not a marker or map boundary"):
            vol.merge(bad, "m3")
        with pytest.raises(PointError, match="not a marker or map boundary"):
            vol.fade(bad)
    assert state(vol) == before
    vol.merge("seq:0", "m2")  # the baseline and markers are boundaries
    assert set(vol.markers) == {"m2", "m3"}
    with pytest.raises(PointError, match="merged"):
        vol.view("seq:1")
    with pytest.raises(PointError):
        vol.fade("seq:2")  # m1's seq is no longer a point at all


def test_merge_refused_by_open_view_inside(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    with vol.view("m2") as v:
        before = state(vol)
        with pytest.raises(BusyError):
            vol.merge("m1", "m3")
        assert state(vol) == before
        vol.merge("seq:0", "m2")  # the view sits at the end of this range: allowed
        assert v.read(0, NBLOCKS) == image_at(vol, "m2")
    vol.merge("seq:0", "m3")


def test_fade_refused_by_open_view_older_than_the_point(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    with vol.view("m1") as v:
        img = v.read(0, NBLOCKS)
        before = state(vol)
        with pytest.raises(BusyError):
            vol.fade("m2")
        assert state(vol) == before
        assert v.read(0, NBLOCKS) == img
        vol.fade("m1")  # not older than m1 itself
        assert vol.baseline_seq == vol.markers["m1"].seq
        assert v.read(0, NBLOCKS) == img
    vol.fade("m2")


def test_open_view_at_or_after_the_fade_point_survives_the_fade(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A fade-out deletes old log segments; an open later view must still read
    the blocks whose newest write lies in them (through the new baseline)."""
    v = make(tmp_path, options=VolumeOptions(commit_interval=None, segment_bytes=4096))
    try:
        v.write(40, blocks("k", 4))  # written once, early: in segment 1
        for i in range(12):
            v.write(0, blocks(100 + i, 6))  # fill several segments
        v.mark("p")
        v.write(8, blocks("z", 2))
        v.mark("q")
        views = {p: v.view(p) for p in ("p", "q", "now")}
        want = {p: x.read(0, NBLOCKS) for p, x in views.items()}
        res = v.fade("p")
        assert res.segments_removed >= 2
        assert not os.path.exists(os.path.join(v.log_dir, "0000000000000001.seg"))
        for p, x in views.items():
            assert x.read(0, NBLOCKS) == want[p], p
            x.close()
        assert image_at(v, "q") == want["q"]
    finally:
        v.close()


def test_fade_result_and_space(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path, options=VolumeOptions(commit_interval=None, segment_bytes=4096))
    try:
        for i in range(10):
            v.write(i, blocks(1 + i, 4))
        v.mark("a")
        v.write(0, blocks("z"))
        v.mark("b")
        segs = len(os.listdir(v.log_dir))
        res = v.fade("a")
        assert res.baseline_seq == v.markers["a"].seq == v.baseline_seq
        assert res.maps_removed == 1
        assert res.segments_removed == segs - len(os.listdir(v.log_dir)) > 0
        assert res.bytes_freed > res.segments_removed * 4096 // 2
        assert res.baseline_bytes_written == 13 * BS  # blocks 0..12 were written
        assert v.fade("a").maps_removed == 0  # fading to the baseline again: no-op
    finally:
        v.close()


# -------------------------------------------------------------- clone, create
def test_clone_onto_an_existing_path_is_refused(vol, tmp_path) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    dest = tmp_path / "exists.img"
    dest.write_bytes(b"keep me")
    before = state(vol)
    with pytest.raises(EngineError, match="already exists"):
        vol.clone("m2", str(dest))
    assert dest.read_bytes() == b"keep me"
    assert state(vol) == before
    fresh = tmp_path / "fresh.img"
    assert vol.clone("m2", str(fresh)) == vol.markers["m2"].seq
    assert fresh.read_bytes() == image_at(vol, "m2")


def test_cancelled_clone_leaves_nothing(vol, tmp_path) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    cancel = threading.Event()
    cancel.set()
    seen: list[tuple[int, int]] = []
    before = state(vol)
    with pytest.raises(Cancelled):
        vol.clone(
            "m3",
            str(tmp_path / "c.img"),
            cancel=cancel,
            progress=lambda done, total: seen.append((done, total)),
        )
    assert seen and seen[0][1] == 4  # blocks 0..3 differ from the baseline at m3
    assert not [n for n in os.listdir(tmp_path) if n.startswith("c.img")]
    assert state(vol) == before


def test_create_over_an_existing_volume_is_refused(vol, tmp_path) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, blocks("a"))
    vol.flush()
    before = state(vol)
    with pytest.raises(EngineError, match="already holds"):
        Volume.create(vol.directory, str(tmp_path / "other.img"), size=NBLOCKS * BS)
    assert not (tmp_path / "other.img").exists()
    with pytest.raises(EngineError, match="already holds"):
        Volume.create(vol.directory, vol.primary_path)
    assert state(vol) == before


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"size": None}, "no size"),
        ({"size": 1000}, "multiple"),
        ({"size": 0}, "multiple"),
        ({"size": 4096, "block_size": 1000}, "power of two"),
        ({"size": 4096, "block_size": 256}, "power of two"),
    ],
)
def test_create_with_bad_geometry(tmp_path, kw, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError, match=match):
        Volume.create(str(tmp_path / "v"), str(tmp_path / "p.img"), **kw)
    assert not (tmp_path / "p.img").exists()


def test_open_without_a_volume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no protected volume"):
        Volume.open(str(tmp_path / "empty"))
    with pytest.raises(EngineError, match="no protected volume"):
        Volume.open(str(tmp_path / "missing"))
    assert os.listdir(tmp_path / "empty") == []


def test_create_over_existing_primary_keeps_its_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    primary = tmp_path / "p.img"
    primary.write_bytes(blocks("p", 8) + bytes(BS * 8))
    v = Volume.create(str(tmp_path / "v"), str(primary), options=OPTIONS)
    try:
        assert v.num_blocks == 16
        assert v.read(0, 16) == blocks("p", 8) + bytes(BS * 8)
        v.write(0, blocks("n"))
        with v.view("seq:0") as view:
            assert view.read(0, 16) == blocks("p", 8) + bytes(BS * 8)
    finally:
        v.close()


# -------------------------------------------------------------- durability
def test_flush_then_crash_keeps_the_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path)
    v.write(0, blocks("a", 3))
    v.mark("m")
    v.write(1, blocks("b"))
    v.flush()
    img = v.read(0, NBLOCKS)
    v.abandon()
    v = Volume.open(str(tmp_path / "vol"), options=OPTIONS)
    try:
        assert v.seq == 3
        assert v.read(0, NBLOCKS) == img
        assert v.markers["m"].seq == 2
        # the primary file itself holds the data (redo is complete)
        with open(str(tmp_path / "vol.img"), "rb") as f:
            assert f.read() == img
    finally:
        v.close()


def test_write_cache_off_makes_each_write_durable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cached = make(tmp_path, "c")
    direct = make(tmp_path, "d", options=VolumeOptions(commit_interval=None, write_cache=False))
    try:
        for v in (cached, direct):
            v.write(2, blocks("w"))
        # With the cache on (and no background commit) the primary is untouched
        # until a flush; with it off each write reached the primary already.
        with open(str(tmp_path / "c.img"), "rb") as f:
            assert f.read()[2 * BS : 3 * BS] == bytes(BS)
        with open(str(tmp_path / "d.img"), "rb") as f:
            assert f.read()[2 * BS : 3 * BS] == blocks("w")
        assert direct._durable_seq == direct.seq  # the log record is synced too
        cached.write(3, blocks("f"), fua=True)  # FUA: this write and those before it
        with open(str(tmp_path / "c.img"), "rb") as f:
            assert f.read()[2 * BS : 4 * BS] == blocks("w") + blocks("f")
    finally:
        cached.close()
        direct.close()


def test_recovery_report_empty_after_clean_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path, options=VolumeOptions(commit_interval=None, segment_bytes=4096))
    for i in range(20):
        v.write(i % 7, blocks(i + 1, 3))
        if i % 6 == 5:
            v.mark()
    v.merge("seq:0", v.maps[1].to_seq)
    v.fade(v.maps[0].to_seq)
    img = v.read(0, NBLOCKS)
    seq = v.seq
    v.close()
    assert v.recovery_report == []
    v = Volume.open(str(tmp_path / "vol"), options=OPTIONS)
    try:
        assert v.recovery_report == []
        assert (v.seq, v.read(0, NBLOCKS)) == (seq, img)
    finally:
        v.close()


def test_a_full_write_buffer_lets_go_of_written_out_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Small segments, the smallest buffer (two slabs), no commits: a burst of
    # unapplied writes spills to the log file, and reads and the apply at the
    # flush take those records from there.
    opts = VolumeOptions(commit_interval=None, segment_bytes=4096, buffer_bytes=0)
    v = make(tmp_path, options=opts)
    want = bytearray(NBLOCKS * BS)
    for i in range(60):
        lba, n = (i * 5) % (NBLOCKS - 3), 1 + i % 3
        data = bytes([i + 1]) * (n * BS)
        v.write(lba, data)
        want[lba * BS : (lba + n) * BS] = data
        assert len(v._slabs) <= 3  # two slabs and the one being filled
    assert v._spilled_seq > 0 and v._durable_seq == 0
    with open(str(tmp_path / "vol.img"), "rb") as f:
        assert f.read() == bytes(NBLOCKS * BS)  # nothing applied yet
    assert v.read(0, NBLOCKS) == bytes(want)
    v.flush()
    with open(str(tmp_path / "vol.img"), "rb") as f:
        assert f.read() == bytes(want)
    v.write(0, blocks("z"))
    want[:BS] = blocks("z")
    v.flush()
    v.abandon()
    v = Volume.open(str(tmp_path / "vol"), options=opts)
    try:
        assert v.read(0, NBLOCKS) == bytes(want)
    finally:
        v.close()


def _segment_files(v: Volume) -> dict[int, int]:
    """Segment id -> file size, of the files in the log directory."""
    out = {}
    for name in os.listdir(v.log_dir):
        sid = parse_segment_name(name)
        if sid is not None:
            out[sid] = os.path.getsize(os.path.join(v.log_dir, name))
    return out


def _wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class _NoNewFiles(OsFiles):
    """Mock of a fault not produced for real here: creating a file fails with ENOSPC
    (a file system out of inodes) while ``full`` is set."""

    full = False

    def open(self, path: str, *, create: bool = False, **kw) -> int:  # type: ignore[no-untyped-def,override]
        if create and self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().open(path, create=create, **kw)


def test_a_roll_that_cannot_create_its_segment_fails_the_write_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = _NoNewFiles()
    v = make(tmp_path, options=VolumeOptions(commit_interval=None, segment_bytes=4096),
             files=files)  # fmt: skip
    try:
        v.write(0, blocks("a", 4))
        files.full = True
        before = (v.seq, v.read(0, NBLOCKS), sorted(_segment_files(v)))
        with pytest.raises(SecondaryFullError):
            for i in range(8):  # the segment fills up: the next write must roll
                v.write(4 + i, blocks("b"))
        # The writes before the roll went in; the one that needed it changed nothing.
        seq = v.seq
        assert seq > before[0] and sorted(_segment_files(v)) == before[2]
        files.full = False
        v.write(20, blocks("c"))
        assert v.seq == seq + 1 and v.read(20, 1) == blocks("c")
        v.flush()
    finally:
        v.close()


def test_segments_are_prepared_ahead_and_used_by_the_rolls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = VolumeOptions(commit_interval=0.05, segment_bytes=16 << 10)
    v = make(tmp_path, options=opts)
    want = bytearray(NBLOCKS * BS)

    def write_some(first: int, n: int) -> None:
        for i in range(first, first + n):
            lba = i % (NBLOCKS - 4)
            data = bytes([i % 255 + 1]) * (4 * BS)
            v.write(lba, data)
            want[lba * BS : (lba + 4) * BS] = data

    try:
        # Nothing is prepared before the first roll: an idle volume reserves nothing.
        time.sleep(0.2)
        assert sorted(_segment_files(v)) == [v._active.id]
        write_some(0, 10)
        for round_ in range(4):
            # Two empty files after the active segment, made by the preparer.
            _wait_for(lambda: len(_segment_files(v)) >= v._active.id + 2, "prepared segments")
            files = _segment_files(v)
            active = v._active.id
            assert sorted(files) == list(range(min(files), active + 3))
            assert files[active + 1] == files[active + 2] == 0
            write_some(10 + round_ * 20, 20)  # over two segments: rolls into both
            assert v._active.id >= active + 2
            assert v.read(0, NBLOCKS) == bytes(want)
        v.flush()
    finally:
        v.close()
    # A clean close leaves no empty segment behind, and nothing to recover.
    assert all(size > 0 for size in _segment_files(v).values())
    v = Volume.open(str(tmp_path / "vol"), options=opts)
    try:
        assert v.recovery_report == []
        assert v.read(0, NBLOCKS) == bytes(want)
        write_some(100, 10)
        _wait_for(lambda: len(_segment_files(v)) >= v._active.id + 2, "prepared segments")
        v.flush()
        v.abandon()  # a crash leaves the prepared files: the end of the log
    except BaseException:
        v.close()
        raise
    v = Volume.open(str(tmp_path / "vol"), options=OPTIONS)
    try:
        assert v.recovery_report == []
        assert v.read(0, NBLOCKS) == bytes(want)
        assert all(size > 0 for size in _segment_files(v).values())
    finally:
        v.close()


def test_background_commit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path, options=VolumeOptions(commit_interval=0.05))
    try:
        v.write(0, blocks("b"))
        deadline = time.monotonic() + 10
        while v._durable_seq < v.seq and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(str(tmp_path / "vol.img"), "rb") as f:
            assert f.read(BS) == blocks("b")
    finally:
        v.close()


# ------------------------------------------------------ rewind and playback
def test_rewind_and_undo(vol) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    at_m1 = image_at(vol, "m1")
    now = vol.read(0, NBLOCKS)
    res = vol.rewind("m1")
    assert (res.point_seq, res.before_marker, res.after_marker) == (
        vol.resolve("m1"),
        "before-rewind-1",
        "after-rewind-1",
    )
    assert res.blocks_rewritten == 4  # blocks 1, 2, 3 and 4 changed after m1
    assert vol.read(0, NBLOCKS) == at_m1
    assert image_at(vol, "before-rewind-1") == now
    undo = vol.rewind("before-rewind-1")
    assert undo.before_marker == "before-rewind-2"
    assert vol.read(0, NBLOCKS) == now
    assert vol.rewind("now").blocks_rewritten == 0


def test_rewind_when_a_user_marker_has_its_name(vol) -> None:  # type: ignore[no-untyped-def]
    """A user may name markers like the rewind's own; a rewind then picks
    free names instead of failing (possibly half-way, after rewriting blocks)."""
    vol.write(0, blocks("a"))
    vol.mark("start")
    vol.write(0, blocks("b"))
    vol.mark("before-rewind-1")
    vol.write(0, blocks("c"))
    vol.mark("after-rewind-2")
    res = vol.rewind("start")
    assert vol.read(0, 1) == blocks("a")
    assert (res.before_marker, res.after_marker) == ("before-rewind-3", "after-rewind-3")
    assert image_at(vol, res.before_marker)[:BS] == blocks("c")
    assert image_at(vol, res.after_marker)[:BS] == blocks("a")
    assert vol.markers["before-rewind-1"].seq == 4


def test_playback_bad_input(vol, tmp_path) -> None:  # type: ignore[no-untyped-def]
    history(vol)
    path = tmp_path / "target.img"
    path.write_bytes(b"\x01" * (BS * 16))
    small = FileBlockDevice(path, block_size=BS)
    other_bs = FileBlockDevice(path, block_size=4096)
    try:
        before = state(vol)
        with pytest.raises(OutOfRangeError):
            vol.playback("m1", "m3", 60, 8, small)  # past the volume's end
        with pytest.raises(OutOfRangeError):
            vol.playback("m1", "m3", 10, 8, small)  # past the target's end
        with pytest.raises(EngineError, match="block sizes differ"):
            vol.playback("m1", "m3", 0, 1, other_bs)
        with pytest.raises(PointError, match="backwards"):
            vol.playback("m3", "m1", 0, 8, small)
        assert path.read_bytes() == b"\x01" * (BS * 16)
        assert state(vol) == before
        n = vol.playback("m1", "now", 0, 16, small)
        assert n == 4  # blocks 1..4 changed after m1
        got = path.read_bytes()
        want = blocks(1) + image_at(vol, "now")[BS : 5 * BS] + blocks(1, 11)
        assert got == want
    finally:
        small.close()
        other_bs.close()


# -------------------------------------------------------------- parse_point
NOW = 1_700_000_000_000_000_000


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("now", Latest()),
        (" now ", Latest()),
        ("seq:0", AtSeq(0)),
        ("seq:42", AtSeq(42)),
        ("seq:007", AtSeq(7)),
        ("-90s", AtTime(NOW - 90 * 10**9)),
        ("-15m", AtTime(NOW - 15 * 60 * 10**9)),
        ("-2h30m", AtTime(NOW - 9000 * 10**9)),
        ("-1d", AtTime(NOW - 86400 * 10**9)),
        ("-1w", AtTime(NOW - 7 * 86400 * 10**9)),
        ("-0s", AtTime(NOW)),
        ("2023-11-14T22:13:20+00:00", AtTime(NOW)),
        ("2023-11-14T22:13:20Z", AtTime(NOW)),
        ("2023-11-14T23:13:20.250000+01:00", AtTime(NOW + 250_000_000)),
        ("2023-11-14 22:13:20.000001+00:00", AtTime(NOW + 1000)),
        ("before-upgrade", AtMarker("before-upgrade")),
        ("m17", AtMarker("m17")),
        ("v1.2", AtMarker("v1.2")),
        ("_x", AtMarker("_x")),
    ],
)
def test_parse_point(text, want) -> None:  # type: ignore[no-untyped-def]
    assert parse_point(text, now_ns=NOW) == want


def test_parse_point_naive_time_is_local() -> None:
    want = int(datetime(2026, 1, 1, 12, 30).astimezone().timestamp()) * 10**9
    assert parse_point("2026-01-01T12:30:00") == AtTime(want)
    day = int(datetime(2026, 1, 1).astimezone().timestamp()) * 10**9
    assert parse_point("2026-01-01") == AtTime(day)


def test_parse_point_relative_uses_the_clock() -> None:
    t0 = time.time_ns()
    p = parse_point("-1m")
    assert isinstance(p, AtTime)
    assert t0 - 60 * 10**9 <= p.ts_ns <= time.time_ns() - 60 * 10**9


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "seq:",
        "seq:-1",
        "seq:x",
        "seq:1.5",
        "-",
        "-5",
        "-5x",
        "-m5",
        "-1h-2m",
        "--1h",
        "a b",
        "bad name!",
        ".x",
        "a/b",
        "x" * 129,
    ],
)
def test_parse_point_rejects(text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PointError):
        parse_point(text, now_ns=NOW)


def test_every_valid_marker_name_parses_as_that_marker() -> None:
    for name in ("a", "alpha-1", "x.y_z", "Z" * 128, "seq", "sequel", "nowhere", "m5"):
        check_marker_name(name)
        assert parse_point(name) == AtMarker(name)


# ------------------------------------------------------- retention bookkeeping
def test_map_classes_pins_and_merge_labels_persist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make(tmp_path)
    try:
        for i in range(4):
            v.write(i, bytes([i + 1]) * BS)
            v.mark(f"m{i}")
        assert v.set_map_class(0, v.maps[1].to_seq, "hourly") == 2
        assert v.set_map_class(0, v.maps[1].to_seq, "hourly") == 0  # already labelled
        v.set_pinned("m2", True)
        with pytest.raises(BusyError, match="m2"):
            v.merge("m1", "m3")
        v.set_pinned("m2", False)
        row = v.merge("m1", "m3", klass="daily")
        assert row.klass == "daily"
        with pytest.raises(PointError):
            v.set_pinned("nope", True)
        v.set_pinned("m0", True)
    finally:
        v.close()
    v = Volume.open(str(tmp_path / "vol"), options=OPTIONS)
    try:
        assert [m.row.klass for m in v.maps] == ["hourly", "hourly", "daily"]
        assert v.markers["m0"].pinned and "m2" not in v.markers
    finally:
        v.close()


def test_refused_writes_fail_cleanly_and_rewind_still_works(vol) -> None:  # type: ignore[no-untyped-def]
    vol.write(0, b"\1" * BS)
    vol.mark("a")
    vol.write(0, b"\2" * BS)
    vol.refuse_writes("budget reached: 95% of 1 GiB")
    seq = vol.seq
    with pytest.raises(SecondaryFullError, match="budget reached"):
        vol.write(0, b"\3" * BS)
    assert vol.seq == seq and vol.read(0, 1) == b"\2" * BS
    vol.rewind("a")  # the switch's own jobs still write
    assert vol.read(0, 1) == b"\1" * BS
    vol.refuse_writes(None)
    vol.write(0, b"\4" * BS)
    assert vol.read(0, 1) == b"\4" * BS
    sizes = vol.segment_sizes()
    assert sizes and sizes[-1][2] > 0 and sizes[0][1] <= 1


def test_view_reads_across_baseline_holes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A thin primary's baseline keeps its holes; a view answers reads of hole blocks
    without reading them, and must still read the data around them and the log on top,
    before and after a fade-out fills some of the holes."""
    k = 1 << 10
    primary = tmp_path / "p.img"
    with open(primary, "wb") as f:
        f.truncate(1 << 20)
        for off in (0, 64 * k, 900 * k):  # data islands, holes between them
            f.seek(off)
            f.write(os.urandom(8 * k))
    vol = Volume.create(str(tmp_path / "sec"), str(primary),
                        options=VolumeOptions(commit_interval=None))
    try:
        image = bytearray(primary.read_bytes())
        for lba, n in ((10, 4), (120, 16), (1000, 8)):  # on an island, at an edge, in a hole
            data = os.urandom(n * 512)
            vol.write(lba, data)
            image[lba * 512:(lba + n) * 512] = data
        vol.mark("a")
        want_a = bytes(image)
        vol.write(1500, bytes([7]) * 4096)  # inside a hole: "b"
        vol.mark("b")
        image[1500 * 512:1500 * 512 + 4096] = bytes([7]) * 4096
        with vol.view("a") as va, vol.view("b") as vb:
            for v, want in ((va, want_a), (vb, bytes(image))):
                for lba, n in [(b, 1) for b in range(0, 2048, 7)] + \
                        [(0, 2048), (8, 200), (100, 40), (1790, 30), (1495, 12)]:
                    assert v.read(lba, n) == want[lba * 512:(lba + n) * 512], (lba, n)
            vol.fade("a")  # a's writes move into the baseline, filling holes
            for lba, n in [(b, 1) for b in range(0, 2048, 3)] + [(0, 2048), (990, 30)]:
                assert vb.read(lba, n) == bytes(image)[lba * 512:(lba + n) * 512], (lba, n)
    finally:
        vol.close()
