"""Volume.read_span: where a read's blocks lie in the primary file, for sendfile.

A span must read back exactly what Volume.read returns, and there must be none where
read answers from elsewhere: unapplied writes (served from the log), a primary file
shorter than the volume, a file layer whose handles are not descriptors. Once the volume
closes, a span left over refuses to read rather than read whatever took its descriptor.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crashsim import CrashSimFiles  # tests/volume_manager/ (pytest puts it on sys.path)

from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileSpan, SpanSourceClosed
from volume_manager.errors import OutOfRangeError, VolumeClosedError

BS = 4096
NBLOCKS = 64


def make(tmp_path: Path, **kw: object) -> Volume:
    return Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=NBLOCKS * BS,
                         block_size=BS, options=VolumeOptions(commit_interval=None),
                         **kw)  # type: ignore[arg-type]  # fmt: skip


def test_span_reads_what_read_returns_once_writes_are_applied(tmp_path: Path) -> None:
    vol = make(tmp_path)
    try:
        data = os.urandom(NBLOCKS * BS)
        vol.write(0, data)
        assert vol.read_span(0, 4) is None  # unapplied: the log holds them
        vol.flush()
        span = vol.read_span(3, 5)
        assert isinstance(span, FileSpan) and span.nbytes == len(span) == 5 * BS
        assert span.read() == vol.read(3, 5) == data[3 * BS : 8 * BS]
        part = span[BS : 3 * BS]
        assert part.read() == data[4 * BS : 6 * BS]
        with pytest.raises(ValueError):
            span[::2]
    finally:
        vol.close()


def test_no_span_over_an_unapplied_write(tmp_path: Path) -> None:
    vol = make(tmp_path)
    try:
        vol.write(0, bytes([1]) * (NBLOCKS * BS))
        vol.flush()
        vol.write(10, bytes([2]) * BS)  # only block 10 is unapplied
        assert vol.read_span(10, 1) is None
        assert vol.read_span(8, 4) is None
        span = vol.read_span(11, 4)
        assert span is not None and span.read() == bytes([1]) * (4 * BS)
        vol.flush()
        span = vol.read_span(8, 4)
        assert span is not None and span.read() == vol.read(8, 4)
    finally:
        vol.close()


def test_no_span_past_the_end_of_a_short_primary(tmp_path: Path) -> None:
    """A primary file shorter than the volume reads as zeros past its end: read does that,
    sendfile would stop short."""
    vol = make(tmp_path)
    try:
        vol.write(0, bytes([7]) * (2 * BS))
        vol.flush()
        os.truncate(tmp_path / "vol.img", 4 * BS)
        assert vol.read_span(2, 4) is None
        assert vol.read(2, 4) == bytes(4 * BS)
        span = vol.read_span(0, 4)
        assert span is not None and span.read() == bytes([7]) * (2 * BS) + bytes(2 * BS)
    finally:
        vol.close()


@pytest.mark.parametrize("method", ["read_span", "read_view"])
def test_span_and_view_range_checks_like_read(tmp_path: Path, method: str) -> None:
    vol = make(tmp_path)
    fast = getattr(vol, method)
    try:
        with pytest.raises(OutOfRangeError):
            fast(NBLOCKS - 1, 2)
        with pytest.raises(OutOfRangeError):
            fast(-1, 1)
    finally:
        vol.close()
    with pytest.raises(VolumeClosedError):
        fast(0, 1)


def test_a_span_outliving_its_volume_refuses_to_read(tmp_path: Path) -> None:
    """Closing the volume closes the span's descriptor under its lock: a span still queued
    must not read (or send) from whatever file reuses that descriptor number."""
    vol = make(tmp_path)
    vol.write(0, bytes([3]) * BS)
    vol.flush()
    span = vol.read_span(0, 1)
    assert span is not None
    vol.close()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # may take the number
    try:
        os.write(other, b"secret" * 1000)
        with pytest.raises(SpanSourceClosed):
            span.read()
        with pytest.raises(SpanSourceClosed):
            span.send(other)
    finally:
        os.close(other)


def test_no_spans_or_views_on_the_crash_simulator(tmp_path: Path) -> None:
    """Its handles are not descriptors (and sendfile or a mapping would bypass its
    bookkeeping)."""
    (tmp_path / "vol").mkdir()
    sim = CrashSimFiles()
    vol = make(tmp_path, files=sim, catalog_hook=sim.catalog_hook)
    try:
        vol.write(0, bytes([5]) * BS)
        vol.flush()
        assert vol.read_span(0, 1) is None
        assert vol.read_view(0, 1) is None
        assert vol.read(0, 1) == bytes([5]) * BS
    finally:
        vol.close()
