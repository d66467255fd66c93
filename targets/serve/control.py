"""The control plane of targets/serve: protocols register a name and a context factory;
the main reactor starts and stops a protocol's `Server` on every reactor, adds its
listeners, lists its connections, and runs the protocol's own operations on every
reactor (docs/targets.md, "targets/serve").

Control operations are fanouts (``reactor.gather``): every live reactor runs the step at
once and the caller hears back when all have finished; each step may finish later (a
stop waits for its connections to finish their in-flight requests, bounded by a
deadline, on every reactor in parallel).  They are all or nothing: an operation that
fails on one reactor (or meets a dead one) is undone on the reactors where it succeeded
before the caller hears of the failure (an NBD export added on reactor 0 but refused on
reactor 1 does not stay on reactor 0; a start that cannot attach somewhere stops the
reactors it started), and a step that fails leaves its own reactor as it found it.  A
reactor that is dead is skipped; one that dies mid-operation counts as -EIO.

Every module that registers a protocol or an op must be imported on every reactor (the
app's children import every project module the main process loaded; a module named in
``App(imports=...)`` is imported everywhere), so the steps find their handlers.
"""
from __future__ import annotations

import errno
import logging
import os
from collections import deque
from typing import Callable, Optional

import reactor as rx

from .server import Server, current

log = logging.getLogger("ringstack.serve")

class OneAtATime:
    """A protocol's control operations, run one at a time in arrival order on the app
    thread: ``queue.run(fn)`` calls ``fn(done)`` once every earlier operation called its
    ``done()`` (so an export added while a stop is under way cannot slip between two
    reactors' tables).  ``done`` may be called late or more than once; an operation that
    raises is logged and counts as done, so one bad request cannot wedge the queue."""

    def __init__(self, what: str):
        self._what = what
        self._queue: deque = deque()
        self._busy = False

    def run(self, fn: Callable) -> None:
        self._queue.append(fn)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        fn = self._queue.popleft()
        fired = []

        def done():
            if not fired:
                fired.append(1)
                rx.send_msg(rx.get_thread(), self._next)
        try:
            fn(done)
        except Exception:
            log.exception("%s control operation failed", self._what)
            done()


#: protocol name -> make_context(server) -> context with make(sock, meta) [and close()]
_PROTOCOLS: dict = {}
#: (protocol, op) -> fn(server_or_None, args, finish)
_OPS: dict = {}
#: (protocol, op) -> the op that reverses it where it succeeded (the all-or-nothing undo)
_UNDO: dict = {}


def register_protocol(name: str, make_context: Callable) -> None:
    """Declare protocol `name` (at import, on every reactor).  When its server starts on
    a reactor, ``make_context(server)`` runs there and returns the context whose
    ``make(sock, meta)`` builds each connection (Contract 1) and whose optional
    ``close()`` runs when the server stopped there."""
    if not name or "\0" in name or "/" in name:
        raise ValueError(f"bad protocol name {name!r}")
    _PROTOCOLS[name] = make_context
    for op_name, fn in _BUILTINS.items():
        _OPS[(name, op_name)] = fn
    _UNDO[(name, "start")] = "start_undo"


def op(protocol: str, name: str, undo: Optional[str] = None):
    """Decorator: ``fn(server, args, finish)`` is operation `name` of `protocol`, run on
    every reactor by `run_on_all_reactors`.  `server` is that reactor's `Server` (None if
    the protocol does not run there); ``finish(rc=0, out=None, message=None)`` exactly
    once, now or later.  `undo` names the op that reverses it (run where it succeeded
    when it failed elsewhere)."""
    def deco(fn):
        _OPS[(protocol, name)] = fn
        if undo is not None:
            _UNDO[(protocol, name)] = undo
        return fn
    return deco


def run_on_all_reactors(protocol: str, name: str, args: dict, cb) -> None:
    """Run op `name` of `protocol` on every live reactor; ``cb(rc, outs, message)`` on the
    calling thread, ``outs`` the steps' non-None outputs in reactor order.  If a step
    fails (or its reactor dies), the undo op runs on every reactor where it succeeded
    before ``cb`` gets the failure; ``message`` names the reactor."""
    if (protocol, name) not in _OPS:
        raise KeyError(f"no operation {name!r} for protocol {protocol!r}")

    def done(rc, results):
        outs = [v[0] for _i, _rc, v in results if v is not None and v[0] is not None]
        message = ""
        for i, step_rc, v in results:
            if step_rc:
                rc = step_rc
                message = f"reactor {i}: {(v[1] if v else None) or os.strerror(abs(step_rc))}"
                break
        cb(rc, outs, message)
    rx.gather(_step, (protocol, name, args), done,
              undo=_undo if (protocol, name) in _UNDO else None)


@rx.remote("serve.step")
def _step(done, protocol, name, args) -> None:
    _run_op(done, protocol, name, args)


@rx.remote("serve.undo")
def _undo(done, protocol, name, args) -> None:
    _run_op(done, protocol, _UNDO[(protocol, name)], args)


