"""The asyncio shell (target/iscsi/server.py) over real sockets on 127.0.0.1.

(a) In-process: a tiny asyncio initiator built from the PDU classes talks to
    ``start_server`` on port 0, with a real protected ``Volume`` behind the LU.
(b) Real clients (libiscsi's iscsi-ls / iscsi-inq / iscsi-readcapacity16, QEMU's qemu-io and
    qemu-img) against ``python -m switch.iscsi_serve`` in a subprocess. A missing client is a
    failure that says to run ``make deps``, never a silent skip.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from iscsi_served import CLIENTS, IQN, TIMEOUT, Served, require, run, start_served

import target.iscsi.server as server_module
from target.iscsi.framing import PduReader, Sender
from target.iscsi.keys import encode_text, parse_text
from target.iscsi.pdu import (
    NO_TAG,
    R2T,
    Buffer,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    OutBuffer,
    Pdu,
    SCSICommand,
    SCSIResponse,
    TextRequest,
    TextResponse,
    encode,
)
from target.iscsi.server import IscsiServer, Target, _remainder, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import FileBlockDevice, Volume
from volume_manager.blockdev import FileSpan

INITIATOR = "iqn.2026-11.org.test:server-test"
BLOCK = 512
SIZE = 16 << 20


# --- (a) an asyncio initiator made of the PDU classes ---------------------------------------


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

    async def login(self, **keys: str) -> LoginResponse:
        text = {"InitiatorName": INITIATOR, "TargetName": IQN,
                "MaxRecvDataSegmentLength": "65536", **keys}  # fmt: skip
        if text.get("SessionType") == "Discovery":
            del text["TargetName"]
        self.send(LoginRequest(transit=True, csg=1, nsg=3, isid=bytes.fromhex("800000000002"),
                               itt=self.next_itt(), cmdsn=self.cmdsn,
                               data=encode_text(text.items())))  # fmt: skip
        answer = await self.recv()
        assert isinstance(answer, LoginResponse)
        assert answer.status_class == 0, (answer.status_class, answer.status_detail)
        self.statsn = answer.statsn + 1
        self.pdus.configure(max_recv_data_segment_length=65536)
        return answer

    async def command(self, cdb: bytes, *, read: int = 0, data: bytes = b"") -> Reply:
        """One SCSI command: ``read`` bytes expected in, or ``data`` written out."""
        itt = self.next_itt()
        immediate = data[:8192]  # below FirstBurstLength and the target's MRDSL
        self.send(SCSICommand(itt=itt, cmdsn=self.cmdsn, exp_statsn=self.statsn,
                              read=read > 0, write=bool(data), edtl=read or len(data),
                              cdb=cdb.ljust(16, b"\0"), data=immediate,
                              final=True))  # fmt: skip
        self.cmdsn += 1
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


def test_login_inquiry_capacity_write_read_sync(tmp_path: Path) -> None:
    volume = new_volume(tmp_path)
    payload = os.urandom(256 << 10)  # past FirstBurstLength: immediate data, then R2Ts

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        inquiry = await client.command(INQUIRY, read=96)
        assert inquiry.status == 0 and inquiry.data[8:16] == b"CDPSWTCH"
        first = await client.command(TEST_UNIT_READY)  # a new nexus: POWER ON unit attention
        assert first.status == 0x02 and first.sense[2 + 2] & 0x0F == 0x06
        capacity = await client.command(READ_CAPACITY10, read=8)
        assert capacity.status == 0
        assert capacity.data == (SIZE // BLOCK - 1).to_bytes(4, "big") + BLOCK.to_bytes(4, "big")
        blocks = len(payload) // BLOCK
        assert (await client.command(write10(64, blocks), data=payload)).status == 0
        back = await client.command(read10(64, blocks), read=len(payload))
        assert back.status == 0 and back.data == payload
        assert (await client.command(SYNCHRONIZE_CACHE10)).status == 0  # through the pool
        await client.logout()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    with Volume.open(str(tmp_path / "vol")) as again:  # the data went through the engine
        assert again.read(64, len(payload) // BLOCK) == payload


def test_discovery_lists_the_target_at_the_address_used(tmp_path: Path) -> None:
    volume = new_volume(tmp_path)

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login(SessionType="Discovery")
        client.send(TextRequest(itt=client.next_itt(), cmdsn=client.cmdsn, ttt=NO_TAG,
                                data=b"SendTargets=All\0"))  # fmt: skip
        answer = await client.recv()
        assert isinstance(answer, TextResponse)
        assert parse_text(answer.data) == {"TargetName": IQN,
                                           "TargetAddress": f"127.0.0.1:{server.port},1"}
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()


def test_unknown_lun_is_answered_without_an_lu(tmp_path: Path) -> None:
    volume = new_volume(tmp_path)

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        itt = client.next_itt()
        client.send(SCSICommand(itt=itt, cmdsn=client.cmdsn, read=True, edtl=64, lun=1 << 48,
                                cdb=REPORT_LUNS.ljust(16, b"\0")))  # fmt: skip
        answer = await client.recv()
        assert isinstance(answer, DataIn) and answer.has_status and answer.status == 0
        assert bytes(answer.data[:16]) == (8).to_bytes(4, "big") + bytes(12)  # LUN 0 only
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()


async def _pipelined_reads(client: Client, reads: list[tuple[int, int]]) -> list[bytes]:
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


def test_pipelined_reads_larger_than_the_socket_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads nothing until all commands are in: sendmsg sends part of a batch,
    the transport queues the rest and reading pauses; everything arrives, in order."""
    partial: list[int] = []

    def counting(buffers: Sequence[Buffer], sent: int) -> list[Buffer]:
        rest = _remainder(buffers, sent)
        if rest:
            partial.append(sent)
        return rest

    monkeypatch.setattr(server_module, "_remainder", counting)
    volume = new_volume(tmp_path)
    content = os.urandom(4 << 20)
    volume.write(0, content)

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)  # consume the unit attention
        got = await _pipelined_reads(client, [(0, len(content))] * 4)
        assert all(data == content for data in got)
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    assert partial, "the socket buffer never filled: the partial-send path was not exercised"


