"""The policy engine against the real CDP engine: random policies over random write and
marker histories, on a simulated clock (the engine's record timestamps come from it), the
actions carried out by the switch's scheduler (switch.policy_runner) on a real Volume.

After every tick: every point the timeline view lists is recoverable byte-exactly (the
volume as a point-in-time view at that seq equals a model of the volume after that
write); pinned markers survive; history stays within the budget plus one segment unless
writes were refused for it (with the reason in an event); the live volume equals the
model. (The simulator-based tests in test_policy_properties.py check what is promised
against ground truth over much longer histories.)
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_properties import Step, policies, steps

import volume_manager.volume as volume_module
from policies.decide import timeline_view
from policies.schema import Policy
from switch.policy_runner import PolicyRunner, timeline_of
from volume_manager import Volume, VolumeOptions
from volume_manager.errors import SecondaryFullError

BS = 512
NBLOCKS = 64
SEGMENT = 16 << 10  # small segments, so fade-outs free whole ones


class Clock:
    """A simulated clock, starting at a fixed time so runs repeat exactly (classes are
    aligned to the Unix epoch)."""

    def __init__(self, offset_ns: int = 0) -> None:
        self.now = 1_800_000_000 * 1_000_000_000 + offset_ns

    def __call__(self) -> int:
        self.now += 1000  # strictly increasing, as record timestamps are
        return self.now


def _run(tmp: Path, policy: Policy, script: list[Step], seed: int, offset_ns: int) -> None:
    clock = Clock(offset_ns)
    saved = volume_module._now_ns
    volume_module._now_ns = clock
    vol = Volume.create(str(tmp / "vol"), str(tmp / "vol.img"), size=NBLOCKS * BS,
                        block_size=BS, options=VolumeOptions(commit_interval=None,
                                                             segment_bytes=SEGMENT))
    try:
        runner = PolicyRunner(lambda: {"v": (vol, "p", False)}, clock=clock)
        runner.policies = {"p": policy}
        rng = random.Random(seed)
        image = bytearray(NBLOCKS * BS)
        images: dict[int, bytes] = {0: bytes(image)}  # seq -> the volume after it
        pinned: set[str] = set()
        for n, step in enumerate(script):
            clock.now += step.advance_s * 1_000_000_000
            for lba, count in step.writes:
                count = min(count, NBLOCKS - lba)
                data = rng.randbytes(count * BS)
                try:
                    seq = vol.write(lba, data)
                except SecondaryFullError:
                    assert vol.writes_refused is not None
                    continue
                image[lba * BS : (lba + count) * BS] = data
                images[seq] = bytes(image)
            if step.marker is not None:
                name = f"{step.marker}-{n}"
                marker = vol.mark(name, pinned=step.marker == "pinned")
                images[marker.seq] = bytes(image)
                if marker.pinned:
                    pinned.add(name)
            asyncio.run(runner.tick())
            _check(vol, policy, clock, images, image, pinned)
    finally:
        vol.close()
        volume_module._now_ns = saved


def _image_at(images: dict[int, bytes], seq: int) -> bytes:
    """The model's volume after write ``seq`` (a marker's seq: the write before it)."""
    best = max(s for s in images if s <= seq)
    return images[best]


def _check(vol: Volume, policy: Policy, clock: Clock, images: dict[int, bytes],
           image: bytearray, pinned: set[str]) -> None:
    assert vol.read(0, NBLOCKS) == image
    for name in pinned:
        assert name in vol.markers and vol.markers[name].pinned, name
    tl = timeline_of(vol)
    listed: set[int] = set()
    for c in timeline_view(tl, policy, clock.now):
        listed.update(p.seq for p in c.points)
        for lo, hi in c.every_write:
            listed.update(range(lo, hi + 1))
    # Check a sample when many are listed: each view costs a composed map.
    sample = sorted(listed)
    if len(sample) > 25:
        sample = [*sample[:: len(sample) // 25], sample[-1]]
    for seq in sample:
        if seq < vol.baseline_seq:
            pytest.fail(f"seq:{seq} listed but older than the baseline seq:{vol.baseline_seq}")
        with vol.view(f"seq:{seq}") as view:
            assert view.read(0, NBLOCKS) == _image_at(images, seq), f"seq:{seq}"
    budget = policy.budget
    if budget is not None and budget.max_bytes is not None and vol.writes_refused is None:
        assert tl.history_bytes <= budget.max_bytes + SEGMENT + 4096, (
            tl.history_bytes, budget.max_bytes)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(policy=policies(), script=steps, seed=st.integers(0, 2**32 - 1),
       offset_ns=st.integers(0, 86400 * 1_000_000_000))
def test_engine_keeps_every_listed_point(tmp_path_factory: pytest.TempPathFactory,
                                         policy: Policy, script: list[Step], seed: int,
                                         offset_ns: int) -> None:
    _run(tmp_path_factory.mktemp("pe"), policy, script, seed, offset_ns)
