"""REPORT SUPPORTED OPERATION CODES ([SPC-4] 6.35; scsi.md §7).

:data:`SUPPORTED` is the one table of what the LU implements: for each
(opcode, service action) its CDB USAGE DATA, a bit map of the CDB where a 1 marks
a bit the device server evaluates ([SPC-4] 6.35.3). Byte 0 is the opcode and, for
commands with service actions, the SERVICE ACTION field holds the action. Fields
that are accepted but ignored (GROUP NUMBER, FUA_NV, START STOP UNIT's fields)
and fields whose only accepted value is zero (RDPROTECT, ANCHOR, NACA) are 0.
DPO/FUA (0x18 in byte 1) are set on READ/WRITE/COMPARE AND WRITE, matching the
DPOFUA bit of MODE SENSE (libiscsi *DpoFua tests compare them).

A test checks the table against the decoder's dispatch tables, so the report
cannot drift from what ``execute`` accepts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from target.scsi.cdb import ReportOpcodes
from target.scsi.command import Outcome, ScsiCommand
from target.scsi.sense import CheckCondition

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit

__all__ = ["HANDLERS", "SUPPORTED", "report_supported_opcodes"]


def _usage(text: str) -> bytes:
    return bytes.fromhex(text)


_RW10 = "18 ff ff ff ff 00 ff ff 00"
_RW12 = "18 ff ff ff ff ff ff ff ff 00 00"
_RW16 = "18 ff ff ff ff ff ff ff ff ff ff ff ff 00 00"
_BLK10 = "ff ff ff ff 00 ff ff 00"  # LBA, group, length, control after the flags byte
_BLK12 = "ff ff ff ff ff ff ff ff 00 00"
_BLK16 = "ff ff ff ff ff ff ff ff ff ff ff ff 00 00"

# (opcode, service action or None) -> CDB USAGE DATA
SUPPORTED: dict[tuple[int, int | None], bytes] = {
    (0x00, None): _usage("00 00 00 00 00 00"),  # TEST UNIT READY
    (0x03, None): _usage("03 01 00 00 ff 00"),  # REQUEST SENSE: DESC, allocation length
    (0x08, None): _usage("08 1f ff ff ff 00"),  # READ(6)
    (0x0A, None): _usage("0a 1f ff ff ff 00"),  # WRITE(6)
    (0x12, None): _usage("12 01 ff ff ff 00"),  # INQUIRY: EVPD, page, allocation length
    (0x15, None): _usage("15 11 00 00 ff 00"),  # MODE SELECT(6): PF, SP
    (0x16, None): _usage("16 00 00 00 00 00"),  # RESERVE(6)
    (0x17, None): _usage("17 00 00 00 00 00"),  # RELEASE(6)
    (0x1A, None): _usage("1a 08 ff ff ff 00"),  # MODE SENSE(6): DBD, PC/page, subpage
    (0x1B, None): _usage("1b 00 00 00 00 00"),  # START STOP UNIT: accepted, ignored
    (0x1E, None): _usage("1e 00 00 00 00 00"),  # PREVENT ALLOW MEDIUM REMOVAL
    (0x25, None): _usage("25 00 ff ff ff ff 00 00 01 00"),  # READ CAPACITY(10)
    (0x28, None): _usage("28 " + _RW10),
    (0x2A, None): _usage("2a " + _RW10),
    (0x2E, None): _usage("2e 12 " + _BLK10),  # WRITE AND VERIFY(10): DPO, BYTCHK
    (0x2F, None): _usage("2f 12 " + _BLK10),  # VERIFY(10)
    (0x34, None): _usage("34 02 " + _BLK10),  # PRE-FETCH(10): IMMED
    (0x35, None): _usage("35 02 " + _BLK10),  # SYNCHRONIZE CACHE(10): IMMED
    (0x41, None): _usage("41 08 " + _BLK10),  # WRITE SAME(10): UNMAP
    (0x42, None): _usage("42 00 00 00 00 00 00 ff ff 00"),  # UNMAP
    (0x55, None): _usage("55 11 00 00 00 00 00 ff ff 00"),  # MODE SELECT(10)
    (0x5A, None): _usage("5a 18 ff ff 00 00 00 ff ff 00"),  # MODE SENSE(10): LLBAA, DBD
    **{(0x5E, sa): _usage(f"5e {sa:02x} 00 00 00 00 00 ff ff 00") for sa in range(4)},
    **{(0x5F, sa): _usage(f"5f {sa:02x} ff 00 00 ff ff ff ff 00") for sa in range(7)},
    (0x88, None): _usage("88 " + _RW16),
    (0x89, None): _usage("89 18 ff ff ff ff ff ff ff ff 00 00 00 ff 00 00"),  # COMPARE AND WRITE
    (0x8A, None): _usage("8a " + _RW16),
    (0x8E, None): _usage("8e 12 " + _BLK16),
    (0x8F, None): _usage("8f 12 " + _BLK16),
    (0x90, None): _usage("90 02 " + _BLK16),
    (0x91, None): _usage("91 02 " + _BLK16),
    (0x93, None): _usage("93 09 " + _BLK16),  # WRITE SAME(16): UNMAP, NDOB
    (0x9E, 0x10): _usage("9e 10 ff ff ff ff ff ff ff ff ff ff ff ff 01 00"),  # RC(16)
    (0x9E, 0x12): _usage("9e 12 " + _BLK16),  # GET LBA STATUS
    (0xA0, None): _usage("a0 00 ff 00 00 00 ff ff ff ff 00 00"),  # REPORT LUNS
    (0xA3, 0x0C): _usage("a3 0c 87 ff ff ff ff ff ff ff 00 00"),  # this command
    (0xA8, None): _usage("a8 " + _RW12),
    (0xAA, None): _usage("aa " + _RW12),
    (0xAE, None): _usage("ae 12 " + _BLK12),
    (0xAF, None): _usage("af 12 " + _BLK12),
}

_WITH_SERVICE_ACTIONS = frozenset(op for op, sa in SUPPORTED if sa is not None)

# Command timeouts descriptor ([SPC-4] 6.35.4): DESCRIPTOR LENGTH 0x0A, reserved, COMMAND
# SPECIFIC, NOMINAL and RECOMMENDED timeouts in seconds (0: not specified).
_TIMEOUTS = struct.pack(">HxBII", 0x0A, 0, 0, 30)
assert len(_TIMEOUTS) == 12
_DESCRIPTOR = struct.Struct(">BxHxBH")  # opcode, SA, CTDP(1) SERVACTV(0), CDB LENGTH
assert _DESCRIPTOR.size == 8

_SUPPORTED_PER_STANDARD = 3
_NOT_SUPPORTED = 1


def _all_commands(rctd: bool) -> bytes:
    body = b""
    for (op, sa), usage in sorted(SUPPORTED.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        flags = (0x02 if rctd else 0) | (0x01 if sa is not None else 0)
        body += _DESCRIPTOR.pack(op, sa or 0, flags, len(usage))
        if rctd:
            body += _TIMEOUTS
    return struct.pack(">I", len(body)) + body


def _one_command(key: tuple[int, int | None], rctd: bool) -> bytes:
    usage = SUPPORTED.get(key)
    if usage is None:  # SUPPORT 001b: not supported; no usage data ([SPC-4] 6.35.3)
        return struct.pack(">xBH", _NOT_SUPPORTED, 0)
    head = struct.pack(">xBH", (0x80 if rctd else 0) | _SUPPORTED_PER_STANDARD, len(usage))
    return head + usage + (_TIMEOUTS if rctd else b"")


def report_supported_opcodes(lu: LogicalUnit, cdb: ReportOpcodes, cmd: ScsiCommand) -> Outcome:
    if cdb.options == 0:
        data = _all_commands(cdb.rctd)
    elif cdb.options == 1:
        # By opcode alone: wrong for opcodes that have service actions ([SPC-4] 6.35.2).
        if cdb.opcode in _WITH_SERVICE_ACTIONS:
            raise CheckCondition.invalid_cdb(2, 2)
        data = _one_command((cdb.opcode, None), cdb.rctd)
    elif cdb.options == 2:
        # By opcode and service action: wrong for opcodes we know to have none.
        if (cdb.opcode, None) in SUPPORTED:
            raise CheckCondition.invalid_cdb(2, 2)
        data = _one_command((cdb.opcode, cdb.action), cdb.rctd)
    else:
        raise CheckCondition.invalid_cdb(2, 2)
    return Outcome(data[: cdb.alloc])


HANDLERS: dict[type, Callable[..., Any]] = {ReportOpcodes: report_supported_opcodes}