def test_large_reads_go_out_as_file_spans_even_when_the_socket_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of applied data leave by sendfile (FileSpan); when the socket buffer fills in
    the middle of one, the rest is read into bytes for the transport. The client reads
    nothing until all commands are in, then gets every byte, in order."""
    spans: list[int] = []
    leftovers: list[int] = []
    real_read_span, real_materialized = Volume.read_span, server_module._materialized

    def read_span(self: Volume, lba: int, count: int) -> FileSpan | None:
        span = real_read_span(self, lba, count)
        if span is not None:
            spans.append(span.length)
        return span

    def materialized(buffers: Sequence[OutBuffer], copy_views: bool) -> list[Buffer]:
        leftovers.append(sum(1 for b in buffers if isinstance(b, FileSpan)))
        return real_materialized(buffers, copy_views)

    monkeypatch.setattr(Volume, "read_span", read_span)
    monkeypatch.setattr(server_module, "_materialized", materialized)
    volume = new_volume(tmp_path)
    content = os.urandom(4 << 20)
    volume.write(0, content)
    volume.flush()  # applied: the primary holds the data, so reads may be spans

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)  # consume the unit attention
        # A small read between large ones: bytes, in order with the spans.
        reads = [(0, len(content))] * 3 + [(1, BLOCK)] + [(0, len(content))] * 3
        got = await _pipelined_reads(client, reads)
        assert got == [content[lba * BLOCK : lba * BLOCK + n] for lba, n in reads]
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    assert len(spans) == 6 and all(n == len(content) for n in spans)
    assert any(leftovers), "the socket never filled during a span: the fallback was not run"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_small_reads_go_out_as_views_of_the_mapping_even_when_the_socket_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Small reads of applied data leave as views of the primary's mapping (FileMap), which
    only the kernel reads. When the socket fills, asyncio's transport, which joins what it
    holds in user space, gets copies made by the kernel (copy_mapped); uvloop's, which
    keeps the buffers, gets the views. Either way every byte arrives, in order."""
    views: list[int] = []
    copies: list[int] = []
    real_read_view, real_copy = Volume.read_view, server_module.copy_mapped

    def read_view(self: Volume, lba: int, count: int) -> memoryview | None:
        view = real_read_view(self, lba, count)
        if view is not None:
            views.append(view.nbytes)
        return view

    def copy_mapped(view: memoryview) -> bytes:
        copies.append(view.nbytes)
        return real_copy(view)

    monkeypatch.setattr(Volume, "read_view", read_view)
    monkeypatch.setattr(server_module, "copy_mapped", copy_mapped)
    volume = new_volume(tmp_path)
    content = os.urandom(4 << 20)
    volume.write(0, content)
    volume.flush()  # applied: the primary holds the data, so reads may be views
    step = 32 << 10
    reads = [(offset // BLOCK, step) for offset in range(0, len(content), step)] * 2

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)  # consume the unit attention
        got = await _pipelined_reads(client, reads)
        assert got == [content[lba * BLOCK : lba * BLOCK + n] for lba, n in reads]
        await client.close()
        server.close()
        await server.wait_closed()

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(scenario())
    else:
        asyncio.run(scenario())
    volume.close()
    assert len(views) == len(reads) and all(n == step for n in views)
    if loop == "uvloop":
        assert not copies
    else:
        assert copies, "the socket never filled: the transport's fallback was not run"


def test_a_span_whose_volume_closed_drops_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULT INJECTION (the race cannot be timed for real): the volume closes between the
    read and the send of its span. The target must drop the connection, never send the
    bytes of whatever file took the descriptor, nor zeros with GOOD status."""
    real_read_span = Volume.read_span

    def read_span_then_close(self: Volume, lba: int, count: int) -> FileSpan | None:
        span = real_read_span(self, lba, count)
        assert span is not None
        span.source.close()  # what Volume.close does to it from another thread
        return span

    monkeypatch.setattr(Volume, "read_span", read_span_then_close)
    volume = new_volume(tmp_path)
    volume.write(0, b"\x5a" * (1 << 20))
    volume.flush()

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)
        with pytest.raises(ConnectionError):
            reply = await client.command(read10(0, (1 << 20) // BLOCK), read=1 << 20)
            raise AssertionError(f"answered {reply.status} with {len(reply.data)} bytes")
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()


@pytest.mark.parametrize("window", [0.0, 0.05])
def test_the_loop_polls_for_its_window_after_a_command_then_sleeps(tmp_path: Path,
                                                                    window: float) -> None:
    """After a receive the loop keeps polling for the poll window, and no longer: an idle
    target burns no CPU. A window of 0 never polls."""
    volume = new_volume(tmp_path)

    async def scenario() -> None:
        lu = LogicalUnit(volume, uuid=uuid.UUID(bytes=volume.uuid),  # type: ignore[arg-type]
                         target_name=IQN)  # fmt: skip
        server = await start_server([Target(IQN, {0: lu})], "127.0.0.1", 0, grace=5.0,
                                    poll_window=window)  # fmt: skip
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)
        assert server.polling == (window > 0)  # the answer came back inside the window
        await asyncio.sleep(window + 0.05)
        assert not server.polling
        before = time.process_time()
        await asyncio.sleep(0.3)  # idle: a loop still polling would use most of this
        assert time.process_time() - before < 0.1
        reply = await client.command(read10(0, 8), read=8 * BLOCK)
        assert reply.status == 0 and server.polling == (window > 0)
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()


def test_a_receive_of_several_commands_starts_no_polling(tmp_path: Path) -> None:
    """A host with several commands in flight sends the next ones without our polling
    (POLL_AFTER_BUFFERS): a receive that answers more than one command leaves the loop
    free to sleep, while one that answers a single command polls."""
    volume = new_volume(tmp_path)

    async def scenario() -> None:
        lu = LogicalUnit(volume, uuid=uuid.UUID(bytes=volume.uuid),  # type: ignore[arg-type]
                         target_name=IQN)  # fmt: skip
        server = await start_server([Target(IQN, {0: lu})], "127.0.0.1", 0, grace=5.0,
                                    poll_window=0.2)  # fmt: skip
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)
        await asyncio.sleep(0.25)
        assert not server.polling
        itts, wire = [], b""
        for lba in range(4):  # four reads in one segment: one receive
            itts.append(client.next_itt())
            wire += b"".join(bytes(b) for b in encode(SCSICommand(
                itt=itts[-1], cmdsn=client.cmdsn, read=True, edtl=BLOCK,
                cdb=read10(lba, 1).ljust(16, b"\0"))))  # fmt: skip
            client.cmdsn += 1
        client.writer.write(wire)
        done = []
        while len(done) < len(itts):
            pdu = await client.recv()
            assert isinstance(pdu, DataIn) and pdu.has_status and pdu.status == 0
            done.append(pdu.itt)
        assert done == itts and not server.polling
        reply = await client.command(read10(0, 1), read=BLOCK)
        assert reply.status == 0 and server.polling
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()


class SlowFlushDevice(FileBlockDevice):
    """A file whose flush waits for the test: shows the flush runs off the event loop."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def flush(self) -> None:
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        super().flush()


def test_flush_runs_in_a_thread_while_commands_go_on(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    device = SlowFlushDevice(image)
    lu = LogicalUnit(device, uuid=uuid.uuid4(), target_name=IQN)

    async def scenario() -> None:
        server = await start_server([Target(IQN, {0: lu})], "127.0.0.1", 0, grace=5.0)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)  # consume the unit attention
        sync_itt = client.next_itt()
        client.send(SCSICommand(itt=sync_itt, cmdsn=client.cmdsn,
                                cdb=SYNCHRONIZE_CACHE10.ljust(16, b"\0")))  # fmt: skip
        client.cmdsn += 1
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, device.entered.wait, TIMEOUT)
        read = await client.command(read10(0, 8), read=8 * BLOCK)  # while the flush waits
        assert read.status == 0 and read.data == bytes(8 * BLOCK)
        device.release.set()
        answer = await client.recv()
        assert isinstance(answer, SCSIResponse) and answer.itt == sync_itt
        assert answer.status == 0
        await client.logout()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(scenario())
    finally:
        device.release.set()
        device.close()


