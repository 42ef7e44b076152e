"""bench/profiles.py's summary of py-spy's raw stacks (pure; py-spy itself is a bench
dependency and is not run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "profiles.py"
_SPEC = importlib.util.spec_from_file_location("bench_profiles", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
profiles = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = profiles  # its dataclasses look their module up there
_SPEC.loader.exec_module(profiles)

RAW = """\
thread (101): MainThread;Runner.run (asyncio/runners.py:118);Volume._append (vm/volume.py:551) 6
thread (101): MainThread;Runner.run (asyncio/runners.py:118);Volume._append (vm/volume.py:560) 2
thread (101): MainThread;Runner.run (asyncio/runners.py:118) 4
thread (102): commit:vol0;Volume._apply (vm/volume.py:1130) 5
thread (103): commit:vol1;Volume._apply (vm/volume.py:1131) 1
thread (104): ThreadPoolExecutor-0_3 1
thread (105): logw:vol0;Volume._write_slab (vm/volume.py:930) 1
not a stack line
"""


def test_samples_are_summed_by_thread_kind_and_by_function_without_line_numbers() -> None:
    p = profiles.summarize(RAW)
    assert p.samples == 20
    assert p.threads == {"MainThread": 0.6, "commit": 0.3, "ThreadPoolExecutor": 0.05,
                         "logw": 0.05}  # fmt: skip
    assert p.functions[0] == ("Volume._append (vm/volume.py)", 0.4)
    assert p.functions[1] == ("Volume._apply (vm/volume.py)", 0.3)
    assert ("Runner.run (asyncio/runners.py)", 0.2) in p.functions
    assert ("(no Python frame)", 0.05) in p.functions
    assert sum(share for _, share in p.functions) == pytest.approx(1.0)


def test_top_limits_the_functions_and_an_empty_profile_says_so() -> None:
    assert len(profiles.summarize(RAW, top=2).functions) == 2
    empty = profiles.summarize("")
    assert empty.samples == 0
    assert "no samples" in profiles.describe("x", empty)
    text = profiles.describe("1M-seq-write", profiles.summarize(RAW))
    assert "MainThread 60%, commit 30%" in text and "40.0%  Volume._append" in text
