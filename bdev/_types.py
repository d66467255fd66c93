"""The bdev layer's objects (the seed's structs): Bdev, Desc, IoWaitEntry, MgmtChannel,
SharedResource, BdevChannel, BdevIo, IoStat, and the channel flags.  The bottom room:
it imports only the constants, and every other room imports it.

BdevIo's module-author methods that are the layer's functions (``complete``,
``complete_nvme_status``, ``complete_scsi_status``, ``get_nvme_status``,
``get_scsi_status``, ``get_iovec``: _complete.py; ``get_buf``, ``set_buf``: _buffers.py)
are bound onto the class by those rooms, which sit above this one (the rooms form an
import DAG, docs/architecture.md); bound straight to the function, a method costs no
extra frame.
"""
from __future__ import annotations

from collections import deque

from ._const import IO_STATUS_SUCCESS, IO_TYPE_NAMES

U64 = 1 << 64
BDEV_CH_RESET_IN_PROGRESS = 1 << 0
BDEV_CH_QOS_ENABLED = 1 << 1


# ===================================================================== objects
class IoStat:
    """spdk_bdev_io_stat (+ the unmap counters later SPDK added)."""

    __slots__ = ("bytes_read", "num_read_ops", "bytes_written", "num_write_ops", "bytes_unmapped",
                 "num_unmap_ops", "read_latency_ticks", "write_latency_ticks",
                 "unmap_latency_ticks")
    FIELDS = __slots__

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)

    @property
    def ticks_rate(self) -> int:
        return 1_000_000_000  # ticks are nanoseconds

    def add(self, other) -> None:
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def to_list(self) -> list:
        return [getattr(self, f) for f in self.FIELDS]

    def add_list(self, values) -> None:
        for f, v in zip(self.FIELDS, values):
            setattr(self, f, getattr(self, f) + v)

    def copy(self) -> "IoStat":
        s = IoStat()
        s.add(self)
        return s

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["ticks_rate"] = self.ticks_rate
        return d


def _split_param(field):
    """A split parameter of Bdev: the hot path reads only ``_may_split``, so every write
    of a parameter recomputes it -- a module (or test) may change one after register and
    the next I/O follows it, as the seed reads them per I/O."""
    slot = "_" + field

    def get(self):
        return getattr(self, slot)

    def set(self, value):
        setattr(self, slot, value)
        self._may_split = _may_split(self)
    return property(get, set, doc=f"split parameter {field} (see _split_param)")


def _may_split(b) -> bool:
    return (bool(getattr(b, "_split_on_optimal_io_boundary", False) and getattr(b, "_optimal_io_boundary", 0))
            or bool(getattr(b, "_max_rw_size", 0) or getattr(b, "_max_num_segments", 0)
                    or getattr(b, "_max_segment_size", 0)))


