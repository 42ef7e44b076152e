"""Text keys: the key=value format and the table of negotiation rules (RFC 7143 sections
6.1-6.2 and 13; docs/iscsi.md section 4).

Theory of operation:

- ``parse_text`` turns a (reassembled) Login/Text data segment into an ordered dict. The
  format is ``key=value`` items each ended by one NUL, UTF-8 (section 6.1). Limits bound
  the work a peer can cause: key names of at most 63 bytes, values of at most 255 bytes
  (larger only for the binary CHAP values), at most ``MAX_KEYS`` keys and ``MAX_TEXT``
  bytes per negotiation. Offending the format fails the login with 0x0200.
- ``KEY_RULES`` maps each key this target knows to its rule: how an offer is answered
  (declarative, list, numeric min/max, boolean AND/OR, fixed answer), in which stage it may
  appear and whether it matters in a Discovery session. ``Negotiator.respond`` is a loop
  over the offered keys with a lookup in that table; unknown keys get ``NotUnderstood``,
  keys irrelevant to the session ``Irrelevant``, unacceptable values ``Reject``
  (section 6.2). A key offered twice in one login is an initiator error (section 6.2).
- The target answers only keys the initiator offered: volunteering keys makes open-iscsi
  abort the login (docs/iscsi.md section 11, pitfall 3). The login machine adds the target's
  own declaratives (MaxRecvDataSegmentLength, TargetPortalGroupTag, TargetAlias).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .errors import LoginFailure, LoginStatus
from .pdu import Stage

__all__ = [
    "IRRELEVANT",
    "KEY_RULES",
    "MAX_KEYS",
    "MAX_TEXT",
    "NOT_UNDERSTOOD",
    "REJECT",
    "SECURITY_KEYS",
    "KeyRule",
    "Negotiator",
    "OperationalParameters",
    "RuleKind",
    "SessionType",
    "TargetOffer",
    "TextFormatError",
    "encode_text",
    "parse_number",
    "parse_text",
]

NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"

MAX_KEY_NAME = 63  # section 6.1
MAX_VALUE = 255  # section 6.1: per value, delimiter excluded
MAX_LARGE_VALUE = 2 + 2 * 1024  # CHAP_C/CHAP_R: "0x" + hex of up to 1024 bytes
LARGE_VALUE_KEYS = frozenset({"CHAP_C", "CHAP_R"})
MAX_KEYS = 128  # far above the ~25 keys real initiators send
MAX_TEXT = 65536  # one negotiation's text, over all its C-bit continuation PDUs
_KEY_NAME = re.compile(r"[A-Za-z0-9.\-+@_]+")  # section 6.1: key name characters


class TextFormatError(LoginFailure):
    """Malformed key=value text: an initiator error (login 0x0200)."""

    def __init__(self, message: str) -> None:
        super().__init__(LoginStatus.INITIATOR_ERROR, message)


def parse_text(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """Parse a data segment of NUL-terminated ``key=value`` items, in order."""
    raw = bytes(data)
    if not raw:
        return {}
    if len(raw) > MAX_TEXT:
        raise TextFormatError(f"text of {len(raw)} bytes exceeds {MAX_TEXT}")
    if raw[-1] != 0:
        raise TextFormatError("text does not end with a NUL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFormatError("text is not UTF-8") from exc
    found: dict[str, str] = {}
    for item in text[:-1].split("\0"):
        if not item:  # tolerate empty items (a stray double NUL), as Linux LIO does
            continue
        key, sep, value = item.partition("=")
        if not sep or not _KEY_NAME.fullmatch(key) or len(key) > MAX_KEY_NAME:
            raise TextFormatError(f"bad key in item {item[:MAX_KEY_NAME]!r}")
        limit = MAX_LARGE_VALUE if key in LARGE_VALUE_KEYS else MAX_VALUE
        if len(value.encode()) > limit:
            raise TextFormatError(f"value of {key} longer than {limit} bytes")
        if key in found:
            raise TextFormatError(f"key {key} repeated")
        found[key] = value
        if len(found) > MAX_KEYS:
            raise TextFormatError(f"more than {MAX_KEYS} keys")
    return found


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``key=value\\0`` items, in the given order."""
    return b"".join(f"{key}={value}\0".encode() for key, value in pairs)


