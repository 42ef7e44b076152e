"""Exceptions raised by the CDP engine.

Every error the engine raises derives from :class:`EngineError` and carries a
message an operator can act on. The target layer maps the I/O ones to SCSI
sense data (see ``target/scsi``); the admin layer prints the message.
"""

from __future__ import annotations

__all__ = [
    "AlignmentError",
    "BusyError",
    "CorruptLogError",
    "CorruptMapError",
    "EngineError",
    "MarkerExistsError",
    "OutOfRangeError",
    "PointError",
    "ReadOnlyError",
    "SecondaryFullError",
    "VolumeClosedError",
]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class OutOfRangeError(EngineError):
    """An I/O touches blocks past the end of the device (SCSI: LBA out of range)."""


class AlignmentError(EngineError):
    """A buffer length is not a whole number of blocks (SCSI: invalid field in CDB)."""


class ReadOnlyError(EngineError):
    """A write to a read-only device, e.g. a point-in-time view (SCSI: write protected)."""


class SecondaryFullError(EngineError):
    """The secondary store has no room for the log record; the write did not happen."""


class PointError(EngineError):
    """A POINT is unknown, ambiguous, in the future or older than retained history."""


class MarkerExistsError(EngineError):
    """A marker name is already used on this volume."""


class BusyError(EngineError):
    """The operation conflicts with an open view or a running job."""


class VolumeClosedError(EngineError):
    """The volume was closed."""


class CorruptLogError(EngineError):
    """A log record failed its checksum or framing checks."""

    def __init__(self, message: str, *, segment: int, offset: int) -> None:
        super().__init__(message)
        self.segment = segment
        self.offset = offset


class CorruptMapError(EngineError):
    """A delta-map file failed its checksum or framing checks."""
