"""A volume whose write buffer is full (its group commit is behind the disk): the server
holds back the write that would wait, and only its connection, instead of blocking the
event loop and every session on it (target/iscsi/server.py, "held back").

The primary's writes (the group commit's apply) wait at a gate the test opens; every
byte still goes to the real files.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aio_initiator import BLOCK, TEST_UNIT_READY, Client, read10, write10
from iscsi_served import IQN, TIMEOUT

from target.iscsi.connection import NopPolicy
from target.iscsi.pdu import SCSICommand, TaskMgmtRequest, TaskMgmtResponse, encode
from target.iscsi.server import IscsiServer, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import Volume, VolumeOptions
from volume_manager.fileio import OsFiles
from volume_manager.logbuf import SLAB_BYTES

MiB = 1 << 20
SIZE = 64 * MiB
GATE_WAIT = 10.0  # the gate opens by itself after this long (a hung test ends)


class HeldPrimary(OsFiles):
    """The real file layer, with writes to the primary waiting until ``release``."""

    def __init__(self) -> None:
        self.fh = -1
        self.released = threading.Event()

    def pwrite(self, fh: int, data: object, offset: int) -> int:  # type: ignore[override]
        if fh == self.fh:
            self.released.wait(GATE_WAIT)
        return super().pwrite(fh, data, offset)  # type: ignore[arg-type]


def chunk(i: int) -> bytes:
    return bytes([i + 1]) * MiB


def held_volume(tmp_path: Path) -> tuple[Volume, HeldPrimary]:
    files = HeldPrimary()
    volume = Volume.create(str(tmp_path / "held"), str(tmp_path / "held.img"), size=SIZE,
                           files=files, options=VolumeOptions(buffer_bytes=2 * SLAB_BYTES,
                                                              commit_interval=0.05))  # fmt: skip
    files.fh = volume._primary
    return volume, files


def fill(volume: Volume) -> int:
    """Write 1 MiB chunks at the start of ``volume`` until its buffer is full."""
    n = 0
    while volume.has_room():
        assert n < SIZE // MiB // 2, "the buffer never filled"
        volume.write(n * (MiB // BLOCK), chunk(n))
        n += 1
    return n


async def serve_two(held: Volume, other: Volume, nop: NopPolicy | None = None) -> IscsiServer:
    luns = {number: LogicalUnit(volume, uuid=uuid.UUID(bytes=volume.uuid),  # type: ignore[arg-type]
                                target_name=IQN, lun_list=lambda: [0, 1])
            for number, volume in ((0, held), (1, other))}  # fmt: skip
    return await start_server([Target(IQN, luns)], "127.0.0.1", 0, grace=5.0, nop=nop)


async def login(server: IscsiServer, isid: str, luns: tuple[int, ...]) -> Client:
    client = await Client.connect(server.port)
    await client.login(isid=bytes.fromhex(isid))
    for lun in luns:  # each LU's unit attention for the new nexus
        await client.command(TEST_UNIT_READY, lun=lun)
    return client


def run_two(tmp_path: Path, scenario: Callable[[Volume, HeldPrimary, Volume],
                                               Awaitable[None]]) -> None:  # fmt: skip
    """Run ``scenario`` with a held volume, its gate and another volume; close them."""
    held, files = held_volume(tmp_path)
    other = Volume.create(str(tmp_path / "other"), str(tmp_path / "other.img"), size=SIZE)
    try:
        asyncio.run(scenario(held, files, other))
    finally:
        files.released.set()
        held.close()
        other.close()


def test_a_write_waiting_for_room_holds_back_its_session_only(tmp_path: Path) -> None:
    """A write to a volume whose buffer is full waits, and with it its session; another
    session goes on at once, with reads of that volume and writes to another. When the
    group commit frees room the write completes with GOOD status, and it landed."""
    payload = bytes(range(256)) * 256  # 64 KiB: immediate data, then an R2T

    async def scenario(held: Volume, files: HeldPrimary, other: Volume) -> None:
        server = await serve_two(held, other)
        writer = await login(server, "800000000002", (0,))
        bystander = await login(server, "800000000003", (0, 1))
        filled = fill(held)
        lba = filled * (MiB // BLOCK)
        itt = writer.start(write10(lba, len(payload) // BLOCK), data=payload)
        pending = asyncio.create_task(writer.finish(itt, payload))
        await asyncio.sleep(0.5)
        assert not pending.done(), "the write did not wait for room"

        started = time.monotonic()
        reply = await bystander.command(write10(0, 16), data=b"b" * 16 * BLOCK, lun=1)
        assert reply.status == 0
        reply = await bystander.command(read10(0, 16), read=16 * BLOCK, lun=1)
        assert reply.status == 0 and reply.data == b"b" * 16 * BLOCK
        reply = await bystander.command(read10(0, 16), read=16 * BLOCK, lun=0)
        assert reply.status == 0 and reply.data == chunk(0)[: 16 * BLOCK]
        assert time.monotonic() - started < GATE_WAIT / 2, "the other session waited too"
        assert not pending.done()

        files.released.set()
        reply = await asyncio.wait_for(pending, TIMEOUT)
        assert reply.status == 0
        reply = await writer.command(read10(lba, len(payload) // BLOCK), read=len(payload))
        assert reply.status == 0 and reply.data == payload
        for client in (writer, bystander):
            await client.close()
        server.close()
        await server.wait_closed()

    run_two(tmp_path, scenario)


def test_a_held_write_aborted_in_the_same_receive_never_runs(tmp_path: Path) -> None:
    """ABORT TASK for a write held back for room, in the same receive: the TMF response
    goes out at once, and when room comes the write is not run (it would change the
    volume after the host was told it is gone) nor answered."""

    async def scenario(held: Volume, files: HeldPrimary, other: Volume) -> None:
        server = await serve_two(held, other)
        client = await login(server, "800000000002", (0,))
        filled = fill(held)
        lba = filled * (MiB // BLOCK)
        data = b"\xee" * 8192  # all immediate data: complete on arrival
        itt = client.next_itt()
        write = write10(lba, len(data) // BLOCK).ljust(16, b"\0")
        command = SCSICommand(itt=itt, cmdsn=client.cmdsn, exp_statsn=client.statsn,
                              write=True, edtl=len(data), cdb=write, data=data,
                              final=True)  # fmt: skip
        client.cmdsn += 1
        abort = TaskMgmtRequest(itt=client.next_itt(), referenced_task_tag=itt,
                                cmdsn=client.cmdsn, exp_statsn=client.statsn,
                                ref_cmdsn=command.cmdsn)  # fmt: skip
        client.writer.write(b"".join(bytes(b) for pdu in (command, abort)
                                     for b in encode(pdu)))  # fmt: skip
        answer = await client.recv()
        assert isinstance(answer, TaskMgmtResponse) and answer.response == 0
        client.statsn = answer.statsn + 1
        files.released.set()
        await asyncio.sleep(0.3)  # room: the held events run now
        # The next answer is this one's (finish checks the ITT), not the write's.
        reply = await client.command(TEST_UNIT_READY)
        assert reply.status == 0
        reply = await client.command(read10(lba, len(data) // BLOCK), read=len(data))
        assert reply.data == bytes(len(data)), "the aborted write ran"
        await client.close()
        server.close()
        await server.wait_closed()

    run_two(tmp_path, scenario)


def test_a_long_hold_is_not_taken_for_a_silent_initiator(tmp_path: Path) -> None:
    """While a write waits for room, the target reads nothing from that connection, so
    the initiator's silence is the target's doing: no NOP-In ping runs out and drops the
    connection (Connection.tick(idle=False)), however short the ping timeout. The write
    completes once there is room."""
    nop = NopPolicy(interval=0.5, timeout=0.5)

    async def scenario(held: Volume, files: HeldPrimary, other: Volume) -> None:
        server = await serve_two(held, other, nop)
        writer = await login(server, "800000000002", (0,))
        lba = fill(held) * (MiB // BLOCK)
        payload = b"\x77" * 8192
        itt = writer.start(write10(lba, len(payload) // BLOCK), data=payload)
        pending = asyncio.create_task(writer.finish(itt, payload))
        await asyncio.sleep(3.5)  # three server ticks, each past interval + timeout
        assert not pending.done(), "the write did not wait for room, or the link dropped"
        files.released.set()
        reply = await asyncio.wait_for(pending, TIMEOUT)
        assert reply.status == 0
        reply = await writer.command(read10(lba, len(payload) // BLOCK), read=len(payload))
        assert reply.data == payload
        await writer.close()
        server.close()
        await server.wait_closed()

    run_two(tmp_path, scenario)



def test_a_new_login_of_the_same_initiator_port_ends_a_held_session(tmp_path: Path) -> None:
    """Session reinstatement (RFC 7143 section 6.3.5) while a write of the old session
    waits for room: the new login (same InitiatorName and ISID, TSIH 0) ends the old
    connection at once, the volume lets go of its room wait, and the held write never
    lands, even once there is room: the host gave it up and moved on."""

    async def scenario(held: Volume, files: HeldPrimary, other: Volume) -> None:
        server = await serve_two(held, other)
        isid = "800000000002"
        old = await login(server, isid, (0,))
        lba = fill(held) * (MiB // BLOCK)
        payload = b"\x55" * 8192
        old.start(write10(lba, len(payload) // BLOCK), data=payload)
        await asyncio.sleep(0.3)
        assert len(held._room_waiters) == 1, "the write did not wait for room"
        waits_ns = held.buffer_full_ns

        new = await login(server, isid, (0,))
        assert await asyncio.wait_for(old.reader.read(), TIMEOUT) == b"", "old one open"
        await old.close()
        assert held._room_waiters == [], "the ended session still waits for room"
        assert held.buffer_full_ns > waits_ns  # its wait is counted all the same
        assert len(server.sessions()) == 1

        files.released.set()
        held.flush()  # room, and everything before it applied
        await asyncio.sleep(0.3)  # a held write would have run by now
        blocks = len(payload) // BLOCK
        reply = await new.command(read10(lba, blocks), read=len(payload))
        assert reply.status == 0 and reply.data == bytes(len(payload)), "the held write ran"
        reply = await new.command(write10(lba, blocks), data=b"\x66" * len(payload))
        assert reply.status == 0
        reply = await new.command(read10(lba, blocks), read=len(payload))
        assert reply.data == b"\x66" * len(payload)
        await new.close()
        server.close()
        await server.wait_closed()

    run_two(tmp_path, scenario)


def test_a_host_that_closes_while_its_write_waits_for_room_is_seen_to_go(
    tmp_path: Path,
) -> None:
    """Reading is paused while a write waits for room, so the host's close is not read;
    the server's tick sees it on the socket instead and ends the session: the volume lets
    go of its room wait, and the given-up write never lands once there is room."""

    async def scenario(held: Volume, files: HeldPrimary, other: Volume) -> None:
        server = await serve_two(held, other)
        client = await login(server, "800000000002", (0,))
        lba = fill(held) * (MiB // BLOCK)
        payload = b"\x55" * 8192
        client.start(write10(lba, len(payload) // BLOCK), data=payload)
        await asyncio.sleep(0.3)
        assert len(held._room_waiters) == 1, "the write did not wait for room"
        started = time.monotonic()
        await client.close()
        while held._room_waiters and time.monotonic() - started < GATE_WAIT / 2:
            await asyncio.sleep(0.05)
        assert held._room_waiters == [], "the closed connection still waits for room"
        assert server.sessions() == []
        files.released.set()
        held.flush()
        await asyncio.sleep(0.3)
        again = await login(server, "800000000005", (0,))
        reply = await again.command(read10(lba, len(payload) // BLOCK), read=len(payload))
        assert reply.status == 0 and reply.data == bytes(len(payload)), "the held write ran"
        await again.close()
        server.close()
        await server.wait_closed()

    run_two(tmp_path, scenario)