def parse_number(value: str, low: int, high: int) -> int | None:
    """A numerical value, decimal or ``0x`` hex (section 6.1), in [low, high]; else None."""
    try:
        number = int(value[2:], 16) if value[:2] in ("0x", "0X") else int(value, 10)
    except ValueError:
        return None
    if not value.isascii() or not low <= number <= high:
        return None
    return number


class SessionType(enum.Enum):
    NORMAL = "Normal"
    DISCOVERY = "Discovery"


class RuleKind(enum.Enum):
    DECLARATIVE = "declarative"  # record the value, no answer
    LIST = "list"  # first offered value we support
    MIN = "min"  # numerical, result = min(offer, ours)
    MAX = "max"  # numerical, result = max(offer, ours)
    OR = "or"  # boolean, result = offer OR ours
    AND = "and"  # boolean, result = offer AND ours
    FIXED = "fixed"  # obsolete keys: one fixed answer
    TARGET_ONLY = "target-only"  # only a target may send it: Reject from an initiator
    SECURITY = "security"  # AuthMethod, CHAP_*: the login machine handles them


@dataclass(frozen=True, slots=True)
class KeyRule:
    kind: RuleKind
    stages: frozenset[Stage]
    in_discovery: bool = True  # False: "Irrelevant" in a Discovery session
    low: int = 0
    high: int = 0
    fixed: str = ""


_SEC = frozenset({Stage.SECURITY})
_OP = frozenset({Stage.OPERATIONAL})
_LOGIN = frozenset({Stage.SECURITY, Stage.OPERATIONAL})  # declaratives: any login stage
_MAX24 = (1 << 24) - 1


def _num(kind: RuleKind, low: int, high: int, discovery: bool = False) -> KeyRule:
    return KeyRule(kind, _OP, discovery, low, high)


def _bool(kind: RuleKind) -> KeyRule:
    return KeyRule(kind, _OP, in_discovery=False)


# RFC 7143 section 13 (and RFC 7144 for iSCSIProtocolLevel); docs/iscsi.md section 4 table.
KEY_RULES: dict[str, KeyRule] = {
    "AuthMethod": KeyRule(RuleKind.SECURITY, _SEC),
    "CHAP_A": KeyRule(RuleKind.SECURITY, _SEC),
    "CHAP_I": KeyRule(RuleKind.SECURITY, _SEC),
    "CHAP_C": KeyRule(RuleKind.SECURITY, _SEC),
    "CHAP_N": KeyRule(RuleKind.SECURITY, _SEC),
    "CHAP_R": KeyRule(RuleKind.SECURITY, _SEC),
    "InitiatorName": KeyRule(RuleKind.DECLARATIVE, _LOGIN),
    "InitiatorAlias": KeyRule(RuleKind.DECLARATIVE, _LOGIN),
    "TargetName": KeyRule(RuleKind.DECLARATIVE, _LOGIN),
    "SessionType": KeyRule(RuleKind.DECLARATIVE, _LOGIN),
    "TargetAlias": KeyRule(RuleKind.TARGET_ONLY, _LOGIN),
    "TargetAddress": KeyRule(RuleKind.TARGET_ONLY, _LOGIN),
    "TargetPortalGroupTag": KeyRule(RuleKind.TARGET_ONLY, _LOGIN),
    "MaxRecvDataSegmentLength": KeyRule(RuleKind.DECLARATIVE, _OP, True, 512, _MAX24),
    "HeaderDigest": KeyRule(RuleKind.LIST, _OP),
    "DataDigest": KeyRule(RuleKind.LIST, _OP),
    "MaxConnections": _num(RuleKind.MIN, 1, 65535),
    "InitialR2T": _bool(RuleKind.OR),
    "ImmediateData": _bool(RuleKind.AND),
    "MaxBurstLength": _num(RuleKind.MIN, 512, _MAX24),
    "FirstBurstLength": _num(RuleKind.MIN, 512, _MAX24),
    "DefaultTime2Wait": _num(RuleKind.MAX, 0, 3600, discovery=True),
    "DefaultTime2Retain": _num(RuleKind.MIN, 0, 3600, discovery=True),
    "MaxOutstandingR2T": _num(RuleKind.MIN, 1, 65535),
    "DataPDUInOrder": _bool(RuleKind.OR),
    "DataSequenceInOrder": _bool(RuleKind.OR),
    "ErrorRecoveryLevel": _num(RuleKind.MIN, 0, 2, discovery=True),
    "iSCSIProtocolLevel": _num(RuleKind.MIN, 0, 31, discovery=True),
    "TaskReporting": KeyRule(RuleKind.LIST, _OP, in_discovery=False),
    # Markers are gone from RFC 7143 (section 13.25 keeps the names): answer No / Reject,
    # never NotUnderstood, which some initiators treat as fatal (docs/iscsi.md section 4).
    "IFMarker": KeyRule(RuleKind.FIXED, _OP, fixed="No"),
    "OFMarker": KeyRule(RuleKind.FIXED, _OP, fixed="No"),
    "IFMarkInt": KeyRule(RuleKind.FIXED, _OP, fixed=REJECT),
    "OFMarkInt": KeyRule(RuleKind.FIXED, _OP, fixed=REJECT),
}
SECURITY_KEYS = frozenset(k for k, r in KEY_RULES.items() if r.kind is RuleKind.SECURITY)


