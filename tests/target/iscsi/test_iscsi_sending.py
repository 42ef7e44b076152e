"""The send path (target/iscsi/sending.py) over real sockets on 127.0.0.1:
batches larger than the socket buffer, file spans and views of the mapping, and the send
backlog that holds what the socket did not take."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aio_initiator import (
    BLOCK,
    TEST_UNIT_READY,
    Client,
    new_volume,
    pipelined_reads,
    read10,
    serve,
)
from iscsi_served import IQN, TIMEOUT

import target.iscsi.sending as sending
from target.iscsi.pdu import (
    Buffer,
    DataIn,
    LogoutRequest,
    LogoutResponse,
    OutBuffer,
    SCSICommand,
)
from target.iscsi.sending import _remainder
from target.iscsi.server import IscsiServer, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import Volume
from volume_manager.blockdev import FileSpan, SpanSource


class BacklogSpy:
    """Counts what the send backlog did: file spans taken up again after the socket
    filled in the middle of one, writable callbacks, and spans read into bytes for the
    transport."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resumed_spans = 0
        self.drains = 0
        self.materialized_spans = 0
        real_push, real_materialized = sending._push, sending._materialized
        real_drain = sending.Sender._drain

        def push(sock: socket.socket, queue: collections.deque[OutBuffer]) -> int:
            resumed = bool(queue) and isinstance(queue[0], FileSpan)
            sent = real_push(sock, queue)
            if resumed and sent:
                self.resumed_spans += 1
            return sent

        def drain(sender: sending.Sender) -> None:
            self.drains += 1
            real_drain(sender)

        def materialized(buffers: Sequence[OutBuffer], copy_views: bool) -> list[Buffer]:
            self.materialized_spans += sum(1 for b in buffers if isinstance(b, FileSpan))
            return real_materialized(buffers, copy_views)

        monkeypatch.setattr(sending, "_push", push)
        monkeypatch.setattr(sending.Sender, "_drain", drain)
        monkeypatch.setattr(sending, "_materialized", materialized)


def applied_volume(tmp_path: Path, size: int = 4 << 20) -> tuple[Volume, bytes]:
    """A volume whose first ``size`` bytes are random and applied (reads may be spans)."""
    volume = new_volume(tmp_path)
    content = os.urandom(size)
    volume.write(0, content)
    volume.flush()
    return volume, content


def direct_read_sizes(monkeypatch: pytest.MonkeyPatch, method: str) -> list[int]:
    """Wrap ``Volume.<method>`` (``read_span`` or ``read_view``): the sizes of the spans or
    views it handed out, in order."""
    sizes: list[int] = []
    real = getattr(Volume, method)

    def wrapped(self: Volume, lba: int, count: int) -> FileSpan | memoryview | None:
        got = real(self, lba, count)
        if got is not None:
            sizes.append(got.nbytes)
        return got

    monkeypatch.setattr(Volume, method, wrapped)
    return sizes


def read_pipelined(volume: Volume, reads: list[tuple[int, int]], content: bytes,
                   loop: str = "asyncio") -> None:  # fmt: skip
    """Serve ``volume`` under ``loop`` (asyncio or uvloop); one session sends ``reads``
    (LBA, bytes) at once and reads nothing until the socket is full; every answer must
    be ``content``'s bytes, in order."""

    async def scenario() -> None:
        server = await serve(volume)
        client = await Client.connect(server.port)
        await client.login()
        await client.command(TEST_UNIT_READY)  # consume the unit attention
        got = await pipelined_reads(client, reads)
        assert got == [content[lba * BLOCK : lba * BLOCK + n] for lba, n in reads]
        await client.close()
        server.close()
        await server.wait_closed()

    try:
        if loop == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(scenario())
        else:
            asyncio.run(scenario())
    finally:
        volume.close()


