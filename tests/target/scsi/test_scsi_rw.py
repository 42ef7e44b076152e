"""READ/WRITE (6/10/12/16): scsi.md §1 rules and iscsi.md §7 residuals, per CDB size."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_LBA_OOB,
    EXPECT_WRITE_PROTECTED,
    NBLOCKS,
    NEXUS,
    READ,
    WRITE,
    Sense,
    cdb10,
    field_pointer,
    file_device,
    pattern,
    ready_lu,
    run,
    rw,
    sense_of,
    volume,
)

from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.inquiry import MAX_TRANSFER_BYTES
from target.scsi.lu import SPAN_MIN_BYTES, LogicalUnit
from target.scsi.sense import Asc, ScsiStatus
from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileSpan

SIZES = (6, 10, 12, 16)
SIZES_PROTECT = (10, 12, 16)  # READ(6)/WRITE(6) have no flags byte


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    return ready_lu(file_device(tmp_path))


def beyond_eol_cases(size: int) -> list[tuple[int, int]]:
    """(lba, blocks) that must fail with LBA OUT OF RANGE (libiscsi *BeyondEol sweeps)."""
    lba_max = {6: 0x1FFFFF, 10: 0xFFFFFFFF, 12: 0xFFFFFFFF, 16: 2**64 - 1}[size]
    cases = [(NBLOCKS - n + 1, n) for n in (1, 2, 8, 255)]  # one block past the end
    cases += [(NBLOCKS + 1, 1), (lba_max, 1), (lba_max, 255)]
    if size != 6:
        cases += [(NBLOCKS + 1, 0), (2**31, 0), (lba_max, 0)]  # zero blocks still checked
    if size == 16:
        cases += [(2**63, 1), (2**64 - 1, 256)]
    return cases


@pytest.mark.parametrize("size", SIZES)
def test_write_then_read_round_trips(lu: LogicalUnit, size: int) -> None:
    data = pattern(3, 4, seed=size)
    assert sense_of(run(lu, rw(size, WRITE[size], 3, 4), data)) == EXPECT_GOOD
    resp = run(lu, rw(size, READ[size], 3, 4), edtl=4 * BS)
    assert sense_of(resp) == EXPECT_GOOD
    assert bytes(resp.data_in) == data
    assert (resp.residual_overflow, resp.residual_underflow) == (0, 0)


@pytest.mark.parametrize("size", SIZES)
def test_last_block_is_reachable(lu: LogicalUnit, size: int) -> None:
    data = pattern(NBLOCKS - 1, 1)
    assert sense_of(run(lu, rw(size, WRITE[size], NBLOCKS - 1, 1), data)) == EXPECT_GOOD
    assert bytes(run(lu, rw(size, READ[size], NBLOCKS - 1, 1), edtl=BS).data_in) == data


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("which", ["read", "write"])
def test_beyond_eol(lu: LogicalUnit, size: int, which: str) -> None:
    before = lu.device.read(0, NBLOCKS)
    for lba, blocks in beyond_eol_cases(size):
        count = blocks or (256 if size == 6 else 0)
        if which == "read":
            resp = run(lu, rw(size, READ[size], lba, blocks), edtl=count * BS)
        else:
            resp = run(lu, rw(size, WRITE[size], lba, blocks), bytes(count * BS))
        assert sense_of(resp) == EXPECT_LBA_OOB, (lba, blocks)
        assert resp.residual_underflow == count * BS  # nothing moved
    assert lu.device.read(0, NBLOCKS) == before


@pytest.mark.parametrize("size", (10, 12, 16))
def test_zero_blocks_is_good_and_moves_nothing(lu: LogicalUnit, size: int) -> None:
    for lba in (0, NBLOCKS - 1, NBLOCKS):
        resp = run(lu, rw(size, READ[size], lba, 0), edtl=0)
        assert sense_of(resp) == EXPECT_GOOD and resp.data_in == b""
        assert sense_of(run(lu, rw(size, WRITE[size], lba, 0), b"")) == EXPECT_GOOD


def test_six_byte_zero_length_means_256_blocks(tmp_path: Path) -> None:
    lu = ready_lu(file_device(tmp_path, nblocks=300))
    data = pattern(0, 256)
    assert sense_of(run(lu, rw(6, WRITE[6], 10, 0), data)) == EXPECT_GOOD
    resp = run(lu, rw(6, READ[6], 10, 0), edtl=256 * BS)
    assert bytes(resp.data_in) == data
    assert sense_of(run(lu, rw(6, READ[6], 45, 0), edtl=256 * BS)) == EXPECT_LBA_OOB


@pytest.mark.parametrize("size", SIZES_PROTECT)
@pytest.mark.parametrize("protect", range(1, 8))
def test_rdprotect_wrprotect_rejected(lu: LogicalUnit, size: int, protect: int) -> None:
    flags = protect << 5
    resp = run(lu, rw(size, READ[size], 0, 1, flags), edtl=BS)
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert field_pointer(resp.sense or b"") == (True, 1, 7)
    resp = run(lu, rw(size, WRITE[size], 0, 1, flags), pattern(0, 1))
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert lu.device.read(0, 1) == bytes(BS)


@pytest.mark.parametrize("size", SIZES_PROTECT)
@pytest.mark.parametrize("flags", [0x10, 0x08, 0x18, 0x02, 0x1A])  # DPO, FUA, both, FUA_NV
def test_dpo_fua_accepted_and_fua_flushes_before_status(lu: LogicalUnit, size: int,
                                                         flags: int) -> None:
    resp = run(lu, rw(size, WRITE[size], 5, 1, flags), pattern(5, 1))
    assert sense_of(resp) == EXPECT_GOOD
    assert resp.flush_before_status == bool(flags & 0x08)
    resp = run(lu, rw(size, READ[size], 5, 1, flags), edtl=BS)
    assert sense_of(resp) == EXPECT_GOOD and not resp.flush_before_status


def test_plain_write_with_write_cache_does_not_flush(lu: LogicalUnit) -> None:
    assert not run(lu, cdb10(0x2A, 0, 1), pattern(0, 1)).flush_before_status


# (cdb blocks, EDTL) -> (bytes moved, overflow, underflow): iscsi.md §7 iSCSIResiduals.
RESIDUALS = [
    ((1, 0), (0, 512, 0)),
    ((1, 10000), (512, 0, 9488)),
    ((1, 200), (200, 312, 0)),
    ((2, 512), (512, 512, 0)),
]


@pytest.mark.parametrize(("cmd", "expected"), RESIDUALS)
def test_read_residuals(lu: LogicalUnit, cmd: tuple[int, int], expected: tuple[int, ...]) -> None:
    run(lu, cdb10(0x2A, 0, 2), pattern(0, 2))
    blocks, edtl = cmd
    resp = run(lu, cdb10(0x28, 0, blocks), edtl=edtl)
    assert resp.status == ScsiStatus.GOOD
    moved, over, under = expected
    assert bytes(resp.data_in) == pattern(0, 2)[:moved]
    assert (resp.residual_overflow, resp.residual_underflow) == (over, under)


# Write: (cdb blocks, EDTL) -> (blocks written, overflow, underflow).
WRITE_RESIDUALS = [
    ((1, 0), (0, 512, 0)),
    ((1, 10000), (1, 0, 9488)),
    ((1, 200), (0, 312, 0)),
    ((2, 512), (1, 512, 0)),
    ((1, 1024), (1, 0, 512)),
]


@pytest.mark.parametrize(("cmd", "expected"), WRITE_RESIDUALS)
def test_write_residuals_write_only_whole_blocks_received(
        lu: LogicalUnit, cmd: tuple[int, int], expected: tuple[int, ...]) -> None:
    blocks, edtl = cmd
    data = pattern(0, 20)[:edtl]
    resp = run(lu, cdb10(0x2A, 0, blocks), data, edtl=edtl)
    assert resp.status == ScsiStatus.GOOD
    written, over, under = expected
    assert (resp.residual_overflow, resp.residual_underflow) == (over, under)
    assert lu.device.read(0, 2) == pattern(0, 2)[: written * BS] + bytes((2 - written) * BS)


def test_write_protected_device(tmp_path: Path) -> None:
    file_device(tmp_path)  # create the file
    lu = ready_lu(file_device(tmp_path, read_only=True))
    for size in SIZES:
        resp = run(lu, rw(size, WRITE[size], 0, 1), pattern(0, 1))
        assert sense_of(resp) == EXPECT_WRITE_PROTECTED
        assert sense_of(run(lu, rw(size, READ[size], 0, 1), edtl=BS)) == EXPECT_GOOD
    # Range is checked before write protection (scsi.md §1 order).
    assert sense_of(run(lu, cdb10(0x2A, NBLOCKS, 1), bytes(BS))) == EXPECT_LBA_OOB


CASES_ON_VOLUME: list[tuple[str, bytes, bytes | None, Sense | None]] = [
    ("write", cdb10(0x2A, 7, 2), pattern(7, 2), EXPECT_GOOD),
    ("write16-fua", rw(16, 0x8A, 9, 1, 0x08), pattern(9, 1), EXPECT_GOOD),
    ("beyond", cdb10(0x2A, NBLOCKS - 1, 2), bytes(2 * BS), EXPECT_LBA_OOB),
    ("read-protect", cdb10(0x28, 0, 1, 0x20), None, EXPECT_INVALID_FIELD_IN_CDB),
]


def test_on_a_protected_volume_and_its_read_only_view(tmp_path: Path) -> None:
    vol = volume(tmp_path)
    try:
        lu = ready_lu(vol)
        for name, cdb, data, expect in CASES_ON_VOLUME:
            assert sense_of(run(lu, cdb, data, edtl=None if data else BS)) == expect, name
        resp = run(lu, cdb10(0x28, 7, 3), edtl=3 * BS)
        assert bytes(resp.data_in) == pattern(7, 2) + pattern(9, 1)
        vol.mark("after")
        run(lu, cdb10(0x2A, 7, 1), bytes(BS))
        with vol.view("after") as view:
            ro = ready_lu(view)
            assert sense_of(run(ro, cdb10(0x2A, 0, 1), bytes(BS))) == EXPECT_WRITE_PROTECTED
            resp = run(ro, cdb10(0x28, 7, 1), edtl=BS)
            assert bytes(resp.data_in) == pattern(7, 1)
    finally:
        vol.close()


# READ(10)'s 16-bit length cannot exceed the limit (65535 blocks < MAX_TRANSFER_BYTES / 512)
@pytest.mark.parametrize(("size", "byte"), [(12, 6), (16, 10)])
def test_transfer_longer_than_block_limits_maximum(tmp_path: Path, size: int, byte: int) -> None:
    max_blocks = MAX_TRANSFER_BYTES // BS
    lu = ready_lu(file_device(tmp_path, nblocks=max_blocks + 1))
    resp = run(lu, rw(size, READ[size], 0, max_blocks + 1), edtl=BS)
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert field_pointer(resp.sense or b"")[:2] == (True, byte)
    assert sense_of(run(lu, rw(size, READ[size], 1, max_blocks), edtl=BS)) == EXPECT_GOOD



@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from([0x28, 0x88, 0x2A, 0x8A]), lba=st.integers(0, NBLOCKS + 2),
       blocks=st.integers(0, 4), flags=st.sampled_from([0, 0x08, 0x10, 0x18, 0x02, 0x20, 0x04]),
       control=st.sampled_from([0, 0x04]), edtl_delta=st.sampled_from([0, 0, 0, BS, -BS]),
       pending=st.sampled_from([None, None, "ua", "offline"]))
def test_fast_paths_answer_like_the_full_path(tmp_path: Path, op: int, lba: int, blocks: int,
                                              flags: int, control: int, edtl_delta: int,
                                              pending: str | None) -> None:
    """fast_io and fast_read (the transports' per-command entries) either decline, having
    done nothing, or give exactly what the full decode-and-run path gives."""
    cdb = bytearray(rw(10 if op in (0x28, 0x2A) else 16, op, lba, blocks, flags))
    cdb[-1] = control  # not plain unless 0
    edtl = max(blocks * BS + edtl_delta, 0)
    write = op in (0x2A, 0x8A)
    data_out = pattern(0, NBLOCKS + 4, seed=9)[:edtl] if write else None
    answers = []
    for fast in (True, False):
        lu = ready_lu(file_device(tmp_path, name=f"fast{fast}.img"))
        lu.device.write(0, pattern(0, NBLOCKS, seed=3))
        if pending == "ua":
            lu.unit_attentions.establish(Asc.MODE_PARAMETERS_CHANGED)
        elif pending == "offline":
            lu.take_offline("test")
        cmd = ScsiCommand(bytes(cdb), data_out, edtl, NEXUS)
        if fast:
            if not write:
                data = lu.fast_read(bytes(cdb), edtl, NEXUS)
                assert data is None or lu.fast_io(cmd) == ScsiResponse(ScsiStatus.GOOD, data)
            response = lu.fast_io(cmd)
            if response is None:  # declined: nothing was done, the full path answers
                assert lu.device.read(0, NBLOCKS) == pattern(0, NBLOCKS, seed=3)
                assert lu.unit_attentions.none_for(NEXUS) == (pending != "ua")
                response = lu.execute(cmd)
        else:
            lu.fast_io = lambda cmd: None  # type: ignore[method-assign]
            response = lu.execute(cmd)
        answers.append((response, lu.device.read(0, NBLOCKS)))
        lu.device.close()  # type: ignore[attr-defined]
    assert answers[0] == answers[1]


def test_fast_read_answers_small_reads_with_views_and_large_ones_with_spans(
    tmp_path: Path,
) -> None:
    """On a volume, a plain read the transport may send as it is (spans_ok) comes back as a
    view of the primary's mapping below SPAN_MIN_BYTES and as a file span from there on;
    without spans_ok, as bytes. All hold the same data."""
    size = 2 * SPAN_MIN_BYTES
    volume = Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=size,
                           block_size=BS, options=VolumeOptions(commit_interval=None))  # fmt: skip
    try:
        lu = ready_lu(volume)  # type: ignore[arg-type]
        data = pattern(0, size // BS, seed=5)
        volume.write(0, data)
        volume.flush()
        small, large = SPAN_MIN_BYTES // 2, SPAN_MIN_BYTES
        for n, kind in ((small, memoryview), (large, FileSpan)):
            cdb = rw(10, 0x28, 2, n // BS, 0)
            got = lu.fast_read(cdb, n, NEXUS, True)
            assert isinstance(got, kind)
            as_bytes = got.read() if isinstance(got, FileSpan) else bytes(got)
            assert as_bytes == data[2 * BS : 2 * BS + n]
            plain = lu.fast_read(cdb, n, NEXUS)
            assert isinstance(plain, bytes) and plain == as_bytes
    finally:
        volume.close()
