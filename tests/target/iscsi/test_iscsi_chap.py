"""CHAP (RFC 7143 section 12.1.3, RFC 1994): one-way and mutual, failures, secret hygiene."""

from __future__ import annotations

import base64
import hashlib

import pytest

from target.iscsi.chap import (
    ChapAuthenticator,
    ChapConfig,
    ChapCredentials,
    ChapFailure,
    ChapState,
    chap_response,
    decode_binary,
    encode_binary,
)
from target.iscsi.errors import LoginFailure, LoginStatus

INITIATOR_SECRET = b"initiator-secret-1234"
TARGET_SECRET = b"target-secret-567890"
ONE_WAY = ChapConfig(ChapCredentials("alice", INITIATOR_SECRET))
MUTUAL = ChapConfig(ChapCredentials("alice", INITIATOR_SECRET),
                    ChapCredentials("tgt", TARGET_SECRET))  # fmt: skip


def challenge_of(auth: ChapAuthenticator) -> tuple[int, bytes]:
    answers = dict(auth.step({"CHAP_A": "7,6,5"}))
    assert answers["CHAP_A"] == "5"
    return int(answers["CHAP_I"]), decode_binary(answers["CHAP_C"])


def answer(identifier: int, challenge: bytes, secret: bytes = INITIATOR_SECRET) -> str:
    return "0x" + hashlib.md5(bytes([identifier]) + secret + challenge).hexdigest()


def test_md5_response_matches_rfc_1994() -> None:
    assert chap_response(1, b"s", b"c") == hashlib.md5(b"\x01sc").digest()


def test_one_way_success() -> None:
    auth = ChapAuthenticator(ONE_WAY)
    ident, chal = challenge_of(auth)
    assert len(chal) >= 16
    assert auth.step({"CHAP_N": "alice", "CHAP_R": answer(ident, chal)}) == []
    assert auth.done


def test_challenges_are_fresh() -> None:
    assert challenge_of(ChapAuthenticator(ONE_WAY))[1] != challenge_of(
        ChapAuthenticator(ONE_WAY)
    )[1]


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"CHAP_N": "alice", "CHAP_R": "WRONG"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_N": "mallory", "CHAP_R": "GOOD"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_N": "alice", "CHAP_R": "0xZZ"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_N": "alice", "CHAP_R": "12345"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_N": "alice"}, LoginStatus.MISSING_PARAMETER),
        ({"CHAP_R": "GOOD"}, LoginStatus.MISSING_PARAMETER),
    ],
)
def test_one_way_failures(keys: dict[str, str], status: LoginStatus) -> None:
    auth = ChapAuthenticator(ONE_WAY)
    ident, chal = challenge_of(auth)
    good = answer(ident, chal)
    wrong = answer(ident, chal, b"not-the-secret-at-all")
    keys = {k: {"GOOD": good, "WRONG": wrong}.get(v, v) for k, v in keys.items()}
    with pytest.raises(ChapFailure) as info:
        auth.step(keys)
    assert info.value.status is status
    assert auth.state is ChapState.FAILED
    with pytest.raises(LoginFailure):  # nothing more is accepted
        auth.step({"CHAP_N": "alice", "CHAP_R": good})


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"CHAP_A": "6,7"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_A": "x"}, LoginStatus.AUTHENTICATION_FAILURE),
        ({"CHAP_N": "alice"}, LoginStatus.MISSING_PARAMETER),
        ({"CHAP_A": "5", "CHAP_N": "alice"}, LoginStatus.INITIATOR_ERROR),
    ],
)
def test_algorithm_step_failures(keys: dict[str, str], status: LoginStatus) -> None:
    with pytest.raises(ChapFailure) as info:
        ChapAuthenticator(ONE_WAY).step(keys)
    assert info.value.status is status


def test_mutual_success() -> None:
    auth = ChapAuthenticator(MUTUAL)
    ident, chal = challenge_of(auth)
    my_chal = bytes(range(16))
    reply = dict(auth.step({"CHAP_N": "alice", "CHAP_R": answer(ident, chal),
                            "CHAP_I": "77", "CHAP_C": encode_binary(my_chal)}))  # fmt: skip
    assert reply["CHAP_N"] == "tgt"
    assert reply["CHAP_R"] == answer(77, my_chal, TARGET_SECRET)
    assert len(reply["CHAP_R"]) == 34  # libiscsi wants exactly 32 hex digits
    assert auth.done


