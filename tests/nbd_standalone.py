"""The standalone NBD test server: `NbdTarget` (a list of connections), `NbdLoop` (a
selectors/epoll loop driving listeners + a target + backend pollers, no reactors), the
command line that serves `MemoryExport`s with it, and `ServerProcess` (that command in a
child process, for the real-client tests).  Production NBD runs inside the reactors on
targets/serve; this loop exists so that the protocol engine can be driven by nbdinfo,
qemu, fio and the abuse tests without an app, a bdev layer or a second core.

  python tests/nbd_standalone.py --listen /tmp/nbd.sock --export disk0:64M [--export ro:1M:ro]
      [--block-min 512] [--async] [--reorder]

Prints one line "READY <uri> ..." on stdout once every listener is bound, then serves
until SIGTERM/SIGINT, after which it drains in-flight requests and removes its sockets.
"""
from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Optional, Sequence, Union

if __name__ == "__main__":      # run as a script: the project root and tests/ importable
    sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

from nbd_memory import MemoryExport  # noqa: E402
from targets.nbd.backend import Export, ExportTable  # noqa: E402
from targets.nbd.transmission import Connection  # noqa: E402
from targets.serve.listener import Listener  # noqa: E402
from tools.bdevperf import UsageError, parse_size  # noqa: E402
from tools.nbd_harness import ROOT, _stop, unix_uri  # noqa: E402

log = logging.getLogger("ringstack.nbd")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


def listener_uri(lst: Listener) -> str:
    if lst.path is not None:
        return f"nbd+unix:///?socket={lst.path}"
    return f"nbd://{lst.display}/"


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


# ---------------------------------------------------------------- the command line
def parse_export(spec: str, args) -> MemoryExport:
    """NAME:SIZE[:ro]"""
    parts = spec.split(":")
    if len(parts) < 2 or parts[2:] not in ([], ["ro"]):
        raise argparse.ArgumentTypeError(f"bad --export {spec!r}: expected NAME:SIZE[:ro]")
    try:
        size = parse_size(parts[1], "export size")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return MemoryExport(parts[0], size, readonly=parts[2:] == ["ro"],
                        description=f"memory export {parts[0]}",
                        block_min=args.block_min, block_preferred=max(args.block_min, 4096),
                        async_completion=args.async_completion or args.reorder,
                        reorder=args.reorder, can_multi_conn=not args.no_multi_conn)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nbd_standalone.py", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", action="append", required=True,
                    help="socket path or host:port (repeatable); TCP binds 127.0.0.1 unless a host is given")
    ap.add_argument("--export", action="append", required=True, metavar="NAME:SIZE[:ro]")
    ap.add_argument("--block-min", type=int, default=1)
    ap.add_argument("--async", dest="async_completion", action="store_true",
                    help="complete backend I/O on the next loop pass instead of inside the call")
    ap.add_argument("--reorder", action="store_true", help="complete each batch in reverse order")
    ap.add_argument("--no-multi-conn", action="store_true")
    ap.add_argument("--max-inflight", type=int, default=256)
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exports = [parse_export(s, args) for s in args.export]
    pollers = [e.poll for e in exports if e.async_completion]
    loop = NbdLoop(exports, args.listen, pollers=pollers, max_inflight=args.max_inflight)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    print("READY " + " ".join(listener_uri(lst) for lst in loop.listeners), flush=True)
    loop.run()
    return 0


# ---------------------------------------------------------------- in a child process
class ServerProcess:
    """This file's standalone server in a child process.

    with ServerProcess("/tmp/s.sock", ["disk0:64M"]) as srv: srv.uri("disk0")
    """

    def __init__(self, listen: str, exports: Sequence[str], extra: Sequence[str] = (),
                 python: str = sys.executable, ready_timeout: float = 20.0):
        self.listen = listen
        self.cmd = [python, os.path.abspath(__file__), "--listen", listen]
        for e in exports:
            self.cmd += ["--export", e]
        self.cmd += list(extra)
        self.ready_timeout = ready_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.uris: list[str] = []

    def start(self) -> "ServerProcess":
        # stderr goes to a file: a pipe nobody drains would block a chatty server.
        self._errfile = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self._errfile, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"server not ready after {self.ready_timeout}s: {self.cmd}")
                if sel.select(left):
                    line = self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"server exited ({self.proc.wait(5)}): {self._read_err()}")
                    if line.startswith("READY "):
                        self.uris = line.split()[1:]
                        return self
        except BaseException:
            self.stop()
            raise
        finally:
            sel.close()

    def uri(self, export: str = "") -> str:
        if "/" in self.listen or self.listen.startswith("unix:"):
            return unix_uri(os.path.abspath(self.listen.removeprefix("unix:")), export)
        return self.uris[0] + export

    def _read_err(self) -> str:
        f = getattr(self, "_errfile", None)
        if f is None:
            return ""
        f.seek(0)
        return f.read()

    def stop(self) -> str:
        """Stop (SIGTERM, bounded) and return what the server wrote on stderr."""
        if self.proc is None:
            return ""
        _stop(self.proc, timeout=15)
        self.proc = None
        err = self._read_err()
        self._errfile.close()
        self._errfile = None
        return err

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
