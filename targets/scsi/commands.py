"""The command set: opcodes, each command's CDB size, CDB usage data (what REPORT
SUPPORTED OPERATION CODES tells) and its class in the reservation conflict table.
An opcode absent from ``COMMANDS`` is answered INVALID COMMAND OPERATION CODE."""
from __future__ import annotations

from . import pr
from . import sense as S

TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
RESERVE_6 = 0x16
RELEASE_6 = 0x17
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
PREVENT_ALLOW = 0x1E
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
WRITE_AND_VERIFY_10 = 0x2E
VERIFY_10 = 0x2F
PRE_FETCH_10 = 0x34
SYNCHRONIZE_CACHE_10 = 0x35
READ_DEFECT_DATA_10 = 0x37
WRITE_SAME_10 = 0x41
UNMAP = 0x42
MODE_SELECT_10 = 0x55
MODE_SENSE_10 = 0x5A
PR_IN = 0x5E
PR_OUT = 0x5F
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
WRITE_AND_VERIFY_16 = 0x8E
VERIFY_16 = 0x8F
PRE_FETCH_16 = 0x90
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
REPORT_LUNS = 0xA0
MAINTENANCE_IN = 0xA3
READ_12 = 0xA8
WRITE_12 = 0xAA
WRITE_AND_VERIFY_12 = 0xAE
VERIFY_12 = 0xAF
READ_DEFECT_DATA_12 = 0xB7

SAI_READ_CAPACITY_16 = 0x10
SAI_GET_LBA_STATUS = 0x12
MI_REPORT_SUPPORTED_OPCODES = 0x0C

A, R, W = pr.ALLOWED, pr.READ_CLASS, pr.WRITE_CLASS


class Cmd:
    __slots__ = ("opcode", "sa", "name", "usage", "cls")

    def __init__(self, opcode, sa, name, usage, cls):
        self.opcode = opcode
        self.sa = sa                 # None: the opcode has no service actions
        self.name = name
        self.usage = bytes([opcode]) + bytes(usage)
        self.cls = cls


_F = 0xFF
_RW10 = (0x18, _F, _F, _F, _F, 0x00, _F, _F, 0x00)        # DPO FUA, LBA, length
_RW12 = (0x18, _F, _F, _F, _F, _F, _F, _F, _F, 0x00, 0x00)
_RW16 = (0x18, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0x00, 0x00)
_VER10 = (0x12, _F, _F, _F, _F, 0x00, _F, _F, 0x00)       # DPO BYTCHK
_VER12 = (0x12, _F, _F, _F, _F, _F, _F, _F, _F, 0x00, 0x00)
_VER16 = (0x12, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0x00, 0x00)

