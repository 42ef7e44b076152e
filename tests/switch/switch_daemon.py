"""Run the real daemon (``cdpswitch serve``) as a subprocess and drive it the way an
operator does: through ``cdpswitch shell`` one-shot commands and real iSCSI clients."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0
IQN = "iqn.2026-11.org.cdpswitch:vol0"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make deps` (Debian packages libiscsi-bin,"
                    " qemu-utils, qemu-block-extra)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(port: int, *, size: str = "64MiB", metrics_port: int | None = None) -> str:
    text = f"""\
volumes:
  vol0:
    size: {size}
targets:
  - iqn: {IQN}
    tpgs:
      - tag: 1
        portals: ["127.0.0.1:{port}"]
        luns:
          0: {{volume: vol0}}
"""
    if metrics_port is not None:
        text += f'metrics:\n  listen: "127.0.0.1:{metrics_port}"\n'
    return text


@dataclass
class Shell:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Daemon:
    data: Path
    port: int
    config: Path | None = None
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _pump: queue.Queue[str] | None = None
    _reader: threading.Thread | None = None

    def url(self, lun: int = 0, iqn: str = IQN) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{iqn}/{lun}"

    def start(self, *, expect_ready: bool = True) -> None:
        argv = [sys.executable, "-m", "switch.cli", "serve", "--data-dir", str(self.data)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        log = open(self.data.parent / f"{self.data.name}.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                     text=True, env={**os.environ, "CDPSWITCH_DATA": ""})
        log.close()
        if not expect_ready:
            return
        assert self.proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout

        def pump() -> None:  # a thread: select() cannot see lines a text stream buffered
            for line in stdout:
                lines.put(line)
            lines.put("")

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            self.output.append(line)
            if line.strip() == "ready":
                self._pump = lines
                return
        self.stop()
        raise AssertionError(f"daemon did not start:\n{''.join(self.output)}\n{self.log()}")

    def log(self) -> str:
        path = self.data.parent / f"{self.data.name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> int:
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=TIMEOUT)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def shell(self, *words: str, ok: bool = True) -> Shell:
        done = subprocess.run(
            [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(self.data),
             *words], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        result = Shell(done.returncode, done.stdout, done.stderr)
        if ok:
            assert done.returncode == 0, f"shell {words} failed:\n{done.stdout}{done.stderr}"
        return result


def qemu_io(url: str, *commands: str, ok: bool = True, read_only: bool = False) -> str:
    argv = [require("qemu-io"), "-f", "raw", *(["-r"] if read_only else [])]
    for c in commands:
        argv += ["-c", c]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    out = done.stdout + done.stderr
    if ok:
        assert done.returncode == 0 and "failed" not in out.lower(), f"{commands}: {out}"
    return out
