"""io_devices, io_channels and the walks over threads (SPDK's ``lib/thread``, the shared half).

An io_device is registered on a reactor with create/destroy callbacks for its per-thread
channel context.  Each reactor keeps its own registry: a device's channels live on the
threads of the reactor that holds them.  A device registered under a *string name* with
callbacks that are registered handlers (``@reactor.remote``) is replicated to every reactor
before the registering call completes; any other device is local to its reactor (the bdev
layer replicates its bdevs itself, see docs/architecture.md "Ownership").

Walks: ``for_each_channel`` visits, one after the other, each thread holding a channel for
a device, calling ``fn(iter)`` on that thread; ``fn`` calls
``for_each_channel_continue(iter, status)`` (possibly later).  Across reactors the walk hops
from reactor to reactor (this reactor first, then the next index, wrapping); what crosses is
the handler's name and ``iter.ctx`` *by value*, so what ``fn`` changed on one reactor is what
the next reactor and the completion see.  ``cpl(iter, status)`` runs on the originating
thread.  ``for_each_thread`` and ``for_each_reactor`` use the same machinery.

A reactor's death never strands a walk: walks that have not reached it skip it, and a
walk that had left its origin towards it (or towards reactors after it) completes at once
on its origin thread with ``-EIO`` (``for_each_thread``'s ``cpl(ctx)`` simply runs); its
own completion, should it still come, is dropped.  The origin does not know where such a
walk is, so this is conservative: a walk already past the dead reactor fails too.  A walk
still visiting its origin reactor is not touched (it will skip the dead one).
"""
from __future__ import annotations

import logging

from . import reactor as _r
from . import thread as _t
from . import wire
from .reactor import current_reactor
from .thread import ThreadError

log = logging.getLogger("ringstack.io_channel")

EIO = 5
ENODEV = 19
EINVAL = 22


class IoDevice:
    __slots__ = ("key", "name", "create_cb", "destroy_cb", "refcnt", "for_each_count",
                 "unregistered", "unregister_cb", "unregister_thread")

    def __init__(self, key, name, create_cb, destroy_cb):
        self.key = key
        self.name = name
        self.create_cb = create_cb
        self.destroy_cb = destroy_cb
        self.refcnt = 0               # live channels on this reactor
        self.for_each_count = 0       # walks currently visiting this reactor
        self.unregistered = False
        self.unregister_cb = None
        self.unregister_thread = None

    def __repr__(self):
        return f"<IoDevice {self.name} channels={self.refcnt}>"


class IoChannel:
    """A thread's channel to an io_device; ``ctx`` is what the device's create_cb returned."""

    __slots__ = ("dev", "thread", "ref", "destroy_ref", "ctx")

    def __init__(self, dev, thread):
        self.dev = dev
        self.thread = thread
        self.ref = 1
        self.destroy_ref = 0
        self.ctx = None

    @property
    def io_device(self):
        return self.dev.key

    def __repr__(self):
        return f"<IoChannel {self.dev.name} on {self.thread.name} ref={self.ref}>"


def _name_of(io_device, name):
    if name:
        return name
    if isinstance(io_device, str):
        return io_device
    return f"{type(io_device).__name__}@{id(io_device):x}"


# ------------------------------------------------------------------ registration
def io_device_register(io_device, create_cb, destroy_cb, name: str | None = None, cb=None) -> None:
    """Register ``io_device`` (any hashable object; its channels' contexts come from
    ``create_cb(io_device) -> ctx`` and go to ``destroy_cb(io_device, ctx)``).

    Replicated when ``io_device`` is a string and both callbacks are ``@remote``
    handlers: every reactor registers it, then ``cb()`` runs on the calling thread.
    Otherwise the device is local to this reactor and ``cb()``, if given, runs as a
    message on the calling thread."""
    r = current_reactor()
    replicated = (r.n_reactors > 1 and isinstance(io_device, str)
                  and wire.is_remote(create_cb) and wire.is_remote(destroy_cb))
    if not replicated:
        _register_local(r, io_device, create_cb, destroy_cb, name)
        if cb is not None:
            send_msg(_t._require_thread("io_device_register"), cb)
        return
    if io_device in r.io_devices:
        raise ValueError(f"io_device {io_device!r} is already registered")
    ctx = [io_device, wire.name_of(create_cb), wire.name_of(destroy_cb)]
    for_each_reactor(_register_replica, ctx, lambda it, status: cb and cb())


