"""iSCSI PDU codec (RFC 7143 section 11): the 48-byte Basic Header Segment, AHS, padding
and CRC32C digests.

Every BHS is decoded with one precompiled struct into a flat tuple (no per-PDU dict):
byte 0 opcode (+ I bit), byte 1 flags, bytes 2-3 opcode specific, byte 4 TotalAHSLength
and bytes 5-7 DataSegmentLength (one word), bytes 8-15 LUN or opcode specific, 16-19 ITT,
then seven opcode-specific words.  Target PDUs are built with the same layout.
"""
from __future__ import annotations

import struct

import crc32c as _crc32c

BHS_LEN = 48
DIGEST_LEN = 4

# Initiator opcodes
OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_TMF_REQ = 0x02
OP_LOGIN_REQ = 0x03
OP_TEXT_REQ = 0x04
OP_DATA_OUT = 0x05
OP_LOGOUT_REQ = 0x06
OP_SNACK = 0x10
# Target opcodes
OP_NOP_IN = 0x20
OP_SCSI_RSP = 0x21
OP_TMF_RSP = 0x22
OP_LOGIN_RSP = 0x23
OP_TEXT_RSP = 0x24
OP_DATA_IN = 0x25
OP_LOGOUT_RSP = 0x26
OP_R2T = 0x31
OP_ASYNC = 0x32
OP_REJECT = 0x3F

OPCODE_NAMES = {
    OP_NOP_OUT: "NOP-Out", OP_SCSI_CMD: "SCSI Command", OP_TMF_REQ: "Task Management",
    OP_LOGIN_REQ: "Login", OP_TEXT_REQ: "Text", OP_DATA_OUT: "Data-Out",
    OP_LOGOUT_REQ: "Logout", OP_SNACK: "SNACK",
}

IMMEDIATE_BIT = 0x40
OPCODE_MASK = 0x3F
FLAG_FINAL = 0x80

# SCSI Command flags
CMD_READ = 0x40
CMD_WRITE = 0x20
CMD_ATTR_MASK = 0x07

# Data-In flags
DATAIN_ACK = 0x40
DATAIN_OVERFLOW = 0x04
DATAIN_UNDERFLOW = 0x02
DATAIN_STATUS = 0x01
# SCSI Response flags
RSP_BIDI_OVERFLOW = 0x10
RSP_BIDI_UNDERFLOW = 0x08
RSP_OVERFLOW = 0x04
RSP_UNDERFLOW = 0x02

# Login flags
LOGIN_TRANSIT = 0x80
LOGIN_CONTINUE = 0x40
STAGE_SECURITY = 0
STAGE_OPERATIONAL = 1
STAGE_FULL_FEATURE = 3

# Text flags
TEXT_CONTINUE = 0x40

# Reject reasons (RFC 7143 11.17.1)
REJECT_DATA_DIGEST = 0x02
REJECT_SNACK = 0x03
REJECT_PROTOCOL_ERROR = 0x04
REJECT_COMMAND_NOT_SUPPORTED = 0x05
REJECT_IMMEDIATE_TOO_MANY = 0x06
REJECT_TASK_IN_PROGRESS = 0x07
REJECT_INVALID_DATA_ACK = 0x08
REJECT_INVALID_PDU_FIELD = 0x09
REJECT_OUT_OF_RESOURCES = 0x0A
REJECT_NEGOTIATION_RESET = 0x0B
REJECT_WAITING_FOR_LOGOUT = 0x0C

# Login status (class << 8 | detail)
LOGIN_SUCCESS = 0x0000
LOGIN_INITIATOR_ERROR = 0x0200
LOGIN_AUTH_FAILED = 0x0201
LOGIN_AUTHORIZATION_FAILURE = 0x0202
LOGIN_TARGET_NOT_FOUND = 0x0203
LOGIN_TARGET_REMOVED = 0x0204
LOGIN_UNSUPPORTED_VERSION = 0x0205
LOGIN_TOO_MANY_CONNECTIONS = 0x0206
LOGIN_MISSING_PARAMETER = 0x0207
LOGIN_CANT_INCLUDE_IN_SESSION = 0x0208
LOGIN_SESSION_TYPE_UNSUPPORTED = 0x0209
LOGIN_SESSION_DOES_NOT_EXIST = 0x020A
LOGIN_INVALID_DURING_LOGIN = 0x020B
LOGIN_TARGET_ERROR = 0x0300
LOGIN_SERVICE_UNAVAILABLE = 0x0301
LOGIN_OUT_OF_RESOURCES = 0x0302

