"""REPORT LUNS data and the answers for a LUN that does not exist ([SPC-4] 6.33, [SAM-5] 4.6).

The LUN inventory belongs to the target (the transport's owner), not to one LU,
so these are plain functions of a LUN list. :func:`execute_without_lu` is what
a transport calls for a command addressed to a LUN it does not have.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from target.scsi.cdb import Inquiry, Opcode, ReportLuns, RequestSense, decode
from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.sense import Asc, CheckCondition, ScsiStatus, SenseKey, build_sense

__all__ = ["encode_lun", "execute_without_lu", "report_luns_data"]

# Peripheral device addressing up to 255, flat space addressing up to 16383 ([SAM-5] 4.7).
MAX_LUN = 0x3FFF
_HDR = struct.Struct(">I4x")  # LUN LIST LENGTH, reserved
assert _HDR.size == 8


def encode_lun(lun: int) -> bytes:
    """The 8-byte LUN field for ``lun`` (tgt and LIO encode the same way)."""
    if not 0 <= lun <= MAX_LUN:
        raise ValueError(f"LUN {lun} is outside 0..{MAX_LUN}")
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    return bytes([0x40 | (lun >> 8), lun & 0xFF]) + bytes(6)


def report_luns_data(luns: Iterable[int], select: int = 0) -> bytes:
    """Full (untruncated) REPORT LUNS parameter data.

    SELECT REPORT 1 asks for well-known LUNs only: we have none, so the list is empty.
    """
    entries = b"" if select == 1 else b"".join(encode_lun(n) for n in sorted(set(luns)))
    return _HDR.pack(len(entries)) + entries


# Standard INQUIRY data for an absent LUN: PERIPHERAL QUALIFIER 3 (not capable of
# supporting a device here), DEVICE TYPE 1Fh ([SPC-4] 6.6.2); the rest of the 36 bytes zero
# except the response format and additional length.
_NO_LU_INQUIRY = bytes([0x7F, 0x00, 0x06, 0x12, 31]) + bytes(31)


def _reply(data: bytes, cmd: ScsiCommand) -> ScsiResponse:
    edtl = cmd.expected_length
    return ScsiResponse(ScsiStatus.GOOD, data[:edtl],
                        residual_underflow=max(edtl - len(data), 0),
                        residual_overflow=max(len(data) - edtl, 0))


def execute_without_lu(cmd: ScsiCommand, luns: Sequence[int]) -> ScsiResponse:
    """Answer a command for a LUN that does not exist (scsi.md §7).

    INQUIRY → GOOD with qualifier 3; REPORT LUNS → the target's list; REQUEST SENSE
    → GOOD with 05h/25h/00h as sense data; anything else → CHECK CONDITION 05h/25h/00h.
    """
    no_lun = CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LUN_NOT_SUPPORTED)
    opcode = cmd.cdb[0] if len(cmd.cdb) else -1
    try:
        if opcode in (Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE):
            cdb = decode(cmd.cdb)
            if isinstance(cdb, Inquiry):
                return _reply(_NO_LU_INQUIRY[: cdb.alloc], cmd)
            if isinstance(cdb, ReportLuns):
                return _reply(report_luns_data(luns, cdb.select)[: cdb.alloc], cmd)
            if isinstance(cdb, RequestSense):
                return _reply(build_sense(no_lun, descriptor=cdb.desc)[: cdb.alloc], cmd)
    except CheckCondition as cc:
        no_lun = cc
    return ScsiResponse(ScsiStatus.CHECK_CONDITION, sense=build_sense(no_lun, descriptor=False),
                        residual_underflow=cmd.expected_length)