class Bdev:
    """struct spdk_bdev: what a module fills in (name, geometry, fn_table, ctxt, module)
    plus the layer's internal state.  Built by a module, then ``bdev_register(bdev)``."""

    optimal_io_boundary = _split_param("optimal_io_boundary")
    split_on_optimal_io_boundary = _split_param("split_on_optimal_io_boundary")
    max_rw_size = _split_param("max_rw_size")
    max_num_segments = _split_param("max_num_segments")
    max_segment_size = _split_param("max_segment_size")

    def __init__(self, name=None, *, blocklen=512, blockcnt=0, module=None, fn_table=None, ctxt=None,
                 product_name="", write_cache=False, need_aligned_buffer=False,
                 optimal_io_boundary=0, split_on_optimal_io_boundary=False, uuid=None,
                 max_rw_size=0, max_num_segments=0, max_segment_size=0):
        self.name = name
        self.product_name = product_name
        self.blocklen = blocklen
        self.blockcnt = blockcnt
        self.write_cache = write_cache
        self.need_aligned_buffer = need_aligned_buffer
        self.optimal_io_boundary = optimal_io_boundary
        self.split_on_optimal_io_boundary = split_on_optimal_io_boundary
        self.uuid = uuid
        self.module = module
        self.fn_table = fn_table
        self.ctxt = ctxt
        # Beyond the seed (later SPDK): 0 = unlimited.  max_rw_size in blocks.
        self.max_rw_size = max_rw_size
        self.max_num_segments = max_num_segments
        self.max_segment_size = max_segment_size
        # Later SPDK's geometry hints, reported by bdev_get_bdevs (the layer does not act on
        # them): phys_blocklen 0 means the block size (set at register); numa_id None means
        # "not valid" (spdk_bdev.numa.id_valid 0); the preferred_* are in blocks.
        self.phys_blocklen = 0
        self.numa_id = None
        self.preferred_write_alignment = 0
        self.preferred_write_granularity = 0
        self.optimal_write_size = 0
        self.preferred_unmap_alignment = 0
        self.preferred_unmap_granularity = 0
        # --- internal (spdk_bdev.internal)
        self.status = 0
        self.open_descs: list = []
        self.open_elsewhere: dict = {}   # main replica: reactor index -> has open descs
        self.aliases: list = []
        self.claim_module = None
        self.reset_in_progress = None    # the reset this replica runs (the seed's field)
        self.reset_token = 0             # ... and the main thread's grant for it
        self.reset_holder = None         # main replica: (tid, token) of the granted reset
        self.reset_waiting = deque()     # main replica: asks waiting for it
        self.qos = None
        self.qos_mod_in_progress = False
        self.unregister_cb = None
        self.unregister_ctx = None
        self.stat = IoStat()
        self.measured_queue_depth = U64 - 1
        self.period = 0
        self.qd_poller = None
        self.qd_walk_busy = False
        self.io_time = 0
        self.weighted_io_time = 0
        self.histogram_enabled = False
        self.histogram = None            # closed channels' latency buckets (this replica)
        self.io_device_name = None
        self._submit = None
        self.mgr = None
        self.fini_started = False        # destruct begun on this replica (close must not redo it)

    def __repr__(self):
        return f"<Bdev {self.name} {self.blockcnt}x{self.blocklen}>"


class Desc:
    """spdk_bdev_desc: belongs to the thread that opened it."""

    __slots__ = ("bdev", "thread", "remove_cb", "remove_ctx", "event_cb", "event_ctx",
                 "remove_scheduled", "closed", "write")

    def __init__(self, bdev, thread, write, remove_cb, remove_ctx, event_cb=None, event_ctx=None):
        self.bdev = bdev
        self.thread = thread
        self.write = write
        self.remove_cb = remove_cb
        self.remove_ctx = remove_ctx
        self.event_cb = event_cb
        self.event_ctx = event_ctx
        self.remove_scheduled = False
        self.closed = False

    def __repr__(self):
        return f"<Desc {self.bdev.name} {'rw' if self.write else 'ro'} on {self.thread.name}>"


class IoWaitEntry:
    """spdk_bdev_io_wait_entry: ``cb_fn(cb_arg)`` runs when a bdev_io is available again."""

    __slots__ = ("bdev", "cb_fn", "cb_arg")

    def __init__(self, bdev=None, cb_fn=None, cb_arg=None):
        self.bdev = bdev
        self.cb_fn = cb_fn
        self.cb_arg = cb_arg


class MgmtChannel:
    """spdk_bdev_mgmt_channel: one per thread (buffer waiters, bdev_io cache, io_wait queue,
    and the batch of deferred completions)."""

    __slots__ = ("mgr", "thread", "need_buf_small", "need_buf_large", "cache", "cache_size",
                 "shared_resources", "io_wait_queue", "deferred", "deferred_scheduled",
                 "fwd_wait")

    def __init__(self, mgr, thread):
        self.mgr = mgr
        self.thread = thread
        self.need_buf_small = deque()
        self.need_buf_large = deque()
        self.cache = []
        self.cache_size = mgr.opts["bdev_io_cache_size"]
        self.shared_resources = []
        self.io_wait_queue = deque()
        self.deferred = []
        self.deferred_scheduled = False
        self.fwd_wait = deque()


