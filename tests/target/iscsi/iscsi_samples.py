"""Sample PDUs of every type with non-default field values, shared by the iSCSI tests."""

from __future__ import annotations

from target.iscsi.errors import RejectReason
from target.iscsi.pdu import (
    R2T,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    SCSICommand,
    SCSIResponse,
    SnackRequest,
    Stage,
    TaskAttribute,
    TaskFunction,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
)

READ10 = bytes([0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0])

INITIATOR_SAMPLES: list[Pdu] = [
    NopOut(immediate=True, lun=1 << 48, itt=7, cmdsn=9, exp_statsn=3, data=b"ping!"),
    SCSICommand(read=True, attr=TaskAttribute.ORDERED, lun=2 << 48, itt=0x11223344,
                edtl=4096, cmdsn=5, exp_statsn=6, cdb=READ10),
    SCSICommand(write=True, final=False, itt=1, edtl=8, cdb=bytes(range(32)),
                bidi_read_length=512, data=b"12345678"),
    TaskMgmtRequest(function=TaskFunction.LOGICAL_UNIT_RESET, lun=3 << 48, itt=4,
                    referenced_task_tag=99, cmdsn=12, exp_statsn=2, ref_cmdsn=11, exp_datasn=1),
    LoginRequest(transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE,
                 isid=bytes.fromhex("800000abcdef"), itt=0xDEAD, cid=1, cmdsn=77,
                 exp_statsn=5, data=b"InitiatorName=iqn.x\0"),
    TextRequest(immediate=True, final=False, cont=True, itt=8, ttt=17, cmdsn=4,
                exp_statsn=6, data=b"SendTargets=All\0"),
    DataOut(final=True, lun=1 << 48, itt=5, ttt=0x1000, exp_statsn=8, datasn=2,
            buffer_offset=8192, data=bytes(range(256)) * 3),
    LogoutRequest(immediate=True, reason=1, itt=6, cid=3, cmdsn=10, exp_statsn=11),
    SnackRequest(snack_type=1, lun=1, itt=2, ttt=3, exp_statsn=4, beg_run=5, run_length=6),
]

TARGET_SAMPLES: list[Pdu] = [
    NopIn(lun=1 << 48, itt=7, ttt=0xFFFFFFFF, statsn=3, exp_cmdsn=4, max_cmdsn=35,
          data=b"pong"),
    SCSIResponse(status=0x02, underflow=True, itt=9, statsn=1, exp_cmdsn=2, max_cmdsn=3,
                 exp_datasn=4, residual=512, data=SCSIResponse.sense_segment(b"\x70" + bytes(17))),
    SCSIResponse(response=1, itt=1, bidi_overflow=True, bidi_residual=5),
    TaskMgmtResponse(response=5, itt=3, statsn=2, exp_cmdsn=3, max_cmdsn=4),
    LoginResponse(transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE,
                  isid=bytes(range(6)), tsih=0x1234, itt=0xDEAD, statsn=1, exp_cmdsn=77,
                  max_cmdsn=78, data=b"TargetPortalGroupTag=1\0"),
    LoginResponse(status_class=2, status_detail=3, itt=1),
    TextResponse(final=False, cont=True, itt=8, ttt=12, statsn=2, exp_cmdsn=3, max_cmdsn=9,
                 data=b"TargetName=iqn.y\0TargetAddress=127.0.0.1:3260,1\0"),
    DataIn(final=True, has_status=True, overflow=True, status=0, lun=1 << 48, itt=4,
           statsn=6, exp_cmdsn=7, max_cmdsn=8, datasn=3, buffer_offset=1024, residual=8,
           data=b"x" * 1001),
    DataIn(itt=4, ttt=0xFFFFFFFF, datasn=0, data=b"abc"),
    LogoutResponse(response=1, itt=6, statsn=2, exp_cmdsn=3, max_cmdsn=4, time2wait=2,
                   time2retain=20),
    R2T(lun=1 << 48, itt=5, ttt=0x1000, statsn=7, exp_cmdsn=8, max_cmdsn=9, r2tsn=1,
        buffer_offset=65536, desired_length=262144),
    AsyncMessage(lun=1, statsn=1, exp_cmdsn=2, max_cmdsn=3, async_event=AsyncEvent.REQUEST_LOGOUT,
                 param3=5, data=b"\x00\x00"),
    Reject(reason=RejectReason.INVALID_PDU_FIELD, statsn=1, exp_cmdsn=2, max_cmdsn=3,
           datasn_r2tsn=4, data=bytes(48)),
]
