"""INQUIRY standard data and VPD pages (scsi.md §3), READ CAPACITY (§4)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from scsi_helpers import (
    BS,
    EXPECT_GOOD,
    EXPECT_INVALID_FIELD_IN_CDB,
    NBLOCKS,
    UUID,
    cdb10,
    field_pointer,
    file_device,
    inquiry,
    read_capacity16,
    ready_lu,
    run,
    sense_of,
)

from target.scsi.lu import LogicalUnit


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    return ready_lu(file_device(tmp_path))


def test_standard_inquiry(lu: LogicalUnit) -> None:
    resp = run(lu, inquiry(alloc=255), edtl=255)
    data = bytes(resp.data_in)
    assert sense_of(resp) == EXPECT_GOOD
    assert len(data) == data[4] + 5 == 96
    assert resp.residual_underflow == 255 - 96
    assert data[0] == 0x00 and data[1] == 0x00  # disk, RMB=0
    assert data[2] == 0x06  # SPC-4
    assert data[3] == 0x12  # HISUP, response data format 2
    assert data[7] & 0x02  # CMDQUE
    assert data[5] & 0x01 == 0  # no PROTECT
    assert data[8:16] == b"CDPSWTCH"
    assert all(0x20 <= c <= 0x7E for c in data[8:36])
    versions = struct.unpack(">8H", data[58:74])
    assert {0x0460, 0x04C0}.issubset(versions)


@pytest.mark.parametrize("alloc", [*range(0, 10), 36, 95, 96, 255, 511, 512])
def test_allocation_length_honoured(lu: LogicalUnit, alloc: int) -> None:
    full = bytes(run(lu, inquiry(alloc=512), edtl=512).data_in)
    resp = run(lu, inquiry(alloc=alloc), edtl=alloc)
    assert bytes(resp.data_in) == full[:alloc]
    assert resp.residual_overflow == 0  # truncation to the allocation length is not overflow


def test_evpd_zero_with_page_code_is_invalid(lu: LogicalUnit) -> None:
    resp = run(lu, inquiry(evpd=0, page=0x80))
    assert sense_of(resp) == EXPECT_INVALID_FIELD_IN_CDB
    assert field_pointer(resp.sense or b"") == (True, 2, None)


@pytest.mark.parametrize("page", [0x01, 0x81, 0x86, 0x89, 0xB3, 0xFF])
def test_unsupported_vpd_page(lu: LogicalUnit, page: int) -> None:
    assert sense_of(run(lu, inquiry(evpd=1, page=page))) == EXPECT_INVALID_FIELD_IN_CDB


def vpd(lu: LogicalUnit, page: int) -> bytes:
    resp = run(lu, inquiry(evpd=1, page=page, alloc=255), edtl=255)
    assert sense_of(resp) == EXPECT_GOOD
    data = bytes(resp.data_in)
    assert data[1] == page and len(data) == 4 + int.from_bytes(data[2:4])
    return data


def test_supported_pages_ascending_and_each_works(lu: LogicalUnit) -> None:
    pages = list(vpd(lu, 0x00)[4:])
    assert pages == sorted(pages) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    for page in pages:
        vpd(lu, page)


def test_serial_is_stable(tmp_path: Path) -> None:
    a = ready_lu(file_device(tmp_path))
    b = ready_lu(file_device(tmp_path))
    assert vpd(a, 0x80) == vpd(b, 0x80)
    assert vpd(a, 0x80)[4:] == UUID.hex.encode()
    assert vpd(a, 0x83) == vpd(b, 0x83)


def designators(page: bytes) -> list[tuple[int, int, int, bytes]]:
    """(code set, byte-1 flags, type, value) for each descriptor of VPD 0x83."""
    out, pos = [], 4
    while pos < len(page):
        length = page[pos + 3]
        out.append((page[pos] & 0x0F, page[pos + 1] & 0xF0, page[pos + 1] & 0x0F,
                    page[pos + 4:pos + 4 + length]))
        pos += 4 + length
    assert pos == len(page)
    return out


def test_device_identification(tmp_path: Path) -> None:
    lu = ready_lu(file_device(tmp_path))
    found = designators(vpd(lu, 0x83))
    naa = [d for d in found if d[2] == 3]
    assert len(naa) == 1 and naa[0][0] == 1 and naa[0][1] == 0  # binary, LU association
    assert naa[0][3][0] >> 4 == 0x3 and len(naa[0][3]) == 8
    t10 = [d for d in found if d[2] == 1]
    assert t10 and t10[0][3].startswith(b"CDPSWTCH")
    assert any(d[2] == 4 and d[1] == 0x90 for d in found)  # relative target port, PIV
    # Another volume has other designators.
    other = LogicalUnit(lu.device, uuid=uuid.uuid4())
    assert designators(vpd(other, 0x83))[0] != naa[0]


def test_scsi_name_string_when_target_known(tmp_path: Path) -> None:
    lu = LogicalUnit(file_device(tmp_path), uuid=UUID, target_name="iqn.2026-11.org.cdpswitch:t")
    names = [d for d in designators(vpd(lu, 0x83)) if d[2] == 8]
    assert names and names[0][3].rstrip(b"\0") == b"iqn.2026-11.org.cdpswitch:t,t,0x0001"
    assert len(names[0][3]) % 4 == 0


def test_block_limits(lu: LogicalUnit) -> None:
    page = vpd(lu, 0xB0)
    assert int.from_bytes(page[2:4]) == 0x3C
    max_unmap, max_desc = struct.unpack(">II", page[20:28])
    assert 0 < max_unmap <= 1 << 20 and max_desc > 0
    assert page[5] > 0  # COMPARE AND WRITE supported
    assert page[44:64] == bytes(20)  # no WRITE ATOMIC


def test_characteristics_and_provisioning(lu: LogicalUnit) -> None:
    b1 = vpd(lu, 0xB1)
    assert int.from_bytes(b1[2:4]) == 0x3C and int.from_bytes(b1[4:6]) == 1
    b2 = vpd(lu, 0xB2)
    assert b2[5] & 0xE4 == 0xE4  # LBPU, LBPWS, LBPWS10, LBPRZ
    assert b2[5] & 0x02 == 0  # no ANC_SUP


def test_read_capacity10(lu: LogicalUnit) -> None:
    resp = run(lu, cdb10(0x25), edtl=8)
    assert bytes(resp.data_in) == struct.pack(">II", NBLOCKS - 1, BS)
    # PMI=0 with an LBA is invalid ([SBC-3] 5.15).
    assert sense_of(run(lu, cdb10(0x25, 5), edtl=8)) == EXPECT_INVALID_FIELD_IN_CDB


@pytest.mark.parametrize("alloc", [*range(0, 16), 32, 96])
def test_read_capacity16(lu: LogicalUnit, alloc: int) -> None:
    resp = run(lu, read_capacity16(alloc), edtl=alloc)
    assert sense_of(resp) == EXPECT_GOOD
    full = struct.pack(">QIBBH", NBLOCKS - 1, BS, 0, 0, 0xC000) + bytes(16)
    assert bytes(resp.data_in) == full[:alloc]
