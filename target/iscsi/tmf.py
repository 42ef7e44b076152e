"""Task management functions as a table (RFC 7143 sections 4.2.3, 11.5, 11.6; docs/iscsi.md
section 8): which tasks a function touches and what the TMF Response says. The connection
aborts the tasks in scope, raises a ``TaskManagement`` event for the shell (LU reset, ...)
and answers; functions outside the table are "not supported" (response 5), which makes
libiscsi skip the tests that need them.
"""

from __future__ import annotations

import enum

from .pdu import TaskFunction, TmfResponse

__all__ = ["TMF_TABLE", "UNSUPPORTED", "TmfScope", "tmf_rule"]


class TmfScope(enum.Enum):
    NONE = "nothing"  # answered without touching any task
    TASK = "one task"  # the Referenced Task Tag
    LUN = "the tasks of one LU"
    TARGET = "every task of the target"


UNSUPPORTED = (TmfScope.NONE, TmfResponse.NOT_SUPPORTED)

TMF_TABLE: dict[int, tuple[TmfScope, TmfResponse]] = {
    TaskFunction.ABORT_TASK: (TmfScope.TASK, TmfResponse.FUNCTION_COMPLETE),
    TaskFunction.ABORT_TASK_SET: (TmfScope.LUN, TmfResponse.FUNCTION_COMPLETE),
    TaskFunction.CLEAR_TASK_SET: (TmfScope.LUN, TmfResponse.FUNCTION_COMPLETE),
    TaskFunction.LOGICAL_UNIT_RESET: (TmfScope.LUN, TmfResponse.FUNCTION_COMPLETE),
    TaskFunction.TARGET_WARM_RESET: (TmfScope.TARGET, TmfResponse.FUNCTION_COMPLETE),
    # Task reassignment needs ERL 2 (section 11.5.1); CLEAR ACA, TARGET COLD RESET and the
    # QUERY functions are not implemented: UNSUPPORTED.
    TaskFunction.TASK_REASSIGN: (TmfScope.NONE, TmfResponse.REASSIGNMENT_NOT_SUPPORTED),
}


def tmf_rule(function: int) -> tuple[TmfScope, TmfResponse]:
    return TMF_TABLE.get(function, UNSUPPORTED)
