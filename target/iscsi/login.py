"""The target's login state machine for one connection (RFC 7143 sections 6.3, 11.12, 11.13;
docs/iscsi.md section 3). Sans-I/O: Login Request PDUs in, Login Response PDUs out.

Theory of operation:

- Each request is classified by its CSG, NSG, T and C bits into a ``LoginInput``
  (``classify``). ``TRANSITIONS`` maps (``LoginState``, ``LoginInput``) to the state the
  initiator asks to reach; a pair not in the table fails the login with 0x0200 ("initiator
  error": bad stage transition). That is the whole of stage sequencing, as in h2.
- Rule 1: the target moves only when the initiator asks (T=1) *and* the current stage is
  complete: in the security stage, authentication is done (CHAP finished, or no
  authentication required and AuthMethod=None). Otherwise it answers T=0 and stays.
- Rule 2: any failure answers with a Login Response whose Status-Class/Detail says why
  (``LoginFailure.status``), T=0 and TSIH 0; the machine is then FAILED and the caller
  closes the connection. Receiving anything in FAILED raises ``ConnectionFatal``; a Login
  Request in FULL_FEATURE is a protocol error, Reject 0x04 (section 11.12).
- Text split over several PDUs (C=1) is collected and processed when the last PDU
  (C=0) arrives; each C=1 PDU gets an empty response (section 6.2.1).
- The first processed text must name the initiator (and, for a Normal session, a known
  target): missing names are 0x0207, an unknown target 0x0203, a refused initiator 0x0202.
- StatSN starts at ``initial_statsn`` and grows by one per response; ExpCmdSN echoes the
  request's CmdSN, which a login request never consumes (docs/iscsi.md section 3).
"""

from __future__ import annotations

import enum
import itertools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .chap import ChapAuthenticator, ChapConfig
from .errors import (
    ConnectionFatal,
    LoginFailure,
    LoginStatus,
    PduRejected,
    RejectReason,
)
from .keys import (
    MAX_TEXT,
    SECURITY_KEYS,
    Negotiator,
    OperationalParameters,
    SessionType,
    TargetOffer,
    TextFormatError,
    encode_text,
    parse_text,
)
from .pdu import LoginRequest, LoginResponse, Stage

__all__ = [
    "TRANSITIONS",
    "LoginInput",
    "LoginMachine",
    "LoginResult",
    "LoginState",
    "PortalConfig",
    "TargetEntry",
    "classify",
    "transition",
]

LOGIN_MAX_TEXT_PER_PDU = 8192  # default MaxRecvDataSegmentLength during login (13.12)


class LoginState(enum.Enum):
    START = "start"  # no request yet
    SECURITY = "security"  # SecurityNegotiation (CSG 0)
    OPERATIONAL = "operational"  # LoginOperationalNegotiation (CSG 1)
    FULL_FEATURE = "full-feature"
    FAILED = "failed"


class LoginInput(enum.Enum):
    SECURITY_STAY = "csg0 T=0"
    SECURITY_TO_OPERATIONAL = "csg0 T=1 nsg1"
    SECURITY_TO_FULL = "csg0 T=1 nsg3"
    OPERATIONAL_STAY = "csg1 T=0"
    OPERATIONAL_TO_FULL = "csg1 T=1 nsg3"
    INVALID = "reserved stage, backward NSG or T with C"


_S, _O, _F = Stage.SECURITY, Stage.OPERATIONAL, Stage.FULL_FEATURE
_INPUTS: dict[tuple[int, bool, int], LoginInput] = {  # (csg, T, nsg); NSG ignored when T=0
    **{(_S, False, n): LoginInput.SECURITY_STAY for n in range(4)},
    (_S, True, _O): LoginInput.SECURITY_TO_OPERATIONAL,
    (_S, True, _F): LoginInput.SECURITY_TO_FULL,
    **{(_O, False, n): LoginInput.OPERATIONAL_STAY for n in range(4)},
    (_O, True, _F): LoginInput.OPERATIONAL_TO_FULL,
}