@dataclass(frozen=True, slots=True)
class TargetOffer:
    """What this target proposes or accepts; keys are the RFC key names."""

    numbers: Mapping[str, int] = field(default_factory=lambda: {
        "MaxRecvDataSegmentLength": 262144,
        "MaxConnections": 1,  # open-iscsi aborts on anything else
        "MaxBurstLength": 1048576,
        "FirstBurstLength": 65536,
        "DefaultTime2Wait": 2,
        "DefaultTime2Retain": 0,  # nothing is retained at ERL 0
        "MaxOutstandingR2T": 1,
        "ErrorRecoveryLevel": 0,  # this target implements ERL 0 only
        "iSCSIProtocolLevel": 0,
    })  # fmt: skip
    booleans: Mapping[str, bool] = field(default_factory=lambda: {
        "InitialR2T": False,
        "ImmediateData": True,
        "DataPDUInOrder": True,
        "DataSequenceInOrder": True,
    })  # fmt: skip
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {
        "HeaderDigest": ("None", "CRC32C"),
        "DataDigest": ("None", "CRC32C"),
        "TaskReporting": ("RFC3720",),
    })  # fmt: skip


@dataclass(frozen=True, slots=True)
class OperationalParameters:
    """The outcome of a login: RFC 7143 defaults, overridden by what was negotiated."""

    header_digest: bool = False
    data_digest: bool = False
    initiator_max_recv_dsl: int = 8192  # what we may send in one PDU (section 13.12)
    target_max_recv_dsl: int = 8192  # what we declared and must accept
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0


_RESULT_FIELDS = {
    "HeaderDigest": "header_digest",
    "DataDigest": "data_digest",
    "MaxRecvDataSegmentLength": "initiator_max_recv_dsl",
    "MaxConnections": "max_connections",
    "InitialR2T": "initial_r2t",
    "ImmediateData": "immediate_data",
    "MaxBurstLength": "max_burst_length",
    "FirstBurstLength": "first_burst_length",
    "DefaultTime2Wait": "default_time2wait",
    "DefaultTime2Retain": "default_time2retain",
    "MaxOutstandingR2T": "max_outstanding_r2t",
    "DataPDUInOrder": "data_pdu_in_order",
    "DataSequenceInOrder": "data_sequence_in_order",
    "ErrorRecoveryLevel": "error_recovery_level",
}
_YES_NO = {"Yes": True, "No": False}


