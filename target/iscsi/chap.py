"""CHAP authentication for the login security stage (RFC 7143 section 12.1.3, RFC 1994).

Theory of operation (docs/iscsi.md section 5):

    step  initiator sends                         target answers
    1     AuthMethod=CHAP,...                     AuthMethod=CHAP     (login.py)
    2     CHAP_A=<list>                           CHAP_A=5 CHAP_I=<id> CHAP_C=0x<challenge>
    3     CHAP_N CHAP_R [CHAP_I CHAP_C: mutual]   nothing, or CHAP_N CHAP_R when mutual

``ChapAuthenticator`` holds steps 2-3 as a two-state table (``_HANDLERS``); any other
input, or any input after it finished, fails the login. A response is
``MD5(identifier octet || secret || challenge)`` over the *decoded* challenge. Binary
values arrive as ``0x`` hex or ``0b`` base64 (section 6.1) and are sent as hex, the only
form libiscsi parses. Comparisons of responses use ``hmac.compare_digest``.

Secrets never appear in a repr, a str or an exception message: ``ChapCredentials`` hides
its secret from the dataclass repr and every error message here is a fixed sentence.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import LoginFailure, LoginStatus
from .keys import parse_number

__all__ = [
    "CHAP_MD5",
    "ChapAuthenticator",
    "ChapConfig",
    "ChapCredentials",
    "ChapFailure",
    "ChapState",
    "chap_response",
    "decode_binary",
    "encode_binary",
]

CHAP_MD5 = 5  # the only algorithm RFC 7143 section 12.1.3 requires; libiscsi offers only it
MIN_SECRET = 12  # 96 bits: section 12.1.3 for connections without IPsec
MIN_CHALLENGE = 16  # RFC 1994 suggests at least the hash length
MAX_CHALLENGE = 1024  # libiscsi's limit for a challenge it accepts


class ChapFailure(LoginFailure):
    """Authentication failed: login 0x0201 unless told otherwise."""

    def __init__(self, message: str, status: LoginStatus = LoginStatus.AUTHENTICATION_FAILURE):
        super().__init__(status, message)


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    """A CHAP user name and its secret. The secret is left out of repr and str."""

    user: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.user:
            raise ValueError("a CHAP user name is required")
        if len(self.secret) < MIN_SECRET:
            raise ValueError(f"a CHAP secret needs at least {MIN_SECRET} bytes")


@dataclass(frozen=True, slots=True)
class ChapConfig:
    """What the initiator must prove (``initiator``) and, for mutual CHAP, what the target
    proves back (``target``)."""

    initiator: ChapCredentials
    target: ChapCredentials | None = None

    def __post_init__(self) -> None:
        # Section 12.1.3: the two directions must use different secrets.
        if self.target is not None and hmac.compare_digest(
            self.target.secret, self.initiator.secret
        ):
            raise ValueError("mutual CHAP needs different initiator and target secrets")


def chap_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 section 4.1: MD5 over the identifier octet, the secret and the challenge."""
    return hashlib.md5(bytes([identifier]) + secret + challenge, usedforsecurity=True).digest()


def encode_binary(value: bytes) -> str:
    """Hex with a ``0x`` prefix (section 6.1), the form every initiator parses."""
    return "0x" + value.hex()


def decode_binary(value: str) -> bytes:
    """Decode a ``0x``/``0X`` hex or ``0b``/``0B`` base64 value (section 6.1)."""
    prefix, body = value[:2], value[2:]
    try:
        if prefix in ("0x", "0X"):
            return bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)
        if prefix in ("0b", "0B"):
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ChapFailure("badly encoded CHAP value") from exc
    raise ChapFailure("CHAP value without 0x or 0b prefix")


class ChapState(enum.Enum):
    WAIT_ALGORITHM = "wait-algorithm"
    WAIT_RESPONSE = "wait-response"
    DONE = "done"
    FAILED = "failed"


