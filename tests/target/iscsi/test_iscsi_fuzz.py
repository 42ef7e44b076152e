"""Fuzzing the running server over real sockets (hypothesis): malformed and truncated PDUs,
bad key=value texts in login and in Text requests, random CDBs.

One server (``start_server`` on 127.0.0.1, its event loop in a thread) exports two
targets: PROTECTED, a real protected ``Volume`` that must come through unchanged, and
SCRATCH, a plain file that random CDBs may write to. A well-behaved session to PROTECTED
stays logged in through every example; after each one it must still answer a ping and read
back the volume's pattern, and the volume's sequence number must not have moved: no crash,
no hang, other sessions unaffected, the volume unchanged.

Fuzzed sessions to PROTECTED never carry medium-changing commands or task management (a
LUN RESET or a reservation from another session rightly changes what the good session
sees); those go to SCRATCH, where any CDB is fair.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.iscsi.framing import PduReader, Sender
from target.iscsi.keys import encode_text
from target.iscsi.pdu import (
    DataIn,
    LoginRequest,
    LoginResponse,
    NopIn,
    NopOut,
    Pdu,
    SCSICommand,
    SCSIResponse,
    TextRequest,
    encode,
)
from target.iscsi.server import IscsiServer, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import FileBlockDevice, Volume

PROTECTED = "iqn.2026-11.org.cdpswitch:protected"
SCRATCH = "iqn.2026-11.org.cdpswitch:scratch"
INITIATOR = "iqn.2026-11.org.test:fuzz"
BLOCK = 512
BLOCKS = 2048  # 1 MiB
PATTERN = bytes(range(256)) * (BLOCKS * BLOCK // 256)
TIMEOUT = 10.0
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Opcodes that leave the medium and every other nexus's view alone.
HARMLESS = [0x00, 0x03, 0x08, 0x12, 0x1A, 0x25, 0x28, 0x2F, 0x5A, 0x88, 0x8F, 0x9E, 0xA0,
            0xA8, 0xAF]  # fmt: skip


_ISIDS = itertools.count(9)


class SyncClient:
    """A blocking initiator made of the PDU classes (enough for login, commands, pings)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = PduReader(sender=Sender.TARGET)
        self.cmdsn, self.itt, self.statsn = 1, 0, 0

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, pdu: Pdu) -> None:
        self.sock.sendall(b"".join(bytes(b) for b in encode(pdu)))

    def recv(self) -> Pdu:
        while (pdu := self.reader.next_pdu()) is None:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("target closed the connection")
            self.reader.receive_data(chunk)
        return pdu

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def login(self, target: str) -> None:
        text = {"InitiatorName": INITIATOR, "TargetName": target,
                "MaxRecvDataSegmentLength": "65536"}  # fmt: skip
        # An ISID of its own: a second login with a live session's ISID would reinstate
        # (end) that session, and the bystander must stay.
        isid = (0x800000000000 + next(_ISIDS)).to_bytes(6, "big")
        self.send(LoginRequest(transit=True, csg=1, nsg=3, isid=isid,
                               itt=self.next_itt(), cmdsn=self.cmdsn,
                               data=encode_text(text.items())))  # fmt: skip
        answer = self.recv()
        assert isinstance(answer, LoginResponse) and answer.status_class == 0
        self.statsn = answer.statsn + 1
        self.reader.configure(max_recv_data_segment_length=65536)

    def command(self, cdb: bytes, read: int = 0) -> tuple[int, bytes]:
        itt = self.next_itt()
        self.send(SCSICommand(itt=itt, cmdsn=self.cmdsn, exp_statsn=self.statsn, read=read > 0,
                              edtl=read, cdb=cdb.ljust(16, b"\0"), final=True))  # fmt: skip
        self.cmdsn += 1
        got = bytearray()
        while True:
            pdu = self.recv()
            if isinstance(pdu, DataIn) and pdu.itt == itt:
                got += pdu.data
                if pdu.has_status:
                    self.statsn = pdu.statsn + 1
                    return pdu.status, bytes(got)
            elif isinstance(pdu, SCSIResponse) and pdu.itt == itt:
                self.statsn = pdu.statsn + 1
                return pdu.status, bytes(got)

    def ping(self) -> None:
        itt = self.next_itt()
        self.send(NopOut(itt=itt, cmdsn=self.cmdsn, immediate=True, exp_statsn=self.statsn,
                         data=b"still-there"))  # fmt: skip
        while True:
            pdu = self.recv()
            if isinstance(pdu, NopIn) and pdu.itt == itt:
                assert bytes(pdu.data) == b"still-there"
                return

    def close(self) -> None:
        self.sock.close()


