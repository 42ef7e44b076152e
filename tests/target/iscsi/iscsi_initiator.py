"""A scripted initiator and a fake LU for driving ``target.iscsi.connection.Connection``.

``FakeLu`` is a *test double* for ``target.scsi.lu.LogicalUnit``: it understands TEST UNIT
READY, READ(10) and WRITE(10) on an in-memory medium and one made-up opcode (0xC0) that
answers CHECK CONDITION with data, enough to exercise the transport. The real LU is tested
on its own (tests/target/scsi) and once through a Connection here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target.iscsi.connection import Connection, NopPolicy
from target.iscsi.events import Event, ExecuteCommand, LoginComplete
from target.iscsi.framing import PduReader, Sender
from target.iscsi.keys import TargetOffer, encode_text
from target.iscsi.login import PortalConfig, TargetEntry
from target.iscsi.pdu import LoginRequest, LoginResponse, Pdu, SCSICommand, encode
from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.sense import ScsiStatus

IQN = "iqn.2026-11.org.cdpswitch:vol0"
INITIATOR = "iqn.2026-11.org.test:init"
BLOCK = 512
CHECK_WITH_DATA = 0xC0
SENSE = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])


def portal(window: int = 128) -> PortalConfig:
    """One target; the offer allows several outstanding R2Ts (the default offer says 1)."""
    numbers = {**TargetOffer().numbers, "MaxOutstandingR2T": 4}
    return PortalConfig(targets={IQN: TargetEntry(IQN)}, cmd_window=window,
                        offer=TargetOffer(numbers=numbers))  # fmt: skip


class FakeLu:
    """Test double for the SCSI layer's LogicalUnit (see the module docstring)."""

    def __init__(self, blocks: int = 256) -> None:
        self.media = bytearray(bytes(range(256)) * (blocks * BLOCK // 256))
        self.commands: list[ScsiCommand] = []

    def execute(self, cmd: ScsiCommand) -> ScsiResponse:
        self.commands.append(cmd)
        cdb = bytes(cmd.cdb)
        edtl = cmd.expected_length
        if cdb[0] == CHECK_WITH_DATA:
            return ScsiResponse(ScsiStatus.CHECK_CONDITION, data_in=b"partial", sense=SENSE)
        if cdb[0] not in (0x28, 0x2A):
            return ScsiResponse(ScsiStatus.GOOD, residual_underflow=edtl)
        lba, count = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        start, wanted = lba * BLOCK, count * BLOCK
        over, under = max(wanted - edtl, 0), max(edtl - wanted, 0)
        if cdb[0] == 0x28:
            data = memoryview(self.media)[start : start + min(wanted, edtl)]
            return ScsiResponse(ScsiStatus.GOOD, data_in=data, residual_overflow=over,
                                residual_underflow=under)  # fmt: skip
        got = bytes(cmd.data_out or b"")[: min(wanted, edtl)]
        got = got[: len(got) - len(got) % BLOCK]
        self.media[start : start + len(got)] = got
        return ScsiResponse(ScsiStatus.GOOD, residual_overflow=over, residual_underflow=under)


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def write10(lba: int, blocks: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


class Initiator:
    """Drives a Connection: encodes PDUs into it, decodes what it sends back, and plays the
    shell (runs ExecuteCommand on the LU unless ``auto`` is False)."""

    def __init__(self, conn: Connection, *, mrdsl: int = 262144, auto: bool = True) -> None:
        self.conn = conn
        self.reader = PduReader(sender=Sender.TARGET)
        self.mrdsl = mrdsl
        self.auto = auto
        self.cmdsn = 1
        self.itt = 0x100
        self.digests = (False, False)
        self.events: list[Event] = []
        self.pending: list[ExecuteCommand] = []

    def raw(self, data: bytes, chunk: int | None = None) -> list[Event]:
        events: list[Event] = []
        step = chunk or max(len(data), 1)
        for i in range(0, len(data), step):
            events += self.conn.receive_data(memoryview(data[i : i + step]))
        self.events += events
        for event in events:
            if isinstance(event, ExecuteCommand):
                self.pending.append(event)
        if self.auto:
            self.run_pending()
        return events

    def send(self, pdu: Pdu, chunk: int | None = None) -> list[Event]:
        hd, dd = self.digests
        return self.raw(b"".join(bytes(b) for b in encode(pdu, header_digest=hd,
                                                          data_digest=dd)), chunk)  # fmt: skip

    def run_pending(self) -> None:
        while self.pending:
            event = self.pending.pop(0)
            lu = event.lu
            execute = getattr(lu, "execute", None)
            if execute is None:  # no LU: the real shell calls execute_without_lu
                response = ScsiResponse(ScsiStatus.CHECK_CONDITION, sense=SENSE)
            else:
                response = execute(event.command)
            if response.flush_before_status:  # the real shell does this in a worker thread
                response = lu.complete_flush(event.command, response)  # type: ignore[union-attr]
            self.conn.complete(event.task_tag, response)

    def replies(self) -> list[Pdu]:
        out: list[Pdu] = []
        data = b"".join(bytes(b) for b in self.conn.data_to_send())
        self.reader.receive_data(data)
        while (pdu := self.reader.next_pdu()) is not None:
            out.append(pdu)
        return out

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def command(self, cdb: bytes, **fields: Any) -> SCSICommand:
        """A non-immediate SCSI command with the next CmdSN (consumed)."""
        fields.setdefault("cmdsn", self.cmdsn)
        if not fields.get("immediate"):
            self.cmdsn += 1
        return SCSICommand(itt=self.next_itt(), cdb=cdb, **fields)

    def login(self, keys: Mapping[str, str] | None = None) -> LoginResponse:
        text = {"InitiatorName": INITIATOR, "TargetName": IQN,
                "MaxRecvDataSegmentLength": str(self.mrdsl)}  # fmt: skip
        text.update(keys or {})
        if text.get("SessionType") == "Discovery":
            del text["TargetName"]
        request = LoginRequest(transit=True, csg=1, nsg=3, isid=bytes.fromhex("800000000001"),
                               itt=1, cmdsn=self.cmdsn, data=encode_text(text.items()))  # fmt: skip
        events = self.send(request)
        (answer,) = self.replies()
        assert isinstance(answer, LoginResponse)
        if answer.status_class == 0:
            assert any(isinstance(e, LoginComplete) for e in events)
            params = self.conn.params
            self.digests = (params.header_digest, params.data_digest)
            self.reader.configure(max_recv_data_segment_length=self.mrdsl,
                                  header_digest=params.header_digest,
                                  data_digest=params.data_digest)  # fmt: skip
        return answer


def connect(
    lu: object | None = None, *, window: int = 128, mrdsl: int = 262144, auto: bool = True,
    keys: Mapping[str, str] | None = None, nop: NopPolicy | None = None,
    carry_limit: int = 0,
) -> Initiator:
    """A logged-in initiator on a Connection whose LUN 0 is ``lu`` (a FakeLu by default)."""
    unit = FakeLu() if lu is None else lu
    conn = Connection(portal(window), luns=lambda target: {0: unit}, initial_statsn=1000,
                      nop=nop, carry_limit=carry_limit)  # fmt: skip
    ini = Initiator(conn, mrdsl=mrdsl, auto=auto)
    answer = ini.login(keys)
    assert answer.status_class == 0 and answer.transit
    return ini
