#!/usr/bin/env python3
"""Benchmarks of the retention policy engine (``policies``), each against a peer
measured in the same run on the same data.

Sections:

a   scheduler tick: ``decide()`` on timelines of 1k, 10k and 100k delta maps (a policy
    keeping a point a minute for 70 days). A typical tick (10 new maps, 10 that aged into
    the next class and merge in pairs) against
    the peer, a full pass over the same timeline (``full=True``, which reads every map):
    the tick's time should stay flat as history grows while the full pass grows with it.
    Also: a quiet tick (nothing new), ``coverage()`` (O(N), for status and metrics), and
    the cost of describing an engine volume as a Timeline (the switch's side).
b   merge throughput of the real engine (``volume_manager``): delta-map entries merged
    per second when consecutive groups of maps are merged with ``Volume.merge`` (4 at a
    time, as 15-minute points become hourly, and 24 at a time, as hourly points become
    daily), against the peer, composing the same groups' extents in memory
    (``extents.compose``, no files, no catalog): the ratio is what durability costs.
    Maps are built with ``mark()`` after a few small writes each, on a 1 MiB volume.

Method (bench/README.md): engine and peer alternate within every round; figures are
medians over ``--rounds``. The exit status is 0 whatever the figures.

The volumes live in ``--dir`` (default: /dev/shm when it exists, else the system's
temporary directory). Every mark() and merge() makes its files durable (fdatasync and a
catalog commit), so on a disk the setup of 100k maps takes minutes (about 3 ms a mark
measured here on ext4, 0.6 ms on tmpfs) and the merge figures are dominated by syncs;
on tmpfs they show the engine's own cost. ``--quick`` stops at 10k maps.

    python bench/policy.py --quick          # < 1 minute
    python bench/policy.py                  # 1k, 10k, 100k maps: a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

# Run from a checkout without relying on how the package was installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report_format import number
from policies.decide import MapSpan, Marker, Merge, Timeline, coverage, decide
from policies.schema import Policy
from volume_manager import Volume, VolumeOptions
from volume_manager import extents as ext

NS = 1_000_000_000
MIN = 60 * NS
HOUR = 60 * MIN
DAY = 24 * HOUR

# Merges timed per group size and volume. The engine's merge costs O(maps in the volume)
# per call today (resolving and checking its two boundaries, listing the maps between
# them and the markers inside walk every map), so a pass over all 100k maps would take
# about an hour: the figures are for the oldest MERGES groups, the whole history in place.
MERGES = 250

# A policy that keeps one point a minute for 70 days holds 100k maps in steady state.
POLICY = Policy.model_validate({
    "classes": [
        {"name": "recent", "granularity": "every write", "for": "2h"},
        {"name": "minutely", "granularity": "1m", "for": "70d"},
        {"name": "hourly", "granularity": "1h", "for": "400d"},
    ],
    "snapshots": {"every": "1m"},
    "merge": {"after": "5m"},
})


@dataclass
class Row:
    metric: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, metric: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append(Row(metric, value, unit, note))


def print_section(sec: Section) -> None:
    print(f"\n({sec.key}) {sec.title}")
    w = max([44, *(len(r.metric) for r in sec.rows)])
    for r in sec.rows:
        print(f"  {r.metric:<{w}} {number(r.value):>12} {r.unit:<12} {r.note}")
    sys.stdout.flush()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of one call, over ``repeat`` calls."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


# ------------------------------------------------------------------ (a) ticks
def steady_timeline(n: int, now: int) -> Timeline:
    """``n`` maps in the steady state of POLICY at ``now`` (one a minute, each labelled
    with its class), plus what one 5-minute tick brings: 10 new maps and 10 that aged out
    of "recent" (two a minute there, so 5 merges)."""
    maps: list[MapSpan] = []
    markers: dict[int, Marker] = {}
    seq = 0
    # One map a minute, two a minute in the last 2h10m (markers every 30 s there).
    recent = min(n, 260)
    start = now - (n - recent) * MIN - recent * 30 * NS
    ts = start
    for k in range(n):
        ts += MIN if k < n - recent else 30 * NS
        age = now - ts
        if age <= 5 * MIN:
            klass = ""  # made since the last tick
        elif age <= 2 * HOUR + 5 * MIN:
            klass = "recent"  # the oldest 10 aged into "minutely" since the last tick
        else:
            klass = "minutely"
        maps.append(MapSpan(seq, seq + 8, ts, klass, klass in ("", "recent"), 8, 64 + 8 * 32))
        seq += 8
        markers[seq] = Marker(f"auto-{seq}", seq, ts)
    return Timeline(baseline_seq=0, baseline_ts_ns=start, created_ns=start, newest_seq=seq + 3,
                    maps=maps, markers=markers, log_bytes=seq * 4200,
                    map_bytes=sum(m.bytes for m in maps), last_retention_ns=now - 10 * MIN)


def bench_ticks(sizes: list[int], rounds: int) -> Section:
    sec = Section("a", "scheduler tick: decide() on N maps (default median of repeats)")
    now = 1_800_000_000 * NS
    for n in sizes:
        tl = steady_timeline(n, now)
        acts = decide(tl, POLICY, now)
        merges = [a for a in acts if isinstance(a, Merge)]
        quiet = dataclasses.replace(tl, last_retention_ns=now)
        rep = max(3, min(200, 2_000_000 // n))
        tick_runs, full_runs = [], []
        for _ in range(rounds):  # alternate the two
            tick_runs.append(timed(partial(decide, tl, POLICY, now), rep))
            full_runs.append(timed(partial(decide, tl, POLICY, now, full=True),
                                   max(1, rep // 20)))
        tick, full = statistics.median(tick_runs), statistics.median(full_runs)
        quiet_t = timed(partial(decide, quiet, POLICY, now), rep)
        cov_t = timed(partial(coverage, tl, POLICY, now), max(1, rep // 20))
        sec.add(f"{n:>7} maps: tick ({len(acts)} actions, {len(merges)} merges)", tick * 1e6,
                "us", f"full pass {full * 1e3:.2f} ms; tick/full {tick / full:.4f}")
        sec.add(f"{n:>7} maps: tick with no retention pass due", quiet_t * 1e6, "us")
        sec.add(f"{n:>7} maps: coverage()", cov_t * 1e3, "ms", "O(N): space per class")
    return sec


# ------------------------------------------------------------------ (b) merges
def build_volume(root: Path, n: int, seed: int) -> Volume:
    """A 1 MiB volume with ``n`` maps, each from 1-4 small writes."""
    rng = random.Random(seed)
    d = Path(tempfile.mkdtemp(dir=root, prefix=f"policy-{n}-"))
    vol = Volume.create(str(d / "v.cdp"), str(d / "v.img"), size=1 << 20,
                        options=VolumeOptions(commit_interval=None))
    blocks = vol.num_blocks
    data = b"\xa5" * (8 * vol.block_size)
    for _ in range(n):
        for _ in range(rng.randrange(1, 5)):
            count = rng.randrange(1, 9)
            vol.write(rng.randrange(blocks - count + 1), data[: count * vol.block_size])
        vol.mark()
    return vol


def timeline_of(vol: Volume) -> Timeline:
    """What the switch does per tick to describe a volume (rows and markers by seq)."""
    rows = [m.row for m in vol.maps]
    return Timeline(baseline_seq=vol.baseline_seq,
                    baseline_ts_ns=vol.catalog.get_int("baseline_ts"),
                    created_ns=vol.catalog.get_int("created_ns"), newest_seq=vol.seq,
                    maps=rows, markers={mk.seq: mk for mk in vol.markers.values()},
                    pinned_seqs=sorted(mk.seq for mk in vol.markers.values() if mk.pinned),
                    map_bytes=sum(r.bytes for r in rows))


def merge_groups(vol: Volume, group: int, limit: int) -> tuple[int, int, float]:
    """Merge consecutive groups of ``group`` maps (the oldest first) with the engine, at
    most ``limit`` maps' worth; returns (maps merged, entries merged, seconds)."""
    bounds = [(vol.maps[i].from_seq, vol.maps[i + group - 1].to_seq)
              for i in range(0, min(limit, len(vol.maps)) - group + 1, group)]
    entries = 0
    t = time.perf_counter()
    for lo, hi in bounds:
        i = _index(vol, lo)
        entries += sum(m.row.entries for m in vol.maps[i: i + group])
        vol.merge(f"seq:{lo}", f"seq:{hi}")
    return len(bounds) * group, entries, time.perf_counter() - t


