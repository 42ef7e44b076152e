"""A SCSI direct-access logical unit over a :class:`BlockDevice` (sans-I/O).

Theory of operation
-------------------
:meth:`LogicalUnit.execute` takes a :class:`ScsiCommand` and returns a
:class:`ScsiResponse`. It never raises: every failure becomes a status here,
at one boundary (STYLE.md rule 4):

- :class:`CheckCondition` from decoding or a handler → CHECK CONDITION with
  fixed or descriptor sense (control page D_SENSE);
- engine errors → OutOfRangeError 05h/21h/00h, ReadOnlyError 07h/27h/00h,
  SecondaryFullError 07h/27h/07h (space allocation failed), AlignmentError
  05h/24h/00h, any other EngineError (or bug) 04h/44h/00h, logged; the
  transport never sees an exception from the SCSI layer.

Check order follows scsi.md §1 (close to LIO): pending UNIT ATTENTION (except
for INQUIRY, REPORT LUNS, REQUEST SENSE) → opcode → CDB fields → reservation
conflict (status 18h, no sense) → LBA range → write protect → data transfer →
parameter list.

Durability without blocking the event loop
------------------------------------------
The engine's read and write calls are plain synchronous calls meant to run
inline on the event loop (page-cache I/O costs microseconds). Only making data
durable blocks (fsync). So the LU never asks the device to be durable itself:
for SYNCHRONIZE CACHE, FUA writes, WRITE AND VERIFY, a MODE SELECT that turns
WCE off and every medium change while WCE=0, it issues the non-blocking work
(``device.write`` without ``fua``) and returns a response with
``flush_before_status=True``. The transport then calls
:meth:`LogicalUnit.complete_flush` in a worker thread (where ``device.flush()``
runs; the engine's group commit lets one fsync serve many such waiters) and
sends the response that call returns. That call touches nothing but
``device.flush`` and the D_SENSE bit, so it is safe beside ``execute``; a
failing flush becomes CHECK CONDITION through the same error mapping. Status
reaches the initiator only after the data is stable, as [SBC-3] 4.11 (FUA) and
5.22 (SYNCHRONIZE CACHE) require.

Unit attentions are queued per I_T nexus ([SAM-5] 5.14, [SPC-4] 5.11): a nexus
the LU has not seen before gets 29h/00h POWER ON, RESET, OR BUS DEVICE RESET
OCCURRED once. A nexus is an opaque hashable key chosen by the transport.
"""

from __future__ import annotations

import logging
import struct
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from target.scsi import opcodes, reservations, sbc, spc
from target.scsi.cdb import Opcode, decode
from target.scsi.command import Outcome, ScsiCommand, ScsiResponse
from target.scsi.inquiry import MAX_TRANSFER_BYTES, Identity
from target.scsi.modepages import ModeState
from target.scsi.reservations import ReservationConflict, Reservations
from target.scsi.sense import (
    Asc,
    CheckCondition,
    ScsiStatus,
    SenseKey,
    build_sense,
)
from volume_manager.blockdev import BlockDevice, FileSpan
from volume_manager.errors import (
    AlignmentError,
    EngineError,
    OutOfRangeError,
    ReadOnlyError,
    SecondaryFullError,
)

__all__ = ["LogicalUnit", "UnitAttentions"]

log = logging.getLogger(__name__)

# Commands that neither report nor clear a pending unit attention ([SAM-5] 5.14).
_UA_EXEMPT = frozenset({Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE})
_FAST_IO = frozenset({Opcode.READ_10, Opcode.READ_16, Opcode.WRITE_10, Opcode.WRITE_16})
# Plain ints: the hot paths compare opcodes without IntEnum's slower equality.
_READ_10, _READ_16 = int(Opcode.READ_10), int(Opcode.READ_16)
_WRITE_10, _WRITE_16 = int(Opcode.WRITE_10), int(Opcode.WRITE_16)
# Commands whose data goes into the device's write buffer (waits_for_room).
_BUFFERED = frozenset(int(op) for op in (
    Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16,
    Opcode.WRITE_AND_VERIFY_10, Opcode.WRITE_AND_VERIFY_12, Opcode.WRITE_AND_VERIFY_16,
    Opcode.WRITE_SAME_10, Opcode.WRITE_SAME_16, Opcode.COMPARE_AND_WRITE))