@pytest.mark.parametrize(
    ("config", "extra", "status"),
    [
        (MUTUAL, {"CHAP_I": "1", "CHAP_C": "REFLECT"}, LoginStatus.AUTHENTICATION_FAILURE),
        (ONE_WAY, {"CHAP_I": "1", "CHAP_C": "0x0102"}, LoginStatus.AUTHENTICATION_FAILURE),
        (MUTUAL, {"CHAP_I": "1"}, LoginStatus.MISSING_PARAMETER),
        (MUTUAL, {"CHAP_C": "0x0102"}, LoginStatus.MISSING_PARAMETER),
        (MUTUAL, {"CHAP_I": "256", "CHAP_C": "0x0102"}, LoginStatus.AUTHENTICATION_FAILURE),
        (MUTUAL, {"CHAP_I": "1", "CHAP_C": "0x"}, LoginStatus.AUTHENTICATION_FAILURE),
    ],
)
def test_mutual_failures(config: ChapConfig, extra: dict[str, str], status: LoginStatus) -> None:
    auth = ChapAuthenticator(config)
    ident, chal = challenge_of(auth)
    extra = {k: encode_binary(chal) if v == "REFLECT" else v for k, v in extra.items()}
    with pytest.raises(ChapFailure) as info:
        auth.step({"CHAP_N": "alice", "CHAP_R": answer(ident, chal), **extra})
    assert info.value.status is status


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: "0x" + b.hex(),
        lambda b: "0X" + b.hex().upper(),
        lambda b: "0b" + base64.b64encode(b).decode(),
        lambda b: "0B" + base64.b64encode(b).decode(),
    ],
)
def test_response_encodings(encode: object) -> None:
    auth = ChapAuthenticator(ONE_WAY)
    ident, chal = challenge_of(auth)
    digest = hashlib.md5(bytes([ident]) + INITIATOR_SECRET + chal).digest()
    auth.step({"CHAP_N": "alice", "CHAP_R": encode(digest)})  # type: ignore[operator]
    assert auth.done


def test_decode_binary() -> None:
    assert decode_binary("0xabc") == b"\x0a\xbc"
    for bad in ("0b!!!", "abc", "0xgg", ""):
        with pytest.raises(ChapFailure):
            decode_binary(bad)


def test_configuration_checks() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        ChapCredentials("u", b"short")
    with pytest.raises(ValueError):
        ChapCredentials("", INITIATOR_SECRET)
    with pytest.raises(ValueError, match="different"):
        ChapConfig(ChapCredentials("a", INITIATOR_SECRET), ChapCredentials("b", INITIATOR_SECRET))
    with pytest.raises(ValueError):
        ChapAuthenticator(ONE_WAY, challenge_length=8)


def test_secrets_never_show_in_repr_str_or_errors() -> None:
    objects: list[object] = [
        MUTUAL, MUTUAL.initiator, MUTUAL.target, ChapAuthenticator(MUTUAL),
    ]  # fmt: skip
    messages: list[str] = []
    for build in (
        lambda: ChapCredentials("u", b"x" * 5),
        lambda: ChapConfig(
            ChapCredentials("a", TARGET_SECRET), ChapCredentials("b", TARGET_SECRET)
        ),
    ):
        with pytest.raises(ValueError) as info:
            build()
        messages.append(str(info.value))
    auth = ChapAuthenticator(MUTUAL)
    ident, chal = challenge_of(auth)
    with pytest.raises(ChapFailure) as failure:
        auth.step({"CHAP_N": "alice", "CHAP_R": answer(ident, chal, TARGET_SECRET)})
    messages.append(str(failure.value))
    texts = [repr(o) for o in objects] + [str(o) for o in objects] + messages
    for text in texts:
        for secret in (INITIATOR_SECRET, TARGET_SECRET):
            assert secret.decode() not in text
            assert secret.hex() not in text
            assert repr(secret) not in text
