"""Running something on every reactor: the one place for it (docs/reactor.md, Fanout).

* ``broadcast(handler, args, cb, include_self=True, undo=None)`` runs the ``@remote``
  handler ``handler(done, *args)`` on the default thread of every live reactor at once
  (one message each, FIFO behind earlier broadcasts from the same sender, so every replica
  applies changes in the sender's order) and calls ``cb(rc)`` on the calling thread once
  every one called ``done(rc)``; ``rc`` is the first non-zero answer to arrive, else 0.
  ``gather`` is the same with values: ``done(rc, value)``, ``cb(rc, results)``.
* **All or nothing.**  The message is encoded and size-checked before anything is sent:
  arguments msgpack cannot encode, or a message larger than one ring record, raise
  :class:`FanoutError` from the call itself and nothing runs anywhere (``check`` does the
  same validation without sending).  With ``undo`` (an ``@remote`` handler with the same
  signature), a broadcast that fails somewhere (an answer != 0, a handler that raised, a
  reactor that died) runs ``undo(done, *args)`` on every reactor that answered 0, and
  only then calls ``cb(first_error)``.
* ``to_main(handler, args, cb)`` runs ``handler(done, *args)`` on the main thread (reactor
  0's default thread); ``done(*values)`` calls ``cb(*values)`` back on the calling thread.
* ``for_each_channel``/``for_each_reactor`` are the reactor's walks (reactor/io_channel.py),
  which a death cannot strand either.

**A reactor that dies** (``Reactor.mark_dead``, through ``reactor.death_hooks``): every
broadcast still waiting for its answer counts it as -EIO, once (its late answer, if any,
is dropped); a to_main waiting for a dead reactor 0 calls ``cb(*fail)`` (default
``(-EIO,)``); later broadcasts skip dead reactors and a to_main towards a dead reactor 0
fails the same way at once, as a message.  Everything completes on the calling thread,
never inside the call.
"""
from __future__ import annotations

import itertools
import logging

from . import reactor as _r
from . import thread as _t
from . import wire
from .io_channel import for_each_channel, for_each_reactor  # noqa: F401  (death-safe walks)
from .reactor import current_reactor

log = logging.getLogger("ringstack.fanout")

EIO = 5
_KEY = "reactor.fanout"
_RUN, _UNDO = 0, 1
#: The largest operation id msgpack encodes (9 bytes): ``check`` sizes with it, so a
#: message it accepts is never larger when ``broadcast`` sends it.
_WORST_OP = (1 << 64) - 1
_seq = itertools.count(1)


class FanoutError(ValueError):
    """A broadcast or to_main whose message cannot cross reactors (arguments msgpack
    cannot encode, or larger than one ring record).  Raised by the call; nothing was sent."""


# --------------------------------------------------------------------------- validation
def _name(fn, what: str) -> str:
    name = wire.name_of(fn)
    if name is None:
        raise TypeError(f"{what}: {getattr(fn, '__qualname__', fn)!r} must be registered with "
                        "@reactor.remote(name)")
    return name


def _encode(r, tid: int, fn, args, what: str) -> bytes:
    """The record carrying ``fn(*args)`` to thread ``tid``, or FanoutError."""
    try:
        record = wire.encode_msg(tid, fn, args)
    except TypeError:
        raise
    except ValueError as exc:
        raise FanoutError(f"{what}: the arguments cannot cross reactors: {exc}") from None
    if len(record) > r.max_record:
        raise FanoutError(f"{what}: a message of {len(record)} bytes is larger than one ring "
                          f"record ({r.max_record} bytes); pass large data through an arena")
    return record


def _worst_tid(r) -> int:
    return r.default_tid(max(1, r.n_reactors - 1))


def _check(r, origin: int, fn, name: str, args: list, what: str) -> None:
    _encode(r, _worst_tid(r), fn, (_WORST_OP, _UNDO, origin, name, args), what)


def check(handler, args=()) -> None:
    """Validate what ``broadcast(handler, args)`` would send, sending nothing: TypeError
    if ``handler`` is not ``@remote``, :class:`FanoutError` if the arguments cannot
    cross reactors.  The check does not depend on how many reactors run (a message that
    would be refused with two is refused with one too)."""
    t = _t._require_thread("fanout.check")
    name = _name(handler, "broadcast")
    _check(t.reactor, t.id, _run, name, list(args), f"broadcast of {name}")


# --------------------------------------------------------------------------- broadcast
class _Op:
    """Origin-side state of one broadcast."""

    __slots__ = ("op", "phase", "name", "args", "undo", "waiting", "results", "rc", "cb",
                 "values", "origin")

    def __init__(self, op, name, args, undo, cb, values, origin):
        self.op = op
        self.phase = _RUN
        self.name = name
        self.args = args
        self.undo = undo
        self.waiting: set = set()
        self.results: dict = {}        # reactor index -> (rc, value) of the run phase
        self.rc = 0
        self.cb = cb
        self.values = values
        self.origin = origin           # the calling thread's id

    def record(self, index: int, rc: int, value) -> None:
        if self.phase == _RUN:
            self.results[index] = (rc, value)
            if rc and not self.rc:
                self.rc = rc
        elif rc:
            log.error("broadcast of %s: undo on reactor %d answered %d; that replica keeps "
                      "the change", self.name, index, rc)


