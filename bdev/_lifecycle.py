"""The bdev layer's life: initialize (every reactor gets its replica, then modules
initialise), the replicas' init and fini, module init/examine/finish done,
wait_for_examine, finish (unregister every bdev, module_fini, drop the replicas),
subsystem_config_json, and the hook a reactor's death runs.  The top room of the layer's
core: it drives the others (the registry, the bdev_io pool's management channel, QoS,
the reset arbitration) and nothing below imports it.

Threads: a function documented "any thread" may run on any thread of the replica's
reactor; initialize and finish run on the main thread.
"""
from __future__ import annotations

import itertools
import logging
import os

import reactor as rx
from reactor import wire

from . import _bcast, _qos
from ._bdev_io import _mgmt_channel_create, _mgmt_channel_destroy
from ._const import (BDEV_ARENA_ID_SHIFT, BDEV_ARENA_ID_TAG, BUF_LARGE_CACHE_SIZE,
                     BUF_SMALL_CACHE_SIZE)
from ._manager import Manager, _default_opts, _mgr, _modules, get_opts, pool_share, set_opts
from ._registry import _remove_from_registry, bdev_unregister
from ._reset import _resets_on_reactor_death

log = logging.getLogger("ringstack.bdev")


_arena_seq = itertools.count(1)


def _new_arena_id() -> int:
    """An arena id no other arena can have (see BDEV_ARENA_ID_TAG in _const.py)."""
    return ((BDEV_ARENA_ID_TAG << BDEV_ARENA_ID_SHIFT) | ((os.getpid() & 0xFFFFFFFF) << 16)
            | (_arena_seq.__next__() & 0xFFFF))


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
    """docs/architecture.md, One fan-out: reactor ``index`` died.  On this reactor,
    everything the bdev layer handed to it ends with an error instead of waiting forever:
    replicated operations (broadcasts, walks) waiting for its answer, I/O funnelled to a
    QoS thread there (and bounce-buffer waits for it); a QoS thread it hosted is
    re-chosen."""
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
    # SPDK's parameters only (the buffer pools are the iobuf subsystem's, bdev/iobuf.py)
    out = [{"method": "bdev_set_options",
            "params": {"bdev_io_pool_size": m.opts["bdev_io_pool_size"],
                       "bdev_io_cache_size": m.opts["bdev_io_cache_size"],
                       "bdev_auto_examine": True,
                       "iobuf_small_cache_size": BUF_SMALL_CACHE_SIZE,
                       "iobuf_large_cache_size": BUF_LARGE_CACHE_SIZE}}]
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
    # Last, as SPDK writes it: a load waits here until every examine has finished.
    out.append({"method": "bdev_wait_for_examine"})
    return out
