"""Random CDBs: ``execute`` never raises, always answers validly, and a failed command
never changes the medium (the sans-I/O core must survive anything a peer sends)."""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scsi_helpers import BS, NEXUS, OTHER, UUID, check_response, file_device, rw

from target.scsi.cdb import OPCODES
from target.scsi.command import ScsiCommand
from target.scsi.lu import LogicalUnit
from target.scsi.sense import ScsiStatus

NBLOCKS = 64
SCSI_DIR = Path(__file__).resolve().parents[3] / "target" / "scsi"

known = st.sampled_from(sorted(OPCODES))
opcodes = st.one_of(known, known, st.integers(0, 255))


@st.composite
def random_cdb(draw: st.DrawFn) -> bytes:
    length = draw(st.sampled_from([6, 10, 12, 16]))
    body = draw(st.binary(min_size=length - 1, max_size=length - 1))
    cdb = bytearray([draw(opcodes)]) + bytearray(body)
    if draw(st.booleans()):
        cdb[-1] = 0  # a valid CONTROL byte
    return bytes(cdb)


@st.composite
def plausible_cdb(draw: st.DrawFn) -> bytes:
    """A known opcode in its own size with small LBA and length: reaches the medium."""
    op = draw(known)
    size = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[op >> 5]
    lba = draw(st.integers(0, NBLOCKS + 2))
    n = draw(st.integers(0, 4))
    flags = draw(st.sampled_from([0, 0x02, 0x08, 0x10, 0x12, 0x20, 0x01, 0x09]))
    if op == 0x89:  # COMPARE AND WRITE: 1-byte NUMBER OF BLOCKS at byte 13
        return bytes([op, flags]) + lba.to_bytes(8) + bytes(3) + bytes([n, 0, 0])
    if op == 0x9E:
        flags = draw(st.sampled_from([0x10, 0x12]))
        n = draw(st.integers(0, 64))
    if size == 6:
        return bytes([op, flags, lba >> 8 & 0xFF, lba & 0xFF, n, 0])
    return rw(size, op, lba, n, flags)


@st.composite
def commands(draw: st.DrawFn) -> ScsiCommand:
    cdb = draw(st.one_of(random_cdb(), plausible_cdb()))
    data = draw(st.one_of(st.none(), st.binary(max_size=3 * BS)))
    edtl = draw(st.one_of(st.just(len(data or b"")), st.integers(0, 4 * BS)))
    return ScsiCommand(cdb, data, edtl, draw(st.sampled_from([NEXUS, OTHER])))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), min_size=1, max_size=8))
def test_random_cdbs(cmds: list[ScsiCommand]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dev = file_device(Path(tmp), nblocks=NBLOCKS)
        try:
            lu = LogicalUnit(dev, uuid=UUID)
            for cmd in cmds:
                before = dev.read(0, NBLOCKS)
                resp = lu.execute(cmd)
                check_response(resp, cmd.expected_length)
                assert resp.status in (ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION,
                                       ScsiStatus.RESERVATION_CONFLICT)
                if resp.status == ScsiStatus.RESERVATION_CONFLICT:
                    assert dev.read(0, NBLOCKS) == before, cmd
                elif resp.status == ScsiStatus.CHECK_CONDITION:
                    sense = resp.sense or b""
                    assert len(sense) == 18 or sense[0] == 0x72
                    # A HARDWARE ERROR from a healthy file device would be a bug in the LU.
                    assert sense[2] & 0x0F != 0x04 if sense[0] == 0x70 else sense[1] != 0x04
                    assert dev.read(0, NBLOCKS) == before, cmd
                elif resp.flush_before_status:
                    assert not lu.complete_flush(cmd, resp).flush_before_status
        finally:
            dev.close()


def test_no_module_in_target_scsi_imports_asyncio() -> None:
    modules = sorted(SCSI_DIR.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in ("asyncio", "socket", "selectors")
                           for n in names), f"{path.name} imports {names}"
