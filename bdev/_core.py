"""The bdev layer's core: the port of the seed's lib/bdev/bdev.c (registry, descriptors,
channels, bdev_io pool and caches, buffers, submission and completion, split, write
zeroes emulation, reset).  QoS lives in _qos.py, statistics in _stats.py, replication in
_bcast.py.  Users import bdev.api, module authors bdev.module; nothing imports this
module directly.

Where the state lives (DESIGN.md, Control plane): every reactor holds a *replica* of the
bdev manager in ``current_reactor().locals["bdev"]``: its own Bdev objects (each with the
module's per-reactor context), descriptors opened on its threads, bdev_io pool, buffer
pool slice and per-thread management channels.  The main reactor decides (register,
unregister, examine, QoS thread choice) and broadcasts; each replica applies.  Nothing
here is a module global except constants and the (static) module list, because the
deterministic harness runs several reactors in one process.

Threads: a function documented "any thread" may run on any thread of the replica's
reactor; I/O functions run on the thread that owns the channel; completions run there too.
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import deque

import reactor as rx
from reactor import wire
from reactor.reactor import TID_SHIFT

from . import _bcast, _qos, _stats
from ._const import *  # noqa: F401,F403
from ._const import (BDEV_IO_CACHE_SIZE, BDEV_IO_NUM_CHILD_IOV, BDEV_IO_POOL_SIZE,
                     BUF_LARGE_POOL_SIZE, BUF_SMALL_POOL_SIZE, EBADF, EBUSY, EEXIST, EINVAL,
                     ENODEV, ENOENT, ENOMEM, ENOTSUP, EPERM, EVENT_REMOVE, EVENT_RESIZE,
                     IO_STATUS_FAILED, IO_STATUS_NOMEM, IO_STATUS_NVME_ERROR, IO_STATUS_PENDING,
                     IO_STATUS_SCSI_ERROR, IO_STATUS_SUCCESS, IO_TYPE_FLUSH, IO_TYPE_NVME_ADMIN,
                     IO_TYPE_NVME_IO, IO_TYPE_NVME_IO_MD, IO_TYPE_READ, IO_TYPE_RESET,
                     IO_TYPE_UNMAP, IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, LARGE_BUF_MAX_SIZE,
                     NOMEM_RETRY_PERIOD_US, NOMEM_THRESHOLD_COUNT, NVME_SC_INTERNAL_DEVICE_ERROR, NVME_SC_SUCCESS,
                     NVME_SCT_GENERIC, SCSI_ASC_NO_ADDITIONAL_SENSE,
                     SCSI_ASCQ_CAUSE_NOT_REPORTABLE, SCSI_SENSE_ABORTED_COMMAND,
                     SCSI_SENSE_NO_SENSE, SCSI_STATUS_CHECK_CONDITION, SCSI_STATUS_GOOD,
                     SMALL_BUF_MAX_SIZE, STATUS_READY, STATUS_REMOVING, ZERO_BUFFER_SIZE,
                     BDEV_ARENA_ID_SHIFT, BDEV_ARENA_ID_TAG)

log = logging.getLogger("ringstack.bdev")

U64 = 1 << 64
BDEV_CH_RESET_IN_PROGRESS = 1 << 0
BDEV_CH_QOS_ENABLED = 1 << 1
_arena_seq = itertools.count(1)


def _new_arena_id() -> int:
    """An arena id no other arena can have (see BDEV_ARENA_ID_TAG in _const.py)."""
    return ((BDEV_ARENA_ID_TAG << BDEV_ARENA_ID_SHIFT) | ((os.getpid() & 0xFFFFFFFF) << 16)
            | (_arena_seq.__next__() & 0xFFFF))


def pool_share(total: int, n_reactors: int, index: int) -> int:
    """Reactor ``index``'s share of a global count (bdev_io or buffer pool: the seed's
    pools are global): ``total // n``, plus one for the first ``total % n`` reactors."""
    return total // n_reactors + (1 if index < total % n_reactors else 0)

# The zero buffer only ever feeds writes, so one immutable buffer per process serves all.
_ZERO_BUFFER = memoryview(bytes(ZERO_BUFFER_SIZE))

# Default options (spdk_bdev_opts) used by the next initialize().
_default_opts = {"bdev_io_pool_size": BDEV_IO_POOL_SIZE, "bdev_io_cache_size": BDEV_IO_CACHE_SIZE,
                 "small_buf_pool_size": BUF_SMALL_POOL_SIZE,
                 "large_buf_pool_size": BUF_LARGE_POOL_SIZE}

# The module list (the seed's g_bdev_mgr.bdev_modules): static, like SPDK's constructors.
# Per-reactor module state (action counts) lives in the manager.
_modules: list = []


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
        return (f"<BdevIo {IO_TYPE_NAMES.get(getattr(self, 'type', 0), '?')} "  # noqa: F405
                f"{getattr(self, 'offset_blocks', '?')}+{getattr(self, 'num_blocks', '?')}>")

    # --------------------------------------------------- module-author methods
    def complete(self, status: int) -> None:
        """spdk_bdev_io_complete: the module finished this I/O (on the I/O's thread)."""
        io_complete(self, status)

    def complete_nvme_status(self, sct: int, sc: int) -> None:
        io_complete_nvme_status(self, sct, sc)

    def complete_scsi_status(self, sc, sk, asc, ascq) -> None:
        io_complete_scsi_status(self, sc, sk, asc, ascq)

    def get_nvme_status(self):
        return io_get_nvme_status(self)

    def get_scsi_status(self):
        return io_get_scsi_status(self)

    def get_buf(self, cb, length: int) -> None:
        io_get_buf(self, cb, length)

    def set_buf(self, buf, length: int) -> None:
        io_set_buf(self, buf, length)

    def get_iovec(self):
        return io_get_iovec(self)

    def get_thread(self):
        return self.ch.thread

    def get_submit_tsc(self) -> int:
        """See io_get_submit_tsc."""
        return self.submit_tsc

    @property
    def success(self) -> bool:
        return self.status == IO_STATUS_SUCCESS


# ===================================================================== manager
class Manager:
    """One reactor's replica of spdk_bdev_mgr."""

    def __init__(self, reactor, opts):
        self.reactor = reactor
        self.opts = dict(opts)
        self.bdevs: list = []
        self.names: dict = {}          # name and aliases -> Bdev
        self.init_complete = False
        self.module_init_complete = False
        self.actions: dict = {}        # module -> action_in_progress
        self.init_cb = None
        self.fini_cb = None
        self.fini_thread = None
        self.resume_idx = None
        n, i = reactor.n_reactors, reactor.index
        # This reactor's share of the global bdev_io pool (the seed's pool is app-wide).
        self.io_pool_count = pool_share(self.opts["bdev_io_pool_size"], n, i)
        self.io_pool_avail = self.io_pool_count
        self.io_free: list = []
        self.instance = None
        self.arena = None
        self.arena_owned_here = False
        self.buf_pool = None
        # This reactor's share of the global buffer pools (what it may hand out).
        self.small_count = pool_share(self.opts["small_buf_pool_size"], n, i)
        self.large_count = pool_share(self.opts["large_buf_pool_size"], n, i)
        self.small_avail = self.small_count
        self.large_avail = self.large_count
        self.examine_waiters: list = []
        self.fwd: dict = {}            # token -> forwarded bdev_io (QoS funnelling)
        self.fwd_seq = 0
        self.qos_conf = {}
        self.mgmt_key = self           # the mgmt io_device (local to this reactor)
        self.dma: dict = {}            # id(view) -> (view, handle): dma_malloc'd buffers
        self.early_claims: dict = {}   # name -> module: claimed on main before registered here
        self.reset_askers: dict = {}   # token -> channel whose reset ask is in flight

    @property
    def is_main(self) -> bool:
        return self.reactor.index == 0


def _mgr(required=True) -> Manager | None:
    try:
        m = rx.current_reactor().locals.get("bdev")
    except rx.ThreadError:
        m = None
    if m is None and required:
        raise RuntimeError("the bdev layer is not initialised on this reactor")
    return m


def get_manager() -> Manager | None:
    return _mgr(False)


# ----------------------------------------------------------------- options
def get_opts() -> dict:
    """spdk_bdev_get_opts (any thread): a copy of the options in effect."""
    m = _mgr(False)
    return dict(m.opts if m is not None else _default_opts)


def set_opts(opts: dict) -> int:
    """spdk_bdev_set_opts (before initialize).  ``bdev_io_pool_size``,
    ``small_buf_pool_size`` and ``large_buf_pool_size`` are app-wide counts, as the
    seed's pools are, split over the reactors (reactor i gets ``n // R``, +1 for the
    first ``n % R``); ``bdev_io_cache_size`` is per thread.

    -EINVAL for an unknown key, a negative cache size, or a pool smaller than the number
    of reactors.  -1 (the seed's code) when the bdev_io pool cannot feed every thread's
    cache: the seed's rule, pool >= cache * (threads + 1), applied to each reactor's
    share -- the smallest share (``pool // R``) must cover the calling reactor's
    threads + 1 (the other reactors' thread counts are not known here, so each is
    assumed to have as many; on one reactor this is exactly the seed's check; each
    replica re-checks its own share at initialize and logs if it falls short).
    Nothing changes on error."""
    new = dict(_default_opts)
    for k, v in opts.items():
        if k not in new:
            log.error("unknown bdev option %r", k)
            return -EINVAL
        new[k] = int(v)
    if new["bdev_io_cache_size"] < 0:
        return -EINVAL
    try:
        r = rx.current_reactor()
        n_threads, n_reactors = len(r.threads), r.n_reactors
    except Exception:
        n_threads, n_reactors = 1, 1
    # The pools are global and split over the reactors: each needs one of each.
    for k in ("bdev_io_pool_size", "small_buf_pool_size", "large_buf_pool_size"):
        if new[k] < n_reactors:
            log.error("%s %d must be at least the number of reactors (%d)", k, new[k], n_reactors)
            return -EINVAL
    # The seed's rule (+1: the extra mgmt channel made during subsystem init), on the
    # smallest per-reactor share of the pool.
    min_share = new["bdev_io_cache_size"] * (n_threads + 1)
    if new["bdev_io_pool_size"] // n_reactors < min_share:
        log.error("bdev_io_pool_size %d is not compatible with bdev_io_cache_size %d and %d threads "
                  "per reactor over %d reactors; must be at least %d", new["bdev_io_pool_size"],
                  new["bdev_io_cache_size"], n_threads, n_reactors, min_share * n_reactors)
        return -1
    _default_opts.update(new)
    m = _mgr(False)
    if m is not None:
        m.opts.update(new)
    return 0


# ----------------------------------------------------------------- modules
def module_list_add(module) -> None:
    """spdk_bdev_module_list_add: examine-capable modules go first (they must be ready to
    examine the bdevs later modules register)."""
    if module_list_find(module.name) is not None:
        raise ValueError(f"bdev module {module.name!r} already registered")
    if module.examine_config is not None or module.examine_disk is not None:
        _modules.insert(0, module)
    else:
        _modules.append(module)