def _run_op(done, protocol: str, name: str, args) -> None:
    fired = []

    def finish(rc: int = 0, out=None, message: str | None = None) -> None:
        if fired:
            log.error("%s op %s: step finished twice", protocol, name)
            return
        fired.append(1)
        done(rc, None if out is None and not message else [out, message])
    try:
        fn = _OPS[(protocol, name)]
    except KeyError:
        finish(-errno.ENOSYS, None, f"no operation {name!r} for {protocol!r} on this reactor")
        return
    try:
        fn(current(protocol), args, finish)
    except Exception as exc:
        log.exception("%s op %s failed on reactor %d", protocol, name, rx.current_reactor().index)
        if not fired:
            finish(-errno.EIO, None, f"{type(exc).__name__}: {exc}")


# ====================================================================== lifecycle
def start(protocol: str, cb, *, opts: Optional[dict] = None, listen=()) -> None:
    """Main reactor: start `protocol`'s server on every reactor.  `listen` is a list of
    ``(address, meta)`` bound first, on the main reactor (a bad or busy address fails
    the start before any other reactor is touched); more can be added later with
    ``current(protocol).listen(address, meta)``.  `opts` (JSON-able) reaches every
    reactor's ``server.opts``.  ``cb(rc, message)``: 0, or a negative errno with nothing
    left running anywhere."""
    make_context = _PROTOCOLS.get(protocol)
    if make_context is None:
        cb(-errno.ENOENT, f"no protocol {protocol!r} registered")
        return
    if current(protocol) is not None:
        cb(-errno.EBUSY, f"the {protocol} server is running (or still stopping)")
        return
    try:
        srv = Server(protocol, make_context, opts)
    except Exception as exc:
        log.exception("%s: cannot set up the server", protocol)
        cb(-errno.EIO, f"{type(exc).__name__}: {exc}")
        return
    address = None
    try:
        for address, meta in listen:
            srv.listen(address, meta)
        address = None
        srv.open_channel()
    except (OSError, ValueError) as exc:
        srv.stop(lambda: None)
        code = getattr(exc, "errno", None) or errno.EINVAL
        what = f"cannot listen on {address}" if address is not None else "fd channel"
        cb(-code, f"{what}: {getattr(exc, 'strerror', None) or exc}")
        return

    def started(rc, outs, msg):
        srv.accept_peers()
        if rc:
            log.error("%s start: %s", protocol, msg)
            run_on_all_reactors(protocol, "stop", {}, lambda *_: cb(rc, msg))
            return
        cb(0, None)
    run_on_all_reactors(protocol, "start", {"protocol": protocol, "ctl": srv.ctl_name,
                                            "main_pid": os.getpid(), "opts": opts}, started)


def stop(protocol: str, cb, reason: str = "server shutting down") -> None:
    """Main reactor: stop `protocol` on every reactor (listeners close, connections finish
    in-flight work, at most STOP_DRAIN_S); ``cb(rc, message)`` when all have stopped."""
    run_on_all_reactors(protocol, "stop", {"reason": reason}, lambda rc, outs, msg: cb(rc, msg))


def get_connections(protocol: str, cb) -> None:
    """``cb(rc, message, infos)``: every reactor's `Server.info()` (reactors where the
    protocol does not run are left out)."""
    run_on_all_reactors(protocol, "info", {}, lambda rc, outs, msg: cb(rc, msg, outs))


# ---------------------------------------------------------------- the built-in ops
# Every protocol has these (register_protocol installs them under its name).
def _op_start(server, args, finish) -> None:
    protocol = args["protocol"]
    if server is not None:      # the main reactor set itself up already
        finish()
        return
    make_context = _PROTOCOLS.get(protocol)
    if make_context is None:
        finish(-errno.ENOENT, None, f"protocol {protocol!r} is not registered here")
        return
    r = rx.current_reactor()
    try:
        srv = Server(protocol, make_context, args.get("opts"))
    except Exception as exc:
        log.exception("%s reactor %d: cannot set up the server", protocol, r.index)
        finish(-errno.EIO, None, f"{type(exc).__name__}: {exc}")
        return
    try:
        srv.attach(args["ctl"], args["main_pid"])
    except (OSError, TypeError) as exc:
        log.error("%s reactor %d: cannot attach the fd channel: %s", protocol, r.index, exc)
        # leave this reactor as it was: nothing to undo here
        code = getattr(exc, "errno", None) or errno.EIO
        srv.stop(lambda: finish(-code, None, f"fd channel: {exc}"))
        return
    srv.started_here = True
    finish()


def _op_start_undo(server, args, finish) -> None:
    """Undo of a start that succeeded here: stop what the start step set up (not the main
    reactor's server, which its caller set up and tears down itself)."""
    if server is None or not server.started_here:
        finish()
        return
    server.stop(finish)


def _op_stop(server, args, finish) -> None:
    if server is None:
        finish()
        return
    server.stop(finish, args.get("reason") or "server shutting down")


def _op_info(server, args, finish) -> None:
    finish(0, server.info() if server is not None else None)


_BUILTINS = {"start": _op_start, "start_undo": _op_start_undo, "stop": _op_stop,
             "info": _op_info}
