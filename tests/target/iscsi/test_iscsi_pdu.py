"""PDU encoding: hand-built bytes per RFC 7143 field positions, round trips, digests."""

from __future__ import annotations

import struct

import pytest
from iscsi_samples import INITIATOR_SAMPLES, READ10, TARGET_SAMPLES

from target.iscsi.errors import LocalProtocolError, PduRejected, RejectReason
from target.iscsi.framing import PduReader, Sender
from target.iscsi.pdu import (
    INITIATOR_PDUS,
    R2T,
    TARGET_PDUS,
    DataIn,
    LoginResponse,
    NopIn,
    Opcode,
    Pdu,
    SCSICommand,
    SCSIResponse,
    TextResponse,
    crc32c,
    digest_bytes,
    encode,
    parse_ahs,
)


def wire(pdu: Pdu, **digests: bool) -> bytes:
    return b"".join(bytes(b) for b in encode(pdu, **digests))


def decode_one(raw: bytes, sender: Sender, **digests: bool) -> Pdu:
    reader = PduReader(sender=sender, max_recv_data_segment_length=1 << 20, **digests)
    reader.receive_data(raw)
    pdu = reader.next_pdu()
    assert pdu is not None
    assert reader.next_pdu() is None
    return pdu


# --- round trips: every PDU type, with and without digests --------------------------------

CASES = [(p, Sender.INITIATOR) for p in INITIATOR_SAMPLES] + [
    (p, Sender.TARGET) for p in TARGET_SAMPLES
]


@pytest.mark.parametrize("digests", [{}, {"header_digest": True, "data_digest": True}])
@pytest.mark.parametrize(("pdu", "sender"), CASES, ids=lambda x: type(x).__name__)
def test_every_pdu_round_trips(pdu: Pdu, sender: Sender, digests: dict[str, bool]) -> None:
    raw = wire(pdu, **digests)
    assert len(raw) % 4 == 0
    assert decode_one(raw, sender, **digests) == pdu


def test_samples_cover_every_opcode() -> None:
    covered = {type(p).OPCODE for p in INITIATOR_SAMPLES + TARGET_SAMPLES}
    assert covered == set(Opcode)
    assert set(INITIATOR_PDUS) | set(TARGET_PDUS) == set(Opcode)
    assert all(op < 0x20 for op in INITIATOR_PDUS)
    assert all(op >= 0x20 for op in TARGET_PDUS)


def test_every_layout_is_48_bytes() -> None:
    for cls in [*INITIATOR_PDUS.values(), *TARGET_PDUS.values()]:
        assert cls.LAYOUT.size == 48, cls


# --- bytes checked against RFC 7143 field positions -------------------------------------------


def test_scsi_command_bytes() -> None:  # RFC 7143 section 11.3
    pdu = SCSICommand(immediate=True, read=True, attr=1, lun=0x0001_0000_0000_0000,
                      itt=0x0A0B0C0D, edtl=4096, cmdsn=0x11, exp_statsn=0x22,
                      cdb=READ10)  # fmt: skip
    expected = bytearray(48)
    expected[0] = 0x41  # I bit + opcode 0x01
    expected[1] = 0x80 | 0x40 | 0x01  # F, R, ATTR simple
    expected[8:16] = bytes.fromhex("0001000000000000")
    expected[16:20] = bytes.fromhex("0a0b0c0d")
    expected[20:24] = (4096).to_bytes(4, "big")
    expected[24:28] = (0x11).to_bytes(4, "big")
    expected[28:32] = (0x22).to_bytes(4, "big")
    expected[32:42] = READ10
    assert encode(pdu) == [bytes(expected)]


def test_login_response_bytes() -> None:  # RFC 7143 section 11.13
    pdu = LoginResponse(transit=True, csg=1, nsg=3, isid=bytes.fromhex("800000010203"),
                        tsih=0x0102, itt=0x55, statsn=7, exp_cmdsn=8, max_cmdsn=9,
                        status_class=2, status_detail=7, data=b"abcde")  # fmt: skip
    out = encode(pdu)
    header = out[0]
    assert header[0] == 0x23
    assert header[1] == 0x80 | (1 << 2) | 3
    assert header[2:4] == b"\x00\x00"  # Version-max, Version-active
    assert header[4] == 0 and header[5:8] == b"\x00\x00\x05"
    assert header[8:14] == bytes.fromhex("800000010203")
    assert header[14:16] == b"\x01\x02"
    assert header[16:20] == b"\x00\x00\x00\x55"
    assert struct.unpack(">III", header[24:36]) == (7, 8, 9)
    assert header[36:38] == b"\x02\x07"
    assert out[1:] == [b"abcde", b"\0\0\0"]


def test_r2t_and_data_in_bytes() -> None:  # RFC 7143 sections 11.8 and 11.7.2
    r2t = encode(R2T(itt=1, ttt=2, statsn=3, exp_cmdsn=4, max_cmdsn=5, r2tsn=6,
                     buffer_offset=7, desired_length=8))[0]  # fmt: skip
    assert r2t[0] == 0x31 and r2t[1] == 0x80
    assert struct.unpack(">IIIIIIIII", r2t[12:48])[1:] == (1, 2, 3, 4, 5, 6, 7, 8)
    data_in = encode(DataIn(final=True, has_status=True, underflow=True, status=0x02,
                            itt=9, datasn=1, residual=10, data=b"1234"))  # fmt: skip
    assert data_in[0][1] == 0x80 | 0x02 | 0x01 and data_in[0][3] == 0x02
    assert data_in[0][36:40] == (1).to_bytes(4, "big")
    assert data_in[0][44:48] == (10).to_bytes(4, "big")