def module_list_remove(module) -> None:
    """Not in the seed: lets tests and plugins unload a module description."""
    if module in _modules:
        _modules.remove(module)


def module_list_find(name: str):
    for m in _modules:
        if m.name == name:
            return m
    return None


def module_list() -> list:
    return list(_modules)


def _module_action_complete(m: Manager) -> None:
    if m.module_init_complete and not m.init_complete:
        if any(v > 0 for v in m.actions.values()):
            return
        _init_complete(m, 0)
    if m.examine_waiters and not any(v > 0 for v in m.actions.values()):
        waiters, m.examine_waiters = m.examine_waiters, []
        for t, cb, arg in waiters:
            rx.send_msg(t, cb, arg)


def _module_action_done(module) -> None:
    m = _mgr()
    n = m.actions.get(module, 0)
    if n <= 0:
        log.error("module %s: action done without an action in progress", module.name)
        return
    m.actions[module] = n - 1
    _module_action_complete(m)


def module_init_done(module) -> None:
    """spdk_bdev_module_init_done: an async_init module finished initialising."""
    _module_action_done(module)


def module_examine_done(module) -> None:
    """spdk_bdev_module_examine_done: a module finished examining a bdev."""
    _module_action_done(module)


def wait_for_examine(cb, cb_arg=None) -> None:
    """bdev_wait_for_examine (later SPDK): ``cb(cb_arg)`` on the calling thread once no
    module has an init or examine in progress (as a message, even if none is)."""
    m = _mgr()
    t = rx.get_thread()
    if any(v > 0 for v in m.actions.values()):
        m.examine_waiters.append((t, cb, cb_arg))
    else:
        rx.send_msg(t, cb, cb_arg)


def _init_complete(m: Manager, rc: int) -> None:
    cb, arg = m.init_cb or (None, None)
    m.init_complete = True
    m.init_cb = None
    if rc == 0:
        for mod in _modules:
            if mod.init_complete is not None:
                mod.init_complete()
    if cb is not None:
        cb(arg, rc)


# ----------------------------------------------------------------- initialize / finish
def _create_replica(r, opts, arena_id, arena_name=None) -> Manager:
    from ipc import arena as _arena
    m = Manager(r, opts)
    a = _arena.attached_arena(arena_id)
    if a is None and arena_name:
        a = _arena.Arena.attach(arena_name)
        m.arena_owned_here = True
    m.arena = a
    m.buf_pool = a.pool(r.index) if a is not None else None
    r.locals["bdev"] = m
    rx.io_device_register(m, _mgmt_channel_create, _mgmt_channel_destroy, name=f"bdev_mgr.{r.index}")
    if not r.locals.get("bdev.death_watch"):
        r.locals["bdev.death_watch"] = True
        r.death_watchers.append(lambda index, r=r: _on_reactor_death(r, index))
    return m


def _on_reactor_death(r, index: int) -> None:
    """DESIGN.md, Reliability: reactor ``index`` died.  On this reactor, everything the
    bdev layer handed to it ends with an error instead of waiting forever: replicated
    operations (broadcasts, walks) waiting for its answer, I/O funnelled to a QoS thread
    there (and bounce-buffer waits for it); a QoS thread it hosted is re-chosen."""
    _bcast.on_reactor_death(r, index)
    m = r.locals.get("bdev")
    if m is not None:
        _qos.on_reactor_death(r, m, index)
        if m.is_main:
            _resets_on_reactor_death(r, m, index)


def initialize(cb, cb_arg=None, conf: dict | None = None) -> None:
    """spdk_bdev_initialize, on the app thread of the main reactor.  ``conf`` may hold the
    seed's [Bdev] keys (BdevIoPoolSize, BdevIoCacheSize) and the [QoS] section
    (``{"Limit_IOPS": ["Malloc0 20000", ...], "Limit_BPS": [...]}``).  Every reactor gets
    its replica (pools, management channel device) before modules initialise; ``cb(cb_arg,
    rc)`` runs when modules and all their examines are done (rc -1 on failure)."""
    from ipc import arena as _arena
    from ipc.shm import Instance
    r = rx.current_reactor()
    if r.locals.get("bdev") is not None:
        log.error("bdev layer already initialised on reactor %d", r.index)
        cb(cb_arg, -1)
        return
    conf = conf or {}
    if "BdevIoPoolSize" in conf or "BdevIoCacheSize" in conf:
        o = get_opts()
        o["bdev_io_pool_size"] = conf.get("BdevIoPoolSize", o["bdev_io_pool_size"])
        o["bdev_io_cache_size"] = conf.get("BdevIoCacheSize", o["bdev_io_cache_size"])
        if set_opts(o):
            cb(cb_arg, -1)
            return
    opts = dict(_default_opts)
    instance = Instance()
    n = r.n_reactors
    try:
        # One slice per reactor, sized for the largest share (reactor 0's).
        arena = _arena.Arena.create(instance, _new_arena_id(), n,
                                    pool_share(opts["small_buf_pool_size"], n, 0),
                                    pool_share(opts["large_buf_pool_size"], n, 0))
    except Exception:
        log.exception("could not create the bdev buffer arena")
        instance.close()
        cb(cb_arg, -1)
        return
    m = _create_replica(r, opts, arena.arena_id)
    _check_io_pool_share(m)
    m.instance = instance
    m.arena_owned_here = True
    m.init_cb = (cb, cb_arg)
    m.qos_conf = {k: list(v) for k, v in conf.items() if k.startswith("Limit_")}
    _bcast.broadcast(_replica_init, [opts, arena.arena_id, arena.name], lambda rc: _modules_init(m),
                     include_self=False)


@wire.remote("bdev.replica_init")
def _replica_init(done, opts, arena_id, arena_name):
    r = rx.current_reactor()
    if r.locals.get("bdev") is None:
        m = _create_replica(r, dict(opts), arena_id, arena_name)
        _check_io_pool_share(m)
    done(0)


def _check_io_pool_share(m) -> None:
    """set_opts checked the pool against the main reactor's thread count; this replica
    knows its own."""
    need = m.opts["bdev_io_cache_size"] * (len(m.reactor.threads) + 1)
    if m.io_pool_count < need:
        log.error("reactor %d: its bdev_io pool share %d is below bdev_io_cache_size %d x "
                  "(%d threads + 1) = %d: some threads will start with short caches",
                  m.reactor.index, m.io_pool_count, m.opts["bdev_io_cache_size"],
                  len(m.reactor.threads), need)


def _modules_init(m: Manager) -> None:
    for mod in _modules:
        m.actions[mod] = 1 if mod.async_init else 0
    rc = 0
    for i, mod in enumerate(_modules):
        m.resume_idx = i
        if mod.module_init is not None:
            rc = mod.module_init() or 0
            if rc:
                break
    else:
        m.resume_idx = None
    m.module_init_complete = True
    if rc:
        log.error("bdev modules init failed")
        rx.send_msg(rx.get_thread(), _init_failed, m)
        return
    _module_action_complete(m)


def _init_failed(m: Manager) -> None:
    saved, m.init_cb = m.init_cb, None
    m.init_complete = True
    finish(_init_failed_complete, saved)


def _init_failed_complete(saved) -> None:
    cb, arg = saved or (None, None)
    if cb is not None:
        cb(arg, -1)


def finish(cb, cb_arg=None) -> None:
    """spdk_bdev_finish, on the main thread: modules' fini_start, unregister every bdev
    last-first (on every reactor), module_fini in reverse (async_fini modules resume the
    walk with module_finish_done), then every replica drops its pools; ``cb(cb_arg)``."""
    m = _mgr()
    m.fini_thread = rx.get_thread()
    m.fini_cb = (cb, cb_arg)
    for mod in _modules:
        if mod.fini_start is not None:
            mod.fini_start()
    _finish_unregister_bdevs_iter(None, 0)


def _finish_unregister_bdevs_iter(bdev, rc) -> None:
    m = _mgr()
    if rc and bdev is not None:
        log.warning("unable to unregister bdev %s during finish", bdev.name)
        _remove_from_registry(m, bdev)
    if not m.bdevs:
        rx.send_msg(rx.get_thread(), _module_finish_iter, None)
        return
    last = m.bdevs[-1]
    bdev_unregister(last, _finish_unregister_bdevs_iter, last)


def _module_finish_iter(_arg) -> None:
    m = _mgr()
    idx = len(_modules) - 1 if m.resume_idx is None else m.resume_idx - 1
    while idx >= 0:
        mod = _modules[idx]
        if mod.async_fini:
            m.resume_idx = idx
        if mod.module_fini is not None:
            mod.module_fini()
        if mod.async_fini:
            return
        idx -= 1
    m.resume_idx = None
    _bcast.broadcast(_replica_fini, [], lambda rc: _mgr_finished(m), include_self=False)


def module_finish_done() -> None:
    """spdk_bdev_module_finish_done: an async_fini module finished; the walk resumes on
    the finish thread."""
    m = _mgr()
    if rx.get_thread() is not m.fini_thread:
        rx.send_msg(m.fini_thread, _module_finish_iter, None)
    else:
        _module_finish_iter(None)


@wire.remote("bdev.replica_fini")
def _replica_fini(done):
    r = rx.current_reactor()
    m = r.locals.get("bdev")
    if m is None:
        done(0)
        return
    rx.io_device_unregister(m, lambda: (_drop_replica(r, m), done(0)))


def _drop_replica(r, m) -> None:
    r.locals.pop("bdev", None)
    if m.io_pool_avail != m.io_pool_count:
        log.error("reactor %d: bdev IO pool count is %d but should be %d", r.index,
                  m.io_pool_avail, m.io_pool_count)
    if m.dma:
        # the arena is going away: the views must not keep the mapping alive
        log.warning("reactor %d: %d dma_malloc buffers not freed before bdev finish",
                    r.index, len(m.dma))
        for v, _h in m.dma.values():
            try:
                v.release()
            except BufferError:
                pass
        m.dma.clear()
    m.buf_pool = None
    if m.arena is not None and m.arena_owned_here and not m.is_main:
        try:
            m.arena.close()
        except BufferError as exc:
            log.warning("%s", exc)
    m.arena = None


def _mgr_finished(m: Manager) -> None:
    r = m.reactor
    rx.io_device_unregister(m, lambda: _mgr_unregister_cb(r, m))


def _mgr_unregister_cb(r, m) -> None:
    if m.buf_pool is not None and m.buf_pool.in_use:
        log.error("%d buffers still in use at bdev finish", m.buf_pool.in_use)
    arena, instance = m.arena, m.instance
    _drop_replica(r, m)
    if arena is not None:
        arena.release()
        try:
            arena.close()
        except BufferError as exc:
            log.warning("%s", exc)
    if instance is not None:
        instance.close()
    cb, arg = m.fini_cb
    m.fini_cb = None
    cb(arg)


