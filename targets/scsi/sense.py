"""SCSI status codes, sense keys, additional sense codes and fixed-format sense data
(SPC-4 4.5.3), as SPDK's include/spdk/scsi_spec.h names them."""
from __future__ import annotations

# -- status (SAM-5 5.3)
GOOD = 0x00
CHECK_CONDITION = 0x02
CONDITION_MET = 0x04
BUSY = 0x08
RESERVATION_CONFLICT = 0x18
TASK_SET_FULL = 0x28
TASK_ABORTED = 0x40

# -- sense keys
NO_SENSE = 0x0
RECOVERED_ERROR = 0x1
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE

# -- (asc, ascq) pairs
NO_ADDITIONAL_SENSE = (0x00, 0x00)
PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
LBA_OUT_OF_RANGE = (0x21, 0x00)
INVALID_FIELD_IN_CDB = (0x24, 0x00)
LOGICAL_UNIT_NOT_SUPPORTED = (0x25, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (0x26, 0x04)
WRITE_PROTECTED = (0x27, 0x00)
BUS_DEVICE_RESET_FUNCTION_OCCURRED = (0x29, 0x03)
CAPACITY_DATA_HAS_CHANGED = (0x2A, 0x09)
RESERVATIONS_PREEMPTED = (0x2A, 0x03)
RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
MEDIUM_NOT_PRESENT = (0x3A, 0x00)
INTERNAL_TARGET_FAILURE = (0x44, 0x00)
INSUFFICIENT_REGISTRATION_RESOURCES = (0x55, 0x04)
MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)
LOGICAL_UNIT_COMMUNICATION_FAILURE = (0x08, 0x00)

SENSE_LEN = 18


def fixed_sense(sk: int, asc: int, ascq: int, info: int | None = None,
                field: tuple | None = None) -> bytes:
    """Fixed-format sense data, current error; ``info`` fills INFORMATION (VALID=1);
    ``field`` = (CDB byte, bit or None) fills the sense-key specific FIELD POINTER of an
    INVALID FIELD IN CDB (SPC-4 4.5.2.4.2: SKSV=1, C/D=1)."""
    b = bytearray(SENSE_LEN)
    b[0] = 0x70
    b[2] = sk & 0x0F
    if info is not None:
        b[0] |= 0x80
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = SENSE_LEN - 8
    b[12] = asc
    b[13] = ascq
    if field is not None:
        byte, bit = field
        b[15] = 0x80 | 0x40 | ((0x08 | bit) if bit is not None else 0)
        b[16:18] = byte.to_bytes(2, "big")
    return bytes(b)


class ScsiError(Exception):
    """Raised by a command handler: the task ends with ``status`` and this sense."""

    def __init__(self, sk: int, code: tuple, status: int = CHECK_CONDITION,
                 info: int | None = None, field: tuple | None = None):
        super().__init__(f"sk={sk:#x} asc/ascq={code[0]:#04x}/{code[1]:#04x}")
        self.status = status
        self.sk = sk
        self.asc, self.ascq = code
        self.info = info
        self.field = field

    def sense(self) -> bytes:
        if self.status != CHECK_CONDITION:
            return b""
        return fixed_sense(self.sk, self.asc, self.ascq, self.info, self.field)


def illegal(code=INVALID_FIELD_IN_CDB, field: tuple | None = None) -> ScsiError:
    """ILLEGAL REQUEST; ``field`` = (byte, bit) points at the offending CDB field."""
    return ScsiError(ILLEGAL_REQUEST, code, field=field)


def conflict() -> ScsiError:
    return ScsiError(NO_SENSE, NO_ADDITIONAL_SENSE, status=RESERVATION_CONFLICT)