class ChapAuthenticator:
    """The target's side of one CHAP exchange. ``step(keys)`` returns the keys to answer."""

    def __init__(
        self,
        config: ChapConfig,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        challenge_length: int = MIN_CHALLENGE,
    ) -> None:
        if not MIN_CHALLENGE <= challenge_length <= MAX_CHALLENGE:
            raise ValueError(f"challenge length must be {MIN_CHALLENGE}..{MAX_CHALLENGE}")
        self._config = config
        self._random_bytes = random_bytes
        self._challenge_length = challenge_length
        self._identifier = 0
        self._challenge = b""
        self.state = ChapState.WAIT_ALGORITHM

    def __repr__(self) -> str:
        return f"ChapAuthenticator(user={self._config.initiator.user!r}, state={self.state})"

    @property
    def done(self) -> bool:
        return self.state is ChapState.DONE

    def step(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        """Handle the CHAP_* keys of one login request."""
        handler = _HANDLERS.get(self.state)
        if handler is None:
            self.state = ChapState.FAILED
            raise ChapFailure("CHAP keys after the exchange ended", LoginStatus.INITIATOR_ERROR)
        try:
            return handler(self, keys)
        except LoginFailure:
            self.state = ChapState.FAILED
            raise

    def _on_algorithm(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        if "CHAP_A" not in keys:
            raise ChapFailure("CHAP_A missing", LoginStatus.MISSING_PARAMETER)
        if keys.keys() - {"CHAP_A"}:
            raise ChapFailure("unexpected CHAP keys before the challenge",
                              LoginStatus.INITIATOR_ERROR)  # fmt: skip
        offered = [parse_number(v, 0, 255) for v in keys["CHAP_A"].split(",")]
        if CHAP_MD5 not in offered:
            raise ChapFailure("no supported CHAP algorithm offered (only MD5, 5)")
        self._identifier = secrets.randbelow(256)
        self._challenge = self._random_bytes(self._challenge_length)
        self.state = ChapState.WAIT_RESPONSE
        return [
            ("CHAP_A", str(CHAP_MD5)),
            ("CHAP_I", str(self._identifier)),  # decimal: libiscsi reads it with atoi
            ("CHAP_C", encode_binary(self._challenge)),
        ]

    def _on_response(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        if "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise ChapFailure("CHAP_N or CHAP_R missing", LoginStatus.MISSING_PARAMETER)
        expected_user = self._config.initiator
        name_ok = hmac.compare_digest(keys["CHAP_N"].encode(), expected_user.user.encode())
        wanted = chap_response(self._identifier, expected_user.secret, self._challenge)
        response_ok = hmac.compare_digest(decode_binary(keys["CHAP_R"]), wanted)
        if not (name_ok and response_ok):
            raise ChapFailure("CHAP name or response does not match")
        answer = self._mutual(keys)
        self.state = ChapState.DONE
        return answer

    def _mutual(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        """Mutual CHAP: the initiator challenges us in the same request (section 12.1.3)."""
        if "CHAP_I" not in keys and "CHAP_C" not in keys:
            return []
        if "CHAP_I" not in keys or "CHAP_C" not in keys:
            raise ChapFailure("mutual CHAP needs both CHAP_I and CHAP_C",
                              LoginStatus.MISSING_PARAMETER)  # fmt: skip
        target = self._config.target
        if target is None:
            raise ChapFailure("mutual CHAP asked for but no target credentials configured")
        identifier = parse_number(keys["CHAP_I"], 0, 255)
        challenge = decode_binary(keys["CHAP_C"])
        if identifier is None or not 1 <= len(challenge) <= MAX_CHALLENGE:
            raise ChapFailure("bad mutual CHAP identifier or challenge")
        if hmac.compare_digest(challenge, self._challenge):
            # A reflected challenge would make us compute the initiator's answer for it.
            raise ChapFailure("initiator reused the target's CHAP challenge")
        return [
            ("CHAP_N", target.user),
            ("CHAP_R", encode_binary(chap_response(identifier, target.secret, challenge))),
        ]


_Handler = Callable[[ChapAuthenticator, Mapping[str, str]], list[tuple[str, str]]]
_HANDLERS: dict[ChapState, _Handler] = {
    ChapState.WAIT_ALGORITHM: ChapAuthenticator._on_algorithm,
    ChapState.WAIT_RESPONSE: ChapAuthenticator._on_response,
}
