"""A short, seeded atheris (libFuzzer) campaign over the sans-I/O connection and the real
LU (fuzz_connection_atheris.py): it must end without a crash. atheris ships wheels for
Linux on x86_64, where it is a test dependency; elsewhere the test says why it did not run.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RUNS = 8000


def test_atheris_campaign_finds_no_crash(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        if sys.platform == "linux" and platform.machine() == "x86_64":
            pytest.fail("atheris is not installed: run `make deps` (pip install -e .[test])")
        pytest.skip(f"atheris has no wheel for {sys.platform}/{platform.machine()}")
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz_connection_atheris.py"), f"-runs={RUNS}",
         "-max_len=2048", "-len_control=0", "-seed=7", f"-artifact_prefix={tmp_path}/"],
        # TMPDIR: libFuzzer leaves by _exit, so the script's temporary image is never
        # removed by the script itself; it goes to a directory pytest cleans up.
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    report = done.stderr[-3000:]
    assert done.returncode == 0, f"the fuzzer found a crash:\n{report}"
    assert f"Done {RUNS} runs" in done.stderr, report
    assert not list(tmp_path.glob("crash-*")), report
