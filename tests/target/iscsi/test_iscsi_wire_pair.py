"""An initiator and the target's sans-I/O core talking over a fake link (h11's
ConnectionPair idea): login, then digests switched on, then discovery's SendTargets."""

from __future__ import annotations

from target.iscsi.discovery import (
    Portal,
    VisibleTarget,
    select_targets,
    send_targets_text,
    split_text,
)
from target.iscsi.framing import PduReader, Sender
from target.iscsi.keys import SessionType, encode_text, parse_text
from target.iscsi.login import LoginMachine, PortalConfig, TargetEntry
from target.iscsi.pdu import (
    NO_TAG,
    LoginRequest,
    LoginResponse,
    NopIn,
    NopOut,
    Pdu,
    TextRequest,
    TextResponse,
    encode,
)

IQN = "iqn.2026-11.org.cdpswitch:vol0"
PORTAL = PortalConfig(targets={IQN: TargetEntry(IQN)})


class Link:
    """Both ends' readers; ``send`` encodes a PDU and delivers it a few bytes at a time."""

    def __init__(self) -> None:
        self.to_target = PduReader(sender=Sender.INITIATOR)
        self.to_initiator = PduReader(sender=Sender.TARGET)
        self.digests = False

    def send(self, pdu: Pdu, reader: PduReader) -> Pdu:
        raw = b"".join(bytes(b) for b in encode(pdu, header_digest=self.digests,
                                                   data_digest=self.digests))  # fmt: skip
        got: list[Pdu] = []
        for i in range(0, len(raw), 7):
            reader.receive_data(raw[i : i + 7])
            while (p := reader.next_pdu()) is not None:
                got.append(p)
        assert len(got) == 1
        return got[0]

    def digests_on(self, initiator_mrdsl: int, target_mrdsl: int) -> None:
        self.digests = True
        self.to_target.configure(max_recv_data_segment_length=target_mrdsl,
                                 header_digest=True, data_digest=True)  # fmt: skip
        self.to_initiator.configure(max_recv_data_segment_length=initiator_mrdsl,
                                    header_digest=True, data_digest=True)  # fmt: skip


def login(keys: dict[str, str]) -> tuple[LoginMachine, Link]:
    machine = LoginMachine(PORTAL, initial_statsn=1)
    wire = Link()
    request = LoginRequest(transit=True, csg=1, nsg=3, isid=bytes.fromhex("800000000001"),
                           itt=1, cmdsn=1, data=encode_text(keys.items()))  # fmt: skip
    received = wire.send(request, wire.to_target)
    assert isinstance(received, LoginRequest)
    answer = wire.send(machine.receive(received), wire.to_initiator)
    assert isinstance(answer, LoginResponse) and answer.transit and answer.status_class == 0
    return machine, wire


def test_login_then_pings_with_digests() -> None:
    machine, wire = login({
        "InitiatorName": "iqn.x:init", "TargetName": IQN, "HeaderDigest": "CRC32C,None",
        "DataDigest": "CRC32C,None", "MaxRecvDataSegmentLength": "65536",
    })  # fmt: skip
    result = machine.result
    assert result is not None
    params = result.parameters
    assert params.header_digest and params.data_digest
    wire.digests_on(params.initiator_max_recv_dsl, params.target_max_recv_dsl)
    ping = wire.send(NopOut(itt=5, cmdsn=1, data=b"x" * 10000), wire.to_target)
    assert isinstance(ping, NopOut) and bytes(ping.data) == b"x" * 10000
    pong = NopIn(itt=ping.itt, ttt=NO_TAG, statsn=result.next_statsn, exp_cmdsn=2,
                 max_cmdsn=129, data=ping.data)  # fmt: skip
    assert wire.send(pong, wire.to_initiator) == pong


def test_discovery_send_targets_over_the_wire() -> None:
    machine, wire = login({"InitiatorName": "iqn.x:init", "SessionType": "Discovery"})
    assert machine.result is not None
    assert machine.result.session_type is SessionType.DISCOVERY
    request = wire.send(TextRequest(itt=2, cmdsn=1, data=b"SendTargets=All\0"), wire.to_target)
    assert isinstance(request, TextRequest)
    asked = parse_text(request.data)["SendTargets"]
    visible = [VisibleTarget(IQN, (Portal("127.0.0.1", 3260, 1),))]
    chosen = select_targets(asked, visible, session_type=machine.result.session_type)
    assert chosen is not None
    pieces = split_text(send_targets_text(chosen), 8192)
    assert len(pieces) == 1
    reply = wire.send(TextResponse(itt=request.itt, data=pieces[0]), wire.to_initiator)
    assert isinstance(reply, TextResponse)
    assert parse_text(reply.data) == {"TargetName": IQN, "TargetAddress": "127.0.0.1:3260,1"}
