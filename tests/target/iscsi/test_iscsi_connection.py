"""The sans-I/O connection: login, reads, writes, CmdSN window, NOP, logout, TMF, Reject
(RFC 7143; docs/iscsi.md sections 6-9). Driven by iscsi_initiator.Initiator."""

from __future__ import annotations

from dataclasses import replace

import pytest
from iscsi_initiator import (
    BLOCK,
    CHECK_WITH_DATA,
    IQN,
    SENSE,
    FakeLu,
    Initiator,
    connect,
    portal,
    read10,
    write10,
)
from iscsi_samples import INITIATOR_SAMPLES

from target.iscsi.cmdsn import serial_add
from target.iscsi.connection import DISPATCH, Connection, ConnState, NopPolicy, decode_lun
from target.iscsi.discovery import Portal, VisibleTarget
from target.iscsi.errors import RejectReason
from target.iscsi.events import (
    CloseConnection,
    ExecuteCommand,
    LoggedOut,
    TaskManagement,
    TasksAborted,
)
from target.iscsi.keys import parse_text
from target.iscsi.pdu import (
    NO_TAG,
    R2T,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    SCSIResponse,
    SnackRequest,
    TaskFunction,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfResponse,
    encode,
)
from target.scsi.command import ScsiResponse
from target.scsi.sense import ScsiStatus

TUR = bytes(6)


def test_login_then_test_unit_ready() -> None:
    ini = connect()
    ini.send(ini.command(TUR))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == 0 and resp.response == 0
    assert (resp.statsn, resp.exp_cmdsn, resp.max_cmdsn) == (1001, 2, 2 + 127)


def test_read_split_by_mrdsl_and_burst_with_status_in_last() -> None:
    lu = FakeLu()
    ini = connect(lu, mrdsl=8192, keys={"MaxBurstLength": "16384"})
    ini.send(ini.command(read10(2, 64), read=True, edtl=64 * BLOCK), chunk=100)
    pdus = ini.replies()
    assert all(isinstance(p, DataIn) for p in pdus) and len(pdus) == 4
    assert [p.datasn for p in pdus] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert [p.buffer_offset for p in pdus] == [0, 8192, 16384, 24576]  # type: ignore[attr-defined]
    assert [p.final for p in pdus] == [False, True, False, True]  # type: ignore[attr-defined]
    assert [p.has_status for p in pdus] == [False, False, False, True]  # type: ignore[attr-defined]
    data = b"".join(bytes(p.data) for p in pdus)  # type: ignore[attr-defined]
    assert data == lu.media[2 * BLOCK : 66 * BLOCK]
    assert pdus[-1].statsn == 1001  # type: ignore[attr-defined]
    ini.send(ini.command(TUR))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.statsn == 1002


@pytest.mark.parametrize(
    ("blocks", "edtl", "flag", "residual", "sent"),
    [(1, 0, "overflow", 512, 0), (1, 10000, "underflow", 9488, 512),
     (1, 200, "overflow", 312, 200), (2, 512, "overflow", 512, 512)],
)  # fmt: skip
def test_read_residuals(blocks: int, edtl: int, flag: str, residual: int, sent: int) -> None:
    """docs/iscsi.md section 7: libiscsi iSCSIResiduals for READ(10)."""
    ini = connect()
    ini.send(ini.command(read10(0, blocks), read=True, edtl=edtl))
    pdus = ini.replies()
    last = pdus[-1]
    assert isinstance(last, DataIn | SCSIResponse)
    assert getattr(last, flag) and last.residual == residual and last.status == 0
    assert sum(len(p.data) for p in pdus if isinstance(p, DataIn)) == sent
    if sent == 0:  # no data: a SCSI Response, never an empty Data-In
        assert isinstance(last, SCSIResponse) and len(pdus) == 1


def test_check_condition_with_data_sends_separate_response() -> None:
    ini = connect()
    ini.send(ini.command(bytes([CHECK_WITH_DATA]) + bytes(9), read=True, edtl=100))
    data_in, resp = ini.replies()
    assert isinstance(data_in, DataIn) and not data_in.has_status and data_in.final
    assert isinstance(resp, SCSIResponse) and resp.status == ScsiStatus.CHECK_CONDITION
    assert resp.sense == SENSE and resp.exp_datasn == 1


def test_read_flag_absent_sends_no_data() -> None:
    """READ sent with the W flag and immediate data: plain GOOD, no Data-In (tgt)."""
    ini = connect(keys={"ImmediateData": "Yes"})
    ini.send(ini.command(read10(0, 1), write=True, edtl=512, data=b"x" * 512))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == 0


def test_write_with_immediate_data_only() -> None:
    lu = FakeLu()
    ini = connect(lu, keys={"ImmediateData": "Yes"})
    ini.send(ini.command(write10(3, 2), write=True, edtl=1024, data=b"w" * 1024))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == 0 and resp.exp_datasn == 0
    assert lu.media[3 * BLOCK : 5 * BLOCK] == b"w" * 1024
    assert isinstance(lu.commands[-1].data_out, memoryview)


def _receive_carrying(ini: Initiator, raw: bytes, piece: int) -> int:
    """Feed ``raw`` in pieces as server.IscsiProtocol does: into one buffer, the tail the
    connection asks for moved to the front each time. Returns the bytes moved."""
    buf = memoryview(bytearray(1 << 20))
    carried = moved = 0
    for i in range(0, len(raw), piece):
        chunk = raw[i : i + piece]
        end = carried + len(chunk)
        buf[carried:end] = chunk
        for event in ini.conn.receive_data(buf[:end], carried):
            if isinstance(event, ExecuteCommand):
                ini.pending.append(event)
        ini.run_pending()
        carried = ini.conn.take_tail()
        buf[:carried] = buf[end - carried : end]
        moved += carried
    return moved


@pytest.mark.parametrize(("piece", "moved"), [(40_000, 40_000), (1000, 1000)])
def test_a_pdu_split_across_receives_is_carried_over_once(piece: int, moved: int) -> None:
    """One receive ends inside the command: its start is carried over to the next, once;
    a command still not whole after that is assembled, not carried again (each byte is
    moved at most once, however the peer trickles)."""
    lu = FakeLu(blocks=256)
    ini = connect(lu, keys={"ImmediateData": "Yes"}, carry_limit=1 << 19)
    data = bytes(range(255, -1, -1)) * 256  # not the FakeLu's initial pattern
    cmd = ini.command(write10(0, 128), write=True, edtl=len(data), data=data)
    raw = b"".join(bytes(b) for b in encode(cmd))
    assert _receive_carrying(ini, raw, piece) == moved
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == 0
    assert lu.media[: len(data)] == data


def _answer_r2t(ini: Initiator, r2t: R2T, payload: bytes, piece: int) -> None:
    for n, off in enumerate(range(r2t.buffer_offset, r2t.buffer_offset + r2t.desired_length,
                                  piece)):  # fmt: skip
        end = min(off + piece, r2t.buffer_offset + r2t.desired_length)
        ini.send(DataOut(itt=r2t.itt, ttt=r2t.ttt, datasn=n, buffer_offset=off,
                         final=end == r2t.buffer_offset + r2t.desired_length,
                         data=payload[off:end]))  # fmt: skip


def test_write_immediate_unsolicited_then_several_outstanding_r2ts() -> None:
    lu = FakeLu()
    keys = {"ImmediateData": "Yes", "InitialR2T": "No", "FirstBurstLength": "8192",
            "MaxBurstLength": "16384", "MaxOutstandingR2T": "2"}  # fmt: skip
    ini = connect(lu, keys=keys)
    payload = bytes((i * 7) & 0xFF for i in range(64 * 1024))
    cmd = ini.command(write10(0, 128), write=True, final=False, edtl=len(payload),
                      data=payload[:4096])  # fmt: skip
    ini.send(cmd)
    assert ini.replies() == []
    ini.send(DataOut(itt=cmd.itt, datasn=0, buffer_offset=4096, data=payload[4096:6144]))
    ini.send(DataOut(itt=cmd.itt, datasn=1, buffer_offset=6144, final=True,
                     data=payload[6144:8192]))  # fmt: skip
    r2ts = ini.replies()
    assert [(r.r2tsn, r.buffer_offset, r.desired_length) for r in r2ts  # type: ignore[attr-defined]
            ] == [(0, 8192, 16384), (1, 24576, 16384)]  # fmt: skip
    assert len({r.ttt for r in r2ts}) == 2  # type: ignore[attr-defined]
    assert all(r.statsn == 1001 for r in r2ts)  # type: ignore[attr-defined]
    first, second = r2ts
    assert isinstance(first, R2T) and isinstance(second, R2T)
    _answer_r2t(ini, first, payload, 4096)
    (third,) = ini.replies()
    assert isinstance(third, R2T) and (third.r2tsn, third.buffer_offset) == (2, 40960)
    _answer_r2t(ini, second, payload, 8192)
    (fourth,) = ini.replies()
    assert isinstance(fourth, R2T) and fourth.desired_length == 65536 - 57344
    _answer_r2t(ini, third, payload, 16384)
    assert ini.replies() == []
    _answer_r2t(ini, fourth, payload, 8192)
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == 0 and resp.exp_datasn == 4
    assert bytes(lu.media[: len(payload)]) == payload


@pytest.mark.parametrize("datasns", [[0, 0], [27], [0xFFFFFFFF], [1, 0]])
def test_wrong_datasn_fails_the_write(datasns: list[int]) -> None:
    """libiscsi iSCSIdatasn (docs/iscsi.md section 7.5): never GOOD."""
    lu = FakeLu()
    ini = connect(lu, keys={"ImmediateData": "No"})
    cmd = ini.command(write10(0, 2), write=True, edtl=1024)
    ini.send(cmd)
    (r2t,) = ini.replies()
    assert isinstance(r2t, R2T) and r2t.desired_length == 1024
    size = 1024 // len(datasns)
    for n, datasn in enumerate(datasns):
        ini.send(DataOut(itt=cmd.itt, ttt=r2t.ttt, datasn=datasn, buffer_offset=n * size,
                         final=n == len(datasns) - 1, data=b"d" * size))  # fmt: skip
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == ScsiStatus.CHECK_CONDITION
    assert resp.sense[2] == 0x0B and resp.sense[12] == 0x4B  # ABORTED COMMAND
    assert lu.commands == []
    ini.send(ini.command(TUR))
    (ok,) = ini.replies()
    assert isinstance(ok, SCSIResponse) and ok.status == 0


def test_wrong_offset_and_unknown_task_data_out() -> None:
    ini = connect(keys={"ImmediateData": "No"})
    ini.send(DataOut(itt=0x999, ttt=5, data=b"zz"))  # unknown task: discarded silently
    assert ini.replies() == []
    cmd = ini.command(write10(0, 1), write=True, edtl=512)
    ini.send(cmd)
    (r2t,) = ini.replies()
    assert isinstance(r2t, R2T)
    ini.send(DataOut(itt=cmd.itt, ttt=r2t.ttt, buffer_offset=100, final=True, data=b"x" * 512))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.sense[13] == 0x05  # DATA OFFSET ERROR


@pytest.mark.parametrize(("blocks", "edtl", "flag", "residual"),
                         [(1, 10000, "underflow", 9488), (2, 512, "overflow", 512)])  # fmt: skip
def test_write_residuals(blocks: int, edtl: int, flag: str, residual: int) -> None:
    lu = FakeLu()
    ini = connect(lu, keys={"ImmediateData": "Yes", "InitialR2T": "No"})
    payload = b"r" * edtl
    ini.send(ini.command(write10(0, blocks), write=True, edtl=edtl, data=payload[:8192]))
    pdus = ini.replies()
    while pdus and isinstance(pdus[-1], R2T):
        _answer_r2t(ini, pdus[-1], payload, 8192)
        pdus = ini.replies()
    (resp,) = pdus
    assert isinstance(resp, SCSIResponse) and getattr(resp, flag) and resp.residual == residual
    assert lu.media[512:1024] != b"r" * 512  # only whole blocks within EDTL were written


def test_cmdsn_out_of_window_dropped_silently() -> None:
    """libiscsi iSCSIcmdsn TooHigh/TooLow: no answer, no drop; then CmdSN=ExpCmdSN works."""
    ini = connect()
    exp = ini.cmdsn
    for cmdsn in (serial_add(exp, 128), serial_add(exp, -1), serial_add(exp, 1 << 31)):
        events = ini.send(ini.command(TUR, cmdsn=cmdsn))
        assert events == [] and ini.replies() == []
    ini.send(ini.command(TUR, cmdsn=exp))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.exp_cmdsn == exp + 1


def test_early_cmdsn_held_until_the_gap_fills() -> None:
    lu = FakeLu()
    ini = connect(lu)
    exp = ini.cmdsn
    late = ini.command(read10(1, 1), read=True, edtl=512, cmdsn=exp + 1)
    ini.send(late)
    assert ini.replies() == [] and lu.commands == []
    ini.send(ini.command(read10(0, 1), read=True, edtl=512, cmdsn=exp))
    first, second = ini.replies()
    assert isinstance(first, DataIn) and isinstance(second, DataIn)
    assert (first.itt, second.itt) == (late.itt + 1, late.itt)
    assert [bytes(c.cdb)[5] for c in lu.commands] == [0, 1]
    assert second.exp_cmdsn == exp + 2


def test_window_is_flow_control() -> None:
    ini = connect(window=2, auto=False)
    exp = ini.cmdsn
    ini.send(ini.command(TUR))
    ini.send(ini.command(TUR))
    assert len(ini.pending) == 2 and ini.conn.window.max_cmdsn == exp + 1  # ExpCmdSN - 1
    ini.send(ini.command(TUR))  # window closed: dropped
    assert len(ini.pending) == 2
    ini.run_pending()
    resps = ini.replies()
    assert [r.max_cmdsn for r in resps] == [exp + 2, exp + 3]  # type: ignore[attr-defined]


def test_immediate_command_does_not_advance_expcmdsn() -> None:
    ini = connect()
    ini.send(ini.command(TUR, immediate=True))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.exp_cmdsn == ini.cmdsn == 1


def test_unknown_lun_still_executes_with_lu_none() -> None:
    ini = connect(auto=False)
    ini.send(ini.command(TUR, lun=5 << 48))
    (event,) = ini.pending
    assert event.lun == 5 and event.lu is None
    assert decode_lun(0x4005 << 48) == 5 and decode_lun(0xC001 << 48) >= 0x8000


def test_nop_ping_echo_and_no_answer_nop() -> None:
    ini = connect(mrdsl=512)
    ini.send(NopOut(itt=9, cmdsn=ini.cmdsn, data=b"p" * 600))
    (pong,) = ini.replies()
    assert isinstance(pong, NopIn) and pong.itt == 9 and pong.ttt == NO_TAG
    assert bytes(pong.data) == b"p" * 512 and pong.exp_cmdsn == 2  # consumed a CmdSN
    ini.send(NopOut(itt=NO_TAG, immediate=True, cmdsn=2))
    assert ini.replies() == []


def test_target_ping_and_timeout() -> None:
    ini = connect(nop=NopPolicy(interval=5.0, timeout=5.0))
    conn = ini.conn
    assert conn.tick(0.0) == [] and ini.replies() == []
    conn.tick(5.0)
    (ping,) = ini.replies()
    assert isinstance(ping, NopIn) and ping.itt == NO_TAG and ping.ttt != NO_TAG
    ini.send(NopOut(itt=NO_TAG, ttt=ping.ttt, immediate=True, cmdsn=ini.cmdsn))
    assert conn.tick(6.0) == []
    conn.tick(11.0)
    (again,) = ini.replies()
    assert isinstance(again, NopIn)
    assert conn.tick(15.9) == []
    assert isinstance(conn.tick(16.1)[0], CloseConnection)


def test_no_ping_nor_timeout_while_the_shell_is_not_reading_for_its_own_reasons() -> None:
    """``tick(idle=False)``: the shell paused reading (a volume's write buffer full, the
    disk behind), so the initiator's silence is not its own: no ping, and a ping already
    out does not time out. Once reading again, the count starts afresh."""
    ini = connect(nop=NopPolicy(interval=5.0, timeout=5.0))
    conn = ini.conn
    assert conn.tick(0.0) == []
    assert conn.tick(30.0, idle=False) == [] and ini.replies() == []
    assert conn.tick(34.0) == [] and ini.replies() == []
    conn.tick(35.0)
    (ping,) = ini.replies()
    assert isinstance(ping, NopIn)
    assert conn.tick(60.0, idle=False) == []  # the ping is out: no timeout while paused
    assert conn.tick(64.9) == []
    assert isinstance(conn.tick(65.1)[0], CloseConnection)


def test_window_update_nop_when_maxcmdsn_moved_silently() -> None:
    ini = connect(nop=NopPolicy(interval=None))
    ini.conn.tick(1.0)
    assert ini.replies() == []  # every response already carried the current MaxCmdSN
    ini.conn.window.advance()  # as if a CmdSN were consumed without a response
    ini.conn.tick(2.0)
    (update,) = ini.replies()
    assert isinstance(update, NopIn) and update.itt == update.ttt == NO_TAG
    assert update.max_cmdsn == ini.conn.window.max_cmdsn and update.statsn == 1001


def test_logout() -> None:
    ini = connect(auto=False)
    ini.send(ini.command(TUR))
    events = ini.send(LogoutRequest(itt=77, reason=0, cmdsn=ini.cmdsn))
    assert [type(e) for e in events] == [TasksAborted, LoggedOut, CloseConnection]
    (resp,) = ini.replies()
    assert isinstance(resp, LogoutResponse) and resp.response == 0 and resp.itt == 77
    assert ini.conn.receive_data(b"anything") == []


def test_logout_recovery_not_supported() -> None:
    ini = connect()
    ini.send(LogoutRequest(itt=77, reason=2, cmdsn=ini.cmdsn))
    (resp,) = ini.replies()
    assert isinstance(resp, LogoutResponse) and resp.response == 2 and ini.conn.open


def test_abort_task_then_late_completion_ignored() -> None:
    ini = connect(auto=False)
    cmd = ini.command(TUR)
    ini.send(cmd)
    events = ini.send(TaskMgmtRequest(itt=50, function=TaskFunction.ABORT_TASK,
                                      referenced_task_tag=cmd.itt, ref_cmdsn=cmd.cmdsn,
                                      cmdsn=ini.cmdsn))  # fmt: skip
    assert TasksAborted((cmd.itt,)) in events
    (resp,) = ini.replies()
    assert isinstance(resp, TaskMgmtResponse) and resp.response == TmfResponse.FUNCTION_COMPLETE
    ini.run_pending()  # the shell answers anyway: nothing is sent for an aborted task
    assert ini.replies() == []
    ini.send(TaskMgmtRequest(itt=51, function=TaskFunction.ABORT_TASK,
                             referenced_task_tag=cmd.itt, ref_cmdsn=cmd.cmdsn,
                             cmdsn=ini.cmdsn))  # fmt: skip
    (resp,) = ini.replies()
    assert isinstance(resp, TaskMgmtResponse) and resp.response == TmfResponse.TASK_DOES_NOT_EXIST


def test_abort_of_a_held_command() -> None:
    ini = connect(auto=False)
    exp = ini.cmdsn
    late = ini.command(TUR, cmdsn=exp + 1)
    ini.send(late)
    ini.send(TaskMgmtRequest(itt=50, function=TaskFunction.ABORT_TASK, cmdsn=exp + 2,
                             referenced_task_tag=late.itt, ref_cmdsn=exp + 1))  # fmt: skip
    (resp,) = ini.replies()
    assert isinstance(resp, TaskMgmtResponse) and resp.response == 0
    ini.send(ini.command(TUR, cmdsn=exp))
    assert [e.task_tag for e in ini.pending] == [late.itt + 1]
    assert ini.conn.window.exp_cmdsn == exp + 2


