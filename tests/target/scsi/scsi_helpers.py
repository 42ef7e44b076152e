"""Shared helpers for the SCSI layer tests: CDB builders, devices, named expectations.

CDBs are built here with their own byte layouts (not the module's), so a wrong
layout in ``target/scsi/cdb.py`` cannot hide behind the same mistake in a test.
Expected sense is named like libiscsi's ``EXPECT_*`` macros: (key, ASC, ASCQ).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Hashable
from pathlib import Path

from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.lu import LogicalUnit
from target.scsi.sense import ScsiStatus
from volume_manager import Volume, VolumeOptions
from volume_manager.blockdev import BlockDevice, FileBlockDevice

BS = 512
NBLOCKS = 256
UUID = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
NEXUS = "iqn.test-1,i,0x1"
OTHER = "iqn.test-2,i,0x2"

Sense = tuple[int, int, int]
EXPECT_GOOD: Sense | None = None
EXPECT_LBA_OOB: Sense = (0x05, 0x21, 0x00)
EXPECT_INVALID_OPCODE: Sense = (0x05, 0x20, 0x00)
EXPECT_INVALID_FIELD_IN_CDB: Sense = (0x05, 0x24, 0x00)
EXPECT_INVALID_FIELD_IN_PARAM: Sense = (0x05, 0x26, 0x00)
EXPECT_PARAM_LIST_LENGTH: Sense = (0x05, 0x1A, 0x00)
EXPECT_INVALID_IU: Sense = (0x05, 0x0E, 0x03)
EXPECT_SAVING_NOT_SUPPORTED: Sense = (0x05, 0x39, 0x00)
EXPECT_LUN_NOT_SUPPORTED: Sense = (0x05, 0x25, 0x00)
EXPECT_WRITE_PROTECTED: Sense = (0x07, 0x27, 0x00)
EXPECT_SPACE_ALLOC_FAILED: Sense = (0x07, 0x27, 0x07)
EXPECT_MISCOMPARE: Sense = (0x0E, 0x1D, 0x00)
EXPECT_HARDWARE_ERROR: Sense = (0x04, 0x44, 0x00)
EXPECT_POWER_ON: Sense = (0x06, 0x29, 0x00)
EXPECT_MODE_CHANGED: Sense = (0x06, 0x2A, 0x01)


# ---------------------------------------------------------------- CDB builders
def cdb6(op: int, lba: int = 0, length: int = 0, b1: int = 0, control: int = 0) -> bytes:
    """READ(6)/WRITE(6)-shaped: 21-bit LBA in bytes 1-3, length in byte 4."""
    return bytes([op, b1 | ((lba >> 16) & 0x1F), (lba >> 8) & 0xFF, lba & 0xFF, length, control])


def cdb10(op: int, lba: int = 0, length: int = 0, flags: int = 0, *, b6: int = 0,
          control: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba & 0xFFFFFFFF, b6, length, control)


def cdb12(op: int, lba: int = 0, length: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba & 0xFFFFFFFF, length, 0, 0)


def cdb16(op: int, lba: int = 0, length: int = 0, flags: int = 0, *, b14: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba & 0xFFFFFFFFFFFFFFFF, length, b14, 0)


READ = {6: 0x08, 10: 0x28, 12: 0xA8, 16: 0x88}
WRITE = {6: 0x0A, 10: 0x2A, 12: 0xAA, 16: 0x8A}
VERIFY = {10: 0x2F, 12: 0xAF, 16: 0x8F}
WRITE_VERIFY = {10: 0x2E, 12: 0xAE, 16: 0x8E}


def rw(size: int, op: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    if size == 6:
        return cdb6(op, lba, blocks)
    return {10: cdb10, 12: cdb12, 16: cdb16}[size](op, lba, blocks, flags)


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def mode_sense6(page: int, *, pc: int = 0, subpage: int = 0, dbd: bool = True,
                alloc: int = 255) -> bytes:
    return bytes([0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0])


def mode_sense10(page: int, *, pc: int = 0, subpage: int = 0, dbd: bool = False,
                 llbaa: bool = False, alloc: int = 512) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return struct.pack(">BBBB3xHB", 0x5A, flags, (pc << 6) | page, subpage, alloc, 0)


def mode_select6(length: int, *, pf: bool = True, sp: bool = False) -> bytes:
    return bytes([0x15, (0x10 if pf else 0) | (0x01 if sp else 0), 0, 0, length, 0])


def mode_select10(length: int, *, pf: bool = True) -> bytes:
    return struct.pack(">BB5xHB", 0x55, 0x10 if pf else 0, length, 0)


def request_sense(alloc: int = 252, desc: bool = False) -> bytes:
    return bytes([0x03, int(desc), 0, 0, alloc, 0])


def report_luns(alloc: int = 64, select: int = 0) -> bytes:
    return struct.pack(">BxB3xIxB", 0xA0, select, alloc, 0)


def read_capacity16(alloc: int = 32) -> bytes:
    return cdb16(0x9E, 0, alloc, 0x10)


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return cdb16(0x9E, lba, alloc, 0x12)


def unmap_cdb(length: int, anchor: bool = False) -> bytes:
    return struct.pack(">BB4xBHB", 0x42, int(anchor), 0, length, 0)


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(descs) + 6, len(descs)) + descs


def compare_and_write(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, blocks, 0, 0)


# --------------------------------------------------------------- devices, LUs
def file_device(tmp_path: Path, *, nblocks: int = NBLOCKS, read_only: bool = False,
                name: str = "disk.img") -> FileBlockDevice:
    path = tmp_path / name
    if not path.exists():
        path.write_bytes(bytes(nblocks * BS))
    return FileBlockDevice(path, block_size=BS, read_only=read_only)


def volume(tmp_path: Path, *, nblocks: int = NBLOCKS) -> Volume:
    return Volume.create(str(tmp_path / "vol"), str(tmp_path / "vol.img"), size=nblocks * BS,
                         block_size=BS, options=VolumeOptions(commit_interval=None))


def ready_lu(device: BlockDevice, *, nexus: Hashable = NEXUS) -> LogicalUnit:
    """An LU whose POWER ON unit attention ``nexus`` has already consumed."""
    lu = LogicalUnit(device, uuid=UUID)
    resp = run(lu, bytes(6), nexus=nexus)
    assert sense_of(resp) == EXPECT_POWER_ON
    return lu


def run(lu: LogicalUnit, cdb: bytes, data_out: bytes | None = None, *,
        edtl: int | None = None, nexus: Hashable = NEXUS) -> ScsiResponse:
    """Execute ``cdb``; EDTL defaults to the data-out size, else 4096 for data-in."""
    if edtl is None:
        edtl = len(data_out) if data_out is not None else 4096
    resp = lu.execute(ScsiCommand(cdb, data_out, edtl, nexus))
    check_response(resp, edtl)
    return resp


def check_response(resp: ScsiResponse, edtl: int) -> None:
    """Invariants every response must keep, whatever the command."""
    assert isinstance(resp.status, ScsiStatus)
    assert len(resp.data_in) <= edtl
    assert resp.residual_overflow >= 0 and resp.residual_underflow >= 0
    assert not (resp.residual_overflow and resp.residual_underflow)
    if resp.status == ScsiStatus.CHECK_CONDITION:
        assert resp.sense is not None and len(resp.data_in) == 0
    else:
        assert resp.sense is None


def sense_of(resp: ScsiResponse) -> Sense | None:
    """(key, ASC, ASCQ) of a CHECK CONDITION in either sense format; None for GOOD."""
    if resp.status == ScsiStatus.GOOD:
        return None
    assert resp.status == ScsiStatus.CHECK_CONDITION, resp
    return parse_sense(resp.sense or b"")


def parse_sense(sense: bytes) -> Sense:
    code = sense[0] & 0x7F
    if code in (0x70, 0x71):
        assert len(sense) == 18 and sense[7] == 10
        return (sense[2] & 0x0F, sense[12], sense[13])
    assert code in (0x72, 0x73), sense.hex()
    assert len(sense) == 8 + sense[7]
    return (sense[1] & 0x0F, sense[2], sense[3])


def field_pointer(sense: bytes) -> tuple[bool, int, int | None]:
    """(C/D, byte, bit or None) from fixed-format sense."""
    sks = sense[15:18]
    assert sks[0] & 0x80, "SKSV not set"
    bit = sks[0] & 0x07 if sks[0] & 0x08 else None
    return bool(sks[0] & 0x40), int.from_bytes(sks[1:3]), bit


def information(sense: bytes) -> int:
    assert sense[0] & 0x80, "VALID not set"
    return int.from_bytes(sense[3:7])


def pattern(lba: int, blocks: int, seed: int = 1) -> bytes:
    """Distinct, recognisable block contents."""
    return b"".join(bytes([(seed * 37 + lba + i) % 251 + 1]) * BS for i in range(blocks))
