"""The streaming PDU reader: any split of the stream gives the same PDUs; bad input only
ever raises ProtocolError subclasses carrying the target's answer."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_samples import INITIATOR_SAMPLES

from target.iscsi.errors import (
    ConnectionFatal,
    DataDigestError,
    ErrorAction,
    HeaderDigestError,
    LoginFailure,
    LoginStatus,
    MalformedStream,
    PduRejected,
    ProtocolError,
    RejectReason,
    SegmentTooLarge,
)
from target.iscsi.framing import DEFAULT_HARD_CAP, PduReader
from target.iscsi.pdu import DataOut, NopOut, Pdu, Reject, SCSICommand, encode

BIG = 1 << 20


def stream(pdus: list[Pdu], **digests: bool) -> bytes:
    return b"".join(bytes(b) for p in pdus for b in encode(p, **digests))


def drain(reader: PduReader) -> list[Pdu]:
    out: list[Pdu] = []
    while (pdu := reader.next_pdu()) is not None:
        out.append(pdu)
    return out


def feed_in_pieces(raw: bytes, cuts: list[int], **kwargs: object) -> list[Pdu]:
    reader = PduReader(max_recv_data_segment_length=BIG, **kwargs)  # type: ignore[arg-type]
    got: list[Pdu] = []
    edges = [0, *sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]
    for start, stop in itertools.pairwise(edges):
        # the pieces are immutable bytes, so the PDUs' data views outlive the next receive
        reader.receive_data(raw[start:stop])
        got.extend(drain(reader))
    reader.receive_eof()
    return got


def test_byte_by_byte_gives_the_same_pdus() -> None:
    raw = stream(INITIATOR_SAMPLES)
    assert feed_in_pieces(raw, list(range(len(raw)))) == INITIATOR_SAMPLES


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    digests=st.booleans(),
)
def test_any_split_gives_the_same_pdus(cuts: list[int], digests: bool) -> None:
    raw = stream(INITIATOR_SAMPLES, header_digest=digests, data_digest=digests)
    got = feed_in_pieces(raw, cuts, header_digest=digests, data_digest=digests)
    assert got == INITIATOR_SAMPLES


def test_whole_pdus_are_views_into_the_received_buffer() -> None:
    raw = bytearray(stream([DataOut(itt=1, data=b"z" * 1000)]))
    reader = PduReader()
    reader.receive_data(raw)
    pdu = reader.next_pdu()
    assert isinstance(pdu, DataOut) and isinstance(pdu.data, memoryview)
    assert pdu.data.obj is raw  # zero copy


def test_split_pdu_is_assembled_once() -> None:
    raw = stream([DataOut(itt=1, data=b"q" * 5000)])
    reader = PduReader()
    for i in range(0, len(raw), 100):
        reader.receive_data(raw[i : i + 100])
        pdus = drain(reader)
    assert len(pdus) == 1 and bytes(pdus[0].data) == b"q" * 5000  # type: ignore[attr-defined]
    assert reader.buffered == 0


def test_undrained_data_is_kept() -> None:
    raw = stream(INITIATOR_SAMPLES)
    reader = PduReader(max_recv_data_segment_length=BIG)
    reader.receive_data(raw[:300])
    first = reader.next_pdu()
    reader.receive_data(raw[300:])  # the caller did not drain: nothing may be lost
    assert [first, *drain(reader)] == INITIATOR_SAMPLES


class CarryingShell:
    """What server.IscsiProtocol does with its one receive buffer (framing.py, "Carrying
    over"): data goes in after the carried bytes; a tail moves to the front, once."""

    def __init__(self, size: int, limit: int, **kwargs: object) -> None:
        self.reader = PduReader(max_recv_data_segment_length=BIG, carry_limit=limit,
                                **kwargs)  # type: ignore[arg-type]  # fmt: skip
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.carried = 0
        self.moved = 0  # bytes moved to the front, in all
        self.in_place = 0  # PDUs with data decoded as a view of the buffer
        self.got: list[bytes] = []  # each PDU encoded again when it came (views die)
        self.digests = kwargs

    def receive(self, data: bytes) -> None:
        while data:
            room = len(self.buffer) - self.carried
            piece, data = data[:room], data[room:]
            end = self.carried + len(piece)
            self.view[self.carried : end] = piece
            if self.carried:
                self.reader.drop_tail(self.carried)
            self.reader.receive_data(self.view[:end])
            for pdu in drain(self.reader):
                self.got.append(stream([pdu], **self.digests))  # type: ignore[arg-type]
                data_view = getattr(pdu, "data", None)
                if isinstance(data_view, memoryview) and data_view.obj is self.buffer:
                    self.in_place += 1
            tail = self.reader.tail
            assert tail <= len(self.buffer) // 2
            if tail and self.carried and tail == end:
                self.reader.hold_tail()
                tail = 0
            if tail:
                self.view[:tail] = self.view[end - tail : end]
                self.moved += tail
            self.carried = tail


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    digests=st.booleans(),
    size=st.sampled_from([600, 2048, 65536]),
)
def test_carrying_over_gives_the_same_pdus(cuts: list[int], digests: bool, size: int) -> None:
    raw = stream(INITIATOR_SAMPLES, header_digest=digests, data_digest=digests)
    shell = CarryingShell(size, size // 2, header_digest=digests, data_digest=digests)
    edges = [0, *sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]
    for start, stop in itertools.pairwise(edges):
        shell.receive(raw[start:stop])
    shell.reader.receive_eof()
    assert shell.got == [stream([p], header_digest=digests, data_digest=digests)
                         for p in INITIATOR_SAMPLES]  # fmt: skip


def test_a_carried_pdu_is_decoded_in_place_and_moved_once() -> None:
    pdus = [DataOut(itt=i, data=bytes([i]) * 100_000) for i in range(1, 8)]
    raw = stream(pdus)
    shell = CarryingShell(1 << 20, 1 << 19)
    for i in range(0, len(raw), 250_000):  # every receive ends inside a PDU
        shell.receive(raw[i : i + 250_000])
    assert shell.got == [stream([p]) for p in pdus]
    assert shell.in_place == len(pdus)  # none assembled
    assert 0 < shell.moved < len(raw) // 2


def test_a_trickling_pdu_is_carried_over_once_then_assembled() -> None:
    raw = stream([DataOut(itt=1, data=b"t" * 200_000)])
    shell = CarryingShell(1 << 20, 1 << 19)
    for i in range(0, len(raw), 1000):
        shell.receive(raw[i : i + 1000])
    assert shell.got == [raw]
    assert shell.moved == 1000  # the first piece only: not once per receive
    assert shell.in_place == 0 and shell.reader.buffered == 0


def test_a_pdu_over_the_carry_limit_is_assembled() -> None:
    raw = stream([DataOut(itt=1, data=b"b" * 5000), NopOut(itt=2)])
    shell = CarryingShell(4096, 2048)
    shell.receive(raw)
    assert shell.got == [stream([DataOut(itt=1, data=b"b" * 5000)]), stream([NopOut(itt=2)])]
    assert shell.moved == 0


def test_dropping_a_tail_that_is_not_there_is_refused() -> None:
    raw = stream([DataOut(itt=1, data=b"x" * 3000)])
    reader = PduReader(carry_limit=1 << 16)
    reader.receive_data(raw[:1000])
    assert reader.next_pdu() is None and reader.tail == 1000
    with pytest.raises(ValueError):
        reader.drop_tail(999)
    with pytest.raises(ValueError):
        PduReader(carry_limit=47)
    reader.hold_tail()  # assembled after all: nothing is left to carry
    assert reader.tail == 0 and reader.buffered == 1000
    reader.receive_data(raw[1000:])
    pdu = reader.next_pdu()
    assert isinstance(pdu, DataOut) and bytes(pdu.data) == b"x" * 3000


def test_iteration_protocol() -> None:
    reader = PduReader(max_recv_data_segment_length=BIG)
    reader.receive_data(stream(INITIATOR_SAMPLES))
    assert list(reader) == INITIATOR_SAMPLES


# --- limits ------------------------------------------------------------------------------


def test_segment_over_max_recv_is_rejected_and_the_stream_stays_in_sync() -> None:
    too_long = NopOut(itt=1, data=b"a" * 9000)
    reader = PduReader()  # 8192 during login
    reader.receive_data(stream([too_long, NopOut(itt=2)]))
    with pytest.raises(PduRejected) as info:
        reader.next_pdu()
    assert info.value.reason == RejectReason.PROTOCOL_ERROR
    assert info.value.action is ErrorAction.REJECT
    assert info.value.header == stream([too_long])[:48]
    assert reader.next_pdu() == NopOut(itt=2)


def test_segment_over_the_hard_cap_drops_the_connection_before_buffering() -> None:
    reader = PduReader(hard_cap=65536)
    header = bytearray(stream([NopOut(itt=1)]))
    header[5:8] = (65537).to_bytes(3, "big")
    reader.receive_data(header)
    with pytest.raises(SegmentTooLarge) as info:
        reader.next_pdu()
    assert info.value.action is ErrorAction.DROP_CONNECTION
    with pytest.raises(SegmentTooLarge):  # the reader is dead from now on
        reader.next_pdu()
    with pytest.raises(SegmentTooLarge):
        reader.receive_data(b"more")


def test_configure_after_login_changes_limits_and_digests() -> None:
    reader = PduReader()
    reader.receive_data(stream([NopOut(itt=1)]))
    assert reader.next_pdu() == NopOut(itt=1)
    reader.configure(max_recv_data_segment_length=262144, header_digest=True, data_digest=True)
    big = DataOut(itt=3, data=b"d" * 100_000)
    reader.receive_data(stream([big], header_digest=True, data_digest=True))
    assert reader.next_pdu() == big
    with pytest.raises(ValueError):
        reader.configure(max_recv_data_segment_length=100)
    with pytest.raises(ValueError):
        reader.configure(max_recv_data_segment_length=DEFAULT_HARD_CAP + 1)
    with pytest.raises(ValueError):
        PduReader(hard_cap=1 << 24)


# --- digests --------------------------------------------------------------------------------


def test_header_digest_error_drops_the_connection() -> None:
    raw = bytearray(stream([NopOut(itt=1)], header_digest=True))
    raw[50] ^= 1
    reader = PduReader(header_digest=True)
    reader.receive_data(raw)
    with pytest.raises(HeaderDigestError):
        reader.next_pdu()


def test_data_digest_error_rejects_0x02_and_carries_on() -> None:
    bad = bytearray(stream([NopOut(itt=1, data=b"hello")], data_digest=True))
    bad[49] ^= 0x40  # inside the data
    reader = PduReader(data_digest=True)
    reader.receive_data(bytes(bad) + stream([NopOut(itt=2)], data_digest=True))
    with pytest.raises(DataDigestError) as info:
        reader.next_pdu()
    assert info.value.reason == RejectReason.DATA_DIGEST_ERROR
    reject = Reject.from_error(info.value, statsn=1, exp_cmdsn=2, max_cmdsn=3)
    assert bytes(reject.data) == bytes(bad[:48])
    assert reader.next_pdu() == NopOut(itt=2)


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "reason"),
    [(0x21, RejectReason.PROTOCOL_ERROR), (0x1C, RejectReason.COMMAND_NOT_SUPPORTED)],
)
def test_wrong_or_unknown_opcode_is_rejected(opcode: int, reason: RejectReason) -> None:
    raw = bytearray(stream([NopOut(itt=1)]))
    raw[0] = opcode
    reader = PduReader()
    reader.receive_data(bytes(raw) + stream([NopOut(itt=2)]))
    with pytest.raises(PduRejected) as info:
        reader.next_pdu()
    assert info.value.reason == reason
    assert reader.next_pdu() == NopOut(itt=2)


