"""Typed CDBs: one frozen dataclass per command family, decoded from bytes.

Each wire layout is one ``struct.Struct`` with an asserted size, declared once
below and shared by every command that uses it ([SBC-3] 5.x, [SPC-4] 6.x).
:func:`decode` looks the opcode up in :data:`OPCODES` (and the service action
in :data:`SERVICE_ACTION_IN_16` for 0x9E) and returns a dataclass, or raises
:class:`CheckCondition`:

- unknown opcode → 05h/20h/00h, which makes initiators and libiscsi skip;
- a field we do not accept → 05h/24h/00h with the field pointer at its byte
  (and at the field's most significant bit when the field is a few bits).

Only semantics live here that need nothing but the CDB; LBA range, mode pages
and write protection are the logical unit's business (``lu.py``). Reserved bits
are ignored rather than rejected (allowed by [SPC-4] 4.3.2), except where a
bit asks for a feature we lack (protection information, NACA, LBDATA/PBDATA).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from target.scsi.sense import Asc, CheckCondition

__all__ = [
    "OPCODES",
    "SERVICE_ACTION_IN_16",
    "BlockIo",
    "Cdb",
    "CompareAndWrite",
    "GetLbaStatus",
    "Inquiry",
    "IoKind",
    "ModeSelect",
    "ModeSense",
    "NoData",
    "Opcode",
    "PageControl",
    "PersistentReserveIn",
    "PersistentReserveOut",
    "ReadCapacity10",
    "ReadCapacity16",
    "ReportLuns",
    "ReportOpcodes",
    "RequestSense",
    "Reserve6",
    "Unmap",
    "WriteSame",
    "decode",
    "length_byte",
]


class Opcode(IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_AND_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    MODE_SELECT_10 = 0x55
    MODE_SENSE_10 = 0x5A
    READ_16 = 0x88
    COMPARE_AND_WRITE = 0x89
    WRITE_16 = 0x8A
    WRITE_AND_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    SERVICE_ACTION_IN_16 = 0x9E
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_AND_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF


MAINTENANCE_IN_REPORT_SUPPORTED_OPCODES = 0x0C


class ServiceActionIn16(IntEnum):
    READ_CAPACITY_16 = 0x10
    GET_LBA_STATUS = 0x12


class IoKind(Enum):
    """What a block-addressed CDB asks the medium to do."""

    READ = "read"
    WRITE = "write"
    VERIFY = "verify"
    WRITE_AND_VERIFY = "write-and-verify"
    PRE_FETCH = "pre-fetch"
    SYNCHRONIZE_CACHE = "synchronize-cache"


class PageControl(IntEnum):
    """MODE SENSE PC field ([SPC-4] 6.11 table 161)."""

    CURRENT = 0
    CHANGEABLE = 1
    DEFAULT = 2
    SAVED = 3


# ---------------------------------------------------------------- layouts
# Byte 0 is always OPERATION CODE and the last byte CONTROL.
# READ(6)/WRITE(6): 0-3 opcode + 21-bit LBA, 4 TRANSFER LENGTH, 5 CONTROL ([SBC-3] 5.7, 5.26).
RW6 = struct.Struct(">IBB")
assert RW6.size == 6
# (10): 0 op, 1 flags, 2-5 LBA, 6 GROUP, 7-8 LENGTH, 9 CONTROL ([SBC-3] 5.8).
RW10 = struct.Struct(">BBIBHB")
assert RW10.size == 10
# (12): 0 op, 1 flags, 2-5 LBA, 6-9 LENGTH, 10 GROUP, 11 CONTROL ([SBC-3] 5.9).
RW12 = struct.Struct(">BBIIBB")
assert RW12.size == 12
# (16): 0 op, 1 flags, 2-9 LBA, 10-13 LENGTH, 14 GROUP, 15 CONTROL ([SBC-3] 5.10).
RW16 = struct.Struct(">BBQIBB")
assert RW16.size == 16
# COMPARE AND WRITE: 0 op, 1 flags, 2-9 LBA, 10-12 reserved, 13 NUMBER OF BLOCKS, 14 GROUP, 15.
CAW = struct.Struct(">BBQ3xBBB")
assert CAW.size == 16
# INQUIRY: 0 op, 1 EVPD(0), 2 PAGE CODE, 3-4 ALLOCATION LENGTH, 5 ([SPC-4] 6.6).
INQUIRY = struct.Struct(">BBBHB")
assert INQUIRY.size == 6
# 6-byte CDB with one flags byte and a one-byte length at byte 4: REQUEST SENSE, MODE SELECT(6).
FLAGS_LEN6 = struct.Struct(">BB2xBB")
assert FLAGS_LEN6.size == 6
# MODE SENSE(6): 0 op, 1 DBD(3), 2 PC(7-6) PAGE(5-0), 3 SUBPAGE, 4 ALLOCATION LENGTH, 5.
MODE_SENSE6 = struct.Struct(">BBBBBB")
assert MODE_SENSE6.size == 6
# MODE SENSE(10): 0 op, 1 LLBAA(4) DBD(3), 2 PC/PAGE, 3 SUBPAGE, 4-6 reserved, 7-8 ALLOC, 9.
MODE_SENSE10 = struct.Struct(">BBBB3xHB")
assert MODE_SENSE10.size == 10
# MODE SELECT(10): 0 op, 1 PF(4) SP(0), 2-6 reserved, 7-8 PARAMETER LIST LENGTH, 9.
MODE_SELECT10 = struct.Struct(">BB5xHB")
assert MODE_SELECT10.size == 10
# TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL: 0 op, 1-4 fields, 5 control.
SIMPLE6 = struct.Struct(">B4sB")
assert SIMPLE6.size == 6
# READ CAPACITY(10): 0 op, 1 obsolete, 2-5 LBA (obsolete), 6-7 reserved, 8 PMI(0), 9.
READ_CAPACITY10 = struct.Struct(">BBI2xBB")
assert READ_CAPACITY10.size == 10
# SERVICE ACTION IN(16): 0 op, 1 SA(4-0), 2-9 LBA, 10-13 ALLOCATION LENGTH, 14 (PMI), 15.
SAI16 = struct.Struct(">BBQIBB")
assert SAI16.size == 16
# REPORT LUNS: 0 op, 1 reserved, 2 SELECT REPORT, 3-5 reserved, 6-9 ALLOC, 10 reserved, 11.
REPORT_LUNS = struct.Struct(">BxB3xIxB")
assert REPORT_LUNS.size == 12
# UNMAP: 0 op, 1 ANCHOR(0), 2-5 reserved, 6 GROUP, 7-8 PARAMETER LIST LENGTH, 9 ([SBC-3] 5.28).
UNMAP = struct.Struct(">BB4xBHB")
assert UNMAP.size == 10

# PERSISTENT RESERVE IN: 0 op, 1 SA(4-0), 2-6 reserved, 7-8 ALLOCATION LENGTH, 9 ([SPC-4] 6.15).
PR_IN = struct.Struct(">BB5xHB")
assert PR_IN.size == 10
# PERSISTENT RESERVE OUT: 0 op, 1 SA(4-0), 2 SCOPE(7-4) TYPE(3-0), 3-4 reserved,
# 5-8 PARAMETER LIST LENGTH, 9 ([SPC-4] 6.16).
PR_OUT = struct.Struct(">BBB2xIB")
assert PR_OUT.size == 10

# REPORT SUPPORTED OPERATION CODES: 0 op, 1 SA, 2 RCTD(7) REPORTING OPTIONS(2-0),
# 3 REQUESTED OPCODE, 4-5 REQUESTED SA, 6-9 ALLOCATION LENGTH, 10 reserved, 11 ([SPC-4] 6.35).
RSOC = struct.Struct(">BBBBHIxB")
assert RSOC.size == 12

_NACA = 0x04  # CONTROL byte bit 2 ([SAM-5] 5.2); we do not support ACA.
_PROTECT_MASK = 0xE0  # RD/WR/VRPROTECT, byte 1 bits 7-5: we have no protection information.
_DPO = 0x10
_FUA = 0x08
_IMMED = 0x02


# ------------------------------------------------------------ dataclasses
@dataclass(slots=True)
class BlockIo:
    """READ/WRITE/VERIFY/WRITE AND VERIFY (6/10/12/16), PRE-FETCH, SYNCHRONIZE CACHE."""

    opcode: int
    kind: IoKind
    lba: int
    blocks: int
    dpo: bool = False
    fua: bool = False
    bytchk: bool = False  # VERIFY / WRITE AND VERIFY: compare against data-out
    immed: bool = False  # PRE-FETCH / SYNCHRONIZE CACHE


@dataclass(slots=True)
class CompareAndWrite:
    lba: int
    blocks: int
    dpo: bool
    fua: bool


@dataclass(slots=True)
class WriteSame:
    opcode: int
    lba: int
    blocks: int  # 0: up to the last LBA (WSNZ=0)
    unmap: bool
    anchor: bool
    ndob: bool  # WRITE SAME(16) only: no data-out buffer, write zeros


@dataclass(slots=True)
class Unmap:
    anchor: bool
    param_len: int


@dataclass(slots=True)
class NoData:
    """TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL: no fields we act on."""

    opcode: int


@dataclass(slots=True)
class Inquiry:
    evpd: bool
    page: int
    alloc: int


@dataclass(slots=True)
class RequestSense:
    desc: bool
    alloc: int


@dataclass(slots=True)
class ModeSense:
    ten: bool  # MODE SENSE(10)
    dbd: bool
    llbaa: bool
    pc: PageControl
    page: int
    subpage: int
    alloc: int


@dataclass(slots=True)
class ModeSelect:
    ten: bool
    pf: bool
    sp: bool
    param_len: int


@dataclass(slots=True)
class ReadCapacity10:
    pass


@dataclass(slots=True)
class ReadCapacity16:
    alloc: int


@dataclass(slots=True)
class GetLbaStatus:
    lba: int
    alloc: int


@dataclass(slots=True)
class ReportLuns:
    select: int
    alloc: int


@dataclass(slots=True)
class PersistentReserveIn:
    action: int
    alloc: int


@dataclass(slots=True)
class PersistentReserveOut:
    action: int
    scope: int
    type: int
    param_len: int


@dataclass(slots=True)
class Reserve6:
    """RESERVE(6) or, with ``release``, RELEASE(6) (SPC-2 reservations)."""

    release: bool


@dataclass(slots=True)
class ReportOpcodes:
    rctd: bool
    options: int
    opcode: int
    action: int
    alloc: int


Cdb = (BlockIo | CompareAndWrite | WriteSame | Unmap | NoData | Inquiry | RequestSense
       | ModeSense | ModeSelect | ReadCapacity10 | ReadCapacity16 | GetLbaStatus | ReportLuns
       | PersistentReserveIn | PersistentReserveOut | Reserve6 | ReportOpcodes)


# ---------------------------------------------------------------- helpers
def _unpack(layout: struct.Struct, cdb: bytes) -> tuple[int, ...]:
    if len(cdb) < layout.size:
        # The CDB is shorter than its opcode's group requires ([SPC-4] 4.3.2).
        raise CheckCondition.invalid_cdb(0)
    fields = layout.unpack_from(cdb)
    if cdb[layout.size - 1] & _NACA:
        raise CheckCondition.invalid_cdb(layout.size - 1, 2)
    return fields


def _no_protect(flags: int) -> None:
    if flags & _PROTECT_MASK:
        raise CheckCondition.invalid_cdb(1, 7)


def _bytchk(flags: int) -> bool:
    # SBC-3 has BYTCHK in bit 1; SBC-4 widens it to bits 2-1 where 01b is the same
    # compare, and 10b/11b are reserved / "one block for all" which we do not offer.
    value = (flags >> 1) & 0x3
    if value > 1:
        raise CheckCondition.invalid_cdb(1, 2)
    return value == 1


def length_byte(opcode: int) -> int:
    """Index of the TRANSFER LENGTH field of a block CDB, for field pointers."""
    return {0: 4, 1: 7, 2: 7, 4: 10, 5: 6}.get(opcode >> 5, 0)


def _lba_len(opcode: int, cdb: bytes) -> tuple[int, int, int]:
    """(flags, lba, length) of a 10/12/16-byte block CDB, by the opcode's group."""
    group = opcode >> 5  # [SPC-4] 4.3.4: group code 1/2 = 10 bytes, 4 = 16, 5 = 12
    if group in (1, 2):
        _, flags, lba, _, length, _ = _unpack(RW10, cdb)
    elif group == 5:
        _, flags, lba, length, _, _ = _unpack(RW12, cdb)
    else:
        _, flags, lba, length, _, _ = _unpack(RW16, cdb)
    return flags, lba, length