# Task management functions and responses (RFC 7143 11.5 / 11.6)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LOGICAL_UNIT_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8
TMF_RSP_COMPLETE = 0
TMF_RSP_NO_TASK = 1
TMF_RSP_NO_LUN = 2
TMF_RSP_TASK_ALLEGIANT = 3
TMF_RSP_NO_REASSIGN = 4
TMF_RSP_NOT_SUPPORTED = 5
TMF_RSP_AUTH_FAILED = 6
TMF_RSP_REJECTED = 255

# Logout reasons and responses
LOGOUT_CLOSE_SESSION = 0
LOGOUT_CLOSE_CONNECTION = 1
LOGOUT_REMOVE_FOR_RECOVERY = 2
LOGOUT_RSP_SUCCESS = 0
LOGOUT_RSP_CID_NOT_FOUND = 1
LOGOUT_RSP_RECOVERY_UNSUPPORTED = 2
LOGOUT_RSP_CLEANUP_FAILED = 3

# SCSI status
SCSI_GOOD = 0x00
SCSI_CHECK_CONDITION = 0x02
SCSI_BUSY = 0x08
SCSI_TASK_SET_FULL = 0x28

RESERVED_TAG = 0xFFFFFFFF

AHS_EXTENDED_CDB = 1
AHS_BIDI_READ_LENGTH = 2

#: The generic BHS layout: opcode, flags, bytes 2-3, AHS/DSL word, LUN (8 bytes as one
#: integer), ITT, then words at 20, 24, 28, 32, 36, 40, 44.
BHS = struct.Struct(">BBHIQI7I")
bhs_unpack = BHS.unpack_from
bhs_pack = BHS.pack
bhs_pack_into = BHS.pack_into
U32 = struct.Struct(">I")
LE32 = struct.Struct("<I")


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def digest(data) -> bytes:
    """The 4-byte CRC32C digest as sent on the wire (least significant byte first)."""
    return LE32.pack(_crc32c.crc32c(data))


def digest_iov(parts) -> bytes:
    v = 0
    for p in parts:
        v = _crc32c.crc32c(p, v)
    return LE32.pack(v)


def pad_len(n: int) -> int:
    """Padding after an n-byte data segment (to a 4-byte boundary)."""
    return -n & 3


PADS = (b"", b"\0\0\0", b"\0\0", b"\0")   # indexed by n & 3


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic (RFC 1982, 32 bits): a < b."""
    return a != b and ((a < b and b - a < 0x80000000) or (a > b and a - b > 0x80000000))


def sn_gt(a: int, b: int) -> bool:
    return a != b and not sn_lt(a, b)


def sn_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


def lun_to_int(lun_field: int) -> int:
    """The LUN number from the 8-byte LUN field (SAM flat/peripheral addressing), as SPDK's
    spdk_scsi_lun_id_fmt_to_int does: peripheral (method 0) and flat (method 1)."""
    top = lun_field >> 48
    method = (top >> 14) & 3
    if method == 0:
        return top & 0xFF       # byte 0 is the bus identifier, byte 1 the LUN
    if method == 1:
        return top & 0x3FFF
    return 0xFFFF          # extended / logical unit addressing: not a LUN we serve


def int_to_lun(lun: int) -> int:
    if lun < 256:
        return lun << 48
    return ((0x4000 | (lun & 0x3FFF)) << 48)


def decode_text(data) -> list[tuple[str, str]]:
    """key=value pairs of a (possibly multi-PDU, already joined) text segment.  Raises
    ValueError on a pair that is not key=value."""
    out = []
    raw = bytes(data)
    for item in raw.split(b"\0"):
        if not item:
            continue
        k, sep, v = item.partition(b"=")
        if not sep or not k:
            raise ValueError(f"malformed text key {item[:64]!r}")
        out.append((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")))
    return out


def encode_text(pairs) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)
