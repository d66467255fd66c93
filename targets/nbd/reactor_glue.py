"""The NBD server inside the reactors: one `NbdTarget` per reactor, the listener on the main
reactor, connections handed out round-robin by fd passing, and the export table
replicated to every reactor.

Per reactor (``current_reactor().locals["nbd"]``, a :class:`ReactorNbd`):

* an ``NbdTarget`` with its own ``ExportTable`` of `BdevExport` objects built from *this*
  reactor's bdev replica (every change is applied on every reactor by a broadcast from the
  main reactor, in the order the main reactor made it);
* one epoll instance holding every fd the reactor serves (connections; on the main
  reactor the listener and the fd-passing control socket; on the others their end of the
  fd-passing channel), and one period-0 poller registered with ``fd=epoll.fileno()``.
  A sleeping reactor therefore wakes when any of those fds is ready, and an idle reactor
  sleeps: the poller is fd-driven, so it does not keep the loop awake.
  While the reactor runs, each pass does one ``epoll.poll(0)`` plus a ``poll()`` of every
  connection that has work without new readiness (requests in flight, replies queued,
  buffered input: ``Connection.needs_poll``).  Idle connections cost nothing per pass.
  Each connection is registered for EPOLLIN only while it wants input and for EPOLLOUT only
  while the socket refused replies, so a slow or vanished client neither blocks nor spins
  the reactor.

Placement: the main reactor accepts, then gives each new socket to the next reactor in
turn (itself included).  A socket for another reactor travels as an fd (SCM_RIGHTS) over a
Unix SOCK_SEQPACKET connection that the other reactor opened, when the server started, to an
*abstract* Unix address (``\\0ringstack.<pid>.nbd.<n>.<128 random bits>``, unguessable, so
another user cannot take it first) the main reactor listens on: there
is no file to create, chmod or remove, and nothing is left behind on any exit path (the
name disappears with the socket, even after SIGKILL).  Abstract names have no file
permissions, so both ends check the peer with SO_PEERCRED: the main reactor accepts only
its own reactor processes, a reactor only its launcher.  If a reactor's channel is full or
gone, the connection is served on the main reactor instead (never dropped, never a
blocking send).

Control operations (`run_on_all_reactors`) are fanouts (``reactor.gather``): every live
reactor runs the step at once and the caller hears back when all have finished; each step
may finish later (a stop waits for its connections to finish their in-flight requests,
bounded by a deadline, on every reactor in parallel).  They are all or nothing: an
operation that fails on one reactor (or meets a dead one) is undone on the reactors where
it succeeded before the caller hears of the failure (an export added on reactor 0 but
refused on reactor 1 does not stay on reactor 0; a start that cannot attach somewhere
stops the reactors it started), and a step that fails leaves its own reactor as it found
it.  A reactor that is dead is skipped; one that dies mid-operation counts as -EIO.
"""
from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import select
import secrets
import socket
import struct

import reactor as rx

from .backend import ExportTable
from .bdev_export import BdevExport
from .listener import Listener, recv_fd, send_fd, socket_from_fd
from .server import NbdTarget

log = logging.getLogger("ringstack.nbd")

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
#: How long a stop waits for connections to finish in-flight requests before cutting them.
STOP_DRAIN_S = 5.0
#: fds received per pass from the fd-passing channel (bounded: a flood cannot starve I/O).
RECV_FDS_PER_POLL = 32
#: While connections are busy, check epoll (listener, fd channel, idle connections) once
#: every this many passes.
EPOLL_EVERY = 8
_UCRED = struct.Struct("3i")
_seq = itertools.count(1)


def _peer_pid(sock: socket.socket) -> int:
    try:
        pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size))
        return pid
    except OSError:
        return -1


def _child_pids() -> dict:
    """pid -> reactor index of this app's other reactor processes (main reactor only)."""
    from reactor.app import running_app
    app = running_app()
    if app is None:
        return {}
    return {p.pid: i for i, p in app.procs.items() if p.poll() is None}


