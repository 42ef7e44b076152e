"""Volume.read_view and blockdev.FileMap: small reads as views of the primary's mapping.

A view must hold exactly what Volume.read returns, and there must be none where read
answers from elsewhere (unapplied writes, past the end of a short primary). The mapping's
page tables stay bounded for a large file, a primary that grows is mapped afresh, and
views outlive the volume's close. A page the kernel cannot read must fail a copy with an
error, never end the process (SIGBUS). Range checks and the crash simulator's file layer
are tested with spans (test_read_span.py).
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import volume_manager.blockdev as blockdev
from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileMap, copy_mapped, is_mapped

BS = 4096
NBLOCKS = 64


def make(tmp_path: Path, **kw: object) -> Volume:
    return Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=NBLOCKS * BS,
                         block_size=BS, options=VolumeOptions(commit_interval=None),
                         **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_view_holds_what_read_returns_and_none_covers_unapplied_writes(
    tmp_path: Path,
) -> None:
    vol = make(tmp_path)
    try:
        data = os.urandom(NBLOCKS * BS)
        vol.write(0, data)
        assert vol.read_view(0, 4) is None  # unapplied: the log holds them
        vol.flush()
        view = vol.read_view(3, 5)
        assert view is not None and is_mapped(view) and view.nbytes == 5 * BS
        assert bytes(view) == vol.read(3, 5) == data[3 * BS : 8 * BS]
        vol.write(10, bytes([2]) * BS)  # only block 10 is unapplied
        assert vol.read_view(10, 1) is None and vol.read_view(8, 4) is None
        view = vol.read_view(11, 2)
        assert view is not None and bytes(view) == data[11 * BS : 13 * BS]
        vol.flush()
        view = vol.read_view(10, 1)
        assert view is not None and bytes(view) == bytes([2]) * BS
        reads = vol.reads
        assert vol.read_view(0, 1) is not None and vol.reads == reads + 1
    finally:
        vol.close()


def test_a_short_primary_gets_no_views_past_its_end_until_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the end of the file read answers (zeros); once a write extends the file, the
    mapping is made afresh after _MAP_RECHECK_MISSES misses, and views reach further."""
    monkeypatch.setattr(blockdev, "_MAP_RECHECK_MISSES", 3)
    vol = make(tmp_path)
    vol.write(0, bytes([9]) * (8 * BS))
    vol.close()
    img = tmp_path / "vol.img"
    os.truncate(img, 8 * BS)  # a sparse tail, as a primary may have
    vol = Volume.open(str(tmp_path / "vol"), options=VolumeOptions(commit_interval=None))
    try:
        view = vol.read_view(0, 8)
        assert view is not None and bytes(view) == bytes([9]) * (8 * BS)
        assert vol.read_view(8, 1) is None
        assert vol.read(8, 1) == bytes(BS)
        vol.write(20, bytes([4]) * BS)
        vol.flush()  # applied: the file now reaches block 21
        assert vol.read_view(20, 1) is None  # the second miss; the third maps afresh
        view = vol.read_view(20, 1)
        assert view is not None and bytes(view) == bytes([4]) * BS
        assert vol.read_view(30, 1) is None  # still past the end of the file
    finally:
        vol.close()


def test_a_view_outlives_the_close_of_its_volume(tmp_path: Path) -> None:
    """A view queued on a socket when the volume closes still holds its bytes: the mapping
    goes with the last view, not before."""
    vol = make(tmp_path)
    vol.write(0, bytes([6]) * (2 * BS))
    vol.flush()
    view = vol.read_view(0, 2)
    assert view is not None
    vol.close()
    assert bytes(view) == bytes([6]) * (2 * BS)
    mapping = view.obj
    assert isinstance(mapping, mmap.mmap) and not mapping.closed
    view.release()
    mapping.close()  # nothing exports it any more


def test_a_large_mapping_is_made_afresh_to_bound_its_page_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blockdev, "_MAP_KEEP_BYTES", 4 * BS)
    monkeypatch.setattr(blockdev, "_MAP_REFRESH_READS", 3)
    path = tmp_path / "f"
    data = os.urandom(16 * BS)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        fmap = FileMap(fd, 16 * BS)
        seen = []
        for i in range(7):
            view = fmap.view(i * BS, (i + 1) * BS)
            assert view is not None and bytes(view) == data[i * BS : (i + 1) * BS]
            seen.append(view)
        mappings = {id(v.obj) for v in seen}
        assert len(mappings) == 3  # made afresh at the 3rd and 6th read
        assert all(bytes(v) == data[i * BS : (i + 1) * BS] for i, v in enumerate(seen))
        assert fmap.view(15 * BS, 17 * BS) is None  # past the file
        fmap.close()
        assert fmap.view(0, BS) is None
    finally:
        os.close(fd)


def test_copy_mapped_of_an_unreadable_page_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """A file cut short under its mapping: touching the lost page in user space raises
    SIGBUS (the child's bytes(view) shows it), while copy_mapped, which lets the kernel read
    it, raises OSError. Run in children, so a SIGBUS cannot take pytest down."""
    script = textwrap.dedent(
        """
        import os, sys
        from volume_manager.blockdev import FileMap, copy_mapped
        path, how = sys.argv[1], sys.argv[2]
        with open(path, "wb") as f:
            f.write(os.urandom(4 * 4096))
        fd = os.open(path, os.O_RDONLY)
        view = FileMap(fd, 4 * 4096).view(0, 4 * 4096)
        assert copy_mapped(view[:4096]) == bytes(view[:4096])
        os.truncate(path, 4096)
        try:
            data = copy_mapped(view) if how == "copy" else bytes(view)
        except OSError as exc:
            print("OSError", exc.errno)
        else:
            print("copied", len(data))
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def child(how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script, str(tmp_path / how), how],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip

    touched = child("touch")
    assert touched.returncode == -7, (touched.returncode, touched.stdout, touched.stderr)
    copied = child("copy")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split() == ["OSError", "14"]  # EFAULT


def test_copy_mapped_copies_any_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(300_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        fmap = FileMap(fd, len(data))
        for start, end in ((0, 1), (5, 70_000), (0, len(data)), (1000, 2000)):
            view = fmap.view(start, end)
            assert view is not None and copy_mapped(view) == data[start:end]
        assert not is_mapped(memoryview(data)) and not is_mapped(data)
        fmap.close()
    finally:
        os.close(fd)