def test_bad_ahs_is_rejected_invalid_field() -> None:
    raw = bytearray(stream([SCSICommand(itt=1, cdb=bytes(range(32)))]))
    raw[48:50] = b"\x00\x40"  # AHSLength beyond TotalAHSLength
    reader = PduReader()
    reader.receive_data(raw)
    with pytest.raises(PduRejected) as info:
        reader.next_pdu()
    assert info.value.reason == RejectReason.INVALID_PDU_FIELD


def test_eof_inside_a_pdu_is_malformed() -> None:
    reader = PduReader()
    reader.receive_data(stream([NopOut(itt=1, data=b"abc")])[:50])
    assert reader.next_pdu() is None
    with pytest.raises(MalformedStream):
        reader.receive_eof()


def test_eof_between_pdus_is_clean() -> None:
    reader = PduReader()
    reader.receive_data(stream([NopOut(itt=1)]))
    drain(reader)
    reader.receive_eof()


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=300), max_size=20),
    digests=st.booleans(),
)
def test_random_bytes_raise_only_protocol_errors_and_never_hang(
    chunks: list[bytes], digests: bool
) -> None:
    reader = PduReader(header_digest=digests, data_digest=digests, hard_cap=1 << 16)
    for chunk in chunks:
        try:
            reader.receive_data(chunk)
        except ConnectionFatal:
            return
        for _ in range(len(chunk) // 48 + 2):  # each PDU consumes >= 48 bytes: bounded
            try:
                if reader.next_pdu() is None:
                    break
            except ConnectionFatal:
                return
            except ProtocolError:
                continue
    with contextlib.suppress(ProtocolError):
        reader.receive_eof()


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(INITIATOR_SAMPLES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1),
)
def test_corrupted_valid_pdus_raise_only_protocol_errors(
    index: int, flips: list[tuple[int, int]]
) -> None:
    raw = bytearray(stream([INITIATOR_SAMPLES[index]]))
    for pos, mask in flips:
        raw[pos % len(raw)] ^= mask
    reader = PduReader(max_recv_data_segment_length=BIG)
    reader.receive_data(raw)
    with contextlib.suppress(ProtocolError):
        while reader.next_pdu() is not None:
            pass
        reader.receive_eof()


def test_errors_carry_their_wire_meaning() -> None:
    failure = LoginFailure(LoginStatus.TARGET_NOT_FOUND, "no such target")
    assert failure.action is ErrorAction.LOGIN_REJECT
    assert (failure.status.status_class, failure.status.status_detail) == (2, 3)
    assert "0x0203" in str(failure)
    with pytest.raises(ValueError):
        LoginFailure(LoginStatus.SUCCESS, "not a failure")
