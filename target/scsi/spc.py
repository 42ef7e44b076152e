"""Handlers for the primary (SPC-4) commands: TEST UNIT READY, INQUIRY, REQUEST SENSE,
MODE SENSE/SELECT, REPORT LUNS, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.

Each handler takes (lu, decoded CDB, command) and returns an :class:`Outcome`
holding the *full* data; the allocation length is applied here (truncation is
not overflow, [SPC-4] 4.3.5.6) and EDTL by ``LogicalUnit.execute``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from target.scsi.cdb import Inquiry, ModeSelect, ModeSense, NoData, ReportLuns, RequestSense
from target.scsi.command import Outcome, ScsiCommand
from target.scsi.inquiry import inquiry_data
from target.scsi.modepages import mode_select, mode_sense
from target.scsi.sense import Asc, CheckCondition, SenseKey, build_sense
from target.scsi.target_luns import report_luns_data

if TYPE_CHECKING:
    from target.scsi.lu import LogicalUnit

__all__ = ["HANDLERS"]


def _truncated(data: bytes, alloc: int) -> Outcome:
    return Outcome(data[:alloc])


def no_data(lu: LogicalUnit, cdb: NoData, cmd: ScsiCommand) -> Outcome:
    # TEST UNIT READY: the medium is always ready. START STOP UNIT and PREVENT ALLOW
    # MEDIUM REMOVAL on a non-removable LU (RMB=0): accept every combination and never
    # go offline (scsi.md §6; Linux sends START STOP UNIT on suspend).
    return Outcome()


def inquiry(lu: LogicalUnit, cdb: Inquiry, cmd: ScsiCommand) -> Outcome:
    return _truncated(inquiry_data(lu.identity, lu.block_size, cdb.evpd, cdb.page), cdb.alloc)


def request_sense(lu: LogicalUnit, cdb: RequestSense, cmd: ScsiCommand) -> Outcome:
    # Returns and clears the pending unit attention, else NO SENSE ([SPC-4] 6.35).
    ua = lu.unit_attentions.pop(cmd.nexus)
    cc = (CheckCondition(SenseKey.UNIT_ATTENTION, ua) if ua is not None
          else CheckCondition(SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE))
    return _truncated(build_sense(cc, descriptor=cdb.desc), cdb.alloc)


def mode_sense_cmd(lu: LogicalUnit, cdb: ModeSense, cmd: ScsiCommand) -> Outcome:
    dev = lu.device
    data = mode_sense(lu.mode, cdb, num_blocks=dev.num_blocks, block_size=dev.block_size,
                      read_only=dev.read_only)
    return _truncated(data, cdb.alloc)


def mode_select_cmd(lu: LogicalUnit, cdb: ModeSelect, cmd: ScsiCommand) -> Outcome:
    had_wce = lu.mode.wce
    data = bytes(lu.data_out(cmd, cdb.param_len))
    if len(data) < cdb.param_len:
        raise CheckCondition.illegal_param_length()
    if mode_select(lu.mode, cdb, data, block_size=lu.block_size):
        lu.unit_attentions.establish(Asc.MODE_PARAMETERS_CHANGED, exclude=cmd.nexus)
    # Turning the write cache off promises that every acknowledged write is stable
    # from now on, including those acknowledged while it was on.
    return Outcome(wanted=cdb.param_len, flush=had_wce and not lu.mode.wce)


def report_luns(lu: LogicalUnit, cdb: ReportLuns, cmd: ScsiCommand) -> Outcome:
    return _truncated(report_luns_data(lu.luns(), cdb.select), cdb.alloc)


HANDLERS: dict[type, Callable[..., Any]] = {
    NoData: no_data,
    Inquiry: inquiry,
    RequestSense: request_sense,
    ModeSense: mode_sense_cmd,
    ModeSelect: mode_select_cmd,
    ReportLuns: report_luns,
}
