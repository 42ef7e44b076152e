"""iSCSI PDUs: opcodes, the 48-byte Basic Header Segment of each type, digests and encoding.

Theory of operation (RFC 7143 section 11; docs/iscsi.md sections 1-2):

- Each PDU type is a frozen, slotted dataclass. Its BHS layout is declared once, as a
  ``struct.Struct`` whose size is asserted to be 48; fields are named, never ``hdr[36]``.
  Bytes 4-7 of every BHS are read as one 32-bit word: TotalAHSLength (in 4-byte words) in
  the top byte and the 24-bit DataSegmentLength below it.
- ``encode(pdu)`` returns a *list of buffers* for one ``sendmsg``: header (BHS + AHS, plus
  the header digest when negotiated), the data segment object exactly as the caller gave it
  (a memoryview stays a memoryview: the payload is never copied or joined), then padding and
  data digest together. Joining is cheap for the 48-byte header and the 0-8 byte trailer and
  saves iovecs; it would not be for the payload.
- Decoding is done by ``framing.PduReader``, which calls ``decode_pdu`` with memoryviews of
  its own buffer; the ``data`` field of a decoded PDU is such a view (see its lifetime rule).
- Fields whose unknown values have a defined wire answer (TMF function, logout reason, SNACK
  type) stay plain ``int``s so that decoding never fails on them; compare them with the
  enums below (an ``IntEnum`` compares equal to its value).
- Digests: CRC32C (Castagnoli), the 32-bit value sent least-significant byte first
  (docs/iscsi.md section 1; RFC 7143 section 13.1 and RFC 3720 appendix B.4 vectors).
"""

from __future__ import annotations

from volume_manager.blockdev import FileSpan

from .errors import PduRejected, RejectReason
from .pdu_base import (
    BHS_LEN,
    MAX_DSL,
    NO_TAG,
    OPCODE_MASK,
    AdditionalHeader,
    AhsType,
    AsyncEvent,
    Buffer,
    LogoutReason,
    LogoutResponseCode,
    Opcode,
    OutBuffer,
    Pdu,
    Stage,
    TaskAttribute,
    TaskFunction,
    TmfResponse,
    crc32c,
    digest_bytes,
    nbytes,
    parse_ahs,
)
from .pdu_initiator import (
    DataOut,
    LoginRequest,
    LogoutRequest,
    NopOut,
    SCSICommand,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
)
from .pdu_target import (
    R2T,
    AsyncMessage,
    DataIn,
    LoginResponse,
    LogoutResponse,
    NopIn,
    Reject,
    SCSIResponse,
    TaskMgmtResponse,
    TextResponse,
)

__all__ = [
    "BHS_LEN",
    "INITIATOR_PDUS",
    "MAX_DSL",
    "NO_TAG",
    "PADDING",
    "R2T",
    "TARGET_PDUS",
    "AdditionalHeader",
    "AhsType",
    "AsyncEvent",
    "AsyncMessage",
    "Buffer",
    "DataIn",
    "DataOut",
    "LoginRequest",
    "LoginResponse",
    "LogoutReason",
    "LogoutRequest",
    "LogoutResponse",
    "LogoutResponseCode",
    "NopIn",
    "NopOut",
    "Opcode",
    "OutBuffer",
    "Pdu",
    "Reject",
    "SCSICommand",
    "SCSIResponse",
    "SnackRequest",
    "Stage",
    "TaskAttribute",
    "TaskFunction",
    "TaskMgmtRequest",
    "TaskMgmtResponse",
    "TextRequest",
    "TextResponse",
    "TmfResponse",
    "crc32c",
    "decode_pdu",
    "digest_bytes",
    "encode",
    "frame",
    "parse_ahs",
]

# --- dispatch tables and the codec -----------------------------------------------------------

INITIATOR_PDUS: dict[int, type[Pdu]] = {
    cls.OPCODE: cls
    for cls in (NopOut, SCSICommand, TaskMgmtRequest, LoginRequest, TextRequest, DataOut,
                LogoutRequest, SnackRequest)
}  # fmt: skip
TARGET_PDUS: dict[int, type[Pdu]] = {
    cls.OPCODE: cls
    for cls in (NopIn, SCSIResponse, TaskMgmtResponse, LoginResponse, TextResponse, DataIn,
                LogoutResponse, R2T, AsyncMessage, Reject)
}  # fmt: skip

PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4


def encode(pdu: Pdu, *, header_digest: bool = False,
           data_digest: bool = False) -> list[OutBuffer]:  # fmt: skip
    """The buffers of one PDU on the wire, for ``socket.sendmsg`` (RFC 7143 section 11.2).

    The data segment object is placed in the list as given, never copied or joined."""
    return frame(pdu.header(), pdu.data_segment, header_digest, data_digest)


def frame(header: bytes, data: OutBuffer, header_digest: bool,
          data_digest: bool) -> list[OutBuffer]:  # fmt: skip
    """The wire buffers of a packed header and its data segment: digests and padding."""
    if header_digest:
        header += digest_bytes(crc32c(header))
    out: list[OutBuffer] = [header]
    size = nbytes(data)
    if size:
        out.append(data)
        pad = PADDING[size & 3]
        if data_digest:  # the digest covers data and padding (section 13.1)
            if isinstance(data, FileSpan):  # the connection asks for none with digests
                raise TypeError("a data digest needs the bytes, not a file span")
            out.append(pad + digest_bytes(crc32c(pad, crc32c(data))))
        elif pad:
            out.append(pad)
    return out



def decode_pdu(
    table: dict[int, type[Pdu]], bhs: memoryview, ahs: tuple[AdditionalHeader, ...],
    data: memoryview,
) -> Pdu:  # fmt: skip
    """Build the PDU for a complete frame. Unknown opcodes are Reject 0x05; an opcode of
    the wrong direction is a protocol error, Reject 0x04 (RFC 7143 section 11.17.1)."""
    opcode = bhs[0] & OPCODE_MASK
    cls = table.get(opcode)
    if cls is None:
        known = opcode in INITIATOR_PDUS or opcode in TARGET_PDUS
        reason = RejectReason.PROTOCOL_ERROR if known else RejectReason.COMMAND_NOT_SUPPORTED
        raise PduRejected(reason, bytes(bhs), f"unexpected opcode 0x{opcode:02x}")
    try:
        return cls._unpack(bhs, ahs, data)
    except ValueError as exc:  # LocalProtocolError: a field combination the class refuses
        raise PduRejected(RejectReason.INVALID_PDU_FIELD, bytes(bhs), str(exc)) from exc