@wire.remote("reactor.io_device_register")
def _register_replica(it):
    name, create_name, destroy_name = it.ctx
    r = current_reactor()
    if name not in r.io_devices:
        _register_local(r, name, wire.lookup(create_name), wire.lookup(destroy_name), name)
    for_each_channel_continue(it, 0)


def _register_local(r, io_device, create_cb, destroy_cb, name):
    if io_device in r.io_devices:
        raise ValueError(f"io_device {_name_of(io_device, name)!r} is already registered")
    dev = IoDevice(io_device, _name_of(io_device, name), create_cb, destroy_cb)
    r.io_devices[io_device] = dev
    r.io_devices_by_name[dev.name] = dev


def io_device_unregister(io_device, unregister_cb=None) -> None:
    """Unregister ``io_device``.  No new channel can be had from the moment of the call;
    ``unregister_cb()`` runs on the calling thread after the last channel is destroyed and
    every walk visiting the device has moved on.  A replicated device is unregistered on
    every reactor before ``unregister_cb`` runs."""
    r = current_reactor()
    dev = r.io_devices.get(io_device)
    if dev is None:
        raise ValueError(f"io_device {io_device!r} is not registered")
    replicated = r.n_reactors > 1 and isinstance(io_device, str) and wire.is_remote(dev.create_cb)
    if replicated:
        for_each_reactor(_unregister_replica, io_device,
                         lambda it, status: unregister_cb and unregister_cb())
        return
    _unregister_local(r, dev, unregister_cb)


@wire.remote("reactor.io_device_unregister")
def _unregister_replica(it):
    r = current_reactor()
    dev = r.io_devices.get(it.ctx)
    if dev is None:
        for_each_channel_continue(it, 0)
        return
    _unregister_local(r, dev, lambda: for_each_channel_continue(it, 0))


def _unregister_local(r, dev, cb) -> None:
    del r.io_devices[dev.key]
    r.io_devices_by_name.pop(dev.name, None)
    dev.unregistered = True
    dev.unregister_cb = cb
    dev.unregister_thread = _t._current
    _maybe_finish_unregister(dev)


def _maybe_finish_unregister(dev) -> None:
    if not dev.unregistered or dev.refcnt or dev.for_each_count:
        return
    cb, dev.unregister_cb = dev.unregister_cb, None
    dev.unregistered = False  # finished: never again
    if cb is not None:
        target = dev.unregister_thread or _t._current
        if send_msg(target, cb) != 0:
            # The unregistering thread exited while another thread still held a channel:
            # the completion goes to its reactor's default thread (which lives as long as
            # the reactor) instead of being lost -- a layer waiting on it would hang.
            r = target.reactor if target is not None else current_reactor()
            log.debug("io_device %s: unregistering thread %s exited; completing on %s",
                      dev.name, getattr(target, "name", None), r.default_thread.name)
            send_msg(r.default_thread, cb)


def io_device_is_registered(io_device) -> bool:
    return io_device in current_reactor().io_devices


