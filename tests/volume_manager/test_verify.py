"""verify() walks all retained history and reports damage without changing anything."""

from __future__ import annotations

import os
from pathlib import Path

from volume_manager import Volume, VolumeOptions
from volume_manager.records import HEADER_SIZE, SEGMENT_HEADER_SIZE


def _volume(tmp_path: Path) -> Volume:
    vol = Volume.create(str(tmp_path / "sec"), str(tmp_path / "p.img"), size=1 << 20,
                        options=VolumeOptions(commit_interval=None, segment_bytes=16 << 10))
    for i in range(40):
        vol.write(i * 8 % 2000, bytes([i + 1]) * 4096)
        if i % 10 == 9:
            vol.mark(f"m{i}")
    return vol


def test_clean_volume_verifies(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    assert vol.verify() == []
    vol.close()


def test_damage_in_old_history_is_reported_not_repaired(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    vol.close()
    seg = tmp_path / "sec" / "log" / sorted(os.listdir(tmp_path / "sec" / "log"))[0]
    victim = SEGMENT_HEADER_SIZE + HEADER_SIZE + 100  # inside the first record's data
    raw = bytearray(seg.read_bytes())
    raw[victim] ^= 0xFF
    seg.write_bytes(bytes(raw))
    vol = Volume.open(str(tmp_path / "sec"), options=VolumeOptions(commit_interval=None))
    live = vol.read(0, 2048)
    problems = vol.verify()
    assert len(problems) == 1 and f"offset {SEGMENT_HEADER_SIZE}" in problems[0], problems
    assert "checksum" in problems[0]
    assert vol.read(0, 2048) == live and seg.read_bytes() == bytes(raw)
    vol.close()


def test_damaged_map_file_is_reported(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    path = Path(vol.map_dir) / vol.maps[1].row.file
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    problems = vol.verify()
    assert len(problems) == 1 and vol.maps[1].row.file in problems[0], problems
    vol.close()


def test_catalog_indexes_the_segments(tmp_path: Path) -> None:
    vol = _volume(tmp_path)
    vol.write(0, b"z" * 4096)
    vol.close()
    vol = Volume.open(str(tmp_path / "sec"), options=VolumeOptions(commit_interval=None))
    rows = vol.catalog.segments()
    names = sorted(os.listdir(vol.log_dir))
    assert [r[0] for r in rows] == [int(n[:16], 16) for n in names]
    for (sid, first, last, size), nxt in zip(rows, [*rows[1:], None], strict=True):
        assert size == os.path.getsize(os.path.join(vol.log_dir, f"{sid:016x}.seg"))
        assert last == (None if nxt is None else nxt[1] - 1)
        assert first <= (vol.seq + 1 if last is None else last)
    vol.fade("m29")
    vol.close()
    vol = Volume.open(str(tmp_path / "sec"), options=VolumeOptions(commit_interval=None))
    assert [r[0] for r in vol.catalog.segments()] == sorted(
        int(n[:16], 16) for n in os.listdir(vol.log_dir))
    vol.close()
