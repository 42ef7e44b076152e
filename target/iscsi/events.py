"""Events a ``Connection`` hands its shell (the asyncio server): frozen, slotted dataclasses,
the h11 ``_events.py`` idea. Each one asks the shell to do something only it can do (run a
SCSI command on an LU, reset an LU, close the socket); all wire answers are already queued
in ``Connection.data_to_send()``.

Shell contract: handle the events returned by one ``receive_data``/``tick`` call in order,
then send ``data_to_send()`` (also after each ``complete``); after ``CloseConnection`` send
what is queued and close.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

from target.scsi.command import ScsiCommand

from .login import LoginResult

__all__ = [
    "CloseConnection",
    "Event",
    "ExecuteCommand",
    "LoggedOut",
    "LoginComplete",
    "Nexus",
    "TaskManagement",
    "TasksAborted",
]


# A dict key of the SCSI layer, looked up on every command: a tuple hashes in C, where
# a frozen dataclass calls its generated __hash__.
class Nexus(NamedTuple):
    """The I_T nexus key handed to the SCSI layer (SAM-5 4.6; RFC 7143 section 4.4.1):
    initiator port = InitiatorName + ISID, target port = TargetName + portal group."""

    initiator_name: str
    isid: bytes
    target_name: str
    portal_group_tag: int


@dataclass(slots=True)
class LoginComplete:
    """Full feature phase reached (for the shell's session registry, reinstatement)."""

    result: LoginResult


@dataclass(slots=True)
class ExecuteCommand:
    """Run ``command`` and answer with ``Connection.complete(task_tag, response)``.

    ``lu`` is the object the LUN map gave for ``lun``, or None: the LUN does not exist and
    the shell answers with ``target.scsi.execute_without_lu`` (INQUIRY peripheral qualifier
    3 / 25h/00h), so REPORT LUNS and INQUIRY work on LUN numbers that have no LU. The
    command's Data-Out lives in a buffer owned by this command only (no copy needed)."""

    task_tag: int
    lun: int
    lu: object | None
    command: ScsiCommand


@dataclass(slots=True)
class TasksAborted:
    """These tasks are gone (TMF, logout): the shell may cancel work for them; a later
    ``complete`` for one of them is ignored (RFC 7143 section 4.2.3.2: no response ever)."""

    task_tags: tuple[int, ...]


@dataclass(slots=True)
class TaskManagement:
    """A task management function the shell must carry out on the LU(s); the TMF Response
    is already queued (RFC 7143 section 11.5). ``lu`` is None for a target-wide function
    (TARGET WARM RESET: reset every LU of the target)."""

    function: int
    lun: int
    lu: object | None
    nexus: Hashable


@dataclass(slots=True)
class LoggedOut:
    """A Logout Request was answered (RFC 7143 section 11.14): the nexus is gone (release
    its SPC-2 reservation, forget its unit attentions). A ``CloseConnection`` follows."""

    reason: int
    nexus: Hashable


@dataclass(slots=True)
class CloseConnection:
    """Send what is queued, then close the TCP connection."""

    reason: str


Event = (
    LoginComplete | ExecuteCommand | TasksAborted | TaskManagement | LoggedOut | CloseConnection
)