# ---------------------------------------------------------------------- channels
def get_io_channel(io_device):
    """This thread's channel to ``io_device``: re-referenced if the thread has one (even
    one whose deferred release is pending), else created with the device's create_cb.
    Returns None if the device is unknown here or create_cb fails."""
    t = _t._require_thread("get_io_channel")
    ch = t.io_channels.get(io_device)
    if ch is not None:
        ch.ref += 1
        return ch
    dev = t.reactor.io_devices.get(io_device)
    if dev is None:
        log.error("get_io_channel: io_device %r not registered on reactor %d", io_device, t.reactor.index)
        return None
    ch = IoChannel(dev, t)
    t.io_channels[io_device] = ch
    dev.refcnt += 1
    try:
        ch.ctx = dev.create_cb(io_device)
    except Exception:
        log.exception("create_cb of io_device %s failed", dev.name)
        del t.io_channels[io_device]
        dev.refcnt -= 1
        return None
    return ch


def put_io_channel(ch: IoChannel) -> None:
    """Drop a reference.  The last one destroys the channel *later*, from a message on the
    owning thread, so a get_io_channel in between simply revives it (SPDK's behaviour)."""
    t = _t._current
    if t is not ch.thread:
        raise ThreadError(f"put_io_channel of {ch} from thread {t.name if t else None}")
    if ch.ref <= 0:
        raise ThreadError(f"put_io_channel of {ch}: reference count already 0")
    ch.ref -= 1
    if ch.ref == 0:
        ch.destroy_ref += 1
        send_msg(t, _put_io_channel_deferred, ch)


def _put_io_channel_deferred(ch: IoChannel) -> None:
    ch.destroy_ref -= 1
    if ch.ref > 0 or ch.destroy_ref > 0:
        return  # re-acquired, or another release is still queued behind us
    t = ch.thread
    dev = ch.dev
    if t.io_channels.get(dev.key) is ch:
        del t.io_channels[dev.key]
    try:
        dev.destroy_cb(dev.key, ch.ctx)
    except Exception:
        log.exception("destroy_cb of io_device %s failed", dev.name)
    dev.refcnt -= 1
    _maybe_finish_unregister(dev)


def io_channel_get_thread(ch: IoChannel):
    return ch.thread


# ------------------------------------------------------------------------- walks
_CHANNEL, _THREAD, _REACTOR = 0, 1, 2


class ChannelIter:
    """SPDK's spdk_io_channel_iter, also used by for_each_thread/for_each_reactor."""

    __slots__ = ("kind", "io_device", "dev", "dev_name", "ctx", "fn", "walk_id", "origin_tid",
                 "remaining", "route", "threads", "pos", "ch", "status")

    def get_channel(self):
        return self.ch

    def get_ctx(self):
        return self.ctx

    def get_io_device(self):
        return self.io_device


def send_msg(thread, fn, *args) -> int:
    """Run ``fn(*args)`` on ``thread`` later (never before this returns).  FIFO per
    sender and receiver.  ``fn`` must be ``@remote`` when the thread is on another reactor.
    Returns 0, or -EIO when the thread has exited."""
    cur = _t._current
    r = cur.reactor if cur is not None else current_reactor()
    if thread.__class__ is _Thread and thread.reactor is r and thread.state is not _EXITED:
        thread._msgs.append((fn, args))     # the hot local path, inlined
        r.pending_local = True
        return 0
    return r.send(thread, fn, args)


_Thread = _t.Thread
_EXITED = _t.EXITED


def _start_walk(kind, io_device, fn, ctx, cpl, what):
    t = _t._require_thread(what)
    r = t.reactor
    if r.n_reactors > 1 and not wire.is_remote(fn):
        raise TypeError(f"{what}: {getattr(fn, '__qualname__', fn)!r} must be registered with "
                        "@reactor.remote(name) to visit other reactors")
    it = ChannelIter()
    it.kind = kind
    it.io_device = io_device
    it.dev = None
    it.dev_name = None
    it.ctx = ctx
    it.fn = fn
    it.walk_id = next(r._walk_seq)
    it.origin_tid = t.id
    it.status = 0
    it.ch = None
    n = r.n_reactors
    it.remaining = [(r.index + k) % n for k in range(1, n)]
    it.route = None       # set on the origin's iter when the walk leaves the origin
    if kind == _CHANNEL:
        dev = r.io_devices.get(io_device)
        if dev is None:
            # SPDK delivers even this failure as a message, never synchronously.
            send_msg(t, cpl, it, -ENODEV)
            return
        it.dev = dev
        it.dev_name = dev.name
    r.walks[it.walk_id] = (cpl, it)
    _enter_reactor(r, it)
    send_msg(t, _walk_advance, it)


