"""PDUs an initiator sends (RFC 7143 sections 11.3, 11.5, 11.7, 11.10, 11.12, 11.14, 11.16,
11.18). Their constructors accept every value the wire format can carry, so decoding a
well-framed PDU never fails here: semantic checks belong to the login and session layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from .errors import LocalProtocolError
from .pdu_base import (
    FINAL,
    IMMEDIATE,
    NO_TAG,
    AdditionalHeader,
    AhsType,
    Buffer,
    LogoutReason,
    Opcode,
    Pdu,
    Stage,
    TaskAttribute,
    TaskFunction,
    byte0,
    layout,
    pack_ahs,
)

__all__ = [
    "DataOut",
    "LoginRequest",
    "LogoutRequest",
    "NopOut",
    "SCSICommand",
    "SnackRequest",
    "TaskMgmtRequest",
    "TextRequest",
    "login_flags",
]


@dataclass(slots=True, kw_only=True)
class NopOut(Pdu):
    """NOP-Out (RFC 7143 section 11.18)."""

    OPCODE = Opcode.NOP_OUT
    LAYOUT = layout(">BBHIQIIII16x")

    immediate: bool = False
    lun: int = 0
    ttt: int = NO_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            byte0(self.OPCODE, self.immediate), FINAL, 0, word, self.lun,
            self.itt, self.ttt, self.cmdsn, self.exp_statsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        b0, _, _, _, lun, itt, ttt, cmdsn, exp_statsn = cls.LAYOUT.unpack_from(bhs)
        return cls(immediate=bool(b0 & IMMEDIATE), lun=lun, itt=itt, ttt=ttt, cmdsn=cmdsn,
                   exp_statsn=exp_statsn, data=data)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class SCSICommand(Pdu):
    """SCSI Command (RFC 7143 section 11.3). ``cdb`` is the whole CDB, extended-CDB AHS
    included (section 11.3.5); a CDB shorter than 16 bytes is zero-padded to 16 as on the
    wire. ``data`` is immediate data."""

    OPCODE = Opcode.SCSI_COMMAND
    LAYOUT = layout(">BBHIQIIII16s")

    immediate: bool = False
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = TaskAttribute.SIMPLE
    lun: int = 0
    edtl: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    cdb: bytes = bytes(16)
    bidi_read_length: int | None = None
    data: Buffer = b""

    def __post_init__(self) -> None:
        if len(self.cdb) < 16:
            object.__setattr__(self, "cdb", bytes(self.cdb).ljust(16, b"\0"))
        if not 0 <= self.attr <= 7:
            raise LocalProtocolError("ATTR is 3 bits")

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _ahs(self) -> bytes:
        out = b""
        if len(self.cdb) > 16:
            out += pack_ahs(AdditionalHeader(AhsType.EXTENDED_CDB, b"\0" + self.cdb[16:]))
        if self.bidi_read_length is not None:
            body = b"\0" + self.bidi_read_length.to_bytes(4, "big")
            out += pack_ahs(AdditionalHeader(AhsType.BIDI_READ_LENGTH, body))
        return out

    def _pack(self, word: int) -> bytes:
        flags = (FINAL if self.final else 0) | (0x40 if self.read else 0)
        flags |= (0x20 if self.write else 0) | self.attr
        return self.LAYOUT.pack(
            byte0(self.OPCODE, self.immediate), flags, 0, word, self.lun, self.itt,
            self.edtl, self.cmdsn, self.exp_statsn, self.cdb[:16],
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        b0, flags, _, _, lun, itt, edtl, cmdsn, exp_statsn, cdb = cls.LAYOUT.unpack_from(bhs)
        bidi = None
        for extra in ahs:  # RFC 7143 section 11.3.5 and 11.3.6; other types are ignored
            if extra.ahs_type == AhsType.EXTENDED_CDB:
                cdb += extra.body[1:]
            elif extra.ahs_type == AhsType.BIDI_READ_LENGTH and len(extra.body) == 5:
                bidi = int.from_bytes(extra.body[1:], "big")
        return cls(
            immediate=bool(b0 & IMMEDIATE), final=bool(flags & FINAL),
            read=bool(flags & 0x40), write=bool(flags & 0x20), attr=flags & 0x07, lun=lun,
            itt=itt, edtl=edtl, cmdsn=cmdsn, exp_statsn=exp_statsn, cdb=cdb,
            bidi_read_length=bidi, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class TaskMgmtRequest(Pdu):
    """Task Management Function Request (RFC 7143 section 11.5); ``function`` may hold an
    unknown value, answered with TmfResponse.NOT_SUPPORTED."""

    OPCODE = Opcode.TASK_MGMT_REQUEST
    LAYOUT = layout(">BBHIQIIIIII8x")

    immediate: bool = True
    function: int = TaskFunction.ABORT_TASK
    lun: int = 0
    referenced_task_tag: int = NO_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    ref_cmdsn: int = 0
    exp_datasn: int = 0

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            byte0(self.OPCODE, self.immediate), FINAL | self.function, 0, word, self.lun,
            self.itt, self.referenced_task_tag, self.cmdsn, self.exp_statsn, self.ref_cmdsn,
            self.exp_datasn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        b0, b1, _, _, lun, itt, rtt, cmdsn, exp_statsn, ref_cmdsn, exp_datasn = (
            cls.LAYOUT.unpack_from(bhs)
        )
        return cls(
            immediate=bool(b0 & IMMEDIATE), function=b1 & 0x7F, lun=lun, itt=itt,
            referenced_task_tag=rtt, cmdsn=cmdsn, exp_statsn=exp_statsn, ref_cmdsn=ref_cmdsn,
            exp_datasn=exp_datasn,
        )  # fmt: skip


def login_flags(transit: bool, cont: bool, csg: int, nsg: int) -> int:
    return (0x80 if transit else 0) | (0x40 if cont else 0) | (csg & 3) << 2 | (nsg & 3)


@dataclass(slots=True, kw_only=True)
class LoginRequest(Pdu):
    """Login Request (RFC 7143 section 11.12), always immediate. ``csg``/``nsg`` stay ints:
    the reserved stage 2 and bad T/C combinations are the login machine's to answer."""

    OPCODE = Opcode.LOGIN_REQUEST
    LAYOUT = layout(">BBBBI6sHIHxxII16x")

    transit: bool = False
    cont: bool = False
    csg: int = Stage.SECURITY
    nsg: int = Stage.SECURITY
    version_max: int = 0
    version_min: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            byte0(self.OPCODE, True), login_flags(self.transit, self.cont, self.csg, self.nsg),
            self.version_max, self.version_min, word, self.isid, self.tsih, self.itt, self.cid,
            self.cmdsn, self.exp_statsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, flags, vmax, vmin, _, isid, tsih, itt, cid, cmdsn, exp_statsn = (
            cls.LAYOUT.unpack_from(bhs)
        )
        return cls(
            transit=bool(flags & 0x80), cont=bool(flags & 0x40), csg=flags >> 2 & 3,
            nsg=flags & 3, version_max=vmax, version_min=vmin, isid=isid, tsih=tsih, itt=itt,
            cid=cid, cmdsn=cmdsn, exp_statsn=exp_statsn, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class TextRequest(Pdu):
    """Text Request (RFC 7143 section 11.10)."""

    OPCODE = Opcode.TEXT_REQUEST
    LAYOUT = layout(">BBHIQIIII16x")

    immediate: bool = False
    final: bool = True
    cont: bool = False
    lun: int = 0
    ttt: int = NO_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        flags = (FINAL if self.final else 0) | (0x40 if self.cont else 0)
        return self.LAYOUT.pack(
            byte0(self.OPCODE, self.immediate), flags, 0, word, self.lun, self.itt, self.ttt,
            self.cmdsn, self.exp_statsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        b0, flags, _, _, lun, itt, ttt, cmdsn, exp_statsn = cls.LAYOUT.unpack_from(bhs)
        return cls(
            immediate=bool(b0 & IMMEDIATE), final=bool(flags & FINAL),
            cont=bool(flags & 0x40), lun=lun, itt=itt, ttt=ttt, cmdsn=cmdsn,
            exp_statsn=exp_statsn, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class DataOut(Pdu):
    """SCSI Data-Out (RFC 7143 section 11.7)."""

    OPCODE = Opcode.SCSI_DATA_OUT
    LAYOUT = layout(">BBHIQII4xI4xII4x")

    final: bool = False
    lun: int = 0
    ttt: int = NO_TAG
    exp_statsn: int = 0
    datasn: int = 0
    buffer_offset: int = 0
    data: Buffer = b""

    @property
    def data_segment(self) -> Buffer:
        return self.data

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL if self.final else 0, 0, word, self.lun, self.itt, self.ttt,
            self.exp_statsn, self.datasn, self.buffer_offset,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, flags, _, _, lun, itt, ttt, exp_statsn, datasn, offset = cls.LAYOUT.unpack_from(bhs)
        return cls(
            final=bool(flags & FINAL), lun=lun, itt=itt, ttt=ttt, exp_statsn=exp_statsn,
            datasn=datasn, buffer_offset=offset, data=data,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class LogoutRequest(Pdu):
    """Logout Request (RFC 7143 section 11.14); ``reason`` may be an unknown value."""

    OPCODE = Opcode.LOGOUT_REQUEST
    LAYOUT = layout(">BBHI8xIH2xII16x")

    immediate: bool = False
    reason: int = LogoutReason.CLOSE_SESSION
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            byte0(self.OPCODE, self.immediate), FINAL | self.reason, 0, word, self.itt,
            self.cid, self.cmdsn, self.exp_statsn,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        b0, b1, _, _, itt, cid, cmdsn, exp_statsn = cls.LAYOUT.unpack_from(bhs)
        return cls(immediate=bool(b0 & IMMEDIATE), reason=b1 & 0x7F, itt=itt, cid=cid,
                   cmdsn=cmdsn, exp_statsn=exp_statsn)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class SnackRequest(Pdu):
    """SNACK Request (RFC 7143 section 11.16). Only parsed, so that at ERL 0 the target can
    answer it with Reject 0x04 (docs/iscsi.md section 9)."""

    OPCODE = Opcode.SNACK_REQUEST
    LAYOUT = layout(">BBHIQII4xI8xII")

    snack_type: int = 0
    lun: int = 0
    ttt: int = NO_TAG
    exp_statsn: int = 0
    beg_run: int = 0
    run_length: int = 0

    def _pack(self, word: int) -> bytes:
        return self.LAYOUT.pack(
            self.OPCODE, FINAL | self.snack_type, 0, word, self.lun, self.itt, self.ttt,
            self.exp_statsn, self.beg_run, self.run_length,
        )  # fmt: skip

    @classmethod
    def _unpack(cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview) -> Self:
        _, b1, _, _, lun, itt, ttt, exp_statsn, beg, run = cls.LAYOUT.unpack_from(bhs)
        return cls(snack_type=b1 & 0x0F, lun=lun, itt=itt, ttt=ttt, exp_statsn=exp_statsn,
                   beg_run=beg, run_length=run)  # fmt: skip
