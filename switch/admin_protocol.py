"""The admin API's wire format (docs/admin-api.md), with no I/O.

Newline-delimited JSON, UTF-8, one object per line. A client sends requests::

    {"id": 7, "method": "volume.mark", "params": {"volume": "vol0"}}

and receives, per request, zero or more progress lines and then exactly one final line
(``result`` or ``error``). Errors carry a kind (:class:`ErrorKind`) that tells a client what
went wrong without parsing the message.

This module encodes and decodes those lines and validates their shape; the asyncio server
(``switch.admin_server``) and the blocking client (``switch.admin_client``) are thin shells
around it. It also owns the rule for secrets: params whose key contains "password" or
"secret" never appear in a log line or an error message (:func:`redact_params`,
:func:`redact_text`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

__all__ = [
    "MAX_LINE",
    "AdminError",
    "Answer",
    "ErrorAnswer",
    "ErrorKind",
    "MalformedRequest",
    "MethodFn",
    "ProgressAnswer",
    "ProgressFn",
    "Request",
    "ResultAnswer",
    "decode_answer",
    "decode_request",
    "encode_error",
    "encode_progress",
    "encode_request",
    "encode_result",
    "is_secret_key",
    "redact_params",
    "redact_text",
    "secret_values",
]

# A request line longer than this (excluding its newline) is refused and the connection
# closed: nothing in the API needs more, and an unbounded line would let one client make the
# daemon buffer without limit.
MAX_LINE = 1 << 20

REDACTED = "***"
_SECRET_WORDS = ("password", "secret")


class ErrorKind(StrEnum):
    """The ``kind`` of an error answer (docs/admin-api.md, "Error kinds")."""

    INVALID = "invalid"  # bad or missing parameter, bad POINT, bad value, bad request
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # already exists, in use, busy
    REFUSED = "refused"  # refused by a rule (e.g. rewinding an exported volume without force)
    ENGINE = "engine"  # the engine failed (e.g. the secondary store is full)
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # a bug; the daemon keeps running
    # Client side only, never sent by the daemon: no daemon listens, the connection broke,
    # or no answer came within the client's timeout.
    UNAVAILABLE = "unavailable"


class AdminError(Exception):
    """An admin API error: a :class:`ErrorKind` and a message for a human."""

    def __init__(self, kind: ErrorKind | str, message: str) -> None:
        self.kind = ErrorKind(kind)  # ValueError for a kind the spec does not list
        self.message = message
        super().__init__(message)

    def __repr__(self) -> str:
        return f"AdminError({self.kind.value!r}, {self.message!r})"


class MalformedRequest(AdminError):
    """A request line that is not a valid request; ``request_id`` is None when unknown."""

    def __init__(self, request_id: int | None, message: str) -> None:
        super().__init__(ErrorKind.INVALID, message)
        self.request_id = request_id


# (what, done, total): "rewind vol0", 1048576, 8388608. A method may call it from any thread.
ProgressFn = Callable[[str, int, int], None]
# One entry of the daemon's method table: (params, progress) -> JSON-serialisable result.
MethodFn = Callable[[dict[str, Any], ProgressFn], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProgressAnswer:
    id: int
    what: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class ResultAnswer:
    id: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    id: int | None  # None: the daemon could not tell which request the line was about
    kind: ErrorKind
    message: str

    def exception(self) -> AdminError:
        return AdminError(self.kind, self.message)


Answer = ProgressAnswer | ResultAnswer | ErrorAnswer


# --- encoding --------------------------------------------------------------------------------


def _line(obj: Mapping[str, Any]) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON; a result holding one is a bug that must
    # surface as an error here rather than as a line the peer cannot parse.
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


def encode_request(request_id: int, method: str, params: Mapping[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {"id": request_id, "method": method}
    if params:
        obj["params"] = dict(params)
    return _line(obj)


def encode_progress(request_id: int, what: str, done: int, total: int) -> bytes:
    return _line({"id": request_id, "progress": {"what": what, "done": done, "total": total}})


def encode_result(request_id: int, result: Any) -> bytes:
    """Raises TypeError or ValueError when ``result`` is not JSON-serialisable."""
    return _line({"id": request_id, "result": result})


def encode_error(request_id: int | None, kind: ErrorKind | str, message: str) -> bytes:
    return _line({"id": request_id, "error": {"kind": ErrorKind(kind).value, "message": message}})


# --- decoding --------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(line: bytes) -> Any:
    """The JSON value on ``line``; ValueError when it is not UTF-8 JSON."""
    text = line.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return json.loads(text, parse_constant=_reject_constant)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS = frozenset(k.value for k in ErrorKind)
_REQUEST_KEYS = frozenset({"id", "method", "params"})


def decode_request(line: bytes) -> Request:
    """Parse one request line (with or without its newline); raises :class:`MalformedRequest`."""
    try:
        obj = _load_object(line)
    except ValueError as e:
        raise MalformedRequest(None, f"request is not valid UTF-8 JSON: {e}") from e
    if not isinstance(obj, dict):
        raise MalformedRequest(None, f"request must be a JSON object, not {type(obj).__name__}")
    if "id" not in obj:
        raise MalformedRequest(None, "request has no 'id'")
    request_id = obj["id"]
    if not _is_int(request_id):
        raise MalformedRequest(None, f"request 'id' must be an integer, not {request_id!r}")
    unknown = sorted(set(obj) - _REQUEST_KEYS)
    if unknown:
        raise MalformedRequest(request_id, f"unknown request field(s): {', '.join(unknown)}")
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise MalformedRequest(request_id, "request 'method' must be a non-empty string")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise MalformedRequest(request_id, "request 'params' must be a JSON object")
    return Request(request_id, method, params)


def _bad_answer(message: str) -> AdminError:
    return AdminError(ErrorKind.INTERNAL, f"malformed answer from the daemon: {message}")


def decode_answer(line: bytes) -> Answer:
    """Parse one line from the daemon; a malformed one raises AdminError of kind internal."""
    try:
        obj = _load_object(line)
    except ValueError as e:
        raise _bad_answer(str(e)) from e
    if not isinstance(obj, dict) or "id" not in obj:
        raise _bad_answer(f"{line[:200]!r}")
    request_id = obj["id"]
    if request_id is not None and not _is_int(request_id):
        raise _bad_answer(f"bad id {request_id!r}")
    if "error" in obj:
        err = obj["error"]
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            raise _bad_answer(f"bad error {err!r}")
        raw_kind = err.get("kind")
        if not isinstance(raw_kind, str) or raw_kind not in _KINDS:
            raise _bad_answer(f"unknown error kind {raw_kind!r}")
        kind = ErrorKind(raw_kind)
        return ErrorAnswer(request_id, kind, err["message"])
    if request_id is None:
        raise _bad_answer("only an error may have a null id")
    if "result" in obj:
        return ResultAnswer(request_id, obj["result"])
    if "progress" in obj:
        prog = obj["progress"]
        if (
            not isinstance(prog, dict)
            or not isinstance(prog.get("what"), str)
            or not _is_int(prog.get("done"))
            or not _is_int(prog.get("total"))
        ):
            raise _bad_answer(f"bad progress {prog!r}")
        return ProgressAnswer(request_id, prog["what"], prog["done"], prog["total"])
    raise _bad_answer("no result, error or progress")


# --- secrets ---------------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_params(value: Any) -> Any:
    """A copy of ``value`` with the value of every secret key (at any depth) replaced."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else redact_params(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_params(v) for v in value]
    return value


def secret_values(value: Any) -> list[str]:
    """Every non-empty string held under a secret key in ``value`` (at any depth)."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and is_secret_key(k) and isinstance(v, str) and v:
                found.append(v)
            else:
                found.extend(secret_values(v))
    elif isinstance(value, list | tuple):
        for v in value:
            found.extend(secret_values(v))
    return found


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced, longest first (one may contain another)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