# --------------------------------------------------------------- decoders
def _rw6(kind: IoKind) -> Callable[[bytes], Cdb]:
    def decode_rw6(cdb: bytes) -> Cdb:
        head, length, _ = _unpack(RW6, cdb)
        # TRANSFER LENGTH 0 means 256 blocks for the 6-byte forms ([SBC-3] 5.7).
        return BlockIo(head >> 24, kind, head & 0x1FFFFF, length or 256)

    return decode_rw6


def _rw(kind: IoKind) -> Callable[[bytes], Cdb]:
    def decode_rw(cdb: bytes) -> Cdb:
        flags, lba, length = _lba_len(cdb[0], cdb)
        _no_protect(flags)
        return BlockIo(cdb[0], kind, lba, length, dpo=bool(flags & _DPO),
                       fua=bool(flags & _FUA))

    return decode_rw


def _verify(kind: IoKind) -> Callable[[bytes], Cdb]:
    def decode_verify(cdb: bytes) -> Cdb:
        flags, lba, length = _lba_len(cdb[0], cdb)
        _no_protect(flags)
        return BlockIo(cdb[0], kind, lba, length, dpo=bool(flags & _DPO),
                       bytchk=_bytchk(flags))

    return decode_verify


def _no_transfer(kind: IoKind) -> Callable[[bytes], Cdb]:
    def decode_no_transfer(cdb: bytes) -> Cdb:
        flags, lba, length = _lba_len(cdb[0], cdb)
        return BlockIo(cdb[0], kind, lba, length, immed=bool(flags & _IMMED))

    return decode_no_transfer


