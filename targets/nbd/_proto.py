"""NBD wire constants, header layouts and the single errno -> NBD error mapping.

All integers on the wire are big-endian.  Layout notes follow NetworkBlockDevice/nbd
doc/proto.md; see /work/shared/NBD.md for what each real client depends on.
"""
from __future__ import annotations

import errno as _errno
import struct

# --- handshake -------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943            # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054            # "IHAVEOPT"
REPLY_MAGIC_OPT = 0x0003E889045565A9     # option reply magic

FLAG_FIXED_NEWSTYLE = 1 << 0             # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0           # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- transmission flags (u16) ----------------------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8

# --- requests / replies ----------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_NAMES = {0: "READ", 1: "WRITE", 2: "DISC", 3: "FLUSH", 4: "TRIM", 5: "CACHE",
             6: "WRITE_ZEROES", 7: "BLOCK_STATUS"}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# NBD error values (the protocol's own numbering; equal to Linux errno values).
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# --- struct layouts (compiled once) ----------------------------------------------------
GREETING = struct.Struct(">QQH")            # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPT_HDR = struct.Struct(">QII")             # IHAVEOPT, option, length
OPT_REPLY = struct.Struct(">QIII")          # magic, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")    # size, transmission flags (+124 zeroes)
INFO_EXPORT_S = struct.Struct(">HQH")       # type 0, size, flags
INFO_BLOCK_SIZE_S = struct.Struct(">HIII")  # type 3, min, preferred, max
REQUEST = struct.Struct(">IHHQQI")          # 28 bytes
SIMPLE_REPLY = struct.Struct(">IIQ")        # 16 bytes
CHUNK_HDR = struct.Struct(">IHHQI")         # 20 bytes
CHUNK_OFFSET_DATA = struct.Struct(">IHHQIQ")  # chunk header + u64 offset (28 bytes)
CHUNK_ERROR = struct.Struct(">IHHQIIH")     # chunk header + u32 error + u16 msglen

# Caps on what a client may make us hold.
MAX_STRING = 4096                # spec: names and messages MUST be <= 4096 bytes
MAX_OPTION_DATA = 64 * 1024      # larger option payloads are drained and refused
MAX_OPTIONS = 256                # more options than this in one handshake = hard disconnect
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024   # clients assume >= 32 MiB when not negotiated


_ERRNO_TO_NBD = {
    _errno.EPERM: NBD_EPERM,
    _errno.EROFS: NBD_EPERM,
    _errno.EACCES: NBD_EPERM,
    _errno.EBADF: NBD_EPERM,          # write through a read-only descriptor
    _errno.EIO: NBD_EIO,
    _errno.ENOMEM: NBD_ENOMEM,
    _errno.EAGAIN: NBD_ENOMEM,
    _errno.EINVAL: NBD_EINVAL,
    _errno.ERANGE: NBD_EINVAL,
    _errno.ENOSPC: NBD_ENOSPC,
    _errno.EDQUOT: NBD_ENOSPC,
    _errno.EFBIG: NBD_ENOSPC,
    _errno.EOVERFLOW: NBD_EOVERFLOW,
    _errno.ENOTSUP: NBD_ENOTSUP,
    _errno.EOPNOTSUPP: NBD_ENOTSUP,
    _errno.ESHUTDOWN: NBD_ESHUTDOWN,
    _errno.ENODEV: NBD_ESHUTDOWN,     # bdev hot-removed: the client must disconnect
    _errno.ENXIO: NBD_ESHUTDOWN,
}


def nbd_error(err: int) -> int:
    """Map an errno (positive or SPDK-style negative) to the NBD error sent on the wire.

    The one place errors are reduced to the protocol's small set; callers log the real
    errno before calling this.  Unknown values become EIO (a backend failure), never 0.
    """
    err = -err if err < 0 else err
    return _ERRNO_TO_NBD.get(err, NBD_EIO)
