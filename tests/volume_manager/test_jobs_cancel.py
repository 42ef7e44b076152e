"""Cancelling long jobs between steps leaves a consistent, undoable volume."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from volume_manager import Volume, VolumeOptions
from volume_manager.jobs import STEP_BYTES, Cancelled


def _volume(tmp_path: Path) -> Volume:
    return Volume.create(str(tmp_path / "sec"), str(tmp_path / "p.img"), size=16 << 20,
                         options=VolumeOptions(commit_interval=None))


def test_cancelled_rewind_is_recorded_and_undoable(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    blocks = 3 * STEP_BYTES // 512  # three steps' worth of changed blocks
    vol.write(0, b"a" * blocks * 512)
    vol.mark("a")
    vol.write(0, b"b" * blocks * 512)
    before = vol.read(0, blocks)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 1:
            cancel.set()  # stop after the first step

    with pytest.raises(Cancelled):
        vol.rewind("a", progress=progress, cancel=cancel)
    step = STEP_BYTES // 512
    assert vol.read(0, step) == b"a" * step * 512          # the first step happened
    assert vol.read(step, blocks - step) == before[step * 512:]  # the rest did not
    assert "before-rewind-1" in vol.markers and "after-rewind-1" not in vol.markers
    vol.rewind("before-rewind-1")
    assert vol.read(0, blocks) == before
    vol.close()


def test_fade_cancel_is_honoured_only_before_it_starts(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    vol.write(0, b"x" * 4096)
    vol.mark("one")
    vol.write(0, b"y" * 4096)
    vol.mark("two")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        vol.fade("two", cancel=cancel)
    assert vol.baseline_seq == 0 and set(vol.markers) == {"one", "two"}
    with vol.view("one") as v:
        assert v.read(0, 8) == b"x" * 4096
    vol.close()
