"""Replication of control-plane changes to every reactor (DESIGN.md, Control plane).

``broadcast(handler, args, cb)`` runs ``handler(done, *args)`` on the default thread of
every reactor (all at once: one message each, FIFO behind earlier broadcasts from the
same sender, so every replica applies changes in the order the main thread made them)
and calls ``cb(rc)`` on the calling thread once every replica called ``done(rc)``; ``rc``
is the first non-zero status, else 0.  ``handler`` must be ``@reactor.remote``; ``args``
must be msgpack-encodable (lists arrive as tuples on other reactors).
"""
from __future__ import annotations

import itertools
import logging

import reactor as rx
from reactor import wire

log = logging.getLogger("ringstack.bdev")

_seq = itertools.count(1)


class _Done:
    """The ``done(rc)`` a replicated handler receives."""

    __slots__ = ("op", "origin", "fired")

    def __init__(self, op, origin):
        self.op = op
        self.origin = origin
        self.fired = False

    def __call__(self, rc: int = 0) -> None:
        if self.fired:
            log.error("broadcast op %d: done() called twice", self.op)
            return
        self.fired = True
        r = rx.current_reactor()
        r.send(self.origin, _bcast_done, (self.op, int(rc or 0), r.index))


def broadcast(handler, args=(), cb=None, include_self: bool = True) -> None:
    """See the module docstring.  With ``include_self=False`` the calling reactor is
    skipped (the caller applied the change itself, synchronously)."""
    r = rx.current_reactor()
    t = rx.get_thread()
    dead = r.dead
    targets = [i for i in range(r.n_reactors)
               if (include_self or i != r.index) and i not in dead]   # a dead one never answers
    if not targets:
        if cb is not None:
            rx.send_msg(t, cb, 0)
        return
    name = wire.name_of(handler)
    if name is None:
        raise TypeError(f"{handler!r} must be registered with @reactor.remote to be broadcast")
    op = next(_seq)
    r.locals.setdefault("bdev.bcast", {})[op] = [set(targets), 0, cb, t]
    for i in targets:
        r.send(r.default_tid(i), _bcast_run, (op, t.id, name, list(args)))


def _run_named(done, name, args, what) -> None:
    """Run the registered handler ``name(done, *args)``; one that raises answers -EIO
    (unless it answered already), so the waiting side never hangs on it."""
    try:
        wire.lookup(name)(done, *args)
    except Exception:
        log.exception("%s handler %s raised", what, name)
        if not done.fired:
            done(-5)


@wire.remote("bdev.bcast_run")
def _bcast_run(op, origin, name, args):
    _run_named(_Done(op, origin), name, args, "replicated")


@wire.remote("bdev.bcast_done")
def _bcast_done(op, rc, index=None):
    pending = rx.current_reactor().locals.get("bdev.bcast", {})
    entry = pending.get(op)
    if entry is None:
        log.error("completion of unknown broadcast %d", op)
        return
    waiting = entry[0]
    if index not in waiting:
        return    # reactor ``index`` was already counted (it died, then its answer came)
    waiting.discard(index)
    if rc and not entry[1]:
        entry[1] = rc
    if not waiting:
        del pending[op]
        if entry[2] is not None:
            entry[2](entry[1])


# ------------------------------------------------------------------ hop to the main thread
# DESIGN.md: the main thread owns the registry.  A registry change requested on any other
# thread (another thread of reactor 0, or another reactor) first hops to the main thread
# (reactor 0's default thread), which applies it and broadcasts it in its order; the
# answer comes back to the requesting thread as a message.

def on_main_thread() -> bool:
    r = rx.current_reactor()
    t = rx.get_thread()
    return t is not None and r.index == 0 and t.id == r.default_tid(0)