def subsystem_config_json() -> list:
    """spdk_bdev_subsystem_config_json: the config entries that recreate this state."""
    m = _mgr()
    out = [{"method": "bdev_set_options",
            "params": {"bdev_io_pool_size": m.opts["bdev_io_pool_size"],
                       "bdev_io_cache_size": m.opts["bdev_io_cache_size"],
                       "small_buf_pool_size": m.opts["small_buf_pool_size"],
                       "large_buf_pool_size": m.opts["large_buf_pool_size"]}}]
    for mod in _modules:
        if mod.config_json is not None:
            mod.config_json(out)
    for b in m.bdevs:
        # The bdev's own create entry first, then its QoS limits: the seed wrote QoS first,
        # which cannot load back (the limit names a bdev that does not exist yet); later
        # SPDK writes it after, as here.
        if getattr(b.fn_table, "write_config_json", None) is not None:
            b.fn_table.write_config_json(b, out)
        _qos.write_config_json(b, out)
    return out


# ----------------------------------------------------------------- management channel
def _mgmt_channel_create(mgr):
    t = rx.get_thread()
    ch = MgmtChannel(mgr, t)
    # Pre-populate the cache so this thread cannot be starved by others.
    for _ in range(ch.cache_size):
        if mgr.io_pool_avail <= 0:
            break
        mgr.io_pool_avail -= 1
        ch.cache.append(mgr.io_free.pop() if mgr.io_free else BdevIo())
    return ch


def _mgmt_channel_destroy(mgr, ch) -> None:
    if ch.need_buf_small or ch.need_buf_large:
        log.error("pending I/O list wasn't empty on mgmt channel free")
    if ch.shared_resources:
        log.error("module channel list wasn't empty on mgmt channel free")
    while ch.cache:
        mgr.io_free.append(ch.cache.pop())
        mgr.io_pool_avail += 1


# ===================================================================== registry
def first():
    """spdk_bdev_first (any thread): the first bdev of this reactor's replica, or None."""
    m = _mgr()
    return m.bdevs[0] if m.bdevs else None


def next(prev):  # noqa: A001 - SPDK's noun
    m = _mgr()
    try:
        i = m.bdevs.index(prev)
    except ValueError:
        return None
    return m.bdevs[i + 1] if i + 1 < len(m.bdevs) else None


def _next_leaf(m, i):
    while i < len(m.bdevs):
        if m.bdevs[i].claim_module is None:
            return m.bdevs[i]
        i += 1
    return None


def first_leaf():
    return _next_leaf(_mgr(), 0)


def next_leaf(prev):
    m = _mgr()
    try:
        i = m.bdevs.index(prev)
    except ValueError:
        return None
    return _next_leaf(m, i + 1)


def get_by_name(name: str):
    """spdk_bdev_get_by_name: by name or alias, or None."""
    m = _mgr(False)
    return m.names.get(name) if m is not None else None


def bdevs() -> list:
    m = _mgr(False)
    return list(m.bdevs) if m is not None else []


def alias_add(bdev, alias) -> int:
    """spdk_bdev_alias_add: -EINVAL for an empty alias, -EEXIST when the name is taken.
    Replicated: on the main thread it applies here, then on every other replica; on
    any other thread it is checked against this replica and then applied by the main
    thread (which owns the registry), so it shows here once that broadcast arrives."""
    if alias is None or alias == "":
        log.error("empty alias passed")
        return -EINVAL
    if _bcast.replicable(_alias_replica, [bdev.name, alias, True]):
        return -EINVAL          # no other reactor could receive it: nothing changes
    m = _mgr()
    if alias in m.names:
        log.error("bdev name/alias %s already exists", alias)
        return -EEXIST
    if not _bcast.on_main_thread() and rx.get_thread() is not None:
        _bcast.to_main(_alias_on_main, [bdev.name, alias, True], None)
        return 0
    _alias_apply(m, bdev, alias, True)
    if m.reactor.n_reactors > 1 and rx.get_thread() is not None:
        _bcast.broadcast(_alias_replica, [bdev.name, alias, True], None, include_self=False)
    return 0


def alias_del(bdev, alias) -> int:
    """spdk_bdev_alias_del: -ENOENT if ``alias`` is not one of the bdev's.  Replicated
    as alias_add."""
    if alias not in bdev.aliases:
        log.info("alias %s does not exist", alias)
        return -ENOENT
    m = _mgr()
    if not _bcast.on_main_thread() and rx.get_thread() is not None:
        _bcast.to_main(_alias_on_main, [bdev.name, alias, False], None)
        return 0
    _alias_apply(m, bdev, alias, False)
    if m.reactor.n_reactors > 1 and rx.get_thread() is not None:
        _bcast.broadcast(_alias_replica, [bdev.name, alias, False], None, include_self=False)
    return 0


def _alias_apply(m, bdev, alias, add) -> int:
    if add:
        if alias in m.names:
            return -EEXIST
        bdev.aliases.append(alias)
        m.names[alias] = bdev
        return 0
    if alias not in bdev.aliases:
        return -ENOENT
    bdev.aliases.remove(alias)
    if m.names.get(alias) is bdev:
        del m.names[alias]
    return 0


@wire.remote("bdev.alias_on_main")
def _alias_on_main(done, name, alias, add):
    m = _mgr()
    b = m.names.get(name)
    rc = -ENODEV if b is None else _alias_apply(m, b, alias, add)
    if rc:
        log.error("alias %s %s bdev %s refused by the main replica: %d", alias,
                  "for" if add else "of", name, rc)
        done(rc)
        return
    _bcast.broadcast(_alias_replica, [name, alias, add], done, include_self=False)


@wire.remote("bdev.alias_replica")
def _alias_replica(done, name, alias, add):
    m = _mgr(False)
    b = m.names.get(name) if m is not None else None
    done(_alias_apply(m, b, alias, add) if b is not None else 0)


def alias_del_all(bdev) -> None:
    """spdk_bdev_alias_del_all, on this replica (the bdev is going away everywhere)."""
    m = _mgr()
    for a in bdev.aliases:
        if m.names.get(a) is bdev:
            del m.names[a]
    bdev.aliases.clear()


def _remove_from_registry(m, bdev):
    if bdev in m.bdevs:
        m.bdevs.remove(bdev)
    for n in [bdev.name] + list(bdev.aliases):
        if m.names.get(n) is bdev:
            del m.names[n]


def _bdev_init(bdev) -> int:
    m = _mgr()
    if bdev.module is None:
        log.error("bdev %s has no module", bdev.name)
        return -EINVAL
    if not bdev.name:
        log.error("bdev name is empty")
        return -EINVAL
    if bdev.name in m.names:
        log.error("bdev name %s already exists", bdev.name)
        return -EEXIST
    if not bdev.blocklen or bdev.blocklen <= 0:
        log.error("bdev %s: block length must be positive", bdev.name)
        return -EINVAL
    bdev.status = STATUS_READY
    bdev.measured_queue_depth = U64 - 1
    bdev.open_descs = []
    bdev.aliases = []
    bdev.reset_in_progress = None
    bdev.mgr = m
    bdev._submit = bdev.fn_table.submit_request
    bdev.fini_started = False
    _qos.config_from_conf(bdev, m.qos_conf)
    # Users often register their own io_devices under the bdev name: prefix it.
    bdev.io_device_name = f"bdev_{bdev.name}"
    rx.io_device_register(bdev, _channel_create, _channel_destroy, name=bdev.io_device_name)
    return 0


# ----------------------------------------------------------------- registry notifications
def watch_registry(fn) -> None:
    """Later SPDK's bdev event notifications ("bdev_register"/"bdev_unregister"):
    ``fn(event, name)`` with event ``"register"`` or ``"unregister"`` runs on the main
    thread, as a message, for every bdev the main replica registers (after examine
    started) or starts unregistering.  A register's broadcast to the other replicas was
    sent before the notification, so a message from the main thread to another reactor
    finds the bdev there.  Call on the main reactor; watchers stay across
    initialize/finish.  A watcher that raises is logged; the others still run."""
    r = rx.current_reactor()
    r.locals.setdefault("bdev.registry_watchers", []).append(fn)


def unwatch_registry(fn) -> None:
    """Stop notifying ``fn`` (no-op if it is not watching)."""
    ws = rx.current_reactor().locals.get("bdev.registry_watchers")
    if ws and fn in ws:
        ws.remove(fn)


def _notify_registry(m, event: str, name: str) -> None:
    r = m.reactor
    if r.locals.get("bdev.registry_watchers"):
        rx.send_msg(r.default_thread, _run_registry_watchers, r, event, name)


def _run_registry_watchers(r, event, name) -> None:
    for fn in list(r.locals.get("bdev.registry_watchers", ())):
        try:
            fn(event, name)
        except Exception:
            log.exception("bdev registry watcher %r raised on %s %s", fn, event, name)


def _bdev_start(bdev) -> None:
    m = bdev.mgr
    m.bdevs.append(bdev)
    m.names[bdev.name] = bdev
    if not m.is_main:
        if bdev.name in m.early_claims:
            bdev.claim_module = m.early_claims.pop(bdev.name)
        return  # examine is control plane: the main reactor runs it, replicas follow
    _notify_registry(m, "register", bdev.name)
    for mod in list(_modules):
        if mod.examine_config is not None:
            before = m.actions.get(mod, 0) + 1
            m.actions[mod] = before
            mod.examine_config(bdev)
            if m.actions.get(mod, 0) == before:
                log.error("examine_config for module %s did not call module_examine_done()", mod.name)
    if bdev.claim_module is not None:
        return
    for mod in list(_modules):
        if mod.examine_disk is not None:
            m.actions[mod] = m.actions.get(mod, 0) + 1
            mod.examine_disk(bdev)


def bdev_register(bdev) -> int:
    """spdk_bdev_register into *this reactor's* replica (a module's replicated create
    calls it on each reactor).  -EINVAL without name/module, -EEXIST on a name clash."""
    rc = _bdev_init(bdev)
    if rc == 0:
        _bdev_start(bdev)
    return rc


def vbdev_register(vbdev, base_bdevs=(), base_bdev_count=0) -> int:
    return bdev_register(vbdev)


def _destroy_cb(bdev) -> None:
    cb, arg = bdev.unregister_cb, bdev.unregister_ctx
    rc = bdev.fn_table.destruct(bdev.ctxt) or 0
    if rc < 0:
        log.error("destruct of %s failed", bdev.name)
    if rc <= 0 and cb is not None:
        cb(arg, rc)


def _bdev_fini(bdev) -> None:
    bdev.fini_started = True
    _qos.on_fini(bdev)
    if bdev.qd_poller is not None:
        _stats.stop_qd(bdev)
    rx.io_device_unregister(bdev, lambda: _destroy_cb(bdev))


def bdev_destruct_done(bdev, rc: int) -> None:
    """spdk_bdev_destruct_done: an asynchronous destruct (returned > 0) finished."""
    if bdev.unregister_cb is not None:
        bdev.unregister_cb(bdev.unregister_ctx, rc)


