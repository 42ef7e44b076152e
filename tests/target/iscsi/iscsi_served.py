"""A cdpswitch iSCSI target in a subprocess (``python -m switch.iscsi_serve``) for the
tests that drive it with real clients, and a runner for those clients."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
IQN = "iqn.2026-11.org.cdpswitch:vol0"
TIMEOUT = 30.0  # bound on every wait, in seconds


CLIENTS = ("iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-io", "qemu-img")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make deps` (Debian packages libiscsi-bin, "
                    f"qemu-utils, qemu-block-extra)")  # fmt: skip
    return path


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}/0"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_served(directory: Path, size: int, *, options: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> Served:
    """Start the target; ``options`` are more command-line options, ``env`` more
    environment variables (CHAP secrets)."""
    log = open(directory / "server.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "switch.iscsi_serve", "--volume", str(directory / "vol"),
         "--primary", str(directory / "primary.img"), "--size", str(size), "--iqn", IQN,
         "--port", "0", *options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    log.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("ready "):
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()
        errors = (directory / "server.log").read_text()
        raise AssertionError(f"server did not start: {line!r}\n{errors}")
    return Served(proc, int(line.split()[1]), directory)


def run(*argv: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT) -> str:
    """Run a client; it must succeed. ``env`` adds environment variables."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout
