"""One iSCSI connection of a single-connection, ERL 0 session, sans-I/O (the h11/h2 model;
RFC 7143 sections 3-4, 7, 11; docs/iscsi.md). No sockets, no asyncio, no clock.

Theory of operation:

- The shell feeds received bytes to ``receive_data`` (a memoryview of its receive buffer is
  fine: see the lifetime rule in framing.py; everything kept longer is copied once) and gets
  back a list of ``events`` to act on; then it sends ``data_to_send()``, a list of buffers
  for one ``sendmsg`` (payloads are never joined: ``pdu.encode``). It answers each
  ``ExecuteCommand`` with ``complete(task_tag, response)``, whenever the LU is done, and
  calls ``tick(now)`` periodically (seconds, any monotonic clock).
- ``ConnState`` is LOGIN until the ``LoginMachine`` reaches full feature phase, then NORMAL
  or DISCOVERY by session type, and CLOSED after a logout, a failed login or a fatal error.
  ``DISPATCH`` maps (state, opcode) to a handler; an unlisted pair is a protocol error:
  Reject 0x04 in full feature phase (RFC 7143 section 11.17.1), a dropped connection during
  login (only Login Requests are valid there, section 6.3).
- Requests that carry a CmdSN (SCSI Command, TMF, Text, Logout, NOP-Out ping) pass the
  command window (cmdsn.py) first unless immediate: out-of-window ones are dropped
  silently, early ones held until the gap fills, so handlers run in CmdSN order (section
  3.2.2.1). A rejected non-immediate request still consumes its CmdSN.
- SCSI commands become tasks keyed by ITT. Reads go to the shell at once; writes first
  collect their Data-Out (transfer.py), sending R2Ts, then go to the shell with their data.
  Writes can therefore reach the shell after later reads: fine for SIMPLE tasks, which is
  what initiators send (ORDERED/HEAD OF QUEUE are treated as SIMPLE).
- LUNs: ``luns(target_name)`` gives the Mapping of LUN number to LU object for the logged-in
  target. A command for a LUN not in it is still an ``ExecuteCommand``, with ``lu=None``:
  the SCSI layer's ``execute_without_lu`` answers INQUIRY (qualifier 3), REPORT LUNS and
  05h/25h/00h, which is what initiators probe with.
- The inline lane (``inline=`` executor, given by the server): at the head of each receive,
  plain READ/WRITE commands (next in CmdSN order, no AHS, a read answered by one Data-In,
  a write whose data all came as immediate data) are executed straight from the receive
  buffer and answered at once, without building PDU objects, tasks or events; the first PDU
  it does not take, and everything after it in that receive, goes the general way, so
  commands still run in the order they came. The lane is off with digests. Its answers
  are byte for byte those of the general path (test_iscsi_inline.py).
- StatSN (connection) advances for every status-bearing PDU; R2T, Data-In without status
  and target NOP-In pings carry it without advancing (docs/iscsi.md section 6).
- Errors: ``PduRejected`` (from the reader or a handler) becomes a Reject PDU and the
  connection goes on; ``ConnectionFatal`` becomes ``CloseConnection``. Nothing else
  escapes ``receive_data``; ``complete`` raises ``ValueError`` only for a shell bug (a
  response still flagged ``flush_before_status``).
- Not (yet) here: sessions of several connections (MaxConnections=1), ERL > 0, key
  renegotiation in full feature phase (only SendTargets; other keys get NotUnderstood),
  trimming R2Ts to the CDB's transfer length (EDTL is solicited), ExpStatSN bookkeeping.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

from target.scsi.command import ScsiCommand, ScsiResponse
from volume_manager.blockdev import FileSpan

from .cmdsn import CmdWindow, Verdict, serial_lt
from .discovery import VisibleTarget, reject_text, select_targets, send_targets_text
from .errors import ConnectionFatal, PduRejected, RejectReason
from .events import (
    CloseConnection,
    Event,
    ExecuteCommand,
    LoggedOut,
    LoginComplete,
    Nexus,
    TaskManagement,
    TasksAborted,
)
from .framing import DEFAULT_HARD_CAP, PduReader
from .keys import NOT_UNDERSTOOD, OperationalParameters, SessionType, encode_text
from .login import LoginMachine, LoginResult, LoginState, PortalConfig
from .pdu import (
    BHS_LEN,
    MAX_DSL,
    NO_TAG,
    PADDING,
    R2T,
    AsyncEvent,
    AsyncMessage,
    Buffer,
    DataOut,
    LoginRequest,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Opcode,
    OutBuffer,
    Pdu,
    Reject,
    SCSICommand,
    SCSIResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfResponse,
    encode,
    frame,
)
from .text import TextExchange
from .tmf import TmfScope, tmf_rule
from .transfer import SenseTuple, Task, WriteTransfer, data_in_pdus, decode_lun, fixed_sense

__all__ = ["DISPATCH", "ConnState", "Connection", "NopPolicy", "Task", "decode_lun"]

_GOOD, _CHECK_CONDITION, _CONDITION_MET = 0x00, 0x02, 0x04
# Data-In with F and S set and GOOD status: opcode, flags, (reserved), status, length word
# (no AHS, so the data segment length), LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, and
# DataSN, Buffer Offset, Residual Count all zero (the layout of pdu_target.DataIn).
_DATA_IN_WITH_STATUS = struct.Struct(">BBxxIQIIIII12x")
_DATA_IN_FINAL_STATUS = 0x81
_SCSI_COMMAND = int(Opcode.SCSI_COMMAND)  # the lane compares it without IntEnum's equality
_SCSI_DATA_IN = int(Opcode.SCSI_DATA_IN)
_SCSI_RESPONSE = int(Opcode.SCSI_RESPONSE)
_NO_DIGESTS = (False, False)  # Connection._digests when none is negotiated (compared by is)
# SCSI Response, GOOD, no data: opcode, flags (F), response 0, status 0, length word 0,
# reserved, ITT, SNACK Tag 0, StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN, residuals 0
# (the layout of pdu_target.SCSIResponse).
_GOOD_RESPONSE = struct.Struct(">BBxx4x8xI4xIIII8x")
_FINAL = 0x80
# The inline lane's view of a SCSI Command BHS: byte 0, flags, the length word, LUN, ITT,
# EDTL, CmdSN (ExpStatSN and the CDB are read separately).
_LANE_BHS = struct.Struct(">BBxxIQIII")
_F_READ, _F_WRITE = 0xC0, 0xA0  # F+R, F+W (ATTR is ignored: all tasks are SIMPLE here)
_ATTR, _SIMPLE = 0x07, 0x01  # task attribute bits; untagged (0) and SIMPLE (1) may overlap
# Runs a command at once if it can (see Connection._lane); None: not taken, nothing done.
InlineExecutor = Callable[[object, ScsiCommand], ScsiResponse | None]
# (lu, cdb, edtl, nexus, spans_ok) -> the data of a plain read, or None having done nothing
InlineReader = Callable[[object, bytes | memoryview, int, object, bool],
                        "bytes | bytearray | memoryview | FileSpan | None"]
# (lu, cdb, data, nexus) -> True once a plain write is done; False having done nothing. It may
# raise: the write did nothing then, and the general path runs it again to answer.
InlineWriter = Callable[[object, bytes | memoryview, memoryview, object], bool]
DEFAULT_MAX_WRITE = 64 << 20  # largest EDTL a write may allocate a buffer for


class ConnState(enum.Enum):
    LOGIN = "login"
    NORMAL = "full-feature normal"
    DISCOVERY = "full-feature discovery"
    CLOSED = "closed"


_FFP_OPS = (Opcode.NOP_OUT, Opcode.TEXT_REQUEST, Opcode.LOGOUT_REQUEST)
# (state, opcode) -> handler name. Discovery sessions allow only Text, NOP and Logout
# (RFC 7143 section 4.3 and docs/iscsi.md section 10).
DISPATCH: dict[tuple[ConnState, Opcode], str] = {
    (ConnState.LOGIN, Opcode.LOGIN_REQUEST): "_on_login",
    **{(ConnState.DISCOVERY, op): f"_on_{op.name.lower()}" for op in _FFP_OPS},
    **{(ConnState.NORMAL, op): f"_on_{op.name.lower()}" for op in _FFP_OPS},
    (ConnState.NORMAL, Opcode.SCSI_COMMAND): "_on_scsi_command",
    (ConnState.NORMAL, Opcode.SCSI_DATA_OUT): "_on_scsi_data_out",
    (ConnState.NORMAL, Opcode.TASK_MGMT_REQUEST): "_on_task_mgmt_request",
    (ConnState.NORMAL, Opcode.SNACK_REQUEST): "_on_snack_request",
}


def _ordered_cmdsn(pdu: Pdu) -> int | None:
    """The CmdSN of a non-immediate request the window orders; None for anything else
    (immediate requests, Data-Out, SNACK, NOP-Out with ITT 0xffffffff: section 3.2.2.1)."""
    if isinstance(pdu, SCSICommand | TaskMgmtRequest | TextRequest | LogoutRequest):
        return None if pdu.immediate else pdu.cmdsn
    if isinstance(pdu, NopOut) and pdu.itt != NO_TAG:
        return None if pdu.immediate else pdu.cmdsn
    return None



class _Seq(TypedDict):
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int


@dataclass(frozen=True, slots=True)
class NopPolicy:
    """Target-initiated NOP-In (RFC 7143 section 11.19): ping after ``interval`` seconds
    without received bytes; drop the connection ``timeout`` seconds later if still silent.
    ``interval`` None disables pings."""

    interval: float | None = 10.0
    timeout: float = 15.0


class Connection:
    """The target side of one iSCSI connection. See the module docstring."""

    def __init__(
        self,
        portal: PortalConfig,
        *,
        luns: Callable[[str], Mapping[int, object]] = lambda target: {},
        visible_targets: Callable[[str], Sequence[VisibleTarget]] = lambda initiator: (),
        initial_statsn: int | None = None,
        allocate_tsih: Callable[[], int] | None = None,
        chap_random: Callable[[int], bytes] = secrets.token_bytes,
        nop: NopPolicy | None = None,
        max_write_length: int = DEFAULT_MAX_WRITE,
        hard_cap: int = DEFAULT_HARD_CAP,
        inline: InlineExecutor | None = None,
        inline_read: InlineReader | None = None,
        inline_write: InlineWriter | None = None,
        file_spans: bool = False,
        carry_limit: int = 0,
    ) -> None:
        self.portal = portal
        self.state = ConnState.LOGIN
        self.login = LoginMachine(portal, initial_statsn=initial_statsn,
                                  allocate_tsih=allocate_tsih, chap_random=chap_random)  # fmt: skip
        self.result: LoginResult | None = None
        self.params = OperationalParameters()
        self.nexus: Nexus | None = None
        self.tasks: dict[int, Task] = {}
        self.window = CmdWindow(0, portal.cmd_window)
        self._luns_of = luns
        self._visible_of = visible_targets
        self.luns: Mapping[int, object] = {}
        declared = portal.offer.numbers["MaxRecvDataSegmentLength"]
        self._reader = PduReader(hard_cap=max(hard_cap, min(declared, MAX_DSL)),
                                 carry_limit=carry_limit)
        self._nop = nop or NopPolicy()
        self._max_write = max_write_length
        self._statsn = 0
        self._out: list[OutBuffer] = []
        self._events: list[Event] = []
        self._held: dict[int, Pdu | None] = {}  # early CmdSN -> request (None: consumed)
        self._next_ttt = 1
        self._immediate_tasks = 0
        self._digests = _NO_DIGESTS
        self._text: TextExchange | None = None
        self._received = False  # bytes arrived since the last tick
        self._last_rx: float | None = None
        self._ping: tuple[int, float] | None = None  # (TTT, sent at) of our NOP-In ping
        self._advertised_max = 0
        self._inline = inline
        self._inline_read = inline_read
        self._inline_write = inline_write
        self._lun_numbers: dict[int, int] = {}  # LUN field -> LUN number, for the lane
        # The shell sends FileSpan buffers (sendfile): reads may answer with them.
        self._file_spans = file_spans
        self._carried_in = (0, 0)  # (bytes carried over, bytes in all) of the last receive
        self.spans_queued = False  # a FileSpan is among the buffers to send

    # --- the shell's interface ----------------------------------------------------------

    def receive_data(self, data: Buffer, carried: int = 0) -> list[Event]:
        """Feed received bytes; returns the events to act on (module docstring).
        ``carried``: ``data`` starts with the ``tail`` of the last call, carried over
        (framing.py, ``carry_limit``)."""
        if self.state is ConnState.CLOSED:
            return []
        if carried:
            self._reader.drop_tail(carried)
        self._carried_in = (carried, memoryview(data).nbytes)
        self._received = True
        if self._inline is not None and self.state is ConnState.NORMAL \
                and self._digests is _NO_DIGESTS:
            data = self._receive_inline(memoryview(data).cast("B"))
        self._reader.receive_data(data)
        self._pump()
        return self._take_events()

    def _pump(self) -> None:
        """Route every complete PDU the reader holds."""
        while self.open:
            try:
                pdu = self._reader.next_pdu()
            except PduRejected as exc:
                if self.state is ConnState.LOGIN:
                    self._close(f"malformed PDU during login: {exc}")
                else:
                    self._reject(exc)
                continue
            except ConnectionFatal as exc:
                self._close(str(exc))
                break
            if pdu is None:
                break
            self._route(pdu)

    # --- the inline lane ------------------------------------------------------------------

    def _receive_inline(self, view: memoryview) -> memoryview:
        """Run the plain commands at the head of ``view`` through the inline lane; return
        what is left for the reader. A PDU the last receive cut short is finished first, so a
        stream of writes split across receives stays in the lane. Commands run in the order
        they came, as on the general path: once a command goes the general way (and waits
        for the shell), the rest of this receive follows it."""
        need = self._reader.missing
        if need is None or need > view.nbytes or self._held:
            return view
        if need:  # finish the PDU the last receive cut short: by the lane if it takes it
            head = memoryview(self._reader.take_partial() + view[:need])
            if self._lane(head, 0) < head.nbytes:
                self._reader.receive_data(head)
                self._pump()
                # Its command now waits for the shell: later ones must not overtake it.
                if self._events or self.state is not ConnState.NORMAL or self._held:
                    return view[need:]
        return view[self._lane(view, need):]

    def _lane(self, view: memoryview, pos: int) -> int:
        """Execute plain READ/WRITE commands straight from the receive buffer (module
        docstring, "inline lane"); returns where the first PDU it does not take starts.

        It takes a non-immediate SCSI Command with no AHS that is next in CmdSN order
        with a slot free, an unused ITT and a mapped LUN, either a read (F+R, no data, EDTL
        within one Data-In PDU and burst) or a write whose whole EDTL came as immediate
        data (F+W, ImmediateData=Yes, within FirstBurstLength), and that the ``inline``
        executor accepts (it returns None for anything it would not finish at once, having
        done nothing). The outcome on the wire is what the general path gives."""
        inline = self._inline
        assert inline is not None
        end = view.nbytes
        window, tasks, luns, numbers = self.window, self.tasks, self.luns, self._lun_numbers
        params = self.params
        read_limit = min(params.initiator_max_recv_dsl, params.max_burst_length)
        write_limit = (min(params.target_max_recv_dsl, params.first_burst_length)
                       if params.immediate_data else -1)  # fmt: skip
        nexus = self.nexus
        spans = self._file_spans
        read, write = self._inline_read, self._inline_write
        while end - pos >= BHS_LEN:
            b0, flags, word, lun_field, itt, edtl, cmdsn = _LANE_BHS.unpack_from(view, pos)
            if b0 != _SCSI_COMMAND or word > MAX_DSL:  # immediate, other PDU, or AHS
                break
            size = BHS_LEN + ((word + 3) & ~3)
            if size > end - pos or not window.is_next(cmdsn) or itt == NO_TAG or itt in tasks:
                break
            kind = flags & 0xE0
            if kind == _F_READ and not word and edtl <= read_limit:
                data_out = None
            elif kind == _F_WRITE and word == edtl <= write_limit:
                data_out = view[pos + BHS_LEN : pos + BHS_LEN + edtl]
            else:
                break
            lun = numbers.get(lun_field)
            if lun is None:
                lun = numbers[lun_field] = decode_lun(lun_field)
            lu = luns.get(lun)
            if lu is None:
                break
            cdb_view = view[pos + 32 : pos + BHS_LEN]  # copied only where it is kept
            if data_out is None and read is not None and edtl:
                # The bulk of reads: data and GOOD status in one Data-In PDU, with no
                # command or response objects.
                data = read(lu, cdb_view, edtl, nexus, spans and flags & _ATTR <= _SIMPLE)
                if data is None:
                    break
                window.advance()
                pos += size
                self._send_read_data(lun_field, itt, data, edtl)
                continue
            if data_out is not None and write is not None:
                try:
                    if not write(lu, cdb_view, data_out, nexus):
                        break
                except Exception:  # it did nothing: the general path answers it
                    break
                window.advance()
                pos += size
                self._send_good_status(itt, 0)
                continue
            cdb = bytes(cdb_view)
            response = inline(lu, ScsiCommand(cdb, data_out, edtl, nexus,
                                              spans and flags & _ATTR <= _SIMPLE))
            if response is None:
                break
            window.advance()
            pos += size
            if (response.status == _GOOD and response.sense is None
                    and not response.residual_underflow and not response.residual_overflow):
                if data_out is not None:
                    self._send_good_status(itt, 0)
                    continue
                if len(response.data_in) == edtl and edtl:
                    self._send_read_data(lun_field, itt, response.data_in, edtl)
                    continue
            # Anything else (an error, a short read) is answered by the general code.
            task = Task(itt, cmdsn, lun_field, lun, lu, cdb, data_out is None,
                        data_out is not None, edtl, False, executing=True)  # fmt: skip
            window.acquire()
            tasks[itt] = task
            self.complete(itt, response)
        return pos

    def take_tail(self) -> int:
        """After ``receive_data`` has been handled: how many bytes at the end of its data
        the shell moves to the front of its buffer and hands in again, ``carried``, with
        the next receive: the start of a PDU of at most ``carry_limit`` bytes (framing.py,
        "Carrying over"). A PDU carried over before and still not whole is assembled
        instead (0), so each byte is moved at most once."""
        if self.state is ConnState.CLOSED:
            return 0
        tail = self._reader.tail
        carried, size = self._carried_in
        if tail and carried and tail == size:
            self._reader.hold_tail()
            return 0
        return tail

    @property
    def open(self) -> bool:
        return self.state is not ConnState.CLOSED

    def receive_eof(self) -> list[Event]:
        """The peer closed the TCP connection: abort every task (ERL 0, section 7.1)."""
        if self.state is not ConnState.CLOSED:
            self._abort(list(self.tasks.values()))
            self._close("connection closed by the initiator")
        return self._take_events()

    def data_to_send(self) -> list[OutBuffer]:
        """Buffers to send, in order, for one ``sendmsg``; clears the queue."""
        out, self._out = self._out, []
        self.spans_queued = False
        return out

    def awaits_completion(self, task_tag: int) -> bool:
        """Whether ``complete`` for this tag would be answered: the task is live, not
        aborted (a shell that held an ``ExecuteCommand`` back asks before running it)."""
        task = self.tasks.get(task_tag)
        return self.state is not ConnState.CLOSED and task is not None and task.executing

    def complete(self, task_tag: int, response: ScsiResponse) -> None:
        """The SCSI layer's answer to an ``ExecuteCommand``: queue Data-In and status.
        Tags that are unknown or were aborted are ignored (no response ever, 4.2.3.2)."""
        if response.flush_before_status:
            raise ValueError("run LogicalUnit.complete_flush first (flush_before_status)")
        task = self.tasks.get(task_tag)
        if self.state is ConnState.CLOSED or task is None or not task.executing:
            return
        self._forget(task)
        if (response.status == _GOOD and response.sense is None
                and not response.residual_overflow and not response.residual_underflow):
            if not task.read:
                self._send_good_status(task.itt, task.r2t_count)
                return
            size = len(response.data_in)
            params = self.params
            if not task.write and 0 < size == task.edtl \
                    and size <= params.initiator_max_recv_dsl \
                    and size <= params.max_burst_length:
                self._send_read_data(task.lun_field, task.itt, response.data_in, size)
                return
        data_in = response.data_in if task.read else b""
        data: memoryview | FileSpan
        if isinstance(data_in, FileSpan):
            data = data_in
            self.spans_queued = True
        else:
            data = memoryview(data_in).cast("B")
        limit = task.bidi_read_length if task.write and task.bidi_read_length else task.edtl
        data = data[:limit]
        inline = (data.nbytes > 0 and response.sense is None
                  and response.status in (_GOOD, _CONDITION_MET))  # fmt: skip
        # Residual counts are 32-bit (section 11.4.5); a 16-byte CDB can want more.
        over = min(response.residual_overflow, 0xFFFFFFFF)
        under = min(response.residual_underflow, 0xFFFFFFFF)
        plan = data_in_pdus(
            data, itt=task.itt, lun=task.lun_field, max_segment=self.params.initiator_max_recv_dsl,
            max_burst=self.params.max_burst_length, status=response.status if inline else None,
            overflow=over, underflow=under, **self._seq(advance=False),
        )  # fmt: skip
        for pdu in plan.pdus:
            self._send(pdu)
        if plan.status_sent:
            self._statsn = (self._statsn + 1) & 0xFFFFFFFF
            return
        self._send(SCSIResponse(
            itt=task.itt, status=response.status, overflow=over > 0,
            underflow=not over and under > 0,
            residual=over or under, exp_datasn=len(plan.pdus) + task.r2t_count,
            data=SCSIResponse.sense_segment(response.sense) if response.sense else b"",
            **self._seq(),
        ))  # fmt: skip

    def _send_read_data(self, lun_field: int, itt: int,
                        data: bytes | bytearray | memoryview | FileSpan, size: int) -> None:
        """The common read: all data in one Data-In PDU carrying GOOD status (11.7.1),
        packed directly; the caller checked it fits one PDU and one burst."""
        if type(data) is FileSpan:
            self.spans_queued = True
        # _next_statsn and _max, inline: this is the per-read path.
        statsn = self._statsn
        self._statsn = (statsn + 1) & 0xFFFFFFFF
        window = self.window
        self._advertised_max = maxsn = window.max_cmdsn
        header = _DATA_IN_WITH_STATUS.pack(
            _SCSI_DATA_IN, _DATA_IN_FINAL_STATUS, size, lun_field, itt,
            NO_TAG, statsn, window.exp_cmdsn, maxsn)  # fmt: skip
        if self._digests is _NO_DIGESTS:  # pdu.frame without digests: padded to 4 bytes
            out = self._out
            out.append(header)
            out.append(data)
            if size & 3:
                out.append(PADDING[size & 3])
        else:
            self._out.extend(frame(header, data, *self._digests))

    def _send_good_status(self, itt: int, r2t_count: int) -> None:
        """GOOD status with nothing to return (writes, most non-data commands), packed
        directly: no sense, no residual; ExpDataSN counts the task's R2Ts (11.4.8)."""
        # _next_statsn and _max, inline: this is the per-write path.
        statsn = self._statsn
        self._statsn = (statsn + 1) & 0xFFFFFFFF
        window = self.window
        self._advertised_max = maxsn = window.max_cmdsn
        header = _GOOD_RESPONSE.pack(_SCSI_RESPONSE, _FINAL, itt, statsn, window.exp_cmdsn,
                                     maxsn, r2t_count)  # fmt: skip
        if self._digests is _NO_DIGESTS:
            self._out.append(header)
        else:
            self._out.extend(frame(header, b"", *self._digests))

    def tick(self, now: float, idle: bool = True) -> list[Event]:
        """Time passes: target NOP-In pings, their timeout, and window updates (3.2.2.1).
        ``idle`` False: the shell is not reading for reasons of its own (the disk is
        behind), so the initiator's silence says nothing: no ping, no timeout."""
        if self.state not in (ConnState.NORMAL, ConnState.DISCOVERY):
            return self._take_events()
        if self._received or self._last_rx is None or not idle:
            self._last_rx, self._received = now, False
        interval = self._nop.interval
        if self._ping is not None:
            if now - max(self._ping[1], self._last_rx) >= self._nop.timeout:
                self._close("no answer to the target's NOP-In ping")
        elif interval is not None and now - self._last_rx >= interval:
            ttt = self._allocate_ttt()
            self._ping = (ttt, now)
            self._send(NopIn(itt=NO_TAG, ttt=ttt, **self._seq(advance=False)))  # fmt: skip
        elif self.window.max_cmdsn != self._advertised_max:  # slots freed silently
            self._send(NopIn(itt=NO_TAG, ttt=NO_TAG, **self._seq(advance=False)))  # fmt: skip
        return self._take_events()

    def request_logout(self, within_seconds: int = 0) -> None:
        """Ask the initiator to log out (Async Message event 1, RFC 7143 section 11.9.1):
        the polite way to make hosts log in again, e.g. after a rewind (docs/iscsi.md 9)."""
        if self.state is ConnState.NORMAL:
            self._send(AsyncMessage(async_event=AsyncEvent.REQUEST_LOGOUT,
                                    param3=min(within_seconds, 0xFFFF), **self._seq()))  # fmt: skip

    # --- routing --------------------------------------------------------------------------

    def _route(self, pdu: Pdu) -> None:
        """CmdSN ordering (section 3.2.2.1), then dispatch."""
        cmdsn = _ordered_cmdsn(pdu) if self.state is not ConnState.LOGIN else None
        if cmdsn is None:
            self._dispatch(pdu)
            return
        verdict = self.window.classify(cmdsn)
        if verdict is Verdict.DROP:
            return  # silently (docs/iscsi.md section 6, pitfall 8)
        if verdict is Verdict.HOLD:  # keep it past this receive: copy its data once
            if isinstance(pdu, SCSICommand | TextRequest | NopOut):
                pdu = replace(pdu, data=bytes(pdu.data))
            self._held[cmdsn] = pdu
            return
        self.window.advance()
        self._dispatch(pdu)
        self._drain_held()

    def _drain_held(self) -> None:
        while self.state is not ConnState.CLOSED and self.window.exp_cmdsn in self._held:
            pdu = self._held.pop(self.window.exp_cmdsn)
            self.window.advance()
            if pdu is not None:
                self._dispatch(pdu)

    def _dispatch(self, pdu: Pdu) -> None:
        name = DISPATCH.get((self.state, pdu.OPCODE))
        try:
            if name is None:
                if self.state is ConnState.LOGIN:
                    raise ConnectionFatal(f"{type(pdu).__name__} during login")
                where = self.state.value
                raise PduRejected(RejectReason.PROTOCOL_ERROR, pdu.header(),
                                  f"{type(pdu).__name__} not allowed in {where}")  # fmt: skip
            getattr(self, name)(pdu)
        except PduRejected as exc:
            self._reject(exc)
        except ConnectionFatal as exc:
            self._close(str(exc))

    # --- login ----------------------------------------------------------------------------

    def _on_login(self, pdu: LoginRequest) -> None:
        self._out.extend(encode(self.login.receive(pdu)))  # login PDUs carry no digests
        if self.login.state is LoginState.FAILED:
            self._close(f"login failed: {self.login.failure}")
        elif self.login.state is LoginState.FULL_FEATURE:
            assert self.login.result is not None
            self._enter_full_feature(self.login.result)

    def _enter_full_feature(self, result: LoginResult) -> None:
        self.result, self.params = result, result.parameters
        params = self.params
        # Digests and our MaxRecvDataSegmentLength apply from the next PDU (section 13.1).
        self._reader.configure(max_recv_data_segment_length=params.target_max_recv_dsl,
                               header_digest=params.header_digest,
                               data_digest=params.data_digest)  # fmt: skip
        self._digests = ((params.header_digest, params.data_digest)
                         if params.header_digest or params.data_digest else _NO_DIGESTS)
        self.window = CmdWindow(result.exp_cmdsn, self.portal.cmd_window)
        self._advertised_max = self.window.max_cmdsn
        self._statsn = result.next_statsn
        if result.session_type is SessionType.DISCOVERY:
            self.state = ConnState.DISCOVERY
        else:
            self.state = ConnState.NORMAL
            assert result.target_name is not None
            self.nexus = Nexus(result.initiator_name, result.isid, result.target_name,
                               self.portal.portal_group_tag)  # fmt: skip
            self.luns = self._luns_of(result.target_name)
        self._events.append(LoginComplete(result))

    # --- SCSI commands and data -------------------------------------------------------------

    def _on_scsi_command(self, pdu: SCSICommand) -> None:
        if pdu.itt == NO_TAG:  # the reserved tag (section 11.2.1.8)
            raise PduRejected(RejectReason.INVALID_PDU_FIELD, pdu.header(), "ITT 0xffffffff")
        if pdu.itt in self.tasks:  # section 11.17.1: task in progress
            raise PduRejected(RejectReason.TASK_IN_PROGRESS, pdu.header(), "ITT in use")
        if pdu.immediate:
            if self._immediate_tasks >= self.portal.cmd_window:
                raise PduRejected(RejectReason.IMMEDIATE_COMMAND_REJECT, pdu.header(),
                                  "too many immediate commands")  # fmt: skip
            self._immediate_tasks += 1
        else:
            self.window.acquire()
        lun = decode_lun(pdu.lun)
        task = Task(pdu.itt, pdu.cmdsn, pdu.lun, lun, self.luns.get(lun), bytes(pdu.cdb),
                    pdu.read, pdu.write, pdu.edtl, pdu.immediate, pdu.bidi_read_length)  # fmt: skip
        # A span is sent as it is when the peer copies it: only for a task that need not
        # finish before later ones start (ATTR SIMPLE or untagged), without data digest.
        task.spans_ok = (self._file_spans and not self._digests[1] and not pdu.write
                         and pdu.attr <= _SIMPLE)  # fmt: skip
        self.tasks[pdu.itt] = task
        if not pdu.write:  # immediate data on a non-write is ignored (docs/iscsi.md 7)
            self._execute(task, None)
            return
        params = self.params
        task.transfer = WriteTransfer(
            edtl=pdu.edtl, immediate=memoryview(pdu.data).cast("B"),
            unsolicited_follows=not pdu.final and not params.initial_r2t,
            first_burst=params.first_burst_length, max_burst=params.max_burst_length,
            max_outstanding_r2t=params.max_outstanding_r2t, allocate_ttt=self._allocate_ttt,
            max_length=self._max_write,
        )  # fmt: skip
        self._progress_write(task)

    def _on_scsi_data_out(self, pdu: DataOut) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.transfer is None or task.executing:
            return  # unknown or aborted task: discard the payload (docs/iscsi.md 7.4)
        task.transfer.accept(pdu)
        self._progress_write(task)

    def _progress_write(self, task: Task) -> None:
        transfer = task.transfer
        assert transfer is not None
        for ask in transfer.solicit():  # section 11.8: R2T does not advance StatSN
            self._send_r2t(task, ask.ttt, ask.r2tsn, ask.offset, ask.length)
        if transfer.done:
            if transfer.failure is not None:
                self._fail_task(task, transfer.failure)
            else:
                self._execute(task, transfer.data_out())

    def _execute(self, task: Task, data_out: memoryview | None) -> None:
        task.executing = True
        command = ScsiCommand(cdb=task.cdb, data_out=data_out,
                              expected_length=task.edtl if task.read or task.write else 0,
                              nexus=self.nexus, spans_ok=task.spans_ok)  # fmt: skip
        self._events.append(ExecuteCommand(task.itt, task.lun, task.lu, command))

    def _fail_task(self, task: Task, sense: SenseTuple) -> None:
        """End a task with CHECK CONDITION decided here (bad Data-Out, EDTL too large)."""
        self._forget(task)
        self._send(SCSIResponse(
            itt=task.itt, status=_CHECK_CONDITION, exp_datasn=task.r2t_count,
            data=SCSIResponse.sense_segment(fixed_sense(sense)), **self._seq(),
        ))  # fmt: skip

    def _forget(self, task: Task) -> None:
        del self.tasks[task.itt]
        if task.immediate:
            self._immediate_tasks -= 1
        else:
            self.window.release()

    def _abort(self, tasks: list[Task]) -> None:
        for task in tasks:
            if task.transfer is not None:
                task.transfer.abort()
            self._forget(task)
        if tasks:
            self._events.append(TasksAborted(tuple(t.itt for t in tasks)))

    # --- task management (RFC 7143 sections 4.2.3, 11.5, 11.6) ---------------------------------

    def _on_task_mgmt_request(self, pdu: TaskMgmtRequest) -> None:
        function, lun = pdu.function, decode_lun(pdu.lun)
        scope, response = tmf_rule(function)
        if scope is TmfScope.TASK:
            response = self._abort_task(pdu)
        elif scope is TmfScope.LUN and lun not in self.luns:
            response = TmfResponse.LUN_DOES_NOT_EXIST
        elif scope is not TmfScope.NONE:
            whole = scope is TmfScope.TARGET
            self._abort([t for t in self.tasks.values() if whole or t.lun == lun])
            lu = None if whole else self.luns[lun]
            self._events.append(TaskManagement(function, lun, lu, self.nexus))
        self._send(TaskMgmtResponse(itt=pdu.itt, response=response, **self._seq()))

    def _abort_task(self, pdu: TaskMgmtRequest) -> TmfResponse:
        task = self.tasks.get(pdu.referenced_task_tag)
        if task is not None:
            self._abort([task])
            return TmfResponse.FUNCTION_COMPLETE
        held = self._held.get(pdu.ref_cmdsn)
        if isinstance(held, SCSICommand) and held.itt == pdu.referenced_task_tag:
            self._held[pdu.ref_cmdsn] = None  # never runs; its CmdSN still counts
            return TmfResponse.FUNCTION_COMPLETE
        # Not received yet although sent before the TMF: it must never run (4.2.3.2).
        if self.window.in_window(pdu.ref_cmdsn) and serial_lt(pdu.ref_cmdsn, pdu.cmdsn):
            self._consume_absent(pdu.ref_cmdsn)
            return TmfResponse.FUNCTION_COMPLETE
        return TmfResponse.TASK_DOES_NOT_EXIST  # completed already, its response sent

    # --- text (RFC 7143 sections 6.2, 11.10, 11.11; SendTargets 13.3) ------------------------

    def _on_text_request(self, pdu: TextRequest) -> None:
        if pdu.ttt == NO_TAG:  # a new request replaces any unfinished exchange (11.10.4)
            self._text = TextExchange(pdu.itt, self._allocate_ttt())
        elif self._text is None or (self._text.itt, self._text.ttt) != (pdu.itt, pdu.ttt):
            raise PduRejected(RejectReason.INVALID_PDU_FIELD, pdu.header(), "stale TTT")
        exchange = self._text
        try:
            piece, last = exchange.step(pdu, self._text_answer,
                                        self.params.initiator_max_recv_dsl)  # fmt: skip
        except PduRejected:
            self._text = None
            raise
        if last:
            self._text = None
        self._send(TextResponse(itt=exchange.itt, final=last, cont=not last and len(piece) > 0,
                                ttt=NO_TAG if last else exchange.ttt, data=piece,
                                **self._seq()))  # fmt: skip

    def _text_answer(self, keys: Mapping[str, str]) -> bytes:
        assert self.result is not None
        out = b""
        for key, value in keys.items():
            if key != "SendTargets":  # no renegotiation in full feature phase here
                out += encode_text([(key, NOT_UNDERSTOOD)])
                continue
            chosen = select_targets(
                value, self._visible_of(self.result.initiator_name),
                session_type=self.result.session_type, session_target=self.result.target_name,
            )  # fmt: skip
            out += reject_text() if chosen is None else send_targets_text(chosen)
        return out

    # --- NOP, SNACK, logout -------------------------------------------------------------------

    def _on_nop_out(self, pdu: NopOut) -> None:
        if pdu.itt == NO_TAG:  # no answer wanted; maybe the echo of our ping (11.18)
            if self._ping is not None and pdu.ttt == self._ping[0]:
                self._ping = None
            return
        echo = bytes(pdu.data[: self.params.initiator_max_recv_dsl])  # section 11.19.3
        self._send(NopIn(itt=pdu.itt, ttt=NO_TAG, lun=pdu.lun, data=echo, **self._seq()))

    def _on_snack_request(self, pdu: Pdu) -> None:
        # ERL 0 has no SNACK support; LIO answers Reject 0x04 (docs/iscsi.md section 9).
        raise PduRejected(RejectReason.PROTOCOL_ERROR, pdu.header(), "SNACK at ERL 0")

    def _on_logout_request(self, pdu: LogoutRequest) -> None:
        assert self.result is not None
        reason = pdu.reason
        if reason == LogoutReason.CLOSE_SESSION or (
            reason == LogoutReason.CLOSE_CONNECTION and pdu.cid == self.result.cid
        ):
            code = LogoutResponseCode.CLOSED
        elif reason == LogoutReason.CLOSE_CONNECTION:
            code = LogoutResponseCode.CID_NOT_FOUND
        elif reason == LogoutReason.REMOVE_FOR_RECOVERY:
            code = LogoutResponseCode.RECOVERY_NOT_SUPPORTED  # ERL 0 (section 11.15.1)
        else:
            raise PduRejected(RejectReason.INVALID_PDU_FIELD, pdu.header(), "logout reason")
        if code is LogoutResponseCode.CLOSED:
            self._abort(list(self.tasks.values()))
        self._send(LogoutResponse(itt=pdu.itt, response=code, **self._seq()))  # fmt: skip
        if code is LogoutResponseCode.CLOSED:
            self._events.append(LoggedOut(reason, self.nexus))
            self._close("logged out")

    # --- output helpers -----------------------------------------------------------------------

    def _send(self, pdu: Pdu) -> None:
        header_digest, data_digest = self._digests
        self._out.extend(encode(pdu, header_digest=header_digest, data_digest=data_digest))

    def _send_r2t(self, task: Task, ttt: int, r2tsn: int, offset: int, length: int) -> None:
        self._send(R2T(lun=task.lun_field, itt=task.itt, ttt=ttt, r2tsn=r2tsn,
                       **self._seq(advance=False),
                       buffer_offset=offset, desired_length=length))  # fmt: skip

    def _reject(self, exc: PduRejected) -> None:
        """One boundary for Reject PDUs (RFC 7143 section 11.17)."""
        self._send(Reject.from_error(exc, **self._seq()))  # fmt: skip

    def _close(self, reason: str) -> None:
        self.state = ConnState.CLOSED
        self._events.append(CloseConnection(reason))

    def _seq(self, *, advance: bool = True) -> _Seq:
        """StatSN (advanced for status-bearing PDUs), ExpCmdSN, MaxCmdSN for a new PDU."""
        statsn = self._next_statsn() if advance else self._statsn
        return _Seq(statsn=statsn, exp_cmdsn=self.window.exp_cmdsn, max_cmdsn=self._max())

    def _next_statsn(self) -> int:
        statsn = self._statsn
        self._statsn = (statsn + 1) & 0xFFFFFFFF
        return statsn

    def _max(self) -> int:
        """MaxCmdSN for a PDU being built; remembered for window-update NOP-Ins."""
        self._advertised_max = maxsn = self.window.max_cmdsn
        return maxsn

    def _allocate_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = ttt % 0xFFFFFFFE + 1  # never 0 or the reserved 0xffffffff
        return ttt

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _consume_absent(self, cmdsn: int) -> None:
        """ABORT TASK for a command not yet received: its CmdSN counts as used (4.2.3.2)."""
        if cmdsn == self.window.exp_cmdsn:
            self.window.advance()
            self._drain_held()
        elif serial_lt(self.window.exp_cmdsn, cmdsn):
            self._held[cmdsn] = None
