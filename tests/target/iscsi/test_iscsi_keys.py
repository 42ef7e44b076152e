"""Text key parsing and the table of negotiation rules (RFC 7143 sections 6 and 13)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.iscsi.errors import LoginFailure, LoginStatus
from target.iscsi.keys import (
    IRRELEVANT,
    KEY_RULES,
    MAX_KEYS,
    MAX_TEXT,
    NOT_UNDERSTOOD,
    REJECT,
    Negotiator,
    OperationalParameters,
    RuleKind,
    SessionType,
    TargetOffer,
    TextFormatError,
    encode_text,
    parse_number,
    parse_text,
)
from target.iscsi.pdu import Stage


def test_parse_text_keeps_order() -> None:
    raw = b"InitiatorName=iqn.a\0TargetName=iqn.b\0SessionType=Normal\0"
    assert list(parse_text(raw).items()) == [
        ("InitiatorName", "iqn.a"),
        ("TargetName", "iqn.b"),
        ("SessionType", "Normal"),
    ]
    assert parse_text(b"") == {}
    assert parse_text(memoryview(b"A=\0")) == {"A": ""}
    assert parse_text(b"A=1\0\0B=2\0") == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    "raw",
    [
        b"A=1",  # no NUL terminator
        b"A=\xff\xfe\0",  # not UTF-8
        b"NoEquals\0",
        b"=value\0",
        b"K" * 64 + b"=1\0",
        b"Key With Space=1\0",
        b"A=" + b"v" * 256 + b"\0",
        b"A=1\0A=2\0",
        b"".join(b"K%d=1\0" % i for i in range(MAX_KEYS + 1)),
        b"CHAP_C=0x" + b"a" * (MAX_TEXT) + b"\0",
    ],
)
def test_malformed_text_is_an_initiator_error(raw: bytes) -> None:
    with pytest.raises(TextFormatError) as info:
        parse_text(raw)
    assert info.value.status is LoginStatus.INITIATOR_ERROR


def test_binary_chap_values_may_be_long() -> None:
    value = "0x" + "ab" * 1024
    assert parse_text(f"CHAP_C={value}\0".encode()) == {"CHAP_C": value}


_KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9.\-+@_]{0,40}", fullmatch=True)
_VALUE = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=60
)


@given(st.dictionaries(_KEY, _VALUE, max_size=20))
def test_encode_parse_round_trip(pairs: dict[str, str]) -> None:
    assert parse_text(encode_text(pairs.items())) == pairs


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512", 512), ("0x200", 512), ("0X200", 512), ("511", None), ("x", None), ("", None),
     ("١٢٣", None), ("16777216", None)],
)  # fmt: skip
def test_parse_number(text: str, expected: int | None) -> None:
    assert parse_number(text, 512, (1 << 24) - 1) == expected


# --- the negotiation table --------------------------------------------------------------------

NEGOTIATION_CASES = [
    ("HeaderDigest", "CRC32C,None", "CRC32C"),
    ("HeaderDigest", "None,CRC32C", "None"),
    ("DataDigest", "MD5", REJECT),
    ("MaxBurstLength", "262144", "262144"),
    ("MaxBurstLength", "16776192", "1048576"),
    ("MaxBurstLength", "0x40000", "262144"),
    ("MaxBurstLength", "100", REJECT),
    ("MaxBurstLength", "lots", REJECT),
    ("FirstBurstLength", "262144", "65536"),
    ("FirstBurstLength", "4096", "4096"),
    ("InitialR2T", "No", "No"),
    ("InitialR2T", "Yes", "Yes"),
    ("InitialR2T", "Maybe", REJECT),
    ("ImmediateData", "Yes", "Yes"),
    ("ImmediateData", "No", "No"),
    ("MaxOutstandingR2T", "8", "1"),
    ("MaxOutstandingR2T", "0", REJECT),
    ("DataPDUInOrder", "No", "Yes"),
    ("DataSequenceInOrder", "Yes", "Yes"),
    ("ErrorRecoveryLevel", "2", "0"),
    ("ErrorRecoveryLevel", "3", REJECT),
    ("DefaultTime2Wait", "0", "2"),
    ("DefaultTime2Wait", "5", "5"),
    ("DefaultTime2Retain", "20", "0"),
    ("MaxConnections", "4", "1"),
    ("IFMarker", "Yes", "No"),
    ("OFMarker", "No", "No"),
    ("OFMarkInt", "1-65535", REJECT),
    ("TaskReporting", "ResponseFence,RFC3720", "RFC3720"),
    ("TaskReporting", "FastAbort", REJECT),
    ("iSCSIProtocolLevel", "2", "0"),
    ("X-com.example.Thing", "1", NOT_UNDERSTOOD),
    ("Frobnicate", "1", NOT_UNDERSTOOD),
    ("TargetAlias", "me", REJECT),
    ("TargetPortalGroupTag", "1", REJECT),
    ("MaxRecvDataSegmentLength", "10", REJECT),
    ("MaxRecvDataSegmentLength", "262144", None),
    ("InitiatorName", "iqn.x", None),
]


@pytest.mark.parametrize(("key", "offer", "answer"), NEGOTIATION_CASES)
def test_negotiation_answers(key: str, offer: str, answer: str | None) -> None:
    answers = Negotiator().respond({key: offer}, Stage.OPERATIONAL)
    assert answers == ([] if answer is None else [(key, answer)])


def test_every_rule_has_a_target_value() -> None:
    offer = TargetOffer()
    for key, rule in KEY_RULES.items():
        assert rule.stages, key
        if rule.kind in (RuleKind.MIN, RuleKind.MAX):
            assert rule.low <= offer.numbers[key] <= rule.high, key
        elif rule.kind in (RuleKind.OR, RuleKind.AND):
            assert key in offer.booleans
        elif rule.kind is RuleKind.LIST:
            assert offer.lists[key]


def test_negotiated_parameters() -> None:
    n = Negotiator()
    n.respond(
        {"HeaderDigest": "CRC32C", "DataDigest": "None", "MaxRecvDataSegmentLength": "65536",
         "MaxBurstLength": "4096", "FirstBurstLength": "262144", "InitialR2T": "No",
         "ImmediateData": "Yes"},
        Stage.OPERATIONAL,
    )  # fmt: skip
    params = n.parameters(target_max_recv_dsl=262144)
    assert params == OperationalParameters(
        header_digest=True, data_digest=False, initiator_max_recv_dsl=65536,
        target_max_recv_dsl=262144, max_burst_length=4096, first_burst_length=4096,
        initial_r2t=False, immediate_data=True,
    )  # fmt: skip


def test_first_burst_is_clamped_even_when_offered_first() -> None:
    n = Negotiator()
    n.respond({"FirstBurstLength": "65536", "MaxBurstLength": "8192"}, Stage.OPERATIONAL)
    assert n.parameters().first_burst_length == 8192


def test_defaults_when_nothing_is_negotiated() -> None:
    assert Negotiator().parameters() == OperationalParameters()


def test_a_key_offered_twice_fails_the_login() -> None:
    n = Negotiator()
    n.respond({"MaxBurstLength": "512"}, Stage.OPERATIONAL)
    with pytest.raises(LoginFailure) as info:
        n.respond({"MaxBurstLength": "512"}, Stage.OPERATIONAL)
    assert info.value.status is LoginStatus.INITIATOR_ERROR


@pytest.mark.parametrize(("key", "stage"), [("HeaderDigest", Stage.SECURITY),
                                            ("InitialR2T", Stage.FULL_FEATURE)])  # fmt: skip
def test_a_key_in_the_wrong_stage_fails_the_login(key: str, stage: Stage) -> None:
    with pytest.raises(LoginFailure) as info:
        Negotiator().respond({key: "None"}, stage)
    assert info.value.status is LoginStatus.INITIATOR_ERROR


def test_discovery_sessions_answer_irrelevant() -> None:
    n = Negotiator()
    answers = n.respond({"SessionType": "Discovery", "InitialR2T": "No",
                         "MaxBurstLength": "4096", "HeaderDigest": "None",
                         "MaxRecvDataSegmentLength": "32768"}, Stage.OPERATIONAL)  # fmt: skip
    assert n.session_type is SessionType.DISCOVERY
    assert answers == [("InitialR2T", IRRELEVANT), ("MaxBurstLength", IRRELEVANT),
                       ("HeaderDigest", "None")]  # fmt: skip
    assert n.parameters().initiator_max_recv_dsl == 32768


def test_security_keys_are_left_to_the_login_machine() -> None:
    assert Negotiator().respond({"AuthMethod": "None", "CHAP_A": "5"}, Stage.SECURITY) == []


def test_bad_session_type_is_rejected() -> None:
    assert Negotiator().respond({"SessionType": "Weird"}, Stage.SECURITY) == [
        ("SessionType", REJECT)
    ]
