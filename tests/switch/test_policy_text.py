"""The shell's text for policies and coverage, for answers the end-to-end shell tests
cannot easily bring about (no policy, a policy that is gone, refused writes)."""

from __future__ import annotations

from switch.policy_text import coverage_lines, policy_blocks, reload_text, seconds


def test_seconds() -> None:
    assert [seconds(v) for v in (None, 0.25, 1, 90, 86_400 + 3600)] == [
        "-", "0.25s", "1s", "1m30s", "1d1h",
    ]  # fmt: skip


def test_coverage_without_a_policy_or_with_a_missing_one() -> None:
    assert coverage_lines({"name": "none", "events": []}) == [
        "policy          none (history is kept until faded out by hand)"
    ]
    assert coverage_lines({"name": "gold", "error": "no policy named 'gold' is loaded"}) == [
        "policy          gold: no policy named 'gold' is loaded"
    ]


def test_coverage_with_refused_writes_messages_and_events() -> None:
    lines = coverage_lines({
        "name": "tight", "level": "critical", "promised_s": 7200.0, "covered_s": 600.0,
        "history_bytes": 3 << 30, "budget_bytes": 3 << 30,
        "writes_refused": "budget full (on_full: refuse)", "messages": ["recent: 10m of 2h"],
        "classes": [{"class": "recent", "granularity_s": 0.0, "promised_s": 7200.0,
                     "covered_s": 600.0, "level": "critical", "points": 12, "maps": 11,
                     "bytes": 3 << 30}],
        "events": [{"time": 10**18 + i, "action": "Refuse", "reason": f"r{i}"}
                   for i in range(8)],
    })  # fmt: skip
    assert lines[0] == "policy          tight: critical, covers 10m of 2h promised"
    assert lines[1] == "history         3 GiB of a 3 GiB budget"
    assert lines[2] == "writes_refused  budget full (on_full: refuse)"
    assert lines[3] == "message         recent: 10m of 2h"
    assert lines[5].split() == ["recent", "every", "write", "2h", "10m", "critical", "12", "11",
                                "3", "GiB"]  # fmt: skip
    assert lines[6] == "recent policy events:"
    assert [line.split()[-1] for line in lines[7:]] == ["r3", "r4", "r5", "r6", "r7"]


def test_show_and_reload_texts() -> None:
    assert policy_blocks({"file": "/etc/p.yaml", "policies": []}) == (
        "policies from /etc/p.yaml: none"
    )
    assert reload_text({"file": "/etc/p.yaml", "changed": {"a": "added", "b": "removed"}}) == (
        "Policies reloaded from /etc/p.yaml: a added, b removed"
    )