def test_pipelined_reads_larger_than_the_socket_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads nothing until all commands are in: sendmsg sends part of a batch,
    the rest waits in the send backlog; everything arrives, in order."""
    partial: list[int] = []

    def counting(buffers: Sequence[Buffer], sent: int) -> list[Buffer]:
        rest = _remainder(buffers, sent)
        if rest:
            partial.append(sent)
        return rest

    monkeypatch.setattr(sending, "_remainder", counting)
    volume = new_volume(tmp_path)
    content = os.urandom(4 << 20)
    volume.write(0, content)

    read_pipelined(volume, [(0, len(content))] * 4, content)
    assert partial, "the socket buffer never filled: the partial-send path was not exercised"


def test_large_reads_go_out_as_file_spans_even_when_the_socket_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of applied data leave by sendfile (FileSpan); when the socket buffer fills in
    the middle of one, the rest waits in the send backlog as a span and goes out by
    sendfile once the socket is writable, never read into bytes. The client reads
    nothing until all commands are in, then gets every byte, in order."""
    spans = direct_read_sizes(monkeypatch, "read_span")
    spy = BacklogSpy(monkeypatch)
    volume, content = applied_volume(tmp_path)  # the primary holds it: reads may be spans

    # A small read between large ones: bytes, in order with the spans.
    reads = [(0, len(content))] * 3 + [(1, BLOCK)] + [(0, len(content))] * 3
    read_pipelined(volume, reads, content)
    assert len(spans) == 6 and all(n == len(content) for n in spans)
    assert spy.resumed_spans, "no span was taken up again: the socket never filled in one"
    assert spy.materialized_spans == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_small_reads_go_out_as_views_of_the_mapping_even_when_the_socket_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Small reads of applied data leave as views of the primary's mapping (FileMap), which
    only the kernel reads. When the socket fills, the views wait in the send backlog
    (asyncio's loop, where we write the socket ourselves) or in uvloop's transport,
    which keeps the buffers; neither copies them. Every byte arrives, in order."""
    views = direct_read_sizes(monkeypatch, "read_view")
    copies: list[int] = []
    real_copy = sending.copy_mapped

    def copy_mapped(view: memoryview) -> bytes:
        copies.append(view.nbytes)
        return real_copy(view)

    monkeypatch.setattr(sending, "copy_mapped", copy_mapped)
    spy = BacklogSpy(monkeypatch)
    volume, content = applied_volume(tmp_path)  # the primary holds it: reads may be views
    step = 32 << 10
    reads = [(offset // BLOCK, step) for offset in range(0, len(content), step)] * 2
    read_pipelined(volume, reads, content, loop)
    assert len(views) == len(reads) and all(n == step for n in views)
    assert not copies
    if loop == "asyncio":
        assert spy.drains, "the socket never filled: the backlog was not used"


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


# --- the send backlog ------------------------------------------------------------------------


def send_reads(client: Client, count: int, size: int) -> list[int]:
    """Send ``count`` READ (10) of ``size`` bytes at LBA 0 without waiting; their ITTs."""
    itts = []
    for _ in range(count):
        itt = client.next_itt()
        itts.append(itt)
        client.send(SCSICommand(itt=itt, cmdsn=client.cmdsn, read=True, edtl=size,
                                cdb=read10(0, size // BLOCK).ljust(16, b"\0")))  # fmt: skip
        client.cmdsn += 1
    return itts


async def backlogged(server: IscsiServer, size: int,
                     isid: str = "800000000002") -> tuple[Client, list[int]]:  # fmt: skip
    """A new session that sends four reads of ``size`` bytes at once and reads nothing:
    once this returns, the socket is full and the rest waits in the backlog. The
    session and the reads' ITTs."""
    client = await Client.connect(server.port)
    await client.login(isid=bytes.fromhex(isid))
    await client.command(TEST_UNIT_READY)  # consume the unit attention
    itts = send_reads(client, 4, size)
    await asyncio.sleep(0.3)  # the socket fills; the rest waits in the backlog
    return client, itts


def backlog_waits(server: IscsiServer) -> bool:
    return any(p.sender is not None and p.sender.backlog for p in server.connections)


def test_a_logout_answer_waits_behind_the_backlog_then_the_target_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Logout sent once the target has answered reads the host has not read yet (a
    Logout terminates tasks still running): its response comes after all their data,
    and only then does the target close the connection."""
    spy = BacklogSpy(monkeypatch)
    volume, content = applied_volume(tmp_path)

    async def scenario() -> None:
        server = await serve(volume)
        client, itts = await backlogged(server, len(content))
        client.send(LogoutRequest(itt=client.next_itt(), cmdsn=client.cmdsn,
                                  exp_statsn=client.statsn, immediate=True))  # fmt: skip
        got = {itt: bytearray() for itt in itts}
        while True:
            pdu = await client.recv()
            if isinstance(pdu, LogoutResponse):
                break
            assert isinstance(pdu, DataIn)
            got[pdu.itt] += pdu.data
        assert pdu.response == 0
        assert all(data == content for data in got.values())
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""  # closed
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    assert spy.drains, "the socket never filled: the backlog was not used"


def test_reading_pauses_while_the_backlog_is_above_its_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An initiator that reads none of its Data-In must not make the target queue reads
    without bound: above BACKLOG_HIGH reading pauses; it resumes once the backlog is
    below BACKLOG_LOW, and every answer arrives in order."""
    monkeypatch.setattr(sending, "BACKLOG_HIGH", 1 << 20)
    monkeypatch.setattr(sending, "BACKLOG_LOW", 256 << 10)
    flow: list[str] = []
    real_pause, real_resume = sending.ReadFlow.pause, sending.ReadFlow.resume

    def pause(self: sending.ReadFlow, reason: str) -> None:
        flow.append(f"pause {reason}")
        real_pause(self, reason)

    def resume(self: sending.ReadFlow, reason: str) -> None:
        if reason in self._reasons:
            flow.append(f"resume {reason}")
        real_resume(self, reason)

    monkeypatch.setattr(sending.ReadFlow, "pause", pause)
    monkeypatch.setattr(sending.ReadFlow, "resume", resume)
    volume, content = applied_volume(tmp_path)

    read_pipelined(volume, [(0, len(content))] * 6, content)
    assert "pause send backlog" in flow
    assert flow.index("resume send backlog") > flow.index("pause send backlog")


def test_a_peer_that_resets_with_a_backlog_is_dropped_alone(tmp_path: Path) -> None:
    """An initiator that resets its connection while answers wait in the backlog: the
    target drops that connection without an unhandled error, and another session goes
    on reading."""
    volume, content = applied_volume(tmp_path)
    errors: list[dict[str, object]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        server = await serve(volume)
        other = await Client.connect(server.port)
        await other.login()
        await other.command(TEST_UNIT_READY)
        client, _ = await backlogged(server, len(content), "800000000003")  # its own
        assert backlog_waits(server)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()  # RST, with the target's data unread
        deadline = time.monotonic() + TIMEOUT
        while len(server.connections) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(server.connections) == 1
        reply = await other.command(read10(0, 8), read=8 * BLOCK)
        assert reply.status == 0 and reply.data == content[: 8 * BLOCK]
        await other.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    assert not errors, errors


def test_a_span_whose_volume_closed_in_the_backlog_drops_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULT INJECTION (the race cannot be timed for real): the volume closes while spans
    wait in the backlog. The target must drop the connection before the data those spans
    stood for is complete: never another file's bytes, nor zeros with GOOD status."""
    made: list[FileSpan] = []
    real_read_span = Volume.read_span

    def read_span(self: Volume, lba: int, count: int) -> FileSpan | None:
        span = real_read_span(self, lba, count)
        if span is not None:
            made.append(span)
        return span

    monkeypatch.setattr(Volume, "read_span", read_span)
    spy = BacklogSpy(monkeypatch)
    volume, content = applied_volume(tmp_path)

    async def scenario() -> None:
        server = await serve(volume)
        client, itts = await backlogged(server, len(content))
        assert made
        made[0].source.close()  # what Volume.close does to it from another thread
        done = []
        with pytest.raises(ConnectionError):
            while True:
                pdu = await client.recv()
                assert isinstance(pdu, DataIn)
                if pdu.has_status:
                    done.append(pdu.itt)
        assert done != itts
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    volume.close()
    assert spy.drains


def test_shutdown_ends_a_connection_whose_peer_reads_nothing(tmp_path: Path) -> None:
    """Closing the server while answers wait for a host that reads nothing: after the
    grace period the connection is aborted, and ``wait_closed`` returns."""
    volume, content = applied_volume(tmp_path)

    async def scenario() -> None:
        lu = LogicalUnit(volume, uuid=uuid.UUID(bytes=volume.uuid),  # type: ignore[arg-type]
                         target_name=IQN)  # fmt: skip
        server = await start_server([Target(IQN, {0: lu})], "127.0.0.1", 0, grace=0.5)
        client, _ = await backlogged(server, len(content))
        assert backlog_waits(server)
        started = time.monotonic()
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2
        assert not server.connections
        with pytest.raises(ConnectionError):
            while True:  # whatever was sent, then the end
                await client.recv()
        await client.close()

    asyncio.run(scenario())
    volume.close()


def test_push_sends_a_mixed_queue_in_order_across_full_socket_buffers(tmp_path: Path) -> None:
    """``_push`` over a real TCP pair with small buffers: plain buffers and file spans
    (one running past the end of its file, sent as zeros) arrive whole and in order,
    each call taking off exactly what the socket took."""
    data = os.urandom(3 << 20)
    path = tmp_path / "file"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    source = SpanSource(fd)
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    try:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sender.setblocking(False)
        queue: collections.deque[OutBuffer] = collections.deque([
            b"head", FileSpan(source, 100, 1 << 20), memoryview(data)[5 : 300_000],
            bytearray(b"mid"), FileSpan(source, len(data) - 1000, 5000), b"tail",
        ])  # fmt: skip
        expected = b"".join([b"head", data[100 : 100 + (1 << 20)], data[5:300_000], b"mid",
                             data[-1000:] + bytes(4000), b"tail"])  # fmt: skip
        received = bytearray()
        pushes = 0
        while queue:
            before = sum(len(b) if isinstance(b, FileSpan) else memoryview(b).nbytes
                         for b in queue)  # fmt: skip
            sent = sending._push(sender, queue)
            after = sum(len(b) if isinstance(b, FileSpan) else memoryview(b).nbytes
                        for b in queue)  # fmt: skip
            assert before - after == sent
            pushes += 1
            while queue and not received.endswith(b"tail"):  # drain what was sent
                receiver.settimeout(0.05)
                try:
                    chunk = receiver.recv(1 << 20)
                except TimeoutError:
                    break
                received += chunk
        receiver.settimeout(TIMEOUT)
        while len(received) < len(expected):
            received += receiver.recv(1 << 20)
        assert bytes(received) == expected
        assert pushes > 1, "the socket never filled: nothing was resumed"
    finally:
        for s in (sender, receiver, listener):
            s.close()
        source.close()


def test_remainder_after_a_partial_sendmsg() -> None:
    buffers: list[Buffer] = [b"abc", memoryview(b"defg"), bytearray(b"hi")]
    assert _remainder(buffers, 0) == buffers
    assert [bytes(b) for b in _remainder(buffers, 5)] == [b"fg", b"hi"]
    assert [bytes(b) for b in _remainder(buffers, 7)] == [b"hi"]
    assert _remainder(buffers, 9) == []
