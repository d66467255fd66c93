"""The bdev manager and its options: Manager (one reactor's replica of the seed's
g_bdev_mgr), ``_mgr``/``get_manager`` (this reactor's replica), get_opts/set_opts and the
default options the next initialize uses, ``pool_share`` (a reactor's share of an
app-wide pool), and the module list (static, like SPDK's constructors).

Where the state lives (docs/architecture.md, Ownership): every reactor holds a *replica*
of the bdev manager in ``current_reactor().locals["bdev"]``: its own Bdev objects (each
with the module's per-reactor context), descriptors opened on its threads, bdev_io pool,
buffer pool slice and per-thread management channels.  The main reactor decides
(register, unregister, examine, QoS thread choice) and broadcasts; each replica applies.
Nothing in the bdev layer is a module global except constants, the (static) module list
and the stage entries (_stages.py), because the deterministic harness runs several
reactors in one process.
"""
from __future__ import annotations

import logging

import reactor as rx

from ._const import (BDEV_IO_CACHE_SIZE, BDEV_IO_POOL_SIZE, BUF_LARGE_POOL_SIZE,
                     BUF_SMALL_POOL_SIZE, EINVAL)

log = logging.getLogger("ringstack.bdev")


def pool_share(total: int, n_reactors: int, index: int) -> int:
    """Reactor ``index``'s share of a global count (bdev_io or buffer pool: the seed's
    pools are global): ``total // n``, plus one for the first ``total % n`` reactors."""
    return total // n_reactors + (1 if index < total % n_reactors else 0)


# Default options (spdk_bdev_opts) used by the next initialize().
_default_opts = {"bdev_io_pool_size": BDEV_IO_POOL_SIZE, "bdev_io_cache_size": BDEV_IO_CACHE_SIZE,
                 "small_buf_pool_size": BUF_SMALL_POOL_SIZE,
                 "large_buf_pool_size": BUF_LARGE_POOL_SIZE}


# The module list (the seed's g_bdev_mgr.bdev_modules): static, like SPDK's constructors.
# Per-reactor module state (action counts) lives in the manager.
_modules: list = []


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
