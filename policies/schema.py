"""Retention policy files: YAML in, validated frozen models out.

A policy file names policies; a volume's configuration names the one it runs::

    policies:
      default:
        classes:                                  # newest history first
          - {name: recent, granularity: every write, for: 2h}
          - {name: quarter-hourly, granularity: 15m, for: 24h}
          - {name: hourly, granularity: 1h, for: 7d}
          - {name: daily, granularity: 1d, for: 30d}
        older: fade                               # or keep
        snapshots: {every: 5m, every_writes: 10000}
        merge: {after: 10m}
        budget: {max_percent: 80, on_full: fade_oldest}

Meaning (``decide.py`` is the code that acts on it):

* A *retention class* covers the history whose age lies between the previous class's
  ``for`` and its own; ``granularity`` is how many recoverable points it keeps there:
  ``every write``, or one point per interval. Intervals are aligned to the Unix epoch,
  so ``1d`` keeps the last point of each UTC day. Each class is coarser than the one
  before it, and its granularity a multiple of the previous one, so that the points one
  class keeps are among those the finer class kept.
* ``older``: what happens to history older than the last class: ``fade`` (the default)
  folds it into the baseline and frees its space; ``keep`` keeps it at the last class's
  granularity for as long as the volume lives.
* ``snapshots``: a marker every ``every_writes`` writes and/or every ``every`` (only when
  something was written since the last one). Operators add markers on demand.
* ``merge``: when the retention work (merges, fade-out of expired history) runs: after
  ``after_writes`` writes, ``after`` some time, at the times of day in ``schedule``
  (UTC, ``"HH:MM"``), whichever comes first; with none of them, at every scheduler tick.
* ``budget``: the most history (log segments and delta maps; the baseline copy of the
  volume is not counted) the volume's secondary may hold, as ``max_bytes`` and/or
  ``max_percent`` of the secondary's file system (the smaller wins), and ``on_full``:
  ``fade_oldest`` (fade out the oldest history first) or ``refuse_writes``.

Reading a file runs the same three passes as the switch's configuration: *read*
(:mod:`policies.yamlpos` keeps the line of every key), *shape* (pydantic; unknown keys
are errors) and *rules* across fields (class order, granularities). Every problem is
reported, one per bad thing, as ``FILE:LINE: field.path: message`` (:class:`PolicyError`),
and each policy of a file is checked on its own so that one broken policy does not hide
the problems of another.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from policies import yamlpos
from policies.yamlcheck import (
    Issue,
    Loc,
    YamlError,
    check_name,
    is_name,
    load_document,
    message,
    parse_size,
    read_text,
    shape_issues,
)

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_NAME",
    "EVERY_WRITE",
    "OLDER",
    "Budget",
    "MergeTriggers",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyIssue",
    "RetentionClass",
    "Snapshots",
    "diff_policies",
    "diff_policy_maps",
    "dump_policy",
    "format_duration",
    "format_size",
    "load_policies",
    "parse_duration",
    "parse_policies",
    "policy_problems",
    "summary",
]

NS = 1_000_000_000
DAY_NS = 86_400 * NS
EVERY_WRITE = 0  # the granularity of a class that keeps every write
EVERY_WRITE_TEXT = "every write"
DEFAULT_POLICY_NAME = "default"
OLDER = "older"  # the label of history older than the last class (reserved)
_DEFER_RULES = "defer_rules"  # validation context key: the loader reports rules itself


# --- errors -----------------------------------------------------------------------------


PolicyIssue = Issue


class PolicyError(YamlError):
    """The policy file is invalid; ``issues`` holds every problem found, sorted by line."""


# --- durations, sizes, times of day -----------------------------------------------------

_DURATION = re.compile(r"(?:[0-9]+[smhdw])+")
_DURATION_PART = re.compile(r"([0-9]+)([smhdw])")
_UNIT_NS = {"s": NS, "m": 60 * NS, "h": 3600 * NS, "d": DAY_NS, "w": 7 * DAY_NS}
_DURATION_HELP = "e.g. 90s, 15m, 2h, 30d or 1h30m (units s, m, h, d, w)"


def parse_duration(value: object) -> int:
    """Nanoseconds in a duration such as ``15m``, ``2h``, ``30d`` or ``1h30m`` (> 0)."""
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"a duration needs a unit, {_DURATION_HELP}")
        raise ValueError(f"expected a duration, {_DURATION_HELP}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration {value!r} is negative: durations are positive, e.g. 2h")
    if not _DURATION.fullmatch(text):
        raise ValueError(f"duration {value!r} is not understood: write {_DURATION_HELP}")
    total = sum(int(n) * _UNIT_NS[u] for n, u in _DURATION_PART.findall(text))
    if total <= 0:
        raise ValueError(f"duration {value!r} is zero: durations are positive")
    return total


def format_duration(ns: int) -> str:
    """``5400 s`` -> ``1h30m``; the inverse of :func:`parse_duration` (no weeks)."""
    if ns <= 0:
        return "0s"
    out = ""
    rest = ns // NS
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            out += f"{n}{unit}"
    return out or f"{ns}ns"


def _granularity(value: object) -> int:
    if isinstance(value, str) and " ".join(value.lower().split()) == EVERY_WRITE_TEXT:
        return EVERY_WRITE
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (or '{EVERY_WRITE_TEXT}')") from None


def _positive_size(value: object) -> int:
    """A budget size: a size (policies.yamlcheck.parse_size) above zero."""
    size = parse_size(value, example="512MiB or 10G")
    if size <= 0:
        raise ValueError(f"size {value!r} is not positive")
    return size


def format_size(n: int) -> str:
    """``10737418240`` -> ``10 GiB`` (one decimal when not whole)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _percent(value: object) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1].strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"percentage {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a percentage such as 80 or '80%'")
    if not 0 < value <= 100:
        raise ValueError(f"percentage {value} is not between 0 (excluded) and 100")
    return float(value)