class SharedResource:
    """spdk_bdev_shared_resource: per module channel per thread (nomem retry queue, and
    later SPDK's nomem_poller: set only while nomem_io holds I/O and none is outstanding)."""

    __slots__ = ("mgmt_ch", "io_outstanding", "nomem_io", "nomem_threshold", "shared_ch", "ref",
                 "nomem_poller")

    def __init__(self, mgmt_ch, shared_ch):
        self.mgmt_ch = mgmt_ch
        self.io_outstanding = 0
        self.nomem_io = deque()
        self.nomem_threshold = 0
        self.shared_ch = shared_ch
        self.ref = 1
        self.nomem_poller = None


class BdevChannel:
    """spdk_bdev_channel: a thread's channel to a bdev (ctx of the bdev's io_channel)."""

    __slots__ = ("bdev", "channel", "shared_resource", "mgmt", "mgmt_io_ch", "stat", "io_outstanding",
                 "queued_resets", "flags", "reset_token", "thread", "io_ch", "clock", "histogram")

    def __init__(self, bdev):
        self.bdev = bdev
        self.channel = None
        self.shared_resource = None
        self.mgmt = None
        self.mgmt_io_ch = None
        self.stat = IoStat()
        self.io_outstanding = 0
        self.queued_resets = deque()
        self.flags = 0
        self.reset_token = 0   # several reactors: the ask for this channel's reset in flight
        self.thread = None
        self.io_ch = None
        self.clock = None
        self.histogram = None


class BdevIo:
    """spdk_bdev_io.  Pooled (per-reactor pool + per-thread cache), so every field is
    re-set on each use.  ``driver_ctx`` is the module's per-I/O scratch space."""

    __slots__ = ("bdev", "type", "iovs", "iovcnt", "offset_blocks", "num_blocks", "_iov",
                 "ch", "desc", "cb", "caller_ctx", "status", "in_submit_request", "buf", "buf_len",
                 "get_buf_cb", "io_submit_ch", "submit_tsc", "split_current_offset_blocks",
                 "split_remaining_num_blocks", "child_iov", "nvme_cmd", "nvme_buf", "nvme_nbytes",
                 "md_buf", "md_len", "nvme_sct", "nvme_sc", "scsi_sc", "scsi_sk", "scsi_asc",
                 "scsi_ascq", "ch_ref", "waitq_entry", "driver_ctx", "proxy", "fwd")

    def __init__(self):
        self._iov = [None]
        self.iovs = self._iov
        self.iovcnt = 0
        self.buf = None
        self.io_submit_ch = None
        self.child_iov = None
        self.waitq_entry = None
        self.driver_ctx = None
        self.proxy = False
        self.fwd = None
        self.ch_ref = None
        self.nvme_sct = self.nvme_sc = 0
        self.scsi_sc = self.scsi_sk = self.scsi_asc = self.scsi_ascq = 0

    def __repr__(self):
        return (f"<BdevIo {IO_TYPE_NAMES.get(getattr(self, 'type', 0), '?')} "
                f"{getattr(self, 'offset_blocks', '?')}+{getattr(self, 'num_blocks', '?')}>")

    # --------------------------------------------------- module-author methods
    # complete, complete_nvme_status, complete_scsi_status, get_nvme_status,
    # get_scsi_status and get_iovec are bound here by _complete.py, get_buf and set_buf
    # by _buffers.py (the functions live in those rooms, above this one).

    def get_thread(self):
        return self.ch.thread

    def get_submit_tsc(self) -> int:
        """See io_get_submit_tsc."""
        return self.submit_tsc

    @property
    def success(self) -> bool:
        return self.status == IO_STATUS_SUCCESS
