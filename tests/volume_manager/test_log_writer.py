"""With ``direct_log`` (the default) and a committer, a log writer thread writes the
buffered log out as it comes, and the write buffer keeps every slab until its records
are applied: a writer that finds it full waits for the group commit's apply to let
slabs go, which it does as it goes by them, not only at its end.

The primary's writes go through a gate (gates.py) that holds the apply at a copy while
the test looks; every byte still goes to the real files.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gates import WAIT, GatedFiles, in_thread  # tests/volume_manager/ (on sys.path)

from volume_manager import Volume, VolumeOptions
from volume_manager.logbuf import SLAB_BYTES

BS = 4096
MiB = 1 << 20
NBLOCKS = 16384  # 64 MiB
WRITES = 24  # 1 MiB each: three times the buffer


def make(tmp_path: Path, files: GatedFiles, **options: float) -> Volume:
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=NBLOCKS * BS,
                        block_size=BS, files=files,
                        options=VolumeOptions(buffer_bytes=2 * SLAB_BYTES, **options))  # type: ignore[arg-type]
    files.fh = vol._primary
    files.log_reads = 0  # opening reads the head of the log's last block
    return vol


def chunk(i: int) -> bytes:
    return bytes([i + 1]) * (MiB - 16) + i.to_bytes(16, "little")


def burst(vol: Volume) -> None:
    for i in range(WRITES):
        vol.write(i * (MiB // BS), chunk(i))


def wait_until(cond: object, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def check_primary(tmp_path: Path) -> None:
    data = (tmp_path / "vol.img").read_bytes()
    for i in range(WRITES):
        assert data[i * MiB : (i + 1) * MiB] == chunk(i), f"write {i}"


def test_a_writer_that_finds_the_buffer_full_waits_for_the_apply(tmp_path: Path) -> None:
    """Letting go of slabs before they are applied (as the page-cache path does) would
    make the apply read their records back from the log, on the disk."""
    files = GatedFiles()
    vol = make(tmp_path, files, commit_interval=0.05)
    try:
        assert vol._log_writer is not None
        files.shut()
        _, wrote = in_thread(lambda: burst(vol))
        assert files.wait_arrived(1), "no commit reached the primary"
        assert not wrote.wait(1.0), "the writer went past a full buffer"
        assert vol.writes < WRITES
        assert len(vol._slabs) <= vol._buffer_slabs + 1
        files.ungate()
        assert wrote.wait(WAIT)
        assert vol.buffer_full_waits >= 1 and vol.buffer_full_ns >= 0.9e9  # counted
        vol.flush()
        assert files.log_reads == 0, "records were read back from the log"
        check_primary(tmp_path)
    finally:
        files.ungate()
        vol.close()


def test_the_apply_lets_slabs_go_as_it_passes_them(tmp_path: Path) -> None:
    """A commit of a full buffer: once its first slab's records are copied, the waiting
    writer goes on, while the rest of the commit is still held at the gate."""
    files = GatedFiles()
    # No commit before the buffer is full: the first one covers all of it.
    vol = make(tmp_path, files, commit_interval=30.0, pending_soft_bytes=64 * MiB)
    try:
        files.shut()
        _, wrote = in_thread(lambda: burst(vol))
        assert files.wait_arrived(1), "a full buffer did not start a commit"
        assert not wrote.wait(0.5)
        held = vol.writes
        assert held >= 7, held  # the commit covers more than two slabs
        for _ in range(3):  # the first slab holds the segment header and 3 records
            files.permit()
        assert files.wait_arrived(4)  # the commit is held at its 4th copy
        assert wait_until(lambda: vol.writes > held), "the writer waited for the whole apply"
        assert files.arrived == 4 and not wrote.is_set()
        files.ungate()
        assert wrote.wait(WAIT)
        vol.flush()
        assert files.log_reads == 0
        check_primary(tmp_path)
    finally:
        files.ungate()
        vol.close()


def test_the_log_is_written_out_while_the_committer_is_held(tmp_path: Path) -> None:
    """The committer at an apply the disk holds up (here, the gate) does not hold up the
    log's write-out: the log writer goes on with it."""
    files = GatedFiles()
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=NBLOCKS * BS,
                        block_size=BS, files=files, options=VolumeOptions(commit_interval=0.05))
    files.fh = vol._primary
    try:
        files.shut()
        vol.write(0, chunk(0))
        assert files.wait_arrived(1), "no commit reached the primary"
        before = sum(files.log_written.values())
        for i in range(1, 9):
            vol.write(i * (MiB // BS), chunk(i))
        assert wait_until(lambda: sum(files.log_written.values()) >= before + 7 * MiB), \
            files.log_written
        assert all(name.startswith(("logw:", "commit:")) for name in files.log_written)
        assert files.arrived == 1  # the committer is still held at the same copy
        files.ungate()
        vol.flush()
        data = (tmp_path / "vol.img").read_bytes()
        for i in range(9):
            assert data[i * MiB : (i + 1) * MiB] == chunk(i)
    finally:
        files.ungate()
        vol.close()


def fill(vol: Volume) -> int:
    """Write 1 MiB chunks while the buffer has room; how many. None of them waits."""
    n = 0
    while vol.has_room():
        assert n < WRITES, "the buffer never filled"
        started = time.monotonic()
        vol.write(n * (MiB // BS), chunk(n))
        assert time.monotonic() - started < 0.5, "a write with room waited"
        n += 1
    return n


def test_a_caller_that_must_not_wait_is_called_back_when_there_is_room(
    tmp_path: Path,
) -> None:
    """``has_room`` turns false once the buffer is over its size with the apply held; a
    ``when_room`` callback comes once the apply lets slabs go, exactly once; with room,
    at once."""
    files = GatedFiles()
    vol = make(tmp_path, files, commit_interval=0.05)
    try:
        files.shut()
        written = fill(vol)
        assert len(vol._slabs) > vol._buffer_slabs
        calls: list[str] = []
        vol.when_room(lambda: calls.append(threading.current_thread().name))
        time.sleep(0.5)
        assert calls == [], "called back while the buffer was still full"
        assert not vol.has_room()
        files.ungate()
        assert wait_until(lambda: calls), "no call back once the apply let slabs go"
        assert calls[0].startswith("commit:")
        assert vol.buffer_full_waits == 1 and vol.buffer_full_ns >= 0.45e9  # counted
        vol.when_room(lambda: calls.append("now"))  # room: at once, in this thread
        assert calls[1:] == ["now"]
        vol.flush()
        time.sleep(0.1)
        assert len(calls) == 2
        data = (tmp_path / "vol.img").read_bytes()
        for i in range(written):
            assert data[i * MiB : (i + 1) * MiB] == chunk(i)
    finally:
        files.ungate()
        vol.close()


def test_a_room_wait_cancelled_is_never_called_back(tmp_path: Path) -> None:
    """A ``when_room`` caller that went away (a dropped connection) cancels: the volume
    lets its callback go at once, counts the time it waited, and never calls it; others
    waiting still are. Cancelling again, or what was never registered, says False."""
    files = GatedFiles()
    vol = make(tmp_path, files, commit_interval=0.05)
    try:
        files.shut()
        fill(vol)
        calls: list[str] = []

        def gone() -> None:
            calls.append("gone")

        def staying() -> None:
            calls.append("staying")

        vol.when_room(gone)
        vol.when_room(staying)
        time.sleep(0.2)
        assert vol.cancel_room_wait(gone)
        assert [w for w, _ in vol._room_waiters] == [staying]
        assert vol.buffer_full_ns >= 0.15e9  # the cancelled one's wait counts
        assert not vol.cancel_room_wait(gone)
        assert not vol.cancel_room_wait(lambda: None)
        files.ungate()
        assert wait_until(lambda: calls), "no call back once the apply let slabs go"
        vol.flush()
        time.sleep(0.1)
        assert calls == ["staying"]
        assert vol.buffer_full_waits == 2
    finally:
        files.ungate()
        vol.close()


def test_a_volume_that_goes_away_calls_back_those_waiting_for_room(tmp_path: Path) -> None:
    """Closing (here abandoning, as a crash would) a volume whose buffer is full calls
    back every ``when_room`` waiter; its next write then raises instead of waiting."""
    files = GatedFiles()
    vol = make(tmp_path, files, commit_interval=0.05)
    try:
        files.shut()
        fill(vol)
        called = threading.Event()
        vol.when_room(called.set)
        assert not called.wait(0.3)
        thread, _ = in_thread(vol.abandon)
        assert called.wait(WAIT), "no call back when the volume went away"
        assert vol.has_room()  # a write now raises at once
    finally:
        files.ungate()
    thread.join(WAIT)
