"""Property tests: random policies over random write/marker histories, decide() applied
on a simulated clock (timeline_sim.py). After every tick and at the end:

- every point the policy promises is still recoverable, byte-exactly;
- no point the timeline view lists is gone (each listed one is recoverable, exactly);
- pinned markers survive, named markers survive while the policy keeps them;
- history never exceeds the budget by more than one segment (unless a pinned marker
  holds it, and then writes are refused, with that reason);
- nothing the budget removed was removed silently (a BUDGET action says so).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timeline_sim import NS, SimVolume, promised_points

from policies.decide import (
    Cause,
    FadeBefore,
    Merge,
    RefuseWrites,
    coverage,
    is_auto_marker,
    timeline_view,
)
from policies.schema import Policy

MIN = 60 * NS


# --- strategies -------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    n = draw(st.integers(1, 3))
    classes = []
    gran = draw(st.sampled_from([0, 1, 2, 5]))  # minutes; 0: every write
    limit = 0
    for i in range(n):
        if i:
            gran = (gran or 1) * draw(st.integers(2, 4))
        step = max(gran, 1) * draw(st.integers(1, 6))
        limit += step
        classes.append({"name": f"c{i}",
                        "granularity": "every write" if gran == 0 else f"{gran}m",
                        "for": f"{limit}m"})
    finest = next((int(c["granularity"][:-1]) for c in classes
                   if c["granularity"] != "every write"), None)
    snapshots: dict[str, object] = {}
    every = draw(st.one_of(st.none(), st.integers(1, 3)))
    if every is not None:
        snapshots["every"] = f"{min(every, finest) if finest else every}m"
    if draw(st.booleans()):
        snapshots["every_writes"] = draw(st.integers(1, 12))
    merge: dict[str, object] = {}
    if draw(st.booleans()):
        merge["after"] = f"{draw(st.integers(1, 30))}m"
    if draw(st.booleans()):
        merge["after_writes"] = draw(st.integers(1, 40))
    if draw(st.booleans()):
        merge["schedule"] = [f"{h:02d}:{m:02d}" for h, m in
                             draw(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 59)),
                                           max_size=2))]
    data: dict[str, object] = {"classes": classes, "older": draw(st.sampled_from(["fade",
                                                                                  "keep"])),
                               "snapshots": snapshots, "merge": merge}
    if draw(st.integers(0, 2)) == 0:
        data["budget"] = {"max_bytes": draw(st.integers(8, 300)) * 1024,
                          "on_full": draw(st.sampled_from(["fade_oldest", "refuse_writes"]))}
    return Policy.model_validate(data)


@dataclass(frozen=True)
class Step:
    advance_s: int
    writes: tuple[tuple[int, int], ...]  # (lba, count)
    marker: str | None                   # "named" or "pinned"


steps = st.lists(st.builds(
    Step,
    advance_s=st.integers(0, 900),
    writes=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 4)), max_size=6).map(tuple),
    marker=st.sampled_from([None, None, None, None, None, None, "named", "pinned"]),
), min_size=5, max_size=80)


# --- the properties ---------------------------------------------------------------------


def check_tick(sim: SimVolume, policy: Policy, actions: list[object]) -> None:
    sim.check_structure()
    check_promises(sim, policy, exact=False)
    for mk in sim.all_markers:
        if mk.pinned:
            assert sim.markers.get(mk.name) == mk, f"pinned marker {mk.name} lost"
    limit = policy.budget.limit(sim.fs_bytes) if policy.budget is not None else None
    if limit is not None and sim.history_bytes > limit + sim.segment_bytes:
        # Only a pinned marker may hold more, and then writes are refused, saying why.
        assert sim.writes_refused
        last = [e.action for e in sim.events if isinstance(e.action, RefuseWrites)][-1]
        assert "pinned marker" in last.reason
    for a in actions:
        if isinstance(a, Merge):
            assert a.cause is Cause.RETENTION


def check_promises(sim: SimVolume, policy: Policy, *, exact: bool) -> None:
    for seq, why in sorted(promised_points(sim, policy, sim.now).items()):
        if seq < sim.baseline_seq:
            # Only the budget may take a promised point, and it says so.
            assert sim.faded_by(seq) is Cause.BUDGET, f"seq:{seq} ({why}) faded out"
            assert any(isinstance(e.action, FadeBefore) and e.action.cause is Cause.BUDGET
                       and "budget reached" in e.action.reason for e in sim.events)
            continue
        assert sim.recoverable(seq), f"seq:{seq} ({why}) is not recoverable"
        if exact:
            assert sim.state_at(seq) == sim.truth_at(seq), f"seq:{seq} ({why}) differs"


def check_end(sim: SimVolume, policy: Policy) -> None:
    now = sim.now
    check_promises(sim, policy, exact=True)
    for mk in sim.all_markers:
        if not is_auto_marker(mk.name) and now - mk.ts_ns <= policy.horizon_ns \
                and mk.seq >= sim.baseline_seq:
            assert mk.name in sim.markers, f"named marker {mk.name} merged away"
        if mk.seq < sim.baseline_seq:
            assert not mk.pinned
    listed: set[int] = set()
    for view in timeline_view(sim.timeline(), policy, now):
        for p in view.points:
            listed.add(p.seq)
        for a, b in view.every_write:
            listed.update(range(a, b + 1))
    for seq in sorted(listed):
        assert sim.recoverable(seq), f"seq:{seq} is listed but gone"
        assert sim.state_at(seq) == sim.truth_at(seq), f"listed seq:{seq} differs"
    # ... and the view lists every point that is still there.
    for seq in range(sim.baseline_seq, sim.seq + 1):
        assert sim.recoverable(seq) == (seq in listed), seq
    cov = coverage(sim.timeline(), policy, now)
    assert 0 <= cov.covered_ns <= cov.promised_ns


def run(policy: Policy, history: list[Step], *, full_every: int = 0) -> SimVolume:
    sim = SimVolume(num_blocks=64, segment_bytes=16 << 10)
    n = 0
    for step in history:
        sim.now += step.advance_s * NS
        for lba, count in step.writes:
            sim.write(lba, count)
        if step.marker is not None:
            n += 1
            sim.mark(f"op{n}", pinned=step.marker == "pinned")
        # A tick after every step: the writes between two ticks stay below one segment,
        # which is what the budget's bound assumes.
        actions = sim.tick(policy, full=bool(full_every) and n % full_every == 0)
        check_tick(sim, policy, list(actions))
    return sim


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), history=steps)
def test_promised_points_survive_and_space_stays_in_the_budget(policy: Policy,
                                                               history: list[Step]) -> None:
    sim = run(policy, history)
    check_end(sim, policy)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), history=steps)
def test_full_passes_keep_the_same_promises(policy: Policy, history: list[Step]) -> None:
    sim = run(policy, history, full_every=3)
    check_end(sim, policy)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), history=steps, later=st.integers(1, 48))
def test_promises_hold_long_after_the_writes_stop(policy: Policy, history: list[Step],
                                                  later: int) -> None:
    sim = run(policy, history)
    for _ in range(later):  # let the history age through every class
        sim.now += 15 * MIN
        check_tick(sim, policy, list(sim.tick(policy)))
    check_end(sim, policy)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), seed=st.integers(0, 2**32 - 1),
       pattern=st.sampled_from(["steady", "bursts", "gaps"]))
def test_long_dense_histories(policy: Policy, seed: int, pattern: str) -> None:
    """Hundreds of ticks of writes, operator markers and pins, drawn from a seed: long
    enough for history to age through every class and fill any budget."""
    rng = random.Random(seed)
    sim = SimVolume(num_blocks=64, segment_bytes=16 << 10)
    for n in range(rng.randrange(150, 400)):
        if pattern == "steady":
            sim.now += rng.randrange(5, 90) * NS
        elif pattern == "bursts":
            sim.now += rng.choice([0, 1, 5, 10, 3600]) * NS
        else:
            sim.now += rng.choice([60, 120, 7200]) * NS
        for _ in range(rng.randrange(0, 6)):
            count = rng.randrange(1, 5)
            sim.write(rng.randrange(0, 65 - count), count)
        r = rng.random()
        if r < 0.06:
            sim.mark(f"op{n}", pinned=r < 0.015)
        check_tick(sim, policy, list(sim.tick(policy)))
    check_end(sim, policy)
