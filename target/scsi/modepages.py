"""MODE SENSE / MODE SELECT: the caching and control pages ([SPC-4] 6.11-6.14, 7.5; [SBC-3] 6.4).

Each page is declared once as a :class:`PageDef`: its default bytes and the
mask of bits MODE SELECT may change ([SPC-4] 7.5.3: the "changeable values"
that PC=1 reports). Current values live in :class:`ModeState`, one per LU,
shared by all I_T nexuses (SPC-4 allows shared mode pages); a change made by
one nexus raises 2Ah/01h MODE PARAMETERS CHANGED for the others.

What is changeable, and why:

- caching page WCE: Linux's ``cache_type`` sysfs writes it; with WCE=0 every
  write is made durable before its status (``lu.py`` sets flush_before_status);
- control page D_SENSE: selects descriptor-format sense.

SWP stays fixed at 0 (libiscsi then skips Control-SWP); nothing can be saved,
so PC=3 reports 05h/39h/00h and MODE SELECT with SP=1 is rejected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from target.scsi.cdb import ModeSelect, ModeSense, PageControl
from target.scsi.sense import Asc, CheckCondition, SenseKey

__all__ = ["CACHING", "CONTROL", "PAGES", "ModeState", "PageDef", "mode_select", "mode_sense"]

# Device-specific parameter of the header for direct-access devices ([SBC-3] 6.4.1).
WP = 0x80
DPOFUA = 0x10  # we accept DPO and FUA on every command that has them (scsi.md §1)

ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF


@dataclass(frozen=True, slots=True)
class PageDef:
    code: int
    default: bytes  # whole page including the 2-byte page header
    changeable: bytes  # same length: 1-bits may be changed by MODE SELECT

    def __post_init__(self) -> None:
        assert len(self.default) == len(self.changeable) == self.default[1] + 2
        assert self.default[0] & 0x3F == self.code


# Caching page ([SBC-3] 6.4.5), page length 0x12; byte 2 bit 2 WCE.
CACHING = PageDef(0x08, bytes([0x08, 0x12, 0x04]) + bytes(17),
                  bytes([0, 0, 0x04]) + bytes(17))
_WCE_BYTE, _WCE_BIT = 2, 0x04

# Control page ([SPC-4] 7.5.8), page length 0x0A. Byte 2 D_SENSE(2); byte 3 QUEUE ALGORITHM
# MODIFIER 1 (unrestricted reordering: the engine orders overlapping writes itself), QERR 0;
# byte 4 0 (UA_INTLCK_CTRL 0, SWP 0); byte 5 0; 8-9 BUSY TIMEOUT unlimited (0xFFFF).
CONTROL = PageDef(0x0A, bytes([0x0A, 0x0A, 0x00, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]),
                  bytes([0, 0, 0x04]) + bytes(9))
_DSENSE_BYTE, _DSENSE_BIT = 2, 0x04

PAGES: dict[int, PageDef] = {p.code: p for p in (CACHING, CONTROL)}  # ascending order


@dataclass(slots=True)
class ModeState:
    """Current page values of one LU. Change them only with :meth:`update`, which keeps
    ``wce`` (read on every write) in step."""

    pages: dict[int, bytearray] = field(
        default_factory=lambda: {code: bytearray(p.default) for code, p in PAGES.items()})
    wce: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.update({})

    def update(self, pages: dict[int, bytearray]) -> None:
        self.pages.update(pages)
        self.wce = bool(self.pages[CACHING.code][_WCE_BYTE] & _WCE_BIT)

    @property
    def d_sense(self) -> bool:
        return bool(self.pages[CONTROL.code][_DSENSE_BYTE] & _DSENSE_BIT)


# Headers: (6) 0 MODE DATA LENGTH, 1 MEDIUM TYPE, 2 DEVICE-SPECIFIC, 3 BLOCK DESCRIPTOR LENGTH;
# (10) 0-1 MODE DATA LENGTH, 2 MEDIUM TYPE, 3 DEVICE-SPECIFIC, 4 LONGLBA(0), 5, 6-7 BD LENGTH.
_HDR6 = struct.Struct(">BBBB")
_HDR10 = struct.Struct(">HBBBxH")
assert (_HDR6.size, _HDR10.size) == (4, 8)
# Short block descriptor: 0-3 NUMBER OF BLOCKS, 4 reserved, 5-7 BLOCK LENGTH ([SBC-3] 6.4.2).
_SHORT_BD = struct.Struct(">IxBH")
# Long LBA block descriptor: 0-7 NUMBER OF BLOCKS, 8-11 reserved, 12-15 BLOCK LENGTH.
_LONG_BD = struct.Struct(">Q4xI")
assert (_SHORT_BD.size, _LONG_BD.size) == (8, 16)


def _page_bytes(state: ModeState, code: int, pc: PageControl) -> bytes:
    page = PAGES[code]
    if pc is PageControl.CHANGEABLE:
        return bytes(page.default[:2]) + page.changeable[2:]
    if pc is PageControl.DEFAULT:
        return page.default
    return bytes(state.pages[code])


def _block_descriptor(num_blocks: int, block_size: int, *, long: bool,
                      pc: PageControl) -> bytes:
    if pc is PageControl.CHANGEABLE:  # neither the count nor the length can be changed
        num_blocks = block_size = 0
    if long:
        return _LONG_BD.pack(num_blocks, block_size)
    # 0xFFFFFFFF: too many blocks to report here ([SBC-3] 6.4.2).
    return _SHORT_BD.pack(min(num_blocks, 0xFFFFFFFF), block_size >> 16, block_size & 0xFFFF)


def mode_sense(state: ModeState, cdb: ModeSense, *, num_blocks: int, block_size: int,
               read_only: bool) -> bytes:
    """Full (untruncated) mode parameter data for MODE SENSE(6)/(10)."""
    if cdb.pc is PageControl.SAVED:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED)
    if cdb.page == ALL_PAGES:
        if cdb.subpage not in (0x00, ALL_SUBPAGES):
            raise CheckCondition.invalid_cdb(3)
        codes = list(PAGES)
    elif cdb.page in PAGES:
        if cdb.subpage != 0:
            raise CheckCondition.invalid_cdb(3)
        codes = [cdb.page]
    else:
        raise CheckCondition.invalid_cdb(2, 5)
    pages = b"".join(_page_bytes(state, code, cdb.pc) for code in codes)
    bd = b""
    if not cdb.dbd:
        bd = _block_descriptor(num_blocks, block_size, long=cdb.ten and cdb.llbaa, pc=cdb.pc)
    dsp = DPOFUA | (WP if read_only else 0)
    if cdb.ten:
        n = _HDR10.size + len(bd) + len(pages)
        header = _HDR10.pack(n - 2, 0, dsp, 0x01 if len(bd) == 16 else 0, len(bd))
    else:
        n = _HDR6.size + len(bd) + len(pages)
        header = _HDR6.pack(n - 1, 0, dsp, len(bd))
    return header + bd + pages


def mode_select(state: ModeState, cdb: ModeSelect, data: bytes, *, block_size: int) -> bool:
    """Apply a MODE SELECT parameter list; return True if any current value changed.

    Everything is validated before anything is applied, so a rejected list
    changes nothing ([SPC-4] 6.13: the command is atomic in effect).
    """
    if not cdb.pf:
        raise CheckCondition.invalid_cdb(1, 4)
    if cdb.sp:
        raise CheckCondition.invalid_cdb(1, 0)
    if not data:
        return False
    hdr = _HDR10 if cdb.ten else _HDR6
    if len(data) < hdr.size:
        raise CheckCondition.illegal_param_length()
    if cdb.ten:
        mdl, _medium, _dsp, longlba, bd_len = hdr.unpack_from(data)
    else:
        mdl, _medium, _dsp, bd_len = hdr.unpack_from(data)
        longlba = 0
    if mdl:  # MODE DATA LENGTH is reserved in MODE SELECT ([SPC-4] 7.5.4)
        raise CheckCondition.invalid_param(0)
    pos = hdr.size
    bd_size = _LONG_BD.size if longlba & 0x01 else _SHORT_BD.size
    if bd_len not in (0, bd_size):
        raise CheckCondition.invalid_param(hdr.size - 1)
    if bd_len:
        if len(data) < pos + bd_len:
            raise CheckCondition.illegal_param_length()
        # Only the block length is checked: it must be the LU's ([SBC-3] 6.4.2).
        length = (int.from_bytes(data[pos + 5:pos + 8]) if bd_size == 8
                  else int.from_bytes(data[pos + 12:pos + 16]))
        if length != block_size:
            raise CheckCondition.invalid_param(pos + (5 if bd_size == 8 else 12))
        pos += bd_len
    staged: dict[int, bytearray] = {}
    while pos < len(data):
        if len(data) < pos + 2:
            raise CheckCondition.illegal_param_length()
        code, plen = data[pos] & 0x3F, data[pos + 1]
        if data[pos] & 0x40:  # SPF: no subpages here
            raise CheckCondition.invalid_param(pos, 6)
        page = PAGES.get(code)
        if page is None:
            raise CheckCondition.invalid_param(pos, 5)
        if plen != page.default[1]:
            raise CheckCondition.invalid_param(pos + 1)
        if len(data) < pos + 2 + plen:
            raise CheckCondition.illegal_param_length()
        current = staged.get(code, state.pages[code])
        new = bytearray(current)
        for i in range(2, plen + 2):
            value = data[pos + i]
            if (value ^ current[i]) & ~page.changeable[i] & 0xFF:
                raise CheckCondition.invalid_param(pos + i)
            new[i] = value
        staged[code] = new
        pos += 2 + plen
    changed = any(state.pages[code] != new for code, new in staged.items())
    state.update(staged)
    return changed
