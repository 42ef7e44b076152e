"""INQUIRY: the LU's identity, standard inquiry data and VPD pages ([SPC-4] 6.6, 7.8; [SBC-3] 6.6).

Identity is derived from a stable UUID given at construction (the volume's),
so designators stay identical on every path and session and survive restarts,
rewinds and reopens (scsi.md §3: MultipathIO compares them; Linux names the
disk ``wwn-...`` from the NAA designator).

NAA: cdpswitch owns no IEEE OUI, so it does not fake one in an NAA 6h (IEEE
Registered Extended) designator; it uses NAA 3h, *locally assigned* ([SPC-4]
7.8.6.6.2: 60 bits the assigner makes unique), filled from the UUID. Linux, qemu
and multipath treat any NAA type alike.

Limits advertised in the Block Limits page are module constants, so the code
that enforces them (``sbc.py``) reads the same numbers.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from target.scsi.sense import CheckCondition

__all__ = [
    "MAX_COMPARE_AND_WRITE_BLOCKS",
    "MAX_TRANSFER_BYTES",
    "MAX_UNMAP_DESCRIPTORS",
    "MAX_UNMAP_LBA_COUNT",
    "MAX_WRITE_SAME_BLOCKS",
    "VENDOR",
    "Identity",
    "inquiry_data",
]

VENDOR = "CDPSWTCH"

# Block Limits ([SBC-3] 6.6.3). UNMAP maxima must be <= 2^20 or 0xFFFFFFFF (scsi.md §3);
# 2^20 keeps one WRITE SAME / UNMAP command bounded in the time it holds the event loop.
MAX_COMPARE_AND_WRITE_BLOCKS = 255  # the NUMBER OF BLOCKS field is one byte
# libiscsi's WriteSame16.Unmap writes and reads 65536 blocks (32 MiB at 512 bytes) in one
# command whatever this says; the iSCSI connection accepts writes up to 64 MiB.
MAX_TRANSFER_BYTES = 64 << 20
OPTIMAL_TRANSFER_BYTES = 128 << 10
MAX_UNMAP_LBA_COUNT = 1 << 20
MAX_UNMAP_DESCRIPTORS = 256
MAX_WRITE_SAME_BLOCKS = 1 << 20

# Version descriptors ([SPC-4] 6.6.2 table 143): SAM-5, SPC-4, SBC-3, iSCSI (no version).
# SBC-3 makes libiscsi require READ CAPACITY(16), READ(16) and a 0x3C-long Block Limits page.
VERSION_DESCRIPTORS = (0x00A0, 0x0460, 0x04C0, 0x0960)

_DEVICE_TYPE_DISK = 0x00
_SPC4 = 0x06  # VERSION; 0x07 (SPC-5) fails libiscsi 1.19's Inquiry.Standard


def _ascii(text: str, width: int) -> bytes:
    raw = text.encode("ascii", "replace")[:width]
    if any(not 0x20 <= c <= 0x7E for c in raw):
        raise ValueError(f"{text!r}: INQUIRY strings are printable ASCII ([SPC-4] 4.4.1)")
    return raw.ljust(width, b" ")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the LU says it is. ``uuid`` must be stable for the volume's lifetime."""

    uuid: uuidlib.UUID
    product: str = "CDP VOLUME"
    revision: str = "0001"
    # A target-port designator needs the target's name; the transport supplies it.
    target_name: str | None = None
    relative_port: int = 1

    def __post_init__(self) -> None:
        _ascii(self.product, 16)
        _ascii(self.revision, 4)

    @property
    def serial(self) -> str:
        return self.uuid.hex

    def naa(self) -> bytes:
        """NAA 3h locally assigned: 4-bit NAA then the UUID's low 60 bits (8 bytes)."""
        return struct.pack(">Q", (0x3 << 60) | (self.uuid.int & ((1 << 60) - 1)))


# ------------------------------------------------------------------ standard data
# 0 qualifier/type, 1 RMB, 2 VERSION, 3 HISUP(4) RESPONSE DATA FORMAT(3-0), 4 ADDITIONAL LENGTH,
# 5 flags, 6 flags, 7 CMDQUE(1), 8-15 vendor, 16-31 product, 32-35 revision, 36-57 vendor
# specific / reserved, 58-73 eight version descriptors, 74-95 reserved ([SPC-4] 6.6.2).
_STANDARD = struct.Struct(">BBBBBBBB8s16s4s22x8H22x")
STANDARD_LEN = 96
assert _STANDARD.size == STANDARD_LEN


def standard_inquiry(ident: Identity) -> bytes:
    descriptors = (*VERSION_DESCRIPTORS, 0, 0, 0, 0)[:8]
    return _STANDARD.pack(
        _DEVICE_TYPE_DISK, 0x00, _SPC4, 0x12, STANDARD_LEN - 5, 0x00, 0x00, 0x02,
        _ascii(VENDOR, 8), _ascii(ident.product, 16), _ascii(ident.revision, 4), *descriptors,
    )


# ---------------------------------------------------------------------- VPD pages
_VPD_HDR = struct.Struct(">BBH")  # qualifier/type, page code, PAGE LENGTH
assert _VPD_HDR.size == 4