def _index(vol: Volume, from_seq: int) -> int:
    lo, hi = 0, len(vol.maps)
    while lo < hi:
        mid = (lo + hi) // 2
        if vol.maps[mid].from_seq < from_seq:
            lo = mid + 1
        else:
            hi = mid
    return lo


def compose_groups(vol: Volume, group: int, limit: int) -> tuple[int, float]:
    """The peer: compose the same groups' extents in memory."""
    maps = vol.maps[: min(limit, len(vol.maps))]
    arrays = [vol.map_extents(m) for m in maps]
    entries = 0
    t = time.perf_counter()
    for i in range(0, len(arrays) - group + 1, group):
        chunk = arrays[i: i + group]
        entries += sum(len(a) for a in chunk)
        ext.compose(chunk, vol.block_size)
    return entries, time.perf_counter() - t


def bench_merges(sizes: list[int], root: Path) -> Section:
    sec = Section("b", "merge throughput: engine Volume.merge vs in-memory compose")
    for n in sizes:
        t = time.perf_counter()
        vol = build_volume(root, n, seed=n)
        setup = time.perf_counter() - t
        try:
            tl_t = timed(partial(timeline_of, vol), 3)
            sec.add(f"{n:>7} maps: setup (writes + mark() per map)", setup, "s",
                    f"{setup / n * 1e3:.2f} ms a map")
            sec.add(f"{n:>7} maps: Timeline from the engine", tl_t * 1e3, "ms",
                    "rows list + markers by seq, per tick if not cached")
            # Groups of 4, then groups of 24 of the result, MERGES of each at most.
            for group in (4, 24):
                limit = group * MERGES
                peer_entries, peer_s = compose_groups(vol, group, limit)
                maps_done, entries, secs = merge_groups(vol, group, limit)
                rate = entries / secs if secs else float("nan")
                peer_rate = peer_entries / peer_s if peer_s else float("nan")
                sec.add(f"{n:>7} maps: merge groups of {group} ({maps_done} maps)", rate,
                        "entries/s", f"{maps_done // group / secs:,.0f} merges/s; in-memory"
                        f" compose {peer_rate:,.0f} entries/s; engine/peer"
                        f" {rate / peer_rate:.3f}")
        finally:
            directory = Path(vol.directory).parent
            vol.close()
            shutil.rmtree(directory, ignore_errors=True)
    return sec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k maps only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the volumes go")
    ap.add_argument("--skip-merge", action="store_true", help="section (a) only")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    root = args.dir or Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    print(f"bench/policy.py: sizes {sizes}, rounds {args.rounds}, volumes in {root}")
    sections = [bench_ticks(sizes, args.rounds)]
    print_section(sections[-1])
    if not args.skip_merge:
        sections.append(bench_merges(sizes, root))
        print_section(sections[-1])
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in sections], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
