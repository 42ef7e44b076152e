"""Coverage-guided fuzzing (atheris, libFuzzer) of the sans-I/O iSCSI connection with the
real SCSI logical unit behind it. Any exception that escapes is a crash.

    python tests/target/iscsi/fuzz_connection_atheris.py -runs=100000 -max_len=4096

The first input byte picks what the rest is: raw bytes before login; raw bytes after a
good login; or a list of CDBs, each sent in a SCSI Command PDU after a good login.
test_iscsi_fuzz_atheris.py runs a short, seeded campaign in the suite.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["target"]):
    from target.iscsi.connection import Connection
    from target.iscsi.events import ExecuteCommand
    from target.iscsi.keys import encode_text
    from target.iscsi.login import PortalConfig, TargetEntry
    from target.iscsi.pdu import LoginRequest, SCSICommand, encode
    from target.scsi.lu import LogicalUnit

from volume_manager import FileBlockDevice

IQN = "iqn.2026-11.org.cdpswitch:atheris"
BLOCK = 512
_dir = tempfile.TemporaryDirectory()
_image = Path(_dir.name) / "disk.img"
_image.write_bytes(bytes(256 * BLOCK))
_device = FileBlockDevice(_image, block_size=BLOCK)
_lu = LogicalUnit(_device, uuid=uuid.uuid4(), target_name=IQN)
_portal = PortalConfig(targets={IQN: TargetEntry(IQN)})
_LOGIN = b"".join(bytes(b) for b in encode(LoginRequest(
    transit=True, csg=1, nsg=3, isid=bytes.fromhex("800000000077"), itt=1, cmdsn=1,
    data=encode_text([("InitiatorName", "iqn.2026-11.org.test:atheris"), ("TargetName", IQN),
                      ("ImmediateData", "Yes"), ("InitialR2T", "No")]))))  # fmt: skip


def _feed(conn: Connection, data: bytes) -> None:
    for event in conn.receive_data(memoryview(data)):
        if isinstance(event, ExecuteCommand) and event.lu is not None:
            response = _lu.execute(event.command)
            if response.flush_before_status:
                response = _lu.complete_flush(event.command, response)
            conn.complete(event.task_tag, response)
    conn.data_to_send()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    conn = Connection(_portal, luns=lambda target: {0: _lu})
    if mode == 0:
        _feed(conn, fdp.ConsumeBytes(fdp.remaining_bytes()))
    else:
        _feed(conn, _LOGIN)
        if mode == 1:
            _feed(conn, fdp.ConsumeBytes(fdp.remaining_bytes()))
        else:
            cmdsn = 1
            while fdp.remaining_bytes() > 0:
                cdb = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
                payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1024))
                flags = fdp.ConsumeIntInRange(0, 3)
                edtl = fdp.ConsumeIntInRange(0, 1 << 17)
                pdu = SCSICommand(itt=cmdsn, cmdsn=cmdsn, read=bool(flags & 1),
                                  write=bool(flags & 2) and bool(payload), edtl=edtl,
                                  cdb=cdb.ljust(16, b"\0"), final=True, data=payload)
                _feed(conn, b"".join(bytes(b) for b in encode(pdu)))
                cmdsn += 1
    conn.tick(1000.0)
    conn.receive_eof()


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
