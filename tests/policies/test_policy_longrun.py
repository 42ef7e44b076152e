"""90 simulated days of a write stream under the default policy (timeline_sim.py): space
stays bounded once history reaches the policy's 30 days, fade-out frees what expires,
and every promise holds. A second run gives the default policy a file system too small
for 30 days, so that its 80% budget bites: history stays within one segment of it and
the shortfall shows in coverage. Each run prints its figures."""

from __future__ import annotations

import random

import pytest
from timeline_sim import NS, SimVolume, promised_points

from policies.decide import Cause, FadeBefore, Level, coverage
from policies.schema import DEFAULT_POLICY, format_size

DAY = 86_400 * NS
TICK = 300 * NS  # the scheduler ticks every 5 minutes
SEGMENT = 1 << 20


def ninety_days(fs_bytes: int | None) -> tuple[SimVolume, list[int], int]:
    """Writes of 1-8 blocks at a random rate (0-7 per tick, hotter on weekdays) on a
    256-block volume; returns the volume, history bytes at the end of each day, and the
    largest history seen right after a tick."""
    rng = random.Random(90)
    sim = SimVolume(num_blocks=256, segment_bytes=SEGMENT, fs_bytes=fs_bytes)
    daily = []
    peak = 0
    for day in range(90):
        rate = 8 if day % 7 < 5 else 3
        for _ in range(DAY // TICK):
            sim.now += TICK
            for _ in range(rng.randrange(rate)):
                count = rng.randrange(1, 9)
                sim.write(rng.randrange(256 - count + 1), count)
            sim.tick(DEFAULT_POLICY)
            peak = max(peak, sim.history_bytes)
        daily.append(sim.history_bytes)
    return sim, daily, peak


def _check_sample_of_promises(sim: SimVolume) -> None:
    promised = promised_points(sim, DEFAULT_POLICY, sim.now)
    for seq in promised:
        assert seq < sim.baseline_seq or sim.recoverable(seq), seq
    for seq in random.Random(1).sample(sorted(promised), min(200, len(promised))):
        if seq >= sim.baseline_seq:
            assert sim.state_at(seq) == sim.truth_at(seq), seq


def test_ninety_days_of_the_default_policy_stay_bounded(capsys: pytest.CaptureFixture[str]) \
        -> None:
    sim, daily, peak = ninety_days(fs_bytes=None)
    fades = [e.action for e in sim.events if isinstance(e.action, FadeBefore)]
    with capsys.disabled():
        print(f"\n90 days, default policy: {len(sim.all_writes)} writes,"
              f" {format_size(sum(daily[:1]))} of history after day 1,"
              f" {format_size(daily[29])} after day 30, {format_size(daily[59])} after day 60,"
              f" {format_size(daily[89])} after day 90 (peak {format_size(peak)});"
              f" {len(sim.maps)} maps; fade-out freed {format_size(sim.freed_bytes)}"
              f" ({sim.freed_bytes} bytes) in {len(fades)} fade-outs")
    assert all(f.cause is Cause.EXPIRY for f in fades)
    assert sim.freed_bytes > 0
    # Bounded: past 30 days history stops growing (within a few days' worth of writes).
    plateau = daily[31:]
    assert max(plateau) < 1.25 * min(plateau)
    assert daily[89] < 1.2 * daily[44]
    assert len(sim.maps) < 24 + 88 + 144 + 30 + 10  # classes: 2h/5m, 22h/15m, 6d/1h, 23d/1d
    cov = coverage(sim.timeline(), DEFAULT_POLICY, sim.now)
    assert cov.level is Level.OK and cov.covered_ns == cov.promised_ns == 30 * DAY
    sim.check_structure()
    _check_sample_of_promises(sim)


def test_ninety_days_on_a_file_system_too_small_for_the_promise(
        capsys: pytest.CaptureFixture[str]) -> None:
    fs_bytes = 40 << 20  # 80%: a 32 MiB budget, about three weeks of this stream
    budget = int(fs_bytes * 0.8)
    sim, _, peak = ninety_days(fs_bytes=fs_bytes)
    by_budget = [e for e in sim.events if e.action.cause is Cause.BUDGET]
    cov = coverage(sim.timeline(), DEFAULT_POLICY, sim.now)
    with capsys.disabled():
        print(f"\n90 days, default policy, {format_size(budget)} budget: peak history"
              f" {format_size(peak)}; {len(by_budget)} budget events, the first on day"
              f" {(by_budget[0].at_ns - sim.created_ns) // DAY + 1};"
              f" fade-out freed {format_size(sim.freed_bytes)};"
              f" covered {cov.covered_ns / DAY:.1f} of {cov.promised_ns // DAY} days")
        for line in cov.messages:
            print("  " + line)
    assert peak <= budget + SEGMENT
    assert by_budget and all("budget reached" in e.action.reason for e in by_budget)
    assert cov.level is not Level.OK and cov.messages
    assert cov.classes[0].level is Level.OK  # the newest classes keep their promise
    _check_sample_of_promises(sim)