class ReactorNbd:
    """The NBD server's state on one reactor (see the module docstring)."""

    def __init__(self, r, *, conn_opts=None):
        self.reactor = r
        self.index = r.index
        self.thread = rx.get_thread()
        self.exports = ExportTable()
        self.target = NbdTarget(self.exports, **(conn_opts or {}))
        self.ep = select.epoll()
        self._fds: dict = {}        # fd -> (owner, registered mask)
        self._conn_seq = itertools.count(1)
        self._pass = 0
        self._hot = 0
        self.poller = rx.poller_register(self._poll, None, 0, "nbd_target", fd=self.ep.fileno())
        self.listener = None        # main reactor only
        self.ctl = None             # main: abstract listening socket for the channels
        self.ctl_name = None
        self.peers: dict = {}       # main: reactor index -> channel socket
        self.rr: list = [self.index]
        self._rr_pos = 0
        self.chan = None            # other reactors: channel to the main reactor
        self.stopping = None        # the finish callback, while stopping
        self.stop_waiters = []      # finish callbacks of later stops, run with it
        self.started_here = False   # set up by the "start" step (not by its caller)
        self.stopped = False
        self._deadline = 0
        self.stop_poller = None
        self.stats = {"connections_accepted": 0, "requests": 0, "errors": 0, "bytes_read": 0,
                      "bytes_written": 0}

    # ------------------------------------------------------------------ fds
    def _register(self, fd: int, owner, mask: int) -> None:
        old = self._fds.get(fd)
        if old is not None:          # a closed connection's number, reused: forget it
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass
        self._fds[fd] = (owner, mask)
        if mask:
            self.ep.register(fd, mask)
        else:
            self._fds[fd] = (owner, 0)

    def _unregister(self, fd: int) -> None:
        ent = self._fds.pop(fd, None)
        if ent is not None and ent[1]:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _set_mask(self, fd: int, owner, mask: int) -> None:
        ent = self._fds.get(fd)
        if ent is None or ent[0] is not owner:
            self._register(fd, owner, mask)
            return
        if ent[1] == mask:
            return
        try:
            if not ent[1]:
                self.ep.register(fd, mask)
            elif not mask:
                self.ep.unregister(fd)
            else:
                self.ep.modify(fd, mask)
        except (OSError, ValueError):
            pass
        self._fds[fd] = (owner, mask)

    # ------------------------------------------------------------------ connections
    def add_connection(self, sock: socket.socket) -> None:
        self.stats["connections_accepted"] += 1
        if self.stopping is not None:
            sock.close()
            return
        conn = self.target.add_connection(sock)
        conn.name = f"r{self.index}.c{next(self._conn_seq)}"
        self._watch(conn)

    def _watch(self, conn) -> None:
        fd = conn.fileno()
        if fd < 0:
            return
        mask = (_IN if conn.wants_read() else 0) | (_OUT if conn.send_blocked else 0)
        self._set_mask(fd, conn, mask)

    def _place(self, sock: socket.socket, peer) -> None:
        """Listener callback (main reactor): round-robin over the reactors."""
        rr = self.rr
        dest = rr[self._rr_pos % len(rr)]
        self._rr_pos += 1
        if dest != self.index:
            ch = self.peers.get(dest)
            if ch is not None:
                try:
                    send_fd(ch, sock.fileno())
                    sock.close()
                    return
                except (BlockingIOError, InterruptedError):
                    log.warning("nbd: reactor %d's channel is full; serving the client on reactor %d",
                                dest, self.index)
                except OSError as exc:
                    log.error("nbd: reactor %d's channel failed (%s); no longer placing there", dest, exc)
                    self._drop_peer(dest)
        self.add_connection(sock)

    def _drop_peer(self, index: int) -> None:
        ch = self.peers.pop(index, None)
        if ch is not None:
            self._unregister(ch.fileno())
            ch.close()
        self.rr = [self.index] + sorted(self.peers)

    # ------------------------------------------------------------------ the poller
    def _poll(self, _arg) -> int:
        work = 0
        fds = self._fds
        ready = None
        self._pass += 1
        # While some connection is hot it is polled directly; epoll (new clients, fds,
        # idle connections waking up) is then checked every EPOLL_EVERY passes only: one
        # syscall less per pass on the busy path, a few microseconds more for a newcomer.
        if not self._hot or not self._pass % EPOLL_EVERY:
            events = self.ep.poll(0)
            if events:
                for fd, ev in events:
                    ent = fds.get(fd)
                    if ent is None:
                        continue
                    owner = ent[0]
                    if owner is self.listener:
                        work += self.listener.poll()
                    elif owner is self.chan:
                        work += self._recv_fds()
                    elif owner is self.ctl:
                        work += self.accept_peers()
                    elif owner.__class__ is socket.socket:
                        # a peer channel became readable: only EOF/errors arrive there
                        self._peer_event(owner)
                    else:
                        if ready is None:
                            ready = set()
                        ready.add(owner)
        conns = self.target.connections
        hot = 0
        if conns:
            reap = False
            for c in conns:
                if (ready is not None and c in ready) or c.needs_poll():
                    work += c.poll()
                    if c.done:
                        reap = True
                        continue
                    if c.needs_poll():
                        hot += 1
                    # epoll interest: readable while it wants input, writable while the
                    # socket refuses replies
                    fd = c._fd
                    want = (_IN if c.wants_read() else 0) | (_OUT if c.send_blocked else 0)
                    ent = fds.get(fd)
                    if ent is None or ent[0] is not c or ent[1] != want:
                        self._set_mask(fd, c, want)
                elif c.done:
                    reap = True
            if reap:
                self._reap()
        self._hot = hot
        if self.stopping is not None and not self.target.connections:
            self._finish_stop()
        return work

    def _reap(self) -> None:
        keep = []
        st = self.stats
        for c in self.target.connections:
            if c.done:
                fd = c._fd
                ent = self._fds.get(fd)
                if ent is not None and ent[0] is c:
                    self._unregister(fd)
                cs = c.stats
                st["requests"] += cs["requests"]
                st["errors"] += cs["errors"]
                st["bytes_read"] += cs["bytes_read"]
                st["bytes_written"] += cs["bytes_written"]
            else:
                keep.append(c)
        self.target.connections = keep

    def _recv_fds(self) -> int:
        n = 0
        while n < RECV_FDS_PER_POLL and self.chan is not None:
            try:
                got = recv_fd(self.chan)
            except EOFError:
                self._close_chan()
                break
            except OSError as exc:
                log.error("nbd reactor %d: fd channel: %s", self.index, exc)
                break
            if got is None:
                break
            fd, _meta = got
            n += 1
            try:
                self.add_connection(socket_from_fd(fd))
            except OSError as exc:
                log.error("nbd reactor %d: cannot adopt a connection: %s", self.index, exc)
                os.close(fd)
        return n

    def _close_chan(self) -> None:
        if self.chan is not None:
            self._unregister(self.chan.fileno())
            self.chan.close()
            self.chan = None

    def _peer_event(self, ch: socket.socket) -> None:
        for index, s in list(self.peers.items()):
            if s is ch:
                log.info("nbd: reactor %d closed its fd channel", index)
                self._drop_peer(index)

    # ------------------------------------------------------------------ main reactor
    def listen(self, address: str) -> None:
        self.listener = Listener(address, self._place)
        atexit.register(self.listener.close)   # the socket file goes on every way out
        self._register(self.listener.fileno(), self.listener, _IN)
        if self.reactor.n_reactors > 1:
            ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            # The name carries 128 random bits: another local user could otherwise bind
            # the next predictable name first and make the start fail (EADDRINUSE).
            self.ctl_name = f"\0ringstack.{os.getpid()}.nbd.{next(_seq)}.{secrets.token_hex(16)}"
            try:
                ctl.bind(self.ctl_name)
                ctl.listen(self.reactor.n_reactors)
            except OSError:
                ctl.close()
                self.listener.close()
                raise
            ctl.setblocking(False)
            self.ctl = ctl
            self._register(ctl.fileno(), ctl, _IN)

    def accept_peers(self) -> int:
        """Accept the other reactors' fd channels (pending ones; never blocks)."""
        n = 0
        if self.ctl is None:
            return 0
        pids = _child_pids()
        while True:
            try:
                s, _ = self.ctl.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.error("nbd: accepting a reactor channel failed: %s", exc)
                break
            n += 1
            index = pids.get(_peer_pid(s))
            if index is None:
                log.error("nbd: refused an fd channel from pid %d (not a reactor of this app)",
                          _peer_pid(s))
                s.close()
                continue
            s.setblocking(False)
            old = self.peers.pop(index, None)
            if old is not None:
                self._unregister(old.fileno())
                old.close()
            self.peers[index] = s
            # Readable only on EOF/error: that is how we notice a reactor went away.
            self._register(s.fileno(), s, _IN)
        self.rr = [self.index] + sorted(self.peers)
        return n

    # ------------------------------------------------------------------ other reactors
    def attach(self, ctl_name: str, main_pid: int) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(5.0)
            s.connect(ctl_name)
            if _peer_pid(s) != main_pid:
                raise OSError(errno.EPERM, f"fd channel peer is pid {_peer_pid(s)}, not the launcher {main_pid}")
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self.chan = s
        self._register(s.fileno(), s, _IN)

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        conns = []
        for c in self.target.connections:
            cs = c.stats
            conns.append({"name": c.name, "export_name": c.export_name, "state": c.state,
                          "inflight": c.inflight, "requests": cs["requests"],
                          "bytes_read": cs["bytes_read"], "bytes_written": cs["bytes_written"]})
        totals = dict(self.stats)
        for c in self.target.connections:
            for k in ("requests", "errors", "bytes_read", "bytes_written"):
                totals[k] += c.stats[k]
        totals["connections_open"] = len(self.target.connections)
        totals["polls"] = self._pass
        return {"reactor": self.index, "lcore": self.reactor.core, "connections": conns,
                "stats": totals}

    # ------------------------------------------------------------------ stop
    def stop(self, finish) -> None:
        """Stop accepting, let every connection finish its in-flight requests (at most
        STOP_DRAIN_S), close everything, then ``finish()``."""
        if self.stopping is not None:
            # a second stop while one is under way (or done) finishes with the first
            if self.stopped:
                rx.send_msg(rx.get_thread(), finish)
            else:
                self.stop_waiters.append(finish)
            return
        if self.listener is not None:
            self._unregister(self.listener.fileno())
            self.listener.close()
            try:
                atexit.unregister(self.listener.close)
            except Exception:
                pass
        if self.ctl is not None:
            self._unregister(self.ctl.fileno())
            self.ctl.close()
            self.ctl = None
        for index in list(self.peers):
            self._drop_peer(index)
        self._close_chan()
        self.stopping = finish
        self._deadline = rx.now_ns() + int(STOP_DRAIN_S * 1e9)
        self.target.shutdown()
        self.stop_poller = rx.poller_register(self._stop_deadline, None, 100_000, "nbd_stop")
        if not self.target.connections:
            self._finish_stop()

    def _stop_deadline(self, _arg) -> int:
        if self.stopping is not None and not self.stopped and rx.now_ns() >= self._deadline:
            log.warning("nbd reactor %d: %d connections did not finish in %.0f s; cutting them",
                        self.index, len(self.target.connections), STOP_DRAIN_S)
            self.target.abort()
            self._reap()
            self.target.connections = []
            self._finish_stop()
            return 1
        return 0

    def _finish_stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        finish = self.stopping
        rx.poller_unregister(self.poller)
        if self.stop_poller is not None:
            rx.poller_unregister(self.stop_poller)
        for fd in list(self._fds):
            self._unregister(fd)
        self.ep.close()
        if self.reactor.locals.get("nbd") is self:
            del self.reactor.locals["nbd"]
        finish()
        for waiter in self.stop_waiters:
            waiter()
        self.stop_waiters = []