# While offline, the commands that describe the LU (and REQUEST SENSE) still answer.
_OFFLINE_OK = _UA_EXEMPT
# Reads at least this large may answer with a file span (ScsiCommand.spans_ok): below it
# the extra system calls of sending header and data apart cost more than the copy saved,
# and they answer with a view of the file's mapping instead (blockdev.FileMap).
SPAN_MIN_BYTES = 64 * 1024


# Dispatch by CDB type; block I/O is dispatched again by kind inside sbc.
HANDLERS: dict[type, Callable[..., Outcome]] = {
    **spc.HANDLERS, **sbc.HANDLERS, **reservations.HANDLERS, **opcodes.HANDLERS,
}


class UnitAttentions:
    """Pending unit attention conditions, one FIFO queue per I_T nexus."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Asc]] = {}
        # The nexuses known to have nothing pending: one set lookup on the per-I/O
        # paths (LogicalUnit.fast_read/fast_write), kept by every change below.
        self.quiet: set[Hashable] = set()

    def _queue(self, nexus: Hashable) -> deque[Asc]:
        queue = self._queues.get(nexus)
        if queue is None:
            queue = self._queues[nexus] = deque([Asc.POWER_ON_RESET])
        return queue

    def establish(self, asc: Asc, *, exclude: Hashable | None = None) -> None:
        """Queue ``asc`` for every known nexus but ``exclude`` (at most once each)."""
        for nexus, queue in self._queues.items():
            if nexus != exclude and asc not in queue:
                queue.append(asc)
                self.quiet.discard(nexus)

    def establish_for(self, asc: Asc, nexus: Hashable) -> None:
        """Queue ``asc`` for one nexus (e.g. the one whose registration was preempted)."""
        queue = self._queue(nexus)
        if asc not in queue:
            queue.append(asc)
            self.quiet.discard(nexus)

    def none_for(self, nexus: Hashable) -> bool:
        """True when ``nexus`` is known and has nothing pending (a new nexus has its
        POWER ON condition to receive first)."""
        return nexus in self.quiet

    def pop(self, nexus: Hashable) -> Asc | None:
        queue = self._queue(nexus)
        asc = queue.popleft() if queue else None
        if not queue:
            self.quiet.add(nexus)
        return asc

    def pending(self, nexus: Hashable) -> tuple[Asc, ...]:
        return tuple(self._queue(nexus))

    def forget(self, nexus: Hashable) -> None:
        """The nexus is gone (logout, connection loss): it starts afresh next time."""
        self._queues.pop(nexus, None)
        self.quiet.discard(nexus)


def _exception_to_check(exc: Exception) -> CheckCondition:
    """The one mapping of engine errors to sense."""
    if isinstance(exc, CheckCondition):
        return exc
    if isinstance(exc, OutOfRangeError):
        return CheckCondition.lba_out_of_range()
    if isinstance(exc, ReadOnlyError):
        return CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
    if isinstance(exc, SecondaryFullError):
        return CheckCondition(SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
    if isinstance(exc, AlignmentError):
        return CheckCondition.illegal(Asc.INVALID_FIELD_IN_CDB)
    if isinstance(exc, EngineError):
        log.error("engine error during SCSI command: %s", exc)
    else:
        log.exception("internal error in the SCSI layer", exc_info=exc)
    return CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE)


# Byte 1 (flags), LBA, group, transfer length and control of a READ/WRITE (10) and (16).
_RW10 = struct.Struct(">xBIBHB")
_RW16 = struct.Struct(">xBQIBB")


def _plain_rw(cdb: bytes | memoryview, op10: int, op16: int,
              flag_mask: int) -> tuple[int, int] | None:
    """(LBA, blocks) of a READ or WRITE (10)/(16) with no byte-1 flags in ``flag_mask``,
    group and control 0; None for anything else."""
    op = cdb[0]
    if op == op10 and len(cdb) >= 10:
        flags, lba, group, blocks, control = _RW10.unpack_from(cdb)
    elif op == op16 and len(cdb) >= 16:
        flags, lba, blocks, group, control = _RW16.unpack_from(cdb)
    else:
        return None
    if flags & flag_mask or group or control:
        return None
    return lba, blocks


class LogicalUnit:
    """One direct-access LU. Single-threaded: call ``execute`` from one thread only."""

    def __init__(self, device: BlockDevice, *, uuid: uuidlib.UUID, product: str = "CDP VOLUME",
                 target_name: str | None = None,
                 lun_list: Callable[[], Sequence[int]] | None = None) -> None:
        self.device = device
        # The device's optional fast reads (blockdev.py), looked up once: per read is
        # per I/O.
        self._read_view = getattr(device, "read_view", None)
        self._read_span = getattr(device, "read_span", None)
        # A device with a write buffer that can be full (Volume): waits_for_room.
        self._has_room = getattr(device, "has_room", None)
        self._when_room = getattr(device, "when_room", None)
        self._cancel_room_wait = getattr(device, "cancel_room_wait", None)
        self.identity = Identity(uuid, product=product, target_name=target_name)
        self.mode = ModeState()
        self.unit_attentions = UnitAttentions()
        self.reservations = Reservations()
        self._lun_list = lun_list
        # Set while the switch works on the medium (a forced rewind): media access is
        # answered NOT READY, OPERATION IN PROGRESS until it is cleared.
        self.offline: str | None = None

    def take_offline(self, reason: str) -> None:
        self.offline = reason

    def bring_online(self, *, medium_changed: bool = True) -> None:
        """Back in service; every nexus gets MEDIUM MAY HAVE CHANGED first, so hosts
        drop what they cached of the old contents."""
        self.offline = None
        if medium_changed:
            self.unit_attentions.establish(Asc.MEDIUM_MAY_HAVE_CHANGED)

    def luns(self) -> Sequence[int]:
        """LUN numbers of the owning target, for REPORT LUNS (LUN 0 alone by default)."""
        return self._lun_list() if self._lun_list is not None else (0,)

    # ------------------------------------------------------------ helpers
    @property
    def block_size(self) -> int:
        return self.device.block_size

    @property
    def num_blocks(self) -> int:
        return self.device.num_blocks

    def check_range(self, lba: int, blocks: int) -> None:
        """05h/21h/00h unless [lba, lba+blocks) is on the medium ([SBC-3] 4.5).

        Python ints are unbounded, so LBA 2^64-1 plus any count is handled exactly.
        """
        if lba + blocks > self.device.num_blocks:
            raise CheckCondition.lba_out_of_range()

    def check_writable(self) -> None:
        if self.device.read_only:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)

    def needs_flush(self, fua: bool = False) -> bool:
        """Whether a medium change must be stable before status: FUA, or WCE=0."""
        return fua or not self.mode.wce

    @staticmethod
    def data_out(cmd: ScsiCommand, wanted: int, unit: int = 1) -> memoryview:
        """The Data-Out bytes to use: min(wanted, EDTL, received), in whole ``unit``s.

        iscsi.md §7: write only the blocks actually received; the residual is
        reported by ``execute`` from ``wanted`` and EDTL.
        """
        buf = memoryview(cmd.data_out if cmd.data_out is not None else b"")
        n = min(wanted, cmd.expected_length, len(buf))
        return buf[: n - n % unit]

    @staticmethod
    def exact_data_out(cmd: ScsiCommand, size: int) -> memoryview:
        """Data-Out that must be exactly ``size`` bytes (COMPARE AND WRITE, WRITE SAME)."""
        buf = memoryview(cmd.data_out if cmd.data_out is not None else b"")
        if cmd.expected_length != size or len(buf) < size:
            raise CheckCondition.illegal(Asc.INVALID_FIELD_IN_INFORMATION_UNIT)
        return buf[:size]

    # ------------------------------------------------------------ execute
    def execute(self, cmd: ScsiCommand) -> ScsiResponse:
        cdb = cmd.cdb
        if cdb and cdb[0] in _FAST_IO:
            fast = self.fast_io(cmd)
            if fast is not None:
                return fast
        try:
            outcome = self._run(cmd)
        except ReservationConflict:
            return ScsiResponse(ScsiStatus.RESERVATION_CONFLICT,
                                residual_underflow=cmd.expected_length)
        except Exception as exc:  # the boundary: nothing escapes to the transport
            return self._check_condition(_exception_to_check(exc), cmd)
        return self._respond(outcome, cmd)

    def waits_for_room(self, cmd: ScsiCommand) -> bool:
        """Whether executing ``cmd`` now would wait for room in the device's write
        buffer: a write while the buffer is full (``Volume.has_room``), until the
        engine's group commit frees some. A caller that must not block (the target's
        event loop, serving other volumes too) holds the command back and asks
        :meth:`when_room` to be called back."""
        room = self._has_room
        return room is not None and bool(cmd.cdb) and cmd.cdb[0] in _BUFFERED and not room()

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once when a write may no longer wait (any thread; at once
        for a device without a write buffer). See ``Volume.when_room``."""
        when = self._when_room
        if when is None:
            callback()
        else:
            when(callback)

    def cancel_room_wait(self, callback: Callable[[], object]) -> None:
        """Forget a ``when_room`` callback whose caller went away (any thread). See
        ``Volume.cancel_room_wait``."""
        if self._cancel_room_wait is not None:
            self._cancel_room_wait(callback)

    def fast_io(self, cmd: ScsiCommand) -> ScsiResponse | None:
        """READ/WRITE (10)/(16) in the plain case, without building the decoded CDB and
        the outcome: no flags but DPO (and FUA on reads), group and control 0, EDTL equal
        to the transfer (and for writes, all of its data received), in range, nothing
        pending for the nexus (unit attention), no reservation held, and for writes the
        write cache on (so nothing must be flushed before status). Anything else returns
        None and takes the full path, which gives the exact answer. These commands are
        the bulk of the traffic."""
        cdb = cmd.cdb
        op = cdb[0]
        if op in (_READ_10, _READ_16):
            if cmd.data_out is not None:  # a read sent with the W flag: the full path
                return None
            data_in = self.fast_read(cdb, cmd.expected_length, cmd.nexus, cmd.spans_ok)
            return None if data_in is None else ScsiResponse(ScsiStatus.GOOD, data_in)
        if op != _WRITE_10 and op != _WRITE_16:
            return None
        data_out = cmd.data_out
        if data_out is None or len(data_out) != cmd.expected_length:
            return None
        try:
            if not self.fast_write(cdb, data_out, cmd.nexus):
                return None
        except Exception as exc:  # the same mapping to sense data as the full path
            return self._check_condition(_exception_to_check(exc), cmd)
        return ScsiResponse(ScsiStatus.GOOD)

    def fast_write(self, cdb: bytes | memoryview, data: bytes | memoryview,
                   nexus: Hashable) -> bool:
        """Write a plain WRITE (10)/(16) whose data (all of EDTL) is ``data``, as
        ``fast_io`` defines plain; False having done nothing when it is not plain or
        would wait for room in the device's write buffer (:meth:`waits_for_room`). The
        device's errors propagate: a write that failed did nothing (the engine's rule),
        so the full path may run it again to report them. The transport's per-write
        entry: no command or response objects."""
        where = _plain_rw(cdb, _WRITE_10, _WRITE_16, 0xEF)  # DPO allowed: FUA must flush
        if where is None:
            return False
        lba, blocks = where
        device = self.device
        size = blocks * device.block_size
        room = self._has_room
        if (not blocks or size != len(data) or size > MAX_TRANSFER_BYTES
                or lba + blocks > device.num_blocks or not self.mode.wce or device.read_only
                or not self._plain_for(nexus) or (room is not None and not room())):
            return False
        device.write(lba, data)
        return True

    def fast_read(self, cdb: bytes | memoryview, edtl: int, nexus: Hashable,
                  spans_ok: bool = False) -> bytes | bytearray | memoryview | FileSpan | None:
        """The data of a plain READ (10)/(16) (as ``fast_io`` defines plain), or None
        having done nothing: the full path answers it then, errors included (a read can
        run twice). The transport's per-read entry: no command or response objects.
        ``spans_ok`` as in ``ScsiCommand``."""
        where = _plain_rw(cdb, _READ_10, _READ_16, 0xE7)  # DPO and FUA allowed
        if where is None:
            return None
        lba, blocks = where
        device = self.device
        size = blocks * device.block_size
        if (not blocks or size != edtl or size > MAX_TRANSFER_BYTES
                or lba + blocks > device.num_blocks or not self._plain_for(nexus)):
            return None
        try:
            # A view of the file's mapping for a small read, a span for a large one.
            fast = self._read_view if size < SPAN_MIN_BYTES else self._read_span
            if spans_ok and fast is not None:
                direct: memoryview | FileSpan | None = fast(lba, blocks)
                if direct is not None:
                    return direct
            data = device.read(lba, blocks)
        except Exception:  # the full path runs it again and reports the error
            return None
        return data if len(data) == size else None

    def _plain_for(self, nexus: Hashable) -> bool:
        """No reservation, online, no unit attention pending for ``nexus``."""
        res = self.reservations
        return (res.reservation is None and res.spc2_holder is None and self.offline is None
                and nexus in self.unit_attentions.quiet)

    def _run(self, cmd: ScsiCommand) -> Outcome:
        opcode = cmd.cdb[0] if len(cmd.cdb) else -1
        if opcode not in _UA_EXEMPT:
            ua = self.unit_attentions.pop(cmd.nexus)
            if ua is not None:
                raise CheckCondition(SenseKey.UNIT_ATTENTION, ua)
        if self.offline is not None and opcode not in _OFFLINE_OK:
            raise CheckCondition(SenseKey.NOT_READY, Asc.LU_NOT_READY_OPERATION_IN_PROGRESS)
        cdb = decode(cmd.cdb)
        self.reservations.check(cmd.nexus, cmd.cdb)
        return HANDLERS[type(cdb)](self, cdb, cmd)

    def _respond(self, outcome: Outcome, cmd: ScsiCommand) -> ScsiResponse:
        wanted = len(outcome.data) if outcome.wanted is None else outcome.wanted
        edtl = cmd.expected_length
        return ScsiResponse(
            outcome.status,
            outcome.data[:edtl] if len(outcome.data) > edtl else outcome.data,
            residual_overflow=max(wanted - edtl, 0),
            residual_underflow=max(edtl - wanted, 0),
            flush_before_status=outcome.flush,
        )

    def _check_condition(self, cc: CheckCondition, cmd: ScsiCommand) -> ScsiResponse:
        # Nothing was transferred: the whole EDTL is residual, as tgt reports it.
        return ScsiResponse(ScsiStatus.CHECK_CONDITION,
                            sense=build_sense(cc, descriptor=self.mode.d_sense),
                            residual_underflow=cmd.expected_length)

    def complete_flush(self, cmd: ScsiCommand, response: ScsiResponse) -> ScsiResponse:
        """Run in a worker thread for a response with ``flush_before_status``.

        Blocks in ``device.flush()`` and returns the response to send: the
        original one (flag cleared), or CHECK CONDITION if the flush failed.
        """
        try:
            self.device.flush()
        except Exception as exc:
            return self._check_condition(_exception_to_check(exc), cmd)
        return ScsiResponse(response.status, response.data_in, response.sense,
                            response.residual_overflow, response.residual_underflow, False)

    # ------------------------------------------------------- events from outside
    def nexus_lost(self, nexus: Hashable) -> None:
        """Logout or connection loss: UAs start afresh; an SPC-2 reservation is released."""
        self.unit_attentions.forget(nexus)
        self.reservations.nexus_lost(nexus)

    def reset(self) -> None:
        """LOGICAL UNIT RESET ([SAM-5] 6.6): 29h/03h to every nexus, requester included.

        Persistent reservations survive it; an SPC-2 reservation does not.
        """
        self.unit_attentions.establish(Asc.BUS_DEVICE_RESET)
        self.reservations.reset()

    def capacity_changed(self) -> None:
        """The device was resized (2Ah/09h to all; Linux rescans)."""
        self.unit_attentions.establish(Asc.CAPACITY_DATA_CHANGED)

    def medium_changed(self) -> None:
        """The volume under this LU was rewound or replaced (28h/00h to all)."""
        self.unit_attentions.establish(Asc.MEDIUM_MAY_HAVE_CHANGED)