# (state, input) -> the state the initiator asks for (section 6.3 and 11.12.3).
TRANSITIONS: dict[tuple[LoginState, LoginInput], LoginState] = {
    (LoginState.START, LoginInput.SECURITY_STAY): LoginState.SECURITY,
    (LoginState.START, LoginInput.SECURITY_TO_OPERATIONAL): LoginState.OPERATIONAL,
    (LoginState.START, LoginInput.SECURITY_TO_FULL): LoginState.FULL_FEATURE,
    (LoginState.START, LoginInput.OPERATIONAL_STAY): LoginState.OPERATIONAL,
    (LoginState.START, LoginInput.OPERATIONAL_TO_FULL): LoginState.FULL_FEATURE,
    (LoginState.SECURITY, LoginInput.SECURITY_STAY): LoginState.SECURITY,
    (LoginState.SECURITY, LoginInput.SECURITY_TO_OPERATIONAL): LoginState.OPERATIONAL,
    (LoginState.SECURITY, LoginInput.SECURITY_TO_FULL): LoginState.FULL_FEATURE,
    (LoginState.OPERATIONAL, LoginInput.OPERATIONAL_STAY): LoginState.OPERATIONAL,
    (LoginState.OPERATIONAL, LoginInput.OPERATIONAL_TO_FULL): LoginState.FULL_FEATURE,
}
_STAGE_OF = {_S: LoginState.SECURITY, _O: LoginState.OPERATIONAL}


def classify(request: LoginRequest) -> LoginInput:
    """The table input for a request's CSG/NSG/T/C bits."""
    if request.transit and request.cont:  # section 11.12.2: C=1 requires T=0
        return LoginInput.INVALID
    return _INPUTS.get((request.csg, request.transit, request.nsg), LoginInput.INVALID)


