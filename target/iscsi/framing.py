"""A streaming PDU reader: bytes in, typed PDUs out (RFC 7143 section 11.2; sans-I/O).

Theory of operation:

- ``receive_data(buf)`` hands the reader the next bytes of the TCP stream; ``next_pdu()``
  returns one complete PDU, or ``None`` when more bytes are needed (h11's ``NEED_DATA``).
  Call ``next_pdu()`` until it returns ``None`` before the next ``receive_data``.
- Zero copy where possible: when a whole PDU lies inside one received buffer, the PDU's
  ``data`` is a memoryview *into that buffer*. Only a PDU split across receives is
  assembled, once, into a bytearray of exactly its size; each byte is copied at most once,
  so a 16 MiB segment arriving in 1 KiB pieces costs one pass, not a quadratic one.
- **Lifetime rule**: a PDU's ``data`` view is valid until the next ``receive_data`` call.
  The caller must not overwrite a buffer it gave to ``receive_data`` before then (an
  ``asyncio.BufferedProtocol`` must hand out a fresh region, or finish with the PDUs first),
  and must copy (``bytes(pdu.data)``) anything it keeps longer.
- Carrying over (``carry_limit``): a shell that receives into one reusable buffer can
  spare the reader's assembly. A PDU the data ends inside of, if its frame is at most
  ``carry_limit`` bytes, is left unread: ``tail`` says how many bytes. The shell moves
  them to the front of its buffer, receives after them, and hands the reader the whole
  with ``drop_tail(tail)`` first, so the PDU is decoded in place. Under 1 MiB writes
  nearly every receive (which fills a 1 MiB buffer) ends inside a 256 KiB Data-Out:
  assembling it cost a zeroed bytearray and a copy of its bytes, where the shell's move
  copies only the part already received. The caller carries a frame over once: if the
  next receive still does not complete it, ``hold_tail()`` has it assembled as above, so
  a trickling peer costs each byte at most two copies.
- Limits: ``max_recv_data_segment_length`` is what this side declared (RFC 7143 section
  13.12; 8192 during login). A longer segment is a protocol error, Reject 0x04, but framing
  stays in sync, so the bytes are consumed and the connection lives on. Above ``hard_cap``
  the reader refuses to buffer at all and the connection must drop: this bounds memory per
  connection whatever the peer claims.
- Digests are off during login and switched on with ``configure()`` after the final Login
  Response (RFC 7143 section 13.1). Settings apply from the next PDU whose header has not
  been started, so reconfigure right after ``next_pdu()`` returned the PDU that changed them.
- Every failure is a ``ProtocolError`` subclass (errors.py). After a ``ConnectionFatal`` the
  reader is dead and raises the same error again; after a ``PduRejected`` it carries on.
"""

from __future__ import annotations

import enum
import struct

from .errors import (
    ConnectionFatal,
    DataDigestError,
    HeaderDigestError,
    MalformedStream,
    PduRejected,
    RejectReason,
    SegmentTooLarge,
)
from .pdu import (
    BHS_LEN,
    INITIATOR_PDUS,
    MAX_DSL,
    TARGET_PDUS,
    Buffer,
    Pdu,
    crc32c,
    decode_pdu,
    parse_ahs,
)

__all__ = ["DEFAULT_HARD_CAP", "LOGIN_MAX_RECV_DSL", "PduReader", "Sender"]

LOGIN_MAX_RECV_DSL = 8192  # the default until MaxRecvDataSegmentLength is declared (13.12)
# Anything above the hard cap is refused before a byte is buffered, so one connection can
# never make the target hold more than about this much for a single PDU. The default is 4x
# the MaxRecvDataSegmentLength this target declares (262144, keys.TargetOffer): segments
# between the two are still consumed, to answer them with a Reject and stay in sync. A
# server declaring more passes a larger cap; the protocol's own limit is 2**24 - 1 (13.12).
DEFAULT_HARD_CAP = 1 << 20
_DIGEST = 4
_LENGTHS = struct.Struct(">I")  # BHS bytes 4-7: TotalAHSLength << 24 | DataSegmentLength
_DIGEST_WORD = struct.Struct("<I")  # digests are sent least-significant byte first
_EMPTY = memoryview(b"")


class Sender(enum.Enum):
    """Whose PDUs the reader decodes: a target reads what an initiator sends."""

    INITIATOR = "initiator"
    TARGET = "target"


_TABLES = {Sender.INITIATOR: INITIATOR_PDUS, Sender.TARGET: TARGET_PDUS}