def _page(code: int, body: bytes) -> bytes:
    return _VPD_HDR.pack(_DEVICE_TYPE_DISK, code, len(body)) + body


def _designator(code_set: int, assoc: int, dtype: int, value: bytes, *,
                protocol: int | None = None) -> bytes:
    """One designation descriptor ([SPC-4] 7.8.6.1 table 459)."""
    b0 = code_set | ((protocol << 4) if protocol is not None else 0)
    b1 = (0x80 if protocol is not None else 0) | (assoc << 4) | dtype
    return struct.pack(">BBxB", b0, b1, len(value)) + value


_BINARY, _ASCII, _UTF8 = 1, 2, 3
_ASSOC_LU, _ASSOC_PORT = 0, 1
_TYPE_T10, _TYPE_NAA, _TYPE_REL_PORT, _TYPE_SCSI_NAME = 1, 3, 4, 8
_PROTO_ISCSI = 5


def _device_identification(ident: Identity, _bs: int) -> bytes:
    body = _designator(_BINARY, _ASSOC_LU, _TYPE_NAA, ident.naa())
    body += _designator(_ASCII, _ASSOC_LU, _TYPE_T10,
                        _ascii(VENDOR, 8) + ident.serial.encode("ascii"))
    body += _designator(_BINARY, _ASSOC_PORT, _TYPE_REL_PORT,
                        struct.pack(">xxH", ident.relative_port), protocol=_PROTO_ISCSI)
    if ident.target_name is not None:
        # SCSI name string: NUL-terminated, padded to a multiple of 4 ([SPC-4] 7.8.6.11).
        name = f"{ident.target_name},t,0x{ident.relative_port:04x}".encode()
        name += bytes(4 - len(name) % 4)
        body += _designator(_UTF8, _ASSOC_PORT, _TYPE_SCSI_NAME, name, protocol=_PROTO_ISCSI)
    return _page(0x83, body)


def _unit_serial(ident: Identity, _bs: int) -> bytes:
    return _page(0x80, ident.serial.encode("ascii"))


# Block Limits body after the 4-byte header ([SBC-3] 6.6.3 table 200, page length 0x3C):
# 4 WSNZ, 5 MAX C&W, 6-7 OTLG, 8-11 MAX XFER, 12-15 OPT XFER, 16-19 MAX PREFETCH,
# 20-23 MAX UNMAP LBA, 24-27 MAX UNMAP DESC, 28-31 OPT UNMAP GRAN, 32-35 UGAVALID/ALIGN,
# 36-43 MAX WRITE SAME, 44-63 atomic fields (0: no WRITE ATOMIC). MAX PREFETCH 0: no limit
# (PRE-FETCH only checks the range; the page cache does the rest).
_BLOCK_LIMITS = struct.Struct(">BBHIIIIIIIQ20x")
assert _BLOCK_LIMITS.size == 0x3C


def block_limits(block_size: int) -> bytes:
    max_xfer = MAX_TRANSFER_BYTES // block_size
    return _page(0xB0, _BLOCK_LIMITS.pack(
        0, MAX_COMPARE_AND_WRITE_BLOCKS, 1, max_xfer, OPTIMAL_TRANSFER_BYTES // block_size,
        0, MAX_UNMAP_LBA_COUNT, MAX_UNMAP_DESCRIPTORS, 1, 0, MAX_WRITE_SAME_BLOCKS,
    ))


def _block_limits(_ident: Identity, block_size: int) -> bytes:
    return block_limits(block_size)


# Block Device Characteristics ([SBC-3] 6.6.2): 4-5 MEDIUM ROTATION RATE 1 = non-rotating.
_BDC = struct.Struct(">HBB56x")
assert _BDC.size == 0x3C


def _characteristics(_ident: Identity, _bs: int) -> bytes:
    return _page(0xB1, _BDC.pack(1, 0, 0))


# Logical Block Provisioning ([SBC-3] 6.6.4): 4 THRESHOLD EXPONENT, 5 LBPU(7) LBPWS(6)
# LBPWS10(5) LBPRZ(2), 6 PROVISIONING TYPE 2 = thin. Thin because a protected volume's
# primary is sparse and UNMAP is journalled as a record, not written as zeros.
_LBP = struct.Struct(">BBBx")
assert _LBP.size == 4


def _provisioning(_ident: Identity, _bs: int) -> bytes:
    return _page(0xB2, _LBP.pack(0, 0x80 | 0x40 | 0x20 | 0x04, 0x02))


def _supported(_ident: Identity, _bs: int) -> bytes:
    return _page(0x00, bytes(sorted(VPD_PAGES)))


VPD_PAGES: dict[int, Callable[[Identity, int], bytes]] = {
    0x00: _supported,
    0x80: _unit_serial,
    0x83: _device_identification,
    0xB0: _block_limits,
    0xB1: _characteristics,
    0xB2: _provisioning,
}


def inquiry_data(ident: Identity, block_size: int, evpd: bool, page: int) -> bytes:
    """Full (untruncated) INQUIRY data; the caller applies the allocation length."""
    if not evpd:
        return standard_inquiry(ident)
    builder = VPD_PAGES.get(page)
    if builder is None:
        raise CheckCondition.invalid_cdb(2)
    return builder(ident, block_size)