_TABLE = [
    Cmd(TEST_UNIT_READY, None, "TEST UNIT READY", (0, 0, 0, 0, 0), A),
    Cmd(REQUEST_SENSE, None, "REQUEST SENSE", (0x01, 0, 0, _F, 0), A),
    Cmd(READ_6, None, "READ(6)", (0x1F, _F, _F, _F, 0), R),
    Cmd(WRITE_6, None, "WRITE(6)", (0x1F, _F, _F, _F, 0), W),
    Cmd(INQUIRY, None, "INQUIRY", (0x01, _F, _F, _F, 0), A),
    Cmd(MODE_SELECT_6, None, "MODE SELECT(6)", (0x11, 0, 0, _F, 0), W),
    Cmd(RESERVE_6, None, "RESERVE(6)", (0, 0, 0, 0, 0), pr.SCSI2_CLASS),
    Cmd(RELEASE_6, None, "RELEASE(6)", (0, 0, 0, 0, 0), pr.SCSI2_CLASS),
    Cmd(MODE_SENSE_6, None, "MODE SENSE(6)", (0x08, _F, _F, _F, 0), R),
    Cmd(START_STOP_UNIT, None, "START STOP UNIT", (0x01, 0, 0x0F, 0xF7, 0), A),
    Cmd(PREVENT_ALLOW, None, "PREVENT ALLOW MEDIUM REMOVAL", (0, 0, 0, 0x03, 0), A),
    Cmd(READ_CAPACITY_10, None, "READ CAPACITY(10)", (0, 0, 0, 0, 0, 0, 0, 0, 0), A),
    Cmd(READ_10, None, "READ(10)", _RW10, R),
    Cmd(WRITE_10, None, "WRITE(10)", _RW10, W),
    Cmd(WRITE_AND_VERIFY_10, None, "WRITE AND VERIFY(10)", _VER10, W),
    Cmd(VERIFY_10, None, "VERIFY(10)", _VER10, R),
    Cmd(PRE_FETCH_10, None, "PRE-FETCH(10)", (0x02, _F, _F, _F, _F, 0, _F, _F, 0), R),
    Cmd(SYNCHRONIZE_CACHE_10, None, "SYNCHRONIZE CACHE(10)",
        (0x02, _F, _F, _F, _F, 0, _F, _F, 0), W),
    Cmd(READ_DEFECT_DATA_10, None, "READ DEFECT DATA(10)", (0, 0x1F, 0, 0, 0, 0, _F, _F, 0), R),
    Cmd(WRITE_SAME_10, None, "WRITE SAME(10)", (0x08, _F, _F, _F, _F, 0, _F, _F, 0), W),
    Cmd(UNMAP, None, "UNMAP", (0, 0, 0, 0, 0, 0, _F, _F, 0), W),
    Cmd(MODE_SELECT_10, None, "MODE SELECT(10)", (0x11, 0, 0, 0, 0, 0, _F, _F, 0), W),
    Cmd(MODE_SENSE_10, None, "MODE SENSE(10)", (0x18, _F, _F, 0, 0, 0, _F, _F, 0), R),
    Cmd(PR_IN, 0, "PERSISTENT RESERVE IN READ KEYS", (0x1F, 0, 0, 0, 0, 0, _F, _F, 0), A),
    Cmd(PR_IN, 1, "PERSISTENT RESERVE IN READ RESERVATION", (0x1F, 0, 0, 0, 0, 0, _F, _F, 0), A),
    Cmd(PR_IN, 2, "PERSISTENT RESERVE IN REPORT CAPABILITIES",
        (0x1F, 0, 0, 0, 0, 0, _F, _F, 0), A),
    Cmd(PR_IN, 3, "PERSISTENT RESERVE IN READ FULL STATUS", (0x1F, 0, 0, 0, 0, 0, _F, _F, 0), A),
] + [
    Cmd(PR_OUT, sa, "PERSISTENT RESERVE OUT " + name, (0x1F, _F, 0, 0, _F, _F, _F, _F, 0),
        pr.PR_OUT_CLASS)
    for sa, name in ((0, "REGISTER"), (1, "RESERVE"), (2, "RELEASE"), (3, "CLEAR"),
                     (4, "PREEMPT"), (5, "PREEMPT AND ABORT"), (6, "REGISTER AND IGNORE"))
] + [
    Cmd(READ_16, None, "READ(16)", _RW16, R),
    Cmd(COMPARE_AND_WRITE, None, "COMPARE AND WRITE",
        (0x18, _F, _F, _F, _F, _F, _F, _F, _F, 0, 0, 0, _F, 0, 0), W),
    Cmd(WRITE_16, None, "WRITE(16)", _RW16, W),
    Cmd(WRITE_AND_VERIFY_16, None, "WRITE AND VERIFY(16)", _VER16, W),
    Cmd(VERIFY_16, None, "VERIFY(16)", _VER16, R),
    Cmd(PRE_FETCH_16, None, "PRE-FETCH(16)",
        (0x02, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0, 0), R),
    Cmd(SYNCHRONIZE_CACHE_16, None, "SYNCHRONIZE CACHE(16)",
        (0x02, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0, 0), W),
    Cmd(WRITE_SAME_16, None, "WRITE SAME(16)",
        (0x09, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0, 0), W),
    Cmd(SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16, "READ CAPACITY(16)",
        (0x1F, 0, 0, 0, 0, 0, 0, 0, 0, _F, _F, _F, _F, 0, 0), A),
    Cmd(SERVICE_ACTION_IN_16, SAI_GET_LBA_STATUS, "GET LBA STATUS",
        (0x1F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, 0, 0), R),
    Cmd(REPORT_LUNS, None, "REPORT LUNS", (0, _F, 0, 0, 0, _F, _F, _F, _F, 0, 0), A),
    Cmd(MAINTENANCE_IN, MI_REPORT_SUPPORTED_OPCODES, "REPORT SUPPORTED OPERATION CODES",
        (0x1F, 0x87, _F, _F, _F, _F, _F, _F, _F, 0, 0), A),
    Cmd(READ_12, None, "READ(12)", _RW12, R),
    Cmd(WRITE_12, None, "WRITE(12)", _RW12, W),
    Cmd(WRITE_AND_VERIFY_12, None, "WRITE AND VERIFY(12)", _VER12, W),
    Cmd(VERIFY_12, None, "VERIFY(12)", _VER12, R),
    Cmd(READ_DEFECT_DATA_12, None, "READ DEFECT DATA(12)",
        (0x1F, 0, 0, 0, 0, _F, _F, _F, _F, 0, 0), R),
]