def _remove_notify(desc) -> None:
    desc.remove_scheduled = False
    if desc.closed:
        return
    if desc.event_cb is not None:
        desc.event_cb(EVENT_REMOVE, desc.bdev, desc.event_ctx)
    elif desc.remove_cb is not None:
        desc.remove_cb(desc.remove_ctx)


def _unregister_local(bdev, cb, cb_arg) -> None:
    thread = rx.get_thread()
    if thread is None:
        if cb is not None:
            cb(cb_arg, -ENOTSUP)
        return
    if bdev.status != STATUS_REMOVING and bdev.mgr is not None and bdev.mgr.is_main:
        _notify_registry(bdev.mgr, "unregister", bdev.name)
    bdev.status = STATUS_REMOVING
    bdev.unregister_cb = cb
    bdev.unregister_ctx = cb_arg
    do_destruct = True
    for desc in list(bdev.open_descs):
        if desc.remove_cb is not None or desc.event_cb is not None:
            do_destruct = False
            # Deferred to a message on the desc's own thread, so this context unwinds
            # before a remove callback that closes its desc re-enters unregister.
            if not desc.remove_scheduled:
                desc.remove_scheduled = True
                rx.send_msg(desc.thread, _remove_notify, desc)
    if not do_destruct:
        return
    _remove_from_registry(bdev.mgr, bdev)
    _bdev_fini(bdev)


class _UnregisterJoin:
    """Joins the local unregister and the other replicas' into one user callback."""

    __slots__ = ("left", "rc", "cb", "cb_arg")

    def __init__(self, cb, cb_arg):
        self.left = 2
        self.rc = 0
        self.cb = cb
        self.cb_arg = cb_arg

    def part(self, _arg, rc) -> None:
        if rc and not self.rc:
            self.rc = rc
        self.left -= 1
        if self.left == 0 and self.cb is not None:
            self.cb(self.cb_arg, self.rc)

    def remote(self, rc) -> None:
        self.part(None, rc)


def bdev_unregister(bdev, cb=None, cb_arg=None) -> None:
    """spdk_bdev_unregister (any thread): every replica marks the bdev removing and
    notifies each open desc on the desc's thread; each replica destructs its module
    context after its last desc closes; ``cb(cb_arg, rc)`` on the calling thread when all
    replicas are done (-ENOTSUP outside a ringstack thread).  Called on another thread
    than the main one, the request first hops to the main thread (which owns the
    registry and orders its changes); -ENODEV if the main replica has no such bdev."""
    r = rx.current_reactor()
    t = rx.get_thread()
    if t is None:
        _unregister_local(bdev, cb, cb_arg)
        return
    if not _bcast.on_main_thread():
        _bcast.to_main(_unregister_on_main, [bdev.name],
                       lambda rc: cb(cb_arg, rc) if cb is not None else None)
        return
    if r.n_reactors == 1:
        _unregister_local(bdev, cb, cb_arg)
        return
    join = _UnregisterJoin(cb, cb_arg)
    name = bdev.name
    _unregister_local(bdev, join.part, None)
    _bcast.broadcast(_unregister_replica, [name], join.remote, include_self=False)


@wire.remote("bdev.unregister_on_main")
def _unregister_on_main(done, name):
    b = get_by_name(name)
    if b is None:
        done(-ENODEV)
        return
    bdev_unregister(b, lambda _arg, rc: done(rc))


@wire.remote("bdev.unregister_replica")
def _unregister_replica(done, name):
    m = _mgr(False)
    b = None
    if m is not None:
        m.early_claims.pop(name, None)
        for x in m.bdevs:
            if x.name == name:
                b = x
                break
    if b is None:
        done(0)  # this replica never had it (or already dropped it)
        return
    _unregister_local(b, lambda _a, rc: done(rc), None)


def notify_blockcnt_change(bdev, size: int) -> int:
    """spdk_bdev_notify_blockcnt_change: -EBUSY when shrinking with open descs.  Each
    desc opened with open_ext gets a RESIZE event on its thread (later SPDK)."""
    if bdev.open_descs and bdev.blockcnt > size:
        return -EBUSY
    bdev.blockcnt = size
    for desc in bdev.open_descs:
        if desc.event_cb is not None:
            rx.send_msg(desc.thread, _resize_notify, desc)
    return 0


def _resize_notify(desc) -> None:
    if not desc.closed:
        desc.event_cb(EVENT_RESIZE, desc.bdev, desc.event_ctx)


# ===================================================================== descriptors
def open(bdev, write: bool, remove_cb=None, remove_ctx=None):  # noqa: A001
    """spdk_bdev_open on the calling thread: returns ``(0, desc)``, or ``(-EPERM, None)``
    when opening for write a bdev a module claimed, ``(-ENOTSUP, None)`` outside a
    thread, ``(-ENODEV, None)`` when the bdev is being removed (later SPDK)."""
    thread = rx.get_thread()
    if thread is None:
        log.error("cannot open bdev from a non-ringstack thread")
        return -ENOTSUP, None
    if bdev is None:
        return -EINVAL, None
    if bdev.status == STATUS_REMOVING:
        return -ENODEV, None
    if write and bdev.claim_module is not None:
        log.error("could not open %s - %s module already claimed it", bdev.name, bdev.claim_module.name)
        return -EPERM, None
    desc = Desc(bdev, thread, bool(write), remove_cb, remove_ctx)
    bdev.open_descs.append(desc)
    if len(bdev.open_descs) == 1:
        _qos.report_open_descs(bdev, True)
    return 0, desc


def open_ext(bdev_name: str, write: bool, event_cb, event_ctx=None):
    """spdk_bdev_open_ext (later SPDK): by name, with an event callback that receives
    ``(EVENT_REMOVE | EVENT_RESIZE, bdev, event_ctx)`` on the desc's thread.  -EINVAL
    without a callback, -ENODEV for an unknown name, else as open()."""
    if event_cb is None:
        log.error("missing event callback")
        return -EINVAL, None
    bdev = get_by_name(bdev_name)
    if bdev is None:
        return -ENODEV, None
    rc, desc = open(bdev, write)
    if rc == 0:
        desc.event_cb = event_cb
        desc.event_ctx = event_ctx
    return rc, desc


def close(desc) -> None:
    """spdk_bdev_close, on the desc's thread.  The last close of a removing bdev lets its
    unregister proceed; the last close over all reactors stops QoS (seed rule; the next
    channel or I/O re-creates it with the same limits) and the queue depth poller."""
    bdev = desc.bdev
    if desc.thread is not rx.get_thread():
        log.error("desc of %s closed on thread %s, opened on %s", bdev.name,
                  getattr(rx.get_thread(), "name", None), desc.thread.name)
    if desc in bdev.open_descs:
        bdev.open_descs.remove(desc)
    desc.closed = True
    if not bdev.open_descs:
        # The seed stops QoS when the last desc closes.  With several reactors the last
        # desc of the *bdev* decides: each replica reports to the main one (_qos.py).
        _qos.report_open_descs(bdev, False)
    # The seed stops queue-depth sampling on every close.  Sampling started on the main
    # replica (where RPCs run) is stopped there too when the close is on another reactor.
    _stats.set_qd_sampling_period(bdev, 0)
    r = bdev.mgr.reactor if bdev.mgr is not None else None
    if r is not None and r.index != 0 and not bdev.fini_started:
        r.send(r.default_tid(0), _qd_stop_on_main, (bdev.name,))
    # A desc without remove_cb does not hold the unregister back (seed): the bdev may be
    # destructed already, and its last close must not unregister it a second time.
    if bdev.status == STATUS_REMOVING and not bdev.open_descs and not bdev.fini_started:
        _unregister_local(bdev, bdev.unregister_cb, bdev.unregister_ctx)


@wire.remote("bdev.qd_stop_on_main")
def _qd_stop_on_main(name) -> None:
    b = get_by_name(name)
    if b is not None and b.period:
        _stats.set_qd_sampling_period(b, 0)


def desc_get_bdev(desc):
    return desc.bdev


def module_claim_bdev(bdev, desc, module) -> int:
    """spdk_bdev_module_claim_bdev: -EPERM if another module holds it; a claim through a
    desc makes that desc read-write.

    A claim is a bdev-wide fact owned by the main reactor (docs/architecture.md): it is
    decided there (any thread of reactor 0, against the main replica) and reaches every
    other replica by the ordered broadcast, so a write open on another reactor fails
    once the claim's message has arrived there (an open ordered before it is one the
    seed, too, lets stay open).  On another reactor nothing is decided: the call
    succeeds only if this replica already holds the owner's claim for ``module`` -- a
    vbdev's replicated builder attaching its own base descriptor -- and is -EPERM
    otherwise.  With several reactors the module must be registered (replicas find it
    by name)."""
    r = rx.current_reactor()
    several = r.n_reactors > 1 and rx.get_thread() is not None
    if several and r.index != 0:
        if bdev.claim_module is not module:
            log.error("claim of bdev %s by module %s refused on reactor %d: claims are decided "
                      "by the main reactor", bdev.name, module.name, r.index)
            return -EPERM
        if desc is not None:
            desc.write = True
        return 0
    if bdev.claim_module is not None:
        log.error("bdev %s already claimed by module %s", bdev.name, bdev.claim_module.name)
        return -EPERM
    if several and module_list_find(module.name) is not module:
        log.error("claim of bdev %s: module %s is not registered, so other reactors cannot "
                  "name it", bdev.name, module.name)
        return -EINVAL
    if desc is not None and not desc.write:
        desc.write = True
    bdev.claim_module = module
    if several:
        _bcast.broadcast(_claim_replica, [bdev.name, module.name], None, include_self=False)
    return 0


def module_release_bdev(bdev) -> None:
    """spdk_bdev_module_release_bdev.  On the main reactor (which owns claims) it releases
    the claim everywhere (the others learn it by broadcast); on another reactor it
    changes nothing -- a replica's vbdev destruct calls it, and the owner's release is
    the one that counts."""
    assert bdev.claim_module is not None, f"{bdev.name} is not claimed"
    r = rx.current_reactor()
    several = r.n_reactors > 1 and rx.get_thread() is not None
    if several and r.index != 0:
        return
    bdev.claim_module = None
    if several:
        _bcast.broadcast(_claim_replica, [bdev.name, None], None, include_self=False)


@wire.remote("bdev.claim_replica")
def _claim_replica(done, name, module_name):
    """A replica learns a claim (module_name) or a release (None).  The bdev may not be
    registered here yet: a module that claims a base during examine does so before its
    create's broadcast reaches this replica; the claim then waits for the registration."""
    m = _mgr(False)
    if m is not None:
        b = m.names.get(name)
        mod = module_list_find(module_name) if module_name is not None else None
        if b is not None and b.name == name:
            b.claim_module = mod
        elif module_name is not None:
            m.early_claims[name] = mod
        else:
            m.early_claims.pop(name, None)
    done(0)


