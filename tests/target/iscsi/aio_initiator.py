"""An asyncio initiator made of the PDU classes, just enough to drive
target/iscsi/server.py over a real socket on 127.0.0.1 in the server's tests, with a real
protected ``Volume`` behind the LU."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from iscsi_served import IQN, TIMEOUT

from target.iscsi.framing import PduReader, Sender
from target.iscsi.keys import encode_text
from target.iscsi.pdu import (
    NO_TAG,
    R2T,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    SCSICommand,
    SCSIResponse,
    encode,
)
from target.iscsi.server import IscsiServer, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import Volume

INITIATOR = "iqn.2026-11.org.test:server-test"
BLOCK = 512
SIZE = 16 << 20


@dataclass
class Reply:
    status: int
    data: bytes
    sense: bytes


class Client:
    """Just enough of an initiator: login, SCSI commands with R2T handling, logout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pdus = PduReader(sender=Sender.TARGET)
        self.cmdsn = 1
        self.itt = 0
        self.statsn = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, pdu: Pdu) -> None:
        self.writer.write(b"".join(bytes(b) for b in encode(pdu)))

    async def recv(self) -> Pdu:
        while True:
            pdu = self.pdus.next_pdu()
            if pdu is not None:
                return pdu
            chunk = await asyncio.wait_for(self.reader.read(1 << 20), TIMEOUT)
            if not chunk:
                raise ConnectionError("target closed the connection")
            self.pdus.receive_data(chunk)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    async def login(self, isid: bytes = bytes.fromhex("800000000002"),
                    **keys: str) -> LoginResponse:  # fmt: skip
        """A one-step login; a second session at once needs an ``isid`` of its own."""
        text = {"InitiatorName": INITIATOR, "TargetName": IQN,
                "MaxRecvDataSegmentLength": "65536", **keys}  # fmt: skip
        if text.get("SessionType") == "Discovery":
            del text["TargetName"]
        self.send(LoginRequest(transit=True, csg=1, nsg=3, isid=isid,
                               itt=self.next_itt(), cmdsn=self.cmdsn,
                               data=encode_text(text.items())))  # fmt: skip
        answer = await self.recv()
        assert isinstance(answer, LoginResponse)
        assert answer.status_class == 0, (answer.status_class, answer.status_detail)
        self.statsn = answer.statsn + 1
        self.pdus.configure(max_recv_data_segment_length=65536)
        return answer

    async def command(self, cdb: bytes, *, read: int = 0, data: bytes = b"",
                      lun: int = 0) -> Reply:  # fmt: skip
        """One SCSI command: ``read`` bytes expected in, or ``data`` written out."""
        itt = self.start(cdb, read=read, data=data, lun=lun)
        return await self.finish(itt, data)

    def start(self, cdb: bytes, *, read: int = 0, data: bytes = b"", lun: int = 0) -> int:
        """Send a SCSI command (with its immediate data); its ITT, for ``finish``."""
        itt = self.next_itt()
        immediate = data[:8192]  # below FirstBurstLength and the target's MRDSL
        self.send(SCSICommand(itt=itt, cmdsn=self.cmdsn, exp_statsn=self.statsn,
                              read=read > 0, write=bool(data), edtl=read or len(data),
                              cdb=cdb.ljust(16, b"\0"), data=immediate, lun=lun << 48,
                              final=True))  # fmt: skip
        self.cmdsn += 1
        return itt

    async def finish(self, itt: int, data: bytes = b"") -> Reply:
        """Answer R2Ts with ``data`` and collect the reply to the command ``itt``, the
        next one the target answers."""
        got = bytearray()
        while True:
            pdu = await self.recv()
            if isinstance(pdu, R2T):
                self._answer_r2t(pdu, data)
            elif isinstance(pdu, DataIn):
                assert pdu.itt == itt and pdu.buffer_offset == len(got)
                got += pdu.data
                if pdu.has_status:
                    self.statsn = pdu.statsn + 1
                    return Reply(pdu.status, bytes(got), b"")
            elif isinstance(pdu, SCSIResponse):
                assert pdu.itt == itt
                self.statsn = pdu.statsn + 1
                return Reply(pdu.status, bytes(got), bytes(pdu.data))
            elif isinstance(pdu, NopIn) and pdu.ttt != NO_TAG:  # the target's ping
                self.send(NopOut(itt=NO_TAG, ttt=pdu.ttt, lun=pdu.lun, immediate=True,
                                 cmdsn=self.cmdsn, exp_statsn=self.statsn))  # fmt: skip
            else:
                raise AssertionError(f"unexpected {pdu!r}")

    def _answer_r2t(self, r2t: R2T, data: bytes) -> None:
        end = r2t.buffer_offset + r2t.desired_length
        for datasn, offset in enumerate(range(r2t.buffer_offset, end, 8192)):
            piece = data[offset : min(offset + 8192, end)]
            self.send(DataOut(itt=r2t.itt, ttt=r2t.ttt, lun=r2t.lun, datasn=datasn,
                              buffer_offset=offset, final=offset + len(piece) == end,
                              exp_statsn=self.statsn, data=piece))  # fmt: skip

    async def logout(self) -> None:
        self.send(LogoutRequest(itt=self.next_itt(), cmdsn=self.cmdsn, exp_statsn=self.statsn,
                                immediate=True))  # fmt: skip
        answer = await self.recv()
        assert isinstance(answer, LogoutResponse) and answer.response == 0
        assert await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""  # target closed
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


def write10(lba: int, blocks: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
TEST_UNIT_READY = bytes(6)
READ_CAPACITY10 = bytes([0x25]) + bytes(9)
SYNCHRONIZE_CACHE10 = bytes([0x35]) + bytes(9)
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + (64).to_bytes(4, "big") + bytes(2)


def new_volume(tmp_path: Path, size: int = SIZE) -> Volume:
    return Volume.create(str(tmp_path / "vol"), str(tmp_path / "primary.img"), size=size)


async def serve(volume: Volume) -> IscsiServer:
    lu = LogicalUnit(volume, uuid=uuid.UUID(bytes=volume.uuid),  # type: ignore[arg-type]
                     target_name=IQN)  # fmt: skip
    return await start_server([Target(IQN, {0: lu})], "127.0.0.1", 0, grace=5.0)



async def pipelined_reads(client: Client, reads: list[tuple[int, int]]) -> list[bytes]:
    """Send READ (10) for each (lba, bytes) at once, wait for the target to fill the socket
    buffer, then read every answer; they must come complete, GOOD and in order."""
    itts = []
    for lba, size in reads:
        itt = client.next_itt()
        itts.append(itt)
        client.send(SCSICommand(itt=itt, cmdsn=client.cmdsn, read=True, edtl=size,
                                cdb=read10(lba, size // BLOCK).ljust(16, b"\0")))  # fmt: skip
        client.cmdsn += 1
    await asyncio.sleep(0.3)  # let the target fill the socket buffer
    got: dict[int, bytearray] = {itt: bytearray() for itt in itts}
    done: list[int] = []
    while len(done) < len(itts):
        pdu = await client.recv()
        assert isinstance(pdu, DataIn)
        assert pdu.buffer_offset == len(got[pdu.itt])
        got[pdu.itt] += pdu.data
        if pdu.has_status:
            assert pdu.status == 0
            done.append(pdu.itt)
    assert done == itts
    return [bytes(got[itt]) for itt in itts]