def current() -> ReactorNbd | None:
    return rx.current_reactor().locals.get("nbd")


# ================================================================ control operations
# Each runs on every reactor at once through the reactor's fanout (reactor/fanout.py);
# a step answers finish(rc=0, out=None, message=None).
_OPS: dict = {}
#: op -> the op that reverses it where it succeeded (the all-or-nothing undo).
_UNDO_OPS = {"start": "start_undo", "export_add": "export_remove"}


def _op(name):
    def deco(fn):
        _OPS[name] = fn
        return fn
    return deco


def run_on_all_reactors(op: str, args: dict, cb) -> None:
    """Run ``_OPS[op](args, finish)`` on every live reactor; ``cb(rc, outs, message)`` on
    the calling thread, ``outs`` the steps' non-None outputs by reactor index.  If a step
    fails (or its reactor dies), the op's undo (``_UNDO_OPS``) runs on every reactor where
    it succeeded before ``cb`` gets the failure: ``message`` names the reactor."""
    def done(rc, results):
        outs = [v[0] for _i, _rc, v in results if v is not None and v[0] is not None]
        message = ""
        for i, step_rc, v in results:
            if step_rc:
                rc = step_rc
                message = f"reactor {i}: {(v[1] if v else None) or os.strerror(abs(step_rc))}"
                break
        cb(rc, outs, message)
    rx.gather(_step, (op, args), done, undo=_undo if op in _UNDO_OPS else None)


