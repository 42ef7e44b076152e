"""Data movement of one SCSI task: collecting Data-Out for a write, cutting Data-In for a
read (RFC 7143 sections 4.2.5, 11.7, 11.8, 13.10-13.17; docs/iscsi.md section 7). Sans-I/O.

Theory of operation, writes (``WriteTransfer``):

- One ``bytearray`` of EDTL bytes is allocated when the command arrives; immediate data,
  unsolicited Data-Out and solicited Data-Out are copied into it through memoryviews, so
  each payload byte is copied exactly once (out of the reader's receive buffer, whose views
  die at the next receive). Bytes beyond EDTL are discarded (section 4.2.5.2).
- Data arrives in *sequences*: the unsolicited one (TTT 0xffffffff, only when
  InitialR2T=No and the command had F=0; immediate + unsolicited <= FirstBurstLength)
  and one per R2T (TTT chosen here, <= MaxBurstLength). Each sequence has its own DataSN
  counter from 0 and a contiguous offset range (DataPDUInOrder=Yes); its last PDU has F=1.
- R2Ts are issued once the unsolicited sequence is over (DataSequenceInOrder=Yes), at most
  MaxOutstandingR2T at a time; each finished sequence lets the next R2T go.
- A wrong DataSN, a wrong offset, an unknown TTT or a short solicited sequence fails the
  task (ERL 0, docs/iscsi.md section 7.5: libiscsi iSCSIdatasn must not see GOOD). A failed
  task solicits nothing more, waits for the F bits of the sequences still open (so the
  stream stays in step) and then ends with CHECK CONDITION ABORTED COMMAND.
- ``SequenceState`` is the per-sequence machine; ``SEQUENCE_TRANSITIONS`` is its table.

Reads (``data_in_pdus``): the response's data is cut into views of at most the
initiator's MaxRecvDataSegmentLength, F=1 at the end of every MaxBurstLength sequence and
on the last PDU, DataSN 0.. over the whole command. Status rides on the last Data-In only
for GOOD / CONDITION MET without sense (section 11.7.4); otherwise a SCSI Response follows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .pdu import NO_TAG, DataIn, DataOut

if TYPE_CHECKING:
    from volume_manager.blockdev import FileSpan

__all__ = [
    "SEQUENCE_TRANSITIONS",
    "DataInPlan",
    "SenseTuple",
    "Sequence",
    "SequenceInput",
    "SequenceState",
    "Solicit",
    "Task",
    "WriteTransfer",
    "data_in_pdus",
    "decode_lun",
    "fixed_sense",
]


@dataclass(slots=True)
class SenseTuple:
    """(sense key, ASC, ASCQ) of a CHECK CONDITION decided by the transport."""

    key: int
    asc: int
    ascq: int


# SPC-4 table 49 (ASC/ASCQ): what the transport itself can fail a command with.
DATA_PHASE_ERROR = SenseTuple(0x0B, 0x4B, 0x00)  # ABORTED COMMAND: wrong DataSN / TTT
DATA_OFFSET_ERROR = SenseTuple(0x0B, 0x4B, 0x05)  # ABORTED COMMAND: wrong Buffer Offset
INVALID_FIELD_IN_CDB = SenseTuple(0x05, 0x24, 0x00)  # ILLEGAL REQUEST: EDTL too large
LUN_NOT_SUPPORTED = SenseTuple(0x05, 0x25, 0x00)


def fixed_sense(sense: SenseTuple) -> bytes:
    """18-byte fixed-format sense data, current error (SPC-4 4.5.3)."""
    out = bytearray(18)
    out[0], out[2], out[7], out[12], out[13] = 0x70, sense.key, 10, sense.asc, sense.ascq
    return bytes(out)


class SequenceState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  # its F=1 arrived


class SequenceInput(enum.Enum):
    DATA = "data-out F=0"
    LAST = "data-out F=1"


SEQUENCE_TRANSITIONS: dict[tuple[SequenceState, SequenceInput], SequenceState] = {
    (SequenceState.OPEN, SequenceInput.DATA): SequenceState.OPEN,
    (SequenceState.OPEN, SequenceInput.LAST): SequenceState.CLOSED,
}  # a closed sequence is forgotten, so Data-Out for it finds no sequence: failure


@dataclass(slots=True)
class Sequence:
    """One Data-Out sequence: [offset, offset + length), filled in order."""

    ttt: int
    offset: int
    length: int
    received: int = 0
    next_datasn: int = 0
    state: SequenceState = SequenceState.OPEN


@dataclass(slots=True)
class Solicit:
    """An R2T to send (the connection fills in the sequence numbers)."""

    ttt: int
    r2tsn: int
    offset: int
    length: int


class WriteTransfer:
    """Collects the Data-Out of one write command. See the module docstring."""

    def __init__(
        self,
        *,
        edtl: int,
        immediate: memoryview,
        unsolicited_follows: bool,
        first_burst: int,
        max_burst: int,
        max_outstanding_r2t: int,
        allocate_ttt: Callable[[], int],
        max_length: int,
    ) -> None:
        self.edtl = edtl
        self.failure: SenseTuple | None = None
        self.r2t_count = 0
        self._max_burst = max_burst
        self._max_r2t = max_outstanding_r2t
        self._allocate_ttt = allocate_ttt
        self._sequences: dict[int, Sequence] = {}
        if edtl > max_length:  # refuse to allocate: fail after the unsolicited data
            self.buffer = bytearray()
            self.failure = INVALID_FIELD_IN_CDB
        else:
            self.buffer = bytearray(edtl)
        view = memoryview(self.buffer)
        taken = min(immediate.nbytes, len(self.buffer))
        view[:taken] = immediate[:taken]
        self.filled = min(immediate.nbytes, edtl)  # contiguous bytes received from 0
        unsolicited_end = min(first_burst, edtl)
        if unsolicited_follows and unsolicited_end > self.filled:
            self._sequences[NO_TAG] = Sequence(NO_TAG, self.filled, unsolicited_end - self.filled)
        elif unsolicited_follows:  # F=0 but nothing left to send unsolicited: take any PDU
            self._sequences[NO_TAG] = Sequence(NO_TAG, self.filled, 0)

    @property
    def done(self) -> bool:
        """No sequence open and nothing left to solicit: time for ExecuteCommand/status."""
        if self._sequences:
            return False
        return self.failure is not None or self.filled >= self.edtl

    def data_out(self) -> memoryview:
        return memoryview(self.buffer)[: self.filled]

    def solicit(self) -> list[Solicit]:
        """R2Ts to send now (section 11.8; at most MaxOutstandingR2T open)."""
        if self.failure is not None or NO_TAG in self._sequences:
            return []
        out: list[Solicit] = []
        next_offset = max([self.filled] + [s.offset + s.length for s in self._sequences.values()])
        while len(self._sequences) < self._max_r2t and next_offset < self.edtl:
            length = min(self._max_burst, self.edtl - next_offset)
            ttt = self._allocate_ttt()
            self._sequences[ttt] = Sequence(ttt, next_offset, length)
            out.append(Solicit(ttt, self.r2t_count, next_offset, length))
            self.r2t_count += 1
            next_offset += length
        return out

    def accept(self, pdu: DataOut) -> None:
        """Take one Data-Out of this task (its ITT matched). Never raises for peer errors:
        they fail the task (module docstring)."""
        seq = self._sequences.get(pdu.ttt)
        if seq is None:
            self._fail(DATA_PHASE_ERROR)
            return
        size = len(pdu.data)
        if pdu.datasn != seq.next_datasn:
            self._fail(DATA_PHASE_ERROR)
        elif pdu.buffer_offset != seq.offset + seq.received:
            self._fail(DATA_OFFSET_ERROR)
        elif self.failure is None:
            start = pdu.buffer_offset
            room = max(0, min(seq.length - seq.received, len(self.buffer) - start))
            take = min(size, room)
            if take:
                memoryview(self.buffer)[start : start + take] = memoryview(pdu.data)[:take]
        seq.received += size
        seq.next_datasn += 1
        event = SequenceInput.LAST if pdu.final else SequenceInput.DATA
        seq.state = SEQUENCE_TRANSITIONS[(seq.state, event)]
        if seq.state is SequenceState.CLOSED:
            del self._sequences[pdu.ttt]
            self._sequence_closed(seq)

    def _sequence_closed(self, seq: Sequence) -> None:
        if self.failure is not None:
            return
        got = min(seq.received, seq.length)
        if seq.ttt != NO_TAG and got < seq.length:
            self._fail(DATA_OFFSET_ERROR)  # a solicited sequence ended short
            return
        if seq.offset == self.filled:  # sequences close in offset order (in-order data)
            self.filled = min(self.edtl, seq.offset + got)
        else:
            self._fail(DATA_OFFSET_ERROR)

    def _fail(self, sense: SenseTuple) -> None:
        if self.failure is None:
            self.failure = sense

    def abort(self) -> None:
        self._sequences.clear()
        self._fail(DATA_PHASE_ERROR)

    def owns(self, ttt: int) -> bool:
        return ttt in self._sequences


@dataclass(slots=True)
class DataInPlan:
    """The Data-In PDUs of a read, and whether status rode on the last one."""

    pdus: list[DataIn]
    status_sent: bool


def data_in_pdus(
    data: memoryview | FileSpan,
    *,
    itt: int,
    lun: int,
    max_segment: int,
    max_burst: int,
    status: int | None,
    overflow: int,
    underflow: int,
    statsn: int,
    exp_cmdsn: int,
    max_cmdsn: int,
) -> DataInPlan:
    """Cut ``data`` into Data-In PDUs (views, no copy). ``status`` not None asks for the
    status in the last PDU (the caller checked it is allowed); StatSN is then ``statsn``."""
    pdus: list[DataIn] = []
    total = data.nbytes
    offset = 0
    burst_left = max_burst
    while offset < total:
        size = min(max_segment, burst_left, total - offset)
        last = offset + size == total
        burst_left -= size
        final = last or burst_left == 0
        with_status = last and status is not None
        pdus.append(DataIn(
            final=final, has_status=with_status, status=(status or 0) if with_status else 0,
            overflow=with_status and overflow > 0,
            underflow=with_status and overflow == 0 and underflow > 0,
            residual=(overflow or underflow) if with_status else 0,
            lun=lun, itt=itt, ttt=NO_TAG, statsn=statsn, exp_cmdsn=exp_cmdsn,
            max_cmdsn=max_cmdsn, datasn=len(pdus), buffer_offset=offset,
            data=data[offset : offset + size],
        ))  # fmt: skip
        if final:
            burst_left = max_burst
        offset += size
    return DataInPlan(pdus, status is not None and bool(pdus))


@dataclass(slots=True)
class Task:
    """A SCSI task of this connection, from its command to its status."""

    itt: int
    cmdsn: int
    lun_field: int
    lun: int
    lu: object | None
    cdb: bytes
    read: bool
    write: bool
    edtl: int
    immediate: bool
    bidi_read_length: int | None = None
    transfer: WriteTransfer | None = None
    executing: bool = False
    spans_ok: bool = False  # its read data may be a FileSpan (ScsiCommand.spans_ok)

    @property
    def r2t_count(self) -> int:
        return self.transfer.r2t_count if self.transfer is not None else 0


def decode_lun(field: int) -> int:
    """The LUN number of the 8-byte LUN field (SAM-5 4.7; docs/iscsi.md pitfall 11):
    peripheral/flat addressing of the first level; other methods give numbers >= 0x8000,
    which no LUN map contains."""
    b8, b9 = field >> 56 & 0xFF, field >> 48 & 0xFF
    if b8 >> 6 in (0, 1):
        return (b8 & 0x3F) << 8 | b9
    return b8 << 8 | b9
