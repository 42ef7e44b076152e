"""The write buffer's slab pool (logbuf.SlabPool): reuse, holds, idle and trim, alone and
in a volume whose committer lets the buffer's memory go when idle.

Real anonymous mappings and files; ``mapped`` counts the fresh mappings a pool made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from volume_manager import Volume, VolumeOptions
from volume_manager.logbuf import SLAB_BYTES, Slab, SlabPool


def _slab(pool: SlabPool, last_seq: int) -> Slab:
    slab = pool.take(1, 3, 0, SLAB_BYTES)
    slab.last_seq = last_seq
    return slab


def test_a_slab_given_back_is_reused_not_mapped_again() -> None:
    pool = SlabPool(4)
    a = _slab(pool, 1)
    pool.give(a)
    b = _slab(pool, 2)
    assert b.mem is a.mem
    assert pool.mapped == 1


def test_a_hold_parks_slabs_until_released() -> None:
    pool = SlabPool(4)
    a = _slab(pool, 1)
    pool.hold()
    pool.give(a)
    assert pool.parked and len(pool) == 0
    b = _slab(pool, 2)
    assert b.mem is not a.mem  # a's bytes stay for the holder
    pool.release()
    assert not pool.parked and len(pool) == 1
    assert _slab(pool, 3).mem is a.mem


def test_release_upto_frees_the_slabs_a_pass_has_gone_by() -> None:
    pool = SlabPool(8)
    slabs = [_slab(pool, seq) for seq in (10, 20, 30)]
    pool.hold()
    for slab in slabs:
        pool.give(slab)
    pool.release_upto(20)  # records up to 20 are done: the first two are free
    assert len(pool) == 2 and pool.parked
    reused = {id(_slab(pool, 0).mem), id(_slab(pool, 0).mem)}
    assert reused == {id(slabs[0].mem), id(slabs[1].mem)}
    assert _slab(pool, 0).mem is not slabs[2].mem  # still parked: mapped afresh
    pool.release()
    assert not pool.parked and len(pool) == 1


def test_idle_slabs_are_kept_for_reuse_and_hold_what_is_written_after() -> None:
    pool = SlabPool(4)
    slabs = [_slab(pool, i) for i in range(3)]
    for slab in slabs:
        slab.view[:5] = b"older"
        pool.give(slab)
    assert pool.hot
    pool.idle()
    assert not pool.hot and len(pool) == 3
    again = [_slab(pool, i) for i in range(3)]
    assert pool.mapped == 3
    for i, slab in enumerate(again):  # a page the kernel took back reads as zeros:
        slab.view[: SLAB_BYTES : 4096] = bytes([i + 1]) * (SLAB_BYTES // 4096)
    for i, slab in enumerate(again):  # what is written after is what is read
        assert bytes(slab.view[: SLAB_BYTES : 4096]) == bytes([i + 1]) * (SLAB_BYTES // 4096)
    pool.give(again[0])
    assert pool.hot  # given back after idle: its pages are in use again


def test_trim_lets_go_of_all_but_the_kept() -> None:
    pool = SlabPool(4)
    for slab in [_slab(pool, i) for i in range(3)]:
        pool.give(slab)
    pool.idle()
    pool.trim(1)
    assert len(pool) == 1 and not pool.hot
    pool.trim(0)
    assert len(pool) == 0


def test_slabs_mapped_ahead_are_taken_before_any_is_mapped_and_never_past_the_keep() -> None:
    pool = SlabPool(2)
    made = [SlabPool.fresh() for _ in range(3)]
    assert [pool.add(m) for m in made] == [True, True, False]
    slab = pool.take(1, 3, 0, SLAB_BYTES)
    assert slab.mem is made[1] and pool.mapped == pool.mapped_ahead == 2
    slab.view[-5:] = b"fresh"
    assert bytes(slab.view[-5:]) == b"fresh"


# ----------------------------------------------------------------- in a volume
def _wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_volume_keeps_its_buffer_between_bursts_and_lets_it_go_when_idle_long(
        tmp_path: Path) -> None:
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=64 << 20,
                        block_size=4096,
                        options=VolumeOptions(commit_interval=0.02, buffer_keep_seconds=1.0))
    try:
        def burst(v: int, mib: int) -> None:
            for i in range(mib):
                vol.write(i * 256, bytes([v]) * (1 << 20))
            vol.flush()

        burst(1, 24)  # six slabs and more, and eight mapped ahead
        pool = vol._pool
        assert _wait_for(lambda: not vol._slabs_asked and not pool.hot and len(pool) >= 8), \
            "the buffer was not kept"
        first = pool.mapped
        burst(2, 8)  # two slabs: taken from those kept, none mapped anew
        assert pool.mapped == first, "the second burst mapped its buffer afresh"
        assert vol.read(0, 8 * 256) == bytes([2]) * (8 << 20)
        assert _wait_for(lambda: len(pool) <= 1), "the buffer stayed after a long idle"
    finally:
        vol.close()


def test_the_preparer_maps_slabs_ahead_of_the_writer(tmp_path: Path) -> None:
    """A burst that needs new slabs finds them mapped by the preparer thread, not by
    the writer (the event loop) itself."""
    vol = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=64 << 20,
                        block_size=4096, options=VolumeOptions(commit_interval=30.0))
    try:
        pool = vol._pool
        for i in range(48):  # 48 MiB: twelve slabs, at a pace the preparer can keep
            vol.write(i * 256, bytes([i + 1]) * (1 << 20))
            time.sleep(0.01)
        by_writer = pool.mapped - pool.mapped_ahead
        assert pool.mapped_ahead >= 8
        assert by_writer <= 4, f"the writer mapped {by_writer} slabs itself"
        assert vol.read(0, 48 * 256) == b"".join(bytes([i + 1]) * (1 << 20) for i in range(48))
    finally:
        vol.close()