#: (opcode, service action or None) -> Cmd
BY_KEY = {(c.opcode, c.sa): c for c in _TABLE}
#: opcodes with service actions: where the SA lives in the CDB
SA_FIELD = {PR_IN: 1, PR_OUT: 1, SERVICE_ACTION_IN_16: 1, MAINTENANCE_IN: 1}
OPCODES = {c.opcode for c in _TABLE}


def lookup(cdb: bytes):
    """The Cmd for a CDB, or None (unsupported opcode or service action)."""
    op = cdb[0]
    if op in SA_FIELD:
        if len(cdb) <= SA_FIELD[op]:
            return None
        return BY_KEY.get((op, cdb[SA_FIELD[op]] & 0x1F))
    return BY_KEY.get((op, None))


_TIMEOUTS = bytes([0, 10, 0, 0]) + (0).to_bytes(4, "big") + (30).to_bytes(4, "big")


def report_supported_opcodes(cdb: bytes) -> bytes:
    """REPORT SUPPORTED OPERATION CODES (SPC-4 6.35): all commands, or one."""
    rctd = bool(cdb[2] & 0x80)
    opt = cdb[2] & 0x07
    if opt == 0:
        out = bytearray()
        for c in _TABLE:
            flags = (0x02 if rctd else 0) | (0x01 if c.sa is not None else 0)
            out += bytes([c.opcode, 0]) + (c.sa or 0).to_bytes(2, "big") \
                + bytes([0, flags]) + len(c.usage).to_bytes(2, "big")
            if rctd:
                out += _TIMEOUTS
        return len(out).to_bytes(4, "big") + bytes(out)
    op, sa = cdb[3], int.from_bytes(cdb[4:6], "big")
    # a bad field here points at it: an initiator (libiscsi) reads INVALID FIELD IN CDB
    # without a pointer, or pointing at byte 1, as "service action not supported"
    if opt == 1:
        if op in SA_FIELD:
            raise S.illegal(field=(2, 2))
        c = BY_KEY.get((op, None))
    elif opt == 2:
        if op not in SA_FIELD:
            if op in OPCODES:
                raise S.illegal(field=(2, 2))
            c = None
        else:
            c = BY_KEY.get((op, sa))
    else:
        raise S.illegal(field=(2, 2))
    if c is None:
        return bytes([0, (0x80 if rctd else 0) | 0x01, 0, 0])   # SUPPORT 001b: not supported
    body = bytes([0, (0x80 if rctd else 0) | 0x03]) + len(c.usage).to_bytes(2, "big") + c.usage
    return body + (_TIMEOUTS if rctd else b"")
