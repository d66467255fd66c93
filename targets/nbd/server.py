"""`NbdTarget` (the connections one reactor serves) and `NbdLoop` (a standalone
selectors/epoll loop driving listeners + a target, used by the tests and `python -m
targets.nbd`; no reactor dependency).

Reactor integration contract (what a reactor poller does with a target):

    busy = target.poll()               # never blocks; 0 = idle
    ...when the whole reactor is idle and wants to sleep:
    for fd, events in target.interest().items(): register fd in epoll for events
        (events is a mask of selectors.EVENT_READ / EVENT_WRITE; fds come and go as
        connections open and close, so diff against what is registered)
    sleep; on wake, call poll() again.

Backend completions that arrive from the backend's own poller only queue replies; the
next `poll()` sends them (the backend poller reported work, so the reactor did not sleep).
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
from typing import Callable, Iterable, Optional, Sequence, Union

from .backend import Export, ExportTable
from .connection import Connection
from .listener import Listener

log = logging.getLogger("ringstack.nbd")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class NbdTarget:
    """The NBD connections served by one reactor (one thread of execution)."""

    def __init__(self, exports: Union[ExportTable, Iterable[Export]], **conn_opts):
        self.exports = exports if isinstance(exports, ExportTable) else ExportTable(exports)
        self._conn_opts = conn_opts
        self.connections: list[Connection] = []
        self._seq = 0

    def add_connection(self, sock: socket.socket, peer: object = None) -> Connection:
        """Adopt a connected socket (usable directly as a Listener placement callback)."""
        self._seq += 1
        conn = Connection(sock, self.exports, name=f"c{self._seq}", **self._conn_opts)
        self.connections.append(conn)
        return conn

    def poll(self) -> int:
        work = 0
        reap = False
        for c in self.connections:
            work += c.poll()
            if c.done:
                reap = True
        if reap:
            self.connections = [c for c in self.connections if not c.done]
        return work

    def interest(self) -> list:
        """[(fd, events, owner)] for connections waiting on their socket; events is a mask of
        EVENT_READ / EVENT_WRITE.  A connection closes its own fd when it ends and the
        number may be reused by a later connection, so key registrations by (fd, owner):
        when the owner of an fd changes, unregister and register again."""
        out = []
        for c in self.connections:
            fd = c.fileno()
            if fd < 0:
                continue
            ev = (EVENT_READ if c.wants_read() else 0) | (EVENT_WRITE if c.wants_write() else 0)
            if ev:
                out.append((fd, ev, c))
        return out

    def remove_export(self, name: str) -> None:
        """Stop exporting `name`: in-flight requests get ESHUTDOWN and its connections close."""
        self.exports.remove(name)
        for c in self.connections:
            if c.export_name == name:
                c.detach("export removed")

    def shutdown(self) -> None:
        """Graceful: every connection finishes its in-flight requests, then closes."""
        for c in self.connections:
            c.shutdown()

    def abort(self) -> None:
        for c in self.connections:
            c.abort("server stopped")


class NbdLoop:
    """A standalone single-threaded loop: listeners + one target + extra pollers.

    `pollers` are callables returning work done (e.g. `MemoryExport.poll`).  The loop
    spins while there is work and sleeps in epoll when an iteration found none.
    `stop()` may be called from another thread or a signal handler.
    """

    def __init__(self, exports, listen: Union[str, Sequence[str]] = (),
                 pollers: Sequence[Callable[[], int]] = (), **conn_opts):
        self.target = NbdTarget(exports, **conn_opts)
        self.pollers = list(pollers)
        self._sel = selectors.DefaultSelector()
        self._registered: dict = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, EVENT_READ, None)
        self._stopping = False
        self.listeners: list[Listener] = []
        if isinstance(listen, str):
            listen = [listen]
        try:
            for addr in listen:
                lst = Listener(addr, self.target.add_connection)
                self.listeners.append(lst)
                self._sel.register(lst, EVENT_READ, None)
        except BaseException:
            self.close()
            raise

    def run_once(self, timeout: Optional[float] = None) -> int:
        """One pass; if it found no work, wait up to `timeout` (None = until an fd is ready)."""
        work = 0
        for p in self.pollers:
            work += p()
        for lst in self.listeners:
            work += lst.poll()
        work += self.target.poll()
        if work or self._stopping:
            return work
        self._update_interest()
        for key, _ in self._sel.select(timeout):
            if key.fileobj == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        return 0

    def _update_interest(self) -> None:
        want = {fd: (ev, owner) for fd, ev, owner in self.target.interest()}
        reg = self._registered
        sel = self._sel
        for fd in list(reg):
            w = want.get(fd)
            if w is None or w[1] is not reg[fd][1]:
                sel.unregister(fd)        # tolerates an fd the owner already closed
                del reg[fd]
        for fd, (ev, owner) in want.items():
            old = reg.get(fd)
            if old is None:
                sel.register(fd, ev)
            elif old[0] != ev:
                sel.modify(fd, ev)
            reg[fd] = (ev, owner)

    def run(self, drain_timeout: float = 5.0) -> None:
        """Serve until `stop()`; then stop accepting, let connections finish in-flight
        requests (bounded by `drain_timeout`), and close everything."""
        import time
        while not self._stopping:
            self.run_once(None)
        for lst in self.listeners:
            try:
                self._sel.unregister(lst)
            except (KeyError, ValueError):
                pass
            lst.close()
        self.target.shutdown()
        deadline = time.monotonic() + drain_timeout
        while self.target.connections and time.monotonic() < deadline:
            work = sum(p() for p in self.pollers) + self.target.poll()
            if not work:
                self._update_interest()
                self._sel.select(0.01)
        self.target.abort()
        self.close()

    def stop(self) -> None:
        """Ask `run()` to return (thread- and signal-safe)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        for lst in self.listeners:
            lst.close()
        self.listeners = []
        self.target.abort()
        try:
            self._sel.close()
        except Exception:
            pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