def broadcast(handler, args=(), cb=None, include_self: bool = True, undo=None) -> None:
    """Run ``handler(done, *args)`` on every live reactor's default thread; ``cb(rc)`` on
    the calling thread once all called ``done(rc)`` (see the module docstring).  With
    ``include_self=False`` the calling reactor is skipped (the caller applied the change
    itself, and undoes it itself if ``cb`` reports a failure)."""
    _start(handler, args, cb, include_self, undo, False, "broadcast")


def gather(handler, args=(), cb=None, include_self: bool = True, undo=None) -> None:
    """``broadcast`` that collects values: the handler answers ``done(rc=0, value=None)``
    and ``cb(rc, results)`` gets ``[(reactor index, rc, value), ...]`` by index, a dead
    reactor as ``(index, -EIO, None)``.  Values must be msgpack-encodable; one that cannot
    cross back answers -EIO."""
    _start(handler, args, cb, include_self, undo, True, "gather")


def _start(handler, args, cb, include_self, undo, values, what) -> None:
    t = _t._require_thread(what)
    r = t.reactor
    name = _name(handler, what)
    uname = _name(undo, what + " undo") if undo is not None else None
    args = list(args)
    # Everything is encoded and checked first: a refusal raises here with nothing sent.
    _check(r, t.id, _run, name, args, f"{what} of {name}")
    if uname is not None:
        _check(r, t.id, _run, uname, args, f"{what} of {name} (undo {uname})")
    dead = r.dead
    targets = [i for i in range(r.n_reactors)
               if (include_self or i != r.index) and i not in dead]
    if not targets:
        if cb is not None:
            r.send(t, cb, (0, []) if values else (0,))
        return
    op = next(_seq)
    msg = (op, _RUN, t.id, name, args)
    records = {i: _encode(r, r.default_tid(i), _run, msg, f"{what} of {name}")
               for i in targets if i != r.index}
    entry = _Op(op, name, args, uname, cb, values, t.id)
    entry.waiting = set(targets)
    _state(r)["ops"][op] = entry
    for i in targets:
        if i == r.index:
            r.send(r.default_tid(i), _run, msg)
        else:
            r.send_record(i, records[i])


class _Answer:
    """The ``done(rc, value=None)`` a broadcast handler receives."""

    __slots__ = ("op", "phase", "origin", "name", "fired")

    def __init__(self, op, phase, origin, name):
        self.op = op
        self.phase = phase
        self.origin = origin
        self.name = name
        self.fired = False

    def __call__(self, rc: int = 0, value=None) -> None:
        if self.fired:
            log.error("broadcast of %s: done() called twice", self.name)
            return
        self.fired = True
        r = current_reactor()
        _reply(r, self.origin, _answer, (self.op, self.phase, r.index, int(rc or 0), value),
               (self.op, self.phase, r.index, -EIO, None), self.name)

    def fail(self) -> None:
        self(-EIO)


def _reply(r, origin: int, fn, args, fallback, name) -> None:
    """Send an answer home; one that cannot cross (value not encodable, too large) is
    replaced by ``fallback``, so the origin never waits for it."""
    dest = origin >> _r.TID_SHIFT
    if dest == r.index:
        r.send(origin, fn, args)
        return
    try:
        record = _encode(r, origin, fn, args, f"answer of {name}")
    except (FanoutError, TypeError) as exc:
        log.error("%s; answering with an error instead", exc)
        record = _encode(r, origin, fn, fallback, f"answer of {name}")
    r.send_record(dest, record)


@wire.remote("reactor.fanout.run")
def _run(op, phase, origin, name, args):
    _run_named(_Answer(op, phase, origin, name), name, args, "broadcast")


def _run_named(done, name, args, what) -> None:
    """Run the registered handler ``name(done, *args)``; one that raises answers -EIO
    (unless it answered already), so the waiting side never hangs on it."""
    try:
        wire.lookup(name)(done, *args)
    except Exception:
        log.exception("%s handler %s raised", what, name)
        if not done.fired:
            done.fail()


@wire.remote("reactor.fanout.answer")
def _answer(op, phase, index, rc, value):
    entry = _state(current_reactor())["ops"].get(op)
    if entry is None or entry.phase != phase or index not in entry.waiting:
        return    # late: that reactor was counted already (it died, then its answer came)
    entry.waiting.discard(index)
    entry.record(index, rc, value)
    if not entry.waiting:
        _complete(entry)


