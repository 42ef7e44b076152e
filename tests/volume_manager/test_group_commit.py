"""Group commit: concurrent writers waiting in flush() share fsyncs.

The file layer here is the real one (OsFiles) with a counter on fdatasync;
nothing is faked.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from volume_manager import Volume, VolumeOptions
from volume_manager.fileio import OsFiles


class CountingFiles(OsFiles):
    def __init__(self) -> None:
        self.syncs = 0
        self._mu = threading.Lock()

    def fdatasync(self, fh: int) -> None:  # type: ignore[override]
        with self._mu:
            self.syncs += 1
        os.fdatasync(fh)


def test_concurrent_flushes_share_fsyncs(tmp_path: Path) -> None:
    files = CountingFiles()
    vol = Volume.create(
        str(tmp_path / "sec"),
        str(tmp_path / "p.img"),
        size=1 << 22,
        files=files,
        options=VolumeOptions(commit_interval=None),
    )
    threads, per_thread = 8, 40
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                lba = (t * per_thread + i) * 8
                vol.write(lba, bytes([t + 1]) * 4096)
                vol.flush()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    files.syncs = 0
    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    flushes = threads * per_thread
    # Each unshared flush costs two fdatasyncs (log segment and primary).
    print(f"{files.syncs} fdatasyncs for {flushes} flushes")
    assert files.syncs < flushes, (files.syncs, flushes)
    for t in range(threads):
        for i in range(per_thread):
            lba = (t * per_thread + i) * 8
            assert vol.read(lba, 8) == bytes([t + 1]) * 4096
    vol.close()


def test_flush_with_nothing_new_does_not_sync(tmp_path: Path) -> None:
    files = CountingFiles()
    vol = Volume.create(
        str(tmp_path / "sec"),
        str(tmp_path / "p.img"),
        size=1 << 20,
        files=files,
        options=VolumeOptions(commit_interval=None),
    )
    vol.write(0, b"x" * 512)
    vol.flush()
    before = files.syncs
    vol.flush()
    vol.flush()
    assert files.syncs == before
    vol.close()