def _write_same(cdb: bytes) -> Cdb:
    flags, lba, length = _lba_len(cdb[0], cdb)
    _no_protect(flags)
    if flags & 0x06:  # PBDATA(2) / LBDATA(1): we do not fill in block addresses
        raise CheckCondition.invalid_cdb(1, 2 if flags & 0x04 else 1)
    ndob = bool(flags & 0x01) and cdb[0] == Opcode.WRITE_SAME_16
    return WriteSame(cdb[0], lba, length, unmap=bool(flags & 0x08), anchor=bool(flags & 0x10),
                     ndob=ndob)


def _compare_and_write(cdb: bytes) -> Cdb:
    _, flags, lba, blocks, _, _ = _unpack(CAW, cdb)
    _no_protect(flags)
    return CompareAndWrite(lba, blocks, dpo=bool(flags & _DPO), fua=bool(flags & _FUA))


def _unmap(cdb: bytes) -> Cdb:
    _, flags, _, length, _ = _unpack(UNMAP, cdb)
    return Unmap(anchor=bool(flags & 0x01), param_len=length)


def _no_data(cdb: bytes) -> Cdb:
    _unpack(SIMPLE6, cdb)
    return NoData(cdb[0])


def _inquiry(cdb: bytes) -> Cdb:
    _, flags, page, alloc, _ = _unpack(INQUIRY, cdb)
    if flags & 0x02:  # CMDDT is obsolete ([SPC-4] 6.6.1)
        raise CheckCondition.invalid_cdb(1, 1)
    evpd = bool(flags & 0x01)
    if not evpd and page:
        raise CheckCondition.invalid_cdb(2)
    return Inquiry(evpd, page, alloc)


