"""What a transport hands the SCSI layer, and what it gets back.

A transport (the iSCSI connection, the TCMU ring) builds a :class:`ScsiCommand`
once it holds the whole CDB and all Data-Out, calls
:meth:`target.scsi.lu.LogicalUnit.execute` and sends the :class:`ScsiResponse`.
Handlers return an :class:`Outcome`; ``execute`` turns it into the response by
applying EDTL and computing residuals in one place ([RFC 7143] 11.4.5, iscsi.md §7).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from target.scsi.sense import ScsiStatus
from volume_manager.blockdev import FileSpan

__all__ = ["Outcome", "ScsiCommand", "ScsiResponse"]


@dataclass(slots=True)
class ScsiCommand:
    """One command for one LU.

    ``expected_length`` is the EDTL in the direction the transport's R/W flag
    allows (0 when the flag is absent). ``nexus`` is an opaque, hashable I_T
    nexus key from the transport (e.g. initiator name + ISID + target port).
    ``spans_ok``: the transport can send read data given as a
    :class:`volume_manager.blockdev.FileSpan` (it sends with ``sendfile``, computes no
    data digest, and the task need not complete before later ones start), so a large
    plain read may answer with a span instead of bytes, and a small one with a view of
    a :class:`volume_manager.blockdev.FileMap`, which the transport leaves to the
    kernel to read (it copies one only with ``copy_mapped``).
    """

    cdb: bytes | memoryview
    data_out: bytes | memoryview | None = None
    expected_length: int = 0
    nexus: Hashable = None
    spans_ok: bool = False


@dataclass(slots=True)
class ScsiResponse:
    """The status to send, with data-in already cut to allocation length and EDTL.

    ``flush_before_status``: the LU issued the writes (or found none) but a
    durability promise is pending (SYNCHRONIZE CACHE, FUA, WCE=0): the
    transport must run :meth:`LogicalUnit.complete_flush` in a worker thread and
    send what it returns instead of this response.
    """

    status: ScsiStatus
    data_in: bytes | bytearray | memoryview | FileSpan = b""
    sense: bytes | None = None
    residual_overflow: int = 0  # the command wanted this many bytes more than EDTL
    residual_underflow: int = 0  # EDTL exceeds what the command transferred by this much
    flush_before_status: bool = False


@dataclass(slots=True)
class Outcome:
    """What a command handler produced, before EDTL is applied.

    ``wanted`` is the byte count the CDB asks to transfer (in either direction),
    after allocation-length truncation, which is not overflow ([SPC-4] 4.3.5.6);
    None means ``len(data)``.
    """

    data: bytes | bytearray | memoryview = b""
    wanted: int | None = None
    flush: bool = False
    status: ScsiStatus = ScsiStatus.GOOD