def read10(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


@dataclass
class Rig:
    server: IscsiServer
    loop: asyncio.AbstractEventLoop
    volume: Volume
    good: SyncClient
    seq: int

    @property
    def port(self) -> int:
        return self.server.port

    def check(self) -> None:
        """The server is alive, the good session unaffected, the volume unchanged."""
        self.good.ping()
        for lba in (0, BLOCKS - 64):
            status, data = self.good.command(read10(lba, 64), read=64 * BLOCK)
            while status == 0x02:  # a unit attention is fine: retry once it is reported
                status, data = self.good.command(read10(lba, 64), read=64 * BLOCK)
            assert status == 0 and data == PATTERN[lba * BLOCK:(lba + 64) * BLOCK]
        assert self.volume.seq == self.seq


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("fuzz")
    volume = Volume.create(str(base / "vol"), str(base / "primary.img"), size=BLOCKS * BLOCK)
    volume.write(0, PATTERN)
    volume.flush()
    scratch_path = base / "scratch.img"
    scratch_path.write_bytes(bytes(BLOCKS * BLOCK))
    scratch = FileBlockDevice(scratch_path, block_size=BLOCK)
    targets = [
        Target(PROTECTED, {0: LogicalUnit(volume, uuid=uuid.uuid4(),  # type: ignore[arg-type]
                                          target_name=PROTECTED)}),
        Target(SCRATCH, {0: LogicalUnit(scratch, uuid=uuid.uuid4(), target_name=SCRATCH)}),
    ]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        start_server(targets, "127.0.0.1", 0, grace=1.0), loop).result(TIMEOUT)
    good = SyncClient(server.port)
    good.login(PROTECTED)
    good.command(bytes(6))  # consume the power-on unit attention
    rig = Rig(server, loop, volume, good, volume.seq)
    try:
        rig.check()
        yield rig
        rig.check()
    finally:
        good.close()

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()
        volume.close()
        scratch.close()


def send_and_drain(port: int, chunks: list[bytes], login_to: str | None = None) -> None:
    """Open a connection, maybe log in, send ``chunks``, read whatever comes back for a
    moment, close. The target may answer or drop the connection; it must not crash."""
    client = SyncClient(port)
    try:
        if login_to is not None:
            client.login(login_to)
        for chunk in chunks:
            client.send_bytes(chunk)
        client.sock.settimeout(0.05)
        try:
            while client.sock.recv(1 << 16):
                pass
        except (TimeoutError, ConnectionError):
            pass
    except (ConnectionError, BrokenPipeError):
        pass  # the target dropped us: a fair answer to garbage
    finally:
        client.close()


def pdu_bytes(pdu: Pdu) -> bytes:
    return b"".join(bytes(b) for b in encode(pdu))


# --- before login: raw bytes and login requests with bad texts ---------------------------------

@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_random_bytes_before_login(rig: Rig, chunks: list[bytes]) -> None:
    send_and_drain(rig.port, chunks)
    rig.check()


_key = st.text(st.characters(codec="utf-8", exclude_characters="\0="), max_size=70)
_pair = st.tuples(_key, st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                                max_size=300))  # fmt: skip
_texts = st.one_of(
    st.lists(_pair, max_size=12).map(lambda pairs: encode_text(pairs)),
    st.binary(max_size=600),
    st.lists(st.sampled_from([b"InitiatorName=", b"TargetName=" + PROTECTED.encode(),
                              b"SessionType=Discovery", b"AuthMethod=CHAP,None",
                              b"MaxRecvDataSegmentLength=0", b"HeaderDigest=CRC32C,Bogus",
                              b"ErrorRecoveryLevel=7", b"=", b"MaxBurstLength=99999999999",
                              b"CHAP_A=5", b"CHAP_R=0xzz", b"X-Unknown=1", b"\xff\xfe"]),
             max_size=10).map(lambda items: b"\0".join(items) + b"\0"),
)  # fmt: skip