class Negotiator:
    """Answers offered keys for one login (RFC 7143 section 6.2) and keeps the results."""

    def __init__(self, offer: TargetOffer | None = None) -> None:
        self.offer = offer or TargetOffer()
        self.session_type = SessionType.NORMAL
        self.declared: dict[str, str] = {}  # InitiatorName, TargetName, SessionType, ...
        self._seen: set[str] = set()
        self._results: dict[str, object] = {}

    def respond(self, keys: Mapping[str, str], stage: Stage) -> list[tuple[str, str]]:
        """The answers to ``keys`` offered in ``stage``; security keys are skipped (the
        login machine answers them). Raises ``LoginFailure`` 0x0200 for a repeated key or
        a key in the wrong stage."""
        answers: list[tuple[str, str]] = []
        for key, value in keys.items():
            rule = KEY_RULES.get(key)
            if rule is None:  # includes X- and X# extension keys (section 13.5.2)
                answers.append((key, NOT_UNDERSTOOD))
                continue
            if rule.kind is RuleKind.SECURITY:
                continue
            if key in self._seen:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"key {key} negotiated twice")
            self._seen.add(key)
            if stage not in rule.stages:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"key {key} in stage {stage}")
            if self.session_type is SessionType.DISCOVERY and not rule.in_discovery:
                answers.append((key, IRRELEVANT))
                continue
            answer = self._answer(key, value, rule)
            if answer is not None:
                answers.append((key, answer))
        return answers

    def parameters(self, *, target_max_recv_dsl: int | None = None) -> OperationalParameters:
        """The negotiated values (defaults where a key was not negotiated)."""
        changes = {_RESULT_FIELDS[k]: v for k, v in self._results.items() if k in _RESULT_FIELDS}
        params = replace(OperationalParameters(), **changes)  # type: ignore[arg-type]
        if params.first_burst_length > params.max_burst_length:  # section 13.14
            params = replace(params, first_burst_length=params.max_burst_length)
        if target_max_recv_dsl is not None:
            params = replace(params, target_max_recv_dsl=target_max_recv_dsl)
        return params

    def _answer(self, key: str, value: str, rule: KeyRule) -> str | None:
        kind = rule.kind
        if kind is RuleKind.DECLARATIVE:
            return self._declare(key, value, rule)
        if kind is RuleKind.TARGET_ONLY:
            return REJECT
        if kind is RuleKind.FIXED:
            return rule.fixed
        if kind is RuleKind.LIST:
            supported = self.offer.lists.get(key, ())
            choice = next((v for v in value.split(",") if v in supported), None)
            if choice is None:
                return REJECT
            if key in ("HeaderDigest", "DataDigest"):
                self._results[key] = choice == "CRC32C"
            return choice
        if kind in (RuleKind.OR, RuleKind.AND):
            return self._answer_boolean(key, value, kind)
        return self._answer_number(key, value, rule)

    def _answer_boolean(self, key: str, value: str, kind: RuleKind) -> str:
        offered = _YES_NO.get(value)
        if offered is None:
            return REJECT
        ours = self.offer.booleans[key]
        result = (offered or ours) if kind is RuleKind.OR else (offered and ours)
        self._results[key] = result
        return "Yes" if result else "No"

    def _answer_number(self, key: str, value: str, rule: KeyRule) -> str:
        number = parse_number(value, rule.low, rule.high)
        if number is None:
            return REJECT
        ours = self.offer.numbers[key]
        result = min(number, ours) if rule.kind is RuleKind.MIN else max(number, ours)
        burst = self._results.get("MaxBurstLength")
        if key == "FirstBurstLength" and isinstance(burst, int):
            result = min(result, burst)  # FirstBurstLength <= MaxBurstLength (13.14)
        self._results[key] = result
        return str(result)

    def _declare(self, key: str, value: str, rule: KeyRule) -> str | None:
        if key == "MaxRecvDataSegmentLength":
            number = parse_number(value, rule.low, rule.high)
            if number is None:
                return REJECT
            self._results[key] = number
            return None
        if key == "SessionType":
            try:
                self.session_type = SessionType(value)
            except ValueError:
                return REJECT
        self.declared[key] = value
        return None
