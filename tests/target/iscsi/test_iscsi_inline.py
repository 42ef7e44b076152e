"""The connection's inline lane against its general path.

Two connections, one with the lane (as the server runs it) and one without, each serving
its own real LogicalUnit on a protected volume, get the same byte stream cut into the same
receives: a random mix of plain READ/WRITE (10)/(16) that the lane takes and commands it
must leave alone (other opcodes, flags, residuals, out-of-range LBAs, a read with the W
flag, ORWRITE, out-of-order and immediate commands, NOP-Out). Everything they send back,
and the volumes afterwards, must be identical byte for byte.
"""

from __future__ import annotations

import errno
import itertools
import struct
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_initiator import Initiator, portal

from target.iscsi.cmdsn import serial_le
from target.iscsi.connection import Connection
from target.iscsi.events import ExecuteCommand
from target.iscsi.framing import PduReader, Sender
from target.iscsi.pdu import DataIn, NopOut, SCSICommand, encode
from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.lu import LogicalUnit
from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import FileBlockDevice

BS = 512


def volume(base: Path, *, nblocks: int) -> Volume:
    return Volume.create(str(base / "vol"), str(base / "vol.img"), size=nblocks * BS,
                         block_size=BS, options=VolumeOptions(commit_interval=None))


def ready_lu(vol: Volume, *, nexus: object) -> LogicalUnit:
    """An LU whose POWER ON unit attention ``nexus`` has already consumed."""
    lu = LogicalUnit(vol, uuid=uuid.UUID(int=7))
    assert lu.execute(ScsiCommand(bytes(6), None, 0, nexus)).sense is not None
    return lu


def _inline(lu: object, command: ScsiCommand) -> ScsiResponse | None:
    assert isinstance(lu, LogicalUnit)
    return lu.fast_io(command)


def _cdb(op: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    if op in (0x28, 0x2A, 0x2E):
        return struct.pack(">BBIBHB", op, flags, lba, 0, blocks, 0)
    return struct.pack(">BBQIBB", op, flags, lba, blocks, 0, 0)


@st.composite
def commands(draw: st.DrawFn, nblocks: int) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(
            ["read", "read", "write", "write", "odd", "nop", "immediate", "early"]))
        blocks = draw(st.integers(1, 8))
        lba = draw(st.integers(0, nblocks - 1))  # may run past the end: CHECK CONDITION
        op = draw(st.sampled_from([0x28, 0x88] if kind == "read" else [0x2A, 0x8A]))
        fill = draw(st.binary(min_size=1, max_size=1))
        if kind == "read":
            out.append(("cmd", dict(cdb=_cdb(op, lba, blocks), read=True,
                                    edtl=blocks * BS)))
        elif kind == "write":
            out.append(("cmd", dict(cdb=_cdb(op, lba, blocks), write=True, edtl=blocks * BS,
                                    data=fill * (blocks * BS))))
        elif kind == "odd":
            variant = draw(st.integers(0, 5))
            if variant == 0:  # residual: EDTL larger than the transfer
                out.append(("cmd", dict(cdb=_cdb(0x28, lba, blocks), read=True,
                                        edtl=(blocks + 1) * BS)))
            elif variant == 1:  # FUA write: must be flushed before status
                out.append(("cmd", dict(cdb=_cdb(0x2A, lba, blocks, 0x08), write=True,
                                        edtl=blocks * BS, data=fill * (blocks * BS))))
            elif variant == 2:  # a read opcode sent with the W flag and data
                out.append(("cmd", dict(cdb=_cdb(0x28, lba, blocks), write=True,
                                        edtl=blocks * BS, data=fill * (blocks * BS))))
            elif variant == 3:  # ORWRITE, not offered
                out.append(("cmd", dict(cdb=_cdb(0x8B, lba, blocks), write=True,
                                        edtl=blocks * BS, data=fill * (blocks * BS))))
            elif variant == 4:  # TEST UNIT READY
                out.append(("cmd", dict(cdb=bytes(6), edtl=0)))
            else:  # WRITE AND VERIFY (10)
                out.append(("cmd", dict(cdb=_cdb(0x2E, lba, blocks), write=True,
                                        edtl=blocks * BS, data=fill * (blocks * BS))))
        elif kind == "nop":
            out.append(("nop", {}))
        elif kind == "immediate":
            out.append(("cmd", dict(cdb=_cdb(0x28, lba, blocks), read=True, edtl=blocks * BS,
                                    immediate=True)))
        else:
            out.append(("early", dict(cdb=_cdb(0x28, lba, blocks), read=True,
                                      edtl=blocks * BS)))
    return out


def _stream(script: list[tuple[str, dict[str, object]]], cmdsn: int = 1,
            itt: int = 0x100) -> bytes:
    """Encode the script as one initiator would send it; an "early" command is sent before
    the command ahead of it in CmdSN order (the target holds it until the gap fills)."""
    parts: list[bytes] = []
    swap: list[int] = []
    for kind, fields in script:
        itt += 1
        if kind == "nop":
            pdu: NopOut | SCSICommand = NopOut(itt=itt, cmdsn=cmdsn, immediate=True,
                                               data=b"ping")  # fmt: skip
        else:
            pdu = SCSICommand(itt=itt, cmdsn=cmdsn, **fields)  # type: ignore[arg-type]
            if not fields.get("immediate"):
                cmdsn += 1
            if kind == "early":
                swap.append(len(parts))
        parts.append(b"".join(bytes(b) for b in encode(pdu)))
    for i in swap:
        if i + 1 < len(parts):
            parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return b"".join(parts)


