"""ScratchOverlay (a writable image's scratch area) against a bytearray model: random
writes, unmaps and reads at 512- and 4096-byte blocks, reopened part way (the overlay
finds what it holds from the scratch file alone); the base device is never written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volume_manager.blockdev import FileBlockDevice
from volume_manager.errors import OutOfRangeError, VolumeClosedError
from volume_manager.overlay import ScratchOverlay

NBLOCKS_BYTES = 64 * 1024


def _base(tmp: Path, bs: int) -> tuple[FileBlockDevice, bytes]:
    content = os.urandom(NBLOCKS_BYTES)
    path = tmp / "base.img"
    path.write_bytes(content)
    return FileBlockDevice(path, block_size=bs, read_only=True), content


ops = st.lists(st.tuples(st.sampled_from(["write", "unmap", "read", "reopen"]),
                         st.integers(0, 200), st.integers(0, 40), st.integers(0, 255)),
               max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bs=st.sampled_from([512, 4096]), script=ops)
def test_overlay_matches_model(tmp_path_factory: pytest.TempPathFactory, bs: int,
                               script: list[tuple[str, int, int, int]]) -> None:
    tmp = tmp_path_factory.mktemp("ov")
    base, content = _base(tmp, bs)
    nblocks = NBLOCKS_BYTES // bs
    model = bytearray(content)
    scratch = str(tmp / "scratch.img")
    ov = ScratchOverlay(base, scratch)
    try:
        for op, lba, count, fill in script:
            lba %= nblocks
            count = min(count, nblocks - lba)
            if op == "write":
                data = bytes([fill]) * (count * bs)
                ov.write(lba, data)
                model[lba * bs : (lba + count) * bs] = data
            elif op == "unmap":
                ov.unmap(lba, count)
                model[lba * bs : (lba + count) * bs] = bytes(count * bs)
            elif op == "read":
                assert ov.read(lba, count) == model[lba * bs : (lba + count) * bs]
            else:
                ov.close()
                ov = ScratchOverlay(base, scratch)
        assert ov.read(0, nblocks) == model
        assert base.read(0, nblocks) == content
    finally:
        ov.close()
        base.close()


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    base, content = _base(tmp_path, 512)
    ov = ScratchOverlay(base, str(tmp_path / "scratch.img"))
    with pytest.raises(OutOfRangeError):
        ov.write(NBLOCKS_BYTES // 512, bytes(512))
    with pytest.raises(ValueError, match="whole"):
        ov.write(0, bytes(100))
    assert ov.read(0, NBLOCKS_BYTES // 512) == content
    assert ov.written_bytes == 0
    ov.close()
    with pytest.raises(VolumeClosedError):
        ov.read(0, 1)
    base.close()