def transition(state: LoginState, event: LoginInput) -> LoginState:
    """The requested next state; an unlisted pair is an initiator error (0x0200)."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LoginFailure(
            LoginStatus.INITIATOR_ERROR, f"login input {event.value} not valid in {state.value}"
        ) from None


@dataclass(frozen=True, slots=True)
class TargetEntry:
    """One target as login sees it. ``allowed_initiators`` None admits every initiator.

    ``acl_chap`` holds CHAP credentials of single initiators (lower-case names, like
    targetcli's per-ACL userid/password); they replace the target-wide ``chap`` for
    that initiator."""

    name: str
    alias: str | None = None
    chap: ChapConfig | None = None
    allowed_initiators: frozenset[str] | None = None
    acl_chap: Mapping[str, ChapConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """Everything login needs to know about this portal group."""

    targets: Mapping[str, TargetEntry]  # keyed by lower-case IQN
    portal_group_tag: int = 1
    offer: TargetOffer = field(default_factory=TargetOffer)
    discovery_enabled: bool = True
    discovery_chap: ChapConfig | None = None
    cmd_window: int = 128  # MaxCmdSN = ExpCmdSN + window - 1


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a successful login established, for the session layer."""

    session_type: SessionType
    initiator_name: str
    target_name: str | None  # None for a Discovery session
    isid: bytes
    tsih: int
    cid: int
    parameters: OperationalParameters
    next_statsn: int  # the StatSN of the first response in full feature phase
    exp_cmdsn: int


def _counter_tsih() -> Callable[[], int]:
    counter = itertools.count(1)
    return lambda: (next(counter) - 1) % 0xFFFF + 1  # 16-bit, never 0 (section 11.12.6)


class LoginMachine:
    """The login of one connection. Feed each Login Request to ``receive``."""

    def __init__(
        self,
        portal: PortalConfig,
        *,
        initial_statsn: int | None = None,
        allocate_tsih: Callable[[], int] | None = None,
        chap_random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.portal = portal
        self.state = LoginState.START
        self.result: LoginResult | None = None
        self.failure: LoginFailure | None = None
        self._statsn = secrets.randbits(32) if initial_statsn is None else initial_statsn
        self._allocate_tsih = allocate_tsih or _counter_tsih()
        self._chap_random = chap_random
        self._negotiator = Negotiator(portal.offer)
        self._pending_text = bytearray()
        self._first: LoginRequest | None = None
        self._keys_seen = False
        self._target: TargetEntry | None = None
        self._chap: ChapAuthenticator | None = None
        self._auth_required = False
        self._auth_started = False  # AuthMethod=CHAP agreed
        self._auth_done = False
        self._declared_mrdsl = False

    def receive(self, request: LoginRequest) -> LoginResponse:
        """Answer one Login Request; on failure the response carries the status."""
        if self.state is LoginState.FULL_FEATURE:
            raise PduRejected(RejectReason.PROTOCOL_ERROR, request.header(), "login in FFP")
        if self.state is LoginState.FAILED:
            raise ConnectionFatal("login request after a failed login")
        try:
            return self._step(request)
        except LoginFailure as failure:
            self.state, self.failure = LoginState.FAILED, failure
            return self._response(request, transit=False, nsg=0, text=b"", status=failure.status)

    # --- one step ---------------------------------------------------------------------------

    def _step(self, request: LoginRequest) -> LoginResponse:
        self._check_consistency(request)
        wanted = transition(self.state, classify(request))
        stage = Stage(request.csg)
        self.state = _STAGE_OF[stage]
        self._pending_text += request.data
        if len(self._pending_text) > MAX_TEXT:
            raise TextFormatError("login text too long")
        if request.cont:  # more text follows: acknowledge with an empty response (6.2.1)
            return self._response(request, transit=False, nsg=request.nsg, text=b"")
        keys = parse_text(self._pending_text)
        self._pending_text.clear()
        answers: list[tuple[str, str]] = []
        if not self._keys_seen:
            answers += self._first_keys(keys)
        answers += self._security(keys, stage)
        answers += self._negotiator.respond(keys, stage)
        if stage is _O and not self._declared_mrdsl:
            mrdsl = self.portal.offer.numbers["MaxRecvDataSegmentLength"]
            answers.append(("MaxRecvDataSegmentLength", str(mrdsl)))
            self._declared_mrdsl = True
        ready = stage is _O or self._auth_done or not self._auth_required
        if request.transit and not ready and not self._auth_started:
            # Section 12: leaving stage 0 needs the authentication the target requires.
            raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "authentication needed")
        if not (request.transit and ready):
            return self._response(request, transit=False, nsg=request.nsg, text=_text(answers))
        if wanted is LoginState.FULL_FEATURE:
            return self._finish(request, answers)
        self.state = wanted
        return self._response(request, transit=True, nsg=request.nsg, text=_text(answers))

    def _check_consistency(self, request: LoginRequest) -> None:
        first = self._first
        if first is None:
            self._first = request
            if request.version_min > 0:  # only version 0 exists (section 11.12.4)
                raise LoginFailure(LoginStatus.UNSUPPORTED_VERSION, "Version-min above 0")
            if request.tsih != 0:
                # With MaxConnections=1 there is no session to add this connection to.
                raise LoginFailure(LoginStatus.SESSION_DOES_NOT_EXIST, "non-zero TSIH")
        elif (request.isid, request.tsih, request.cid) != (first.isid, first.tsih, first.cid):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "ISID/TSIH/CID changed in login")

    def _first_keys(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        """Identify initiator, session type and target from the first text (section 6.3)."""
        self._keys_seen = True
        if "InitiatorName" not in keys:
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "no InitiatorName")
        session = keys.get("SessionType", SessionType.NORMAL.value)
        if session not in (SessionType.NORMAL.value, SessionType.DISCOVERY.value):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "unknown SessionType")
        if session == SessionType.DISCOVERY.value:
            if not self.portal.discovery_enabled:
                raise LoginFailure(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, "no discovery")
            self._negotiator.session_type = SessionType.DISCOVERY
            self._setup_auth(self.portal.discovery_chap)
            return []
        if "TargetName" not in keys:
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "no TargetName")
        target = self.portal.targets.get(keys["TargetName"].lower())
        if target is None:
            raise LoginFailure(LoginStatus.TARGET_NOT_FOUND, "unknown TargetName")
        allowed = target.allowed_initiators
        if allowed is not None and keys["InitiatorName"].lower() not in allowed:
            raise LoginFailure(LoginStatus.AUTHORIZATION_FAILURE, "initiator not in the ACL")
        self._target = target
        self._setup_auth(target.acl_chap.get(keys["InitiatorName"].lower(), target.chap))
        # Section 13.9: the first response of a Normal session carries the TPGT.
        answers = [("TargetPortalGroupTag", str(self.portal.portal_group_tag))]
        if target.alias:
            answers.append(("TargetAlias", target.alias))
        return answers

    def _setup_auth(self, chap: ChapConfig | None) -> None:
        self._auth_required = chap is not None
        if chap is not None:
            self._chap = ChapAuthenticator(chap, random_bytes=self._chap_random)

    def _security(self, keys: Mapping[str, str], stage: Stage) -> list[tuple[str, str]]:
        """AuthMethod and CHAP_* keys (section 12); only valid in the security stage."""
        present = [k for k in keys if k in SECURITY_KEYS]
        if not present:
            if self._auth_required and not self._auth_done and stage is _O:
                # libiscsi without credentials skips stage 0 (docs/iscsi.md pitfall 1)
                raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "authentication needed")
            return []
        if stage is not _S:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "security key outside stage 0")
        answers: list[tuple[str, str]] = []
        if "AuthMethod" in keys:
            offered = keys["AuthMethod"].split(",")
            choice = "CHAP" if self._auth_required else "None"
            if choice not in offered:
                if self._auth_required:
                    raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "CHAP not offered")
                choice = "Reject"
            answers.append(("AuthMethod", choice))
            self._auth_started = choice == "CHAP"
        chap_keys = {k: keys[k] for k in present if k != "AuthMethod"}
        if chap_keys:
            if self._chap is None:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "CHAP keys without CHAP")
            answers += self._chap.step(chap_keys)
            self._auth_done = self._chap.done
        return answers

    def _finish(self, request: LoginRequest, answers: list[tuple[str, str]]) -> LoginResponse:
        tsih = self._allocate_tsih()
        target_mrdsl = self.portal.offer.numbers["MaxRecvDataSegmentLength"]
        params = self._negotiator.parameters(
            target_max_recv_dsl=target_mrdsl if self._declared_mrdsl else 8192
        )
        response = self._response(request, transit=True, nsg=_F, text=_text(answers), tsih=tsih)
        self.state = LoginState.FULL_FEATURE
        assert self._first is not None
        self.result = LoginResult(
            session_type=self._negotiator.session_type,
            initiator_name=self._negotiator.declared["InitiatorName"],
            target_name=self._target.name if self._target else None,
            isid=self._first.isid,
            tsih=tsih,
            cid=self._first.cid,
            parameters=params,
            next_statsn=self._statsn,
            exp_cmdsn=request.cmdsn,
        )
        return response

    def _response(
        self,
        request: LoginRequest,
        *,
        transit: bool,
        nsg: int,
        text: bytes,
        tsih: int | None = None,
        status: LoginStatus = LoginStatus.SUCCESS,
    ) -> LoginResponse:
        if len(text) > LOGIN_MAX_TEXT_PER_PDU:  # our answers are a few hundred bytes
            raise LoginFailure(LoginStatus.TARGET_ERROR, "login response text too long")
        statsn = self._statsn
        self._statsn = (statsn + 1) & 0xFFFFFFFF
        failed = status is not LoginStatus.SUCCESS
        return LoginResponse(
            transit=transit and not failed,
            csg=request.csg if request.csg in (_S, _O) else 0,
            nsg=nsg if transit and not failed else 0,
            isid=request.isid,
            tsih=0 if failed else (request.tsih if tsih is None else tsih),
            itt=request.itt,
            statsn=statsn,
            exp_cmdsn=request.cmdsn,
            max_cmdsn=(request.cmdsn + self.portal.cmd_window - 1) & 0xFFFFFFFF,
            status_class=status.status_class,
            status_detail=status.status_detail,
            data=text,
        )


def _text(answers: list[tuple[str, str]]) -> bytes:
    return encode_text(answers)