def _serve(lane: bool, lu: LogicalUnit) -> Initiator:
    conn = Connection(portal(), luns=lambda target: {0: lu}, initial_statsn=1000,
                      inline=_inline if lane else None,
                      inline_read=LogicalUnit.fast_read if lane else None,  # type: ignore[arg-type]
                      inline_write=LogicalUnit.fast_write if lane else None)  # type: ignore[arg-type]  # fmt: skip
    ini = Initiator(conn)
    assert ini.login().status_class == 0
    return ini


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_inline_lane_answers_like_the_general_path(tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    nblocks = 64
    script = data.draw(commands(nblocks))
    stream = _stream(script)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(len(stream) - 1, 1)),
                                         max_size=6))))  # fmt: skip
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    sent: list[bytes] = []
    media: list[bytes] = []
    for lane in (False, True):
        base = Path(tmp_path_factory.mktemp("lane" if lane else "general"))
        vol = volume(base, nblocks=nblocks)
        try:
            ini = _serve(lane, ready_lu(vol, nexus=_nexus_of(lane)))
            out = []
            for chunk in chunks:
                ini.raw(chunk)
                out.append(b"".join(bytes(b) for b in ini.conn.data_to_send()))
            sent.append(b"".join(out))
            media.append(vol.read(0, nblocks))
        finally:
            vol.close()
    general, lane = _decode(sent[0]), _decode(sent[1])
    # Answers to different tasks may come in another order (the general path answers a
    # NOP-Out at once but a read only after the shell ran it), so StatSN differs; and
    # ExpCmdSN/MaxCmdSN are the window when a PDU is built: the lane answers before it has
    # read the commands after this one. Everything else must be the same, per task.
    assert sorted(map(_per_task, lane)) == sorted(map(_per_task, general))
    for stream in (lane, general):
        statsns = [p.statsn for p in stream if _has_status(p)]
        assert statsns == list(range(1001, 1001 + len(statsns)))
        windows = [(p.exp_cmdsn, p.max_cmdsn) for p in stream]
        assert all(serial_le(x[0], y[0]) and serial_le(x[1], y[1])
                   for x, y in itertools.pairwise(windows))  # fmt: skip
    if lane:
        last = general[-1]
        assert (lane[-1].exp_cmdsn, lane[-1].max_cmdsn) == (last.exp_cmdsn, last.max_cmdsn)
    assert media[1] == media[0]


def _decode(stream: bytes) -> list[Any]:
    reader = PduReader(sender=Sender.TARGET)
    reader.configure(max_recv_data_segment_length=1 << 20)
    reader.receive_data(stream)
    out = []
    while (pdu := reader.next_pdu()) is not None:
        out.append(pdu)
    return out


def _has_status(pdu: Any) -> bool:
    return not isinstance(pdu, DataIn) or pdu.has_status


def _per_task(pdu: Any) -> tuple[int, str]:
    return pdu.itt, repr(replace(pdu, statsn=0, exp_cmdsn=0, max_cmdsn=0, data=bytes(pdu.data)))


def _nexus_of(lane: bool) -> object:
    """The nexus both connections will have after login (the LU keys unit attentions
    by it): built the same way as Connection does, from the same login."""
    conn = Connection(portal(), luns=lambda target: {}, initial_statsn=1000)
    ini = Initiator(conn)
    ini.login()
    return conn.nexus


def test_lane_takes_plain_commands_and_leaves_the_rest(tmp_path: Path) -> None:
    """The lane really runs: a plain read produces no ExecuteCommand event."""
    vol = volume(tmp_path, nblocks=64)
    try:
        ini = _serve(True, ready_lu(vol, nexus=_nexus_of(True)))
        events = ini.raw(_stream([("cmd", dict(cdb=_cdb(0x28, 0, 1), read=True, edtl=BS))]))
        assert events == []
        assert ini.replies()[0].data == bytes(BS)  # type: ignore[attr-defined]
        tur = [("cmd", dict(cdb=bytes(6), edtl=0))]  # TEST UNIT READY
        events = ini.raw(_stream(tur, cmdsn=2, itt=0x200))
        assert len(events) == 1  # the general path: an ExecuteCommand
    finally:
        vol.close()


class _BrokenDisk(FileBlockDevice):
    """FAULT INJECTION: a disk whose writes fail (an I/O error cannot be had on demand)."""

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        raise OSError(errno.EIO, "injected I/O error")


def test_a_write_that_fails_in_the_lane_is_answered_by_the_general_path(tmp_path: Path) -> None:
    """The lane's write raises: nothing was done, so the general path runs the command again
    and answers CHECK CONDITION, the same as a connection without the lane."""
    (tmp_path / "disk").write_bytes(bytes(64 * BS))
    answers = []
    for lane in (False, True):
        lu = ready_lu(_BrokenDisk(tmp_path / "disk", block_size=BS),  # type: ignore[arg-type]
                      nexus=_nexus_of(lane))  # fmt: skip
        ini = _serve(lane, lu)
        script = [("cmd", dict(cdb=_cdb(0x2A, 3, 1), write=True, edtl=BS, data=b"\x11" * BS))]
        events = ini.raw(_stream(script))
        for event in events:  # the shell's part: run what the general path handed over
            assert isinstance(event, ExecuteCommand)
            ini.conn.complete(event.task_tag, lu.execute(event.command))
        replies = _decode(b"".join(bytes(b) for b in ini.conn.data_to_send()))
        assert len(replies) == 1
        answers.append((replies[0].status, bytes(replies[0].data)))
    assert answers[0] == answers[1] and answers[0][0] == 0x02  # CHECK CONDITION
