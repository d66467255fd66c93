"""One protocol's server on one reactor: `Server` (``serve.current(name)``).

Every protocol that registered a name ("nbd", "iscsi") gets, on every reactor where it
runs, one `Server` holding:

* the protocol's per-reactor context (``server.ctx``, made by the protocol's
  ``make_context(server)`` when the server starts on that reactor), whose
  ``make(sock, meta)`` turns an accepted socket into a connection (docs/targets.md,
  Contract 1);
* one epoll instance holding every fd the server serves here (connections; on the main
  reactor its listeners and the fd-passing control socket; on the others their end of
  the fd-passing channel), and one period-0 poller registered with
  ``fd=epoll.fileno()``.  A sleeping reactor therefore wakes when any of those fds is
  ready, and an idle reactor sleeps: the poller is fd-driven, so it does not keep the
  loop awake.  While the reactor runs, each pass does one ``epoll.poll(0)`` (every
  EPOLL_EVERY passes while some connection is busy) plus a ``poll()`` of every
  connection that has work without new readiness (``needs_poll()``: requests in
  flight, replies queued, buffered input).  Idle connections cost nothing per pass.
  Each connection is registered for EPOLLIN only while ``wants_read()`` and for
  EPOLLOUT only while ``send_blocked``, so a slow or vanished client neither blocks nor
  spins the reactor;
* the connections (``server.connections``) and counters (``server.stats``; a closed
  connection's counters are added to them when it is dropped).

Placement: the main reactor accepts on every listener of the server, then gives each new
socket to the next reactor in turn (itself included).  A socket for another reactor
travels as an fd (SCM_RIGHTS) with its connection's meta (JSON) over a Unix
SOCK_SEQPACKET connection that the other reactor opened, when the server started, to an
*abstract* Unix address (``\\0ringstack.<pid>.<name>.<n>.<128 random bits>``, unguessable,
so another user cannot take it first) the main reactor listens on: there is no file to
create, chmod or remove, and nothing is left behind on any exit path (the name
disappears with the socket, even after SIGKILL).  Abstract names have no file
permissions, so both ends check the peer with SO_PEERCRED: the main reactor accepts only
its own reactor processes, a reactor only its launcher.  If a reactor's channel is full
or gone, the connection is served on the main reactor instead (never dropped, never a
blocking send).

Hand-over (`hand_over`): an engine may move its socket to another reactor (iSCSI: a
login joining a session that lives there); the fd, its meta and the bytes already read
travel over the same channels (which are two-way), another reactor's through the main
reactor, and the receiving reactor's ``ctx.make`` continues with them.

Deadlines: a connection's optional ``deadline()`` (Contract 1) is read after each of its
polls; one timed poller per server is armed to the earliest, so idle timers (iSCSI's
login timeout and NOP-In) fire while the reactor sleeps in between.

Stop (`stop(finish)`): listeners and channels close, every connection gets
``shutdown(reason)`` (read nothing more, finish in-flight, close), and those still open
after STOP_DRAIN_S get ``abort(reason)``; then the poller goes, the context's
``close()`` runs and ``finish()`` is called.
"""
from __future__ import annotations

import atexit
import base64
import errno
import itertools
import json
import logging
import os
import select
import secrets
import socket
import struct
import time
from typing import Optional

import reactor as rx

from .listener import Listener, recv_fd, send_fd, socket_from_fd

log = logging.getLogger("ringstack.serve")

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
#: How long a stop waits for connections to finish in-flight requests before cutting them.
STOP_DRAIN_S = 5.0
#: fds received per pass from the fd-passing channel (bounded: a flood cannot starve I/O).
RECV_FDS_PER_POLL = 32
#: While connections are busy, check epoll (listeners, fd channel, idle connections) once
#: every this many passes: one syscall less per pass on the busy path.
EPOLL_EVERY = 8
#: Bytes a connection may carry along when it is handed over (what its engine already
#: read: an iSCSI Login PDU is at most 48 + 8192 + digests), and the size of one record
#: on the fd channels (meta JSON with those bytes in base64).
HANDOVER_MAX_BYTES = 64 * 1024
CHANNEL_RECORD_MAX = 128 * 1024
#: A deadline timer fires at least this late (µs): a due deadline never spins the loop.
TIMER_MIN_US = 1000
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


def _peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return peer if isinstance(peer, str) else ""


def _locals_key(name: str) -> str:
    return f"serve.{name}"


