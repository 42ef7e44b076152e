"""The parts every PDU module shares: enums of wire values, digests, AHS, the ``Pdu`` base.

Split out of ``pdu.py`` (which re-exports all of it) to keep modules small; see the theory
of operation there. Enum values are wire values (RFC 7143 section 11): frozen.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

import crc32c as _crc32c

from volume_manager.blockdev import FileSpan

from .errors import LocalProtocolError, PduRejected, RejectReason

__all__ = [
    "BHS_LEN",
    "FINAL",
    "IMMEDIATE",
    "MAX_DSL",
    "NO_TAG",
    "OPCODE_MASK",
    "AdditionalHeader",
    "AhsType",
    "AsyncEvent",
    "Buffer",
    "LogoutReason",
    "LogoutResponseCode",
    "Opcode",
    "OutBuffer",
    "Pdu",
    "Stage",
    "TaskAttribute",
    "TaskFunction",
    "TmfResponse",
    "byte0",
    "crc32c",
    "digest_bytes",
    "layout",
    "length_word",
    "nbytes",
    "pack_ahs",
    "parse_ahs",
]

Buffer = bytes | bytearray | memoryview
# What may go out on the wire: a Data-In segment may be a file span, sent with sendfile.
OutBuffer = bytes | bytearray | memoryview | FileSpan

BHS_LEN = 48
NO_TAG = 0xFFFFFFFF  # the reserved tag value (RFC 7143 section 11.1: ITT/TTT "0xffffffff")
MAX_DSL = 0xFFFFFF  # DataSegmentLength is 24 bits
IMMEDIATE = 0x40  # byte 0 bit 6 (RFC 7143 section 11.2.1.2)
OPCODE_MASK = 0x3F
FINAL = 0x80


class Opcode(enum.IntEnum):
    """Opcodes (RFC 7143 section 11.2.1.2). Initiator 0x00-0x1f, target 0x20-0x3f. Frozen."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    SCSI_DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    SCSI_DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class Stage(enum.IntEnum):
    """Login stages in CSG/NSG (RFC 7143 section 11.12.3); 2 is reserved."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class TaskAttribute(enum.IntEnum):
    """SCSI Command ATTR bits 2-0 (RFC 7143 section 11.3.1.3)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class TaskFunction(enum.IntEnum):
    """Task Management Function Request, byte 1 bits 6-0 (RFC 7143 section 11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(enum.IntEnum):
    """Task Management Function Response byte 2 (RFC 7143 section 11.6.1)."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LogoutReason(enum.IntEnum):
    """Logout Request reason code (RFC 7143 section 11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponseCode(enum.IntEnum):
    """Logout Response byte 2 (RFC 7143 section 11.15.1)."""

    CLOSED = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class AsyncEvent(enum.IntEnum):
    """Asynchronous Message AsyncEvent byte 36 (RFC 7143 section 11.9.1)."""

    SCSI_EVENT = 0
    REQUEST_LOGOUT = 1
    DROP_CONNECTION = 2
    DROP_ALL_CONNECTIONS = 3
    REQUEST_RENEGOTIATION = 4
    VENDOR = 255


class AhsType(enum.IntEnum):
    """AHSType (RFC 7143 section 11.2.2.2)."""

    EXTENDED_CDB = 1
    BIDI_READ_LENGTH = 2


# --- digests -----------------------------------------------------------------------------


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` (0 starts a new CRC)."""
    return int(_crc32c.crc32c(data, value))


def digest_bytes(value: int) -> bytes:
    """The 4 wire bytes of a digest: least-significant byte first (docs/iscsi.md section 1)."""
    return value.to_bytes(4, "little")


# --- Additional Header Segments ----------------------------------------------------------


@dataclass(slots=True)
class AdditionalHeader:
    """One AHS: its type and its specific bytes (AHSLength of them, padding excluded)."""

    ahs_type: int
    body: bytes


_AHS_HEAD = struct.Struct(">HB")


def parse_ahs(region: memoryview, bhs: Buffer) -> tuple[AdditionalHeader, ...]:
    """Split the AHS region (TotalAHSLength*4 bytes); a bad length is Reject 0x09."""
    found: list[AdditionalHeader] = []
    pos, end = 0, len(region)
    while pos < end:
        if end - pos < 4:
            raise PduRejected(RejectReason.INVALID_PDU_FIELD, bytes(bhs), "truncated AHS")
        length, ahs_type = _AHS_HEAD.unpack_from(region, pos)
        stop = pos + 3 + length
        if length == 0 or stop > end:
            raise PduRejected(RejectReason.INVALID_PDU_FIELD, bytes(bhs), "bad AHSLength")
        found.append(AdditionalHeader(ahs_type, bytes(region[pos + 3 : stop])))
        pos = (stop + 3) & ~3  # each AHS is padded to a 4-byte boundary (section 11.2.2)
    return tuple(found)


def pack_ahs(ahs: AdditionalHeader) -> bytes:
    raw = _AHS_HEAD.pack(len(ahs.body), ahs.ahs_type) + ahs.body
    return raw + bytes(-len(raw) % 4)


# --- the PDU base --------------------------------------------------------------------------


def layout(fmt: str) -> struct.Struct:
    layout = struct.Struct(fmt)
    assert layout.size == BHS_LEN, (fmt, layout.size)
    return layout


def length_word(ahs_len: int, data_len: int) -> int:
    """Bytes 4-7: TotalAHSLength (words) << 24 | DataSegmentLength."""
    if data_len > MAX_DSL:
        raise LocalProtocolError(f"data segment of {data_len} bytes exceeds 2**24-1")
    return (ahs_len // 4) << 24 | data_len


def nbytes(buf: OutBuffer) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


@dataclass(slots=True, kw_only=True)
class Pdu:
    """Common base: every PDU has an Initiator Task Tag (bytes 16-19)."""

    OPCODE: ClassVar[Opcode]
    LAYOUT: ClassVar[struct.Struct]

    itt: int = NO_TAG

    @property
    def data_segment(self) -> OutBuffer:
        return b""

    def _ahs(self) -> bytes:
        return b""

    def _pack(self, word: int) -> bytes:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def _unpack(  # pragma: no cover - every subclass overrides
        cls, bhs: memoryview, ahs: tuple[AdditionalHeader, ...], data: memoryview
    ) -> Self:
        raise NotImplementedError

    def header(self) -> bytes:
        """BHS followed by the AHS, without digest."""
        ahs = self._ahs()
        try:
            return self._pack(length_word(len(ahs), nbytes(self.data_segment))) + ahs
        except struct.error as exc:
            raise LocalProtocolError(f"{type(self).__name__}: field out of range") from exc


def byte0(opcode: Opcode, immediate: bool) -> int:
    return opcode | (IMMEDIATE if immediate else 0)