# ===================================================================== channels
def get_io_channel(desc):
    """spdk_bdev_get_io_channel: this thread's channel to the desc's bdev (or None)."""
    ch = rx.get_io_channel(desc.bdev)
    if ch is not None:
        ch.ctx.io_ch = ch
    return ch


def put_io_channel(ch) -> None:
    rx.put_io_channel(ch)


def _channel_create(bdev):
    ch = BdevChannel(bdev)
    ch.thread = rx.get_thread()
    ch.clock = ch.thread.reactor.now
    ch.channel = bdev.fn_table.get_io_channel(bdev.ctxt)
    if ch.channel is None:
        raise RuntimeError(f"module of {bdev.name} gave no io_channel")
    m = bdev.mgr
    mgmt_io_ch = rx.get_io_channel(m.mgmt_key)
    if mgmt_io_ch is None:
        rx.put_io_channel(ch.channel)
        raise RuntimeError("no bdev management channel")
    mgmt = mgmt_io_ch.ctx
    for sr in mgmt.shared_resources:
        if sr.shared_ch is ch.channel:
            rx.put_io_channel(mgmt_io_ch)
            sr.ref += 1
            break
    else:
        sr = SharedResource(mgmt, ch.channel)
        mgmt.shared_resources.append(sr)
        ch.mgmt_io_ch = mgmt_io_ch
    ch.shared_resource = sr
    ch.mgmt = mgmt
    if bdev.histogram_enabled:
        ch.histogram = [0] * 65
    _qos.enable_on_channel(bdev, ch)
    return ch


def _abort_buf_io(queue, ch) -> None:
    keep = deque()
    while queue:
        io = queue.popleft()
        if io.ch is ch:
            io_complete(io, IO_STATUS_FAILED)
        else:
            keep.append(io)
    queue.extend(keep)


def _abort_queued_io(queue, ch) -> None:
    for io in [x for x in queue if x.ch is ch]:
        queue.remove(io)
        # io_complete assumes the I/O was submitted to the module: account for the
        # decrement it will do.
        if io.type != IO_TYPE_RESET:
            ch.io_outstanding += 1
            ch.shared_resource.io_outstanding += 1
        io_complete(io, IO_STATUS_FAILED)


def _channel_destroy(bdev, ch) -> None:
    # The channel's history goes into the bdev so device stats keep it (the histogram too).
    bdev.stat.add(ch.stat)
    if ch.histogram is not None and bdev.histogram_enabled:
        _stats.histogram_fold(bdev, ch.histogram)
    sr = ch.shared_resource
    mgmt = sr.mgmt_ch
    _abort_queued_io(ch.queued_resets, ch)
    _abort_queued_io(sr.nomem_io, ch)
    _abort_buf_io(mgmt.need_buf_small, ch)
    _abort_buf_io(mgmt.need_buf_large, ch)
    _qos.abort_pending(bdev, ch)
    rx.put_io_channel(ch.channel)
    sr.ref -= 1
    if sr.ref == 0:
        if sr.nomem_poller is not None:
            rx.poller_unregister(sr.nomem_poller)
            sr.nomem_poller = None
        mgmt.shared_resources.remove(sr)
        # The mgmt channel reference was taken by whichever channel created sr; it is
        # the same per-thread IoChannel, so any release of one reference is equivalent.
        rx.put_io_channel(rx.get_thread().io_channels[bdev.mgr.mgmt_key])


# ===================================================================== getters
def get_name(bdev):
    return bdev.name


def get_product_name(bdev):
    return bdev.product_name


def get_aliases(bdev):
    return list(bdev.aliases)


def get_block_size(bdev):
    return bdev.blocklen


def get_num_blocks(bdev):
    return bdev.blockcnt


def get_buf_align(bdev):
    return bdev.blocklen if bdev.need_aligned_buffer else 1


def get_optimal_io_boundary(bdev):
    return bdev.optimal_io_boundary


def has_write_cache(bdev):
    return bdev.write_cache


def get_uuid(bdev):
    return bdev.uuid


def io_type_supported(bdev, io_type) -> bool:
    """spdk_bdev_io_type_supported: write_zeroes is emulated when write is supported."""
    if bdev.fn_table.io_type_supported(bdev.ctxt, io_type):
        return True
    if io_type == IO_TYPE_WRITE_ZEROES:
        return bool(bdev.fn_table.io_type_supported(bdev.ctxt, IO_TYPE_WRITE))
    return False


def dump_info_json(bdev, w: dict) -> int:
    fn = getattr(bdev.fn_table, "dump_info_json", None)
    if fn is not None:
        return fn(bdev.ctxt, w) or 0
    return 0


# ===================================================================== bdev_io pool
def _get_io(channel):
    mgmt = channel.mgmt
    cache = mgmt.cache
    if cache:
        return cache.pop()
    if mgmt.io_wait_queue:
        # Waiters first: this caller must not jump the line.
        return None
    m = mgmt.mgr
    if m.io_pool_avail > 0:
        m.io_pool_avail -= 1
        return m.io_free.pop() if m.io_free else BdevIo()
    return None


def free_io(io) -> None:
    """spdk_bdev_free_io: give a completed bdev_io back (from its completion callback)."""
    if io.buf is not None:
        _put_buf(io)
    mgmt = io.ch.mgmt
    # drop references to the caller's and the arena's memory (a pooled bdev_io must not
    # keep a buffer alive, nor an arena mapping from being unmapped)
    io.cb = io.caller_ctx = io.desc = io.child_iov = None
    io.fwd = None          # bounce handles (QoS funnelling)
    iov = io._iov
    iov[0] = None
    io.iovs = iov          # not the caller's iovec list (readv/writev) nor a module's
    if IO_TYPE_NVME_ADMIN <= io.type <= IO_TYPE_NVME_IO_MD:  # noqa: F405
        io.nvme_cmd = io.nvme_buf = io.md_buf = None
    cache = mgmt.cache
    if len(cache) < mgmt.cache_size:
        cache.append(io)
        q = mgmt.io_wait_queue
        if q:
            while cache and q:
                entry = q.popleft()
                entry.cb_fn(entry.cb_arg)
    else:
        m = mgmt.mgr
        m.io_pool_avail += 1
        m.io_free.append(io)


def queue_io_wait(bdev, ch, entry) -> int:
    """spdk_bdev_queue_io_wait: after an -ENOMEM, ``entry.cb_fn(entry.cb_arg)`` runs when
    a bdev_io is free again on this thread.  -EINVAL if entry.bdev differs or the cache
    still has a bdev_io (the caller would wait forever)."""
    channel = ch.ctx
    mgmt = channel.mgmt
    if bdev is not entry.bdev:
        log.error("bdevs do not match")
        return -EINVAL
    if mgmt.cache:
        log.error("cannot queue io_wait if a bdev_io is available in the per-thread cache")
        return -EINVAL
    mgmt.io_wait_queue.append(entry)
    return 0


# ===================================================================== buffers
def io_set_buf(io, buf, length) -> None:
    io.iovs[0] = buf if buf is None or len(buf) == length else buf[:length]


def io_get_buf(io, cb, length) -> None:
    """spdk_bdev_io_get_buf: ``cb(module_ch, io)`` once iovs[0] has a buffer of ``length``
    bytes from the shared arena (512-byte aligned); queued while the pool is empty."""
    if io.iovs[0] is not None:
        cb(io.ch.channel, io)
        return
    if length > LARGE_BUF_MAX_SIZE:
        log.error("get_buf of %d bytes exceeds %d", length, LARGE_BUF_MAX_SIZE)
        io_complete(io, IO_STATUS_FAILED)
        return
    mgmt = io.ch.mgmt
    m = mgmt.mgr
    io.buf_len = length
    io.get_buf_cb = cb
    if length <= SMALL_BUF_MAX_SIZE:
        if m.small_avail <= 0:
            mgmt.need_buf_small.append(io)
            return
        m.small_avail -= 1
    else:
        if m.large_avail <= 0:
            mgmt.need_buf_large.append(io)
            return
        m.large_avail -= 1
    h = m.buf_pool.get(length)
    if h is None:  # arena slice smaller than the pool option: behave as empty
        if length <= SMALL_BUF_MAX_SIZE:
            m.small_avail += 1
            mgmt.need_buf_small.append(io)
        else:
            m.large_avail += 1
            mgmt.need_buf_large.append(io)
        return
    io.buf = h
    io.iovs[0] = m.buf_pool.view(h)
    cb(io.ch.channel, io)


def _put_buf(io) -> None:
    h = io.buf
    io.buf = None
    if io.iovs:
        io.iovs[0] = None
    mgmt = io.ch.mgmt
    _return_buf(mgmt.mgr, mgmt, h, io.buf_len <= SMALL_BUF_MAX_SIZE)


def _return_buf(m, mgmt, h, small) -> None:
    """A buffer of this reactor's slice is free: to the first waiter of ``mgmt`` (the
    freeing thread's management channel, if it has one), else back to the pool."""
    if mgmt is None:
        m.buf_pool.put(h)
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        return
    q = mgmt.need_buf_small if small else mgmt.need_buf_large
    if q:
        tmp = q.popleft()
        h2 = h._replace(length=tmp.buf_len)
        tmp.buf = h2
        tmp.iovs[0] = m.buf_pool.view(h2)
        tmp.get_buf_cb(tmp.ch.channel, tmp)
    else:
        m.buf_pool.put(h)
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        if mgmt.fwd_wait:
            _qos.retry_fwd_wait(mgmt)


# ----------------------------------------------------------------- dma buffers (user API)
DMA_MAX_ALIGN = 4096   # every arena buffer starts on a 4 KiB boundary of a page-aligned map


def dma_malloc(size: int, align: int = 512):
    """spdk_dma_malloc for bdev users: a writable memoryview of exactly ``size`` bytes
    in this reactor's slice of the shared buffer arena, aligned to ``align`` (a power of
    two up to 4096), or None.  Call it on a thread of a reactor where the bdev layer is
    initialised; use the buffer from any thread of that reactor and give it back with
    :func:`dma_free` there.

    The buffer comes from the same per-reactor pools as the layer's own buffers (8 KiB
    class up to 8 KiB, 64 KiB class up to 64 KiB; ``small/large_buf_pool_size``), so
    held buffers leave fewer for ``get_buf`` and QoS bounce copies.  Exhaustion: None at
    once (no waiting, nothing queued), as is a size above 64 KiB (use several buffers
    in an iovec) or <= 0, or a bad ``align``.  Contents are not zeroed (dma_zmalloc).

    Passed to read/write(v) as is (the whole view, as one iovec entry or several), an
    I/O that must cross reactors (QoS funnelling) travels as its arena handle: no bounce
    copy.  A slice of it, or any other buffer, is bounce-copied when it has to cross."""
    m = _mgr()
    if (not isinstance(size, int) or size <= 0 or size > LARGE_BUF_MAX_SIZE or align <= 0
            or align & (align - 1) or align > DMA_MAX_ALIGN):
        log.error("dma_malloc(%r, align=%r): size must be 1..%d and align a power of two <= %d",
                  size, align, LARGE_BUF_MAX_SIZE, DMA_MAX_ALIGN)
        return None
    small = size <= SMALL_BUF_MAX_SIZE
    if small:
        if m.small_avail <= 0:
            return None
        m.small_avail -= 1
    else:
        if m.large_avail <= 0:
            return None
        m.large_avail -= 1
    h = m.buf_pool.get(size) if m.buf_pool is not None else None
    if h is None:
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        return None
    v = m.buf_pool.view(h)
    m.dma[id(v)] = (v, h)
    return v


