"""A file layer that holds writes to one file at a gate while a test acts (shut, permit
one at a time, or open), and a helper to run a call in a thread. The real file layer
does the I/O: every byte still goes to the real file."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from volume_manager.fileio import OsFiles

WAIT = 10.0


class GatedFiles(OsFiles):
    """OsFiles, with writes to one file (``fh``) waiting while the gate is shut, each
    for a permit: the test lets them through one at a time or all at once."""

    def __init__(self) -> None:
        self.fh = -1
        self.gated = False
        self.permits = 0
        self.arrived = 0  # writes that met the gate shut
        self.cond = threading.Condition()
        self.log_handles: set[int] = set()
        self.log_reads = 0  # preads of log segments
        self.log_written: dict[str, int] = {}  # bytes written to the log, by thread name

    def open(self, path: str, **kw: bool) -> int:  # type: ignore[override]
        fh = super().open(path, **kw)
        if path.endswith(".seg"):
            self.log_handles.add(fh)
        return fh

    def pread(self, fh: int, length: int, offset: int) -> bytes:
        if fh in self.log_handles:
            self.log_reads += 1
        return super().pread(fh, length, offset)

    def pwritev(self, fh: int, buffers: list, offset: int) -> int:  # type: ignore[override]
        n = super().pwritev(fh, buffers, offset)
        if fh in self.log_handles:
            name = threading.current_thread().name
            self.log_written[name] = self.log_written.get(name, 0) + n
        return n

    def pwrite(self, fh: int, data: object, offset: int) -> int:  # type: ignore[override]
        if fh == self.fh:
            with self.cond:
                if self.gated:
                    self.arrived += 1
                    self.cond.notify_all()
                    self.cond.wait_for(lambda: not self.gated or self.permits > 0, WAIT)
                    if self.gated:
                        self.permits -= 1
        return os.pwrite(fh, data, offset)  # type: ignore[arg-type]

    def shut(self) -> None:
        with self.cond:
            self.gated = True

    def wait_arrived(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.arrived >= n, WAIT)

    def permit(self) -> None:
        with self.cond:
            self.permits += 1
            self.cond.notify_all()

    def ungate(self) -> None:
        with self.cond:
            self.gated = False
            self.cond.notify_all()


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done
