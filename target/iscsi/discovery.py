"""SendTargets: which targets a Text Request asks about, and the text that answers it
(RFC 7143 section 13.3 and appendix C; docs/iscsi.md section 10). Sans-I/O.

The answer lists, for each target visible to the initiator, ``TargetName=<iqn>`` followed
by one ``TargetAddress=<host>:<port>,<tpgt>`` per portal, every item NUL-terminated.
IPv6 hosts are bracketed. A wildcard bind address (0.0.0.0, ::) is never advertised: the
caller passes the local address of the discovery connection instead. A long answer is
sent in several Text Responses (C bit); ``split_text`` cuts it at any byte, as RFC 7143
section 6.2 allows a key=value pair to span PDU boundaries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .keys import REJECT, SessionType, encode_text

__all__ = [
    "Portal",
    "VisibleTarget",
    "reject_text",
    "select_targets",
    "send_targets_text",
    "split_text",
]


@dataclass(frozen=True, slots=True)
class Portal:
    """A network portal of a target portal group."""

    host: str
    port: int = 3260
    tpgt: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536 or not 0 <= self.tpgt < 65536:
            raise ValueError("port must be 1..65535 and tpgt 0..65535")
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return  # a DNS name: allowed by section 13.8
        if address.is_unspecified:
            raise ValueError("a wildcard address cannot be advertised as a TargetAddress")

    @property
    def target_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port},{self.tpgt}"


@dataclass(frozen=True, slots=True)
class VisibleTarget:
    """A target this initiator may see, with the portals it is reachable on."""

    name: str
    portals: tuple[Portal, ...] = ()


def send_targets_text(targets: Iterable[VisibleTarget]) -> bytes:
    """The SendTargets answer: ``TargetName=...\\0TargetAddress=ip:port,tpgt\\0...``."""
    pairs: list[tuple[str, str]] = []
    for target in targets:
        pairs.append(("TargetName", target.name))
        pairs.extend(("TargetAddress", portal.target_address) for portal in target.portals)
    return encode_text(pairs)


def select_targets(
    value: str,
    visible: Sequence[VisibleTarget],
    *,
    session_type: SessionType,
    session_target: str | None = None,
) -> list[VisibleTarget] | None:
    """The targets a ``SendTargets=<value>`` asks about (section 13.3), or None when the
    request must be answered ``SendTargets=Reject``.

    ``All`` is for Discovery sessions; in a Normal session an empty value means the
    session's own target; an IQN means that target, if visible."""
    if value == "All":
        return list(visible) if session_type is SessionType.DISCOVERY else None
    if value == "":
        if session_type is not SessionType.NORMAL or session_target is None:
            return None
        value = session_target
    wanted = value.lower()
    return [t for t in visible if t.name.lower() == wanted]


def reject_text() -> bytes:
    return encode_text([("SendTargets", REJECT)])


def split_text(text: bytes | memoryview, limit: int) -> list[memoryview]:
    """Cut ``text`` into views of at most ``limit`` bytes (the initiator's
    MaxRecvDataSegmentLength), one per Text Response; the last one has F=1, the others
    C=1 (section 11.11.2). No copy is made."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    view = memoryview(text)
    if not view.nbytes:
        return [view]
    return [view[i : i + limit] for i in range(0, view.nbytes, limit)]