@pytest.mark.parametrize(
    ("function", "lun", "expected"),
    [(TaskFunction.LOGICAL_UNIT_RESET, 0, TmfResponse.FUNCTION_COMPLETE),
     (TaskFunction.ABORT_TASK_SET, 0, TmfResponse.FUNCTION_COMPLETE),
     (TaskFunction.LOGICAL_UNIT_RESET, 3, TmfResponse.LUN_DOES_NOT_EXIST),
     (TaskFunction.TARGET_WARM_RESET, 0, TmfResponse.FUNCTION_COMPLETE),
     (TaskFunction.TARGET_COLD_RESET, 0, TmfResponse.NOT_SUPPORTED),
     (TaskFunction.TASK_REASSIGN, 0, TmfResponse.REASSIGNMENT_NOT_SUPPORTED),
     (77, 0, TmfResponse.NOT_SUPPORTED)],
)  # fmt: skip
def test_task_management(function: int, lun: int, expected: TmfResponse) -> None:
    ini = connect(auto=False)
    ini.send(ini.command(TUR))
    events = ini.send(TaskMgmtRequest(itt=60, function=function, lun=lun << 48,
                                      cmdsn=ini.cmdsn))  # fmt: skip
    (resp,) = ini.replies()
    assert isinstance(resp, TaskMgmtResponse) and resp.response == expected
    if expected is TmfResponse.FUNCTION_COMPLETE:
        assert isinstance(events[0], TasksAborted) and isinstance(events[1], TaskManagement)
        assert (events[1].lu is None) == (function == TaskFunction.TARGET_WARM_RESET)
    else:
        assert events == []


def test_malformed_pdus_are_rejected_and_the_connection_lives() -> None:
    ini = connect()
    bogus = bytearray(48)
    bogus[0] = 0x1C  # no such opcode: Reject 0x05
    ini.raw(bytes(bogus))
    ini.send(SnackRequest(itt=3))  # ERL 0: Reject 0x04
    ini.send(LoginRequest(itt=4, csg=1, nsg=3, transit=True))  # login in FFP: Reject 0x04
    reasons = [r.reason for r in ini.replies()]  # type: ignore[attr-defined]
    assert reasons == [RejectReason.COMMAND_NOT_SUPPORTED, RejectReason.PROTOCOL_ERROR,
                       RejectReason.PROTOCOL_ERROR]  # fmt: skip
    ini.send(ini.command(TUR))
    (ok,) = ini.replies()
    assert isinstance(ok, SCSIResponse) and ok.statsn == 1004


def test_too_large_segment_rejected_and_duplicate_itt() -> None:
    ini = connect()
    ini.send(NopOut(itt=9, cmdsn=ini.cmdsn, data=b"x" * 300000))
    (reject,) = ini.replies()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    ini.auto = False
    ini.send(ini.command(TUR))
    dup = ini.command(TUR)
    ini.send(replace(dup, itt=ini.pending[0].task_tag))
    (reject,) = ini.replies()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.TASK_IN_PROGRESS


def test_header_digest_error_closes() -> None:
    ini = connect(keys={"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"})
    assert ini.conn.params.header_digest
    ini.send(ini.command(TUR))
    assert isinstance(ini.replies()[0], SCSIResponse)
    raw = bytearray(b"".join(bytes(b) for b in encode(ini.command(TUR), header_digest=True,
                                                        data_digest=True)))  # fmt: skip
    raw[50] ^= 0xFF
    events = ini.raw(bytes(raw))
    assert isinstance(events[-1], CloseConnection) and not ini.conn.open


def test_login_failure_closes() -> None:
    conn = Connection(portal())
    ini = Initiator(conn)
    answer = ini.login({"TargetName": "iqn.2026-11.org.cdpswitch:nope"})
    assert answer.status_class == 2 and not conn.open
    assert isinstance(ini.events[-1], CloseConnection)


def test_non_login_pdu_during_login_closes() -> None:
    conn = Connection(portal())
    events = conn.receive_data(b"".join(bytes(b) for b in encode(NopOut())))
    assert isinstance(events[-1], CloseConnection)


def _discovery(targets: int, mrdsl: int) -> Initiator:
    visible = [VisibleTarget(f"iqn.2026-11.org.cdpswitch:t{i:03d}", (Portal("127.0.0.1"),))
               for i in range(targets)]  # fmt: skip
    conn = Connection(portal(), visible_targets=lambda initiator: visible)
    ini = Initiator(conn, mrdsl=mrdsl)
    assert ini.login({"SessionType": "Discovery"}).status_class == 0
    return ini