def _request_sense(cdb: bytes) -> Cdb:
    _, flags, alloc, _ = _unpack(FLAGS_LEN6, cdb)
    return RequestSense(desc=bool(flags & 0x01), alloc=alloc)


def _page_control(pc_page: int) -> tuple[PageControl, int]:
    return PageControl(pc_page >> 6), pc_page & 0x3F


def _mode_sense6(cdb: bytes) -> Cdb:
    _, flags, pc_page, subpage, alloc, _ = _unpack(MODE_SENSE6, cdb)
    pc, page = _page_control(pc_page)
    return ModeSense(False, bool(flags & 0x08), False, pc, page, subpage, alloc)


def _mode_sense10(cdb: bytes) -> Cdb:
    _, flags, pc_page, subpage, alloc, _ = _unpack(MODE_SENSE10, cdb)
    pc, page = _page_control(pc_page)
    return ModeSense(True, bool(flags & 0x08), bool(flags & 0x10), pc, page, subpage, alloc)


def _mode_select6(cdb: bytes) -> Cdb:
    _, flags, length, _ = _unpack(FLAGS_LEN6, cdb)
    return ModeSelect(False, bool(flags & 0x10), bool(flags & 0x01), length)


def _mode_select10(cdb: bytes) -> Cdb:
    _, flags, length, _ = _unpack(MODE_SELECT10, cdb)
    return ModeSelect(True, bool(flags & 0x10), bool(flags & 0x01), length)


