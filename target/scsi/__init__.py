"""SCSI block-device emulation (SPC/SBC), sans-I/O: CDB in, data/status/sense out.

A transport builds a :class:`ScsiCommand`, calls :meth:`LogicalUnit.execute` and
sends the :class:`ScsiResponse`; when ``flush_before_status`` is set it first runs
:meth:`LogicalUnit.complete_flush` in a worker thread (see ``lu.py``). Commands
for a LUN the target does not have go to :func:`execute_without_lu`.
"""

from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.lu import LogicalUnit
from target.scsi.sense import CheckCondition, ScsiStatus, SenseKey
from target.scsi.target_luns import execute_without_lu, report_luns_data

__all__ = [
    "CheckCondition",
    "LogicalUnit",
    "ScsiCommand",
    "ScsiResponse",
    "ScsiStatus",
    "SenseKey",
    "execute_without_lu",
    "report_luns_data",
]
