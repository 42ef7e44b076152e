"""Retention decisions, pure: a volume's timeline, its policy and "now" in; actions out.

Nothing here reads a clock, a file or the engine. The switch describes a volume as a
:class:`Timeline`, calls :func:`decide` on every scheduler tick and executes the actions
it returns, in order, through the engine; a test does the same against a model of the
engine and a simulated clock, so months of history take seconds.

Theory of operation
-------------------
*Points.* The recoverable points of a volume are its baseline, the boundary (``to_seq``)
of every delta map, every write inside a *granular* map (one no merge has touched) and
every write after the newest marker. Every marker sits on a boundary.

*Classes.* A boundary's age (``now - to_ts_ns``) puts it in a retention class: class ``i``
holds ages in ``(for[i-1], for[i]]``. Map timestamps grow with their sequence numbers, so
the classes cut the list of maps into consecutive slices, found by binary search. History
older than the last class is ``older``: faded out into the baseline (``older: fade``) or
kept at the last class's granularity (``older: keep``).

*Which boundaries a class keeps.* A class of granularity ``g`` keeps, in each interval
``[k*g, (k+1)*g)`` of the Unix epoch, the newest boundary it holds there, plus every
pinned marker, every named marker (not made by a policy; see :data:`AUTO_PREFIX`) younger
than the policy's horizon, and its own newest boundary. The maps between two kept
boundaries are merged into one; a merge never crosses a class border, so it only combines
maps of one class. A class that keeps ``every write`` merges nothing. Since each
granularity is a multiple of the previous one, the newest boundary of an interval stays
the newest of its sub-interval in every finer class it went through: what a coarser class
keeps, the finer classes kept.

*Incremental.* Every map carries the label of the class that last processed it (the
engine's ``maps.class`` column; the :class:`SetClass` action writes it). Within a class's
slice the maps already labelled with its name are merged as that class wants them; the
ones that just aged in, or were just made, form a run at the slice's newer end. A pass
walks each slice from that end only until it meets a map that carries the class's label,
so a tick costs ``O(C log N + T)`` for ``C`` classes, ``N`` maps and ``T`` maps touched
(merged, relabelled or faded), however long the history. After a policy change labels may
lie: call once with ``full=True``, which processes every map (``O(N)``).

*Triggers.* Snapshot triggers are checked on every tick. Merges and the fade-out of
expired history run in a *retention pass*, when a merge trigger fires (``after_writes``,
``after``, ``schedule``; with no trigger, every tick); :class:`RetentionPass` says that one
ran, so the caller records when. The budget is checked on every tick.

*Budget.* History (log segments and map files) is compared with the policy's budget.
``refuse_writes`` refuses writes at the budget and allows them again below 95% of it.
``fade_oldest`` fades out the oldest history until the estimate fits; segments are freed
whole, so the space left is within one segment of the budget. When the newest history
is still in the open interval a marker is made first and the fade goes to it. A pinned
marker is never faded past: if one blocks, writes are refused instead, so that space
stays bounded. Every action taken for the budget has cause ``BUDGET`` and a reason
naming the numbers, for the event log and ``status``.

What the switch does with the actions (in list order, one volume at a time):

* :class:`CreateMarker`: ``volume.mark(name)``;
* :class:`RetentionPass`: remember ``now`` and the newest seq as ``last_retention_*``;
* :class:`Merge`: ``volume.merge(f"seq:{from_seq}", f"seq:{to_seq}")``; on failure (an
  open image inside the range) log it and skip the :class:`SetClass` of that class;
* :class:`SetClass`: set the ``class`` of the maps inside the range (catalog and the
  in-memory rows);
* :class:`FadeBefore`: ``volume.fade(point)`` (a long job: in a worker), logging the
  bytes it freed;
* :class:`RefuseWrites` / :class:`AllowWrites`: host writes fail (a SCSI error) / work.

Call with ``full=True`` once when a volume starts running a policy (daemon start, or a
reload that changed it). Marker names starting with :data:`AUTO_PREFIX` belong to
policies: an operator's marker should not take one.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from policies.schema import (
    EVERY_WRITE,
    OLDER,
    Policy,
    format_duration,
    format_size,
)

__all__ = [
    "AUTO_PREFIX",
    "ERROR_RATIO",
    "RESUME_RATIO",
    "WARNING_RATIO",
    "Action",
    "AllowWrites",
    "Cause",
    "ClassCoverage",
    "ClassView",
    "Coverage",
    "CreateMarker",
    "FadeBefore",
    "Level",
    "MapLike",
    "MapSpan",
    "Marker",
    "MarkerLike",
    "Merge",
    "PointView",
    "RefuseWrites",
    "RetentionPass",
    "Segment",
    "SegmentLike",
    "SetClass",
    "Timeline",
    "auto_marker_name",
    "coverage",
    "decide",
    "is_auto_marker",
    "timeline_view",
]

AUTO_PREFIX = "auto-"  # markers a policy makes are named auto-<seq>; the others are "named"
WARNING_RATIO = 0.85   # coverage below this share of the promise: warning
ERROR_RATIO = 0.75     # below this: error
RESUME_RATIO = 0.95    # refuse_writes: writes are allowed again below this share of the budget


def is_auto_marker(name: str) -> bool:
    """True for a marker a policy made (``auto-<seq>``), False for one an operator named."""
    return name.startswith(AUTO_PREFIX) and name[len(AUTO_PREFIX):].isdigit()


def auto_marker_name(seq: int) -> str:
    return f"{AUTO_PREFIX}{seq}"


# --- what the switch tells us -----------------------------------------------------------


class MapLike(Protocol):
    """A delta map as decide() reads it; the engine's ``MapRow`` is one."""

    @property
    def from_seq(self) -> int: ...
    @property
    def to_seq(self) -> int: ...
    @property
    def to_ts_ns(self) -> int: ...
    @property
    def klass(self) -> str: ...
    @property
    def granular(self) -> bool: ...
    @property
    def entries(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class MarkerLike(Protocol):
    """A marker as decide() reads it; the engine's ``MarkerRow`` is one."""

    @property
    def name(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts_ns(self) -> int: ...
    @property
    def pinned(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class MapSpan:
    """A plain :class:`MapLike` (tests, simulator, benchmarks)."""

    from_seq: int
    to_seq: int
    to_ts_ns: int
    klass: str = ""
    granular: bool = True
    entries: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Marker:
    """A plain :class:`MarkerLike`."""

    name: str
    seq: int
    ts_ns: int
    pinned: bool = False

    @property
    def auto(self) -> bool:
        return is_auto_marker(self.name)


class SegmentLike(Protocol):
    """A log segment: its id, the seq of its first record and its size in bytes."""

    @property
    def id(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """A plain :class:`SegmentLike`."""

    id: int
    first_seq: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Timeline:
    """A volume's history as the policy engine sees it.

    ``maps`` are the live delta maps in sequence order (contiguous: each ``from_seq`` is
    the previous ``to_seq``, the first's is ``baseline_seq``), their ``to_ts_ns`` not
    decreasing; any sequence works, it is only indexed. ``markers`` maps a seq to the
    marker there. ``pinned_seqs`` lists the seqs of pinned markers (ascending).
    ``segments`` are the live log segments by id, the last one being written; with
    ``log_bytes`` (their total) and ``map_bytes`` (the map files' total) they measure the
    history held. ``fs_bytes`` is the size of the secondary's file system (for
    ``max_percent``). ``writes_refused`` says whether writes are refused now (after a
    :class:`RefuseWrites`); ``last_retention_*`` when the last :class:`RetentionPass`
    ran (None: never since the switch started).
    """

    baseline_seq: int
    baseline_ts_ns: int
    created_ns: int
    newest_seq: int
    maps: Sequence[MapLike]
    markers: Mapping[int, MarkerLike] = field(default_factory=dict)
    pinned_seqs: Sequence[int] = ()
    segments: Sequence[SegmentLike] = ()
    log_bytes: int = 0
    map_bytes: int = 0
    segment_bytes: int = 64 << 20
    fs_bytes: int | None = None
    fs_free_bytes: int | None = None
    writes_refused: bool = False
    last_retention_ns: int | None = None
    last_retention_seq: int = 0

    @property
    def last_boundary(self) -> tuple[int, int]:
        """(seq, ts) of the newest marker, or of the baseline when there is none."""
        if self.maps:
            m = self.maps[-1]
            return m.to_seq, m.to_ts_ns
        return self.baseline_seq, self.baseline_ts_ns

    @property
    def history_bytes(self) -> int:
        return self.log_bytes + self.map_bytes


# --- what the switch is asked to do -----------------------------------------------------


class Cause(enum.Enum):
    SNAPSHOT = "snapshot"    # a snapshot trigger fired
    RETENTION = "retention"  # retention classes: merges and labels
    EXPIRY = "expiry"        # history older than the policy keeps
    BUDGET = "budget"        # the space budget was reached: log it as an event


@dataclass(frozen=True, slots=True)
class CreateMarker:
    """Insert marker ``name`` (``volume.mark(name)``)."""

    name: str
    reason: str
    cause: Cause = Cause.SNAPSHOT


@dataclass(frozen=True, slots=True)
class RetentionPass:
    """A retention pass starts: record ``now`` and the newest seq as the last one."""

    reason: str
    cause: Cause = Cause.RETENTION


@dataclass(frozen=True, slots=True)
class Merge:
    """Merge the ``maps`` adjacent maps over (from_seq, to_seq], all of class ``klass``
    (``volume.merge("seq:FROM", "seq:TO")``); ``entries`` is the sum of their entries."""

    from_seq: int
    to_seq: int
    klass: str
    maps: int
    entries: int
    reason: str
    cause: Cause = Cause.RETENTION


@dataclass(frozen=True, slots=True)
class SetClass:
    """Label every map inside (from_seq, to_seq] with class ``klass``. Skip it if a
    :class:`Merge` of the same class failed in this list: the maps then stay unlabelled
    and the next pass tries again."""

    from_seq: int
    to_seq: int
    klass: str
    reason: str
    cause: Cause = Cause.RETENTION


@dataclass(frozen=True, slots=True)
class FadeBefore:
    """Fade history out up to ``point`` (``volume.fade(point)``): ``seq:N``, or the name
    of a marker a :class:`CreateMarker` earlier in the same list makes (then ``seq`` is
    None). ``freed_estimate`` is the bytes it should free (whole segments)."""

    point: str
    seq: int | None
    freed_estimate: int
    reason: str
    cause: Cause = Cause.EXPIRY


@dataclass(frozen=True, slots=True)
class RefuseWrites:
    """Refuse host writes (a SCSI error) until :class:`AllowWrites`."""

    reason: str
    cause: Cause = Cause.BUDGET


@dataclass(frozen=True, slots=True)
class AllowWrites:
    reason: str
    cause: Cause = Cause.BUDGET


Action = CreateMarker | RetentionPass | Merge | SetClass | FadeBefore | RefuseWrites | AllowWrites


# --- classes over the list of maps ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slice:
    """Maps ``[lo, hi)`` of the list are in class ``name`` (``index`` in the policy, or
    -1 for the history older than the last class)."""

    index: int
    name: str
    granularity: int | None  # None: nothing to keep (older: fade)
    lo: int
    hi: int
    newest_age: int
    oldest_age: int | None


def _slices(tl: Timeline, policy: Policy, now: int) -> list[_Slice]:
    """The class slices, newest first, then ``older``. O(C log N)."""
    maps = tl.maps
    out: list[_Slice] = []
    hi = len(maps)
    newest_age = 0
    for i, cls in enumerate(policy.classes):
        lo = bisect.bisect_left(maps, now - cls.for_, hi=hi, key=_ts)
        out.append(_Slice(i, cls.name, cls.granularity, lo, hi, newest_age, cls.for_))
        hi, newest_age = lo, cls.for_
    last = policy.classes[-1]
    keep = policy.older == "keep"
    out.append(_Slice(-1, OLDER, last.granularity if keep else None, 0, hi, newest_age, None))
    return out


def _ts(m: MapLike) -> int:
    return m.to_ts_ns


def _holds_age(s: _Slice, age: int) -> bool:
    """Does class slice ``s`` hold a point of this age? (The newest class also holds
    points from the future, should a clock be behind.)"""
    return (age > s.newest_age or s.index == 0) and (s.oldest_age is None
                                                     or age <= s.oldest_age)


# --- decide -----------------------------------------------------------------------------


def decide(timeline: Timeline, policy: Policy, now_ns: int, *, full: bool = False) -> list[Action]:
    """The actions to take now, in the order to take them (see the module docstring).

    ``full``: ignore the class labels and process every map (after a policy change).
    """
    tl = timeline
    actions: list[Action] = []
    slices = _slices(tl, policy, now_ns)
    marker = _snapshot(tl, policy, now_ns)
    if marker is not None:
        actions.append(marker)
    expiry: FadeBefore | None = None
    merges: list[Merge] = []
    due = "full pass" if full else _retention_due(tl, policy, now_ns)
    if due is not None:
        actions.append(RetentionPass(due))
        for s in slices:
            if s.granularity is not None:
                work = _class_pass(tl, policy, now_ns, s, full)
                merges += [a for a in work if isinstance(a, Merge)]
                actions += work
        expiry = _expiry_fade(tl, policy, slices[-1], "")
        if expiry is not None:
            actions.append(expiry)
    actions += _budget(tl, policy, now_ns, slices[-1], expiry, marker, merges, actions)
    return actions


def _snapshot(tl: Timeline, policy: Policy, now: int) -> CreateMarker | None:
    last_seq, last_ts = tl.last_boundary
    pending = tl.newest_seq - last_seq
    if pending <= 0:
        return None
    snaps = policy.snapshots
    if snaps.every_writes is not None and pending >= snaps.every_writes:
        reason = f"{pending} writes since the last marker (every {snaps.every_writes} writes)"
    elif snaps.every is not None and now - last_ts >= snaps.every:
        reason = (f"{format_duration(now - last_ts)} since the last marker"
                  f" (every {format_duration(snaps.every)})")
    else:
        return None
    return CreateMarker(auto_marker_name(tl.newest_seq + 1), reason)


def _retention_due(tl: Timeline, policy: Policy, now: int) -> str | None:
    last = tl.last_retention_ns
    if last is None:
        return "first pass"
    trig = policy.merge
    if not trig.any:
        return "every tick"
    if trig.after_writes is not None and tl.newest_seq - tl.last_retention_seq >= trig.after_writes:
        return f"{tl.newest_seq - tl.last_retention_seq} writes since the last pass"
    if trig.after is not None and now - last >= trig.after:
        return f"{format_duration(now - last)} since the last pass"
    day = 86_400 * 1_000_000_000
    for t in trig.schedule:
        occurrence = (now - t) // day * day + t  # the latest time of day t at or before now
        if occurrence > last:
            minutes = t // 60_000_000_000
            return f"scheduled at {minutes // 60:02d}:{minutes % 60:02d} UTC"
    return None


def _protected(tl: Timeline, policy: Policy, now: int, seq: int) -> bool:
    """Is the boundary at ``seq`` kept whatever the granularity: a pinned marker, or a
    named one younger than the policy's horizon?"""
    mk = tl.markers.get(seq)
    if mk is None:
        return False
    if mk.pinned:
        return True
    return not is_auto_marker(mk.name) and now - mk.ts_ns <= policy.horizon_ns


def _class_pass(tl: Timeline, policy: Policy, now: int, s: _Slice, full: bool) -> list[Action]:
    """Merges and labels for one class slice. Walks from the newer end down to the first
    map already labelled with the class (that one is included: the newest boundary it
    kept may now share an interval with newer ones)."""
    maps = tl.maps
    if s.lo >= s.hi:
        return []
    if full:
        start = s.lo
    else:
        j = s.hi - 1
        while j >= s.lo and maps[j].klass != s.name:
            j -= 1
        if j == s.hi - 1:
            return []  # nothing aged in or arrived since the last pass
        start = max(j, s.lo)
    out: list[Action] = []
    g = s.granularity
    if g is not None and g != EVERY_WRITE:
        reason = (f"class {s.name!r} keeps one point per {format_duration(g)}"
                  + (" (older than the policy's classes)" if s.index < 0 else ""))
        group = start
        entries = 0
        for j in range(start, s.hi):
            m = maps[j]
            entries += m.entries
            if (j == s.hi - 1 or m.to_ts_ns // g != maps[j + 1].to_ts_ns // g
                    or _protected(tl, policy, now, m.to_seq)):
                if j > group:
                    out.append(Merge(maps[group].from_seq, m.to_seq, s.name, j - group + 1,
                                     entries, reason))
                group = j + 1
                entries = 0
    out.append(SetClass(maps[start].from_seq, maps[s.hi - 1].to_seq, s.name,
                        f"aged into class {s.name!r}"))
    return out


def _fade_limit(tl: Timeline) -> int | None:
    """The newest seq a fade-out may reach: the oldest pinned marker (a fade-out to it
    keeps it, as the baseline's marker), or None when nothing is pinned."""
    i = bisect.bisect_left(tl.pinned_seqs, tl.baseline_seq)
    return tl.pinned_seqs[i] if i < len(tl.pinned_seqs) else None


def _freed_upto(tl: Timeline, n_maps: int, p: int) -> int:
    """Bytes a fade-out to ``p`` frees: the first ``n_maps`` map files and every log
    segment whose records are all at or before ``p`` (never the one being written)."""
    freed = sum(tl.maps[j].bytes for j in range(n_maps))
    segs = tl.segments
    for k in range(len(segs) - 1):
        if segs[k + 1].first_seq - 1 > p:
            break
        freed += segs[k].bytes
    return freed


def _expiry_fade(tl: Timeline, policy: Policy, older: _Slice, note: str) -> FadeBefore | None:
    """Fade out the history older than the last class (``older: fade``), up to the
    newest boundary past the horizon, never past a pinned marker."""
    if policy.older != "fade" or older.hi == 0:
        return None
    n = older.hi  # maps 0..n-1 are older than the horizon
    limit = _fade_limit(tl)
    if limit is not None and limit < tl.maps[n - 1].to_seq:
        n = bisect.bisect_left(tl.maps, limit, hi=n, key=_to_seq) + 1
        n = min(n, older.hi)
        if n <= 0 or tl.maps[n - 1].to_seq > limit:
            return None
    p = tl.maps[n - 1].to_seq
    if p <= tl.baseline_seq:
        return None
    freed = _freed_upto(tl, n, p)
    reason = (f"older than {format_duration(policy.horizon_ns)}, what the policy keeps"
              + (f" (pinned marker at seq:{limit} stops it there)"
                 if limit is not None and limit == p else "") + note)
    return FadeBefore(f"seq:{p}", p, freed, reason, Cause.EXPIRY)


def _to_seq(m: MapLike) -> int:
    return m.to_seq


def _budget(tl: Timeline, policy: Policy, now: int, older: _Slice, expiry: FadeBefore | None,
            marker: CreateMarker | None, merges: list[Merge],
            actions: list[Action]) -> list[Action]:
    budget = policy.budget
    limit = None if budget is None else budget.limit(tl.fs_bytes)
    out: list[Action] = []
    if budget is None or limit is None:
        if tl.writes_refused:
            out.append(AllowWrites("no space budget applies any more"))
        return out
    used = tl.history_bytes
    if used > limit and expiry is None:
        # Expired history goes first, even when no retention pass is due.
        expiry = _expiry_fade(tl, policy, older, " (early: the budget is reached)")
        if expiry is not None:
            out.append(expiry)
    after = used - (expiry.freed_estimate if expiry is not None else 0)
    state = (f"{format_size(used)} of history, budget {format_size(limit)}"
             f" ({100 * used / limit:.0f}%)")
    if after <= limit:
        resume = limit * RESUME_RATIO if budget.on_full == "refuse_writes" else limit
        if tl.writes_refused and after <= resume:
            out.append(AllowWrites(f"history back under the budget: {state}"))
        return out
    if budget.on_full == "refuse_writes":
        if not tl.writes_refused:
            out.append(RefuseWrites(f"budget reached: {state}; writes are refused until"
                                    " history is faded out or the budget is raised"))
        return out
    return out + _fade_for_budget(tl, now, limit, used, expiry, marker, merges, actions, state)


def _fade_for_budget(tl: Timeline, now: int, limit: int, used: int, expiry: FadeBefore | None,
                     marker: CreateMarker | None, merges: list[Merge], actions: list[Action],
                     state: str) -> list[Action]:
    """``fade_oldest``: the smallest fade-out that brings history under the budget.
    O(maps and segments it fades)."""
    out: list[Action] = []
    need = used - limit
    maps, segs = tl.maps, tl.segments
    pin = _fade_limit(tl)
    n = 0 if expiry is None or expiry.seq is None else \
        bisect.bisect_left(maps, expiry.seq, key=_to_seq) + 1  # faded by the expiry already
    map_bytes = sum(maps[j].bytes for j in range(n))
    seg_k = seg_bytes = freed = 0
    p: int | None = None
    while n < len(maps) and freed < need:
        m = maps[n]
        if pin is not None and m.to_seq > pin:
            break
        map_bytes += m.bytes
        n += 1
        p = m.to_seq
        while seg_k < len(segs) - 1 and segs[seg_k + 1].first_seq - 1 <= p:
            seg_bytes += segs[seg_k].bytes
            seg_k += 1
        freed = map_bytes + seg_bytes
    if freed < need and pin is None and tl.newest_seq > tl.last_boundary[0]:
        # All history up to the newest marker is not enough: the rest is in the open
        # interval. Make a marker (the snapshot's, if one is being made) and fade to it.
        if marker is None:
            marker = CreateMarker(auto_marker_name(tl.newest_seq + 1),
                                  f"budget reached: {state}; the history since the last"
                                  " marker must be faded out", Cause.BUDGET)
            out.append(marker)
        freed = tl.map_bytes + sum(s.bytes for s in segs[:-1])
        out.append(FadeBefore(marker.name, None, freed,
                              f"budget reached: {state}; fading out all history up to now",
                              Cause.BUDGET))
        _drop_merges(actions, None)
        if tl.writes_refused:
            out.append(AllowWrites(f"history faded out to fit the budget: {state}"))
        return out
    if p is not None:
        # A merge planned in this list may swallow p: fade to the merge's end instead.
        for mg in merges:
            if mg.from_seq < p < mg.to_seq:
                p = mg.to_seq
                freed = _freed_upto(tl, bisect.bisect_left(maps, p, key=_to_seq) + 1, p)
        age = max(0, now - maps[0].to_ts_ns)
        out.append(FadeBefore(f"seq:{p}", p, freed,
                              f"budget reached: {state}; fading out the oldest history, up to"
                              f" seq:{p} (the oldest was {format_duration(age)} old)",
                              Cause.BUDGET))
        _drop_merges(actions, p)
    if freed < need and pin is not None:
        if not tl.writes_refused:
            name = tl.markers[pin].name if pin in tl.markers else f"seq:{pin}"
            out.append(RefuseWrites(f"budget reached: {state}; pinned marker {name!r}"
                                    f" (seq:{pin}) holds history that would have to be faded"
                                    " out: unpin it or raise the budget; writes are refused"
                                    " until then"))
    elif tl.writes_refused:
        out.append(AllowWrites(f"history faded out to fit the budget: {state}"))
    return out


def _drop_merges(actions: list[Action], p: int | None) -> None:
    """Remove planned merges the budget's fade-out makes moot (all at or before ``p``;
    every one when ``p`` is None)."""
    actions[:] = [a for a in actions
                  if not (isinstance(a, Merge) and (p is None or a.to_seq <= p))]


# --- coverage ---------------------------------------------------------------------------


class Level(enum.Enum):
    OK = "ok"
    WARNING = "warning"  # covered < 85% of the promise
    ERROR = "error"      # covered < 75%


_LEVEL_ORDER = {Level.OK: 0, Level.WARNING: 1, Level.ERROR: 2}


@dataclass(frozen=True, slots=True)
class ClassCoverage:
    """One class: the window it promises now, the window actually recoverable, and what
    it holds. Ages are nanoseconds before now; the class holds ages in
    ``(newest_age_ns, oldest_age_ns]`` (``oldest_age_ns`` None: no limit)."""

    klass: str
    granularity_ns: int | None  # 0: every write; None: awaiting fade-out
    newest_age_ns: int
    oldest_age_ns: int | None
    promised_ns: int            # span of history the class promises now (short while young)
    covered_ns: int             # span of it still recoverable
    ratio: float                # covered / promised (1.0 when nothing is promised)
    level: Level
    oldest_seq: int | None      # the oldest recoverable point in the class
    oldest_ts_ns: int | None
    points: int                 # recoverable boundaries (markers, baseline) in the class
    maps: int
    bytes: int                  # map files, plus the class's share of the log (by seq)


@dataclass(frozen=True, slots=True)
class Coverage:
    """What ``status`` and the metrics report: per class, and for the whole volume."""

    classes: tuple[ClassCoverage, ...]
    promised_ns: int            # the window the policy promises now
    covered_ns: int             # the window actually covered (age of the oldest point)
    oldest_seq: int
    oldest_ts_ns: int
    level: Level                # the worst class
    history_bytes: int
    budget_bytes: int | None
    messages: tuple[str, ...]   # one line per class that is not ok


def _level(ratio: float) -> Level:
    if ratio < ERROR_RATIO:
        return Level.ERROR
    if ratio < WARNING_RATIO:
        return Level.WARNING
    return Level.OK


def coverage(timeline: Timeline, policy: Policy, now_ns: int) -> Coverage:
    """Promised against covered windows, per class. O(N + S) for the space figures."""
    tl = timeline
    history_age = max(0, now_ns - tl.created_ns)
    baseline_age = max(0, now_ns - tl.baseline_ts_ns)
    entries = []
    messages = []
    for s in _slices(tl, policy, now_ns):
        if s.index < 0 and policy.older == "fade":
            promised = covered = 0
        else:
            cap = history_age if s.oldest_age is None else min(history_age, s.oldest_age)
            top = baseline_age if s.oldest_age is None else min(baseline_age, s.oldest_age)
            promised = max(0, cap - s.newest_age)
            covered = min(promised, max(0, top - s.newest_age))
        ratio = covered / promised if promised else 1.0
        level = _level(ratio)
        base_in = _holds_age(s, baseline_age)
        if base_in:
            oldest: tuple[int | None, int | None] = (tl.baseline_seq, tl.baseline_ts_ns)
        elif s.lo < s.hi:
            oldest = (tl.maps[s.lo].to_seq, tl.maps[s.lo].to_ts_ns)
        else:
            oldest = (None, None)
        entries.append(ClassCoverage(
            s.name, s.granularity, s.newest_age, s.oldest_age, promised, covered, ratio,
            level, oldest[0], oldest[1], s.hi - s.lo + int(base_in), s.hi - s.lo,
            _slice_bytes(tl, s)))
        if level is not Level.OK:
            messages.append(f"class {s.name!r} covers {format_duration(covered)} of the"
                            f" {format_duration(promised)} it promises ({100 * ratio:.0f}%)")
    horizon = history_age if policy.older == "keep" else min(history_age, policy.horizon_ns)
    budget = policy.budget.limit(tl.fs_bytes) if policy.budget is not None else None
    worst = max((e.level for e in entries), key=_LEVEL_ORDER.__getitem__, default=Level.OK)
    return Coverage(tuple(entries), horizon, min(horizon, baseline_age), tl.baseline_seq,
                    tl.baseline_ts_ns, worst, tl.history_bytes, budget, tuple(messages))


def _slice_bytes(tl: Timeline, s: _Slice) -> int:
    if s.lo >= s.hi and not (s.index == 0 and tl.newest_seq > tl.last_boundary[0]):
        return 0
    total = sum(tl.maps[j].bytes for j in range(s.lo, s.hi))
    lo = tl.maps[s.lo].from_seq if s.lo < s.hi else tl.last_boundary[0]
    hi = tl.maps[s.hi - 1].to_seq if s.lo < s.hi else tl.last_boundary[0]
    if s.index == 0:
        hi = tl.newest_seq  # the open interval is the newest class's
    return total + _log_share(tl, lo, hi)


def _log_share(tl: Timeline, lo: int, hi: int) -> int:
    """The log bytes of records (lo, hi], prorated by sequence numbers per segment."""
    segs = tl.segments
    share = 0.0
    for k, seg in enumerate(segs):
        last = segs[k + 1].first_seq - 1 if k + 1 < len(segs) else tl.newest_seq
        span = last - seg.first_seq + 1
        if span <= 0:
            continue
        overlap = min(last, hi) - max(seg.first_seq, lo + 1) + 1
        if overlap > 0:
            share += seg.bytes * overlap / span
    return round(share)


# --- the timeline view ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointView:
    """A recoverable boundary: the baseline or a map's end, with its marker if any."""

    seq: int
    ts_ns: int
    marker: str | None
    pinned: bool
    auto: bool
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class ClassView:
    """One class of the ``timeline`` view: the points still recoverable in it, newest
    last. ``every_write`` lists inclusive seq ranges where every write is a point (granular
    maps, and the writes after the newest marker)."""

    klass: str
    granularity_ns: int | None  # 0: every write; None: awaiting fade-out
    newest_age_ns: int
    oldest_age_ns: int | None
    points: tuple[PointView, ...]
    every_write: tuple[tuple[int, int], ...]
    maps: int
    bytes: int


def timeline_view(timeline: Timeline, policy: Policy, now_ns: int) -> tuple[ClassView, ...]:
    """Per class, which points are still recoverable, at what granularity, and the space
    the class holds; newest class first, then ``older``. O(N)."""
    tl = timeline
    out = []
    baseline_age = now_ns - tl.baseline_ts_ns
    for s in _slices(tl, policy, now_ns):
        points: list[PointView] = []
        ranges: list[tuple[int, int]] = []
        if _holds_age(s, baseline_age):
            points.append(_point(tl, tl.baseline_seq, tl.baseline_ts_ns, baseline=True))
        for j in range(s.lo, s.hi):
            m = tl.maps[j]
            if m.granular and m.to_seq - m.from_seq > 1:
                ranges.append((m.from_seq + 1, m.to_seq))
            points.append(_point(tl, m.to_seq, m.to_ts_ns))
        last_seq = tl.last_boundary[0]
        if s.index == 0 and tl.newest_seq > last_seq:
            ranges.append((last_seq + 1, tl.newest_seq))
        out.append(ClassView(s.name, s.granularity, s.newest_age, s.oldest_age, tuple(points),
                             tuple(ranges), s.hi - s.lo, _slice_bytes(tl, s)))
    return tuple(out)


def _point(tl: Timeline, seq: int, ts: int, *, baseline: bool = False) -> PointView:
    mk = tl.markers.get(seq)
    if mk is None:
        return PointView(seq, ts, None, False, False, baseline)
    return PointView(seq, ts, mk.name, mk.pinned, is_auto_marker(mk.name), baseline)
