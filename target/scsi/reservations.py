"""Persistent reservations and SPC-2 RESERVE/RELEASE(6) ([SPC-4] 5.13, 6.15-6.16; scsi.md §9).

State per LU: registrations (I_T nexus → 8-byte key, in registration order), at
most one persistent reservation (holder nexus + type), PRGENERATION, and an
SPC-2 holder. Registrations and the persistent reservation survive logout,
nexus loss and LU reset (they are keyed by I_T nexus); the SPC-2 reservation
does not. Nothing is persisted across a restart (PTPL_C=0, APTPL refused).

Access control ([SPC-4] 5.13.1 table 70, reduced to three classes):

- ``ALWAYS``: INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT READY,
  READ CAPACITY, PERSISTENT RESERVE IN/OUT, REPORT SUPPORTED OPERATION CODES
  never conflict with a persistent reservation;
- ``READ``: the medium or mode data is read (READ, VERIFY, PRE-FETCH, MODE SENSE,
  GET LBA STATUS);
- ``WRITE``: everything else.

For a non-holder: Write Exclusive blocks WRITE; Exclusive Access blocks READ
and WRITE; the Registrants Only / All Registrants types give registered
nexuses full access and unregistered ones the WE/EA rule. Under an SPC-2
reservation another nexus may only use INQUIRY, REPORT LUNS, REQUEST SENSE,
RELEASE(6) and PERSISTENT RESERVE IN (libiscsi Reserve6.2Initiators: MODE SENSE
must conflict).

PREEMPT AND ABORT is PREEMPT here: aborting the preempted nexuses' tasks is the
transport's job. REGISTER AND MOVE is not supported (05h/24h/00h).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

from target.scsi.cdb import Opcode, PersistentReserveIn, PersistentReserveOut, Reserve6
from target.scsi.command import Outcome, ScsiCommand
from target.scsi.sense import Asc, CheckCondition, SenseKey

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit

__all__ = [
    "HANDLERS",
    "Access",
    "PrInAction",
    "PrOutAction",
    "PrType",
    "ReservationConflict",
    "Reservations",
]


class ReservationConflict(Exception):
    """The command ends with status RESERVATION CONFLICT (no sense data)."""


class PrType(IntEnum):
    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def exclusive_access(self) -> bool:
        return self in _EA_TYPES

    @property
    def registrants(self) -> bool:
        """Registered nexuses get full access (the RO and AR types)."""
        return self >= PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY

    @property
    def all_registrants(self) -> bool:
        """Every registrant is a holder; the reservation lives while any remains."""
        return self >= PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS


_EA_TYPES = frozenset({PrType.EXCLUSIVE_ACCESS, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                       PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS})


class PrInAction(IntEnum):
    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


class PrOutAction(IntEnum):
    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE_EXISTING_KEY = 6
    REGISTER_AND_MOVE = 7


class Access(Enum):
    ALWAYS = "always"
    READ = "read"
    WRITE = "write"


_ALWAYS = frozenset({Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE,
                     Opcode.TEST_UNIT_READY, Opcode.READ_CAPACITY_10,
                     Opcode.PERSISTENT_RESERVE_IN, Opcode.PERSISTENT_RESERVE_OUT,
                     Opcode.MAINTENANCE_IN})
_READS = frozenset({Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16,
                    Opcode.VERIFY_10, Opcode.VERIFY_12, Opcode.VERIFY_16, Opcode.PRE_FETCH_10,
                    Opcode.PRE_FETCH_16, Opcode.MODE_SENSE_6, Opcode.MODE_SENSE_10})
# Allowed to another nexus under an SPC-2 reservation ([SPC-2] 5.5.1; scsi.md §9).
_SPC2_ALLOWED = frozenset({Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE,
                           Opcode.RELEASE_6, Opcode.PERSISTENT_RESERVE_IN})
_READ_CAPACITY_16 = 0x10


def access_class(cdb: bytes | memoryview) -> Access:
    opcode = cdb[0]
    if opcode == Opcode.SERVICE_ACTION_IN_16:  # READ CAPACITY(16) or GET LBA STATUS
        return Access.ALWAYS if cdb[1] & 0x1F == _READ_CAPACITY_16 else Access.READ
    if opcode in _ALWAYS:
        return Access.ALWAYS
    return Access.READ if opcode in _READS else Access.WRITE


@dataclass(frozen=True, slots=True)
class Reservation:
    holder: Hashable
    type: PrType


def default_transport_id(nexus: Hashable) -> bytes:
    """iSCSI TransportID ([SPC-4] 7.6.4.6) from a nexus written ``iqn...,i,0x<isid>``."""
    name = str(nexus).encode()
    fmt = 0x45 if b",i,0x" in name else 0x05  # with ISID / without
    name += bytes(4 - len(name) % 4)  # NUL-terminated, padded to a multiple of 4
    name += bytes(max(0, 20 - len(name)))
    return struct.pack(">BxH", fmt, len(name)) + name


_PARAMS = struct.Struct(">QQ4xB3x")  # RESERVATION KEY, SARK, 16-19 obsolete, 20 flags
assert _PARAMS.size == 24
_SPEC_I_PT, _ALL_TG_PT, _APTPL = 0x08, 0x04, 0x01


class Reservations:
    """Registrations and reservations of one LU."""

    def __init__(self, transport_id: Callable[[Hashable], bytes] = default_transport_id,
                 relative_port: int = 1) -> None:
        self.keys: dict[Hashable, int] = {}
        self.reservation: Reservation | None = None
        self.generation = 0
        self.spc2_holder: Hashable | None = None
        self._transport_id = transport_id
        self._port = relative_port

    # --------------------------------------------------------------- access
    def is_holder(self, nexus: Hashable) -> bool:
        res = self.reservation
        if res is None:
            return False
        return nexus in self.keys if res.type.all_registrants else res.holder == nexus

    def check(self, nexus: Hashable, cdb: bytes | memoryview) -> None:
        """Raise :class:`ReservationConflict` if ``nexus`` may not run ``cdb`` now."""
        spc2 = self.spc2_holder
        if spc2 is not None and spc2 != nexus and cdb[0] not in _SPC2_ALLOWED:
            raise ReservationConflict
        res = self.reservation
        access = access_class(cdb)
        if res is None or access is Access.ALWAYS or self.is_holder(nexus):
            return
        if res.type.registrants and nexus in self.keys:
            return
        if access is Access.WRITE or res.type.exclusive_access:
            raise ReservationConflict

    # ------------------------------------------------------------ SPC-2
    def reserve6(self, nexus: Hashable) -> None:
        # CRH=1: RESERVE(6) conflicts with any persistent registration ([SPC-4] 5.13.3).
        if self.keys or (self.spc2_holder is not None and self.spc2_holder != nexus):
            raise ReservationConflict
        self.spc2_holder = nexus

    def release6(self, nexus: Hashable) -> None:
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def nexus_lost(self, nexus: Hashable) -> None:
        self.release6(nexus)

    def reset(self) -> None:
        """LU reset: the SPC-2 reservation goes, persistent state stays ([SPC-4] 5.13.1)."""
        self.spc2_holder = None

    # --------------------------------------------------------- PR IN data
    def read_keys(self) -> bytes:
        keys = b"".join(struct.pack(">Q", k) for k in self.keys.values())
        return struct.pack(">II", self.generation, len(keys)) + keys

    def read_reservation(self) -> bytes:
        res = self.reservation
        if res is None:
            return struct.pack(">II", self.generation, 0)
        key = 0 if res.type.all_registrants else self.keys.get(res.holder, 0)
        return struct.pack(">IIQ4xxBxx", self.generation, 16, key, res.type)

    @staticmethod
    def report_capabilities() -> bytes:
        # LENGTH 8; CRH=1; TMV=1, ALLOW COMMANDS 0; type mask: all six types.
        return struct.pack(">HBBBBxx", 8, 0x10, 0x80, 0xEA, 0x01)

    def read_full_status(self) -> bytes:
        body = b""
        for nexus, key in self.keys.items():
            holder = self.is_holder(nexus)
            res_type = self.reservation.type if holder and self.reservation else 0
            tid = self._transport_id(nexus)
            body += struct.pack(">Q4xBB4xHI", key, 0x01 if holder else 0, res_type, self._port,
                                len(tid)) + tid
        return struct.pack(">II", self.generation, len(body)) + body

    # -------------------------------------------------------- PR OUT actions
    def register(self, nexus: Hashable, key: int, sark: int, *, ignore: bool,
                 ua: Callable[[Asc, Hashable], None]) -> None:
        current = self.keys.get(nexus)
        if not ignore and key != (current or 0):
            raise ReservationConflict
        if current is None and sark == 0:
            return
        self.generation += 1
        if sark:
            self.keys[nexus] = sark
            return
        del self.keys[nexus]
        res = self.reservation
        if res is not None and (res.holder == nexus if not res.type.all_registrants
                                else not self.keys):
            self.reservation = None
            # The releasing nexus itself gets no UA (libiscsi ProutReserve.Ownership*).
            if res.type.registrants:
                for other in self.keys:
                    ua(Asc.RESERVATIONS_RELEASED, other)

    def reserve(self, nexus: Hashable, rtype: PrType) -> None:
        res = self.reservation
        if res is None:
            self.reservation = Reservation(nexus, rtype)
        elif not (self.is_holder(nexus) and res.type == rtype):
            raise ReservationConflict

    def release(self, nexus: Hashable, rtype: PrType, ua: Callable[[Asc, Hashable], None]) -> None:
        res = self.reservation
        if res is None or not self.is_holder(nexus):
            return
        if res.type != rtype:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST,
                                 Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        self.reservation = None
        if res.type.registrants:  # [SPC-4] 5.13.11.2.2: UA to the other registrants
            for other in self.keys:
                if other != nexus:
                    ua(Asc.RESERVATIONS_RELEASED, other)

    def clear(self, nexus: Hashable, ua: Callable[[Asc, Hashable], None]) -> None:
        for other in self.keys:
            if other != nexus:
                ua(Asc.RESERVATIONS_PREEMPTED, other)
        self.keys.clear()
        self.reservation = None
        self.generation += 1

    def preempt(self, nexus: Hashable, sark: int, rtype: PrType,
                ua: Callable[[Asc, Hashable], None]) -> None:
        """PREEMPT ([SPC-4] 5.13.11.2.4): remove registrations, maybe take the reservation."""
        res = self.reservation
        all_registrants = res is not None and res.type.all_registrants
        if all_registrants and sark == 0:
            victims = [n for n in self.keys if n != nexus]
            self.reservation = Reservation(nexus, rtype)
        else:
            if sark == 0:
                if res is None:
                    raise ReservationConflict
                raise CheckCondition.invalid_param(8)
            if sark not in self.keys.values():
                raise ReservationConflict
            victims = [n for n, k in self.keys.items() if k == sark and n != nexus]
            if res is not None and not all_registrants and self.keys.get(res.holder) == sark:
                self.reservation = Reservation(nexus, rtype)
        for victim in victims:
            del self.keys[victim]
            ua(Asc.REGISTRATIONS_PREEMPTED, victim)
        self.generation += 1


# --------------------------------------------------------------- handlers
_PR_IN: dict[int, Callable[[Reservations], bytes]] = {
    PrInAction.READ_KEYS: Reservations.read_keys,
    PrInAction.READ_RESERVATION: Reservations.read_reservation,
    PrInAction.REPORT_CAPABILITIES: lambda _r: Reservations.report_capabilities(),
    PrInAction.READ_FULL_STATUS: Reservations.read_full_status,
}


def pr_in(lu: LogicalUnit, cdb: PersistentReserveIn, cmd: ScsiCommand) -> Outcome:
    build = _PR_IN.get(cdb.action)
    if build is None:
        raise CheckCondition.invalid_cdb(1, 4)
    return Outcome(build(lu.reservations)[: cdb.alloc])


def _pr_type(value: int) -> PrType:
    try:
        return PrType(value)
    except ValueError:
        raise CheckCondition.invalid_cdb(2, 3) from None


def pr_out(lu: LogicalUnit, cdb: PersistentReserveOut, cmd: ScsiCommand) -> Outcome:
    try:
        action = PrOutAction(cdb.action)
    except ValueError:
        raise CheckCondition.invalid_cdb(1, 4) from None
    if action is PrOutAction.REGISTER_AND_MOVE:
        raise CheckCondition.invalid_cdb(1, 4)
    needs_type = action in (PrOutAction.RESERVE, PrOutAction.RELEASE, PrOutAction.PREEMPT,
                            PrOutAction.PREEMPT_AND_ABORT)
    if needs_type and cdb.scope != 0:  # only LU_SCOPE ([SPC-4] 6.16.2)
        raise CheckCondition.invalid_cdb(2, 7)
    rtype = _pr_type(cdb.type) if needs_type else PrType.WRITE_EXCLUSIVE
    if cdb.param_len != _PARAMS.size:
        raise CheckCondition.illegal_param_length()
    data = lu.data_out(cmd, _PARAMS.size)
    if len(data) < _PARAMS.size:
        raise CheckCondition.illegal_param_length()
    key, sark, flags = _PARAMS.unpack(data)
    if flags & _APTPL:  # PTPL_C=0: nothing survives a power loss
        raise CheckCondition.invalid_param(20, 0)
    if flags & (_SPEC_I_PT | _ALL_TG_PT):  # SIP_C=0, ATP_C=0
        raise CheckCondition.invalid_param(20, 3 if flags & _SPEC_I_PT else 2)
    res = lu.reservations
    nexus = cmd.nexus

    def ua(asc: Asc, target: Hashable) -> None:
        lu.unit_attentions.establish_for(asc, target)

    if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
        res.register(nexus, key, sark,
                     ignore=action is PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, ua=ua)
        return Outcome(wanted=_PARAMS.size)
    if res.keys.get(nexus) != key:  # unregistered, or the wrong key ([SPC-4] 5.13.2)
        raise ReservationConflict
    if action is PrOutAction.RESERVE:
        res.reserve(nexus, rtype)
    elif action is PrOutAction.RELEASE:
        res.release(nexus, rtype, ua)
    elif action is PrOutAction.CLEAR:
        res.clear(nexus, ua)
    else:
        res.preempt(nexus, sark, rtype, ua)
    return Outcome(wanted=_PARAMS.size)


def reserve6(lu: LogicalUnit, cdb: Reserve6, cmd: ScsiCommand) -> Outcome:
    if cdb.release:
        lu.reservations.release6(cmd.nexus)
    else:
        lu.reservations.reserve6(cmd.nexus)
    return Outcome()


HANDLERS: dict[type, Callable[..., Any]] = {
    PersistentReserveIn: pr_in,
    PersistentReserveOut: pr_out,
    Reserve6: reserve6,
}
