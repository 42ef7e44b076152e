"""Handlers for the block (SBC-3) commands.

READ/WRITE/VERIFY/WRITE AND VERIFY (6/10/12/16), PRE-FETCH, SYNCHRONIZE CACHE,
WRITE SAME, UNMAP, COMPARE AND WRITE, READ CAPACITY(10/16), GET LBA STATUS.

Rules shared by all (scsi.md §1, §6): the LBA range is checked with unbounded
ints before write protection; a command that fails changes nothing on the
medium (every check precedes the first device call); writes never ask the
device for FUA: durability is requested through ``Outcome.flush`` (see the
``lu`` module docstring). Reads move only the blocks EDTL lets through.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from target.scsi.cdb import (
    BlockIo,
    CompareAndWrite,
    GetLbaStatus,
    IoKind,
    Opcode,
    ReadCapacity10,
    ReadCapacity16,
    Unmap,
    WriteSame,
    length_byte,
)
from target.scsi.command import Outcome, ScsiCommand
from target.scsi.inquiry import (
    MAX_COMPARE_AND_WRITE_BLOCKS,
    MAX_TRANSFER_BYTES,
    MAX_UNMAP_DESCRIPTORS,
    MAX_UNMAP_LBA_COUNT,
    MAX_WRITE_SAME_BLOCKS,
)
from target.scsi.sense import CheckCondition

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit

__all__ = ["HANDLERS", "LbaStatusFn"]

# Optional device method for GET LBA STATUS: runs (start, count, mapped) covering
# [lba, lba+count) in order. Devices without it are reported fully mapped.
LbaStatusFn = Callable[[int, int], Iterable[tuple[int, int, bool]]]

# Big WRITE SAME / UNMAP ranges are issued in pieces so one call never allocates more
# than this many blocks of buffer (FileBlockDevice.unmap writes zeros).
CHUNK_BLOCKS = 2048


def _mismatch(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int | None:
    """Offset of the first differing byte, or None."""
    if a == b:
        return None
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def _check_transfer(lu: LogicalUnit, cdb: BlockIo) -> None:
    """Range, then the MAXIMUM TRANSFER LENGTH of VPD B0 ([SBC-3] 6.6.3)."""
    lu.check_range(cdb.lba, cdb.blocks)
    if cdb.blocks > MAX_TRANSFER_BYTES // lu.block_size:
        raise CheckCondition.invalid_cdb(length_byte(cdb.opcode))


# ------------------------------------------------------------------- block I/O
def _read(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    _check_transfer(lu, cdb)
    bs = lu.block_size
    wanted = cdb.blocks * bs
    move = min(wanted, cmd.expected_length)
    blocks = -(-move // bs)  # whole blocks covering what EDTL lets through
    data = lu.device.read(cdb.lba, blocks) if blocks else b""
    return Outcome(data, wanted=wanted)


def _write(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    _check_transfer(lu, cdb)
    lu.check_writable()
    wanted = cdb.blocks * lu.block_size
    data = lu.data_out(cmd, wanted, lu.block_size)
    if data:
        lu.device.write(cdb.lba, data)
    if cdb.kind is IoKind.WRITE_AND_VERIFY and data:
        # The verify half ([SBC-3] 5.34): read back what was written and compare.
        offset = _mismatch(lu.device.read(cdb.lba, len(data) // lu.block_size), data)
        if offset is not None:
            raise CheckCondition.miscompare(offset)
    # WRITE AND VERIFY verifies "the logical blocks on the medium" ([SBC-3] 5.34): the data
    # must be there, not in a volatile cache, so it is made durable like a FUA write.
    durable = cdb.fua or cdb.kind is IoKind.WRITE_AND_VERIFY
    return Outcome(wanted=wanted, flush=lu.needs_flush(durable))


def _verify(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    _check_transfer(lu, cdb)
    if not cdb.bytchk:
        # Medium verification: the engine checks every record's CRC32C when it reads,
        # and a file has nothing more to verify, so there is nothing to do.
        return Outcome(wanted=0)
    wanted = cdb.blocks * lu.block_size
    data = lu.data_out(cmd, wanted, lu.block_size)
    if data:
        offset = _mismatch(lu.device.read(cdb.lba, len(data) // lu.block_size), data)
        if offset is not None:
            raise CheckCondition.miscompare(offset)
    return Outcome(wanted=wanted)


def _pre_fetch(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    # The page cache does the caching; a valid range is simply GOOD ([SBC-3] 5.11).
    lu.check_range(cdb.lba, cdb.blocks)
    return Outcome()


def _synchronize_cache(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    # The range is a hint; the whole device is flushed. IMMED would allow GOOD before
    # the flush, but a premature GOOD buys nothing here, so it is ignored ([SBC-3] 5.22).
    lu.check_range(cdb.lba, cdb.blocks)
    return Outcome(flush=True)


_BLOCK_IO: dict[IoKind, Callable[[LogicalUnit, BlockIo, ScsiCommand], Outcome]] = {
    IoKind.READ: _read,
    IoKind.WRITE: _write,
    IoKind.WRITE_AND_VERIFY: _write,
    IoKind.VERIFY: _verify,
    IoKind.PRE_FETCH: _pre_fetch,
    IoKind.SYNCHRONIZE_CACHE: _synchronize_cache,
}


def block_io(lu: LogicalUnit, cdb: BlockIo, cmd: ScsiCommand) -> Outcome:
    return _BLOCK_IO[cdb.kind](lu, cdb, cmd)


# ----------------------------------------------------------------- provisioning
def _unmap_range(lu: LogicalUnit, lba: int, count: int) -> None:
    for start in range(lba, lba + count, CHUNK_BLOCKS):
        lu.device.unmap(start, min(CHUNK_BLOCKS, lba + count - start))


def write_same(lu: LogicalUnit, cdb: WriteSame, cmd: ScsiCommand) -> Outcome:
    count_byte = 7 if cdb.opcode == Opcode.WRITE_SAME_10 else 10
    if cdb.anchor:  # ANC_SUP=0 in VPD B2: anchored blocks are not supported ([SBC-3] 5.42)
        raise CheckCondition.invalid_cdb(1, 4)
    # NUMBER OF BLOCKS 0 means "to the last LBA" since WSNZ=0 ([SBC-3] 6.6.3).
    lu.check_range(cdb.lba, cdb.blocks)
    count = cdb.blocks or lu.num_blocks - cdb.lba
    if count > MAX_WRITE_SAME_BLOCKS:
        raise CheckCondition.invalid_cdb(count_byte)
    lu.check_writable()
    bs = lu.block_size
    block = bytes(bs) if cdb.ndob else bytes(lu.exact_data_out(cmd, bs))
    if cdb.unmap:
        # UNMAP=1 asks for deallocation ([SBC-3] 5.43); LIO deallocates whatever the data
        # block holds, and libiscsi's WriteSame*.UnmapUntilEnd sends 0xFF with UNMAP=1 and
        # expects zeros back (LBPRZ=1), so we deallocate too.
        _unmap_range(lu, cdb.lba, count)
    elif count:
        pattern = block * min(count, CHUNK_BLOCKS)
        for start in range(cdb.lba, cdb.lba + count, CHUNK_BLOCKS):
            n = min(CHUNK_BLOCKS, cdb.lba + count - start)
            lu.device.write(start, memoryview(pattern)[: n * bs])
    return Outcome(wanted=0 if cdb.ndob else bs, flush=lu.needs_flush())


# UNMAP parameter list ([SBC-3] 5.28.2): 0-1 UNMAP DATA LENGTH, 2-3 BLOCK DESCRIPTOR DATA
# LENGTH, 4-7 reserved; descriptors: 0-7 LBA, 8-11 NUMBER OF LOGICAL BLOCKS, 12-15 reserved.
_UNMAP_HDR = struct.Struct(">HH4x")
_UNMAP_DESC = struct.Struct(">QI4x")
assert (_UNMAP_HDR.size, _UNMAP_DESC.size) == (8, 16)


def unmap(lu: LogicalUnit, cdb: Unmap, cmd: ScsiCommand) -> Outcome:
    if cdb.anchor:
        raise CheckCondition.invalid_cdb(1, 0)
    lu.check_writable()
    if cdb.param_len == 0:  # not an error: nothing to unmap ([SBC-3] 5.28.1)
        return Outcome()
    data = lu.data_out(cmd, cdb.param_len)
    if len(data) < _UNMAP_HDR.size:
        raise CheckCondition.illegal_param_length()
    _, bd_len = _UNMAP_HDR.unpack_from(data)
    if bd_len > len(data) - _UNMAP_HDR.size:
        raise CheckCondition.illegal_param_length()
    # A trailing partial descriptor is ignored ([SBC-3] 5.28.2).
    n = bd_len // _UNMAP_DESC.size
    if n > MAX_UNMAP_DESCRIPTORS:
        raise CheckCondition.invalid_param(2)
    ranges = [_UNMAP_DESC.unpack_from(data, _UNMAP_HDR.size + i * _UNMAP_DESC.size)
              for i in range(n)]
    if sum(count for _, count in ranges) > MAX_UNMAP_LBA_COUNT:
        raise CheckCondition.invalid_param(_UNMAP_HDR.size + 8)
    for lba, count in ranges:
        # A 0-block descriptor at LBA = capacity is valid (libiscsi Unmap.ZeroBlocks).
        lu.check_range(lba, count)
    for lba, count in ranges:
        _unmap_range(lu, lba, count)
    return Outcome(wanted=cdb.param_len, flush=lu.needs_flush())


def compare_and_write(lu: LogicalUnit, cdb: CompareAndWrite, cmd: ScsiCommand) -> Outcome:
    if cdb.blocks > MAX_COMPARE_AND_WRITE_BLOCKS:
        raise CheckCondition.invalid_cdb(13)
    lu.check_range(cdb.lba, cdb.blocks)
    lu.check_writable()
    if cdb.blocks == 0:  # [SBC-3] 5.3: not an error, nothing compared or written...
        if cmd.expected_length or (cmd.data_out is not None and len(cmd.data_out)):
            # ...unless data comes with it: libiscsi sends 256 blocks, which the one-byte
            # field wraps to 0, and expects INVALID FIELD IN CDB (CompareAndWrite.Simple)
            raise CheckCondition.invalid_cdb(13)
        return Outcome()
    size = cdb.blocks * lu.block_size
    data = lu.exact_data_out(cmd, 2 * size)
    # Atomic with respect to every other command: the LU runs one command at a time
    # and nothing yields between the read and the write.
    offset = _mismatch(lu.device.read(cdb.lba, cdb.blocks), data[:size])
    if offset is not None:
        raise CheckCondition.miscompare(offset)
    lu.device.write(cdb.lba, data[size:])
    return Outcome(wanted=2 * size, flush=lu.needs_flush(cdb.fua))


# ------------------------------------------------------------------- capacity
_RC10 = struct.Struct(">II")
# READ CAPACITY(16) data ([SBC-3] 5.16.2): 0-7 RETURNED LBA, 8-11 BLOCK LENGTH, 12 P_TYPE/
# PROT_EN, 13 P_I_EXPONENT/LBPPBE, 14-15 LBPME(15) LBPRZ(14) LOWEST ALIGNED LBA, 16-31 reserved.
_RC16 = struct.Struct(">QIBBH16x")
assert (_RC10.size, _RC16.size) == (8, 32)
_LBPME_LBPRZ = 0xC000


def read_capacity10(lu: LogicalUnit, cdb: ReadCapacity10, cmd: ScsiCommand) -> Outcome:
    # 0xFFFFFFFF tells the initiator to use READ CAPACITY(16) ([SBC-3] 5.15.2).
    return Outcome(_RC10.pack(min(lu.num_blocks - 1, 0xFFFFFFFF), lu.block_size))


def read_capacity16(lu: LogicalUnit, cdb: ReadCapacity16, cmd: ScsiCommand) -> Outcome:
    data = _RC16.pack(lu.num_blocks - 1, lu.block_size, 0, 0, _LBPME_LBPRZ)
    return Outcome(data[: cdb.alloc])


# GET LBA STATUS ([SBC-3] 5.5): 0-3 PARAMETER DATA LENGTH, 4-7 reserved, then descriptors
# 0-7 LBA, 8-11 NUMBER OF BLOCKS, 12 PROVISIONING STATUS (0 mapped, 1 deallocated).
_GLS_HDR = struct.Struct(">I4x")
_GLS_DESC = struct.Struct(">QIB3x")
assert (_GLS_HDR.size, _GLS_DESC.size) == (8, 16)
_MAX_GLS_DESCRIPTORS = 64


def _lba_runs(lu: LogicalUnit, lba: int, count: int) -> Iterable[tuple[int, int, bool]]:
    status: LbaStatusFn | None = getattr(lu.device, "lba_status", None)
    if status is None:
        return [(lba, count, True)]
    return status(lba, count)


def get_lba_status(lu: LogicalUnit, cdb: GetLbaStatus, cmd: ScsiCommand) -> Outcome:
    if cdb.lba >= lu.num_blocks:
        raise CheckCondition.lba_out_of_range()
    room = max(1, min(_MAX_GLS_DESCRIPTORS, (cdb.alloc - _GLS_HDR.size) // _GLS_DESC.size))
    descriptors: list[bytes] = []
    # A descriptor's count is 32 bits: longer runs take several descriptors.
    for start, count, mapped in _lba_runs(lu, cdb.lba, lu.num_blocks - cdb.lba):
        remaining = count
        while remaining and len(descriptors) < room:
            n = min(remaining, 0xFFFFFFFF)
            descriptors.append(_GLS_DESC.pack(start + count - remaining, n, 0 if mapped else 1))
            remaining -= n
        if len(descriptors) >= room:
            break
    body = b"".join(descriptors)
    data = _GLS_HDR.pack(len(body) + 4) + body
    return Outcome(data[: cdb.alloc])


HANDLERS: dict[type, Callable[..., Any]] = {
    BlockIo: block_io,
    WriteSame: write_same,
    Unmap: unmap,
    CompareAndWrite: compare_and_write,
    ReadCapacity10: read_capacity10,
    ReadCapacity16: read_capacity16,
    GetLbaStatus: get_lba_status,
}
