"""PDUs a target sends (RFC 7143 sections 11.4, 11.6, 11.7, 11.8, 11.9, 11.11, 11.13, 11.15,
11.17, 11.19). Their constructors refuse combinations that real initiators treat as fatal
(docs/iscsi.md section 11), so that such a PDU cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from .errors import LocalProtocolError, PduRejected, RejectReason
from .pdu_base import (
    FINAL,
    NO_TAG,
    AdditionalHeader,
    AsyncEvent,
    Buffer,
    LogoutResponseCode,
    Opcode,
    OutBuffer,
    Pdu,
    Stage,
    TmfResponse,
    layout,
    nbytes,
)
from .pdu_initiator import login_flags

__all__ = [
    "R2T",
    "AsyncMessage",
    "DataIn",
    "LoginResponse",
    "LogoutResponse",
    "NopIn",
    "Reject",
    "SCSIResponse",
    "TaskMgmtResponse",
    "TextResponse",
]


@dataclass(slots=True, kw_only=True)
class _TargetStatus(Pdu):
    """Fields every target PDU of this module carries at bytes 24-35."""

    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0


@dataclass(slots=True, kw_only=True)
class NopIn(_TargetStatus):
    """NOP-In (RFC 7143 section 11.19)."""

    OPCODE = Opcode.NOP_IN
    LAYOUT = layout(">BBHIQIIIII12x")

    lun: int = 0
    ttt: int = NO_TAG
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL, 0, word, self.lun, self.itt, self.ttt, self.statsn,
            self.exp_cmdsn, self.max_cmdsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, _, _, lun, itt, ttt, statsn, exp, mx = cls.LAYOUT.unpack_from(bhs)
        return cls(lun=lun, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx,
                   data=data)  # fmt: skip


_BIDI_OVERFLOW, _BIDI_UNDERFLOW, _OVERFLOW, _UNDERFLOW, _STATUS = 0x10, 0x08, 0x04, 0x02, 0x01


@dataclass(slots=True, kw_only=True)
class SCSIResponse(_TargetStatus):
    """SCSI Response (RFC 7143 section 11.4). ``data`` is SenseLength + sense data
    (section 11.4.7); build it with ``SCSIResponse.sense_segment``."""

    OPCODE = Opcode.SCSI_RESPONSE
    LAYOUT = layout(">BBBBI8xIIIIIIII")

    response: int = 0
    status: int = 0
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    snack_tag: int = 0
    exp_datasn: int = 0
    bidi_residual: int = 0
    residual: int = 0
    data: Buffer = b""

    def __post_init__(self) -> None:
        # Section 11.4.5.1: O and U are mutually exclusive; libiscsi also refuses O/U with a
        # non-zero Response (docs/iscsi.md pitfall 7).
        if self.overflow and self.underflow:
            raise LocalProtocolError("overflow and underflow are exclusive")
        if (self.overflow or self.underflow) and self.response != 0:
            raise LocalProtocolError("residual flags need Response 0 (command completed)")

    @staticmethod
    def sense_segment(sense: bytes) -> bytes:
        """The data segment for CHECK CONDITION: 2-byte SenseLength, then the sense bytes."""
        return len(sense).to_bytes(2, "big") + sense

    @property
    def sense(self) -> bytes:
        if nbytes(self.data) < 2:
            return b""
        length = int.from_bytes(self.data[:2], "big")
        return bytes(self.data[2 : 2 + length])

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        flags = FINAL | (_BIDI_OVERFLOW if self.bidi_overflow else 0)
        flags |= _BIDI_UNDERFLOW if self.bidi_underflow else 0
        flags |= (_OVERFLOW if self.overflow else 0) | (_UNDERFLOW if self.underflow else 0)
        return self.LAYOUT.pack(
            self.OPCODE, flags, self.response, self.status, word, self.itt, self.snack_tag,
            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.exp_datasn, self.bidi_residual,
            self.residual,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        (_, flags, response, status, _, itt, snack, statsn, exp, mx, exp_datasn, bidi_res,
         res) = cls.LAYOUT.unpack_from(bhs)  # fmt: skip
        return cls(
            response=response, status=status, bidi_overflow=bool(flags & _BIDI_OVERFLOW),
            bidi_underflow=bool(flags & _BIDI_UNDERFLOW), overflow=bool(flags & _OVERFLOW),
            underflow=bool(flags & _UNDERFLOW), itt=itt, snack_tag=snack, statsn=statsn,
            exp_cmdsn=exp, max_cmdsn=mx, exp_datasn=exp_datasn, bidi_residual=bidi_res,
            residual=res, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class TaskMgmtResponse(_TargetStatus):
    """Task Management Function Response (RFC 7143 section 11.6)."""

    OPCODE = Opcode.TASK_MGMT_RESPONSE
    LAYOUT = layout(">BBBxI8xI4xIII12x")

    response: int = TmfResponse.FUNCTION_COMPLETE

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(self.OPCODE, FINAL, self.response, word, self.itt,
                                self.statsn, self.exp_cmdsn, self.max_cmdsn)  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, response, _, itt, statsn, exp, mx = cls.LAYOUT.unpack_from(bhs)
        return cls(response=response, itt=itt, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx)


@dataclass(slots=True, kw_only=True)
class LoginResponse(_TargetStatus):
    """Login Response (RFC 7143 section 11.13)."""

    OPCODE = Opcode.LOGIN_RESPONSE
    LAYOUT = layout(">BBBBI6sHI4xIIIBB10x")

    transit: bool = False
    cont: bool = False
    csg: int = Stage.SECURITY
    nsg: int = Stage.SECURITY
    version_max: int = 0
    version_active: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    status_class: int = 0
    status_detail: int = 0
    data: Buffer = b""

    def __post_init__(self) -> None:
        if self.transit and self.cont:  # section 11.13.2: C=1 forbids T=1
            raise LocalProtocolError("a Login Response cannot have both T and C")

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, login_flags(self.transit, self.cont, self.csg, self.nsg),
            self.version_max, self.version_active, word, self.isid, self.tsih, self.itt,
            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.status_class, self.status_detail,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        (_, flags, vmax, vact, _, isid, tsih, itt, statsn, exp, mx, sclass,
         sdetail) = cls.LAYOUT.unpack_from(bhs)  # fmt: skip
        return cls(
            transit=bool(flags & 0x80), cont=bool(flags & 0x40), csg=flags >> 2 & 3,
            nsg=flags & 3, version_max=vmax, version_active=vact, isid=isid, tsih=tsih, itt=itt,
            statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx, status_class=sclass,
            status_detail=sdetail, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class TextResponse(_TargetStatus):
    """Text Response (RFC 7143 section 11.11)."""

    OPCODE = Opcode.TEXT_RESPONSE
    LAYOUT = layout(">BBHIQIIIII12x")

    final: bool = True
    cont: bool = False
    lun: int = 0
    ttt: int = NO_TAG
    data: Buffer = b""

    def __post_init__(self) -> None:
        if self.final and self.cont:  # section 11.11.2
            raise LocalProtocolError("a Text Response cannot have both F and C")

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        flags = (FINAL if self.final else 0) | (0x40 if self.cont else 0)
        return self.LAYOUT.pack(self.OPCODE, flags, 0, word, self.lun, self.itt, self.ttt,
                                self.statsn, self.exp_cmdsn, self.max_cmdsn)  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, flags, _, _, lun, itt, ttt, statsn, exp, mx = cls.LAYOUT.unpack_from(bhs)
        return cls(final=bool(flags & FINAL), cont=bool(flags & 0x40), lun=lun, itt=itt,
                   ttt=ttt, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx, data=data)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class DataIn(_TargetStatus):
    """SCSI Data-In (RFC 7143 section 11.7). ``status`` is sent only with ``has_status``
    (the S bit), which needs ``final`` (section 11.7.1); StatSN is meaningful only then."""

    OPCODE = Opcode.SCSI_DATA_IN
    LAYOUT = layout(">BBxBIQIIIIIIII")

    final: bool = False
    acknowledge: bool = False
    overflow: bool = False
    underflow: bool = False
    has_status: bool = False
    status: int = 0
    lun: int = 0
    ttt: int = NO_TAG
    datasn: int = 0
    buffer_offset: int = 0
    residual: int = 0
    data: OutBuffer = b""  # a FileSpan only as the target sends it (sendfile)

    def __post_init__(self) -> None:
        if self.has_status and not self.final:
            raise LocalProtocolError("Data-In with status must be final")
        if self.overflow and self.underflow:
            raise LocalProtocolError("overflow and underflow are exclusive")

    @property
    def data_segment(self) -> OutBuffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        flags = (FINAL if self.final else 0) | (0x40 if self.acknowledge else 0)
        flags |= (_OVERFLOW if self.overflow else 0) | (_UNDERFLOW if self.underflow else 0)
        flags |= _STATUS if self.has_status else 0
        return self.LAYOUT.pack(
            self.OPCODE, flags, self.status, word, self.lun, self.itt, self.ttt, self.statsn,
            self.exp_cmdsn, self.max_cmdsn, self.datasn, self.buffer_offset, self.residual,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        (_, flags, status, _, lun, itt, ttt, statsn, exp, mx, datasn, offset,
         residual) = cls.LAYOUT.unpack_from(bhs)  # fmt: skip
        return cls(
            final=bool(flags & FINAL), acknowledge=bool(flags & 0x40),
            overflow=bool(flags & _OVERFLOW), underflow=bool(flags & _UNDERFLOW),
            has_status=bool(flags & _STATUS), status=status, lun=lun, itt=itt, ttt=ttt,
            statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx, datasn=datasn, buffer_offset=offset,
            residual=residual, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class LogoutResponse(_TargetStatus):
    """Logout Response (RFC 7143 section 11.15)."""

    OPCODE = Opcode.LOGOUT_RESPONSE
    LAYOUT = layout(">BBBxI8xI4xIII4xHH4x")

    response: int = LogoutResponseCode.CLOSED
    time2wait: int = 0
    time2retain: int = 0

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL, self.response, word, self.itt, self.statsn, self.exp_cmdsn,
            self.max_cmdsn, self.time2wait, self.time2retain,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, response, _, itt, statsn, exp, mx, t2w, t2r = cls.LAYOUT.unpack_from(bhs)
        return cls(response=response, itt=itt, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx,
                   time2wait=t2w, time2retain=t2r)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class R2T(_TargetStatus):
    """Ready To Transfer (RFC 7143 section 11.8). StatSN is not advanced by an R2T."""

    OPCODE = Opcode.R2T
    LAYOUT = layout(">BBHIQIIIIIIII")

    lun: int = 0
    ttt: int = 0
    r2tsn: int = 0
    buffer_offset: int = 0
    desired_length: int = 1

    def __post_init__(self) -> None:
        if self.desired_length == 0:  # section 11.8.4; Linux drops the connection on it
            raise LocalProtocolError("an R2T must ask for at least one byte")
        if self.ttt == NO_TAG:
            raise LocalProtocolError("an R2T needs a Target Transfer Tag other than 0xffffffff")

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL, 0, word, self.lun, self.itt, self.ttt, self.statsn,
            self.exp_cmdsn, self.max_cmdsn, self.r2tsn, self.buffer_offset, self.desired_length,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, _, _, lun, itt, ttt, statsn, exp, mx, r2tsn, offset, length = (
            cls.LAYOUT.unpack_from(bhs)
        )
        return cls(lun=lun, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx,
                   r2tsn=r2tsn, buffer_offset=offset, desired_length=length)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class AsyncMessage(_TargetStatus):
    """Asynchronous Message (RFC 7143 section 11.9); its ITT is always 0xffffffff."""

    OPCODE = Opcode.ASYNC_MESSAGE
    LAYOUT = layout(">BBHIQI4xIIIBBHHH4x")

    lun: int = 0
    async_event: int = AsyncEvent.SCSI_EVENT
    async_vcode: int = 0
    param1: int = 0
    param2: int = 0
    param3: int = 0
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL, 0, word, self.lun, NO_TAG, self.statsn, self.exp_cmdsn,
            self.max_cmdsn, self.async_event, self.async_vcode, self.param1, self.param2,
            self.param3,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, _, _, lun, _, statsn, exp, mx, event, vcode, p1, p2, p3 = (
            cls.LAYOUT.unpack_from(bhs)
        )
        return cls(lun=lun, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx, async_event=event,
                   async_vcode=vcode, param1=p1, param2=p2, param3=p3, data=data)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class Reject(_TargetStatus):
    """Reject (RFC 7143 section 11.17): ``data`` is the rejected PDU's header; ITT is
    0xffffffff. Build one from a ``PduRejected`` with ``Reject.from_error``."""

    OPCODE = Opcode.REJECT
    LAYOUT = layout(">BBBxI8xI4xIIII8x")

    reason: int = RejectReason.PROTOCOL_ERROR
    datasn_r2tsn: int = 0
    data: Buffer = b""

    @classmethod
    def from_error(cls, error: PduRejected, *, statsn: int, exp_cmdsn: int, max_cmdsn: int) -> Self:
        return cls(reason=error.reason, data=error.header, statsn=statsn, exp_cmdsn=exp_cmdsn,
                   max_cmdsn=max_cmdsn)  # fmt: skip

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL, self.reason, word, NO_TAG, self.statsn, self.exp_cmdsn,
            self.max_cmdsn, self.datasn_r2tsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, _, reason, _, _, statsn, exp, mx, datasn = cls.LAYOUT.unpack_from(bhs)
        return cls(reason=reason, statsn=statsn, exp_cmdsn=exp, max_cmdsn=mx,
                   datasn_r2tsn=datasn, data=data)  # fmt: skip
