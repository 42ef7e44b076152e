"""policies.decide on hand-made timelines: triggers, merges by class, markers kept as
boundaries, the budget's actions, incremental ticks and coverage levels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import pytest
from timeline_sim import SimVolume

from policies.decide import (
    AllowWrites,
    Cause,
    CreateMarker,
    FadeBefore,
    Level,
    MapLike,
    MapSpan,
    Marker,
    Merge,
    RefuseWrites,
    RetentionPass,
    Segment,
    SetClass,
    Timeline,
    coverage,
    decide,
    is_auto_marker,
    timeline_view,
)
from policies.schema import DEFAULT_POLICY, NS, Policy

MIN = 60 * NS
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = 1_800_000_000 * NS // DAY * DAY + 12 * HOUR  # noon UTC


def policy(**extra: Any) -> Policy:
    data: dict[str, Any] = {"classes": [
        {"name": "recent", "granularity": "every write", "for": "10m"},
        {"name": "q", "granularity": "5m", "for": "1h"},
    ]}
    data.update(extra)
    return Policy.model_validate(data)


def timeline(maps: Sequence[MapLike], *, markers: dict[int, Marker] | None = None,
             newest: int | None = None, **kw: Any) -> Timeline:
    base = maps[0].from_seq if maps else 0
    return Timeline(baseline_seq=base, baseline_ts_ns=kw.pop("baseline_ts", NOW - 3 * HOUR),
                    created_ns=kw.pop("created", NOW - 3 * HOUR),
                    newest_seq=newest if newest is not None else (maps[-1].to_seq if maps
                                                                  else base),
                    maps=maps, markers=markers or {}, last_retention_ns=kw.pop("last", 0),
                    **kw)


def spans(times: list[int], klass: str = "", start: int = 0, step: int = 10,
          nbytes: int = 100) -> list[MapSpan]:
    """Maps of ``step`` records each, ending at the given times."""
    out = []
    seq = start
    for ts in times:
        out.append(MapSpan(seq, seq + step, ts, klass, True, 1, nbytes))
        seq += step
    return out


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- snapshot triggers ------------------------------------------------------------------


def test_a_marker_every_n_writes_or_every_t_and_never_an_empty_one() -> None:
    p = policy(snapshots={"every_writes": 100, "every": "5m"})
    maps = spans([NOW - 20 * MIN])
    tl = timeline(maps, newest=10)  # nothing written since the last marker
    assert not any(isinstance(a, CreateMarker) for a in decide(tl, p, NOW))
    tl = timeline(maps, newest=11)  # one write, 20 minutes after the last marker
    (mk,) = [a for a in decide(tl, p, NOW) if isinstance(a, CreateMarker)]
    assert mk.name == "auto-12" and is_auto_marker(mk.name)
    assert mk.cause is Cause.SNAPSHOT
    assert mk.reason == "20m since the last marker (every 5m)"
    tl = timeline(spans([NOW - MIN]), newest=10 + 100)
    (mk,) = [a for a in decide(tl, p, NOW) if isinstance(a, CreateMarker)]
    assert mk.reason == "100 writes since the last marker (every 100 writes)"
    tl = timeline(spans([NOW - MIN]), newest=10 + 99)
    assert not any(isinstance(a, CreateMarker) for a in decide(tl, p, NOW))


# --- retention triggers -----------------------------------------------------------------


@pytest.mark.parametrize(("merge", "last", "last_seq", "due"), [
    ({}, None, 0, "first pass"),
    ({}, NOW, 0, "every tick"),
    ({"after": "10m"}, NOW - 9 * MIN, 0, None),
    ({"after": "10m"}, NOW - 10 * MIN, 0, "10m since the last pass"),
    ({"after_writes": 50}, NOW, 60, None),
    ({"after_writes": 50}, NOW, 10, "50 writes since the last pass"),
    ({"schedule": ["11:30"]}, NOW - 31 * MIN, 0, "scheduled at 11:30 UTC"),
    ({"schedule": ["11:30"]}, NOW - 29 * MIN, 0, None),
    ({"schedule": ["13:00"]}, NOW - 24 * HOUR, 0, "scheduled at 13:00 UTC"),  # yesterday's
    ({"schedule": ["13:00"]}, NOW - 22 * HOUR, 0, None),
])
def test_retention_passes_run_when_a_merge_trigger_fires(merge: dict[str, Any],
                                                         last: int | None, last_seq: int,
                                                         due: str | None) -> None:
    tl = timeline(spans([NOW - MIN] * 6), last=last, last_retention_seq=last_seq)
    passes = [a for a in decide(tl, policy(merge=merge), NOW) if isinstance(a, RetentionPass)]
    assert [a.reason for a in passes] == ([] if due is None else [due])


# --- merges by class --------------------------------------------------------------------


def test_a_class_keeps_the_newest_boundary_of_each_interval_and_merges_the_rest() -> None:
    # One map a minute from 59 minutes ago to now, none labelled yet.
    times = [NOW - k * MIN for k in range(59, -1, -1)]
    tl = timeline(spans(times))
    acts = decide(tl, policy(), NOW, full=False)
    merges = [a for a in acts if isinstance(a, Merge)]
    labels = [a for a in acts if isinstance(a, SetClass)]
    # "recent" (every write, the last 10 minutes) merges nothing; "q" keeps the newest
    # boundary of each 5-minute interval: maps 12:00-x ... grouped by interval.
    assert all(m.klass == "q" for m in merges)
    q = [m for m in tl.maps if NOW - m.to_ts_ns > 10 * MIN]
    by_interval: dict[int, list[MapLike]] = {}
    for m in q:
        by_interval.setdefault(m.to_ts_ns // (5 * MIN), []).append(m)
    expected = []
    prev = q[0].from_seq
    for group in by_interval.values():
        if len(group) > 1:
            expected.append((prev, group[-1].to_seq, len(group)))
        prev = group[-1].to_seq
    assert [(m.from_seq, m.to_seq, m.maps) for m in merges] == expected
    assert {(s.klass, s.from_seq, s.to_seq) for s in labels} == {
        ("recent", tl.maps[49].from_seq, tl.maps[-1].to_seq),  # 10 minutes old: recent
        ("q", tl.maps[0].from_seq, tl.maps[48].to_seq)}
    assert all(m.cause is Cause.RETENTION and "one point per 5m" in m.reason for m in merges)


def test_named_and_pinned_markers_are_boundaries_auto_ones_are_not() -> None:
    times = [NOW - 30 * MIN + k * 30 * NS for k in range(6)]  # six maps within 3 minutes
    maps = spans(times, start=100)
    markers = {m.to_seq: Marker(f"auto-{m.to_seq}", m.to_seq, m.to_ts_ns) for m in maps}
    markers[120] = Marker("before-upgrade", 120, maps[1].to_ts_ns)
    markers[140] = Marker("auto-140", 140, maps[3].to_ts_ns, pinned=True)
    tl = timeline(maps, markers=markers)
    merges = [(a.from_seq, a.to_seq) for a in decide(tl, policy(), NOW)
              if isinstance(a, Merge)]
    assert merges == [(100, 120), (120, 140), (140, 160)]


def test_named_markers_expire_with_the_policy_when_history_is_kept() -> None:
    p = policy(older="keep")
    times = [NOW - 3 * HOUR + k * MIN for k in range(3)]  # older than the 1h horizon
    maps = spans(times)
    markers = {10: Marker("release-1", 10, times[0])}
    tl = timeline(maps, markers=markers)
    merges = [a for a in decide(tl, p, NOW) if isinstance(a, Merge)]
    assert [(m.from_seq, m.to_seq, m.klass) for m in merges] == [(0, 30, "older")]


def test_a_second_tick_has_nothing_to_do() -> None:
    sim = SimVolume()
    p = policy(snapshots={"every": "1m"})
    for _ in range(200):
        sim.now += 20 * NS
        sim.write(sim.seq % 60)
        sim.tick(p)
    again = decide(sim.timeline(), p, sim.now)
    assert kinds(again) == ["RetentionPass"]


class Counting(Sequence[MapLike]):
    """A list of maps that counts how many are read."""

    def __init__(self, maps: list[MapSpan]) -> None:
        self.maps = maps
        self.reads = 0

    def __len__(self) -> int:
        return len(self.maps)

    @overload
    def __getitem__(self, i: int) -> MapLike: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[MapLike]: ...
    def __getitem__(self, i: int | slice) -> MapLike | Sequence[MapLike]:
        self.reads += 1
        return self.maps[i]

    def __iter__(self) -> Iterator[MapLike]:
        raise AssertionError("decide() must not walk the whole list")


def _long_history(n: int) -> Counting:
    """``n`` hourly maps already merged and labelled "hourly", then 3 maps that just aged
    out of "recent" and 5 new ones."""
    old = spans([NOW - (n - k) * HOUR - 30 * MIN for k in range(n)], "hourly")
    aged = spans([NOW - 61 * MIN + k * 10 * NS for k in range(3)], "recent",
                 start=old[-1].to_seq)
    new = spans([NOW - k * MIN for k in range(5, 0, -1)], "", start=aged[-1].to_seq)
    return Counting(old + aged + new)


def test_a_tick_reads_the_maps_it_touches_not_the_whole_history() -> None:
    p = Policy.model_validate({"classes": [
        {"name": "recent", "granularity": "every write", "for": "1h"},
        {"name": "hourly", "granularity": "1h", "for": "1000000h"}]})
    reads = {}
    for n in (1_000, 100_000):
        maps = _long_history(n)
        acts = decide(timeline(maps), p, NOW)
        assert kinds(acts) == ["RetentionPass", "SetClass", "Merge", "SetClass"]
        reads[n] = maps.reads
    # Binary searches grow with log N; the rest is the 8 maps that changed.
    assert reads[100_000] - reads[1_000] < 40, reads
    assert reads[100_000] < 150, reads


def test_a_full_pass_reprocesses_everything() -> None:
    times = [NOW - 30 * MIN + k * 10 * NS for k in range(6)]
    tl = timeline(spans(times, "q"))  # labelled as processed, yet not merged
    assert not any(isinstance(a, Merge) for a in decide(tl, policy(), NOW))
    merges = [a for a in decide(tl, policy(), NOW, full=True) if isinstance(a, Merge)]
    assert [(m.from_seq, m.to_seq, m.maps) for m in merges] == [(0, 60, 6)]


# --- fade-out ---------------------------------------------------------------------------


def test_history_older_than_the_policy_is_faded_out_but_not_past_a_pinned_marker() -> None:
    times = [NOW - 3 * HOUR, NOW - 2 * HOUR, NOW - 90 * MIN, NOW - 30 * MIN]
    maps = spans(times)
    segs = [Segment(1, 1, 1000), Segment(2, 15, 1000), Segment(3, 35, 500)]
    tl = timeline(maps, segments=segs, log_bytes=2500, map_bytes=400)
    (fade,) = [a for a in decide(tl, policy(), NOW) if isinstance(a, FadeBefore)]
    assert (fade.point, fade.seq, fade.cause) == ("seq:30", 30, Cause.EXPIRY)
    # 3 map files and segment 1; segment 2 also holds records 31-34, still needed.
    assert fade.freed_estimate == 3 * 100 + 1000
    pinned = timeline(maps, segments=segs, markers={20: Marker("keep-me", 20, times[1], True)},
                      pinned_seqs=[20])
    (fade,) = [a for a in decide(pinned, policy(), NOW) if isinstance(a, FadeBefore)]
    assert fade.seq == 20 and "pinned marker at seq:20" in fade.reason
    at_pin = timeline(maps[2:], markers={20: Marker("keep-me", 20, times[1], True)},
                      pinned_seqs=[20])
    assert not any(isinstance(a, FadeBefore) for a in decide(at_pin, policy(), NOW))


# --- the budget -------------------------------------------------------------------------


def _full(on_full: str, used: int, *, refused: bool = False, **kw: Any) -> list[Any]:
    p = policy(budget={"max_bytes": 1000, "on_full": on_full}, merge={"after": "1h"})
    times = [NOW - 50 * MIN + k * 5 * MIN for k in range(8)]
    maps = spans(times, "q")
    segs = [Segment(k + 1, 10 * k + 1, 100) for k in range(8)]
    tl = timeline(maps, segments=segs, log_bytes=used - 800, map_bytes=800,
                  writes_refused=refused, last=NOW, **kw)
    return decide(tl, p, NOW)


def test_refuse_writes_at_the_budget_and_allow_them_below_95_percent() -> None:
    (refuse,) = _full("refuse_writes", 1001)
    assert isinstance(refuse, RefuseWrites) and refuse.cause is Cause.BUDGET
    assert refuse.reason.startswith("budget reached: 1001 B of history, budget 1000 B (100%)")
    assert _full("refuse_writes", 1000) == []
    assert _full("refuse_writes", 1001, refused=True) == []  # already refused: no new event
    assert _full("refuse_writes", 960, refused=True) == []   # hysteresis
    (allow,) = _full("refuse_writes", 950, refused=True)
    assert isinstance(allow, AllowWrites)


def test_fade_oldest_fades_the_least_that_fits() -> None:
    (fade,) = _full("fade_oldest", 1350)
    assert isinstance(fade, FadeBefore) and fade.cause is Cause.BUDGET
    # Each map is 100 bytes of map file and frees one 100-byte segment: 350 needs two.
    assert (fade.seq, fade.freed_estimate) == (20, 400)
    assert fade.reason.startswith("budget reached: 1.3 KiB of history, budget 1000 B (135%);"
                                  " fading out the oldest history")


def test_fade_oldest_makes_a_marker_when_the_open_interval_holds_the_history() -> None:
    acts = _full("fade_oldest", 3000, newest=200)
    assert kinds(acts) == ["CreateMarker", "FadeBefore"]
    mk, fade = acts
    assert mk.name == "auto-201" and mk.cause is Cause.BUDGET
    assert fade.point == "auto-201" and fade.seq is None


def test_a_pinned_marker_the_budget_would_fade_refuses_writes_instead() -> None:
    pin = {20: Marker("golden", 20, NOW - 45 * MIN, pinned=True)}
    acts = _full("fade_oldest", 1350 + 400, markers=pin, pinned_seqs=[20])
    assert kinds(acts) == ["FadeBefore", "RefuseWrites"]
    assert acts[0].seq == 20
    assert "pinned marker 'golden' (seq:20)" in acts[1].reason
    # Once history fits again (e.g. the marker was unpinned), writes are allowed.
    acts = _full("fade_oldest", 1350, refused=True)
    assert kinds(acts) == ["FadeBefore", "AllowWrites"]


def test_a_budget_fade_never_lands_inside_a_planned_merge() -> None:
    p = policy(budget={"max_bytes": 1000})
    times = [NOW - 50 * MIN + k * 10 * NS for k in range(6)]  # one 5-minute interval
    maps = spans(times)
    segs = [Segment(k + 1, 10 * k + 1, 100) for k in range(6)]
    tl = timeline(maps, segments=segs, log_bytes=600, map_bytes=600, last=None)
    acts = decide(tl, p, NOW)
    (fade,) = [a for a in acts if isinstance(a, FadeBefore)]
    assert fade.seq == 60  # the merge (0, 60] would swallow seq:20
    assert not any(isinstance(a, Merge) for a in acts)


# --- coverage and the view --------------------------------------------------------------


@pytest.mark.parametrize(("baseline_age_days", "level"), [
    (31, Level.OK), (27, Level.OK), (25, Level.WARNING), (23, Level.ERROR)])
def test_coverage_warns_below_85_and_errs_below_75_percent(baseline_age_days: int,
                                                           level: Level) -> None:
    now = NOW
    tl = timeline([], baseline_ts=now - baseline_age_days * DAY, created=now - 60 * DAY)
    cov = coverage(tl, DEFAULT_POLICY, now)
    daily = cov.classes[3]
    assert daily.klass == "daily" and daily.promised_ns == 23 * DAY
    assert daily.covered_ns == min(23, baseline_age_days - 7) * DAY
    assert daily.level is level
    assert cov.level is level
    assert cov.promised_ns == 30 * DAY
    if level is not Level.OK:
        assert cov.messages == (f"class 'daily' covers {baseline_age_days - 7}d of the 23d it"
                                f" promises ({100 * (baseline_age_days - 7) / 23:.0f}%)",)


def test_a_young_volume_is_not_short_of_its_promise() -> None:
    tl = timeline([], baseline_ts=NOW - 3 * HOUR, created=NOW - 3 * HOUR)
    cov = coverage(tl, DEFAULT_POLICY, NOW)
    assert cov.level is Level.OK
    assert [c.promised_ns for c in cov.classes] == [2 * HOUR, HOUR, 0, 0, 0]
    assert cov.promised_ns == cov.covered_ns == 3 * HOUR


def test_the_view_lists_points_per_class_with_their_granularity() -> None:
    times = [NOW - 3 * HOUR, NOW - 30 * MIN, NOW - 5 * MIN]
    maps = [MapSpan(0, 10, times[0], "", False, 1, 100), *spans(times[1:], start=10)]
    markers = {10: Marker("old", 10, times[0]), 30: Marker("auto-30", 30, times[2], True)}
    tl = timeline(maps, markers=markers, newest=35, baseline_ts=NOW - 4 * HOUR)
    view = timeline_view(tl, policy(), NOW)
    assert [v.klass for v in view] == ["recent", "q", "older"]
    recent, q, older = view
    assert [(p.seq, p.marker, p.pinned, p.auto) for p in recent.points] == [
        (30, "auto-30", True, True)]
    assert recent.every_write == ((21, 30), (31, 35))
    assert [p.seq for p in q.points] == [20] and q.every_write == ((11, 20),)
    assert [(p.seq, p.baseline) for p in older.points] == [(0, True), (10, False)]
    assert older.every_write == ()  # a merged map: only its ends are points
    assert older.granularity_ns is None and q.granularity_ns == 5 * MIN
