"""A pure model of one protected volume's timeline, driven by a simulated clock.

It keeps what the engine keeps (FORMAT.md), at the level of blocks and sequence
numbers rather than bytes of data: log records in segments (40-byte headers, data,
64-byte segment headers, a new segment when the next record would not fit), delta maps
formed at markers (block -> seq of the newest write, 64 + 32 bytes per extent), merges
(compose newest-wins, inner markers dropped, pinned markers refuse) and fade-out
(baseline rolled forward, maps and markers older than the point dropped, every segment
wholly before the record after the point freed). A block's "content" is the seq of the
write that wrote it (0 = as at creation), so a state is a dict and comparing it with
the ground truth (every write ever made, kept apart) is a byte-exact check.

:meth:`SimVolume.tick` builds the :class:`policies.decide.Timeline`, calls ``decide()``
and applies its actions the way the daemon does through the engine.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from policies.decide import (
    Action,
    AllowWrites,
    Cause,
    CreateMarker,
    FadeBefore,
    Merge,
    RefuseWrites,
    RetentionPass,
    SetClass,
    Timeline,
    decide,
    is_auto_marker,
)
from policies.schema import EVERY_WRITE, Policy

RECORD_HEADER = 40
SEGMENT_HEADER = 64
MAP_HEADER = 64
EXTENT = 32
NS = 1_000_000_000


class SimError(Exception):
    """What the engine would refuse (a bug in the decisions if decide() asked for it)."""


@dataclass(slots=True)
class SimSegment:
    id: int
    first_seq: int
    bytes: int = SEGMENT_HEADER


@dataclass(slots=True)
class SimMap:
    from_seq: int
    to_seq: int
    to_ts_ns: int
    blocks: dict[int, int]  # block -> seq of the newest write to it in (from, to]
    granular: bool = True
    klass: str = ""
    entries: int = 0
    bytes: int = MAP_HEADER

    def __post_init__(self) -> None:
        self.entries = _extents(self.blocks)
        self.bytes = MAP_HEADER + EXTENT * self.entries


@dataclass(frozen=True, slots=True)
class SimMarker:
    name: str
    seq: int
    ts_ns: int
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class _Record:
    seq: int
    ts_ns: int
    segment: int
    lba: int = 0
    count: int = 0  # 0: a MARK record


def _extents(blocks: dict[int, int]) -> int:
    """Extents after coalescing: neighbour blocks written by the same record."""
    n = 0
    prev: tuple[int, int] | None = None
    for b in sorted(blocks):
        s = blocks[b]
        if prev is None or prev != (b - 1, s):
            n += 1
        prev = (b, s)
    return n


@dataclass(slots=True)
class Event:
    at_ns: int
    action: Action


@dataclass
class SimVolume:
    num_blocks: int = 64
    block_size: int = 512
    segment_bytes: int = 64 << 10
    start_ns: int = 1_700_000_000 * NS
    fs_bytes: int | None = None
    # state
    now: int = 0
    created_ns: int = 0
    seq: int = 0
    baseline_seq: int = 0
    baseline_ts: int = 0
    baseline: dict[int, int] = field(default_factory=dict)
    maps: list[SimMap] = field(default_factory=list)
    markers: dict[str, SimMarker] = field(default_factory=dict)
    by_seq: dict[int, SimMarker] = field(default_factory=dict)
    pinned_seqs: list[int] = field(default_factory=list)
    segments: list[SimSegment] = field(default_factory=list)
    records: dict[int, _Record] = field(default_factory=dict)  # records after the baseline
    open_blocks: dict[int, int] = field(default_factory=dict)
    writes_refused: bool = False
    last_retention_ns: int | None = None
    last_retention_seq: int = 0
    # ground truth and accounting
    truth: dict[int, list[int]] = field(default_factory=dict)  # block -> seqs that wrote it
    all_writes: list[tuple[int, int]] = field(default_factory=list)  # (seq, ts)
    all_markers: list[SimMarker] = field(default_factory=list)
    refused: int = 0
    freed_bytes: int = 0
    events: list[Event] = field(default_factory=list)
    fades: list[tuple[Cause, int]] = field(default_factory=list)  # (why, new baseline seq)

    def __post_init__(self) -> None:
        self.now = self.baseline_ts = self.created_ns = self.start_ns
        self.segments.append(SimSegment(1, 1))

    # ---------------------------------------------------------------- the log
    def _append(self, size: int, lba: int = 0, count: int = 0) -> int:
        self.seq += 1
        active = self.segments[-1]
        if active.bytes + size > self.segment_bytes and active.bytes > SEGMENT_HEADER:
            active = SimSegment(active.id + 1, self.seq)
            self.segments.append(active)
        active.bytes += size
        self.records[self.seq] = _Record(self.seq, self.now, active.id, lba, count)
        return self.seq

    def write(self, lba: int, count: int = 1) -> bool:
        """A host write of ``count`` blocks; False when writes are refused."""
        if self.writes_refused:
            self.refused += 1
            return False
        assert lba >= 0 and lba + count <= self.num_blocks
        seq = self._append(RECORD_HEADER + count * self.block_size, lba, count)
        for b in range(lba, lba + count):
            self.truth.setdefault(b, []).append(seq)
            self.open_blocks[b] = seq
        self.all_writes.append((seq, self.now))
        return True

    def mark(self, name: str, *, pinned: bool = False) -> SimMarker:
        if name in self.markers:
            raise SimError(f"marker {name!r} exists")
        prev = self.maps[-1].to_seq if self.maps else self.baseline_seq
        seq = self._append(RECORD_HEADER + len(name.encode()))
        m = SimMap(prev, seq, self.now, dict(self.open_blocks))
        self.open_blocks.clear()
        self.maps.append(m)
        mk = SimMarker(name, seq, self.now, pinned)
        self.markers[name] = mk
        self.by_seq[seq] = mk
        if pinned:
            bisect.insort(self.pinned_seqs, seq)
        self.all_markers.append(mk)
        return mk

    # ------------------------------------------------------------------- jobs
    @property
    def last_boundary(self) -> int:
        return self.maps[-1].to_seq if self.maps else self.baseline_seq

    def resolve(self, point: str) -> int:
        if point.startswith("seq:"):
            return int(point[4:])
        if point not in self.markers:
            raise SimError(f"no marker {point!r}")
        return self.markers[point].seq

    def _index_of_boundary(self, seq: int) -> int:
        """Index of the map ending at ``seq`` (-1 for the baseline)."""
        if seq == self.baseline_seq:
            return -1
        i = bisect.bisect_left([m.to_seq for m in self.maps], seq)
        if i == len(self.maps) or self.maps[i].to_seq != seq:
            raise SimError(f"seq:{seq} is not a marker or map boundary")
        return i

    def merge(self, lo: int, hi: int) -> None:
        a = self._index_of_boundary(lo) + 1
        b = self._index_of_boundary(hi)
        if b - a + 1 < 2:
            raise SimError(f"nothing to merge between seq:{lo} and seq:{hi}")
        inner = [mk for mk in self.markers.values() if lo < mk.seq < hi]
        if any(mk.pinned for mk in inner):
            raise SimError("pinned markers inside the range")
        olds = self.maps[a: b + 1]
        blocks: dict[int, int] = {}
        for m in olds:
            blocks.update(m.blocks)
        merged = SimMap(lo, hi, olds[-1].to_ts_ns, blocks, granular=False, klass=olds[-1].klass)
        self.maps[a: b + 1] = [merged]
        for mk in inner:
            del self.markers[mk.name]
            del self.by_seq[mk.seq]

    def fade(self, p: int) -> int:
        i = self._index_of_boundary(p)
        if p == self.baseline_seq:
            return 0
        if any(s < p for s in self.pinned_seqs):
            raise SimError("pinned markers older than the fade point")
        olds = self.maps[: i + 1]
        for m in olds:
            self.baseline.update(m.blocks)
        freed = sum(m.bytes for m in olds)
        self.baseline_seq, self.baseline_ts = p, olds[-1].to_ts_ns
        del self.maps[: i + 1]
        for mk in [mk for mk in self.markers.values() if mk.seq < p]:
            del self.markers[mk.name]
            del self.by_seq[mk.seq]
        nxt = self.records.get(p + 1)
        keep_seg = nxt.segment if nxt is not None else self.segments[-1].id
        while self.segments[0].id < keep_seg:
            freed += self.segments.pop(0).bytes
        for s in [s for s in self.records if s <= p]:
            del self.records[s]
        live = {s.id for s in self.segments}
        assert all(r.segment in live for r in self.records.values()), "a needed segment went"
        self.freed_bytes += freed
        return freed

    # ---------------------------------------------------------------- history
    @property
    def log_bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    @property
    def map_bytes(self) -> int:
        return sum(m.bytes for m in self.maps)

    @property
    def history_bytes(self) -> int:
        return self.log_bytes + self.map_bytes

    def recoverable(self, p: int) -> bool:
        """Can the volume still be shown as it was exactly after record ``p``?"""
        if p < self.baseline_seq or p > self.seq:
            return False
        if p == self.baseline_seq or p > self.last_boundary:
            return True
        i = bisect.bisect_left([m.to_seq for m in self.maps], p)
        m = self.maps[i]
        return m.to_seq == p or m.granular

    def state_at(self, p: int) -> dict[int, int]:
        """The volume at ``p`` built from what is retained (baseline, maps, log)."""
        if not self.recoverable(p):
            raise SimError(f"seq:{p} is not recoverable")
        state = dict(self.baseline)
        start = self.baseline_seq
        for m in self.maps:
            if m.to_seq > p:
                break
            state.update(m.blocks)
            start = m.to_seq
        live = {s.id for s in self.segments}
        for s in range(start + 1, p + 1):
            rec = self.records[s]  # KeyError: the log lost a record still needed
            assert rec.segment in live, f"record seq:{s} is in a freed segment"
            for b in range(rec.lba, rec.lba + rec.count):
                state[b] = s
        return {b: v for b, v in state.items() if v}

    def truth_at(self, p: int) -> dict[int, int]:
        out = {}
        for b, seqs in self.truth.items():
            i = bisect.bisect_right(seqs, p)
            if i:
                out[b] = seqs[i - 1]
        return out

    # ---------------------------------------------------------------- policy
    def timeline(self) -> Timeline:
        return Timeline(
            baseline_seq=self.baseline_seq, baseline_ts_ns=self.baseline_ts,
            created_ns=self.created_ns, newest_seq=self.seq, maps=self.maps,
            markers=self.by_seq, pinned_seqs=self.pinned_seqs, segments=self.segments,
            log_bytes=self.log_bytes, map_bytes=self.map_bytes,
            segment_bytes=self.segment_bytes, fs_bytes=self.fs_bytes,
            writes_refused=self.writes_refused, last_retention_ns=self.last_retention_ns,
            last_retention_seq=self.last_retention_seq)

    def tick(self, policy: Policy, *, full: bool = False) -> list[Action]:
        actions = decide(self.timeline(), policy, self.now, full=full)
        self.apply(actions)
        return actions

    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            self.events.append(Event(self.now, a))
            if isinstance(a, CreateMarker):
                assert is_auto_marker(a.name)
                self.mark(a.name)
            elif isinstance(a, RetentionPass):
                self.last_retention_ns, self.last_retention_seq = self.now, self.seq
            elif isinstance(a, Merge):
                self.merge(a.from_seq, a.to_seq)
            elif isinstance(a, SetClass):
                for m in self.maps:
                    if m.from_seq >= a.from_seq and m.to_seq <= a.to_seq:
                        m.klass = a.klass
            elif isinstance(a, FadeBefore):
                p = self.resolve(a.point)
                assert a.seq is None or a.seq == p
                self.fade(p)
                self.fades.append((a.cause, p))
            elif isinstance(a, RefuseWrites):
                self.writes_refused = True
            elif isinstance(a, AllowWrites):
                self.writes_refused = False
            else:  # pragma: no cover
                raise AssertionError(a)

    def faded_by(self, seq: int) -> Cause | None:
        """Why point ``seq`` was faded out: the cause of the first fade-out past it."""
        return next((cause for cause, p in self.fades if p > seq), None)

    def check_structure(self) -> None:
        """The engine's invariants: contiguous maps, markers on boundaries."""
        prev = self.baseline_seq
        for m in self.maps:
            assert m.from_seq == prev, (m.from_seq, prev)
            assert m.to_seq > m.from_seq
            prev = m.to_seq
        bounds = {self.baseline_seq} | {m.to_seq for m in self.maps}
        for mk in self.markers.values():
            assert mk.seq in bounds, mk
            assert self.by_seq[mk.seq] is mk
        assert len(self.by_seq) == len(self.markers)


