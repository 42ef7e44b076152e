"""SCSI status, sense keys, additional sense codes and sense-data builders.

Every error the SCSI layer reports is a :class:`CheckCondition` raised deep in
decoding or command handling and turned into bytes exactly once, by
:meth:`target.scsi.lu.LogicalUnit.execute` (STYLE.md rule 4). The exception
carries its wire meaning: sense key, ASC/ASCQ, and optionally the
sense-key-specific field pointer and the INFORMATION field.

Two encodings ([SPC-4] 4.5):

- fixed format, 18 bytes, response code 0x70 (used unless the control mode
  page has D_SENSE=1);
- descriptor format, response code 0x72, with an information descriptor
  (type 0x00) and a sense-key-specific descriptor (type 0x02) when present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = [
    "Asc",
    "CheckCondition",
    "FieldPointer",
    "ScsiStatus",
    "SenseKey",
    "build_sense",
    "descriptor_sense",
    "fixed_sense",
]


class ScsiStatus(IntEnum):
    """SAM-5 status codes ([SAM-5] 5.3)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    TASK_ABORTED = 0x40


class SenseKey(IntEnum):
    """[SPC-4] 4.5.6, table 27."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


class Asc(Enum):
    """Additional sense code and qualifier pairs used by cdpswitch ([SPC-4] D.2)."""

    NO_ADDITIONAL_SENSE = (0x00, 0x00)
    LU_NOT_READY = (0x04, 0x00)
    LU_NOT_READY_OPERATION_IN_PROGRESS = (0x04, 0x07)
    LU_BECOMING_READY = (0x04, 0x01)
    LU_MANUAL_INTERVENTION = (0x04, 0x03)
    WRITE_ERROR = (0x0C, 0x00)
    INVALID_FIELD_IN_INFORMATION_UNIT = (0x0E, 0x03)
    UNRECOVERED_READ_ERROR = (0x11, 0x00)
    PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
    MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
    INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
    LBA_OUT_OF_RANGE = (0x21, 0x00)
    INVALID_FIELD_IN_CDB = (0x24, 0x00)
    LUN_NOT_SUPPORTED = (0x25, 0x00)
    INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (0x26, 0x04)
    WRITE_PROTECTED = (0x27, 0x00)
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (0x27, 0x07)
    MEDIUM_MAY_HAVE_CHANGED = (0x28, 0x00)
    POWER_ON_RESET = (0x29, 0x00)
    BUS_DEVICE_RESET = (0x29, 0x03)
    I_T_NEXUS_LOSS = (0x29, 0x07)
    MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
    RESERVATIONS_PREEMPTED = (0x2A, 0x03)
    RESERVATIONS_RELEASED = (0x2A, 0x04)
    REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
    CAPACITY_DATA_CHANGED = (0x2A, 0x09)
    THIN_PROVISIONING_SOFT_THRESHOLD = (0x38, 0x07)
    SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
    MEDIUM_NOT_PRESENT = (0x3A, 0x00)
    INQUIRY_DATA_CHANGED = (0x3F, 0x03)
    REPORTED_LUNS_DATA_CHANGED = (0x3F, 0x0E)
    INTERNAL_TARGET_FAILURE = (0x44, 0x00)
    MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)
    INSUFFICIENT_REGISTRATION_RESOURCES = (0x55, 0x04)

    @property
    def asc(self) -> int:
        return self.value[0]

    @property
    def ascq(self) -> int:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """Sense-key-specific field pointer for ILLEGAL REQUEST ([SPC-4] 4.5.2.4.2).

    ``in_cdb`` is C/D (True: the CDB, False: the parameter list); ``byte`` is the
    index of the offending byte; ``bit`` the most significant bit of the field,
    or None when the whole byte is meant (BPV=0).
    """

    in_cdb: bool
    byte: int
    bit: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.byte <= 0xFFFF:
            raise ValueError(f"field pointer byte {self.byte} out of range")
        if self.bit is not None and not 0 <= self.bit <= 7:
            raise ValueError(f"bit pointer {self.bit} out of range")

    def encode(self) -> bytes:
        """The three sense-key-specific bytes, SKSV set."""
        b0 = 0x80 | (0x40 if self.in_cdb else 0)
        if self.bit is not None:
            b0 |= 0x08 | self.bit
        return struct.pack(">BH", b0, self.byte)


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION and this sense."""

    def __init__(self, key: SenseKey, asc: Asc, *, field: FieldPointer | None = None,
                 information: int | None = None) -> None:
        super().__init__(f"{key.name} {asc.name} ({asc.asc:02X}h/{asc.ascq:02X}h)")
        self.key = key
        self.asc = asc
        self.field = field
        self.information = information

    @classmethod
    def invalid_cdb(cls, byte: int, bit: int | None = None) -> CheckCondition:
        """05h/24h/00h INVALID FIELD IN CDB, pointing at ``byte``.``bit`` of the CDB."""
        return cls(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB,
                   field=FieldPointer(True, byte, bit))

    @classmethod
    def invalid_param(cls, byte: int, bit: int | None = None) -> CheckCondition:
        """05h/26h/00h INVALID FIELD IN PARAMETER LIST, pointing into the data-out."""
        return cls(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST,
                   field=FieldPointer(False, byte, bit))

    @classmethod
    def illegal(cls, asc: Asc) -> CheckCondition:
        return cls(SenseKey.ILLEGAL_REQUEST, asc)

    @classmethod
    def illegal_param_length(cls) -> CheckCondition:
        """05h/1Ah/00h PARAMETER LIST LENGTH ERROR."""
        return cls(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)

    @classmethod
    def lba_out_of_range(cls) -> CheckCondition:
        return cls(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)

    @classmethod
    def miscompare(cls, offset: int) -> CheckCondition:
        """0Eh/1Dh/00h with INFORMATION = byte offset of the first mismatch ([SBC-3] 5.3)."""
        return cls(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=offset)

    @property
    def triple(self) -> tuple[int, int, int]:
        """(sense key, ASC, ASCQ): how libiscsi and the tests compare sense."""
        return (int(self.key), self.asc.asc, self.asc.ascq)