def test_discovery_send_targets_and_no_scsi() -> None:
    ini = _discovery(1, 8192)
    ini.send(TextRequest(itt=2, cmdsn=ini.cmdsn, data=b"SendTargets=All\0X-foo=1\0"))
    (reply,) = ini.replies()
    assert isinstance(reply, TextResponse) and reply.final and reply.ttt == NO_TAG
    assert parse_text(reply.data) == {"TargetName": "iqn.2026-11.org.cdpswitch:t000",
                                      "TargetAddress": "127.0.0.1:3260,1",
                                      "X-foo": "NotUnderstood"}  # fmt: skip
    ini.cmdsn += 1
    ini.send(ini.command(TUR))
    (reject,) = ini.replies()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    ini.send(NopOut(itt=3, cmdsn=ini.cmdsn))  # the rejected command consumed its CmdSN
    (pong,) = ini.replies()
    assert isinstance(pong, NopIn)


def test_long_send_targets_answer_continues_by_ttt() -> None:
    ini = _discovery(40, 512)
    ini.send(TextRequest(itt=2, cmdsn=ini.cmdsn, data=b"SendTargets=All\0"))
    text = b""
    while True:
        (reply,) = ini.replies()
        assert isinstance(reply, TextResponse) and len(reply.data) <= 512
        text += bytes(reply.data)
        if reply.final:
            break
        assert reply.cont and reply.ttt != NO_TAG
        ini.send(TextRequest(itt=2, ttt=reply.ttt, cmdsn=ini.cmdsn, immediate=True))
    assert text.count(b"TargetName=") == 40
    ini.send(TextRequest(itt=3, ttt=12345, cmdsn=ini.cmdsn, immediate=True))
    (reject,) = ini.replies()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.INVALID_PDU_FIELD


def test_text_request_spanning_pdus() -> None:
    ini = _discovery(1, 8192)
    ini.send(TextRequest(itt=2, cmdsn=ini.cmdsn, final=False, cont=True, data=b"SendTar"))
    (ack,) = ini.replies()
    assert isinstance(ack, TextResponse) and not ack.final and len(ack.data) == 0
    ini.send(TextRequest(itt=2, ttt=ack.ttt, cmdsn=ini.cmdsn, immediate=True,
                         data=b"gets=All\0"))  # fmt: skip
    (reply,) = ini.replies()
    assert isinstance(reply, TextResponse) and reply.final and b"t000" in bytes(reply.data)


def test_receive_eof_aborts_tasks() -> None:
    ini = connect(auto=False)
    ini.send(ini.command(TUR))
    events = ini.conn.receive_eof()
    assert isinstance(events[0], TasksAborted) and isinstance(events[1], CloseConnection)


def test_complete_refuses_pending_flush() -> None:
    ini = connect(auto=False)
    ini.send(ini.command(TUR))
    with pytest.raises(ValueError, match="complete_flush"):
        ini.conn.complete(ini.pending[0].task_tag,
                          ScsiResponse(ScsiStatus.GOOD, flush_before_status=True))  # fmt: skip


def test_write_edtl_above_limit_fails_cleanly() -> None:
    conn = Connection(portal(), luns=lambda target: {0: FakeLu()}, max_write_length=4096)
    ini = Initiator(conn)
    ini.login({"ImmediateData": "Yes"})
    ini.send(ini.command(write10(0, 16), write=True, edtl=8192, data=b"x" * 512))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.sense[2] == 0x05 and resp.sense[12] == 0x24
    assert not any(isinstance(e, ExecuteCommand) for e in ini.events)
    assert IQN


# --- the dispatch table: every (state, initiator opcode) pair (STYLE.md guide item 2) -------


@pytest.mark.parametrize("session", ["Normal", "Discovery"])
@pytest.mark.parametrize("sample", INITIATOR_SAMPLES, ids=lambda p: type(p).__name__)
def test_every_opcode_in_full_feature_phase(session: str, sample: Pdu) -> None:
    """Listed pairs are handled; unlisted ones are Reject 0x04 and the connection lives."""
    if session == "Normal":
        ini = connect()
        state = ConnState.NORMAL
    else:
        ini = _discovery(1, 8192)
        state = ConnState.DISCOVERY
    immediate = hasattr(sample, "immediate")
    pdu = replace(sample, immediate=True) if immediate else sample  # type: ignore[call-arg]
    ini.send(pdu)
    replies = ini.replies()
    rejects = [r for r in replies if isinstance(r, Reject)]
    listed = (state, sample.OPCODE) in DISPATCH
    if not listed:
        assert [r.reason for r in rejects] == [RejectReason.PROTOCOL_ERROR]
    assert ini.conn.open or isinstance(sample, LogoutRequest)