@rx.remote("nbd.step")
def _step(done, op, args) -> None:
    _run_op(done, op, args)


@rx.remote("nbd.undo")
def _undo(done, op, args) -> None:
    _run_op(done, _UNDO_OPS[op], args)


def _run_op(done, op: str, args) -> None:
    fired = []

    def finish(rc: int = 0, out=None, message: str | None = None) -> None:
        if fired:
            log.error("nbd op %s: step finished twice", op)
            return
        fired.append(1)
        done(rc, None if out is None and not message else [out, message])
    try:
        _OPS[op](args, finish)
    except Exception as exc:
        log.exception("nbd op %s failed on reactor %d", op, rx.current_reactor().index)
        if not fired:
            finish(-errno.EIO, None, f"{type(exc).__name__}: {exc}")


@_op("start")
def _op_start(args, finish) -> None:
    r = rx.current_reactor()
    if r.locals.get("nbd") is not None:      # the main reactor set itself up already
        finish()
        return
    svc = ReactorNbd(r, conn_opts=args.get("conn_opts"))
    r.locals["nbd"] = svc
    try:
        svc.attach(args["ctl"], args["main_pid"])
    except OSError as exc:
        log.error("nbd reactor %d: cannot attach the fd channel: %s", r.index, exc)
        # leave this reactor as it was: nothing to undo here
        svc.stop(lambda: finish(-(exc.errno or errno.EIO), None, f"fd channel: {exc}"))
        return
    svc.started_here = True
    finish()