def _read_capacity10(cdb: bytes) -> Cdb:
    _, _, lba, pmi, _ = _unpack(READ_CAPACITY10, cdb)
    if not pmi & 0x01 and lba:  # [SBC-3] 5.15: LBA must be 0 when PMI is 0
        raise CheckCondition.invalid_cdb(2)
    return ReadCapacity10()


def _read_capacity16(cdb: bytes) -> Cdb:
    _, _, lba, alloc, pmi, _ = _unpack(SAI16, cdb)
    if not pmi & 0x01 and lba:  # [SBC-3] 5.16, as for READ CAPACITY(10)
        raise CheckCondition.invalid_cdb(2)
    return ReadCapacity16(alloc)


def _get_lba_status(cdb: bytes) -> Cdb:
    _, _, lba, alloc, _, _ = _unpack(SAI16, cdb)
    return GetLbaStatus(lba, alloc)


def _report_luns(cdb: bytes) -> Cdb:
    _, select, alloc, _ = _unpack(REPORT_LUNS, cdb)
    if select > 2:  # 0 all, 1 well-known only, 2 both ([SPC-4] 6.33); 0x10-0x12 optional
        raise CheckCondition.invalid_cdb(2)
    if alloc < 16:  # [SPC-3] 6.21: fewer than 16 bytes is an error
        raise CheckCondition.invalid_cdb(6)
    return ReportLuns(select, alloc)


def _pr_in(cdb: bytes) -> Cdb:
    _, action, alloc, _ = _unpack(PR_IN, cdb)
    return PersistentReserveIn(action & 0x1F, alloc)


def _pr_out(cdb: bytes) -> Cdb:
    _, action, scope_type, length, _ = _unpack(PR_OUT, cdb)
    return PersistentReserveOut(action & 0x1F, scope_type >> 4, scope_type & 0x0F, length)


def _reserve6(cdb: bytes) -> Cdb:
    _unpack(SIMPLE6, cdb)
    if cdb[1] & 0x1F:  # third-party and extent reservations are obsolete ([SPC-2] 7.21)
        raise CheckCondition.invalid_cdb(1, 4)
    return Reserve6(release=cdb[0] == Opcode.RELEASE_6)


def _maintenance_in(cdb: bytes) -> Cdb:
    _, action, flags, opcode, requested_sa, alloc, _ = _unpack(RSOC, cdb)
    if action & 0x1F != MAINTENANCE_IN_REPORT_SUPPORTED_OPCODES:
        raise CheckCondition.invalid_cdb(1, 4)
    return ReportOpcodes(bool(flags & 0x80), flags & 0x07, opcode, requested_sa, alloc)


