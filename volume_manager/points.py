"""POINT syntax (pure): how an operator names a moment in a volume's history.

A POINT is one of (DESIGN.md, "Points in time"):

* a marker name, e.g. ``before-upgrade``;
* ``seq:N``: exactly after write N;
* an ISO-8601 timestamp: the last write at or before it (a timestamp without a
  zone is local time, as ``date`` prints it);
* a relative time such as ``-15m``, ``-2h30m``, ``-90s``, ``-1d``: that long
  before now;
* ``now``: the newest write.

Marker names are restricted so that no name can be read as another kind of
POINT; :func:`check_marker_name` enforces that when a marker is made.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from volume_manager.errors import PointError

__all__ = [
    "AtMarker",
    "AtSeq",
    "AtTime",
    "Latest",
    "Point",
    "check_marker_name",
    "parse_point",
]


@dataclass(frozen=True, slots=True)
class AtMarker:
    name: str


@dataclass(frozen=True, slots=True)
class AtSeq:
    seq: int


@dataclass(frozen=True, slots=True)
class AtTime:
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Latest:
    pass


Point = AtMarker | AtSeq | AtTime | Latest

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SEQ = re.compile(r"seq:(\d+)")
_REL = re.compile(r"-((?:\d+[smhdw])+)")
_REL_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _looks_like_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def check_marker_name(name: str) -> None:
    """Raise :class:`PointError` unless ``name`` is a valid, unambiguous marker name."""
    if not _NAME.fullmatch(name):
        raise PointError(
            f"invalid marker name {name!r}: use 1-128 letters, digits, '_', '.', '-',"
            " not starting with '.' or '-'")
    if name == "now" or (name.startswith("seq") and _SEQ.fullmatch(name.replace("_", ":", 1))):
        raise PointError(f"marker name {name!r} is reserved")
    if _looks_like_time(name) or (name[0].isdigit() and name.isdigit()):
        raise PointError(f"marker name {name!r} would be ambiguous with a timestamp")


def parse_point(text: str, *, now_ns: int | None = None) -> Point:
    """Parse a POINT; relative times are resolved against ``now_ns`` (default: now)."""
    text = text.strip()
    if not text:
        raise PointError("empty POINT")
    if text == "now":
        return Latest()
    if m := _SEQ.fullmatch(text):
        return AtSeq(int(m.group(1)))
    if text.startswith("seq:"):
        raise PointError(f"bad POINT {text!r}: seq: takes a non-negative write number")
    if m := _REL.fullmatch(text):
        seconds = sum(int(n) * _UNIT_S[u] for n, u in _REL_PART.findall(m.group(1)))
        base = time.time_ns() if now_ns is None else now_ns
        return AtTime(base - seconds * 1_000_000_000)
    if text.startswith("-"):
        raise PointError(f"bad relative POINT {text!r}: use e.g. -90s, -15m, -2h30m, -1d")
    if _looks_like_time(text):
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.astimezone()  # naive means local time
        return AtTime(int(dt.timestamp() * 1_000_000) * 1000)
    if _NAME.fullmatch(text):
        return AtMarker(text)
    raise PointError(f"bad POINT {text!r}: expected a marker name, seq:N, a timestamp or -15m")
