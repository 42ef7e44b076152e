"""SendTargets text (RFC 7143 section 13.3, appendix C)."""

from __future__ import annotations

import pytest

from target.iscsi.discovery import (
    Portal,
    VisibleTarget,
    reject_text,
    select_targets,
    send_targets_text,
    split_text,
)
from target.iscsi.keys import SessionType, parse_text

T1 = VisibleTarget("iqn.2024-01.test:tgt1", (Portal("127.0.0.1", 13260, 1),))
T2 = VisibleTarget("iqn.2024-01.test:tgt2", (Portal("10.0.0.1"), Portal("fe80::1", 3261, 2)))


def test_send_targets_text_matches_tgt() -> None:
    assert send_targets_text([T1, T2]) == (
        b"TargetName=iqn.2024-01.test:tgt1\0TargetAddress=127.0.0.1:13260,1\0"
        b"TargetName=iqn.2024-01.test:tgt2\0TargetAddress=10.0.0.1:3260,1\0"
        b"TargetAddress=[fe80::1]:3261,2\0"
    )
    assert send_targets_text([VisibleTarget("iqn.x")]) == b"TargetName=iqn.x\0"
    assert send_targets_text([]) == b""


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_wildcard_addresses_are_never_advertised(host: str) -> None:
    with pytest.raises(ValueError):
        Portal(host)


@pytest.mark.parametrize(("port", "tpgt"), [(0, 1), (65536, 1), (3260, -1)])
def test_portal_ranges(port: int, tpgt: int) -> None:
    with pytest.raises(ValueError):
        Portal("127.0.0.1", port, tpgt)


def test_dns_names_are_allowed() -> None:
    assert Portal("storage.example").target_address == "storage.example:3260,1"


@pytest.mark.parametrize(
    ("value", "session", "own", "expected"),
    [
        ("All", SessionType.DISCOVERY, None, [T1, T2]),
        ("All", SessionType.NORMAL, T1.name, None),
        ("", SessionType.NORMAL, T1.name, [T1]),
        ("", SessionType.DISCOVERY, None, None),
        ("IQN.2024-01.TEST:TGT2", SessionType.DISCOVERY, None, [T2]),
        ("iqn.2024-01.test:hidden", SessionType.DISCOVERY, None, []),
    ],
)
def test_select_targets(
    value: str, session: SessionType, own: str | None, expected: list[VisibleTarget] | None
) -> None:
    got = select_targets(value, [T1, T2], session_type=session, session_target=own)
    assert got == expected


def test_reject_text() -> None:
    assert parse_text(reject_text()) == {"SendTargets": "Reject"}


def test_split_text_cuts_without_copying() -> None:
    text = send_targets_text([T1, T2] * 50)
    pieces = split_text(text, 512)
    assert all(p.nbytes <= 512 for p in pieces)
    assert b"".join(pieces) == text
    assert all(p.obj is text for p in pieces)
    assert [p.nbytes for p in split_text(b"", 512)] == [0]
    with pytest.raises(ValueError):
        split_text(text, 0)
