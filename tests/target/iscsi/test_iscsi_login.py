"""The login state machine: real initiators' flows, every failure status, and every
(state, input) pair of the transition table (as h2's test_state_machines)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.iscsi.chap import ChapConfig, ChapCredentials, decode_binary
from target.iscsi.errors import (
    ConnectionFatal,
    LoginStatus,
    PduRejected,
    ProtocolError,
    RejectReason,
)
from target.iscsi.keys import SessionType, encode_text, parse_text
from target.iscsi.login import (
    TRANSITIONS,
    LoginInput,
    LoginMachine,
    LoginState,
    PortalConfig,
    TargetEntry,
    classify,
    transition,
)
from target.iscsi.pdu import LoginRequest, LoginResponse

IQN = "iqn.2026-11.org.cdpswitch:vol0"
SECURE_IQN = "iqn.2026-11.org.cdpswitch:secure"
INITIATOR = "iqn.2026-11.org.example:host"
SECRET = b"a-long-initiator-secret"
TARGET_SECRET = b"a-long-target-secret!!"
CHAP = ChapConfig(ChapCredentials("alice", SECRET), ChapCredentials("tgt", TARGET_SECRET))
PORTAL = PortalConfig(
    targets={
        IQN: TargetEntry(IQN, alias="vol0"),
        SECURE_IQN: TargetEntry(SECURE_IQN, chap=CHAP),
        "iqn.2026-11.org.cdpswitch:acl": TargetEntry(
            "iqn.2026-11.org.cdpswitch:acl", allowed_initiators=frozenset({"iqn.other:x"})
        ),
    }
)
ISID = bytes.fromhex("80123456789a")

LIBISCSI_OPS = {
    "HeaderDigest": "None,CRC32C", "DataDigest": "None", "InitialR2T": "No",
    "ImmediateData": "Yes", "MaxBurstLength": "262144", "FirstBurstLength": "262144",
    "MaxRecvDataSegmentLength": "262144", "DataPDUInOrder": "Yes", "IFMarker": "No",
    "OFMarker": "No", "MaxConnections": "1", "ErrorRecoveryLevel": "0",
    "DataSequenceInOrder": "Yes",
}  # fmt: skip


def req(csg: int, nsg: int, transit: bool, keys: dict[str, str] | None = None,
        **fields: object) -> LoginRequest:  # fmt: skip
    base: dict[str, object] = {"isid": ISID, "itt": 0x1000, "cmdsn": 5}
    base.update(fields)
    return LoginRequest(transit=transit, csg=csg, nsg=nsg,
                        data=encode_text((keys or {}).items()), **base)  # type: ignore[arg-type]


def names(target: str | None = IQN, **extra: str) -> dict[str, str]:
    keys = {"InitiatorName": INITIATOR}
    if target is not None:
        keys["TargetName"] = target
    return {**keys, **extra}


def ok(resp: LoginResponse) -> dict[str, str]:
    assert (resp.status_class, resp.status_detail) == (0, 0)
    return parse_text(resp.data)


def status(resp: LoginResponse) -> LoginStatus:
    return LoginStatus(resp.status_class << 8 | resp.status_detail)


# --- real initiators' flows (docs/iscsi.md section 3) --------------------------------------


def test_libiscsi_without_credentials_logs_in_with_one_pdu() -> None:
    m = LoginMachine(PORTAL, initial_statsn=100, allocate_tsih=lambda: 0x2A)
    resp = m.receive(req(1, 3, True, names(SessionType="Normal", **LIBISCSI_OPS)))
    answers = ok(resp)
    assert resp.transit and resp.csg == 1 and resp.nsg == 3 and resp.tsih == 0x2A
    assert (resp.statsn, resp.exp_cmdsn, resp.max_cmdsn) == (100, 5, 5 + 127)
    assert resp.itt == 0x1000 and resp.isid == ISID
    assert answers == {
        "TargetPortalGroupTag": "1", "TargetAlias": "vol0", "HeaderDigest": "None",
        "DataDigest": "None", "InitialR2T": "No", "ImmediateData": "Yes",
        "MaxBurstLength": "262144", "FirstBurstLength": "65536", "DataPDUInOrder": "Yes",
        "IFMarker": "No", "OFMarker": "No", "MaxConnections": "1", "ErrorRecoveryLevel": "0",
        "DataSequenceInOrder": "Yes", "MaxRecvDataSegmentLength": "262144",
    }  # fmt: skip
    assert m.state is LoginState.FULL_FEATURE
    result = m.result
    assert result is not None
    assert (result.session_type, result.initiator_name, result.target_name) == (
        SessionType.NORMAL, INITIATOR, IQN)  # fmt: skip
    assert (result.tsih, result.isid, result.next_statsn, result.exp_cmdsn) == (
        0x2A, ISID, 101, 5)  # fmt: skip
    params = result.parameters
    assert params.initiator_max_recv_dsl == 262144 and params.target_max_recv_dsl == 262144
    assert (params.first_burst_length, params.initial_r2t) == (65536, False)


def test_open_iscsi_goes_through_both_stages() -> None:
    m = LoginMachine(PORTAL, initial_statsn=7)
    first = m.receive(req(0, 1, True, names(AuthMethod="None")))
    assert ok(first)["AuthMethod"] == "None"
    assert first.transit and (first.csg, first.nsg) == (0, 1) and first.tsih == 0
    assert m.state is LoginState.OPERATIONAL
    second = m.receive(req(1, 3, True, {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}))
    assert ok(second)["HeaderDigest"] == "CRC32C"
    assert second.statsn == 8 and second.tsih != 0
    assert m.result is not None and m.result.parameters.header_digest


def test_open_iscsi_discovery_jumps_from_stage_0_to_ffp() -> None:
    m = LoginMachine(PORTAL)
    resp = m.receive(req(0, 3, True, names(None, SessionType="Discovery", AuthMethod="None")))
    assert ok(resp) == {"AuthMethod": "None"}
    assert resp.transit and resp.nsg == 3
    assert m.result is not None and m.result.session_type is SessionType.DISCOVERY
    assert m.result.target_name is None
    assert m.result.parameters.target_max_recv_dsl == 8192  # never declared


def chap_login(m: LoginMachine, *, mutual: bool, secret: bytes = SECRET) -> LoginResponse:
    step1 = m.receive(req(0, 1, True, names(SECURE_IQN, AuthMethod="CHAP,None")))
    assert ok(step1)["AuthMethod"] == "CHAP" and not step1.transit
    step2 = ok(m.receive(req(0, 1, False, {"CHAP_A": "5"})))
    ident, chal = int(step2["CHAP_I"]), decode_binary(step2["CHAP_C"])
    keys = {"CHAP_N": "alice",
            "CHAP_R": "0x" + hashlib.md5(bytes([ident]) + secret + chal).hexdigest()}  # fmt: skip
    if mutual:
        keys |= {"CHAP_I": "9", "CHAP_C": "0x" + "11" * 16}
    return m.receive(req(0, 1, True, keys))


@pytest.mark.parametrize("mutual", [False, True])
def test_libiscsi_chap_flow(mutual: bool) -> None:
    m = LoginMachine(PORTAL)
    step3 = chap_login(m, mutual=mutual)
    answers = ok(step3)
    assert step3.transit and (step3.csg, step3.nsg) == (0, 1)
    if mutual:
        want = hashlib.md5(b"\x09" + TARGET_SECRET + b"\x11" * 16).hexdigest()
        assert answers == {"CHAP_N": "tgt", "CHAP_R": "0x" + want}
    else:
        assert answers == {}
    ok(m.receive(req(1, 3, True, LIBISCSI_OPS)))
    assert m.state is LoginState.FULL_FEATURE


def test_wrong_chap_secret_fails_0201_and_closes() -> None:
    m = LoginMachine(PORTAL)
    resp = chap_login(m, mutual=False, secret=b"guessed-wrong-secret")
    assert status(resp) is LoginStatus.AUTHENTICATION_FAILURE
    assert not resp.transit and resp.tsih == 0 and resp.data == b""
    assert m.state is LoginState.FAILED
    with pytest.raises(ConnectionFatal):
        m.receive(req(0, 1, True, {}))


# --- failure statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (req(1, 3, True, names("iqn.2026-11.org.cdpswitch:nope")), LoginStatus.TARGET_NOT_FOUND),
        (req(1, 3, True, {"TargetName": IQN}), LoginStatus.MISSING_PARAMETER),
        (req(1, 3, True, names(None)), LoginStatus.MISSING_PARAMETER),
        (req(1, 3, True, names(), version_min=1), LoginStatus.UNSUPPORTED_VERSION),
        (req(1, 3, True, names("iqn.2026-11.org.cdpswitch:acl")),
         LoginStatus.AUTHORIZATION_FAILURE),
        (req(1, 3, True, names(), tsih=5), LoginStatus.SESSION_DOES_NOT_EXIST),
        (req(1, 3, True, names(SessionType="Bogus")), LoginStatus.INITIATOR_ERROR),
        (req(1, 3, True, names(SECURE_IQN)), LoginStatus.AUTHENTICATION_FAILURE),
        (req(0, 1, True, names(SECURE_IQN, AuthMethod="None")),
         LoginStatus.AUTHENTICATION_FAILURE),
        (req(0, 1, True, names(SECURE_IQN)), LoginStatus.AUTHENTICATION_FAILURE),
        (req(1, 3, True, names(AuthMethod="None")), LoginStatus.INITIATOR_ERROR),
        (req(0, 1, True, names(CHAP_A="5")), LoginStatus.INITIATOR_ERROR),
        (req(0, 1, True, names(HeaderDigest="None")), LoginStatus.INITIATOR_ERROR),
        (req(2, 3, True, names()), LoginStatus.INITIATOR_ERROR),
        (req(1, 1, True, names()), LoginStatus.INITIATOR_ERROR),
        (req(0, 1, True, names(), cont=True), LoginStatus.INITIATOR_ERROR),
        (LoginRequest(transit=True, csg=1, nsg=3, data=b"InitiatorName"),
         LoginStatus.INITIATOR_ERROR),
    ],
)  # fmt: skip
def test_login_failures(request_: LoginRequest, expected: LoginStatus) -> None:
    m = LoginMachine(PORTAL)
    resp = m.receive(request_)
    assert status(resp) is expected
    assert not resp.transit and resp.tsih == 0
    assert m.state is LoginState.FAILED and m.failure is not None


def test_discovery_can_be_disabled() -> None:
    portal = PortalConfig(targets={}, discovery_enabled=False)
    resp = LoginMachine(portal).receive(req(1, 3, True, names(None, SessionType="Discovery")))
    assert status(resp) is LoginStatus.SESSION_TYPE_NOT_SUPPORTED


def test_target_names_are_case_insensitive() -> None:
    ok(LoginMachine(PORTAL).receive(req(1, 3, True, names(IQN.upper()))))


def test_isid_may_not_change_during_login() -> None:
    m = LoginMachine(PORTAL)
    ok(m.receive(req(0, 1, True, names(AuthMethod="None"))))
    resp = m.receive(req(1, 3, True, {}, isid=bytes(6)))
    assert status(resp) is LoginStatus.INITIATOR_ERROR


def test_continued_text_is_processed_when_complete() -> None:
    m = LoginMachine(PORTAL, initial_statsn=1)
    text = encode_text(names(**LIBISCSI_OPS).items())
    first = m.receive(LoginRequest(cont=True, csg=1, nsg=3, isid=ISID, data=text[:50]))
    assert ok(first) == {} and not first.transit
    last = m.receive(LoginRequest(transit=True, csg=1, nsg=3, isid=ISID, data=text[50:]))
    assert ok(last)["MaxBurstLength"] == "262144" and last.transit and last.statsn == 2


def test_login_request_in_full_feature_phase_is_rejected() -> None:
    m = LoginMachine(PORTAL)
    ok(m.receive(req(1, 3, True, names())))
    with pytest.raises(PduRejected) as info:
        m.receive(req(1, 3, True, names()))
    assert info.value.reason is RejectReason.PROTOCOL_ERROR


# --- the transition table, pair by pair ------------------------------------------------------


@given(st.sampled_from(LoginState), st.sampled_from(LoginInput))
def test_transition_table_is_total(state: LoginState, event: LoginInput) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) in LoginState
    else:
        with pytest.raises(ProtocolError) as info:
            transition(state, event)
        assert getattr(info.value, "status", None) is LoginStatus.INITIATOR_ERROR


def machine_in(state: LoginState) -> LoginMachine:
    m = LoginMachine(PORTAL)
    if state is LoginState.SECURITY:
        ok(m.receive(req(0, 1, False, names())))
    elif state is LoginState.OPERATIONAL:
        ok(m.receive(req(1, 3, False, names())))
    elif state is LoginState.FULL_FEATURE:
        ok(m.receive(req(1, 3, True, names())))
    elif state is LoginState.FAILED:
        m.receive(req(3, 3, True, names()))
    assert m.state is state
    return m


@given(
    state=st.sampled_from(LoginState),
    csg=st.integers(0, 3),
    nsg=st.integers(0, 3),
    transit=st.booleans(),
    cont=st.booleans(),
)
def test_every_state_and_request_pair(
    state: LoginState, csg: int, nsg: int, transit: bool, cont: bool
) -> None:
    m = machine_in(state)
    keys = names() if state is LoginState.START else {}
    request = req(csg, nsg, transit, keys, cont=cont)
    event = classify(request)
    if state in (LoginState.FULL_FEATURE, LoginState.FAILED):
        with pytest.raises(ProtocolError):
            m.receive(request)
        return
    resp = m.receive(request)
    if (state, event) in TRANSITIONS:
        assert status(resp) is LoginStatus.SUCCESS
        wanted = TRANSITIONS[(state, event)]
        expected = wanted if transit else {0: LoginState.SECURITY, 1: LoginState.OPERATIONAL}[csg]
        assert m.state is expected
        assert resp.transit == transit and resp.csg == csg
    else:
        assert status(resp) is LoginStatus.INITIATOR_ERROR
        assert m.state is LoginState.FAILED


def test_classify_covers_the_table() -> None:
    assert classify(LoginRequest(transit=True, cont=True, csg=0, nsg=1)) is LoginInput.INVALID
    assert classify(LoginRequest(transit=True, csg=1, nsg=0)) is LoginInput.INVALID
    assert classify(LoginRequest(transit=False, csg=1, nsg=0)) is LoginInput.OPERATIONAL_STAY
    assert classify(LoginRequest(transit=True, csg=0, nsg=2)) is LoginInput.INVALID


@pytest.mark.parametrize("secret", [SECRET, b"guessed-wrong-secret"])
def test_secrets_do_not_show_in_reprs_or_messages(secret: bytes) -> None:
    m = LoginMachine(PORTAL)
    last = chap_login(m, mutual=True, secret=secret)
    texts = [repr(m), repr(m.result), repr(m.failure), str(m.failure), bytes(last.data).decode()]
    texts += [repr(x) for x in vars(m).values()]
    for text in texts:
        assert SECRET.decode() not in text and TARGET_SECRET.decode() not in text
        assert SECRET.hex() not in text and TARGET_SECRET.hex() not in text


def test_secrets_do_not_show_in_configuration_reprs() -> None:
    for obj in (PORTAL, PORTAL.targets[SECURE_IQN], CHAP):
        for text in (repr(obj), str(obj)):
            assert SECRET.decode() not in text and TARGET_SECRET.decode() not in text


def test_login_text_has_a_total_limit() -> None:
    m = LoginMachine(PORTAL)
    chunk = b"X-pad=" + b"p" * 8000 + b"\0"
    resp = None
    for _ in range(9):
        resp = m.receive(LoginRequest(cont=True, csg=1, nsg=3, isid=ISID, data=chunk))
        if m.state is LoginState.FAILED:
            break
    assert resp is not None and status(resp) is LoginStatus.INITIATOR_ERROR


def test_auth_method_without_a_common_choice_is_rejected_when_auth_is_optional() -> None:
    m = LoginMachine(PORTAL)
    assert ok(m.receive(req(0, 1, False, names(AuthMethod="CHAP"))))["AuthMethod"] == "Reject"


def test_an_oversized_response_is_a_target_error() -> None:
    portal = PortalConfig(targets={IQN: TargetEntry(IQN, alias="a" * 9000)})
    resp = LoginMachine(portal).receive(req(1, 3, True, names()))
    assert status(resp) is LoginStatus.TARGET_ERROR
