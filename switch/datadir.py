"""The daemon's data directory: where things live in it, and the lock that keeps a second
daemon out of it.

Layout (every path relative to the data directory)::

    lock                 held (flock) by the running daemon; holds its PID
    admin.sock           the admin API (mode 0600)
    switch.yaml          the running configuration, saved after every change (mode 0600)
    volumes/NAME/        a volume's default home: primary.img and cdp/ (log, maps)
    images/NAME/         a writable image's scratch area
    shell_history        the interactive shell's history
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataDir", "DataDirBusy"]


class DataDirBusy(Exception):
    """Another daemon holds the data directory."""


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def running_config(self) -> Path:
        return self.root / "switch.yaml"

    @property
    def shell_history(self) -> Path:
        return self.root / "shell_history"

    def volume_home(self, name: str) -> Path:
        return self.root / "volumes" / name

    def image_home(self, name: str) -> Path:
        return self.root / "images" / name

    def resolve(self, path: str) -> Path:
        """A configured path: absolute as given, relative to the data directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def lock(self) -> int:
        """Take the directory's lock (created with the directory if needed); returns the
        descriptor to keep open while running. Raises DataDirBusy naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(f"data directory {self.root} is in use by another cdpswitch"
                              f" daemon (pid {holder}); stop it first or use another"
                              " --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
