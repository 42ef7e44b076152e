"""One Text Request/Response exchange in full feature phase (RFC 7143 sections 6.2, 11.10,
11.11; docs/iscsi.md section 10). Sans-I/O.

An exchange is tied together by the initiator's ITT and a Target Transfer Tag chosen here.
Request text may span PDUs (C=1): each such PDU gets an empty response carrying the TTT and
the text is answered when the last part (C=0) arrives. A long answer is cut to the
initiator's MaxRecvDataSegmentLength: every part but the last goes out with F=0, C=1 and the
TTT, and the initiator asks for the next part with an empty Text Request carrying that TTT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .discovery import split_text
from .errors import PduRejected, RejectReason
from .keys import MAX_TEXT, TextFormatError, parse_text
from .pdu import TextRequest

__all__ = ["TextExchange"]


class TextExchange:
    """The state of one exchange; ``step`` answers each Text Request of it."""

    __slots__ = ("_inbound", "_outbound", "itt", "ttt")

    def __init__(self, itt: int, ttt: int) -> None:
        self.itt, self.ttt = itt, ttt
        self._inbound = bytearray()
        self._outbound: list[memoryview] | None = None

    def step(
        self, pdu: TextRequest, answer: Callable[[Mapping[str, str]], bytes], limit: int
    ) -> tuple[memoryview | bytes, bool]:
        """The data of the Text Response to ``pdu`` and whether it is the last one.
        Malformed or oversized text is Reject 0x09 / 0x04 (section 11.17.1)."""
        if self._outbound is None:
            self._inbound += pdu.data
            if len(self._inbound) > MAX_TEXT:
                raise PduRejected(RejectReason.PROTOCOL_ERROR, pdu.header(), "text too long")
            if pdu.cont:  # more request text follows (section 6.2.1)
                return b"", False
            try:
                keys = parse_text(self._inbound)
            except TextFormatError as exc:
                raise PduRejected(RejectReason.INVALID_PDU_FIELD, pdu.header(), str(exc)) from exc
            self._outbound = split_text(answer(keys), limit)
        piece = self._outbound.pop(0)
        return piece, not self._outbound