def dma_zmalloc(size: int, align: int = 512):
    """spdk_dma_zmalloc: dma_malloc, zero-filled."""
    v = dma_malloc(size, align)
    if v is not None:
        v[:] = bytes(len(v))
    return v


def dma_free(buf) -> int:
    """spdk_dma_free: give back a dma_malloc buffer (on a thread of the reactor that
    allocated it).  The view is released: using it afterwards raises ValueError.  0, or
    -EINVAL (logged) for anything dma_malloc on this reactor did not return, or a second
    free.  A freed buffer goes first to a get_buf waiter of the calling thread."""
    m = _mgr()
    e = m.dma.get(id(buf))
    if e is None or e[0] is not buf:
        log.error("dma_free of a buffer dma_malloc on reactor %d did not return (or freed twice)",
                  m.reactor.index)
        return -EINVAL
    del m.dma[id(buf)]
    v, h = e
    try:
        v.release()
    except BufferError:
        pass     # something still exports it (the caller's problem, as use after free is)
    t = rx.get_thread()
    ioch = t.io_channels.get(m.mgmt_key) if t is not None else None
    _return_buf(m, ioch.ctx if ioch is not None else None, h, h.length <= SMALL_BUF_MAX_SIZE)
    return 0


def dma_handles(m, iovs, iovcnt, nbytes):
    """Arena handles for ``iovs`` when every entry is a whole dma_malloc buffer of this
    replica (trimmed to ``nbytes`` in all), else None."""
    dma = m.dma
    out = []
    left = nbytes
    for i in range(iovcnt):
        v = iovs[i]
        e = dma.get(id(v))
        if e is None or e[0] is not v:
            return None
        if left <= 0:
            break
        h = e[1]
        n = min(h.length, left)
        out.append([h.arena_id, h.offset, n])
        left -= n
    return out if left <= 0 else None


# ===================================================================== submission
def _io_valid_blocks(bdev, offset_blocks, num_blocks) -> bool:
    if offset_blocks < 0 or num_blocks < 0:
        return False
    # The seed's u64 overflow check: offset + num wrapping around.
    if offset_blocks + num_blocks >= U64:
        return False
    return offset_blocks + num_blocks <= bdev.blockcnt


def _bytes_to_blocks(bdev, offset_bytes, num_bytes):
    bs = bdev.blocklen
    return offset_bytes // bs, num_bytes // bs, (offset_bytes % bs) | (num_bytes % bs)


def _io_init(io, bdev, cb_arg, cb) -> None:
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.in_submit_request = False
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None


def _io_submit_now(io, bypass_qos=False) -> None:
    """The seed's _spdk_bdev_io_submit, on the thread owning io.ch.  ``bypass_qos``: the
    QoS thread already took this I/O's quota (a passthru admitted from another reactor)."""
    bdev = io.bdev
    ch = io.ch
    sr = ch.shared_resource
    io.submit_tsc = ch.clock()
    ch.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    flags = ch.flags
    if bypass_qos:
        flags &= ~BDEV_CH_QOS_ENABLED
    if flags == 0:
        if not sr.nomem_io:
            bdev._submit(ch.channel, io)
        else:
            ch.io_outstanding -= 1
            sr.io_outstanding -= 1
            sr.nomem_io.append(io)
    elif flags & BDEV_CH_RESET_IN_PROGRESS:
        io_complete(io, IO_STATUS_FAILED)
    elif flags & BDEV_CH_QOS_ENABLED:
        ch.io_outstanding -= 1
        sr.io_outstanding -= 1
        bdev.qos.queued.append(io)
        _qos.io_submit(ch)
    else:
        log.error("unknown bdev_ch flag %x found", flags)
        io_complete(io, IO_STATUS_FAILED)
    io.in_submit_request = False


def _io_submit(io) -> None:
    """spdk_bdev_io_submit: split if needed, funnel to the QoS thread if QoS is on."""
    bdev = io.bdev
    if bdev._may_split and _should_split(io):
        io.submit_tsc = io.ch.clock()    # the parent's (its children get their own)
        if io.type == IO_TYPE_READ and io.iovs[0] is None:
            n = io.num_blocks * bdev.blocklen
            if n > LARGE_BUF_MAX_SIZE:
                # No layer buffer that large: the parent fails, after the call (it never
                # reached a module, so no counter moves).
                log.error("read of %d bytes without a buffer exceeds %d", n, LARGE_BUF_MAX_SIZE)
                _fail_parent(io)
                return
            io_get_buf(io, _io_split, n)
        else:
            _io_split(None, io)
        return
    if io.ch.flags & BDEV_CH_QOS_ENABLED:
        _qos.route(io)
    else:
        _io_submit_now(io)


def _submit_reset(io) -> None:
    io.in_submit_request = True
    io.bdev._submit(io.ch.channel, io)
    io.in_submit_request = False


