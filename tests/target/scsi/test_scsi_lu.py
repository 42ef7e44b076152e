"""The LU as a whole: unit attentions, REQUEST SENSE, REPORT LUNS, unsupported opcodes,
absent LUNs, the engine-error boundary and the flush hand-off (scsi.md §1, §7, §10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_HARDWARE_ERROR,
    EXPECT_INVALID_FIELD_IN_CDB,
    EXPECT_INVALID_OPCODE,
    EXPECT_LBA_OOB,
    EXPECT_LUN_NOT_SUPPORTED,
    EXPECT_POWER_ON,
    EXPECT_SPACE_ALLOC_FAILED,
    EXPECT_WRITE_PROTECTED,
    NEXUS,
    OTHER,
    UUID,
    Sense,
    cdb10,
    cdb16,
    field_pointer,
    file_device,
    inquiry,
    parse_sense,
    ready_lu,
    report_luns,
    request_sense,
    run,
    sense_of,
)

from target.scsi.command import ScsiCommand
from target.scsi.lu import LogicalUnit, UnitAttentions
from target.scsi.sense import Asc, ScsiStatus
from target.scsi.target_luns import encode_lun, execute_without_lu
from volume_manager.blockdev import FileBlockDevice
from volume_manager.errors import (
    AlignmentError,
    CorruptLogError,
    EngineError,
    OutOfRangeError,
    ReadOnlyError,
    SecondaryFullError,
    VolumeClosedError,
)

TUR = bytes(6)


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    return ready_lu(file_device(tmp_path))


def test_new_nexus_gets_power_on_once(tmp_path: Path) -> None:
    lu = LogicalUnit(file_device(tmp_path), uuid=UUID)
    # INQUIRY, REPORT LUNS neither report nor clear it.
    assert sense_of(run(lu, inquiry())) == EXPECT_GOOD
    assert sense_of(run(lu, report_luns())) == EXPECT_GOOD
    assert sense_of(run(lu, TUR)) == EXPECT_POWER_ON
    assert sense_of(run(lu, TUR)) == EXPECT_GOOD
    assert sense_of(run(lu, TUR, nexus=OTHER)) == EXPECT_POWER_ON
    lu.nexus_lost(OTHER)
    assert sense_of(run(lu, TUR, nexus=OTHER)) == EXPECT_POWER_ON


def test_unit_attention_precedes_other_errors(tmp_path: Path) -> None:
    lu = LogicalUnit(file_device(tmp_path), uuid=UUID)
    assert sense_of(run(lu, bytes([0xC0]) + bytes(9))) == EXPECT_POWER_ON
    assert sense_of(run(lu, bytes([0xC0]) + bytes(9))) == EXPECT_INVALID_OPCODE


def test_request_sense_returns_and_clears_the_unit_attention(tmp_path: Path) -> None:
    lu = LogicalUnit(file_device(tmp_path), uuid=UUID)
    resp = run(lu, request_sense(), edtl=252)
    assert resp.status == ScsiStatus.GOOD
    assert parse_sense(bytes(resp.data_in)) == EXPECT_POWER_ON
    assert sense_of(run(lu, TUR)) == EXPECT_GOOD
    resp = run(lu, request_sense(), edtl=252)
    assert bytes(resp.data_in)[:3] == b"\x70\x00\x00" and len(resp.data_in) == 18
    desc = bytes(run(lu, request_sense(desc=True), edtl=252).data_in)
    assert desc[0] == 0x72 and parse_sense(desc) == (0, 0, 0)
    assert bytes(run(lu, request_sense(alloc=4), edtl=252).data_in) == b"\x70\x00\x00\x00"


def test_reset_and_medium_change_reach_every_nexus(lu: LogicalUnit) -> None:
    run(lu, TUR, nexus=OTHER)
    lu.reset()
    for nexus in (NEXUS, OTHER):
        assert sense_of(run(lu, TUR, nexus=nexus)) == (0x06, 0x29, 0x03)
    lu.capacity_changed()
    for nexus in (NEXUS, OTHER):
        assert sense_of(run(lu, TUR, nexus=nexus)) == (0x06, 0x2A, 0x09)
    lu.medium_changed()
    assert sense_of(run(lu, cdb10(0x28, 0, 1), edtl=BS)) == (0x06, 0x28, 0x00)
    assert sense_of(run(lu, TUR)) == EXPECT_GOOD


_UA_OPS = st.lists(st.tuples(st.sampled_from(["establish", "establish_for", "pop", "forget",
                                              "pending"]),
                             st.integers(0, 2), st.sampled_from(list(Asc)[:4])),
                   max_size=40)


@given(ops=_UA_OPS)
def test_quiet_nexuses_are_those_with_nothing_pending(ops: list[tuple[str, int, Asc]]) -> None:
    """``UnitAttentions.quiet`` (the per-I/O test) against a plain model of the queues."""
    ua = UnitAttentions()
    model: dict[int, list[Asc]] = {}
    for op, nexus, asc in ops:
        if op == "establish":
            ua.establish(asc, exclude=nexus)
            for n, q in model.items():
                if n != nexus and asc not in q:
                    q.append(asc)
        elif op == "establish_for":
            ua.establish_for(asc, nexus)
            q = model.setdefault(nexus, [Asc.POWER_ON_RESET])
            if asc not in q:
                q.append(asc)
        elif op == "pop":
            q = model.setdefault(nexus, [Asc.POWER_ON_RESET])
            assert ua.pop(nexus) == (q.pop(0) if q else None)
        elif op == "forget":
            ua.forget(nexus)
            model.pop(nexus, None)
        else:
            assert ua.pending(nexus) == tuple(model.setdefault(nexus, [Asc.POWER_ON_RESET]))
        for n in range(3):
            assert ua.none_for(n) == (n in model and not model[n]), (n, model)



@pytest.mark.parametrize("luns", [[0], [0, 1], [0, 3, 300], list(range(20))])
def test_report_luns(tmp_path: Path, luns: list[int]) -> None:
    lu = LogicalUnit(file_device(tmp_path), uuid=UUID, lun_list=lambda: luns)
    resp = run(lu, report_luns(alloc=64), edtl=64)
    data = bytes(resp.data_in)
    assert int.from_bytes(data[0:4]) == 8 * len(luns)
    assert data[8:] == b"".join(encode_lun(n) for n in luns)[:56]
    assert resp.residual_underflow == max(64 - 8 - 8 * len(luns), 0)
    assert encode_lun(300) == bytes([0x41, 0x2C]) + bytes(6)


@pytest.mark.parametrize(("select", "alloc", "expect"), [
    (0, 16, EXPECT_GOOD), (1, 16, EXPECT_GOOD), (2, 16, EXPECT_GOOD),
    (3, 16, EXPECT_INVALID_FIELD_IN_CDB), (0, 15, EXPECT_INVALID_FIELD_IN_CDB),
])
def test_report_luns_fields(lu: LogicalUnit, select: int, alloc: int,
                            expect: Sense | None) -> None:
    assert sense_of(run(lu, report_luns(alloc, select), edtl=alloc)) == expect


UNSUPPORTED = [0x01, 0x04, 0x07, 0x37, 0x48, 0x56, 0x57, 0x83, 0x84, 0x8B, 0x9C, 0xA4,
               0xB7, 0xFF]


@pytest.mark.parametrize("opcode", UNSUPPORTED)
def test_unsupported_opcodes(lu: LogicalUnit, opcode: int) -> None:
    assert sense_of(run(lu, bytes([opcode]) + bytes(15))) == EXPECT_INVALID_OPCODE


def test_unsupported_service_action_points_at_byte_1(lu: LogicalUnit) -> None:
    resp = run(lu, cdb16(0x9E, 0, 32, 0x11))
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert field_pointer(resp.sense or b"") == (True, 1, 4)


def test_naca_and_short_cdbs_rejected(lu: LogicalUnit) -> None:
    resp = run(lu, cdb10(0x28, 0, 1, control=0x04), edtl=BS)
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert field_pointer(resp.sense or b"") == (True, 9, 2)
    assert sense_of(run(lu, bytes([0x28, 0, 0]))) == EXPECT_INVALID_FIELD_IN_CDB
    assert sense_of(run(lu, b"")) == EXPECT_INVALID_OPCODE


@pytest.mark.parametrize("cdb", [bytes([0x1B, 0, 0, 0, 0, 0]), bytes([0x1B, 1, 0, 0, 0x02, 0]),
                                 bytes([0x1B, 0, 0, 0, 0x01, 0]), bytes([0x1E, 0, 0, 0, 1, 0]),
                                 bytes([0x1E, 0, 0, 0, 0, 0]), TUR])
def test_no_data_commands_are_good(lu: LogicalUnit, cdb: bytes) -> None:
    assert sense_of(run(lu, cdb, edtl=0)) == EXPECT_GOOD
    assert sense_of(run(lu, cdb10(0x28, 0, 1), edtl=BS)) == EXPECT_GOOD  # still online


class FailingDevice(FileBlockDevice):
    """Raises ``error`` from every medium access, like an engine in trouble."""

    error: Exception = EngineError("boom")

    def read(self, lba: int, count: int) -> bytes:
        raise self.error

    def write(self, lba: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        raise self.error

    def unmap(self, lba: int, count: int) -> None:
        raise self.error

    def flush(self) -> None:
        raise self.error


ERROR_MAP: list[tuple[Exception, Sense]] = [
    (OutOfRangeError("x"), EXPECT_LBA_OOB),
    (ReadOnlyError("x"), EXPECT_WRITE_PROTECTED),
    (SecondaryFullError("x"), EXPECT_SPACE_ALLOC_FAILED),
    (AlignmentError("x"), EXPECT_INVALID_FIELD_IN_CDB),
    (VolumeClosedError("x"), EXPECT_HARDWARE_ERROR),
    (CorruptLogError("x", segment=1, offset=2), EXPECT_HARDWARE_ERROR),
    (RuntimeError("a bug"), EXPECT_HARDWARE_ERROR),
]


@pytest.mark.parametrize(("error", "expect"), ERROR_MAP)
def test_engine_errors_map_at_the_boundary(tmp_path: Path, error: Exception,
                                           expect: Sense) -> None:
    file_device(tmp_path)
    dev = FailingDevice(tmp_path / "disk.img", block_size=BS)
    dev.error = error
    lu = ready_lu(dev)
    assert sense_of(run(lu, cdb10(0x28, 0, 1), edtl=BS)) == expect
    assert sense_of(run(lu, cdb10(0x2A, 0, 1), bytes(BS))) == expect
    # A flush run by the transport after GOOD maps the same way.
    cmd = ScsiCommand(cdb10(0x35), None, 0, NEXUS)
    resp = lu.execute(cmd)
    assert resp.flush_before_status
    assert sense_of(lu.complete_flush(cmd, resp)) == expect


@pytest.mark.parametrize(("cdb", "expect_status", "expect_sense"), [
    (inquiry(alloc=36), ScsiStatus.GOOD, None),
    (request_sense(), ScsiStatus.GOOD, EXPECT_LUN_NOT_SUPPORTED),
    (report_luns(), ScsiStatus.GOOD, None),
    (TUR, ScsiStatus.CHECK_CONDITION, EXPECT_LUN_NOT_SUPPORTED),
    (cdb10(0x28, 0, 1), ScsiStatus.CHECK_CONDITION, EXPECT_LUN_NOT_SUPPORTED),
])
def test_absent_lun(cdb: bytes, expect_status: ScsiStatus, expect_sense: Sense | None) -> None:
    resp = execute_without_lu(ScsiCommand(cdb, None, 255, NEXUS), [0, 2])
    assert resp.status == expect_status
    if expect_status == ScsiStatus.CHECK_CONDITION:
        assert parse_sense(resp.sense or b"") == expect_sense
    elif cdb[0] == 0x12:
        assert resp.data_in[0] == 0x7F and len(resp.data_in) == 36
    elif cdb[0] == 0x03:
        assert parse_sense(bytes(resp.data_in)) == expect_sense
    else:
        expected = bytes([0, 0, 0, 16]) + bytes(4) + encode_lun(0) + encode_lun(2)
        assert bytes(resp.data_in) == expected


class SpyDevice(FileBlockDevice):
    """Records every call: ``execute`` must never ask for FUA or flush inline."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, block_size=BS)
        self.calls: list[str] = []

    def write(self, lba: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        self.calls.append(f"write fua={fua}")
        super().write(lba, data, fua=fua)

    def flush(self) -> None:
        self.calls.append("flush")
        super().flush()


@pytest.mark.parametrize(("cdb", "data"), [
    (cdb10(0x2A, 0, 1, 0x08), bytes(BS)),  # WRITE(10) FUA
    (cdb16(0x8A, 0, 1, 0x08), bytes(BS)),  # WRITE(16) FUA
    (cdb10(0x2E, 0, 1), bytes(BS)),  # WRITE AND VERIFY
    (bytes([0x89, 0x08]) + bytes(11) + bytes([1, 0, 0]), bytes(2 * BS)),  # C&W FUA
    (cdb10(0x35), None),  # SYNCHRONIZE CACHE
])
def test_durability_is_left_to_the_transport(tmp_path: Path, cdb: bytes,
                                             data: bytes | None) -> None:
    file_device(tmp_path)
    dev = SpyDevice(tmp_path / "disk.img")
    lu = ready_lu(dev)
    cmd = ScsiCommand(cdb, data, len(data or b""), NEXUS)
    resp = lu.execute(cmd)
    assert resp.status == ScsiStatus.GOOD and resp.flush_before_status
    assert "flush" not in dev.calls and "write fua=True" not in dev.calls
    assert lu.complete_flush(cmd, resp).status == ScsiStatus.GOOD
    assert dev.calls[-1] == "flush"


def test_offline_lu_answers_not_ready_then_medium_changed(tmp_path: Path) -> None:
    """A forced rewind takes the LU offline: media access is NOT READY, OPERATION IN
    PROGRESS, INQUIRY still answers; back online, every nexus first hears MEDIUM MAY HAVE
    CHANGED, then I/O works (the switch's daemon relies on this)."""
    lu = ready_lu(file_device(tmp_path))
    lu.take_offline("rewind")
    for cdb in (bytes(6), cdb10(0x28, 0, 1)):
        assert sense_of(run(lu, cdb)) == (0x02, 0x04, 0x07)
    assert run(lu, inquiry()).status == 0
    assert sense_of(run(lu, cdb10(0x2A, 0, 1), bytes(BS))) == (0x02, 0x04, 0x07)
    lu.bring_online()
    assert sense_of(run(lu, bytes(6))) == (0x06, 0x28, 0x00)
    assert run(lu, cdb10(0x28, 0, 1)).status == 0