# Fixed format sense data, [SPC-4] 4.5.3 table 48:
#   0 VALID(7) RESPONSE CODE(6-0) | 1 obsolete | 2 FILEMARK EOM ILI, SENSE KEY(3-0)
#   3-6 INFORMATION | 7 ADDITIONAL SENSE LENGTH | 8-11 COMMAND-SPECIFIC INFORMATION
#   12 ASC | 13 ASCQ | 14 FRU CODE | 15-17 SKSV + SENSE KEY SPECIFIC
_FIXED = struct.Struct(">BBBIBIBBB3s")
FIXED_SENSE_LEN = 18
assert _FIXED.size == FIXED_SENSE_LEN

# Descriptor format header, [SPC-4] 4.5.2 table 12: 0 RESPONSE CODE, 1 KEY, 2 ASC, 3 ASCQ,
# 4-6 reserved, 7 ADDITIONAL SENSE LENGTH.
_DESC_HDR = struct.Struct(">BBBB3xB")
assert _DESC_HDR.size == 8
# Information descriptor ([SPC-4] 4.5.2.2): type 0, length 0x0A, VALID(7), reserved, 8-byte value.
_DESC_INFO = struct.Struct(">BBBxQ")
assert _DESC_INFO.size == 12
# Sense key specific descriptor ([SPC-4] 4.5.2.3): type 2, length 6, 2 reserved, 3 bytes, 1 rsvd.
_DESC_SKS = struct.Struct(">BB2x3sx")
assert _DESC_SKS.size == 8

_NO_SKS = b"\x00\x00\x00"


def fixed_sense(key: SenseKey, asc: Asc, *, information: int | None = None,
                field: FieldPointer | None = None) -> bytes:
    """18 bytes of current, fixed-format sense data."""
    valid = 0x80 if information is not None else 0
    # INFORMATION is 4 bytes here; a larger value cannot be reported in fixed format,
    # so VALID stays clear rather than reporting a truncated number ([SPC-4] 4.5.3).
    if information is not None and not 0 <= information <= 0xFFFFFFFF:
        valid, information = 0, None
    return _FIXED.pack(
        valid | 0x70, 0, int(key), information or 0, FIXED_SENSE_LEN - 8, 0,
        asc.asc, asc.ascq, 0, field.encode() if field is not None else _NO_SKS,
    )


def descriptor_sense(key: SenseKey, asc: Asc, *, information: int | None = None,
                     field: FieldPointer | None = None) -> bytes:
    """Current, descriptor-format sense data (D_SENSE=1)."""
    body = b""
    if information is not None:
        body += _DESC_INFO.pack(0x00, 0x0A, 0x80, information & 0xFFFFFFFFFFFFFFFF)
    if field is not None:
        body += _DESC_SKS.pack(0x02, 0x06, field.encode())
    return _DESC_HDR.pack(0x72, int(key), asc.asc, asc.ascq, len(body)) + body


def build_sense(cc: CheckCondition, *, descriptor: bool) -> bytes:
    builder = descriptor_sense if descriptor else fixed_sense
    return builder(cc.key, cc.asc, information=cc.information, field=cc.field)