def promised_points(sim: SimVolume, policy: Policy, now: int) -> dict[int, str]:
    """The points the policy promises at ``now``, from the ground truth (every write and
    marker ever made), independently of how decide() works: seq -> why."""
    out: dict[int, str] = {}
    classes = policy.classes
    horizon = policy.horizon_ns
    if classes[0].granularity == EVERY_WRITE:
        for seq, ts in sim.all_writes:
            if now - ts <= classes[0].for_:
                out[seq] = "a write of the every-write class"
    bands: list[tuple[int, int, int | None]] = []
    newest = 0
    for c in classes:
        bands.append((c.granularity, newest, c.for_))
        newest = c.for_
    if policy.older == "keep":
        bands.append((classes[-1].granularity, horizon, None))
        if classes[-1].granularity == EVERY_WRITE:
            for seq, ts in sim.all_writes:
                if now - ts > horizon:
                    out[seq] = "a write kept every-write forever"
    for g, young, old in bands:
        if g == EVERY_WRITE:
            continue
        newest_in: dict[int, tuple[int, int]] = {}
        for mk in sim.all_markers:
            k = mk.ts_ns // g
            if k not in newest_in or mk.seq > newest_in[k][0]:
                newest_in[k] = (mk.seq, mk.ts_ns)
        for k, (seq, _) in newest_in.items():
            if now - (k + 1) * g >= young and (old is None or now - k * g <= old):
                out[seq] = f"the newest marker of interval {k} of {g // (60 * NS)}m"
    for mk in sim.all_markers:
        if mk.pinned:
            out[mk.seq] = f"pinned marker {mk.name}"
        elif not is_auto_marker(mk.name) and now - mk.ts_ns <= horizon:
            out[mk.seq] = f"named marker {mk.name}"
    return out
