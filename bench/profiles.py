"""Profiles of a running target process with py-spy, for the benchmarks' ``--profile``.

``record(pid, output, run)`` samples the process with ``py-spy record`` (raw collapsed
stacks, one line per distinct stack: ``thread (TID): NAME;frame;...;frame COUNT``) for as
long as ``run()`` takes, without pausing it (``--nonblocking``); ``summarize`` turns the
stacks into each thread's share of the samples and the Python functions the samples were
in (their own time: a C call made from a function, a ``memmove`` or a system call, counts
as the function's). py-spy samples only threads that are running, so an idle thread adds
nothing. It needs ptrace rights over the process (root, or CAP_SYS_PTRACE).

py-spy is a bench dependency (``pip install -e '.[bench]'``, which ``make bench-deps``
runs).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
RATE = 250  # samples per second
_THREAD = re.compile(r"thread \(\d+\): (.*)")
_LINE = re.compile(r":\d+\)$")  # the line number in "func (file.py:123)"


@dataclass
class Profile:
    samples: int
    threads: dict[str, float] = field(default_factory=dict)  # name -> share of samples
    functions: list[tuple[str, float]] = field(default_factory=list)  # by own share


def executable() -> str:
    """py-spy from PATH, else from beside this Python (a venv's bin)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("py-spy not found: run `make bench-deps` (pip install -e '.[bench]')")
    return found


def thread_kind(name: str) -> str:
    """A thread's name without what tells one of its kind from another: ``commit:vol0``
    and ``commit:vol1`` are both ``commit``, ``ThreadPoolExecutor-0_3`` is
    ``ThreadPoolExecutor``."""
    return re.split(r"[:\-]", name, maxsplit=1)[0] or name


def summarize(raw: str, top: int = 8) -> Profile:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        head = _THREAD.match(frames[0])
        threads[thread_kind(head.group(1)) if head else "?"] += count
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame)"
        own[_LINE.sub(")", leaf)] += count
        total += count
    if not total:
        return Profile(0)
    return Profile(
        total,
        {name: n / total for name, n in threads.most_common()},
        [(name, n / total) for name, n in own.most_common(top)],
    )


def record(pid: int, output: Path, run: Callable[[], T]) -> tuple[T, Profile]:
    """``run()``'s result, and the profile of process ``pid`` while it ran (the raw
    stacks are kept in ``output``)."""
    spy = subprocess.Popen(
        [executable(), "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
         "--threads", "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the run starts
    try:
        result = run()
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, err = spy.communicate(timeout=60)
    if not output.exists():
        sys.exit(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
    return result, summarize(output.read_text())


def describe(name: str, profile: Profile) -> str:
    """The profile as a few lines of text."""
    if not profile.samples:
        return f"  profile {name}: no samples"
    threads = ", ".join(f"{t} {share:.0%}" for t, share in profile.threads.items())
    lines = [f"  profile {name} (py-spy, {RATE} Hz, {profile.samples} samples): {threads}"]
    lines += [f"    {share:6.1%}  {func}" for func, share in profile.functions]
    return "\n".join(lines)
