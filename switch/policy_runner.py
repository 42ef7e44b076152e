"""The policy scheduler: runs each protected volume's retention policy.

Theory of operation:

- Policies come from the configuration's ``policies_file`` (relative paths are relative
  to the data directory) plus the built-in ``default``. A volume runs the policy its
  configuration names, ``default`` when it names none, or nothing with ``policy: none``.
  ``reload`` reads the file again; a file that does not validate changes nothing and the
  error (``FILE:LINE: field: message``) goes back to the operator.
- Every ``interval`` seconds (and on demand) a tick describes each volume as a
  ``policies.decide.Timeline``, asks ``decide`` for the actions and carries them out in
  order through the engine, in a worker thread (marks wait for a sync, merges and
  fade-outs do I/O). A volume busy with an operator's job (rewind, clone...) is skipped
  this tick. A failed merge skips the relabelling of its class (the next pass retries).
- Every action is an event: logged (structlog) and kept, newest last, for ``status``.
  Actions taken because the space budget was reached are logged as warnings, so history
  never shrinks silently.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from policies.decide import (
    Action,
    AllowWrites,
    Cause,
    CreateMarker,
    FadeBefore,
    Merge,
    RefuseWrites,
    RetentionPass,
    Segment,
    SetClass,
    Timeline,
    coverage,
    decide,
    timeline_view,
)
from policies.schema import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_NAME,
    Policy,
    diff_policy_maps,
    load_policies,
)
from volume_manager import Volume
from volume_manager import jobs as engine_jobs
from volume_manager.errors import EngineError

__all__ = ["NO_POLICY", "PolicyRunner", "timeline_of"]

log = structlog.get_logger("cdpswitch.policy")

NO_POLICY = "none"
DEFAULT_INTERVAL = float(os.environ.get("CDPSWITCH_POLICY_TICK", "5"))
EVENTS_KEPT = 50


@dataclass
class VolumeState:
    """What the scheduler remembers of one volume between ticks."""

    last_retention_ns: int | None = None
    last_retention_seq: int = 0
    policy: str | None = None  # the policy it ran last (a change means a full pass)
    events: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT))


def _decide_for(vol: Volume, state: VolumeState, policy: Policy, now: int,
                full: bool) -> list[Action]:
    return decide(timeline_of(vol, state), policy, now, full=full)


def timeline_of(vol: Volume, state: VolumeState | None = None) -> Timeline:
    """The engine's view of a volume, as the policy engine reads it."""
    segments = [Segment(i, first, size) for i, first, size in vol.segment_sizes()]
    markers = {m.seq: m for m in vol.markers.values()}
    fs_bytes: int | None = None
    fs_free: int | None = None
    with contextlib.suppress(OSError):
        st = os.statvfs(vol.directory)
        fs_bytes, fs_free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return Timeline(
        baseline_seq=vol.baseline_seq,
        baseline_ts_ns=vol.catalog.get_int("baseline_ts"),
        created_ns=vol.catalog.get_int("created_ns"),
        newest_seq=vol.seq,
        maps=[m.row for m in vol.maps],
        markers=markers,
        pinned_seqs=sorted(m.seq for m in vol.markers.values() if m.pinned),
        segments=segments,
        log_bytes=sum(s.bytes for s in segments),
        map_bytes=sum(m.row.bytes for m in vol.maps),
        segment_bytes=vol.options.segment_bytes,
        fs_bytes=fs_bytes,
        fs_free_bytes=fs_free,
        writes_refused=vol.writes_refused is not None,
        last_retention_ns=None if state is None else state.last_retention_ns,
        last_retention_seq=0 if state is None else state.last_retention_seq,
    )


