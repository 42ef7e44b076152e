"""policies.schema: the policy file format, its one-clear-error-per-problem messages, the
example files and ``cdpswitch policy check``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from policies.schema import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_NAME,
    EVERY_WRITE,
    NS,
    Policy,
    PolicyError,
    diff_policies,
    dump_policy,
    format_duration,
    load_policies,
    parse_duration,
    parse_policies,
    summary,
)
from switch import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.yaml"))


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def issues_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policies(yml(text), "p.yaml")
    return [str(i) for i in info.value.issues]


GOOD = """
    policies:
      web:
        classes:
          - name: recent
            granularity: every write
            for: 2h
          - name: hourly
            granularity: 1h
            for: 2d
"""


# --- good files -------------------------------------------------------------------------


def test_a_minimal_policy_reads_with_its_defaults() -> None:
    pf = parse_policies(yml(GOOD), "p.yaml")
    web = pf.policies["web"]
    assert [(c.name, c.granularity, c.for_) for c in web.classes] == [
        ("recent", EVERY_WRITE, 2 * 3600 * NS), ("hourly", 3600 * NS, 2 * 86400 * NS)]
    assert web.older == "fade"
    assert web.budget is None
    assert web.snapshots.every is None and web.snapshots.every_writes is None
    assert not web.merge.any
    assert web.horizon_ns == 2 * 86400 * NS


def test_every_field_reads() -> None:
    pf = parse_policies(yml("""
        version: 1
        policies:
          db:
            description: the database
            classes:
              - {name: recent, granularity: every write, for: 1h30m}
              - {name: q, granularity: 15m, for: 1d}
              - {name: daily, granularity: 1d, for: 5w}
            older: keep
            snapshots: {every: 5m, every_writes: 10_000}
            merge: {after: 10m, after_writes: 500, schedule: ['02:00', '23:59']}
            budget: {max_bytes: 1.5G, max_percent: '80%', on_full: refuse_writes}
    """), "p.yaml")
    db = pf.policies["db"]
    assert db.classes[0].for_ == 90 * 60 * NS
    assert db.classes[2].for_ == 35 * 86400 * NS
    assert db.snapshots.every_writes == 10000
    assert db.merge.schedule == [2 * 3600 * NS, (23 * 3600 + 59 * 60) * NS]
    assert db.budget is not None
    assert db.budget.max_bytes == 3 << 29
    assert db.budget.limit(1000) == 800  # the smaller of the two limits
    assert db.budget.limit(None) == 3 << 29
    assert db.budget.on_full == "refuse_writes"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_file_validates(path: Path) -> None:
    pf = load_policies(path)
    assert pf.policies
    for policy in pf.policies.values():
        assert summary(policy)
    text = path.read_text()
    assert text.count("#") >= 5, "example files are commented"


def test_the_default_policy_is_the_default_example() -> None:
    assert {p.name for p in EXAMPLES} >= {"default.yaml"}
    pf = load_policies(ROOT / "policies" / "examples" / "default.yaml")
    assert pf.policies[DEFAULT_POLICY_NAME] == DEFAULT_POLICY
    assert [c.name for c in DEFAULT_POLICY.classes] == [
        "recent", "quarter-hourly", "hourly", "daily"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dump_reads_back_to_the_same_policy(path: Path) -> None:
    pf = load_policies(path)
    data = {"policies": {n: dump_policy(p) for n, p in pf.policies.items()}}
    assert parse_policies(yaml.safe_dump(data), "again.yaml") == pf


def test_durations() -> None:
    assert parse_duration("90s") == 90 * NS
    assert parse_duration("2h30m") == 9000 * NS
    assert parse_duration("1w") == 7 * 86400 * NS
    assert format_duration(9000 * NS) == "2h30m"
    assert format_duration(30 * 86400 * NS) == "30d"


def test_diff_policies_names_what_a_reload_changes() -> None:
    old = parse_policies(yml(GOOD), "a.yaml")
    new = parse_policies(yml(GOOD).replace("for: 2d", "for: 3d").replace("web:", "app:"),
                         "b.yaml")
    assert diff_policies(old, new) == {"app": "added", "web": "removed"}
    newer = parse_policies(yml(GOOD).replace("for: 2d", "for: 3d"), "c.yaml")
    assert diff_policies(old, newer) == {"web": "changed"}
    assert diff_policies(old, old) == {}
    assert diff_policies(None, old) == {"web": "added"}


# --- bad files: one clear error each ----------------------------------------------------

BAD = [
    ("wrong type: for is a number", "for: 2h", "for: 2",
     "p.yaml:6: policies.web.classes[0].for: a duration needs a unit, e.g. 90s, 15m, 2h,"
     " 30d or 1h30m (units s, m, h, d, w)"),
    ("wrong type: classes is a mapping",
     "classes:\n      - name: recent\n        granularity: every write\n        for: 2h\n"
     "      - name: hourly\n        granularity: 1h\n        for: 2d\n",
     "classes: {name: recent}\n",
     "p.yaml:3: policies.web.classes: expected a list, got a mapping"),
    ("wrong type: every_writes is a string", "  web:\n", "  web:\n    snapshots:"
     " {every_writes: ten}\n",
     "p.yaml:3: policies.web.snapshots.every_writes: expected an integer, got a string"),
    ("wrong type: granularity is a list", "granularity: 1h", "granularity: [1h]",
     "p.yaml:8: policies.web.classes[1].granularity: expected a duration, e.g. 90s, 15m, 2h,"
     " 30d or 1h30m (units s, m, h, d, w) (or 'every write')"),
    ("overlapping classes", "for: 2d", "for: 2h",
     "p.yaml:9: policies.web.classes[1].for: class 'hourly' (for: 2h) overlaps class"
     " 'recent' (for: 2h): list classes from the newest history to the oldest, each 'for'"
     " longer than the last"),
    ("unknown key", "        for: 2d\n", "        for: 2d\n        keep: all\n",
     "p.yaml:10: policies.web.classes[1].keep: unknown key; expected one of: name,"
     " granularity, for"),
    ("unknown key at the top", "policies:\n", "polices: {}\npolicies:\n",
     "p.yaml:1: polices: unknown key; expected one of: version, policies"),
    ("negative duration", "for: 2h", "for: -2h",
     "p.yaml:6: policies.web.classes[0].for: duration '-2h' is negative: durations are"
     " positive, e.g. 2h"),
    ("zero duration", "for: 2h", "for: 0m",
     "p.yaml:6: policies.web.classes[0].for: duration '0m' is zero: durations are positive"),
    ("granularity not coarser", "granularity: 1h", "granularity: every write",
     "p.yaml:8: policies.web.classes[1].granularity: only the first class can keep every"
     " write (class 'recent' before it keeps every write)"),
    ("granularity longer than the class", "granularity: 1h", "granularity: 3d",
     "p.yaml:8: policies.web.classes[1].granularity: granularity 3d is longer than the"
     " history the class covers (for: 2d)"),
    ("duplicate class name", "name: hourly", "name: recent",
     "p.yaml:7: policies.web.classes[1].name: class name 'recent' is already used by"
     " classes[0]"),
    ("duplicate key", "        for: 2d\n", "        for: 2d\n        for: 3d\n",
     "p.yaml:10: policies.web.classes[1].for: duplicate key (first at line 9); only one may"
     " be given"),
    ("budget without a limit", "  web:\n", "  web:\n    budget: {on_full:"
     " refuse_writes}\n", "p.yaml:3: policies.web.budget: a budget needs max_bytes,"
     " max_percent or both"),
    ("bad on_full", "  web:\n", "  web:\n    budget: {max_bytes: 1G, on_full:"
     " panic}\n", "p.yaml:3: policies.web.budget.on_full: expected 'fade_oldest' or"
     " 'refuse_writes'"),
    ("negative size", "  web:\n", "  web:\n    budget: {max_bytes: -1G}\n",
     "p.yaml:3: policies.web.budget.max_bytes: size '-1G' is negative"),
    ("unquoted time of day", "  web:\n", "  web:\n    merge: {schedule: [14:30]}\n",
     "p.yaml:3: policies.web.merge.schedule[0]: expected a time of day in quotes, e.g."
     " '14:30' (YAML reads an unquoted 14:30 as the number 870; got 870)"),
    ("markers too sparse for a class", "  web:\n", "  web:\n    snapshots:"
     " {every: 2h}\n", "p.yaml:3: policies.web.snapshots.every: markers every 2h cannot give"
     " class 'hourly' one point per 1h"),
    ("reserved class name", "name: hourly", "name: older",
     "p.yaml:7: policies.web.classes[1].name: class name 'older' is reserved for the"
     " history older than the last class"),
    ("bad older", "  web:\n", "  web:\n    older: delete\n",
     "p.yaml:3: policies.web.older: expected 'fade' or 'keep'"),
    ("invalid YAML", "policies:\n", "policies: [\n",
     "p.yaml:3: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow"
     " sequence at line 1)"),
]


@pytest.mark.parametrize(("what", "old", "new", "expected"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_input_gives_one_clear_error(what: str, old: str, new: str,
                                              expected: str) -> None:
    text = yml(GOOD)
    assert old in text, what
    lines = issues_of(text.replace(old, new, 1))
    assert lines == [expected]


def test_every_problem_is_reported_sorted_by_line_across_policies() -> None:
    lines = issues_of("""
        policies:
          a:
            classes:
              - {name: x, granularity: 1h, for: 2h}
              - {name: y, granularity: 40m, for: 3h}
            budget: {max_bytes: lots}
          b:
            classes: []
          c: 7
    """)
    assert lines == [
        "p.yaml:5: policies.a.classes[1].granularity: granularity 40m is not coarser than"
        " that of class 'x' (1h): each class keeps fewer points than the one before it",
        "p.yaml:6: policies.a.budget.max_bytes: size 'lots' is not understood: use bytes or a"
        " number with a unit K, M, G or T (binary, e.g. 512MiB or 10G)",
        "p.yaml:8: policies.b.classes: a policy needs at least one retention class",
        "p.yaml:9: policies.c: expected a mapping, got an integer",
    ]


def test_an_empty_file_or_no_policies_is_an_error() -> None:
    assert issues_of("") == ["p.yaml:1: policies: required key is missing"]
    assert issues_of("policies: {}") == ["p.yaml:1: policies: no policies: define at least one"]


def test_a_policy_built_in_python_is_checked_too() -> None:
    with pytest.raises(ValidationError, match=r"classes\[1\]\.for: class 'b' \(for: 1h\)"
                                              r" overlaps"):
        Policy.model_validate({"classes": [
            {"name": "a", "granularity": "every write", "for": "2h"},
            {"name": "b", "granularity": "1h", "for": "1h"}]})


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yml(GOOD).replace("for: 2h", "for: 2"))
    with pytest.raises(PolicyError, match=rf"^{path}:6: policies\.web\.classes\[0\]\.for:"):
        load_policies(path)
    with pytest.raises(PolicyError, match=r"missing\.yaml: cannot read: No such file"):
        load_policies(tmp_path / "missing.yaml")
    path.write_bytes(b"policies: {}\n# caf\xe9\n")
    with pytest.raises(PolicyError, match=rf"^{path}:2: the file is not UTF-8$"):
        load_policies(path)


# --- cdpswitch policy check -------------------------------------------------------------


def test_policy_check_accepts_a_good_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yml(GOOD))
    assert cli.main(["policy", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok, 1 policy: web\n"
    assert err == ""


def test_policy_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yml(GOOD).replace("for: 2h", "for: -2h").replace("for: 2d", "fore: 2d"))
    run = subprocess.run([sys.executable, "-m", "switch.cli", "policy", "check", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{path}:6: policies.web.classes[0].for: duration '-2h' is negative: durations are"
        " positive, e.g. 2h",
        f"{path}:7: policies.web.classes[1].for: required key is missing",
        f"{path}:9: policies.web.classes[1].fore: unknown key; expected one of: name,"
        " granularity, for",
    ]