def _enter_reactor(r, it) -> None:
    it.pos = -1
    if it.kind == _REACTOR:
        it.threads = [r.default_thread]
    else:
        it.threads = list(r.threads)
    if it.dev is not None:
        it.dev.for_each_count += 1


def _leave_reactor(it) -> None:
    dev = it.dev
    if dev is not None:
        dev.for_each_count -= 1
        _maybe_finish_unregister(dev)


def _walk_advance(it) -> None:
    """Find the next thread to visit on this reactor; else hop or finish."""
    threads = it.threads
    pos = it.pos + 1
    if it.kind == _CHANNEL:
        key = it.dev.key if it.dev is not None else None
        while pos < len(threads) and (key is None or key not in threads[pos].io_channels):
            pos += 1
    if pos < len(threads):
        it.pos = pos
        send_msg(threads[pos], _walk_call, it)
        return
    _leave_reactor(it)
    r = current_reactor()
    while it.remaining and it.remaining[0] in r.dead:   # a dead reactor is skipped
        it.remaining = it.remaining[1:]
    if it.remaining:
        dest = it.remaining[0]
        it.route = tuple(it.remaining)      # where it may be while away (see the docstring)
        try:
            r.send(r.default_tid(dest), _walk_hop,
                   (it.walk_id, it.origin_tid, it.kind, it.dev_name, wire.name_of(it.fn),
                    it.ctx, it.remaining[1:]))
        except (TypeError, ValueError) as exc:
            log.error("walk %s cannot leave reactor %d: %s", wire.name_of(it.fn), r.index, exc)
            _walk_finish(it, -EINVAL)
        return
    _walk_finish(it, 0)


def _walk_call(it) -> None:
    t = _t._current
    if it.kind == _CHANNEL:
        ch = t.io_channels.get(it.dev.key) if it.dev is not None else None
        if ch is None:  # released since the walk found it: skip, as SPDK does
            for_each_channel_continue(it, 0)
            return
        it.ch = ch
    it.fn(it)


def for_each_channel_continue(it, status: int) -> None:
    """Called by the walk's ``fn`` when done with this thread.  A non-zero status ends the
    walk early and is what ``cpl`` receives."""
    it.ch = None
    if status:
        _leave_reactor(it)
        _walk_finish(it, status)
        return
    _walk_advance(it)


@wire.remote("reactor.walk_hop")
def _walk_hop(walk_id, origin_tid, kind, dev_name, fn_name, ctx, remaining) -> None:
    r = current_reactor()
    it = ChannelIter()
    it.kind = kind
    it.walk_id = walk_id
    it.origin_tid = origin_tid
    it.ctx = _mutable(ctx)
    it.fn = wire.lookup(fn_name)
    it.remaining = list(remaining)
    it.route = None
    it.status = 0
    it.ch = None
    it.dev_name = dev_name
    it.dev = r.io_devices_by_name.get(dev_name) if kind == _CHANNEL else None
    it.io_device = it.dev.key if it.dev is not None else None
    _enter_reactor(r, it)
    _walk_advance(it)


def _walk_finish(it, status: int) -> None:
    r = current_reactor()
    # Always a message, never a direct call: the completion runs on the origin thread
    # (a local send skips encoding; a remote one carries ctx by value).
    try:
        r.send(it.origin_tid, _walk_done, (it.walk_id, it.ctx, status))
    except (TypeError, ValueError) as exc:
        log.error("walk completion cannot be encoded: %s", exc)
        r.send(it.origin_tid, _walk_done, (it.walk_id, None, -EINVAL))