@pytest.mark.parametrize("sample", INITIATOR_SAMPLES, ids=lambda p: type(p).__name__)
def test_every_opcode_during_login(sample: Pdu) -> None:
    """Only Login Requests are valid before full feature phase (RFC 7143 section 6.3)."""
    conn = Connection(portal())
    events = conn.receive_data(b"".join(bytes(b) for b in encode(sample)))
    if isinstance(sample, LoginRequest):
        assert conn.data_to_send()  # answered (here: a failing Login Response)
    else:
        assert isinstance(events[-1], CloseConnection) and not conn.open


# --- the receive buffer may be reused after receive_data (framing.py lifetime rule) ---------


def test_data_is_copied_out_of_the_receive_buffer() -> None:
    ini = connect(keys={"ImmediateData": "Yes"}, auto=False)
    exp = ini.cmdsn
    held = ini.command(write10(8, 1), write=True, edtl=512, data=b"H" * 512, cmdsn=exp + 1)
    now = ini.command(write10(9, 1), write=True, edtl=512, data=b"N" * 512, cmdsn=exp)
    ping = NopOut(itt=5, immediate=True, cmdsn=exp, data=b"echo")
    events = []
    for pdu in (held, now, ping):
        buf = bytearray(b"".join(bytes(b) for b in encode(pdu)))
        events += ini.conn.receive_data(memoryview(buf))
        buf[:] = bytes(len(buf))  # the shell reuses its receive buffer
    executed = [e for e in events if isinstance(e, ExecuteCommand)]
    assert [e.task_tag for e in executed] == [now.itt, held.itt]  # CmdSN order
    assert [bytes(e.command.data_out or b"") for e in executed] == [b"N" * 512, b"H" * 512]
    (pong,) = ini.replies()
    assert isinstance(pong, NopIn) and bytes(pong.data) == b"echo"


def test_write_reaches_the_shell_only_with_all_its_data() -> None:
    ini = connect(keys={"ImmediateData": "No"}, auto=False)
    cmd = ini.command(write10(0, 2), write=True, edtl=1024)
    ini.send(cmd)
    (r2t,) = ini.replies()
    assert isinstance(r2t, R2T) and ini.pending == []
    ini.send(DataOut(itt=cmd.itt, ttt=r2t.ttt, datasn=0, data=b"a" * 512))
    assert ini.pending == []
    ini.send(DataOut(itt=cmd.itt, ttt=r2t.ttt, datasn=1, buffer_offset=512, final=True,
                     data=b"b" * 512))  # fmt: skip
    (event,) = ini.pending
    assert bytes(event.command.data_out or b"") == b"a" * 512 + b"b" * 512
    assert event.command.expected_length == 1024 and event.command.nexus == ini.conn.nexus


def test_wrong_datasn_in_the_unsolicited_sequence() -> None:
    ini = connect(keys={"InitialR2T": "No", "ImmediateData": "No"})
    cmd = ini.command(write10(0, 2), write=True, final=False, edtl=1024)
    ini.send(cmd)
    ini.send(DataOut(itt=cmd.itt, datasn=1, data=b"u" * 512))
    ini.send(DataOut(itt=cmd.itt, datasn=1, buffer_offset=512, final=True, data=b"u" * 512))
    (resp,) = ini.replies()
    assert isinstance(resp, SCSIResponse) and resp.status == ScsiStatus.CHECK_CONDITION


def test_tick_before_login_does_nothing() -> None:
    conn = Connection(portal())
    assert conn.tick(1e9) == [] and conn.data_to_send() == []


def test_request_logout_sends_async_message() -> None:
    ini = connect()
    ini.conn.request_logout(5)
    (message,) = ini.replies()
    assert isinstance(message, AsyncMessage) and message.async_event == AsyncEvent.REQUEST_LOGOUT
    assert message.param3 == 5 and message.statsn == 1001
    ini.send(LogoutRequest(itt=8, reason=0, cmdsn=ini.cmdsn))
    (resp,) = ini.replies()
    assert isinstance(resp, LogoutResponse) and resp.statsn == 1002
