"""Errors of the iSCSI protocol core, each carrying what the target must do on the wire.

Theory of operation (the h11/h2 model, STYLE.md section 1 and guide item 4): the sans-I/O
modules raise these exceptions; the connection layer converts each one, at exactly one
boundary, into its wire meaning:

- ``PduRejected``: send a Reject PDU (RFC 7143 section 11.17) with ``reason`` and the
  rejected PDU's 48-byte BHS as its data segment, then keep reading. The reader that raised
  it has consumed the whole rejected PDU, so the byte stream is still in sync.
- ``ConnectionFatal``: the stream can no longer be trusted (header digest error, an
  impossible length): drop the connection (ERL 0, RFC 7143 section 7.1.4 and 7.8). The
  reader that raised it raises the same error on every later call.
- ``LoginFailure``: answer the Login Request with a Login Response carrying
  ``status`` (RFC 7143 section 11.13.5), then close the connection.

``LocalProtocolError`` is different: *our* code tried to build something invalid (an
out-of-range field). It is a bug on this side, never the peer's fault.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "ConnectionFatal",
    "DataDigestError",
    "ErrorAction",
    "HeaderDigestError",
    "LocalProtocolError",
    "LoginFailure",
    "LoginStatus",
    "MalformedStream",
    "PduRejected",
    "ProtocolError",
    "RejectReason",
    "SegmentTooLarge",
]


class RejectReason(enum.IntEnum):
    """Reject PDU reason codes, byte 2 (RFC 7143 section 11.17.1). Wire values: frozen."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class LoginStatus(enum.IntEnum):
    """Login Response Status-Class << 8 | Status-Detail (RFC 7143 section 11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    TARGET_NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        return self.value & 0xFF


class ErrorAction(enum.Enum):
    """What the connection layer does with a ``ProtocolError``."""

    REJECT = "reject"  # send Reject, keep the connection
    DROP_CONNECTION = "drop"  # close the TCP connection without a response
    LOGIN_REJECT = "login-reject"  # send a failing Login Response, then close


class ProtocolError(Exception):
    """The peer broke RFC 7143. ``action`` says what the target does about it."""

    action: ClassVar[ErrorAction]


class PduRejected(ProtocolError):
    """Answer with a Reject PDU carrying ``reason`` and ``header`` (the rejected BHS)."""

    action = ErrorAction.REJECT

    def __init__(self, reason: RejectReason, header: bytes, message: str) -> None:
        super().__init__(f"{message} (Reject reason 0x{reason:02x})")
        self.reason = reason
        self.header = bytes(header[:48])


class DataDigestError(PduRejected):
    """DataDigest mismatch: Reject 0x02; the PDU's data is discarded (RFC 7143 7.8)."""

    def __init__(self, header: bytes) -> None:
        super().__init__(RejectReason.DATA_DIGEST_ERROR, header, "data digest mismatch")


class ConnectionFatal(ProtocolError):
    """The byte stream is unusable; drop the connection (ERL 0)."""

    action = ErrorAction.DROP_CONNECTION


class HeaderDigestError(ConnectionFatal):
    """HeaderDigest mismatch: the lengths in the header cannot be trusted (RFC 7143 7.8)."""


class SegmentTooLarge(ConnectionFatal):
    """DataSegmentLength above the reader's hard cap: refuse to buffer it."""


class MalformedStream(ConnectionFatal):
    """Anything else that desynchronises framing (e.g. the peer closed mid-PDU)."""


class LoginFailure(ProtocolError):
    """Fail the login with ``status`` in a Login Response, then close."""

    action = ErrorAction.LOGIN_REJECT

    def __init__(self, status: LoginStatus, message: str) -> None:
        if status is LoginStatus.SUCCESS:
            raise ValueError("a login failure needs a non-success status")
        super().__init__(f"{message} (login status 0x{status.value:04x} {status.name})")
        self.status = status


class LocalProtocolError(ValueError):
    """This side tried to build an invalid PDU or value (a bug here, not the peer's)."""