@wire.remote("reactor.walk_done")
def _walk_done(walk_id, ctx, status) -> None:
    r = current_reactor()
    if walk_id not in r.walks:
        log.error("completion of unknown walk %d", walk_id)
        return
    entry = r.walks.pop(walk_id)
    if entry is None:
        return    # it completed with -EIO when a reactor on its way died: too late
    cpl, it = entry
    it.ctx = ctx if ctx is it.ctx else _mutable(ctx)
    it.status = status
    cpl(it, status)


def _fail_walks_through(r, index: int) -> None:
    """Death hook (reactor.death_hooks): reactor ``index`` died.  Every walk started on
    ``r`` that is away on a route through ``index`` completes with -EIO on its origin
    thread, as a message; its entry stays as a tombstone so its own late completion is
    dropped quietly."""
    for walk_id, entry in list(r.walks.items()):
        if entry is None:
            continue
        cpl, it = entry
        if it.route is None or index not in it.route:
            continue
        r.walks[walk_id] = None
        log.error("reactor %d died: walk %s started on reactor %d completes with -EIO",
                  index, wire.name_of(it.fn) or it.fn, r.index)
        r.send(it.origin_tid, _walk_failed, (cpl, it))


def _walk_failed(cpl, it) -> None:
    it.status = -EIO
    it.ch = None
    cpl(it, -EIO)


_r.death_hooks.append(_fail_walks_through)


def for_each_channel(io_device, fn, ctx=None, cpl=None) -> None:
    """Visit each thread holding a channel to ``io_device``; see the module docstring."""
    _start_walk(_CHANNEL, io_device, fn, ctx, cpl or _noop_cpl, "for_each_channel")


def for_each_thread(fn, ctx=None, cpl=None) -> None:
    """Run ``fn(ctx)`` on every thread in turn (all reactors), then ``cpl(ctx)`` on the
    calling thread.  ctx travels by value between reactors."""
    _start_thread_walk(_THREAD, fn, ctx, cpl)


def for_each_reactor(fn, ctx=None, cpl=None) -> None:
    """Run ``fn(iter)`` on each reactor's default thread in turn; ``fn`` calls
    ``for_each_channel_continue(iter, status)``; ``cpl(iter, status)`` on the caller."""
    _start_walk(_REACTOR, None, fn, ctx, cpl or _noop_cpl, "for_each_reactor")


def _start_thread_walk(kind, fn, ctx, cpl):
    # for_each_thread's fn takes ctx and continues implicitly; wrap it in a registered
    # stepping handler that carries fn's name along in ctx.
    name = wire.name_of(fn)
    r = current_reactor()
    if r.n_reactors > 1 and name is None:
        raise TypeError(f"for_each_thread: {getattr(fn, '__qualname__', fn)!r} must be "
                        "registered with @reactor.remote(name) to visit other reactors")
    carried = [name, ctx] if name is not None else [None, ctx]
    local_fn = fn

    def done(it, status):
        if cpl is not None:
            cpl(it.ctx[1])

    _start_walk(kind, None, _thread_step if name is not None else
                (lambda it: (local_fn(it.ctx[1]), for_each_channel_continue(it, 0))),
                carried, done, "for_each_thread")


@wire.remote("reactor.thread_step")
def _thread_step(it):
    fn = wire.lookup(it.ctx[0])
    try:
        fn(it.ctx[1])
    finally:
        for_each_channel_continue(it, 0)


def _mutable(value):
    """ctx arrives from the codec with lists as tuples; a walk's ctx is meant to be
    changed along the way, so give it back its lists."""
    if isinstance(value, tuple):
        return [_mutable(v) for v in value]
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    return value


def _noop_cpl(it, status):
    pass