def test_target_pdus_without_task_carry_the_reserved_itt() -> None:
    for raw in (wire(TARGET_SAMPLES[-2]), wire(TARGET_SAMPLES[-1])):  # Async, Reject
        assert raw[16:20] == b"\xff\xff\xff\xff"


# --- the payload is never copied ----------------------------------------------------------


def test_encode_returns_the_payload_object_untouched() -> None:
    payload = memoryview(bytearray(b"y" * 4099))
    out = encode(DataIn(itt=1, data=payload), header_digest=True, data_digest=True)
    assert out[1] is payload
    assert len(out) == 3 and len(out[0]) == 52
    assert out[2][:1] == b"\0"  # one padding byte, then the digest over data + padding
    assert out[2][1:] == digest_bytes(crc32c(bytes(payload) + b"\0"))


def test_no_padding_or_digest_for_an_empty_segment() -> None:
    assert len(encode(NopIn(itt=1), header_digest=True, data_digest=True)) == 1


# --- CRC32C vectors (docs/iscsi.md section 1, identical to RFC 3720 appendix B.4) -----------


@pytest.mark.parametrize(
    ("data", "wire_bytes"),
    [
        (bytes(32), "aa36918a"),
        (b"\xff" * 32, "43aba862"),
        (bytes(range(32)), "4e79dd46"),
        (bytes(range(31, -1, -1)), "5cdb3f11"),
    ],
)
def test_crc32c_vectors_least_significant_byte_first(data: bytes, wire_bytes: str) -> None:
    assert digest_bytes(crc32c(data)).hex() == wire_bytes


def test_crc32c_check_value_and_continuation() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


def test_header_digest_covers_bhs_and_ahs() -> None:
    pdu = SCSICommand(itt=1, cdb=bytes(range(20)))
    header = encode(pdu, header_digest=True)[0]
    assert len(header) == 48 + 8 + 4
    assert header[-4:] == digest_bytes(crc32c(header[:-4]))


# --- AHS -------------------------------------------------------------------------------------


def test_extended_cdb_ahs_layout() -> None:  # RFC 7143 section 11.3.5
    cdb = bytes(range(32))
    header = SCSICommand(itt=1, cdb=cdb).header()
    assert header[4] == 5  # 20 AHS bytes = 5 words: 3 + AHSLength 17 = 20
    assert header[48:51] == b"\x00\x11\x01"  # AHSLength 17 = 32 - 15, type 1
    assert header[51] == 0 and header[52:68] == cdb[16:]
    assert header[32:48] == cdb[:16]


def test_bad_ahs_length_is_reject_invalid_field() -> None:
    with pytest.raises(PduRejected) as info:
        parse_ahs(memoryview(b"\x00\x09\x01\x00\x00\x00\x00\x00"), bytes(48))
    assert info.value.reason == RejectReason.INVALID_PDU_FIELD
    with pytest.raises(PduRejected):
        parse_ahs(memoryview(b"\x00\x00\x01\x00"), bytes(48))


def test_short_cdb_is_padded_to_16() -> None:
    assert SCSICommand(cdb=b"\x00" * 6).cdb == bytes(16)


# --- invalid PDUs cannot be built ------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: R2T(ttt=1, desired_length=0),
        lambda: R2T(ttt=0xFFFFFFFF),
        lambda: SCSIResponse(response=1, underflow=True),
        lambda: SCSIResponse(overflow=True, underflow=True),
        lambda: LoginResponse(transit=True, cont=True),
        lambda: TextResponse(final=True, cont=True),
        lambda: DataIn(has_status=True, final=False),
        lambda: SCSICommand(attr=9),
        lambda: NopIn(itt=1 << 32).header(),
        lambda: DataIn(data=memoryview(bytearray(1 << 24))).header(),
    ],
)
def test_invalid_pdus_raise_local_protocol_error(build: object) -> None:
    with pytest.raises(LocalProtocolError):
        build()  # type: ignore[operator]


def test_sense_segment_round_trip() -> None:
    sense = b"\x70\x00\x05" + bytes(15)
    assert SCSIResponse(status=2, data=SCSIResponse.sense_segment(sense)).sense == sense
    assert SCSIResponse().sense == b""


def test_truncated_ahs_region_is_rejected() -> None:
    with pytest.raises(PduRejected):
        parse_ahs(memoryview(b"\x00\x01"), bytes(48))


def test_target_pdu_with_refused_fields_decodes_to_a_reject() -> None:
    raw = bytearray(wire(DataIn(itt=1, data=b"abcd")))
    raw[1] = 0x01  # S without F
    with pytest.raises(PduRejected) as info:
        decode_one(bytes(raw), Sender.TARGET)
    assert info.value.reason == RejectReason.INVALID_PDU_FIELD
