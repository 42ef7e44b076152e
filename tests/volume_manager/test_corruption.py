"""Damaged secondary stores: flipped bytes, cut-off segment tails, broken map
files, a lost catalog commit, stray files.

In every case opening the volume must report what it found and keep every
point before the damage exactly: the images at all earlier seqs read back, the
live volume equals the image at the new end of the log (even where the primary
had already received the lost records), and the volume goes on working.

The tests find records by parsing the segment files themselves (FORMAT.md):
a 64-byte segment header, then records of a 40-byte header (seq at bytes
8..16, payload length at 36..40, little-endian) followed by the payload.
"""

from __future__ import annotations

import glob
import os
import sqlite3

import pytest

from volume_manager import Volume, VolumeOptions, mapcodec
from volume_manager.errors import CorruptMapError, PointError

BS = 512
NBLOCKS = 64
SEGMENT_HEADER = 64
RECORD_HEADER = 40


def options(segment_bytes: int = 4096) -> VolumeOptions:
    return VolumeOptions(commit_interval=None, segment_bytes=segment_bytes)


def block(seq: int, b: int) -> bytes:
    stamp = f"<seq {seq} block {b}>".encode()
    return (stamp * (BS // len(stamp) + 1))[:BS]


class Scenario:
    """A volume with a known history: ``images[seq]`` is the image after seq."""

    def __init__(self, tmp_path, segment_bytes: int = 4096) -> None:  # type: ignore[no-untyped-def]
        self.dir = str(tmp_path / "sec")
        self.primary = str(tmp_path / "primary.img")
        self.opts = options(segment_bytes)
        self.vol = Volume.create(self.dir, self.primary, size=NBLOCKS * BS, options=self.opts)
        self.images = {0: bytes(BS * NBLOCKS)}

    def write(self, n: int, *, flush: bool = True, mark_every: int = 0) -> None:
        vol = self.vol
        for i in range(n):
            seq = vol.seq + 1
            lba = (seq * 5) % (NBLOCKS - 2)
            if seq % 7 == 3:
                vol.unmap(lba, 2)
                data = bytes(2 * BS)
            else:
                data = block(seq, lba) + block(seq, lba + 1)
                vol.write(lba, data)
            img = bytearray(self.images[seq - 1])
            img[lba * BS : (lba + 2) * BS] = data
            self.images[seq] = bytes(img)
            if flush:
                vol.flush()
            if mark_every and i % mark_every == mark_every - 1:
                self.mark()

    def mark(self, name: str | None = None, *, pinned: bool = False) -> int:
        row = self.vol.mark(name, pinned=pinned)
        self.images[row.seq] = self.images[row.seq - 1]
        return row.seq

    def reopen(self) -> Volume:
        self.vol = Volume.open(self.dir, options=self.opts)
        return self.vol

    def check(self, upto: int) -> None:
        """Every point up to ``upto`` reads back exactly; the live volume is at ``upto``."""
        vol = self.vol
        assert vol.seq == upto
        assert vol.read(0, NBLOCKS) == self.images[upto]
        for s in range(vol.baseline_seq, upto + 1):
            if s not in self.images:  # inside a merged range
                continue
            with vol.view(f"seq:{s}") as v:
                assert v.read(0, NBLOCKS) == self.images[s], f"seq:{s}"
        with pytest.raises(PointError):
            vol.resolve(f"seq:{upto + 1}")

    def check_goes_on(self) -> None:
        """New writes continue the sequence; a clean reopen finds nothing to report."""
        upto = self.vol.seq
        self.write(3)
        self.mark("after-damage")
        self.vol.close()
        with open(self.primary, "rb") as f:
            assert f.read() == self.images[self.vol.seq]
        vol = self.reopen()
        assert vol.recovery_report == []
        self.check(upto + 4)

    def close(self) -> None:
        self.vol.close()


@pytest.fixture
def scenario(tmp_path):  # type: ignore[no-untyped-def]
    s = Scenario(tmp_path)
    yield s
    s.close()


def segments(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "log", "*.seg")))


def seg_id(path: str) -> int:
    return int(os.path.basename(path)[:16], 16)


