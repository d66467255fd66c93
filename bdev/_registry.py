"""The registry and descriptors: first/next/leaf iteration, get_by_name, aliases,
register/unregister and their replication handlers, registry watchers,
notify_blockcnt_change, open/open_ext/close, module claims (and their replica handler),
and the getters.

The main thread (reactor 0's default thread) owns the registry (docs/architecture.md,
Ownership): changes made on any other thread hop there first, and reach every other
replica by the ordered broadcast.  QoS and statistics are called through their stages
(_stages.py): register reads the QoS configuration, the first open and the last close
report to the QoS stage, close stops the queue-depth sampling.
"""
from __future__ import annotations

import logging

import reactor as rx
from reactor import wire

from . import _bcast
from ._channel import _channel_create, _channel_destroy
from ._const import (EBUSY, EEXIST, EINVAL, ENODEV, ENOENT, ENOTSUP, EPERM, EVENT_REMOVE,
                     EVENT_RESIZE, IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, STATUS_READY,
                     STATUS_REMOVING)
from ._manager import _mgr, _modules, module_list_find
from ._stages import qos_stage, stats_stage
from ._types import U64, Desc

log = logging.getLogger("ringstack.bdev")


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
    return _alias_change(m, bdev, alias, True)


def alias_del(bdev, alias) -> int:
    """spdk_bdev_alias_del: -ENOENT if ``alias`` is not one of the bdev's.  Replicated
    as alias_add."""
    if alias not in bdev.aliases:
        log.info("alias %s does not exist", alias)
        return -ENOENT
    return _alias_change(_mgr(), bdev, alias, False)


def _alias_change(m, bdev, alias, add) -> int:
    """The checked alias change: made by the main thread (which owns the registry), then
    broadcast; from any other thread it hops there first (the answer is 0 already)."""
    if not _bcast.on_main_thread() and rx.get_thread() is not None:
        _bcast.to_main(_alias_on_main, [bdev.name, alias, add], None)
        return 0
    _alias_apply(m, bdev, alias, add)
    if m.reactor.n_reactors > 1 and rx.get_thread() is not None:
        _bcast.broadcast(_alias_replica, [bdev.name, alias, add], None, include_self=False)
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
    qos_stage.config_from_conf(bdev, m.qos_conf)
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
    qos_stage.on_fini(bdev)
    if bdev.qd_poller is not None:
        stats_stage.stop_qd(bdev)
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
        qos_stage.report_open_descs(bdev, True)
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
        qos_stage.report_open_descs(bdev, False)
    # The seed stops queue-depth sampling on every close.  Sampling started on the main
    # replica (where RPCs run) is stopped there too when the close is on another reactor.
    stats_stage.set_qd_sampling_period(bdev, 0)
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
        stats_stage.set_qd_sampling_period(b, 0)


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
