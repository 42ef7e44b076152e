"""The asyncio shell (target/iscsi/server.py) over real sockets on 127.0.0.1.

(a) In-process: a tiny asyncio initiator built from the PDU classes (aio_initiator.py)
    talks to ``start_server`` on port 0, with a real protected ``Volume`` behind the LU.
    The send path has its own file, test_iscsi_sending.py.
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
from collections.abc import Iterator
from pathlib import Path

import pytest
from aio_initiator import (
    BLOCK,
    INQUIRY,
    READ_CAPACITY10,
    REPORT_LUNS,
    SIZE,
    SYNCHRONIZE_CACHE10,
    TEST_UNIT_READY,
    Client,
    new_volume,
    read10,
    serve,
    write10,
)
from iscsi_served import CLIENTS, IQN, TIMEOUT, Served, require, run, start_served

from target.iscsi.keys import parse_text
from target.iscsi.pdu import (
    NO_TAG,
    DataIn,
    SCSICommand,
    SCSIResponse,
    TextRequest,
    TextResponse,
    encode,
)
from target.iscsi.server import Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import FileBlockDevice, Volume


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