@FUZZ
@given(st.lists(st.tuples(_texts, st.integers(0, 3), st.integers(0, 3), st.booleans(),
                          st.booleans()), min_size=1, max_size=4))  # fmt: skip
def test_login_requests_with_bad_texts(rig: Rig,
                                       steps: list[tuple[bytes, int, int, bool, bool]]) -> None:
    chunks = [pdu_bytes(LoginRequest(transit=transit, cont=cont, csg=csg, nsg=nsg,
                                     isid=bytes.fromhex("800000000010"), itt=i, cmdsn=1,
                                     data=text))
              for i, (text, csg, nsg, transit, cont) in enumerate(steps)]  # fmt: skip
    send_and_drain(rig.port, chunks)
    rig.check()


# --- in full feature phase: truncated and mangled PDUs, bad Text requests ---------------------

def _harmless_command(cdb_tail: bytes, op: int, flags: int, edtl: int, data: bytes) -> bytes:
    cdb = bytes([op]) + cdb_tail
    pdu = pdu_bytes(SCSICommand(itt=7, cmdsn=2, read=bool(flags & 1), edtl=edtl,
                                cdb=cdb, final=bool(flags & 2), data=data))  # fmt: skip
    return pdu


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A harmless PDU, then cut short and/or with bytes changed outside the fields that
    would make it write (byte 1's W bit and the CDB's opcode at 32 stay as chosen)."""
    raw = bytearray(_harmless_command(
        draw(st.binary(min_size=15, max_size=15)), draw(st.sampled_from(HARMLESS)),
        draw(st.integers(0, 3)), draw(st.integers(0, 1 << 20)),
        draw(st.binary(max_size=64))))  # fmt: skip
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(raw) - 1))
        if pos in (0, 32):  # keep it a SCSI command, and a harmless one
            continue
        raw[pos] = draw(st.integers(0, 255))
    raw[1] &= ~0x20  # never a write
    cut = draw(st.integers(1, len(raw)))
    return bytes(raw[:cut])


_text_request = st.builds(
    lambda data, final, cont: pdu_bytes(TextRequest(itt=9, ttt=0xFFFFFFFF, cmdsn=2,
                                                    final=final, cont=cont, data=data)),
    _texts, st.booleans(), st.booleans())  # fmt: skip


@FUZZ
@given(st.lists(st.one_of(mangled(), _text_request, st.binary(min_size=1, max_size=100)),
                min_size=1, max_size=5))  # fmt: skip
def test_mangled_pdus_in_a_session_to_the_protected_volume(rig: Rig, chunks: list[bytes]) -> None:
    send_and_drain(rig.port, chunks, login_to=PROTECTED)
    rig.check()


# --- random CDBs (to the scratch target) ------------------------------------------------------

_cdb = st.one_of(
    st.binary(min_size=6, max_size=16),
    st.tuples(st.integers(0, 255), st.binary(min_size=5, max_size=15)).map(
        lambda t: bytes([t[0]]) + t[1]),
)


@FUZZ
@given(st.lists(st.tuples(_cdb, st.integers(0, 3), st.integers(0, 70000),
                          st.binary(max_size=2048)), min_size=1, max_size=6))  # fmt: skip
def test_random_cdbs(rig: Rig, commands: list[tuple[bytes, int, int, bytes]]) -> None:
    chunks = [pdu_bytes(SCSICommand(itt=10 + i, cmdsn=2 + i, read=bool(flags & 1),
                                    write=bool(flags & 2) and bool(data), edtl=edtl,
                                    cdb=cdb.ljust(16, b"\0"), final=True, data=data))
              for i, (cdb, flags, edtl, data) in enumerate(commands)]  # fmt: skip
    send_and_drain(rig.port, chunks, login_to=SCRATCH)
    rig.check()