def to_main(handler, args=(), cb=None) -> None:
    """Run ``handler(done, *args)`` on the main thread; ``done(*values)`` calls
    ``cb(*values)`` back on the calling thread (later, as a message).  ``handler`` must
    be ``@reactor.remote``; ``args`` and ``values`` msgpack-encodable."""
    r = rx.current_reactor()
    t = rx.get_thread()
    name = wire.name_of(handler)
    if name is None:
        raise TypeError(f"{handler!r} must be registered with @reactor.remote")
    op = next(_seq)
    r.locals.setdefault("bdev.to_main", {})[op] = cb
    r.send(r.default_tid(0), _to_main_run, (op, t.id, name, list(args)))


class _MainDone:
    __slots__ = ("op", "origin", "fired")

    def __init__(self, op, origin):
        self.op = op
        self.origin = origin
        self.fired = False

    def __call__(self, *values) -> None:
        if self.fired:
            log.error("to_main op %d: done() called twice", self.op)
            return
        self.fired = True
        rx.current_reactor().send(self.origin, _to_main_done, (self.op, list(values)))


@wire.remote("bdev.to_main_run")
def _to_main_run(op, origin, name, args):
    _run_named(_MainDone(op, origin), name, args, "main-thread")


@wire.remote("bdev.to_main_done")
def _to_main_done(op, values):
    cb = rx.current_reactor().locals.get("bdev.to_main", {}).pop(op, None)
    if cb is not None:
        cb(*values)


# ------------------------------------------------------------------ walks a death may strand
# A for_each_channel/for_each_reactor walk visiting a reactor that dies never comes back
# (the reactor layer skips dead reactors only for walks that have not reached them yet).
# The bdev layer's walks go through these wrappers: each one still pending when a reactor
# dies completes with -EIO on its thread at once (its real completion, should it come
# later, is dropped).  The origin cannot tell where the walk is, so this is conservative.

class _Walk:
    __slots__ = ("wid", "cpl", "ctx", "thread", "done")

    def __init__(self, wid, cpl, ctx, thread):
        self.wid = wid
        self.cpl = cpl
        self.ctx = ctx
        self.thread = thread
        self.done = False

    def __call__(self, it, status) -> None:
        if self.done:
            return
        self.done = True
        rx.current_reactor().locals.get("bdev.walks", {}).pop(self.wid, None)
        self.cpl(it, status)

    def fail(self, status) -> None:
        if self.done:
            return
        it = rx.ChannelIter()
        it.ctx = self.ctx
        it.status = status
        it.ch = None
        it.io_device = None
        self(it, status)


def _track(cpl, ctx):
    r = rx.current_reactor()
    if r.n_reactors == 1:
        return cpl
    wid = next(_seq)
    w = _Walk(wid, cpl, ctx, rx.get_thread())
    r.locals.setdefault("bdev.walks", {})[wid] = w
    return w


def for_each_channel(io_device, fn, ctx=None, cpl=None) -> None:
    """rx.for_each_channel that a reactor's death cannot strand (see above)."""
    rx.for_each_channel(io_device, fn, ctx, _track(cpl or _noop, ctx))


def for_each_reactor(fn, ctx=None, cpl=None) -> None:
    """rx.for_each_reactor that a reactor's death cannot strand (see above)."""
    rx.for_each_reactor(fn, ctx, _track(cpl or _noop, ctx))


def _noop(it, status) -> None:
    pass


def _fail_walk(w) -> None:
    w.fail(-EIO)


EIO = 5


def on_reactor_death(r, index: int) -> None:
    """Reactor ``index`` died (on reactor ``r``): broadcasts still waiting for its answer
    count it as -EIO, and every pending walk completes with -EIO -- each on the thread
    that started it, as a message."""
    for op, entry in list(r.locals.get("bdev.bcast", {}).items()):
        if index in entry[0]:
            r.send(entry[3], _bcast_done, (op, -EIO, index))
    for w in list(r.locals.get("bdev.walks", {}).values()):
        if not w.done:
            log.error("reactor %d died: a bdev walk started here completes with -EIO", index)
            r.send(w.thread, _fail_walk, (w,))
