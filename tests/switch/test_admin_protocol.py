"""The admin API wire format (switch.admin_protocol): encoding, validation, secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.admin_protocol import (
    MAX_LINE,
    AdminError,
    ErrorAnswer,
    ErrorKind,
    MalformedRequest,
    ProgressAnswer,
    Request,
    ResultAnswer,
    decode_answer,
    decode_request,
    encode_error,
    encode_progress,
    encode_request,
    encode_result,
    is_secret_key,
    redact_params,
    redact_text,
    secret_values,
)


def test_error_kinds_are_the_specs() -> None:
    sent_by_daemon = {k.value for k in ErrorKind} - {"unavailable"}
    assert sent_by_daemon == {
        "invalid", "not_found", "conflict", "refused", "engine", "cancelled", "internal",
    }  # fmt: skip


def test_admin_error_carries_kind_and_message() -> None:
    e = AdminError("not_found", "no volume named 'vol9'")
    assert e.kind is ErrorKind.NOT_FOUND
    assert e.kind == "not_found"  # type: ignore[comparison-overlap]  # a StrEnum is a str
    assert e.message == "no volume named 'vol9'"
    assert str(e) == "no volume named 'vol9'"
    with pytest.raises(ValueError):
        AdminError("nonsense", "x")


def test_request_line_is_one_json_object_with_newline() -> None:
    line = encode_request(7, "volume.mark", {"volume": "vol0", "name": "a"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "id": 7,
        "method": "volume.mark",
        "params": {"volume": "vol0", "name": "a"},
    }
    assert json.loads(encode_request(1, "status")) == {"id": 1, "method": "status"}


def test_answers_match_the_spec_examples() -> None:
    assert json.loads(encode_progress(7, "rewind vol0", 1048576, 8388608)) == {
        "id": 7,
        "progress": {"what": "rewind vol0", "done": 1048576, "total": 8388608},
    }
    assert json.loads(encode_result(8, {"cancelled": True})) == {
        "id": 8,
        "result": {"cancelled": True},
    }
    assert json.loads(encode_error(7, ErrorKind.NOT_FOUND, "no volume named 'vol9'")) == {
        "id": 7,
        "error": {"kind": "not_found", "message": "no volume named 'vol9'"},
    }
    assert json.loads(encode_error(None, "invalid", "x"))["id"] is None


def test_encode_result_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        encode_result(1, {"x": object()})
    with pytest.raises(ValueError):
        encode_result(1, float("nan"))


def test_non_ascii_is_utf8_on_the_wire() -> None:
    line = encode_result(1, "vol-é")
    assert "vol-é".encode() in line
    assert decode_answer(line) == ResultAnswer(1, "vol-é")


def test_decode_request_accepts_omitted_params() -> None:
    assert decode_request(b'{"id": 3, "method": "status"}\n') == Request(3, "status", {})
    assert decode_request(b'{"id":-1,"method":"m","params":{"a":[1]}}') == Request(
        -1, "m", {"a": [1]}
    )


# (line, request id the error is about or None, words in the message)
MALFORMED: list[tuple[bytes, int | None, str]] = [
    (b"not json", None, "JSON"),
    (b"\xff\xfe{}", None, "UTF-8"),
    (b"[1, 2]", None, "object"),
    (b'"status"', None, "object"),
    (b'{"method": "status"}', None, "no 'id'"),
    (b'{"id": "7", "method": "status"}', None, "integer"),
    (b'{"id": true, "method": "status"}', None, "integer"),
    (b'{"id": 1.5, "method": "status"}', None, "integer"),
    (b'{"id": 4}', 4, "method"),
    (b'{"id": 4, "method": ""}', 4, "method"),
    (b'{"id": 4, "method": 12}', 4, "method"),
    (b'{"id": 5, "method": "m", "params": [1]}', 5, "params"),
    (b'{"id": 5, "method": "m", "params": null}', 5, "params"),
    (b'{"id": 6, "method": "m", "param": {}}', 6, "param"),
    (b'{"id": 6, "method": "m", "params": {"x": NaN}}', None, "JSON"),
]


@pytest.mark.parametrize(("line", "request_id", "words"), MALFORMED)
def test_malformed_requests_are_invalid(line: bytes, request_id: int | None, words: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        decode_request(line)
    assert info.value.kind is ErrorKind.INVALID
    assert info.value.request_id == request_id
    assert words in info.value.message


def test_decode_answer_kinds() -> None:
    assert decode_answer(encode_progress(2, "w", 1, 4)) == ProgressAnswer(2, "w", 1, 4)
    assert decode_answer(encode_result(2, None)) == ResultAnswer(2, None)
    err = decode_answer(encode_error(None, "cancelled", "gone"))
    assert err == ErrorAnswer(None, ErrorKind.CANCELLED, "gone")
    assert isinstance(err, ErrorAnswer)
    assert err.exception().kind is ErrorKind.CANCELLED


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"[]",
        b'{"result": 1}',
        b'{"id": "1", "result": 1}',
        b'{"id": null, "result": 1}',
        b'{"id": 1}',
        b'{"id": 1, "error": {"kind": "oops", "message": "m"}}',
        b'{"id": 1, "error": {"kind": "invalid"}}',
        b'{"id": 1, "progress": {"what": "w", "done": "1", "total": 2}}',
    ],
)
def test_malformed_answers_are_internal_errors(line: bytes) -> None:
    with pytest.raises(AdminError) as info:
        decode_answer(line)
    assert info.value.kind is ErrorKind.INTERNAL
    assert "malformed answer" in info.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.integers(), st.text(min_size=1), st.dictionaries(st.text(), json_values, max_size=5))
def test_request_round_trips(request_id: int, method: str, params: dict[str, Any]) -> None:
    line = encode_request(request_id, method, params)
    assert line.count(b"\n") == 1  # newlines inside strings are escaped
    assert decode_request(line) == Request(request_id, method, params)


@given(st.integers(), json_values)
def test_result_round_trips(request_id: int, result: Any) -> None:
    assert decode_answer(encode_result(request_id, result)) == ResultAnswer(request_id, result)


def test_max_line_is_one_mib() -> None:
    assert MAX_LINE == 1024 * 1024


def test_secret_keys() -> None:
    assert is_secret_key("password")
    assert is_secret_key("mutual_password")
    assert is_secret_key("discovery_PASSWORD")
    assert is_secret_key("chap_secret")
    assert not is_secret_key("userid")


def test_redact_params_replaces_secrets_at_any_depth() -> None:
    params = {
        "iqn": "iqn.x",
        "password": "p1",
        "acl": {"mutual_password": "p2", "userid": "u"},
        "list": [{"secret": "p3"}],
    }
    assert redact_params(params) == {
        "iqn": "iqn.x",
        "password": "***",
        "acl": {"mutual_password": "***", "userid": "u"},
        "list": [{"secret": "***"}],
    }
    assert params["password"] == "p1"  # a copy
    assert sorted(secret_values(params)) == ["p1", "p2", "p3"]
    assert secret_values({"password": ""}) == []


def test_redact_text_longest_first() -> None:
    assert redact_text("bad pw abcd and abc", ["abc", "abcd"]) == "bad pw *** and ***"
    assert redact_text("nothing", []) == "nothing"