def _complete(entry: _Op) -> None:
    """All answered (on the calling thread): undo where needed, then the callback."""
    r = current_reactor()
    ops = _state(r)["ops"]
    if ops.get(entry.op) is not entry:
        return
    if entry.phase == _RUN and entry.rc and entry.undo is not None:
        ok = sorted(i for i, (rc, _v) in entry.results.items() if rc == 0 and i not in r.dead)
        if ok:
            log.warning("broadcast of %s failed (%d): undoing it on reactors %s with %s",
                        entry.name, entry.rc, ok, entry.undo)
            entry.phase = _UNDO
            entry.waiting = set(ok)
            msg = (entry.op, _UNDO, entry.origin, entry.undo, entry.args)
            for i in ok:
                if i == r.index:
                    r.send(r.default_tid(i), _run, msg)
                else:   # validated when the broadcast started
                    r.send_record(i, _encode(r, r.default_tid(i), _run, msg, "undo"))
            return
    del ops[entry.op]
    cb = entry.cb
    if cb is None:
        return
    if entry.values:
        cb(entry.rc, [(i, rc, v) for i, (rc, v) in sorted(entry.results.items())])
    else:
        cb(entry.rc)


# --------------------------------------------------------------------- the main thread
def on_main_thread() -> bool:
    """Whether the caller runs on the main thread (reactor 0's default thread), which
    owns the registries the control plane replicates."""
    t = _t._current
    return t is not None and t.reactor.index == 0 and t.id == t.reactor.default_tid(0)


class _Hop:
    __slots__ = ("cb", "fail", "origin")

    def __init__(self, cb, fail, origin):
        self.cb = cb
        self.fail = fail
        self.origin = origin


def to_main(handler, args=(), cb=None, fail=(-EIO,)) -> None:
    """Run ``handler(done, *args)`` on the main thread; ``done(*values)`` calls
    ``cb(*values)`` back on the calling thread (later, as a message).  ``cb(*fail)``
    instead when the main thread cannot answer: reactor 0 is dead (or dies before
    answering), the handler raised before answering, or its values cannot cross back.
    ``handler`` must be ``@remote``; ``args`` are validated first (FanoutError, nothing
    sent), as for broadcast."""
    t = _t._require_thread("to_main")
    r = t.reactor
    name = _name(handler, "to_main")
    args = list(args)
    fail = tuple(fail)
    _check(r, t.id, _hop_run, name, args, f"to_main of {name}")
    if 0 in r.dead:
        log.error("to_main of %s: reactor 0 is dead", name)
        if cb is not None:
            r.send(t, cb, fail)
        return
    op = next(_seq)
    msg = (op, _RUN, t.id, name, args)
    record = _encode(r, r.default_tid(0), _hop_run, msg, f"to_main of {name}") if r.index else None
    _state(r)["hops"][op] = _Hop(cb, fail, t.id)
    if record is None:
        r.send(r.default_tid(0), _hop_run, msg)
    else:
        r.send_record(0, record)


class _HopDone:
    """The ``done(*values)`` a to_main handler receives."""

    __slots__ = ("op", "origin", "name", "fired")

    def __init__(self, op, origin, name):
        self.op = op
        self.origin = origin
        self.name = name
        self.fired = False

    def __call__(self, *values) -> None:
        if self.fired:
            log.error("to_main of %s: done() called twice", self.name)
            return
        self.fired = True
        _reply(current_reactor(), self.origin, _hop_answer, (self.op, list(values)),
               (self.op, None), self.name)

    def fail(self) -> None:
        self.fired = True
        _reply(current_reactor(), self.origin, _hop_answer, (self.op, None), (self.op, None),
               self.name)


@wire.remote("reactor.fanout.hop_run")
def _hop_run(op, _phase, origin, name, args):
    _run_named(_HopDone(op, origin, name), name, args, "main-thread")


@wire.remote("reactor.fanout.hop_answer")
def _hop_answer(op, values):
    hop = _state(current_reactor())["hops"].pop(op, None)
    if hop is None or hop.cb is None:
        return
    hop.cb(*(hop.fail if values is None else values))


def _hop_failed(hop: _Hop) -> None:
    if hop.cb is not None:
        hop.cb(*hop.fail)


# ----------------------------------------------------------------------- reactor death
def _state(r) -> dict:
    st = r.locals.get(_KEY)
    if st is None:
        st = r.locals[_KEY] = {"ops": {}, "hops": {}}
    return st


def on_reactor_death(r, index: int) -> None:
    """Reactor ``index`` died (seen on reactor ``r``): broadcasts waiting for its answer
    count it as -EIO and, if it was the last one, complete on their calling threads; if
    it is reactor 0, every to_main waiting for it fails.  Runs by itself from
    ``Reactor.mark_dead``; calling it again for the same death does nothing."""
    st = r.locals.get(_KEY)
    if st is None:
        return
    for entry in list(st["ops"].values()):
        if index in entry.waiting:
            entry.waiting.discard(index)
            log.error("reactor %d died: broadcast of %s counts it as -EIO", index, entry.name)
            entry.record(index, -EIO, None)
            if not entry.waiting:
                r.send(entry.origin, _complete, (entry,))
    if index == 0:
        for op, hop in list(st["hops"].items()):
            del st["hops"][op]
            log.error("reactor 0 died: a to_main started here fails")
            r.send(hop.origin, _hop_failed, (hop,))


_r.death_hooks.append(on_reactor_death)