_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _time_of_day(value: object) -> int:
    """``"02:30"`` (UTC) -> nanoseconds after midnight."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"expected a time of day in quotes, e.g. '14:30' (YAML reads an"
                         f" unquoted 14:30 as the number {14 * 60 + 30}; got {value})")
    if not isinstance(value, str) or not _TIME_OF_DAY.fullmatch(value.strip()):
        raise ValueError("expected a time of day 'HH:MM' (UTC, 00:00 to 23:59)")
    hours, minutes = value.strip().split(":")
    return (int(hours) * 3600 + int(minutes) * 60) * NS


def _format_time_of_day(ns: int) -> str:
    minutes = ns // NS // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"




Duration = Annotated[int, BeforeValidator(parse_duration)]
Granularity = Annotated[int, BeforeValidator(_granularity)]
Size = Annotated[int, BeforeValidator(_positive_size)]
Percent = Annotated[float, BeforeValidator(_percent)]
TimeOfDay = Annotated[int, BeforeValidator(_time_of_day)]
Name = Annotated[str, AfterValidator(check_name)]
Count = Annotated[int, Field(strict=True, ge=1)]


# --- models -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              populate_by_name=True)


class RetentionClass(_Model):
    """History aged between the previous class's ``for`` and this one's, kept at
    ``granularity`` (nanoseconds; 0 = every write)."""

    name: Name
    granularity: Granularity
    for_: Duration = Field(alias="for")

    @property
    def every_write(self) -> bool:
        return self.granularity == EVERY_WRITE


class Snapshots(_Model):
    """When the switch inserts markers by itself (operators add more on demand)."""

    every_writes: Count | None = None
    every: Duration | None = None


class MergeTriggers(_Model):
    """When retention work runs; with no trigger at all, at every scheduler tick."""

    after_writes: Count | None = None
    after: Duration | None = None
    schedule: list[TimeOfDay] = Field(default_factory=list)  # UTC, ns after midnight

    @property
    def any(self) -> bool:
        return self.after_writes is not None or self.after is not None or bool(self.schedule)


class Budget(_Model):
    """The most history the secondary may hold, and what happens at the limit."""

    max_bytes: Size | None = None
    max_percent: Percent | None = None
    on_full: Literal["fade_oldest", "refuse_writes"] = "fade_oldest"

    @model_validator(mode="after")
    def _some_limit(self) -> Self:
        if self.max_bytes is None and self.max_percent is None:
            raise ValueError("a budget needs max_bytes, max_percent or both")
        return self

    def limit(self, fs_bytes: int | None) -> int | None:
        """The budget in bytes (the smaller of the two limits); None when only a
        percentage is given and the file system's size is unknown."""
        limits = [] if self.max_bytes is None else [self.max_bytes]
        if self.max_percent is not None and fs_bytes is not None:
            limits.append(int(fs_bytes * self.max_percent / 100))
        return min(limits) if limits else None