def records(path: str) -> list[tuple[int, int, int]]:
    """(offset, seq, payload length) of each record in a segment file."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    off = SEGMENT_HEADER
    while off + RECORD_HEADER <= len(data) and any(data[off : off + RECORD_HEADER]):
        seq = int.from_bytes(data[off + 8 : off + 16], "little")
        length = int.from_bytes(data[off + 36 : off + 40], "little")
        out.append((off, seq, length))
        off += RECORD_HEADER + length
    # A segment the volume did not close may end with the zero padding of its
    # last block write-out (volume_manager/logbuf.py).
    assert off == len(data) or (len(data) - off < 4096 and not any(data[off:])), (off, len(data))
    return out


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def write_records(seg: str) -> list[tuple[int, int, int]]:
    return [r for r in records(seg) if r[2] > 0 and r[2] % BS == 0]


# ---------------------------------------------------------------- log records
@pytest.mark.parametrize("where", ["last segment", "earlier segment", "first record"])
def test_flipped_payload_byte(scenario, where) -> None:  # type: ignore[no-untyped-def]
    scenario.write(14)
    scenario.vol.abandon()  # no clean close: no checkpoint at the end of the log
    segs = segments(scenario.dir)
    assert len(segs) >= 4
    if where == "last segment":
        seg = segs[-1]
        off, k, length = write_records(seg)[-1]
    elif where == "earlier segment":
        seg = segs[len(segs) // 2]
        off, k, length = write_records(seg)[-1]
    else:
        seg = segs[0]
        off, k, length = write_records(seg)[0]
    later = [s for s in segs if s > seg]
    flip(seg, off + RECORD_HEADER + length // 3)

    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    assert f"segment {seg_id(seg)} offset {off}" in report
    assert "checksum" in report
    assert os.path.getsize(seg) == off
    for s in later:
        assert not os.path.exists(s)
        assert f"deleted log segment {seg_id(s)}" in report
    # The primary had the lost records already (they were flushed): it is back
    # at the image of the new end of the log.
    scenario.check(k - 1)
    scenario.check_goes_on()


@pytest.mark.parametrize("cut", ["mid-payload", "mid-header", "after-header"])
def test_truncated_segment_tail(scenario, cut) -> None:  # type: ignore[no-untyped-def]
    scenario.write(10)
    scenario.vol.abandon()
    seg = segments(scenario.dir)[-1]
    off, k, length = write_records(seg)[-1]
    at = {
        "mid-payload": off + RECORD_HEADER + length // 2,
        "mid-header": off + 20,
        "after-header": off + RECORD_HEADER,
    }[cut]
    os.truncate(seg, at)

    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    assert f"segment {seg_id(seg)} offset {off}" in report
    assert os.path.getsize(seg) == off
    scenario.check(k - 1)
    scenario.check_goes_on()


def test_torn_tail_of_unflushed_writes(scenario) -> None:  # type: ignore[no-untyped-def]
    """The normal residue of a crash: records never made durable, cut short."""
    scenario.write(6)
    scenario.write(3, flush=False)
    scenario.vol.write_out()  # in the file, not durable: what the committer streams out
    scenario.vol.abandon()
    seg = segments(scenario.dir)[-1]
    off, k, length = records(seg)[-1]
    os.truncate(seg, off + RECORD_HEADER + length - 7)
    vol = scenario.reopen()
    assert any("truncated" in r for r in vol.recovery_report)
    scenario.check(k - 1)
    scenario.check_goes_on()


def test_zeroed_tail_is_cut(scenario) -> None:  # type: ignore[no-untyped-def]
    """A file extended with zeros (size persisted, data not) ends the log there."""
    scenario.write(5)
    scenario.vol.abandon()
    seg = segments(scenario.dir)[-1]
    off, _, length = records(seg)[-1]
    end = off + RECORD_HEADER + length
    os.truncate(seg, end)  # without the padding of a block write-out (segments.py)
    # ... but with zeros past where such padding could end
    with open(seg, "ab") as f:
        f.write(bytes(4096 - end % 4096 + 700))
    vol = scenario.reopen()
    assert any(f"offset {end}" in r for r in vol.recovery_report)
    assert os.path.getsize(seg) == end
    scenario.check(5)
    scenario.check_goes_on()


def test_block_padding_of_a_sealed_segment_is_its_end(scenario) -> None:  # type: ignore[no-untyped-def]
    """A crash between a block write-out of a segment's last records and the trim
    that seals it leaves zeros up to the block's end: the segment ends at its last
    record, recovery trims the zeros without a report, and the walk goes on into the
    next segment (volume_manager/segments.py)."""
    scenario.write(14)
    scenario.vol.abandon()
    segs = segments(scenario.dir)
    sealed = next(p for p in segs[:-1] if os.path.getsize(p) % 4096)
    end = os.path.getsize(sealed)
    with open(sealed, "ab") as f:
        f.write(bytes(4096 - end % 4096))
    vol = scenario.reopen()
    assert vol.recovery_report == []
    assert os.path.getsize(sealed) == end
    assert all(os.path.exists(p) for p in segs)
    scenario.check(14)
    scenario.check_goes_on()


def test_empty_last_segment_is_a_roll_never_written_out(scenario) -> None:  # type: ignore[no-untyped-def]
    """A segment roll creates the next file; its header waits in the write buffer
    with the records after it. Killed before the write-out, the file is empty: no
    record was in it, and it goes without a report."""
    scenario.write(5)
    scenario.vol.abandon()
    last = segments(scenario.dir)[-1]
    # two rolls before any write-out: two empty files
    empty = [os.path.join(os.path.dirname(last), f"{seg_id(last) + k:016x}.seg") for k in (1, 2)]
    for path in empty:
        open(path, "wb").close()
    vol = scenario.reopen()
    assert vol.recovery_report == []
    assert not any(os.path.exists(p) for p in empty)
    scenario.check(5)
    scenario.check_goes_on()


def test_damage_past_the_markers_drops_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # One big segment: no segment is sealed, so no checkpoint moves the start of
    # the recovery walk past the damage (older records are not re-verified).
    scenario = Scenario(tmp_path, segment_bytes=1 << 20)
    scenario.write(12, mark_every=4)  # markers at seq 5, 10, 15
    assert sorted(m.seq for m in scenario.vol.markers.values()) == [5, 10, 15]
    scenario.vol.abandon()
    # damage record 12 (a write after the marker at seq 10)
    seg = next(s for s in segments(scenario.dir) if any(r[1] == 12 for r in records(s)))
    off = next(r[0] for r in records(seg) if r[1] == 12)
    flip(seg, off + RECORD_HEADER + 1)
    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    assert "past the end of the log" in report
    assert sorted(m.seq for m in vol.markers.values()) == [5, 10]
    assert [m.to_seq for m in vol.maps] == [5, 10]
    scenario.check(11)
    scenario.check_goes_on()
    scenario.close()


def test_corrupt_header_of_a_later_segment(scenario) -> None:  # type: ignore[no-untyped-def]
    scenario.write(14)
    scenario.vol.abandon()
    segs = segments(scenario.dir)
    assert len(segs) >= 4
    bad = segs[2]
    first = records(bad)[0][1]
    flip(bad, 20)  # inside the header's first_seq field
    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    assert f"segment {seg_id(bad)}" in report
    assert "segment header" in report
    for s in segs[2:]:
        assert not os.path.exists(s)
    assert os.path.exists(segs[1])
    scenario.check(first - 1)
    scenario.check_goes_on()


def test_missing_middle_segment(scenario) -> None:  # type: ignore[no-untyped-def]
    scenario.write(14)
    scenario.vol.abandon()
    segs = segments(scenario.dir)
    first = records(segs[2])[0][1]
    os.unlink(segs[2])
    vol = scenario.reopen()
    assert any(f"segment {seg_id(segs[2])} is missing" in r for r in vol.recovery_report)
    for s in segs[3:]:
        assert not os.path.exists(s)
    scenario.check(first - 1)
    scenario.check_goes_on()


# ------------------------------------------------------------------ map files
@pytest.mark.parametrize("where", ["header", "extents", "truncated", "appended", "empty"])
@pytest.mark.parametrize("merged", [False, True])
def test_damaged_map_file_is_rebuilt(scenario, where, merged) -> None:  # type: ignore[no-untyped-def]
    scenario.write(15, mark_every=3)
    vol = scenario.vol
    if merged:
        vol.merge(f"seq:{vol.maps[0].to_seq}", f"seq:{vol.maps[2].to_seq}")
        scenario.images = {
            s: img
            for s, img in scenario.images.items()
            if not vol.maps[0].to_seq < s < vol.maps[1].to_seq
        }
    target = vol.maps[1]
    name, granular = target.row.file, target.granular
    assert granular is not merged
    seq = vol.seq
    vol.close()
    path = os.path.join(scenario.dir, "maps", name)
    size = os.path.getsize(path)
    if where == "header":
        flip(path, 17)
    elif where == "extents":
        flip(path, mapcodec.HEADER_SIZE + 9)
    elif where == "truncated":
        os.truncate(path, size - 5)
    elif where == "appended":
        with open(path, "ab") as f:
            f.write(b"\0")
    else:
        os.truncate(path, 0)

    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    assert name in report and "rebuilt from the log" in report
    with open(path, "rb") as f:
        rebuilt = mapcodec.decode(f.read())
    assert rebuilt.granular is granular
    assert (rebuilt.from_seq, rebuilt.to_seq) == (target.from_seq, target.to_seq)
    assert vol.seq == seq
    for s, img in scenario.images.items():
        with vol.view(f"seq:{s}") as v:
            assert v.read(0, NBLOCKS) == img, s
    assert vol.read(0, NBLOCKS) == scenario.images[seq]
    scenario.check_goes_on()


@pytest.mark.parametrize("where", [0, 8, 12, 16, 24, 32, 40, 56, 60, 64, 70, 95])
def test_decoding_a_corrupted_map_raises(scenario, where) -> None:  # type: ignore[no-untyped-def]
    scenario.write(6)
    scenario.mark("m")
    path = os.path.join(scenario.dir, "maps", scenario.vol.maps[0].row.file)
    with open(path, "rb") as f:
        good = f.read()
    assert mapcodec.decode(good).to_seq == scenario.vol.maps[0].to_seq
    bad = bytearray(good)
    bad[where] ^= 0x01
    with pytest.raises(CorruptMapError):
        mapcodec.decode(bytes(bad))
    for cut in (0, 10, mapcodec.HEADER_SIZE - 1, len(good) - 1):
        with pytest.raises(CorruptMapError):
            mapcodec.decode(good[:cut])
    with pytest.raises(CorruptMapError):
        mapcodec.decode(good + b"\0" * 32)


# -------------------------------------------------------------------- catalog
@pytest.mark.parametrize("lost", [1, 2])
@pytest.mark.parametrize("clean", [True, False])
def test_lost_catalog_commit_of_markers(scenario, lost, clean) -> None:  # type: ignore[no-untyped-def]
    """Markers whose catalog transactions were lost come back from the log."""
    scenario.write(4)
    scenario.mark("first")
    scenario.write(3)
    scenario.mark("second", pinned=True)
    scenario.write(3)
    scenario.mark("third")
    scenario.write(2)
    vol = scenario.vol
    want = {n: m.seq for n, m in vol.markers.items()}
    names = ["third", "second"][:lost]
    maps = vol.maps[-lost:]
    seq = vol.seq
    if clean:
        vol.close()
    else:
        vol.abandon()
    # What the lost transactions had done: insert the markers and their maps,
    # and move the tail past them.
    db = sqlite3.connect(os.path.join(scenario.dir, "catalog.db"))
    with db:
        for n in names:
            db.execute("DELETE FROM markers WHERE name=?", (n,))
        for m in maps:
            db.execute("DELETE FROM maps WHERE id=?", (m.row.id,))
        db.execute("UPDATE meta SET value=? WHERE key='tail_seg'", (maps[0].row.start_seg,))
        db.execute("UPDATE meta SET value=? WHERE key='tail_off'", (maps[0].row.start_off,))
    db.close()

    vol = scenario.reopen()
    report = "\n".join(vol.recovery_report)
    for n in names:
        assert f"restored marker {n!r}" in report
    assert {n: m.seq for n, m in vol.markers.items()} == want
    assert [m.to_seq for m in vol.maps] == sorted(want.values())
    assert all(m.granular for m in vol.maps)
    for n, s in want.items():
        with vol.view(n) as v:
            assert v.read(0, NBLOCKS) == scenario.images[s]
    scenario.check(seq)
    scenario.check_goes_on()


def test_stray_files_in_maps_are_removed(scenario) -> None:  # type: ignore[no-untyped-def]
    scenario.write(6, mark_every=3)
    listed = sorted(m.row.file for m in scenario.vol.maps)
    scenario.vol.close()
    maps_dir = os.path.join(scenario.dir, "maps")
    stray = [
        "0000000000000003-0000000000000008.dmap",
        "leftover.tmp",
        "0000000000000004-0000000000000009.dmap",
    ]
    for name in stray:
        with open(os.path.join(maps_dir, name), "wb") as f:
            f.write(b"garbage" * 10)
    vol = scenario.reopen()
    assert sorted(os.listdir(maps_dir)) == listed
    assert vol.recovery_report == []
    scenario.check(8)
    scenario.check_goes_on()
