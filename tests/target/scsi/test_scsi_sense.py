"""Sense data encodings ([SPC-4] 4.5) and the CDB decoder's typed output."""

from __future__ import annotations

import pytest
from scsi_helpers import cdb6, cdb10, cdb12, cdb16, compare_and_write, parse_sense

from target.scsi.cdb import (
    OPCODES,
    BlockIo,
    CompareAndWrite,
    IoKind,
    ModeSense,
    Opcode,
    PageControl,
    WriteSame,
    decode,
)
from target.scsi.sense import (
    Asc,
    CheckCondition,
    FieldPointer,
    SenseKey,
    build_sense,
    descriptor_sense,
    fixed_sense,
)


def test_fixed_sense_matches_tgt_bytes() -> None:
    # Verified tgt out-of-range READ (scsi.md §10), without the 2-byte iSCSI length.
    expected = bytes.fromhex("700005000000000a00000000210000000000")
    assert fixed_sense(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE) == expected


def test_fixed_sense_information_and_field_pointer() -> None:
    cc = CheckCondition.miscompare(0x1234)
    data = build_sense(cc, descriptor=False)
    assert data[0] == 0xF0 and data[2] == 0x0E and data[3:7] == bytes([0, 0, 0x12, 0x34])
    assert (data[12], data[13]) == (0x1D, 0x00)
    data = build_sense(CheckCondition.invalid_cdb(9, 2), descriptor=False)
    assert data[15:18] == bytes([0x80 | 0x40 | 0x08 | 2, 0, 9])
    data = build_sense(CheckCondition.invalid_param(300), descriptor=False)
    assert data[15:18] == bytes([0x80, 0x01, 0x2C])  # C/D=0: the parameter list, BPV=0


def test_information_too_big_for_fixed_format_is_not_claimed_valid() -> None:
    data = fixed_sense(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=2**40)
    assert data[0] == 0x70 and data[3:7] == bytes(4)


def test_descriptor_sense() -> None:
    data = descriptor_sense(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=77,
                            field=FieldPointer(True, 2))
    assert data[:4] == bytes([0x72, 0x0E, 0x1D, 0x00]) and data[7] == len(data) - 8 == 20
    assert data[8:12] == bytes([0x00, 0x0A, 0x80, 0x00]) and int.from_bytes(data[12:20]) == 77
    assert data[20:24] == bytes([0x02, 0x06, 0, 0]) and data[24:27] == bytes([0xC0, 0, 2])
    assert parse_sense(data) == (0x0E, 0x1D, 0x00)
    assert len(descriptor_sense(SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE)) == 8


@pytest.mark.parametrize(("byte", "bit"), [(-1, None), (0x10000, None), (0, 8), (0, -1)])
def test_field_pointer_validates(byte: int, bit: int | None) -> None:
    with pytest.raises(ValueError):
        FieldPointer(True, byte, bit)


def test_check_condition_triple() -> None:
    assert CheckCondition.lba_out_of_range().triple == (5, 0x21, 0)
    assert CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED).triple == (7, 0x27, 0)


DECODED = [
    (cdb6(0x08, 0x1ABCDE, 0), BlockIo(0x08, IoKind.READ, 0x1ABCDE, 256)),
    (cdb6(0x0A, 5, 7), BlockIo(0x0A, IoKind.WRITE, 5, 7)),
    (cdb10(0x28, 0xFFFFFFFF, 9, 0x18), BlockIo(0x28, IoKind.READ, 0xFFFFFFFF, 9, True, True)),
    (cdb12(0xAA, 3, 0x10000, 0x08), BlockIo(0xAA, IoKind.WRITE, 3, 0x10000, fua=True)),
    (cdb16(0x8A, 2**64 - 1, 2**32 - 1),
     BlockIo(0x8A, IoKind.WRITE, 2**64 - 1, 2**32 - 1)),
    (cdb10(0x2F, 1, 2, 0x12), BlockIo(0x2F, IoKind.VERIFY, 1, 2, dpo=True, bytchk=True)),
    (cdb16(0x8E, 1, 2), BlockIo(0x8E, IoKind.WRITE_AND_VERIFY, 1, 2)),
    (cdb10(0x35, 1, 0, 0x02), BlockIo(0x35, IoKind.SYNCHRONIZE_CACHE, 1, 0, immed=True)),
    (cdb16(0x90, 4, 4), BlockIo(0x90, IoKind.PRE_FETCH, 4, 4)),
    (cdb16(0x93, 8, 0, 0x09), WriteSame(0x93, 8, 0, unmap=True, anchor=False, ndob=True)),
    (cdb10(0x41, 8, 1, 0x01), WriteSame(0x41, 8, 1, unmap=False, anchor=False, ndob=False)),
    (compare_and_write(7, 3, 0x08), CompareAndWrite(7, 3, dpo=False, fua=True)),
    (bytes([0x5A, 0x18, 0x88, 0, 0, 0, 0, 1, 0, 0]),
     ModeSense(True, True, True, PageControl.DEFAULT, 0x08, 0, 256)),
]


@pytest.mark.parametrize(("raw", "expected"), DECODED)
def test_decode(raw: bytes, expected: object) -> None:
    assert decode(raw) == expected
    assert decode(memoryview(raw + bytes(4))) == expected  # iSCSI pads CDBs to 16 bytes


def test_every_opcode_in_the_table_is_named() -> None:
    assert set(OPCODES) <= {int(op) for op in Opcode}
