"""The group commit applies large records (64 KiB and up) to the primary without holding
the volume's lock, so the host's writes and reads go on meanwhile.

While the primary takes the copies, the records stay in the overlay (reads of their
blocks come from the log), and write-buffer slabs let go of meanwhile keep their bytes
until the pass has gone by them (SlabPool.hold, SlabPool.release_upto). The file layer
here is the real one with a gate in front of the primary's writes: it only holds the
apply at a copy while the test acts; every byte still goes to the real file. A stress
test runs a reader against a writer and a committer at full speed (it caught records
leaving the overlay before their copy in two runs of three).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gates import WAIT, GatedFiles, in_thread  # tests/volume_manager/ (on sys.path)

from volume_manager import Volume, VolumeOptions
from volume_manager.logbuf import SLAB_BYTES

BS = 4096
NBLOCKS = 4096  # 16 MiB


def make(tmp_path: Path, files: GatedFiles) -> Volume:
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=NBLOCKS * BS,
                        block_size=BS, files=files,
                        options=VolumeOptions(commit_interval=None, buffer_bytes=2 * SLAB_BYTES,
                                              pending_soft_bytes=64 << 20))  # fmt: skip
    files.fh = vol._primary
    return vol


def primary_bytes(tmp_path: Path, size: int = NBLOCKS * BS) -> bytes:
    return (tmp_path / "vol.img").read_bytes().ljust(size, b"\0")


def test_writes_and_reads_go_on_while_a_commit_applies(tmp_path: Path) -> None:
    files = GatedFiles()
    vol = make(tmp_path, files)
    try:
        a, c = os.urandom(16 * BS), os.urandom(BS)
        vol.write(0, a)
        files.shut()
        flusher, flushed = in_thread(vol.flush)
        assert files.wait_arrived(1), "the commit never reached the primary"
        # The apply is held at its first copy. The records are still in the overlay:
        assert vol.read(0, 16) == a
        assert vol.read_view(0, 1) is None
        # and a write does not wait for the pass (with the lock held, it would).
        _, wrote = in_thread(lambda: vol.write(2, c))
        assert wrote.wait(WAIT / 2), "a write waited for the commit's apply"
        assert not flushed.is_set()
        expect = a[: 2 * BS] + c + a[3 * BS :]
        assert vol.read(0, 16) == expect
        files.ungate()
        flusher.join(WAIT)
        assert flushed.is_set()
        assert vol.read(0, 16) == expect
        assert vol.read_view(2, 1) is None  # the newer write is not applied yet
        vol.flush()
        assert primary_bytes(tmp_path)[: 16 * BS] == expect
    finally:
        files.ungate()
        vol.close()


def test_slabs_let_go_during_an_apply_keep_their_bytes(tmp_path: Path) -> None:
    """Writes during the apply fill the buffer past its two slabs, so the slab holding
    the records being applied is written out and let go; reused at once, its bytes
    would be the newer records' by the time the apply copies them."""
    files = GatedFiles()
    vol = make(tmp_path, files)
    model = bytearray(NBLOCKS * BS)
    try:
        first = os.urandom(512 * BS)  # 2 MiB: one slab
        for i in range(0, 512, 16):
            vol.write(i, first[i * BS : (i + 16) * BS])
        model[: len(first)] = first
        files.shut()
        flusher, flushed = in_thread(vol.flush)
        assert files.wait_arrived(1)

        def more() -> None:
            for i in range(1024, 1024 + 2560, 16):  # 10 MiB elsewhere: three slabs on
                data = os.urandom(16 * BS)
                vol.write(i, data)
                model[i * BS : (i + 16) * BS] = data

        _, wrote = in_thread(more)
        assert wrote.wait(WAIT / 2), "writes waited for the commit's apply"
        assert not flushed.is_set()
        files.ungate()
        flusher.join(WAIT)
        assert flushed.is_set()
        vol.flush()
        assert primary_bytes(tmp_path) == model
        assert vol.read(0, NBLOCKS) == model
    finally:
        files.ungate()
        vol.close()


def test_slabs_an_apply_has_not_passed_are_not_reused_before_it_does(tmp_path: Path) -> None:
    """The pass frees the parked slabs it has gone by (SlabPool.release_upto) after each
    unlocked copy, and only those: the writer, filling the buffer while the pass waits at
    its second copy, must not get a slab holding records the pass has yet to copy."""
    files = GatedFiles()
    vol = make(tmp_path, files)
    files.shut()
    model = bytearray(NBLOCKS * BS)
    try:
        first = os.urandom(1536 * BS)  # 6 MiB of 64 KiB records: two slabs
        for i in range(0, 1536, 16):
            vol.write(i, first[i * BS : (i + 16) * BS])
        model[: len(first)] = first
        flusher, flushed = in_thread(vol.flush)

        def more() -> None:  # 10 MiB elsewhere: the buffer lets go of the first slabs
            for i in range(1536, 1536 + 2560, 16):
                data = os.urandom(16 * BS)
                vol.write(i, data)
                model[i * BS : (i + 16) * BS] = data

        assert files.wait_arrived(1), "the commit never reached the primary"
        _, wrote = in_thread(more)  # parked: the pass waits at its first copy
        assert wrote.wait(WAIT)
        files.permit()
        assert files.wait_arrived(2), "the pass did not reach its second copy"
        _, wrote = in_thread(more)  # takes whatever slabs are free by now
        assert wrote.wait(WAIT)
        files.ungate()
        flusher.join(WAIT)
        assert flushed.is_set()
        vol.flush()
        assert primary_bytes(tmp_path) == model
    finally:
        files.ungate()
        vol.close()


def test_reads_never_see_older_data_while_commits_apply_large_records(tmp_path: Path) -> None:
    """A writer rewrites 64 KiB regions (applied with the lock let go) while the
    committer runs every 10 ms and a reader checks each region it reads: whole, and no
    older than the last write to it that had returned before the read began."""
    region = 16  # blocks: 64 KiB, the unlocked apply's size
    regions = 64
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"),
                        size=regions * region * BS, block_size=BS,
                        options=VolumeOptions(commit_interval=0.01))  # fmt: skip
    done = [0] * regions
    stop = threading.Event()
    errors: list[str] = []

    def pattern(r: int, v: int) -> bytes:
        return (r.to_bytes(4, "little") + v.to_bytes(4, "little")) * (region * BS // 8)

    def reader() -> None:
        k = 0
        while not stop.is_set():
            r = k % regions
            k += 7
            floor = done[r]
            data = vol.read(r * region, region)
            v = int.from_bytes(data[4:8], "little")
            if data != (pattern(r, v) if v else bytes(len(data))) or v < floor:
                errors.append(f"region {r}: read version {v}, floor {floor}")
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for v in range(1, 3001):
            r = (v * 13) % regions
            vol.write(r * region, pattern(r, v))
            done[r] = v
        stop.set()
        t.join(WAIT)
        assert not errors, errors
        vol.flush()
        image = primary_bytes(tmp_path, regions * region * BS)
        for r in range(regions):
            assert image[r * region * BS : (r + 1) * region * BS] == pattern(r, done[r])
    finally:
        stop.set()
        vol.close()