class PduReader:
    """Incremental PDU decoder for one connection. See the module docstring for the rules."""

    __slots__ = (
        "_asm",
        "_asm_fill",
        "_carry_limit",
        "_data_digest",
        "_error",
        "_frame_known",
        "_hard_cap",
        "_header_digest",
        "_max_dsl",
        "_pos",
        "_table",
        "_view",
    )

    def __init__(
        self,
        *,
        sender: Sender = Sender.INITIATOR,
        max_recv_data_segment_length: int = LOGIN_MAX_RECV_DSL,
        header_digest: bool = False,
        data_digest: bool = False,
        hard_cap: int = DEFAULT_HARD_CAP,
        carry_limit: int = 0,
    ) -> None:
        if not LOGIN_MAX_RECV_DSL <= hard_cap <= MAX_DSL:
            raise ValueError("the hard cap must lie within 8192..2**24-1")
        if carry_limit and carry_limit < BHS_LEN:
            raise ValueError("a carry limit must hold at least a header")
        self._carry_limit = carry_limit
        self._table = _TABLES[sender]
        self._hard_cap = hard_cap
        self._view = memoryview(b"")
        self._pos = 0
        self._asm: bytearray | None = None  # a PDU being assembled across receives
        self._asm_fill = 0
        self._frame_known = False  # does len(_asm) already cover the whole frame?
        self._error: ConnectionFatal | None = None
        self._max_dsl = LOGIN_MAX_RECV_DSL
        self._header_digest = self._data_digest = False
        self.configure(
            max_recv_data_segment_length=max_recv_data_segment_length,
            header_digest=header_digest,
            data_digest=data_digest,
        )

    def configure(
        self,
        *,
        max_recv_data_segment_length: int | None = None,
        header_digest: bool | None = None,
        data_digest: bool | None = None,
    ) -> None:
        """Apply negotiated settings (RFC 7143 sections 13.1 and 13.12) to following PDUs."""
        if max_recv_data_segment_length is not None:
            if not 512 <= max_recv_data_segment_length <= self._hard_cap:
                raise ValueError("MaxRecvDataSegmentLength must be within 512..hard cap")
            self._max_dsl = max_recv_data_segment_length
        if header_digest is not None:
            self._header_digest = header_digest
        if data_digest is not None:
            self._data_digest = data_digest

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as PDUs."""
        return self._asm_fill + self._view.nbytes - self._pos

    @property
    def missing(self) -> int | None:
        """Bytes still needed to complete the PDU being assembled: 0 when nothing is
        buffered, None when the lengths are not known yet (less than a BHS buffered) or
        unread bytes remain beyond it."""
        if self._asm is None:
            return 0 if self._view.nbytes == self._pos else None
        if not self._frame_known or self._view.nbytes != self._pos:
            return None
        return len(self._asm) - self._asm_fill

    @property
    def tail(self) -> int:
        """Bytes at the end of the data that the reader left for the caller to carry
        over (``carry_limit``): the start of a PDU it ends inside of."""
        return 0 if self._asm is not None else self._view.nbytes - self._pos

    def drop_tail(self, carried: int) -> None:
        """The caller carries the ``tail`` over: it hands those bytes in again at the
        front of the next ``receive_data``."""
        if carried != self.tail or not carried:
            raise ValueError(f"{carried} bytes carried over, but the tail is {self.tail}")
        self._pos = self._view.nbytes

    def hold_tail(self) -> None:
        """Assemble the ``tail`` after all: the caller will not carry it over."""
        if not self.tail:
            return
        limit, self._carry_limit = self._carry_limit, 0
        try:
            pdu = self._next()
        finally:
            self._carry_limit = limit
        assert pdu is None, "a whole PDU was left as the tail"

    def take_partial(self) -> bytes:
        """Hand back the bytes of the PDU being assembled and forget them (only when
        ``missing`` is a count: the caller completes the PDU itself)."""
        if self._asm is None or not self._frame_known or self._view.nbytes != self._pos:
            raise ValueError("no partial PDU of known length is buffered")
        head = bytes(self._asm[: self._asm_fill])
        self._asm, self._asm_fill, self._frame_known = None, 0, False
        return head

    def receive_data(self, data: Buffer) -> None:
        """Append the next bytes of the stream. Invalidates the previous PDUs' data views."""
        if self._error is not None:
            raise self._error
        incoming = memoryview(data).cast("B")
        rest = self._view.nbytes - self._pos
        if rest:  # the caller did not drain next_pdu(): keep the unread bytes (one copy)
            joined = bytearray(self._view[self._pos :])
            joined += incoming
            incoming = memoryview(joined)
        self._view, self._pos = incoming, 0

    def receive_eof(self) -> None:
        """The peer closed the stream. Raises ``MalformedStream`` if a PDU was cut short."""
        if self._error is None and self.buffered:
            self._error = MalformedStream(f"connection closed inside a PDU ({self.buffered} B)")
        if self._error is not None:
            raise self._error

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None if more data is needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ConnectionFatal as exc:
            self._error = exc
            raise

    def __iter__(self) -> PduReader:
        return self

    def __next__(self) -> Pdu:
        pdu = self.next_pdu()
        if pdu is None:
            raise StopIteration
        return pdu

    # --- internals --------------------------------------------------------------------------

    def _next(self) -> Pdu | None:
        view, pos = self._view, self._pos
        avail = view.nbytes - pos
        if self._asm is not None:
            return self._continue_assembly(avail)
        if avail == 0:
            return None
        if avail >= BHS_LEN:
            word = _LENGTHS.unpack_from(view, pos + 4)[0]
            size = self._frame_size(word)
            if avail >= size:  # the fast path: the whole PDU is in this buffer
                self._pos = pos + size
                return self._decode(view, pos, word)
            if size <= self._carry_limit:  # the caller carries it over
                return None
            self._asm, self._frame_known = bytearray(size), True
        else:
            if self._carry_limit:
                return None
            self._asm, self._frame_known = bytearray(BHS_LEN), False
        self._asm_fill = 0
        return self._continue_assembly(avail)

    def _continue_assembly(self, avail: int) -> Pdu | None:
        asm = self._asm
        assert asm is not None
        take = min(len(asm) - self._asm_fill, avail)
        asm[self._asm_fill : self._asm_fill + take] = self._view[self._pos : self._pos + take]
        self._asm_fill += take
        self._pos += take
        if self._asm_fill < len(asm):
            return None
        word = _LENGTHS.unpack_from(asm, 4)[0]
        if not self._frame_known:  # only the BHS so far: now its lengths are known
            size = self._frame_size(word)
            if size > BHS_LEN:
                bigger = bytearray(size)
                bigger[:BHS_LEN] = asm
                self._asm, self._frame_known = bigger, True
                return self._continue_assembly(self._view.nbytes - self._pos)
        self._asm = None
        self._asm_fill = 0
        # A fresh bytearray per assembled PDU: views handed out keep theirs alive.
        return self._decode(memoryview(asm), 0, word)

    def _frame_size(self, word: int) -> int:
        """Total bytes of a PDU from its BHS bytes 4-7, digests and padding included."""
        dsl = word & MAX_DSL
        if dsl > self._hard_cap:
            raise SegmentTooLarge(
                f"DataSegmentLength {dsl} above the hard cap {self._hard_cap}; dropping"
            )
        size = BHS_LEN + (word >> 24) * 4 + (_DIGEST if self._header_digest else 0)
        if dsl:
            size += (dsl + 3) & ~3
            if self._data_digest:
                size += _DIGEST
        return size

    def _decode(self, buf: memoryview, start: int, word: int) -> Pdu:
        """Decode the frame at ``buf[start:]`` whose bytes 4-7 are ``word``."""
        bhs = buf[start : start + BHS_LEN]
        header_end = start + BHS_LEN + (word >> 24) * 4
        if self._header_digest:
            received = _DIGEST_WORD.unpack_from(buf, header_end)[0]
            if crc32c(buf[start:header_end]) != received:
                # The lengths we framed with may be garbage: resynchronising is impossible
                # at ERL 0 (RFC 7143 section 7.8), so the connection must go.
                raise HeaderDigestError("header digest mismatch; dropping the connection")
            data_start = header_end + _DIGEST
        else:
            data_start = header_end
        dsl = word & MAX_DSL
        data = buf[data_start : data_start + dsl] if dsl else _EMPTY
        if dsl and self._data_digest:
            padded_end = data_start + ((dsl + 3) & ~3)
            received = _DIGEST_WORD.unpack_from(buf, padded_end)[0]
            if crc32c(buf[data_start:padded_end]) != received:
                raise DataDigestError(bytes(bhs))
        if dsl > self._max_dsl:
            raise PduRejected(
                RejectReason.PROTOCOL_ERROR,
                bytes(bhs),
                f"DataSegmentLength {dsl} exceeds MaxRecvDataSegmentLength {self._max_dsl}",
            )
        ahs = parse_ahs(buf[start + BHS_LEN : header_end], bhs) if word >> 24 else ()
        return decode_pdu(self._table, bhs, ahs, data)