@_op("start_undo")
def _op_start_undo(args, finish) -> None:
    """Undo of a start that succeeded here: stop what the start step set up (not the main
    reactor's server, which its caller set up and tears down itself)."""
    svc = current()
    if svc is None or not svc.started_here:
        finish()
        return
    svc.stop(finish)


@_op("stop")
def _op_stop(args, finish) -> None:
    svc = current()
    if svc is None:
        finish()
        return
    svc.stop(finish)


@_op("export_add")
def _op_export_add(args, finish) -> None:
    svc = current()
    if svc is None:
        finish(-errno.ENODEV, None, "NBD server not running")
        return
    try:
        e = BdevExport(args["bdev_name"], args["export_name"], readonly=args["readonly"])
    except OSError as exc:
        finish(-(exc.errno or errno.EIO), None, str(exc.strerror or exc))
        return
    except ValueError as exc:          # what the bdev is cannot be exported (its size...)
        finish(-errno.EINVAL, None, str(exc))
        return
    try:
        svc.exports.add(e)
    except ValueError as exc:          # the name is taken on this reactor
        finish(-errno.EEXIST, None, str(exc))
        return
    finish()


@_op("export_remove")
def _op_export_remove(args, finish) -> None:
    svc = current()
    if svc is not None and svc.exports.lookup(args["export_name"]) is not None \
            and args["export_name"] in [e.name for e in svc.exports]:
        svc.target.remove_export(args["export_name"])
    finish()


@_op("info")
def _op_info(args, finish) -> None:
    svc = current()
    finish(0, svc.info() if svc is not None else None)