class Policy(_Model):
    """A named retention policy (see the module docstring)."""

    description: str | None = None
    classes: list[RetentionClass] = Field(min_length=1)
    older: Literal["fade", "keep"] = "fade"
    snapshots: Snapshots = Field(default_factory=Snapshots)
    merge: MergeTriggers = Field(default_factory=MergeTriggers)
    budget: Budget | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, Mapping) and info.context.get(_DEFER_RULES):
            return self
        problems = policy_problems(self)
        if problems:
            raise ValueError("; ".join(f"{_describe(loc)}: {msg}" for loc, msg in problems))
        return self

    @property
    def horizon_ns(self) -> int:
        """Age of the oldest history the classes cover (the last class's ``for``)."""
        return self.classes[-1].for_


class _FileBase(_Model):
    """What every reading of a policy file holds: ``version`` and at least one policy."""

    version: Literal[1] = 1
    policies: dict[Name, Any]

    @field_validator("policies")
    @classmethod
    def _not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("no policies: define at least one")
        return value


class PolicyFile(_FileBase):
    """A whole policy file: ``version`` and the policies by name."""

    policies: dict[Name, Policy]


class _Classes(BaseModel):
    """Only the classes of a policy whose other parts are malformed, so that the rules
    between classes are still checked and reported in the same run."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)
    classes: list[RetentionClass] = Field(min_length=1)


class _FileShape(_FileBase):
    """The top level of a file, checked before each policy is checked on its own."""


# --- rules across fields ----------------------------------------------------------------



def policy_problems(policy: Policy) -> list[tuple[Loc, str]]:
    """Rules across fields, each as (location inside the policy, message); at most one
    problem per field."""
    out = _class_problems(policy.classes)
    every = policy.snapshots.every
    finest = next((c for c in policy.classes if c.granularity), None)
    if every is not None and finest is not None and every > finest.granularity:
        out.append((("snapshots", "every"),
                    f"markers every {format_duration(every)} cannot give class {finest.name!r}"
                    f" one point per {format_duration(finest.granularity)}"))
    return out


def _class_problems(classes: Sequence[RetentionClass]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for j, cls in enumerate(classes):
        if cls.name == OLDER:
            out.append((("classes", j, "name"),
                        f"class name {OLDER!r} is reserved for the history older than the"
                        " last class"))
        elif cls.name in seen:
            out.append((("classes", j, "name"),
                        f"class name {cls.name!r} is already used by classes[{seen[cls.name]}]"))
        else:
            seen[cls.name] = j
        gran = _granularity_text(cls.granularity)
        if j == 0:
            if cls.granularity > cls.for_:
                out.append((("classes", j, "granularity"),
                            f"granularity {gran} is longer than the history the class covers"
                            f" (for: {format_duration(cls.for_)})"))
            continue
        prev = classes[j - 1]
        if cls.for_ <= prev.for_:
            out.append((("classes", j, "for"),
                        f"class {cls.name!r} (for: {format_duration(cls.for_)}) overlaps class"
                        f" {prev.name!r} (for: {format_duration(prev.for_)}): list classes from"
                        " the newest history to the oldest, each 'for' longer than the last"))
        if cls.granularity == EVERY_WRITE:
            msg = (f"only the first class can keep every write (class {prev.name!r} before it"
                   f" keeps {_granularity_text(prev.granularity)})")
        elif cls.granularity <= prev.granularity:
            msg = (f"granularity {gran} is not coarser than that of class {prev.name!r}"
                   f" ({_granularity_text(prev.granularity)}): each class keeps fewer points"
                   " than the one before it")
        elif prev.granularity and cls.granularity % prev.granularity:
            msg = (f"granularity {gran} is not a multiple of that of class {prev.name!r}"
                   f" ({_granularity_text(prev.granularity)}): the points a class keeps must"
                   " be among those the class before it kept")
        elif cls.granularity > cls.for_:
            msg = (f"granularity {gran} is longer than the history the class covers"
                   f" (for: {format_duration(cls.for_)})")
        else:
            continue
        out.append((("classes", j, "granularity"), msg))
    return out


def _granularity_text(ns: int) -> str:
    return EVERY_WRITE_TEXT if ns == EVERY_WRITE else format_duration(ns)


def _describe(loc: Loc) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


# --- reading ----------------------------------------------------------------------------

def _explain(error: ErrorDetails, root: type[BaseModel], loc: Loc) -> str:
    if error["type"] == "too_short" and loc and loc[-1] == "classes":
        return "a policy needs at least one retention class"
    return message(error, root, loc)


def _shape_issues(exc: ValidationError, root: type[BaseModel], prefix: Loc,
                  doc: yamlpos.Document, filename: str) -> list[Issue]:
    return shape_issues(exc, root, doc, filename, prefix, _explain)


def parse_policies(text: str, filename: str) -> PolicyFile:
    """Validate the YAML ``text`` of a policy file; ``filename`` is used in messages only.

    Raises :class:`PolicyError` with every problem found.
    """
    doc, issues = load_document(text, filename, PolicyError)
    try:
        shape = _FileShape.model_validate({} if doc.data is None else doc.data)
    except ValidationError as exc:
        issues += _shape_issues(exc, _FileShape, (), doc, filename)
        raw = doc.data.get("policies") if isinstance(doc.data, dict) else None
        if not isinstance(raw, dict):
            raise PolicyError(issues) from None
        version = 1
        items = {k: v for k, v in raw.items() if isinstance(k, str) and is_name(k)}
    else:
        version, items = shape.version, shape.policies
    policies: dict[str, Policy] = {}
    for name, data in items.items():
        prefix: Loc = ("policies", name)
        try:
            policy = Policy.model_validate(data, context={_DEFER_RULES: True})
        except ValidationError as exc:
            issues += _shape_issues(exc, Policy, prefix, doc, filename)
            bad = {tuple(e["loc"][:2]) for e in exc.errors() if e["loc"][:1] == ("classes",)}
            if bad or not isinstance(data, dict):
                continue
            try:
                classes = _Classes.model_validate(data).classes
            except ValidationError:
                continue
            issues += _issues(_class_problems(classes), prefix, doc, filename)
            continue
        issues += _issues(policy_problems(policy), prefix, doc, filename)
        policies[name] = policy
    if issues:
        raise PolicyError(issues)
    return PolicyFile.model_validate({"version": version, "policies": policies})


def _issues(problems: list[tuple[Loc, str]], prefix: Loc, doc: yamlpos.Document,
            filename: str) -> list[PolicyIssue]:
    out = []
    for loc, text in problems:
        full = (*prefix, *loc)
        out.append(PolicyIssue(filename, doc.where.line_of(full), doc.where.describe(full),
                               text))
    return out


def load_policies(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and validate a policy file. Raises :class:`PolicyError` (also when the file
    cannot be read or is not UTF-8); a caller that keeps running policies keeps them."""
    filename = os.fspath(path)
    text = read_text(filename, PolicyError)
    return parse_policies(text, filename)