def current(name: str) -> Optional["Server"]:
    """This reactor's `Server` of protocol `name`, or None when it is not running here."""
    return rx.current_reactor().locals.get(_locals_key(name))


class Server:
    """Protocol `name` on this reactor (see the module docstring)."""

    def __init__(self, name: str, make_context, opts: Optional[dict] = None):
        r = rx.current_reactor()
        self.name = name
        self.reactor = r
        self.index = r.index
        self.opts = dict(opts or {})
        self.thread = rx.get_thread()
        self.connections: list = []
        self.stats = {"connections_accepted": 0}
        self.ep = select.epoll()
        self._fds: dict = {}        # fd -> (owner, registered mask)
        self._conn_fd: dict = {}    # connection -> the fd it was registered under
        self._conn_seq = itertools.count(1)
        self._pass = 0
        self._hot = 0
        self.listeners: list[Listener] = []   # main reactor only
        self.ctl = None             # main: abstract listening socket for the channels
        self.ctl_name = None
        self.peers: dict = {}       # main: reactor index -> channel socket
        self.rr: list = [self.index]
        self._rr_pos = 0
        self.chan = None            # other reactors: channel to the main reactor
        self.stopping = None        # the finish callback, while stopping
        self.stop_waiters: list = []
        self.started_here = False   # set up by the "start" step (not by its caller)
        self.stopped = False
        self._deadline = 0
        self._reason = "server shutting down"
        self.stop_poller = None
        self._deadline_of: dict = {}   # connection -> its deadline() (Contract 1, optional)
        self._timer = None          # one timed poller, armed to the earliest deadline
        self._timer_at = None       # ... (time.monotonic() seconds)
        self.poller = rx.poller_register(self._poll, None, 0, f"serve_{name}", fd=self.ep.fileno())
        self.ctx = None
        try:
            self.ctx = make_context(self)
        except BaseException:
            rx.poller_unregister(self.poller)
            self.ep.close()
            raise
        r.locals[_locals_key(name)] = self

    # ------------------------------------------------------------------ fds
    def _register(self, fd: int, owner, mask: int) -> None:
        if fd in self._fds:          # a closed owner's number, reused: forget it
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass
        self._fds[fd] = (owner, mask)
        if mask:
            self.ep.register(fd, mask)

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
    def add_connection(self, sock: socket.socket, meta: dict) -> None:
        """Adopt an accepted socket: ``ctx.make(sock, meta)`` builds the connection."""
        self.stats["connections_accepted"] += 1
        if self.stopping is not None:
            sock.close()
            return
        meta = dict(meta)
        meta["conn_name"] = f"r{self.index}.c{next(self._conn_seq)}"
        try:
            conn = self.ctx.make(sock, meta)
        except Exception:
            log.exception("%s reactor %d: the connection factory failed; dropping the client",
                          self.name, self.index)
            sock.close()
            return
        self.connections.append(conn)
        fd = conn.fileno()
        if fd >= 0:
            self._conn_fd[conn] = fd
            self._set_mask(fd, conn, (_IN if conn.wants_read() else 0)
                           | (_OUT if conn.send_blocked else 0))
        dl = getattr(conn, "deadline", None)
        if dl is not None:
            self._deadline_of[conn] = dl
            self._note_deadline(dl())

    def hand_over(self, sock: socket.socket, meta: dict, received: bytes, dest: int) -> bool:
        """Move a served connection's socket to reactor `dest` (a protocol engine calls
        it, e.g. an iSCSI login joining a session that lives there): the fd, `received`
        (bytes the engine already read, handed to the new engine as ``meta["received"]``)
        and `meta` travel over the fd channels (another reactor's go via the main
        reactor), and ``ctx.make`` builds the connection there with
        ``meta["handed_over_from"]`` set.  True: the socket is gone from here (closed;
        the engine must drop it without closing it); False: nothing changed (no such
        reactor, its channel full or gone, the bytes too many), keep serving here."""
        if len(received) > HANDOVER_MAX_BYTES or not 0 <= dest < self.reactor.n_reactors:
            return False
        if dest == self.index:
            return False
        meta = dict(meta, handover={"to": dest, "from": self.index,
                                    "data": base64.b64encode(received).decode()})
        try:
            raw = json.dumps(meta).encode()
        except (TypeError, ValueError):
            return False
        ch = self.peers.get(dest) if self.chan is None else self.chan
        if ch is None:
            return False
        try:
            send_fd(ch, sock.fileno(), raw)
        except OSError as exc:
            log.warning("%s reactor %d: cannot hand a connection to reactor %d: %s",
                        self.name, self.index, dest, exc)
            return False
        self._unregister(sock.fileno())
        sock.close()
        return True

    def _adopt(self, fd: int, raw: bytes) -> None:
        """A socket from an fd channel: a new client or a handed-over connection."""
        try:
            meta = json.loads(raw) if raw else {}
            if not isinstance(meta, dict):
                meta = {}
            ho = meta.pop("handover", None)
            if isinstance(ho, dict):
                meta["received"] = base64.b64decode(ho.get("data", ""))
                meta["handed_over_from"] = ho.get("from")
            self.add_connection(socket_from_fd(fd), meta)
        except (OSError, ValueError) as exc:
            log.error("%s reactor %d: cannot adopt a connection: %s", self.name, self.index, exc)
            try:
                os.close(fd)
            except OSError:
                pass

    def _route(self, fd: int, raw: bytes) -> None:
        """Main reactor: a connection another reactor handed over, for `dest`."""
        try:
            dest = json.loads(raw).get("handover", {}).get("to", self.index)
        except (ValueError, AttributeError):
            dest = self.index
        ch = self.peers.get(dest) if dest != self.index else None
        if ch is not None:
            try:
                send_fd(ch, fd, raw)
                os.close(fd)
                return
            except OSError as exc:
                # served here instead: its protocol answers what it can (an iSCSI join
                # then finds no session here and says so)
                log.warning("%s: forwarding a connection to reactor %d failed (%s)",
                            self.name, dest, exc)
        self._adopt(fd, raw)

    # ------------------------------------------------------------------ deadlines
    def _note_deadline(self, at) -> None:
        """A connection needs a poll() by `at` (monotonic s): arm the timer earlier if
        needed.  A deadline that moved later lets the timer fire early, harmlessly."""
        if at is None or (self._timer_at is not None and at >= self._timer_at):
            return
        if self._timer is not None:
            rx.poller_unregister(self._timer)
        delay_us = max(TIMER_MIN_US, int((at - time.monotonic()) * 1e6) + TIMER_MIN_US)
        self._timer = rx.poller_register(self._on_timer, None, delay_us,
                                         f"serve_{self.name}_deadline")
        self._timer_at = at

    def _on_timer(self, _arg) -> int:
        """Poll the connections whose deadline passed, then re-arm for the next one."""
        rx.poller_unregister(self._timer)
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        work = 0
        reap = False
        for c, dl in list(self._deadline_of.items()):
            d = dl()
            if d is not None and d <= now and not c.done:
                work += c.poll()
                if c.done:
                    reap = True
                    continue
                fd = self._conn_fd.get(c, -1)
                self._update_interest(c, fd, (_IN if c.wants_read() else 0)
                                      | (_OUT if c.send_blocked else 0))
                d = dl()
            self._note_deadline(d)
        if reap:
            self._reap()
        return work

    def _place(self, sock: socket.socket, peer, listener: Listener) -> None:
        """Listener callback (main reactor): round-robin over the reactors."""
        meta = dict(listener.meta, listen=listener.display, peer=_peer_text(peer))
        rr = self.rr
        dest = rr[self._rr_pos % len(rr)]
        self._rr_pos += 1
        if dest != self.index:
            ch = self.peers.get(dest)
            if ch is not None:
                try:
                    send_fd(ch, sock.fileno(), json.dumps(meta).encode())
                    sock.close()
                    return
                except (BlockingIOError, InterruptedError):
                    log.warning("%s: reactor %d's channel is full; serving the client on reactor %d",
                                self.name, dest, self.index)
                except OSError as exc:
                    log.error("%s: reactor %d's channel failed (%s); no longer placing there",
                              self.name, dest, exc)
                    self._drop_peer(dest)
        self.add_connection(sock, meta)

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
        # idle connections waking up) is then checked every EPOLL_EVERY passes only.
        if not self._hot or not self._pass % EPOLL_EVERY:
            for fd, _ev in self.ep.poll(0):
                ent = fds.get(fd)
                if ent is None:
                    continue
                owner = ent[0]
                if owner.__class__ is Listener:
                    work += owner.poll()
                elif owner is self.chan:
                    work += self._recv_fds()
                elif owner is self.ctl:
                    work += self.accept_peers()
                elif owner.__class__ is socket.socket:
                    # a peer channel: connections it hands over, or its EOF
                    work += self._recv_peer(owner)
                else:
                    if ready is None:
                        ready = set()
                    ready.add(owner)
        conns = self.connections
        hot = 0
        if conns:
            reap = False
            conn_fd = self._conn_fd
            deadline_of = self._deadline_of
            for c in conns:
                if (ready is not None and c in ready) or c.needs_poll():
                    work += c.poll()
                    if c.done:
                        reap = True
                        continue
                    dl = deadline_of.get(c)
                    if dl is not None:
                        at = dl()
                        if at is not None and (self._timer_at is None or at < self._timer_at):
                            self._note_deadline(at)
                    if c.needs_poll():
                        hot += 1
                    # epoll interest: readable while it wants input, writable while the
                    # socket refuses replies
                    fd = conn_fd.get(c, -1)
                    want = (_IN if c.wants_read() else 0) | (_OUT if c.send_blocked else 0)
                    ent = fds.get(fd)
                    if ent is None or ent[0] is not c or ent[1] != want:
                        self._update_interest(c, fd, want)
                elif c.done:
                    reap = True
            if reap:
                self._reap()
        self._hot = hot
        if self.stopping is not None and not self.connections:
            self._finish_stop()
        return work

    def _update_interest(self, c, fd: int, want: int) -> None:
        if fd >= 0 and c.fileno() == fd:
            self._set_mask(fd, c, want)
            return
        # The connection closed its socket (it waits for backend ops to return): forget
        # its registration, unless the number already belongs to a newer owner.
        ent = self._fds.get(fd)
        if ent is not None and ent[0] is c:
            self._unregister(fd)
        self._conn_fd[c] = -1

    def _reap(self) -> None:
        keep = []
        st = self.stats
        for c in self.connections:
            if c.done:
                self._deadline_of.pop(c, None)
                fd = self._conn_fd.pop(c, -1)
                ent = self._fds.get(fd)
                if ent is not None and ent[0] is c:
                    self._unregister(fd)
                for k, v in c.stats.items():
                    if isinstance(v, int):
                        st[k] = st.get(k, 0) + v
            else:
                keep.append(c)
        self.connections = keep

    def _recv_fds(self) -> int:
        n = 0
        while n < RECV_FDS_PER_POLL and self.chan is not None:
            try:
                got = recv_fd(self.chan, CHANNEL_RECORD_MAX)
            except EOFError:
                self._close_chan()
                break
            except OSError as exc:
                log.error("%s reactor %d: fd channel: %s", self.name, self.index, exc)
                break
            if got is None:
                break
            fd, raw = got
            n += 1
            self._adopt(fd, raw)
        return n

    def _recv_peer(self, ch: socket.socket) -> int:
        """Main reactor: what a reactor's channel brought (bounded per pass)."""
        n = 0
        while n < RECV_FDS_PER_POLL:
            try:
                got = recv_fd(ch, CHANNEL_RECORD_MAX)
            except EOFError:
                self._peer_event(ch)
                break
            except OSError as exc:
                log.error("%s: a reactor's fd channel: %s", self.name, exc)
                if exc.errno != errno.EPROTO:       # broken, not one bad record
                    self._peer_event(ch)
                break
            if got is None:
                break
            n += 1
            self._route(*got)
        return n

    def _close_chan(self) -> None:
        if self.chan is not None:
            self._unregister(self.chan.fileno())
            self.chan.close()
            self.chan = None

    def _peer_event(self, ch: socket.socket) -> None:
        for index, s in list(self.peers.items()):
            if s is ch:
                log.info("%s: reactor %d closed its fd channel", self.name, index)
                self._drop_peer(index)

    # ------------------------------------------------------------------ main reactor
    def listen(self, address: str, meta: Optional[dict] = None) -> Listener:
        """Main reactor: accept on `address` (Unix path or host:port); every connection it
        accepts gets `meta` (plus "listen", "peer" and "conn_name").  Raises ValueError
        (bad address) or OSError (cannot bind), changing nothing."""
        if self.stopping is not None:
            raise OSError(errno.ESHUTDOWN, f"{self.name} server is stopping")
        holder: list = []
        lst = Listener(address, lambda sock, peer: self._place(sock, peer, holder[0]), meta=meta)
        holder.append(lst)
        atexit.register(lst.close)   # a socket file goes on every way out
        self.listeners.append(lst)
        self._register(lst.fileno(), lst, _IN)
        return lst

    def unlisten(self, lst: Listener) -> None:
        """Stop accepting on `lst` (connections it accepted stay)."""
        if lst in self.listeners:
            self.listeners.remove(lst)
            self._unregister(lst.fileno())
        lst.close()
        try:
            atexit.unregister(lst.close)
        except Exception:
            pass

    def open_channel(self) -> None:
        """Main reactor: the abstract socket the other reactors connect their fd channels
        to (nothing when this is the only reactor)."""
        if self.reactor.n_reactors <= 1 or self.ctl is not None:
            return
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # The name carries 128 random bits: another local user could otherwise bind the
        # next predictable name first and make the start fail (EADDRINUSE).
        self.ctl_name = (f"\0ringstack.{os.getpid()}.{self.name}.{next(_seq)}."
                         f"{secrets.token_hex(16)}")
        try:
            ctl.bind(self.ctl_name)
            ctl.listen(self.reactor.n_reactors)
        except OSError:
            ctl.close()
            self.ctl_name = None
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
                log.error("%s: accepting a reactor channel failed: %s", self.name, exc)
                break
            n += 1
            index = pids.get(_peer_pid(s))
            if index is None:
                log.error("%s: refused an fd channel from pid %d (not a reactor of this app)",
                          self.name, _peer_pid(s))
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
                raise OSError(errno.EPERM, f"fd channel peer is pid {_peer_pid(s)}, "
                              f"not the launcher {main_pid}")
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self.chan = s
        self._register(s.fileno(), s, _IN)

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        """This reactor's part of get_connections: every connection (name, stats, and the
        connection's own ``info()`` when it has one) and the counters."""
        conns = []
        totals = dict(self.stats)
        for c in self.connections:
            cs = c.stats
            ent = {"name": c.name, "stats": dict(cs)}
            more = getattr(c, "info", None)
            if more is not None:
                ent.update(more())
            conns.append(ent)
            for k, v in cs.items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
        totals["connections_open"] = len(self.connections)
        totals["polls"] = self._pass
        return {"reactor": self.index, "lcore": self.reactor.core, "connections": conns,
                "stats": totals,
                "listeners": [{"address": lst.address, "display": lst.display,
                               "meta": dict(lst.meta)} for lst in self.listeners]}

    # ------------------------------------------------------------------ stop
    def stop(self, finish, reason: str = "server shutting down") -> None:
        """Stop accepting, let every connection finish its in-flight requests (at most
        STOP_DRAIN_S), close everything, then ``finish()``."""
        if self.stopping is not None:
            # a second stop while one is under way (or done) finishes with the first
            if self.stopped:
                rx.send_msg(rx.get_thread(), finish)
            else:
                self.stop_waiters.append(finish)
            return
        for lst in list(self.listeners):
            self.unlisten(lst)
        if self.ctl is not None:
            self._unregister(self.ctl.fileno())
            self.ctl.close()
            self.ctl = None
        for index in list(self.peers):
            self._drop_peer(index)
        self._close_chan()
        self.stopping = finish
        self._reason = reason
        self._deadline = rx.now_ns() + int(STOP_DRAIN_S * 1e9)
        for c in list(self.connections):
            c.shutdown(reason)
        self.stop_poller = rx.poller_register(self._stop_deadline, None, 100_000,
                                              f"serve_{self.name}_stop")
        if not self.connections:
            self._finish_stop()

    def _stop_deadline(self, _arg) -> int:
        if self.stopping is not None and not self.stopped and rx.now_ns() >= self._deadline:
            log.warning("%s reactor %d: %d connections did not finish in %.0f s; cutting them",
                        self.name, self.index, len(self.connections), STOP_DRAIN_S)
            for c in list(self.connections):
                c.abort(self._reason)
            self._reap()
            self.connections = []
            self._finish_stop()
            return 1
        return 0

    def _finish_stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        finish = self.stopping
        rx.poller_unregister(self.poller)
        if self._timer is not None:
            rx.poller_unregister(self._timer)
            self._timer = None
        if self.stop_poller is not None:
            rx.poller_unregister(self.stop_poller)
        for fd in list(self._fds):
            self._unregister(fd)
        self.ep.close()
        key = _locals_key(self.name)
        if self.reactor.locals.get(key) is self:
            del self.reactor.locals[key]
        close = getattr(self.ctx, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("%s reactor %d: closing the protocol context failed",
                              self.name, self.index)
        finish()
        for waiter in self.stop_waiters:
            waiter()
        self.stop_waiters = []

    def __repr__(self) -> str:
        return (f"<Server {self.name} reactor {self.index} connections={len(self.connections)}"
                f"{' stopping' if self.stopping is not None else ''}>")