SERVICE_ACTION_IN_16: dict[int, Callable[[bytes], Cdb]] = {
    ServiceActionIn16.READ_CAPACITY_16: _read_capacity16,
    ServiceActionIn16.GET_LBA_STATUS: _get_lba_status,
}


def _service_action_in16(cdb: bytes) -> Cdb:
    _unpack(SAI16, cdb)
    decoder = SERVICE_ACTION_IN_16.get(cdb[1] & 0x1F)
    if decoder is None:
        # An unsupported service action is an invalid field at byte 1 ([SPC-4] 4.3.5.1).
        raise CheckCondition.invalid_cdb(1, 4)
    return decoder(cdb)


OPCODES: dict[int, Callable[[bytes], Cdb]] = {
    Opcode.TEST_UNIT_READY: _no_data,
    Opcode.REQUEST_SENSE: _request_sense,
    Opcode.READ_6: _rw6(IoKind.READ),
    Opcode.WRITE_6: _rw6(IoKind.WRITE),
    Opcode.INQUIRY: _inquiry,
    Opcode.MODE_SELECT_6: _mode_select6,
    Opcode.MODE_SENSE_6: _mode_sense6,
    Opcode.START_STOP_UNIT: _no_data,
    Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL: _no_data,
    Opcode.READ_CAPACITY_10: _read_capacity10,
    Opcode.READ_10: _rw(IoKind.READ),
    Opcode.WRITE_10: _rw(IoKind.WRITE),
    Opcode.WRITE_AND_VERIFY_10: _verify(IoKind.WRITE_AND_VERIFY),
    Opcode.VERIFY_10: _verify(IoKind.VERIFY),
    Opcode.PRE_FETCH_10: _no_transfer(IoKind.PRE_FETCH),
    Opcode.SYNCHRONIZE_CACHE_10: _no_transfer(IoKind.SYNCHRONIZE_CACHE),
    Opcode.WRITE_SAME_10: _write_same,
    Opcode.UNMAP: _unmap,
    Opcode.MODE_SELECT_10: _mode_select10,
    Opcode.MODE_SENSE_10: _mode_sense10,
    Opcode.READ_16: _rw(IoKind.READ),
    Opcode.COMPARE_AND_WRITE: _compare_and_write,
    Opcode.WRITE_16: _rw(IoKind.WRITE),
    Opcode.WRITE_AND_VERIFY_16: _verify(IoKind.WRITE_AND_VERIFY),
    Opcode.VERIFY_16: _verify(IoKind.VERIFY),
    Opcode.PRE_FETCH_16: _no_transfer(IoKind.PRE_FETCH),
    Opcode.SYNCHRONIZE_CACHE_16: _no_transfer(IoKind.SYNCHRONIZE_CACHE),
    Opcode.WRITE_SAME_16: _write_same,
    Opcode.SERVICE_ACTION_IN_16: _service_action_in16,
    Opcode.REPORT_LUNS: _report_luns,
    Opcode.PERSISTENT_RESERVE_IN: _pr_in,
    Opcode.PERSISTENT_RESERVE_OUT: _pr_out,
    Opcode.RESERVE_6: _reserve6,
    Opcode.RELEASE_6: _reserve6,
    Opcode.MAINTENANCE_IN: _maintenance_in,
    Opcode.READ_12: _rw(IoKind.READ),
    Opcode.WRITE_12: _rw(IoKind.WRITE),
    Opcode.WRITE_AND_VERIFY_12: _verify(IoKind.WRITE_AND_VERIFY),
    Opcode.VERIFY_12: _verify(IoKind.VERIFY),
}


def decode(cdb: bytes | memoryview) -> Cdb:
    """Decode one CDB, or raise :class:`CheckCondition`."""
    raw = bytes(cdb)
    if not raw:
        raise CheckCondition.illegal(Asc.INVALID_COMMAND_OPERATION_CODE)
    decoder = OPCODES.get(raw[0])
    if decoder is None:
        raise CheckCondition.illegal(Asc.INVALID_COMMAND_OPERATION_CODE)
    return decoder(raw)
