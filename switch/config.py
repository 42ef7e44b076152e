"""The daemon's configuration file: YAML in, validated frozen models out, and back.

Theory of operation
-------------------
Reading a file runs three passes. Each collects every problem it can before giving up, and
each problem is reported as ``FILE:LINE: key.path: what is wrong``, one per line, sorted
by line (:class:`ConfigError`):

1. *Read* (:mod:`policies.yamlpos`): PyYAML's safe composer gives the node tree, which knows
   the line of every key and item. It becomes plain data plus a position tree of the same
   shape. Syntax errors stop here; duplicate keys (which PyYAML would silently resolve to
   the last one) are collected and reading goes on.
2. *Shape* (pydantic): the data is validated against :class:`SwitchConfig`. Every model
   forbids unknown keys. Each pydantic error location, such as ``('targets', 0, 'iqn')``,
   is looked up in the position tree to find its line.
3. *References* (:func:`_cross_check`): once the shape is right, names are resolved
   (LUN -> volume or image, image -> volume) and the uniqueness rules are checked. Each
   rule reports the location of the offending key, and of the earlier one it clashes with.

Saving (saveconfig) is the reverse: the model is dumped to plain data with its secrets in
clear text, written as YAML, read back through the same three passes (so a saved file
always restores) and put in place atomically with mode 0600, because it holds CHAP
secrets. Everywhere else secrets are ``SecretStr``: reprs show ``'**********'``, and no
message quotes the input value of any field (pydantic's inputs are never printed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from policies import yamlpos
from policies.yamlcheck import (
    Issue,
    Loc,
    YamlError,
    check_name,
    load_document,
    parse_size,
    read_text,
    shape_issues,
)
from volume_manager.errors import PointError
from volume_manager.points import parse_point

__all__ = [
    "AclConfig",
    "ChapConfig",
    "ChapPair",
    "ConfigError",
    "ConfigIssue",
    "ImageConfig",
    "LunConfig",
    "MetricsConfig",
    "SwitchConfig",
    "TargetConfig",
    "TpgConfig",
    "VolumeConfig",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_size",
    "save_config",
]

DEFAULT_PORTAL = "127.0.0.1:3260"
ISCSI_PORT = 3260  # RFC 7143 section 13.1 (IANA well-known port)
MAX_LUN = 16383  # SAM flat-space addressing: 14 bits
MAX_ISCSI_NAME = 223  # bytes, RFC 7143 section 4.2.7.1
MIN_CHAP_SECRET = 12  # bytes: what the target's CHAP (target/iscsi/chap.py) requires
MAX_CHAP_FIELD = 255  # bytes; longer user names or secrets are not practical for initiators
SAVE_MODE = 0o600
HEADER = (
    "# Written by cdpswitch (saveconfig). It holds CHAP secrets in clear text:\n"
    "# keep it mode 0600 and readable by root only.\n"
)


# --- errors -----------------------------------------------------------------------------


ConfigIssue = Issue


class ConfigError(YamlError):
    """The configuration is invalid; ``issues`` holds every problem found, sorted by line."""


# --- field types ------------------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"iqn\.[0-9]{{4}}-(?:0[1-9]|1[0-2])\.{_LABEL}(?:\.{_LABEL})*(?::[a-z0-9.:-]+)?")
_EUI = re.compile(r"eui\.[0-9a-fA-F]{16}")
_NAA = re.compile(r"naa\.(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{32})")
_NAME_FORMS = ("iqn.YYYY-MM.reversed.domain[:name], eui. and 16 hex digits,"
               " or naa. and 16 or 32 hex digits")


def _check_iscsi_name(name: str) -> str:
    """RFC 7143 section 4.2.7: iqn., eui. and naa. names, in their normalized (lowercase) form."""
    if len(name.encode()) > MAX_ISCSI_NAME:
        raise ValueError(f"an iSCSI name is at most {MAX_ISCSI_NAME} bytes")
    if any(p.fullmatch(name) for p in (_IQN, _EUI, _NAA)):
        return name
    if _IQN.fullmatch(name.lower()) or any(p.fullmatch(name.lower()) for p in (_EUI, _NAA)):
        raise ValueError(f"{name!r}: iSCSI names are written in lowercase: {name.lower()!r}")
    raise ValueError(f"{name!r} is not an iSCSI name: expected {_NAME_FORMS}")


_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)


def _split_host_port(text: str, default_port: int | None) -> tuple[str, int, bool]:
    """``host:port`` or ``[v6]:port`` -> (host, port, bracketed); the port may be left out
    when there is a default."""
    bracketed = text.startswith("[")
    if bracketed:
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [addr]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:3260")
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: a port is required (host:port)")
        return host, default_port, bracketed
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text), bracketed


def _ip(host: str, bracketed: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, or None; brackets hold IPv6 addresses only."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return addr if bracketed == (addr.version == 6) else None


def _check_portal(text: str) -> str:
    """``ip[:port]`` -> ``ip:port`` in canonical form (so duplicates are found)."""
    host, port, bracketed = _split_host_port(text, ISCSI_PORT)
    addr = _ip(host, bracketed)
    if addr is None:
        raise ValueError(f"{text!r}: a portal is an IP address and port, e.g. 0.0.0.0:3260"
                         " or [::]:3260")
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _check_listen(text: str) -> str:
    """``host:port``, the host an address or a DNS name; kept as written."""
    host, _, bracketed = _split_host_port(text, None)
    if _ip(host, bracketed) is None and (bracketed or not _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{text!r}: expected host:port, the host an IP address (IPv6 in"
                         " brackets) or a DNS name; 0.0.0.0 means every address")
    return text


def _check_userid(userid: str) -> str:
    if not userid or len(userid.encode()) > MAX_CHAP_FIELD:
        raise ValueError(f"a CHAP user name is 1 to {MAX_CHAP_FIELD} bytes")
    if "\0" in userid:
        raise ValueError("a CHAP user name cannot contain NUL (it is an iSCSI text value)")
    return userid


def _check_secret(secret: SecretStr) -> SecretStr:
    # The message must never quote the value.
    if not MIN_CHAP_SECRET <= len(secret.get_secret_value().encode()) <= MAX_CHAP_FIELD:
        raise ValueError(f"a CHAP password is {MIN_CHAP_SECRET} to {MAX_CHAP_FIELD} bytes"
                         " (RFC 7143 section 12.1.3 asks for at least 96 bits)")
    return secret


def _check_point(text: str) -> str:
    try:
        parse_point(text, now_ns=0)
    except PointError as exc:
        raise ValueError(str(exc)) from exc
    return text


def _volume_size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError("a volume size must be greater than 0")
    return size


def _check_lun(number: int) -> int:
    if not 0 <= number <= MAX_LUN:
        raise ValueError(f"LUN {number} is out of range: LUN numbers are 0 to {MAX_LUN}")
    return number


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


Name = Annotated[str, AfterValidator(check_name)]
IscsiName = Annotated[str, AfterValidator(_check_iscsi_name)]
Portal = Annotated[str, AfterValidator(_check_portal)]
UserId = Annotated[str, AfterValidator(_check_userid)]
Secret = Annotated[SecretStr, AfterValidator(_check_secret)]
Text = Annotated[str, AfterValidator(_nonempty)]
LunNumber = Annotated[int, AfterValidator(_check_lun)]
Tag = Annotated[int, Field(strict=True, ge=1, le=65535)]
Flag = Annotated[bool, Field(strict=True)]


# --- models -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _chap_pairs(data: Any, *, required: bool) -> Any:
    """Both-or-neither rules of a CHAP block, checked on the raw mapping for clear messages."""
    if not isinstance(data, Mapping):
        return data  # pydantic reports the type

    def given(key: str) -> bool:
        return data.get(key) is not None

    for user, password in (("userid", "password"), ("mutual_userid", "mutual_password")):
        if given(password) and not given(user):
            raise ValueError(f"{password} is set but {user} is missing; CHAP needs both")
        if given(user) and not given(password):
            raise ValueError(f"{user} is set but {password} is missing; CHAP needs both")
    secrets = [data.get(k) for k in ("password", "mutual_password")]
    if all(isinstance(v, str) for v in secrets) and secrets[0] == secrets[1]:
        raise ValueError("password and mutual_password must differ (RFC 7143 section"
                         " 12.1.3: each direction has its own secret)")
    if not given("userid"):
        if required:
            raise ValueError("userid and password are required")
        if given("mutual_userid"):
            raise ValueError("mutual CHAP (mutual_userid) needs userid and password as well")
    return data


class ChapPair(_Model):
    """CHAP that initiators must pass (``userid``/``password``) and, optionally, the
    credentials the target answers with for mutual CHAP (RFC 7143 section 12.1.3)."""

    userid: UserId
    password: Secret
    mutual_userid: UserId | None = None
    mutual_password: Secret | None = None

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _chap_pairs(data, required=True)


class ChapConfig(ChapPair):
    """CHAP for discovery sessions (``discovery_auth``)."""


class AclConfig(_Model):
    """An initiator allowed to log in to a TPG, optionally with its own CHAP credentials."""

    initiator: IscsiName
    userid: UserId | None = None
    password: Secret | None = None
    mutual_userid: UserId | None = None
    mutual_password: Secret | None = None

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _chap_pairs(data, required=False)


class LunConfig(_Model):
    """What a LUN exports: a volume or an image (exactly one)."""

    volume: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.volume is None) == (self.image is None):
            raise ValueError("a LUN names exactly one of 'volume' or 'image'")
        return self


class TpgConfig(_Model):
    """A target portal group: where it listens, what it exports, who may log in."""

    tag: Tag = 1
    portals: list[Portal] = Field(default_factory=lambda: [DEFAULT_PORTAL])
    luns: dict[LunNumber, LunConfig] = Field(default_factory=dict)
    auth: ChapPair | None = None
    acls: list[AclConfig] = Field(default_factory=list)  # empty: any initiator

    @field_validator("luns", mode="before")
    @classmethod
    def _lun_keys(cls, value: Any) -> Any:
        # "3" and 3 are different YAML keys but the same LUN: pydantic would keep one.
        if not isinstance(value, Mapping):
            return value
        seen: dict[int, Any] = {}
        for key in value:
            if isinstance(key, bool):
                raise ValueError(f"LUN number {key!r} is not a number")
            try:
                number = int(key)
            except (TypeError, ValueError):
                continue  # pydantic reports it at the key
            if number in seen:
                raise ValueError(f"LUN {number} is given twice (as {seen[number]!r} and {key!r})")
            seen[number] = key
        return value


class TargetConfig(_Model):
    iqn: IscsiName
    alias: Text | None = None
    tpgs: list[TpgConfig] = Field(default_factory=lambda: [TpgConfig()])


class VolumeConfig(_Model):
    """A protected volume: its primary backstore and the secondary directory of its history.

    Relative paths are relative to the data directory.
    """

    size: Annotated[int, BeforeValidator(_volume_size)]
    block_size: Literal[512, 4096] = 512
    primary: Text | None = None
    secondary: Text | None = None
    policy: Text | None = None
    thin: Flag = True

    @model_validator(mode="after")
    def _whole_blocks(self) -> Self:
        if self.size % self.block_size:
            raise ValueError(
                f"size {self.size} is not a multiple of block_size {self.block_size}")
        return self


class ImageConfig(_Model):
    """A view of a volume at a POINT in its history, exported as its own device."""

    volume: str
    at: Annotated[str, AfterValidator(_check_point)]
    writable: Flag = False


class MetricsConfig(_Model):
    listen: Annotated[str, AfterValidator(_check_listen)]  # host:port of the Prometheus endpoint


class SwitchConfig(_Model):
    version: Literal[1] = 1
    volumes: dict[Name, VolumeConfig] = Field(default_factory=dict)
    images: dict[Name, ImageConfig] = Field(default_factory=dict)
    targets: list[TargetConfig] = Field(default_factory=list)
    discovery_auth: ChapConfig | None = None
    metrics: MetricsConfig | None = None
    policies_file: Text | None = None


# --- reading ----------------------------------------------------------------------------

def _shape_issues(exc: ValidationError, doc: yamlpos.Document, filename: str) -> list[Issue]:
    return shape_issues(exc, SwitchConfig, doc, filename)


@dataclass(slots=True)
class _Clashes:
    """Problems found so far, and the first location of each value that must be unique."""

    found: list[tuple[Loc, str, Loc | None]]

    def bad(self, loc: Loc, message: str, first: Loc | None = None) -> None:
        self.found.append((loc, message, first))  # "first" is where the clashing entry is

    def unique(self, seen: dict[Any, Loc], key: Any, loc: Loc, message: str) -> None:
        if key in seen:
            self.bad(loc, message, seen[key])
        else:
            seen[key] = loc


def _cross_check(cfg: SwitchConfig) -> list[tuple[Loc, str, Loc | None]]:
    """Rules across entries; each result is (where, what is wrong, where it first was)."""
    out = _Clashes([])
    for name, image in cfg.images.items():
        if name in cfg.volumes:
            out.bad(("images", name), f"{name!r} is also the name of a volume")
        if image.volume not in cfg.volumes:
            out.bad(("images", name, "volume"), f"no volume named {image.volume!r}")
    paths: dict[Any, Loc] = {}
    for name, vol in cfg.volumes.items():
        for key in ("primary", "secondary"):
            path = getattr(vol, key)
            if path is not None:
                out.unique(paths, os.path.normpath(path), ("volumes", name, key),
                           f"path {path!r} is already used by another volume")
    iqns: dict[Any, Loc] = {}
    for t, target in enumerate(cfg.targets):
        out.unique(iqns, target.iqn.lower(), ("targets", t, "iqn"),
                   f"target {target.iqn} is defined twice")
        tags: dict[Any, Loc] = {}
        for g, tpg in enumerate(target.tpgs):
            at: Loc = ("targets", t, "tpgs", g)
            out.unique(tags, tpg.tag, (*at, "tag"), f"TPG tag {tpg.tag} is used twice")
            _check_tpg(cfg, tpg, at, out)
    return out.found


def _check_tpg(cfg: SwitchConfig, tpg: TpgConfig, at: Loc, out: _Clashes) -> None:
    portals: dict[Any, Loc] = {}
    for p, portal in enumerate(tpg.portals):
        out.unique(portals, portal, (*at, "portals", p), f"portal {portal} is listed twice")
    for number, lun in tpg.luns.items():
        if lun.volume is not None and lun.volume not in cfg.volumes:
            out.bad((*at, "luns", number, "volume"), f"no volume named {lun.volume!r}")
        if lun.image is not None and lun.image not in cfg.images:
            out.bad((*at, "luns", number, "image"), f"no image named {lun.image!r}")
    initiators: dict[Any, Loc] = {}
    for a, acl in enumerate(tpg.acls):
        out.unique(initiators, acl.initiator.lower(), (*at, "acls", a, "initiator"),
                   f"initiator {acl.initiator} is listed twice")


def parse_config(text: str, filename: str) -> SwitchConfig:
    """Validate YAML ``text``; ``filename`` is only used in messages. Raises ConfigError."""
    doc, issues = load_document(text, filename, ConfigError)
    try:
        cfg = SwitchConfig.model_validate({} if doc.data is None else doc.data)
    except ValidationError as exc:
        raise ConfigError(issues + _shape_issues(exc, doc, filename)) from None
    if issues:
        raise ConfigError(issues)
    where = doc.where
    for loc, message, first in _cross_check(cfg):
        if first is not None and where.line_of(first) != where.line_of(loc):
            message += f" (first at line {where.line_of(first)})"
        elif first is not None:
            message += f" (first as {where.describe(first)})"
        issues.append(ConfigIssue(filename, where.line_of(loc), where.describe(loc), message))
    if issues:
        raise ConfigError(issues)
    return cfg


def load_config(path: str | os.PathLike[str]) -> SwitchConfig:
    """Read and validate a configuration file; an empty file is an empty configuration."""
    filename = os.fspath(path)
    text = read_text(filename, ConfigError)
    return parse_config(text, filename)


# --- writing ----------------------------------------------------------------------------


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding a NEL: PyYAML writes U+0085 raw in
    plain and single-quoted scalars, and reads it back as a line break (a space)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\x85" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_config(cfg: SwitchConfig) -> str:
    """YAML that :func:`parse_config` reads back to an equal model. Secrets are in clear."""
    try:
        data = _reveal(cfg.model_dump(mode="python", exclude_none=True, warnings="error"))
    except PydanticSerializationError:
        # Its message quotes the offending value, which may be a secret: not chained.
        raise ValueError("cannot dump the configuration: a field holds a value of the wrong"
                         " type (a model built without validation?)") from None
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False)
    return HEADER + body


def save_config(cfg: SwitchConfig, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` to ``path`` atomically with mode 0600 (saveconfig).

    The text is checked to read back first, so a saved file always restores. It goes to a
    temporary file in the same directory (created 0600), which is fsynced and renamed over
    ``path``; then the directory is fsynced so the rename itself survives a crash. On any
    failure the old file is left as it was and the temporary file is removed.
    """
    target = os.fspath(path)
    text = dump_config(cfg)
    parse_config(text, f"{target} (not saved)")
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), SAVE_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