def test_shutdown_closes_connections(tmp_path: Path) -> None:
    volume = new_volume(tmp_path)

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
        await client.close()
        with pytest.raises(OSError):
            await Client.connect(server.port)

    asyncio.run(scenario())
    volume.close()


def test_remainder_after_a_partial_sendmsg() -> None:
    buffers: list[Buffer] = [b"abc", memoryview(b"defg"), bytearray(b"hi")]
    assert _remainder(buffers, 0) == buffers
    assert [bytes(b) for b in _remainder(buffers, 5)] == [b"fg", b"hi"]
    assert [bytes(b) for b in _remainder(buffers, 7)] == [b"hi"]
    assert _remainder(buffers, 9) == []


# --- (b) real clients against the server in a subprocess -------------------------------------

@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    for tool in CLIENTS:
        require(tool)
    server = start_served(tmp_path, 64 << 20)
    try:
        yield server
    finally:
        server.stop()


def test_iscsi_ls_discovers_the_target(served: Served) -> None:
    out = run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{served.port}")
    assert f"Target:{IQN} Portal:127.0.0.1:{served.port},1" in out
    assert "Lun:0" in out and "DIRECT_ACCESS" in out


def test_iscsi_inq_and_readcapacity16(served: Served) -> None:
    inq = run("iscsi-inq", served.url)
    assert "Vendor:CDPSWTCH" in inq and "Product:CDP VOLUME" in inq
    capacity = run("iscsi-readcapacity16", served.url)
    assert f"Total size:{64 << 20}" in capacity
    assert "LOGICAL BLOCK LENGTH IN BYTES:512" in capacity


def test_qemu_io_writes_and_verifies_a_pattern(served: Served) -> None:
    out = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M",
              served.url)  # fmt: skip
    assert "wrote 1048576/1048576" in out and "read 1048576/1048576" in out
    assert "Pattern verification failed" not in out


def test_qemu_img_round_trip_and_clean_shutdown(served: Served, tmp_path: Path) -> None:
    source, back = tmp_path / "random.img", tmp_path / "back.img"
    data = os.urandom(8 << 20)
    source.write_bytes(data)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), served.url)
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", served.url, str(back))
    assert back.read_bytes()[: len(data)] == data
    assert served.stop() == 0  # SIGTERM: graceful shutdown, volume closed cleanly
    with Volume.open(str(served.directory / "vol")) as volume:
        assert volume.read(0, len(data) // BLOCK) == data