# -- the user's I/O calls (seed order of checks: EBADF, EINVAL, ENOMEM)
def read(desc, ch, buf, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return read_blocks(desc, ch, buf, ob, nb, cb, cb_arg)


def read_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    # The hot path (bdevperf, NBD): everything inlined -- validation (offset + num >
    # blockcnt also catches the seed's u64 wrap-around, Python ints do not wrap), the
    # per-thread cache, _io_init and, when the channel has no flag and the bdev cannot
    # split, the seed's _spdk_bdev_io_submit.  Any other case takes _io_submit.
    # write_blocks repeats this body on purpose (the per-I/O budget): do not factor it.
    bdev = desc.bdev
    if offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > bdev.blockcnt:
        return -EINVAL
    channel = ch.ctx
    mgmt = channel.mgmt
    cache = mgmt.cache
    if cache:
        io = cache.pop()
    else:
        io = _get_io(channel)
        if io is None:
            return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_READ
    iov = io._iov
    iov[0] = buf
    io.iovs = iov
    io.iovcnt = 1
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None
    if channel.flags or bdev._may_split:
        io.in_submit_request = False
        _io_submit(io)
        return 0
    sr = channel.shared_resource
    io.submit_tsc = channel.clock()
    if sr.nomem_io:
        io.in_submit_request = False
        sr.nomem_io.append(io)
        return 0
    channel.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    bdev._submit(channel.channel, io)
    io.in_submit_request = False
    return 0


def readv(desc, ch, iovs, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return readv_blocks(desc, ch, iovs, ob, nb, cb, cb_arg)


def readv_blocks(desc, ch, iovs, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_READ
    io.iovs = iovs
    io.iovcnt = len(iovs)
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def write(desc, ch, buf, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return write_blocks(desc, ch, buf, ob, nb, cb, cb_arg)


def write_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    # Inlined like read_blocks, repeating its body on purpose (the per-I/O budget).
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > bdev.blockcnt:
        return -EINVAL
    channel = ch.ctx
    cache = channel.mgmt.cache
    if cache:
        io = cache.pop()
    else:
        io = _get_io(channel)
        if io is None:
            return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_WRITE
    iov = io._iov
    iov[0] = buf
    io.iovs = iov
    io.iovcnt = 1
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None
    if channel.flags or bdev._may_split:
        io.in_submit_request = False
        _io_submit(io)
        return 0
    sr = channel.shared_resource
    io.submit_tsc = channel.clock()
    if sr.nomem_io:
        io.in_submit_request = False
        sr.nomem_io.append(io)
        return 0
    channel.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    bdev._submit(channel.channel, io)
    io.in_submit_request = False
    return 0


def writev(desc, ch, iovs, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return writev_blocks(desc, ch, iovs, ob, nb, cb, cb_arg)


def writev_blocks(desc, ch, iovs, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_WRITE
    io.iovs = iovs
    io.iovcnt = len(iovs)
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def write_zeroes(desc, ch, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return write_zeroes_blocks(desc, ch, ob, nb, cb, cb_arg)


def write_zeroes_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    """Write zeroes; emulated with writes of the zero buffer (1 MiB at a time) when the
    module lacks WRITE_ZEROES but has WRITE; -ENOTSUP when it has neither."""
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.type = IO_TYPE_WRITE_ZEROES
    io.ch = channel
    io.desc = desc
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    supported = bdev.fn_table.io_type_supported
    if supported(bdev.ctxt, IO_TYPE_WRITE_ZEROES):
        _io_submit(io)
        return 0
    if supported(bdev.ctxt, IO_TYPE_WRITE):
        io.submit_tsc = channel.clock()
        io.split_remaining_num_blocks = num_blocks
        io.split_current_offset_blocks = offset_blocks
        _write_zero_buffer_next(io)
        return 0
    free_io(io)
    return -ENOTSUP


def unmap(desc, ch, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return unmap_blocks(desc, ch, ob, nb, cb, cb_arg)


def unmap_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    if num_blocks == 0:
        log.error("can't unmap 0 bytes")
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_UNMAP
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 1
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def flush(desc, ch, offset, length, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, length)
    if rem:
        return -EINVAL
    return flush_blocks(desc, ch, ob, nb, cb, cb_arg)


def flush_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_FLUSH
    io.iovs = None
    io.iovcnt = 0
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def _nvme_passthru(desc, ch, io_type, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg) -> int:
    if not desc.write:
        # As the seed: the command is not parsed, so a read-only desc may not pass it.
        return -EBADF
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = io_type
    io.nvme_cmd = cmd
    io.nvme_buf = buf
    io.nvme_nbytes = nbytes
    io.md_buf = md_buf
    io.md_len = md_len
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = io.num_blocks = 0
    _io_init(io, desc.bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def nvme_admin_passthru(desc, ch, cmd, buf, nbytes, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_ADMIN, cmd, buf, nbytes, None, 0, cb, cb_arg)


def nvme_io_passthru(desc, ch, cmd, buf, nbytes, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_IO, cmd, buf, nbytes, None, 0, cb, cb_arg)


def nvme_io_passthru_md(desc, ch, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_IO_MD, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg)


# ===================================================================== split
def _should_split(io) -> bool:
    if io.type != IO_TYPE_READ and io.type != IO_TYPE_WRITE:
        # Only payload I/O splits: unmap and friends are large and payload-free, the
        # module splits those better (the seed's reasoning).
        return False
    bdev = io.bdev
    b = bdev.optimal_io_boundary
    if bdev.split_on_optimal_io_boundary and b:
        if io.offset_blocks // b != (io.offset_blocks + io.num_blocks - 1) // b:
            return True
    if bdev.max_rw_size and io.num_blocks > bdev.max_rw_size:
        return True
    if bdev.max_num_segments and io.iovcnt > bdev.max_num_segments:
        return True
    if bdev.max_segment_size and io.iovs[0] is not None:
        mss = bdev.max_segment_size
        for v in io.iovs:
            if len(v) > mss:
                return True
    return False


def _io_split(_ch, io) -> None:
    io.split_current_offset_blocks = io.offset_blocks
    io.split_remaining_num_blocks = io.num_blocks
    _io_split_with_payload(io)


def _queue_io_wait_with_cb(io, cb_fn) -> None:
    entry = io.waitq_entry
    if entry is None:
        entry = io.waitq_entry = IoWaitEntry()
    entry.bdev = io.bdev
    entry.cb_fn = cb_fn
    entry.cb_arg = io
    rc = queue_io_wait(io.bdev, io.ch.io_ch, entry)
    if rc:
        log.error("queue IO failed, rc=%d", rc)
        _fail_parent(io)


def _io_split_with_payload(io) -> None:
    bdev = io.bdev
    remaining = io.split_remaining_num_blocks
    current = io.split_current_offset_blocks
    blocklen = bdev.blocklen
    handled = (current - io.offset_blocks) * blocklen
    iovs = io.iovs
    pi = 0
    poff = 0
    while handled > 0:
        if handled >= len(iovs[pi]):
            handled -= len(iovs[pi])
            pi += 1
            continue
        poff += handled
        break
    n = remaining
    b = bdev.optimal_io_boundary
    if bdev.split_on_optimal_io_boundary and b:
        n = min(n, b - current % b)
    if bdev.max_rw_size:
        n = min(n, bdev.max_rw_size)
    max_iov = BDEV_IO_NUM_CHILD_IOV
    if bdev.max_num_segments:
        max_iov = min(max_iov, bdev.max_num_segments)
    mss = bdev.max_segment_size
    to_bytes = n * blocklen
    child = []
    while to_bytes > 0 and len(child) < max_iov and pi < len(iovs):
        v = iovs[pi]
        ln = min(to_bytes, len(v) - poff)
        if mss and ln > mss:
            ln = mss
        mv = v if type(v) is memoryview else memoryview(v)  # slices must alias, not copy
        child.append(mv[poff:poff + ln])
        to_bytes -= ln
        poff += ln
        if poff >= len(v):
            pi += 1
            poff = 0
    if to_bytes > 0:
        # Out of child iovec slots: the child must still be whole blocks.
        if to_bytes % blocklen:
            log.error("remaining %d is not a multiple of block size %d", to_bytes, blocklen)
            _fail_parent(io)
            return
        n -= to_bytes // blocklen
    io.child_iov = child
    if io.type == IO_TYPE_READ:
        rc = readv_blocks(io.desc, io.ch.io_ch, child, current, n, _io_split_done, io)
    else:
        rc = writev_blocks(io.desc, io.ch.io_ch, child, current, n, _io_split_done, io)
    if rc == 0:
        io.split_current_offset_blocks += n
        io.split_remaining_num_blocks -= n
    elif rc == -ENOMEM:
        _queue_io_wait_with_cb(io, _io_split_with_payload)
    else:
        _fail_parent(io)


def _fail_parent(io) -> None:
    """A split or emulated parent fails: its callback runs later, from the thread's
    deferred batch -- never inside the user's call (the first child is made there) and
    without touching io_outstanding (only children were counted)."""
    io.status = IO_STATUS_FAILED
    _defer(io)


def _io_split_done(child, success, parent) -> None:
    free_io(child)
    if not success:
        parent.status = IO_STATUS_FAILED
        parent.cb(parent, False, parent.caller_ctx)
        return
    if parent.split_remaining_num_blocks == 0:
        parent.status = IO_STATUS_SUCCESS
        parent.cb(parent, True, parent.caller_ctx)
        return
    _io_split_with_payload(parent)


# ===================================================================== write zeroes emulation
def _write_zero_buffer_next(io) -> None:
    bs = io.bdev.blocklen
    nbytes = min(bs * io.split_remaining_num_blocks, ZERO_BUFFER_SIZE)
    nblocks = nbytes // bs
    rc = write_blocks(io.desc, io.ch.io_ch, _ZERO_BUFFER[:nblocks * bs], io.split_current_offset_blocks,
                      nblocks, _write_zero_buffer_done, io)
    if rc == 0:
        io.split_remaining_num_blocks -= nblocks
        io.split_current_offset_blocks += nblocks
    elif rc == -ENOMEM:
        _queue_io_wait_with_cb(io, _write_zero_buffer_next)
    else:
        _fail_parent(io)


def _write_zero_buffer_done(child, success, parent) -> None:
    free_io(child)
    if not success:
        parent.status = IO_STATUS_FAILED
        parent.cb(parent, False, parent.caller_ctx)
        return
    if parent.split_remaining_num_blocks == 0:
        parent.status = IO_STATUS_SUCCESS
        parent.cb(parent, True, parent.caller_ctx)
        return
    _write_zero_buffer_next(parent)


# ===================================================================== reset
def reset(desc, ch, cb, cb_arg=None) -> int:
    """spdk_bdev_reset: freeze every channel of the bdev (all reactors), fail the I/O
    queued in them (nomem, buffer waits, QoS), submit the reset, unfreeze; ``cb`` after
    the unfreeze.  A reset while another is in progress waits for it."""
    bdev = desc.bdev
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_RESET
    io.ch_ref = None
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = io.num_blocks = 0
    _io_init(io, bdev, cb_arg, cb)
    io.submit_tsc = channel.clock()
    channel.queued_resets.append(io)
    _channel_start_reset(channel)
    return 0


_reset_tokens = itertools.count(1)


def _channel_start_reset(ch) -> None:
    """Start ``ch``'s first queued reset once the bdev has no reset in progress.

    The reset in progress is a bdev-wide fact owned by the main thread
    (docs/architecture.md).  On one reactor the main replica *is* this one: the seed's
    check of ``bdev.reset_in_progress``.  With several, the channel asks the main
    thread, which grants one reset of the bdev at a time across all reactors in the
    order asked (``_reset_ask``); the granted channel freezes every channel everywhere,
    submits, unfreezes and reports back (``_reset_finished``), and the next one runs."""
    if not ch.queued_resets:
        return
    bdev = ch.bdev
    r = rx.current_reactor()
    if r.n_reactors == 1:
        if bdev.reset_in_progress is None:
            _run_reset(ch)
        return
    if ch.reset_token:
        return          # asked already; the grant starts the first queued one
    token = _reset_tokens.__next__()   # (this module defines next(): SPDK's bdev iterator)
    ch.reset_token = token
    bdev.mgr.reset_askers[token] = ch
    r.send(r.default_tid(0), _reset_ask, (bdev.name, rx.get_thread().id, token))


def _run_reset(ch) -> None:
    bdev = ch.bdev
    io = ch.queued_resets[0]
    bdev.reset_in_progress = io
    # Hold a channel reference for the life of the reset, so the walks below never
    # find the device gone.
    io.ch_ref = rx.get_io_channel(bdev)
    _bcast.for_each_channel(bdev, _reset_freeze_channel, {"bdev": bdev.name},
                            _ResetCpl(ch).freeze_done)


@wire.remote("bdev.reset_ask")
def _reset_ask(name, tid, token) -> None:
    """Main thread: a channel (thread ``tid``) asks to run its reset of ``name``."""
    m = _mgr(False)
    b = m.names.get(name) if m is not None else None
    if b is None:
        rx.current_reactor().send(tid, _reset_grant, (token, False))
        return
    b.reset_waiting.append((tid, token))
    if b.reset_holder is None:
        _reset_grant_next(b)


def _reset_grant_next(b) -> None:
    r = rx.current_reactor()
    while b.reset_waiting:
        tid, token = b.reset_waiting.popleft()
        if (tid >> TID_SHIFT) in r.dead:
            continue
        b.reset_holder = (tid, token)
        r.send(tid, _reset_grant, (token, True))
        return


@wire.remote("bdev.reset_grant")
def _reset_grant(token, granted) -> None:
    """On the asking channel's thread: the main thread's answer."""
    m = _mgr(False)
    ch = m.reset_askers.pop(token, None) if m is not None else None
    if ch is None:
        return
    ch.reset_token = 0
    name = ch.bdev.name
    if not granted:               # the bdev is leaving the main replica
        _abort_queued_io(ch.queued_resets, ch)
        return
    if not ch.queued_resets:      # aborted meanwhile (its channel went away)
        _send_reset_finished(name, token)
        return
    ch.bdev.reset_token = token
    _run_reset(ch)


def _send_reset_finished(name, token) -> None:
    r = rx.current_reactor()
    r.send(r.default_tid(0), _reset_finished, (name, token))


@wire.remote("bdev.reset_finished")
def _reset_finished(name, token) -> None:
    """Main thread: the granted reset is done (or was not needed); grant the next."""
    m = _mgr(False)
    b = m.names.get(name) if m is not None else None
    if b is None or b.reset_holder is None or b.reset_holder[1] != token:
        return
    b.reset_holder = None
    _reset_grant_next(b)


def _resets_on_reactor_death(r, m, index) -> None:
    """Main replica: reactor ``index`` died.  Its queued asks go; a reset it held leaves
    channels frozen on the survivors, so the main thread unfreezes them and grants the
    next reset."""
    for b in m.bdevs:
        b.reset_waiting = deque(w for w in b.reset_waiting if (w[0] >> TID_SHIFT) != index)
        holder = b.reset_holder
        if holder is not None and (holder[0] >> TID_SHIFT) == index:
            log.error("bdev %s: reactor %d died holding its reset; unfreezing", b.name, index)
            rx.send_msg(r.default_thread, _unfreeze_after_death, b, holder[1])


def _unfreeze_after_death(b, token) -> None:
    def done(it, status, b=b, token=token):
        _reset_finished(b.name, token)
    _bcast.for_each_channel(b, _unfreeze_channel, {"bdev": b.name}, done)


class _ResetCpl:
    __slots__ = ("ch", "io")

    def __init__(self, ch, io=None):
        self.ch = ch
        self.io = io

    def freeze_done(self, it, status) -> None:
        ch = self.ch
        io = ch.queued_resets.popleft()
        _submit_reset(io)

    def unfreeze_done(self, it, status) -> None:
        io = self.io
        ch = io.ch
        if io.ch_ref is not None:
            rx.put_io_channel(io.ch_ref)
            io.ch_ref = None
        token = ch.bdev.reset_token
        ch.bdev.reset_token = 0
        _io_complete(io)
        if token:
            _send_reset_finished(ch.bdev.name, token)
            _channel_start_reset(ch)      # this channel's next queued reset asks again


@wire.remote("bdev.reset_freeze")
def _reset_freeze_channel(it) -> None:
    channel = it.get_channel().ctx
    bdev = channel.bdev
    channel.flags |= BDEV_CH_RESET_IN_PROGRESS
    mgmt = channel.mgmt
    tmp = deque()
    if channel.flags & BDEV_CH_QOS_ENABLED and bdev.qos is not None and bdev.qos.ch is channel:
        tmp, bdev.qos.queued = bdev.qos.queued, deque()
    _abort_queued_io(channel.shared_resource.nomem_io, channel)
    _abort_buf_io(mgmt.need_buf_small, channel)
    _abort_buf_io(mgmt.need_buf_large, channel)
    _qos.abort_pending(bdev, channel)
    _abort_queued_io(tmp, channel)
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.reset_unfreeze")
def _unfreeze_channel(it) -> None:
    ch = it.get_channel().ctx
    ch.flags &= ~BDEV_CH_RESET_IN_PROGRESS
    if ch.queued_resets and ch.thread.reactor.n_reactors == 1:
        _channel_start_reset(ch)          # the seed; with several reactors each asked main
    rx.for_each_channel_continue(it, 0)


# ===================================================================== completion
def _run_deferred(mgmt) -> None:
    batch = mgmt.deferred
    mgmt.deferred = []
    mgmt.deferred_scheduled = False
    for io in batch:
        # Each completion is isolated: a callback that raises must not lose the rest of
        # the batch (try costs nothing in 3.11 when nothing raises).
        try:
            _io_complete(io)
        except Exception:
            callback_raised(io)


def callback_raised(io) -> None:
    """Log a completion callback that raised (from a batch that goes on with the rest)."""
    bdev = getattr(io, "bdev", None)
    log.exception("completion callback of %s I/O on bdev %s raised; continuing the batch",
                  IO_TYPE_NAMES.get(getattr(io, "type", None), "?"),  # noqa: F405
                  getattr(bdev, "name", "?"))


def _defer(io) -> None:
    """Complete ``io`` from its thread's next deferred batch (one message per thread
    carries every completion deferred until then)."""
    mgmt = io.ch.mgmt
    mgmt.deferred.append(io)
    if not mgmt.deferred_scheduled:
        mgmt.deferred_scheduled = True
        rx.send_msg(mgmt.thread, _run_deferred, mgmt)


def _io_complete(io) -> None:
    if io.in_submit_request or io.io_submit_ch is not None:
        # Back to the submitting thread (QoS), and never inside submit: a callback that
        # submits again must not recurse.
        if io.io_submit_ch is not None:
            io.ch = io.io_submit_ch
            io.io_submit_ch = None
        mgmt = io.ch.mgmt      # _defer(io), inlined: malloc completes every I/O in submit
        mgmt.deferred.append(io)
        if not mgmt.deferred_scheduled:
            mgmt.deferred_scheduled = True
            rx.send_msg(mgmt.thread, _run_deferred, mgmt)
        return
    ch = io.ch
    if io.status == IO_STATUS_SUCCESS and not io.proxy:
        t = io.type
        if t == IO_TYPE_READ:
            st = ch.stat
            st.bytes_read += io.num_blocks * io.bdev.blocklen
            st.num_read_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.read_latency_ticks += lat
            if ch.histogram is not None:
                _stats.histogram_add(ch, lat)
        elif t == IO_TYPE_WRITE:
            st = ch.stat
            st.bytes_written += io.num_blocks * io.bdev.blocklen
            st.num_write_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.write_latency_ticks += lat
            if ch.histogram is not None:
                _stats.histogram_add(ch, lat)
        elif t == IO_TYPE_UNMAP:
            st = ch.stat
            st.bytes_unmapped += io.num_blocks * io.bdev.blocklen
            st.num_unmap_ops += 1
            st.unmap_latency_ticks += ch.clock() - io.submit_tsc
    io.cb(io, io.status == IO_STATUS_SUCCESS, io.caller_ctx)


def _ch_retry_io(ch) -> None:
    _sr_retry_io(ch.shared_resource)


def _sr_retry_io(sr) -> None:
    """The seed's _spdk_bdev_ch_retry_io, on the shared resource (its queue may hold I/O
    of several bdevs sharing the module channel)."""
    if sr.io_outstanding > sr.nomem_threshold:
        # Let more I/O complete first: some modules cannot take a new I/O inside a
        # completion, and a big I/O may need several small ones to finish.
        return
    q = sr.nomem_io
    while q:
        io = q.popleft()
        io.ch.io_outstanding += 1
        sr.io_outstanding += 1
        io.status = IO_STATUS_PENDING
        io.bdev._submit(io.ch.channel, io)
        if io.status == IO_STATUS_NOMEM:
            break


def _nomem_poller(sr) -> int:
    """Later SPDK's bdev_no_mem_poller: nothing was outstanding when an I/O hit NOMEM, so
    no completion will retry the queue; retry it from here.  One-shot: re-registered only
    if the queue is still parked with nothing outstanding."""
    rx.poller_unregister(sr.nomem_poller)
    sr.nomem_poller = None
    if sr.nomem_io:
        _sr_retry_io(sr)
    # a retried I/O that hit NOMEM again may have registered a new poller already
    if sr.nomem_io and sr.io_outstanding == 0 and sr.nomem_poller is None:
        sr.nomem_poller = rx.poller_register(_nomem_poller, sr, NOMEM_RETRY_PERIOD_US,
                                             name="bdev_nomem_retry")
    return rx.POLLER_BUSY


def io_complete(io, status) -> None:
    """spdk_bdev_io_complete (module side, on the I/O's thread).  Also ``BdevIo.complete``.

    The hot path: the common case (a read or write completed outside submit, on its own
    thread) is inlined down to the stats and the user's callback; the rest goes through
    _io_complete."""
    io.status = status
    t = io.type
    if t == IO_TYPE_RESET:
        bdev = io.bdev
        if status == IO_STATUS_NOMEM:
            log.error("NOMEM returned for reset")
        if io is bdev.reset_in_progress:
            bdev.reset_in_progress = None
            _bcast.for_each_channel(bdev, _unfreeze_channel, {"bdev": bdev.name}, _ResetCpl(io.ch, io).unfreeze_done)
            return
        _io_complete(io)
        return
    ch = io.ch
    sr = ch.shared_resource
    ch.io_outstanding -= 1
    sr.io_outstanding -= 1
    if status == IO_STATUS_NOMEM:
        sr.nomem_io.appendleft(io)
        # Retry after NOMEM_THRESHOLD_COUNT completions, or half the queue for
        # shallow queues.
        sr.nomem_threshold = max(sr.io_outstanding // 2, sr.io_outstanding - NOMEM_THRESHOLD_COUNT)
        if sr.io_outstanding == 0 and sr.nomem_poller is None:
            # No completion will come to retry it (e.g. queue depth 1): later SPDK's poller.
            sr.nomem_poller = rx.poller_register(_nomem_poller, sr, NOMEM_RETRY_PERIOD_US,
                                                 name="bdev_nomem_retry")
        return
    if sr.nomem_io:
        _sr_retry_io(sr)
    if io.in_submit_request or io.io_submit_ch is not None or io.proxy:
        _io_complete(io)
        return
    if status == IO_STATUS_SUCCESS:
        if t == IO_TYPE_READ:
            st = ch.stat
            st.bytes_read += io.num_blocks * io.bdev.blocklen
            st.num_read_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.read_latency_ticks += lat
            h = ch.histogram
            if h is not None:
                h[lat.bit_length() if lat < U64 else 64] += 1
        elif t == IO_TYPE_WRITE:
            st = ch.stat
            st.bytes_written += io.num_blocks * io.bdev.blocklen
            st.num_write_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.write_latency_ticks += lat
            h = ch.histogram
            if h is not None:
                h[lat.bit_length() if lat < U64 else 64] += 1
        elif t == IO_TYPE_UNMAP:
            st = ch.stat
            st.bytes_unmapped += io.num_blocks * io.bdev.blocklen
            st.num_unmap_ops += 1
            st.unmap_latency_ticks += ch.clock() - io.submit_tsc
        io.cb(io, True, io.caller_ctx)
    else:
        io.cb(io, False, io.caller_ctx)


def io_complete_scsi_status(io, sc, sk, asc, ascq) -> None:
    if sc == SCSI_STATUS_GOOD:
        io.status = IO_STATUS_SUCCESS
    else:
        io.status = IO_STATUS_SCSI_ERROR
        io.scsi_sc, io.scsi_sk, io.scsi_asc, io.scsi_ascq = sc, sk, asc, ascq
    io_complete(io, io.status)


def io_get_scsi_status(io):
    """(sc, sk, asc, ascq) for any completed I/O (NVMe errors translated)."""
    s = io.status
    if s == IO_STATUS_SUCCESS:
        return (SCSI_STATUS_GOOD, SCSI_SENSE_NO_SENSE, SCSI_ASC_NO_ADDITIONAL_SENSE,
                SCSI_ASCQ_CAUSE_NOT_REPORTABLE)
    if s == IO_STATUS_NVME_ERROR:
        from ._scsi_nvme import translate
        return translate(io.nvme_sct, io.nvme_sc)
    if s == IO_STATUS_SCSI_ERROR:
        return (io.scsi_sc, io.scsi_sk, io.scsi_asc, io.scsi_ascq)
    return (SCSI_STATUS_CHECK_CONDITION, SCSI_SENSE_ABORTED_COMMAND, SCSI_ASC_NO_ADDITIONAL_SENSE,
            SCSI_ASCQ_CAUSE_NOT_REPORTABLE)


def io_complete_nvme_status(io, sct, sc) -> None:
    if sct == NVME_SCT_GENERIC and sc == NVME_SC_SUCCESS:
        io.status = IO_STATUS_SUCCESS
    else:
        io.nvme_sct = sct
        io.nvme_sc = sc
        io.status = IO_STATUS_NVME_ERROR
    io_complete(io, io.status)


def io_get_nvme_status(io):
    """(sct, sc) for any completed I/O."""
    if io.status == IO_STATUS_NVME_ERROR:
        return io.nvme_sct, io.nvme_sc
    if io.status == IO_STATUS_SUCCESS:
        return NVME_SCT_GENERIC, NVME_SC_SUCCESS
    return NVME_SCT_GENERIC, NVME_SC_INTERNAL_DEVICE_ERROR


def io_get_iovec(io):
    if io is None:
        return None, 0
    if io.type in (IO_TYPE_READ, IO_TYPE_WRITE):
        return io.iovs, io.iovcnt
    return None, 0


def io_get_thread(io):
    return io.ch.thread


def io_get_submit_tsc(io) -> int:
    """spdk_bdev_io_get_submit_tsc: when the layer accepted this I/O for submission, in
    ns of the reactor's clock (``reactor.now_ns()``; the mock clock in deterministic
    mode) -- the timestamp the layer's own latency stats start from, read once per I/O
    anyway.  A completion callback can take ``now_ns() - io_get_submit_tsc(io)`` as the
    I/O's latency without reading the clock at submit time too.  It includes time
    queued under QoS or on the NOMEM queue; for a split I/O or emulated write zeroes it
    is the parent's submission.  Valid from submission until free_io."""
    return io.submit_tsc


# The module's completion call is the hot path: bind it straight to io_complete (no extra
# method frame).
BdevIo.complete = io_complete