# --- showing ----------------------------------------------------------------------------


def dump_policy(policy: Policy) -> dict[str, Any]:
    """The policy as plain data written the way a file would write it (``15m``, not ns);
    :func:`parse_policies` reads it back to an equal policy."""
    out: dict[str, Any] = {}
    if policy.description is not None:
        out["description"] = policy.description
    out["classes"] = [{"name": c.name, "granularity": _granularity_text(c.granularity),
                       "for": format_duration(c.for_)} for c in policy.classes]
    out["older"] = policy.older
    snaps = {k: v for k, v in (("every_writes", policy.snapshots.every_writes),
                               ("every", _opt_duration(policy.snapshots.every))) if v is not None}
    if snaps:
        out["snapshots"] = snaps
    merge: dict[str, Any] = {k: v for k, v in (
        ("after_writes", policy.merge.after_writes),
        ("after", _opt_duration(policy.merge.after))) if v is not None}
    if policy.merge.schedule:
        merge["schedule"] = [_format_time_of_day(t) for t in policy.merge.schedule]
    if merge:
        out["merge"] = merge
    if policy.budget is not None:
        b = policy.budget
        budget: dict[str, Any] = {}
        if b.max_bytes is not None:
            budget["max_bytes"] = b.max_bytes
        if b.max_percent is not None:
            budget["max_percent"] = b.max_percent
        budget["on_full"] = b.on_full
        out["budget"] = budget
    return out