class PolicyRunner:
    """Loads the policies and runs them on a timer (module docstring)."""

    def __init__(self, volumes: Callable[[], Mapping[str, tuple[Volume, str | None, bool]]],
                 *, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], int] = time.time_ns) -> None:
        # volumes(): name -> (volume, the policy name it asks for, busy with a job)
        self._volumes = volumes
        self.interval = interval
        self.clock = clock
        self.policies: dict[str, Policy] = {DEFAULT_POLICY_NAME: DEFAULT_POLICY}
        self.file: Path | None = None
        self.states: dict[str, VolumeState] = {}
        self._task: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()

    # --- policies -----------------------------------------------------------------------

    def load(self, path: Path | None) -> dict[str, str]:
        """Load a policy file (None: only the built-in default). Raises PolicyError and
        keeps the running policies if the file is invalid; returns what changed."""
        policies: dict[str, Policy] = {DEFAULT_POLICY_NAME: DEFAULT_POLICY}
        if path is not None:
            policies.update(load_policies(path).policies)
        changed = diff_policy_maps(self.policies, policies)
        self.policies, self.file = policies, path
        for state in self.states.values():
            if state.policy in changed:
                state.policy = None  # a full pass next tick
        return changed

    def resolve(self, name: str | None) -> Policy | None:
        """The policy a volume asking for ``name`` runs; KeyError for an unknown name."""
        if name == NO_POLICY:
            return None
        return self.policies[name or DEFAULT_POLICY_NAME]

    # --- running ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # a bug here must not stop protection of the others
                log.exception("policy tick failed")

    async def tick(self, only: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """One scheduler pass over every volume (or ``only``); returns the events."""
        out: dict[str, list[dict[str, Any]]] = {}
        async with self._tick_lock:
            for name, (vol, wanted, busy) in list(self._volumes().items()):
                if (only is not None and name != only) or busy:
                    continue
                try:
                    policy = self.resolve(wanted)
                except KeyError:
                    continue  # reported by status; the configuration check refuses it
                if policy is None:
                    continue
                state = self.states.setdefault(name, VolumeState())
                full = state.policy != (wanted or DEFAULT_POLICY_NAME)
                now = self.clock()
                # Off the event loop: with a long history, building the timeline takes
                # tens of milliseconds (71 ms at 100,000 maps), which would stall I/O.
                actions = await asyncio.to_thread(_decide_for, vol, state, policy, now, full)
                state.policy = wanted or DEFAULT_POLICY_NAME
                if actions:
                    out[name] = await asyncio.to_thread(self._execute, name, vol, state,
                                                        actions, now)
        return out

    def _execute(self, name: str, vol: Volume, state: VolumeState, actions: list[Action],
                 now: int) -> list[dict[str, Any]]:
        events = []
        failed_classes: set[str] = set()
        for action in actions:
            event: dict[str, Any] = {"time": now, "action": type(action).__name__,
                                     "cause": action.cause.value, "reason": action.reason}
            try:
                if isinstance(action, CreateMarker):
                    marker = vol.mark(action.name)
                    event.update(marker=marker.name, seq=marker.seq)
                elif isinstance(action, RetentionPass):
                    state.last_retention_ns, state.last_retention_seq = now, vol.seq
                    continue  # bookkeeping, not an event worth keeping
                elif isinstance(action, Merge):
                    if action.klass in failed_classes:
                        continue
                    row = vol.merge(f"seq:{action.from_seq}", f"seq:{action.to_seq}",
                                    klass=action.klass)
                    event.update(klass=action.klass, from_seq=row.from_seq,
                                 to_seq=row.to_seq, maps=action.maps)
                elif isinstance(action, SetClass):
                    if action.klass in failed_classes:
                        continue
                    n = vol.set_map_class(action.from_seq, action.to_seq, action.klass)
                    if not n:
                        continue
                    event.update(klass=action.klass, maps=n)
                elif isinstance(action, FadeBefore):
                    result = engine_jobs.fade(vol, action.point, cancel=threading.Event())
                    event.update(point=action.point, freed_bytes=result.bytes_freed,
                                 baseline_seq=result.baseline_seq)
                elif isinstance(action, RefuseWrites):
                    vol.refuse_writes(action.reason)
                elif isinstance(action, AllowWrites):
                    vol.refuse_writes(None)
            except EngineError as exc:
                if isinstance(action, Merge):
                    failed_classes.add(action.klass)
                event.update(failed=str(exc))
                log.warning("policy action failed", volume=name, **_loggable(event))
                state.events.append(event)
                events.append(event)
                continue
            if action.cause is Cause.BUDGET:
                log.warning("policy action (space budget)", volume=name, **_loggable(event))
            else:
                log.info("policy action", volume=name, **_loggable(event))
            state.events.append(event)
            events.append(event)
        return events

    # --- reporting ----------------------------------------------------------------------

    def report(self, name: str, vol: Volume, wanted: str | None) -> dict[str, Any]:
        """The policy part of ``volume.status``: coverage against the promise, events."""
        try:
            policy = self.resolve(wanted)
        except KeyError:
            return {"name": wanted, "error": f"no policy named {wanted!r} is loaded"}
        state = self.states.get(name)
        out: dict[str, Any] = {
            "name": (wanted or DEFAULT_POLICY_NAME) if policy is not None else NO_POLICY,
            "writes_refused": vol.writes_refused,
            "events": list(state.events) if state is not None else [],
        }
        if policy is None:
            return out
        cov = coverage(timeline_of(vol, state), policy, self.clock())
        out.update(
            level=cov.level.value, promised_s=cov.promised_ns / 1e9,
            covered_s=cov.covered_ns / 1e9, oldest_seq=cov.oldest_seq,
            history_bytes=cov.history_bytes, budget_bytes=cov.budget_bytes,
            messages=list(cov.messages),
            classes=[{
                "class": c.klass, "granularity_s": None if c.granularity_ns is None
                else c.granularity_ns / 1e9, "promised_s": c.promised_ns / 1e9,
                "covered_s": c.covered_ns / 1e9, "ratio": round(c.ratio, 3),
                "level": c.level.value, "oldest_seq": c.oldest_seq, "points": c.points,
                "maps": c.maps, "bytes": c.bytes} for c in cov.classes],
        )
        return out

    def view(self, name: str, vol: Volume, wanted: str | None) -> list[dict[str, Any]]:
        """The per-class part of ``volume.timeline``."""
        try:
            policy = self.resolve(wanted)
        except KeyError:
            return []
        if policy is None:
            return []
        classes = timeline_view(timeline_of(vol, self.states.get(name)), policy,
                                self.clock())
        return [{
            "class": c.klass, "granularity_s": None if c.granularity_ns is None
            else c.granularity_ns / 1e9,
            "points": [{"seq": p.seq, "marker": p.marker, "pinned": p.pinned,
                        "baseline": p.baseline} for p in c.points],
            "every_write": [list(r) for r in c.every_write], "maps": c.maps,
            "bytes": c.bytes} for c in classes]


def _loggable(event: Mapping[str, Any]) -> dict[str, Any]:
    return {("event_time" if k == "time" else k): v for k, v in event.items()}
