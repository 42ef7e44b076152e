"""The session's command window: CmdSN ordering, ExpCmdSN and MaxCmdSN (RFC 7143 sections
3.2.2.1 and 4.2.2; docs/iscsi.md section 6). Sans-I/O, no PDUs: numbers in, verdicts out.

Theory of operation:

- All comparisons use 32-bit serial number arithmetic (RFC 1982): ``a < b`` iff
  ``0 < (b - a) mod 2**32 < 2**31``. Plain ``<`` is wrong once CmdSN wraps.
- ``ExpCmdSN`` is the next CmdSN the target expects; ``MaxCmdSN`` the highest it accepts.
  The window is ``window`` commands; a *task slot* is held by every non-immediate SCSI
  command from its arrival until its status is sent (or it is aborted), so
  ``MaxCmdSN = ExpCmdSN - 1 + (window - busy)``. Receiving a command moves ExpCmdSN up by
  one and takes a slot, leaving MaxCmdSN unchanged; finishing it frees the slot and moves
  MaxCmdSN up. Neither value ever goes backwards (initiators ignore decreases), and a
  full window gives ``MaxCmdSN = ExpCmdSN - 1``: the initiator stops (flow control).
- ``classify`` sorts a non-immediate request: ``DELIVER`` (it is ExpCmdSN: run it now),
  ``HOLD`` (inside the window but early: keep it until the gap fills; with one TCP
  connection this never happens in practice, but costs little) or ``DROP`` (outside the
  window or a duplicate: ignore it silently and keep the connection, which is what
  libiscsi's iSCSIcmdsn TooHigh/TooLow tests expect).
- Immediate requests (I bit) are never classified: they carry the next CmdSN without
  consuming it (section 3.2.2.1) and run at once.
"""

from __future__ import annotations

import enum

__all__ = ["SERIAL_MASK", "CmdWindow", "Verdict", "serial_add", "serial_le", "serial_lt"]

SERIAL_MASK = 0xFFFFFFFF
_HALF = 1 << 31


def serial_add(a: int, n: int) -> int:
    return (a + n) & SERIAL_MASK


def serial_lt(a: int, b: int) -> bool:
    """``a < b`` in RFC 1982 32-bit serial arithmetic."""
    return 0 < ((b - a) & SERIAL_MASK) < _HALF


def serial_le(a: int, b: int) -> bool:
    return a == b or serial_lt(a, b)


class Verdict(enum.Enum):
    DELIVER = "deliver"
    HOLD = "hold"
    DROP = "drop"


class CmdWindow:
    """ExpCmdSN, MaxCmdSN and the task slots of one session.

    ``exp_cmdsn`` and ``max_cmdsn`` are plain attributes, read on every command and
    every response: read them, and change them only through the methods."""

    __slots__ = ("_busy", "_window", "exp_cmdsn", "max_cmdsn")

    def __init__(self, exp_cmdsn: int, window: int = 128) -> None:
        if not 1 <= window < _HALF:
            raise ValueError("the command window must hold 1..2**31-1 commands")
        self._window = window
        self._busy = 0
        self.exp_cmdsn = exp_cmdsn & SERIAL_MASK
        # The last CmdSN the free slots admit; advance, acquire and release move it.
        self.max_cmdsn = (self.exp_cmdsn + window - 1) & SERIAL_MASK

    @property
    def busy(self) -> int:
        """Task slots in use."""
        return self._busy

    def classify(self, cmdsn: int) -> Verdict:
        """Where a non-immediate request with ``cmdsn`` goes (section 3.2.2.1)."""
        if not (serial_le(self.exp_cmdsn, cmdsn) and serial_le(cmdsn, self.max_cmdsn)):
            return Verdict.DROP  # includes every CmdSN while the window is closed
        return Verdict.DELIVER if cmdsn == self.exp_cmdsn else Verdict.HOLD

    def is_next(self, cmdsn: int) -> bool:
        """``classify(cmdsn) is Verdict.DELIVER``, in one comparison: the inline lane's
        test (connection.py), which calls ``advance`` once the command has run."""
        return cmdsn == self.exp_cmdsn and self._busy < self._window

    def in_window(self, cmdsn: int) -> bool:
        return self.classify(cmdsn) is not Verdict.DROP

    def advance(self) -> None:
        """The request with CmdSN == ExpCmdSN was accepted (or consumed by ABORT TASK)."""
        self.exp_cmdsn = (self.exp_cmdsn + 1) & SERIAL_MASK
        self.max_cmdsn = (self.max_cmdsn + 1) & SERIAL_MASK  # the slots in use are as they were

    def acquire(self) -> None:
        """A non-immediate SCSI command became a task: it holds a slot until released."""
        if self._busy >= self._window:
            raise ValueError("the command window is full")
        self._busy += 1
        self.max_cmdsn = (self.max_cmdsn - 1) & SERIAL_MASK

    def release(self) -> None:
        """A task holding a slot finished (status sent) or was aborted."""
        if self._busy == 0:
            raise ValueError("no task slot is in use")
        self._busy -= 1
        self.max_cmdsn = (self.max_cmdsn + 1) & SERIAL_MASK
