"""Retention policies and a volume's coverage as text for the shell.

The admin API answers with nested objects (a policy's classes, a volume's per-class
coverage, the scheduler's events); printed generically they came out as JSON on one
line. These turn them into the short tables and lines an operator reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from policies.schema import format_duration
from switch.textfmt import human_size, table

__all__ = ["coverage_lines", "policies_table", "policy_blocks", "reload_text", "seconds"]

def seconds(value: Any) -> str:
    """A duration in seconds as ``1d2h``; ``-`` when unknown."""
    if not isinstance(value, int | float):
        return "-"
    return format_duration(round(value * 1e9)) if value >= 1 else f"{value:.2g}s"


def _some(obj: Any) -> str:
    if not isinstance(obj, Mapping) or not obj:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in obj.items() if v is not None) or "-"


def _classes_inline(classes: Any) -> str:
    if not isinstance(classes, list) or not classes:
        return "-"
    return ", ".join(f"{c.get('name')} ({c.get('granularity')} for {c.get('for')})"
                     for c in classes if isinstance(c, Mapping))


def policies_table(items: Any) -> str:
    """``policies ls``: one line per policy."""
    if not isinstance(items, list) or not items:
        return "no policies"
    rows = [[str(p.get("name")), _classes_inline(p.get("classes")), str(p.get("older") or "-"),
             ", ".join(p.get("volumes") or []) or "-"] for p in items if isinstance(p, Mapping)]
    return table(["NAME", "CLASSES (KEEP FOR)", "OLDER", "VOLUMES"], rows)


def _policy_block(p: Mapping[str, Any]) -> str:
    lines = [f"{p.get('name')}: {p.get('description') or '(no description)'}"]
    classes = [c for c in p.get("classes") or [] if isinstance(c, Mapping)]
    rows = [[str(c.get("name")), str(c.get("granularity")), str(c.get("for"))] for c in classes]
    lines += ["  " + row for row in table(["CLASS", "KEEP", "FOR"], rows).splitlines()]
    lines += [f"  older than that: {p.get('older') or '-'}",
              f"  snapshots: {_some(p.get('snapshots'))}",
              f"  merge: {_some(p.get('merge'))}",
              f"  budget: {_some(p.get('budget'))}",
              f"  volumes: {', '.join(p.get('volumes') or []) or '-'}"]
    return "\n".join(lines)


def policy_blocks(result: Any) -> str:
    """``policies show``: every policy (with the file they came from) or one."""
    if isinstance(result, Mapping) and "policies" in result:
        head = (f"policies from {result['file']}" if result.get("file")
                else "built-in policies (no policy file configured)")
        items = [p for p in result.get("policies") or [] if isinstance(p, Mapping)]
        if not items:
            return f"{head}: none"
        return "\n\n".join([head, *(_policy_block(p) for p in items)])
    if isinstance(result, Mapping):
        return _policy_block(result)
    return "no policies"


def reload_text(result: Any) -> str:
    """``policies reload``: where from, and what changed."""
    where = (f"from {result.get('file')}" if isinstance(result, Mapping) and result.get("file")
             else "(no policy file configured: the built-in policies)")
    changed = result.get("changed") if isinstance(result, Mapping) else None
    if not changed:
        return f"Policies reloaded {where}: nothing changed"
    what = ", ".join(f"{name} {how}" for name, how in changed.items())
    return f"Policies reloaded {where}: {what}"


def _time(ns: Any) -> str:
    if not isinstance(ns, int):
        return "-"
    return datetime.fromtimestamp(ns / 1e9).isoformat(timespec="milliseconds")


def coverage_lines(p: Mapping[str, Any], *, events: int = 5) -> list[str]:
    """The policy part of ``volume status``: the promise against what history covers,
    per class, then the newest scheduler events."""
    name = p.get("name")
    if p.get("error"):
        return [f"policy          {name}: {p['error']}"]
    if "level" not in p:
        return [f"policy          {name} (history is kept until faded out by hand)"]
    budget = p.get("budget_bytes")
    lines = [
        f"policy          {name}: {p.get('level')}, covers {seconds(p.get('covered_s'))}"
        f" of {seconds(p.get('promised_s'))} promised",
        f"history         {_bytes(p.get('history_bytes'))} of a"
        f" {_bytes(budget) if budget is not None else 'unlimited'} budget",
        f"writes_refused  {p.get('writes_refused') or '-'}",
    ]
    lines += [f"message         {m}" for m in p.get("messages") or []]
    classes = [c for c in p.get("classes") or [] if isinstance(c, Mapping)]
    if classes:
        rows = [[str(c.get("class")),
                 "every write" if c.get("granularity_s") in (0, 0.0) else
                 seconds(c.get("granularity_s")) if c.get("granularity_s") is not None else "-",
                 seconds(c.get("promised_s")), seconds(c.get("covered_s")),
                 str(c.get("level")), str(c.get("points")), str(c.get("maps")),
                 _bytes(c.get("bytes"))] for c in classes]
        lines += ["  " + row for row in table(
            ["CLASS", "KEEP", "PROMISED", "COVERED", "LEVEL", "POINTS", "MAPS", "BYTES"],
            rows).splitlines()]
    recent = [e for e in p.get("events") or [] if isinstance(e, Mapping)][-events:]
    if recent:
        lines.append("recent policy events:")
        lines += [f"  {_time(e.get('time'))}  {e.get('action')}: {e.get('reason')}"
                  for e in recent]
    return lines


def _bytes(n: Any) -> str:
    return human_size(n) if isinstance(n, int) else "-"