def _opt_duration(ns: int | None) -> str | None:
    return None if ns is None else format_duration(ns)


def summary(policy: Policy) -> str:
    """One line: ``every write for 2h, 15m for 24h, ...; then fade; markers every 5m; ...``."""
    parts = [f"{_granularity_text(c.granularity)} for {format_duration(c.for_)}"
             for c in policy.classes]
    text = ", ".join(parts) + ("; then fade out" if policy.older == "fade" else "; then keep")
    snaps = []
    if policy.snapshots.every is not None:
        snaps.append(f"every {format_duration(policy.snapshots.every)}")
    if policy.snapshots.every_writes is not None:
        snaps.append(f"every {policy.snapshots.every_writes} writes")
    text += "; markers " + (" or ".join(snaps) if snaps else "on demand only")
    m = policy.merge
    trig = []
    if m.after is not None:
        trig.append(f"after {format_duration(m.after)}")
    if m.after_writes is not None:
        trig.append(f"after {m.after_writes} writes")
    if m.schedule:
        trig.append("at " + ", ".join(_format_time_of_day(t) for t in m.schedule) + " UTC")
    text += "; merges " + (" or ".join(trig) if trig else "at every tick")
    b = policy.budget
    if b is None:
        text += "; no budget"
    else:
        limits = []
        if b.max_bytes is not None:
            limits.append(format_size(b.max_bytes))
        if b.max_percent is not None:
            limits.append(f"{b.max_percent:g}% of the file system")
        text += f"; budget {' and '.join(limits)}, then {b.on_full.replace('_', ' ')}"
    return text


def diff_policies(old: PolicyFile | None, new: PolicyFile) -> dict[str, str]:
    """What a reload changes: ``{name: "added" | "changed" | "removed"}``. A volume whose
    policy changed should get one ``decide(..., full=True)`` pass."""
    return diff_policy_maps({} if old is None else old.policies, new.policies)


def diff_policy_maps(before: Mapping[str, Policy], after: Mapping[str, Policy]
                     ) -> dict[str, str]:
    """:func:`diff_policies` over plain name -> policy mappings."""
    out = {n: "removed" for n in before if n not in after}
    for name, policy in after.items():
        if name not in before:
            out[name] = "added"
        elif before[name] != policy:
            out[name] = "changed"
    return dict(sorted(out.items()))


# The default policy; policies/examples/default.yaml writes the same one, commented
# (a test holds them equal).
DEFAULT_POLICY = Policy.model_validate({
    "description": "every write for 2 hours, then quarter-hourly, hourly and daily points"
                   " for 30 days",
    "classes": [
        {"name": "recent", "granularity": EVERY_WRITE_TEXT, "for": "2h"},
        {"name": "quarter-hourly", "granularity": "15m", "for": "24h"},
        {"name": "hourly", "granularity": "1h", "for": "7d"},
        {"name": "daily", "granularity": "1d", "for": "30d"},
    ],
    "older": "fade",
    "snapshots": {"every": "5m", "every_writes": 10000},
    "merge": {"after": "10m"},
    "budget": {"max_percent": 80, "on_full": "fade_oldest"},
})
