"""Constants of the bdev layer: SPDK's enums and the seed's #defines, in one place."""
import errno as _errno

# Errno values, returned negated as the seed does (``return -EINVAL``).
EPERM = _errno.EPERM
ENOENT = _errno.ENOENT
EIO = _errno.EIO
EBADF = _errno.EBADF
EAGAIN = _errno.EAGAIN
ENOMEM = _errno.ENOMEM
EBUSY = _errno.EBUSY
EEXIST = _errno.EEXIST
ENODEV = _errno.ENODEV
EINVAL = _errno.EINVAL
ENOTSUP = _errno.ENOTSUP

# enum spdk_bdev_io_type
IO_TYPE_INVALID = 0
IO_TYPE_READ = 1
IO_TYPE_WRITE = 2
IO_TYPE_UNMAP = 3
IO_TYPE_FLUSH = 4
IO_TYPE_RESET = 5
IO_TYPE_NVME_ADMIN = 6
IO_TYPE_NVME_IO = 7
IO_TYPE_NVME_IO_MD = 8
IO_TYPE_WRITE_ZEROES = 9
NUM_IO_TYPES = 10
IO_TYPE_NAMES = {IO_TYPE_READ: "read", IO_TYPE_WRITE: "write", IO_TYPE_UNMAP: "unmap",
                 IO_TYPE_FLUSH: "flush", IO_TYPE_RESET: "reset", IO_TYPE_NVME_ADMIN: "nvme_admin",
                 IO_TYPE_NVME_IO: "nvme_io", IO_TYPE_NVME_IO_MD: "nvme_io_md",
                 IO_TYPE_WRITE_ZEROES: "write_zeroes"}

# enum spdk_bdev_io_status
IO_STATUS_SCSI_ERROR = -3
IO_STATUS_NVME_ERROR = -2
IO_STATUS_FAILED = -1
IO_STATUS_PENDING = 0
IO_STATUS_SUCCESS = 1
IO_STATUS_NOMEM = 2   # (-4 in later SPDK; the seed's value is irrelevant, only its name is used)

# enum spdk_bdev_status
STATUS_INVALID, STATUS_READY, STATUS_REMOVING = 0, 1, 2

# open_ext events (later SPDK's enum spdk_bdev_event_type)
EVENT_REMOVE = "remove"
EVENT_RESIZE = "resize"

# The seed's #defines.
BDEV_IO_POOL_SIZE = 64 * 1024
BDEV_IO_CACHE_SIZE = 256
# The seed's buffer pools: 8192 small / 1024 large buffers *for the whole app*.  The
# options (small_buf_pool_size / large_buf_pool_size, as later SPDK names them) keep that
# meaning: global counts, split over the reactors (reactor i gets count // n, plus one for
# the first count % n reactors), each share in its own slice of the shared arena.  The
# arena is a sparse tmpfs segment: pages cost memory only once a buffer is used.
BUF_SMALL_POOL_SIZE = 8192
BUF_LARGE_POOL_SIZE = 1024
# SPDK's per-thread iobuf cache defaults (lib/bdev/bdev.c); ringstack has no such cache, so
# bdev_set_options accepts and save_config writes these values only.
BUF_SMALL_CACHE_SIZE = 128
BUF_LARGE_CACHE_SIZE = 16
SMALL_BUF_MAX_SIZE = 8192
LARGE_BUF_MAX_SIZE = 65536
NOMEM_THRESHOLD_COUNT = 8
# Later SPDK (bdev_no_mem_poller): an I/O a module completed with NOMEM while nothing else
# was outstanding on its shared resource has no completion to retry it; a timed poller on
# that thread retries it after this many microseconds (registered only in that case).
NOMEM_RETRY_PERIOD_US = 1000
ZERO_BUFFER_SIZE = 0x100000
BDEV_IO_NUM_CHILD_IOV = 32

QOS_TIMESLICE_IN_USEC = 1000
QOS_MIN_IO_PER_TIMESLICE = 1
QOS_MIN_BYTE_PER_TIMESLICE = 512
QOS_MIN_IOS_PER_SEC = 1000
QOS_MIN_BYTES_PER_SEC = 1024 * 1024
QOS_LIMIT_NOT_DEFINED = (1 << 64) - 1

# enum spdk_bdev_qos_rate_limit_type: the seed has the first two; the read/write bytes
# limits are what later SPDK added (r_mbytes_per_sec / w_mbytes_per_sec).
QOS_RW_IOPS_RATE_LIMIT = 0
QOS_RW_BPS_RATE_LIMIT = 1
QOS_R_BPS_RATE_LIMIT = 2
QOS_W_BPS_RATE_LIMIT = 3
QOS_NUM_RATE_LIMIT_TYPES = 4
QOS_CONF_TYPE = ("Limit_IOPS", "Limit_BPS", "Limit_Read_BPS", "Limit_Write_BPS")
QOS_RPC_TYPE = ("rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec", "w_mbytes_per_sec")

# NVMe / SCSI status codes used by the translation functions.
NVME_SCT_GENERIC = 0
NVME_SC_SUCCESS = 0
NVME_SC_INTERNAL_DEVICE_ERROR = 0x06
SCSI_STATUS_GOOD = 0x00
SCSI_STATUS_CHECK_CONDITION = 0x02
SCSI_SENSE_NO_SENSE = 0x00
SCSI_SENSE_ABORTED_COMMAND = 0x0B
SCSI_SENSE_ILLEGAL_REQUEST = 0x05
SCSI_SENSE_MEDIUM_ERROR = 0x03
SCSI_SENSE_HARDWARE_ERROR = 0x04
SCSI_SENSE_NOT_READY = 0x02
SCSI_ASC_NO_ADDITIONAL_SENSE = 0x00
SCSI_ASCQ_CAUSE_NOT_REPORTABLE = 0x00
SCSI_ASC_INVALID_COMMAND_OPERATION_CODE = 0x20
SCSI_ASC_INVALID_FIELD_IN_CDB = 0x24
SCSI_ASC_LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE = 0x21
SCSI_ASC_WRITE_ERROR = 0x0C
SCSI_ASC_UNRECOVERED_READ_ERROR = 0x11
SCSI_ASC_INTERNAL_TARGET_FAILURE = 0x44

# The bdev layer's buffer arenas (ipc.arena ids).  ipc.arena keys attached arenas by id in
# each process and a BufferHandle names its arena by id, so ids must never collide.  The
# bdev layer owns every id whose bits 48..63 are BDEV_ARENA_ID_TAG; the rest of the id is
# the creating process's pid (bits 16..47) and a per-process sequence (bits 0..15), so two
# initialisations -- in one process or in two live processes -- never share an id.  Other
# arena users must keep their ids below 2**48 (this is the one place that reserves ids).
BDEV_ARENA_ID_TAG = 0xBD
BDEV_ARENA_ID_SHIFT = 48
