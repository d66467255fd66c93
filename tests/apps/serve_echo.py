"""A second protocol on targets/serve, for the process-mode framework test: "echo" answers
every line with a JSON object naming the reactor that serves the connection, the meta it
was given and the line (the line "hold" stays in flight until the server shuts the
connection down, so a graceful stop can be told from a hard one).  It shares the reactors with NBD and contains no NBD code.

Test RPCs: ``test_echo_start {listen: [{address, meta}]}``, ``test_echo_listen
{address, meta}``, ``test_echo_connections``, ``test_echo_stop``.  Run as
``python tests/apps/serve_echo.py MASK SOCK``; child reactors import this file as
__mp_main__, so the protocol is registered in every process."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import reactor as rx  # noqa: E402
from reactor.app import App  # noqa: E402
from reactor.rpc import Param, rpc_method  # noqa: E402
from targets import serve  # noqa: E402
import targets.nbd.rpc  # noqa: E402,F401  (NBD beside it, on the same reactors)


class EchoConnection:
    """Contract 1, minimally: line in, JSON line out; graceful shutdown finishes the
    replies queued, then closes."""

    def __init__(self, sock, meta):
        sock.setblocking(False)
        self.sock = sock
        self.meta = meta
        self.name = meta["conn_name"]
        self.inbuf = b""
        self.out = b""
        self.closing = False
        self.held = b""
        self.done = False
        self.stats = {"requests": 0, "bytes_read": 0, "bytes_written": 0}

    def fileno(self):
        return self.sock.fileno() if self.sock is not None else -1

    def wants_read(self):
        return self.sock is not None and not self.closing

    @property
    def send_blocked(self):
        return bool(self.out) and self.sock is not None

    def needs_poll(self):
        return not self.done and (self.closing or b"\n" in self.inbuf)

    def poll(self):
        if self.done:
            return 0
        work = 0
        if not self.closing:
            try:
                got = self.sock.recv(65536)
                if not got:
                    self.closing = True
                self.inbuf += got
                self.stats["bytes_read"] += len(got)
                work += 1
            except BlockingIOError:
                pass
            except OSError:
                self.abort("recv failed")
                return 1
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            self.stats["requests"] += 1
            reply = json.dumps({"reactor": rx.current_reactor().index, "meta": self.meta,
                                "line": line.decode()}).encode() + b"\n"
            if line == b"hold":     # "in flight" until the server shuts the connection down
                self.held = reply
            else:
                self.out += reply
            work += 1
        if self.out:
            try:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
                self.stats["bytes_written"] += n
            except BlockingIOError:
                pass
        if self.closing and not self.out:
            self.abort("closed")
            work += 1
        return work

    def shutdown(self, reason):
        self.closing = True
        self.out += self.held       # the held request completes: graceful means answered
        self.held = b""

    def abort(self, reason):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.done = True

    def info(self):
        return {"peer": self.meta.get("peer"), "listen": self.meta.get("listen")}


class EchoContext:
    def __init__(self, server):
        self.server = server

    def make(self, sock, meta):
        return EchoConnection(sock, meta)


serve.register_protocol("echo", EchoContext)


def _answer(request):
    return lambda rc, msg: request.error(rc, msg) if rc else request.result(True)


@rpc_method("test_echo_start", params=[Param("listen", list)])
def _start(request, params):
    """Test only: start the echo protocol with these listeners."""
    serve.start("echo", _answer(request),
                listen=[(x["address"], x.get("meta") or {}) for x in params["listen"]])


@rpc_method("test_echo_listen", params=[Param("address", str), Param("meta", dict)])
def _listen(request, params):
    """Test only: one more listener, at runtime."""
    try:
        lst = serve.current("echo").listen(params["address"], params["meta"])
    except (OSError, ValueError) as exc:
        request.error(-22, str(exc))
        return
    request.result(lst.display)


@rpc_method("test_echo_connections")
def _connections(request, params):
    """Test only: serve.get_connections("echo")."""
    serve.get_connections("echo", lambda rc, msg, infos: request.error(rc, msg) if rc
                          else request.result(infos))


@rpc_method("test_echo_stop")
def _stop(request, params):
    """Test only: stop the echo protocol."""
    serve.stop("echo", _answer(request))


if __name__ == "__main__":
    mask, sock = sys.argv[1], sys.argv[2]
    sys.exit(App(mask, rpc_socket=sock).run())
