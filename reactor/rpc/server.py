"""The JSON-RPC 2.0 server: a Unix socket served from the owner's poll loop.

No threads, no asyncio: the main reactor calls :meth:`RpcServer.poll` from a poller, and sleeps
on :meth:`RpcServer.fileno` (an epoll fd that is readable whenever a listening or connected
socket needs attention) when it has nothing else to do.  Every socket is non-blocking; one
``poll()`` does a bounded amount of work (accepts, reads, requests dispatched, bytes sent) and
returns how much, 0 when idle, so the loop can account busy/idle time (SPDK's
``spdk_rpc_accept`` runs the same way from ``rpc_subsystem_poll``).

Wire behaviour (SPDK's lib/jsonrpc and lib/rpc, JSON-RPC 2.0):

* A connection carries a *stream* of JSON values; no newline or other framing is needed.  A
  value may be split across reads and one read may hold several values.  Each response is
  followed by ``\\n`` (SPDK does the same; clients skip whitespace).
* Responses go out **in request order per connection**, even when handlers complete out of
  order: each request takes a slot in the connection's queue, and slots are written only from
  the head.  Notifications (no ``id``) take no slot and get no response, errors included.
* A batch (array) gets one array response once all its members are done; an empty array is
  -32600; a batch of notifications gets no response.
* Errors: -32700 parse error (also for a value nested deeper than 64 levels, SPDK's
  limit; then the connection is closed once earlier responses are out: a byte stream has
  no resync point), -32600 for an id JSON cannot carry back (1e400) answered with id null, -32600 invalid request, -32601 method not found, -32602
  invalid parameters (message names the parameter), -32603 internal error (a handler raised;
  the exception is logged and the server keeps serving), -1 method invalid in the current state
  (SPDK's SPDK_JSONRPC_ERROR_INVALID_STATE wording), and a handler's own ``-errno`` codes.
* Backpressure: a connection with many unanswered requests or much unsent output is not read
  until it drains, so one client cannot make the server buffer without bound.

Socket file: created 0600.  Like SPDK's ``spdk_rpc_listen`` the server takes an exclusive
``flock`` on ``<path>.lock``; if another live server holds it (or answers on the path) start-up
fails with :class:`RpcServerError`; a stale socket file is removed.  ``close()`` removes the
socket and lock files.
"""
from __future__ import annotations

import codecs
import errno
import fcntl
import json
import logging
import math
import os
import re
import select
import socket
import stat
from collections import deque
from typing import Any

from reactor.rpc.dispatch import (ERROR_MESSAGES, INTERNAL_ERROR, INVALID_PARAMS,  # noqa: F401
                                  INVALID_REQUEST, INVALID_STATE, METHOD_NOT_FOUND,
                                  MSG_NEEDS_RUNTIME, MSG_NEEDS_STARTUP, PARSE_ERROR, Dispatcher,
                                  Reply, RpcRequest)
from reactor.rpc.registry import METHODS, RAW, RUNTIME, STARTUP, Method, MethodTable  # noqa: F401

log = logging.getLogger("ringstack.rpc")

DEFAULT_SOCKET = "/var/tmp/spdk.sock"   # SPDK_DEFAULT_RPC_ADDR

# Bounds on the work of one poll() and on what one connection may hold.
RECV_SIZE = 64 * 1024
MAX_RECVS_PER_POLL = 4            # per connection
MAX_REQUESTS_PER_POLL = 64        # per connection
MAX_ACCEPTS_PER_POLL = 16
MAX_SEND_PER_POLL = 4 * 1024 * 1024   # per connection
MAX_PENDING_SLOTS = 256           # unanswered requests before we stop reading
MAX_OUT_BYTES = 16 * 1024 * 1024  # unsent bytes before we stop reading
MAX_VALUE_BYTES = 32 * 1024 * 1024    # one JSON value (SPDK_JSONRPC_RECV_BUF_SIZE-like cap)
MAX_CONNS = 64                    # SPDK_JSONRPC_MAX_CONNS
MAX_ID_LEN = 128                  # SPDK_JSONRPC_ID_MAX_LEN
MAX_NESTING = 64                  # SPDK_JSON_MAX_NESTING_DEPTH: deeper is a parse error


class RpcServerError(Exception):
    """The server could not start (path in use, too long, not a socket, ...)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_STRUCT_RE = re.compile(r'["{}\[\]]')
_STRING_RE = re.compile(r'["\\]')
_SCALAR_END_RE = re.compile(r'[\s\[\]{},:"]')
_WS = " \t\r\n"


def _encode(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            + "\n").encode("utf-8")


class _Incomplete(Exception):
    pass


class _StreamParser:
    """Finds whole JSON values in a stream of text chunks.

    A lightweight scanner (brackets, strings and escapes; regex-driven, so it runs in C over the
    bulk of the text) finds where the next top-level value ends, carrying its state across
    chunks; only a complete value is handed to ``json.JSONDecoder.raw_decode``.  So a value
    split across any number of reads is joined once, and several values in one read come out
    one by one.  ``next()`` returns a decoded value, raises :class:`_Incomplete` when more input
    is needed, or raises ``ValueError`` for malformed input (a parse error: the stream cannot
    be resynchronised).
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""          # text not yet scanned (from self._pos)
        self._pos = 0
        self._pending: list[str] = []   # scanned pieces of an unfinished value
        self._pending_len = 0
        self._mode = None       # None (between values), "c" container, "s" string, "a" scalar
        self._depth = 0
        self._in_str = False
        self._esc = False

    def feed(self, data: bytes) -> None:
        text = self._utf8.decode(data)   # UnicodeDecodeError is a ValueError
        if self._pos:
            self._buf = self._buf[self._pos:]
            self._pos = 0
        self._buf += text

    def buffered(self) -> bool:
        """True if there is unscanned text (a value may be ready without reading more)."""
        return self._pos < len(self._buf)

    def next(self) -> Any:
        buf = self._buf
        i = self._pos
        n = len(buf)
        if self._mode is None:
            while i < n and buf[i] in _WS:
                i += 1
            self._pos = i
            if i >= n:
                self._buf, self._pos = "", 0
                raise _Incomplete
            c = buf[i]
            self._depth, self._in_str, self._esc = 0, False, False
            if c in "{[":
                self._mode = "c"
                scan_from = i
            elif c == '"':
                self._mode, self._in_str = "s", True
                scan_from = i + 1
            elif c in "-0123456789tfn":
                self._mode = "a"
                scan_from = i + 1
            else:
                raise ValueError(f"unexpected character {c!r}")
        else:
            scan_from = i
        start = i
        end = self._scan(buf, scan_from)
        if end < 0:
            piece = buf[start:]
            self._pending.append(piece)
            self._pending_len += len(piece)
            self._buf, self._pos = "", 0
            if self._pending_len > MAX_VALUE_BYTES:
                raise ValueError(f"JSON value larger than {MAX_VALUE_BYTES} bytes")
            raise _Incomplete
        if self._pending:
            self._pending.append(buf[start:end])
            text = "".join(self._pending)
            self._pending, self._pending_len = [], 0
        else:
            text = buf[start:end] if (start or end != n) else buf
        self._pos = end
        self._mode = None
        value, stop = _DECODER.raw_decode(text)   # JSONDecodeError is a ValueError
        if stop != len(text):
            raise ValueError("malformed JSON value")
        return value

    def _scan(self, buf: str, i: int) -> int:
        """Advance over ``buf`` from ``i``; return the end index of the value or -1 (the scan
        state is kept for the next chunk)."""
        if self._mode == "a":
            # A bare scalar ends at a delimiter; at the end of the buffer it may continue.
            m = _SCALAR_END_RE.search(buf, i)
            return m.start() if m else -1
        n = len(buf)
        while i < n:
            if self._esc:
                self._esc = False
                i += 1
                continue
            if self._in_str:
                m = _STRING_RE.search(buf, i)
                if m is None:
                    return -1
                i = m.end()
                if m.group() == "\\":
                    self._esc = True
                    continue
                self._in_str = False
                if self._mode == "s":
                    return i
                continue
            m = _STRUCT_RE.search(buf, i)
            if m is None:
                return -1
            ch = m.group()
            i = m.end()
            if ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
                if self._depth > MAX_NESTING:
                    # (json's decoder recurses: a deep value must never reach it)
                    raise ValueError(f"JSON nested deeper than {MAX_NESTING} levels")
            else:
                self._depth -= 1
                if self._depth <= 0:
                    return i
        return -1


class _Slot:
    """A place in a connection's response order."""

    __slots__ = ("ready", "payload")

    def __init__(self) -> None:
        self.ready = False
        self.payload: bytes | None = None


class _Batch(_Slot):
    __slots__ = ("parts", "remaining")

    def __init__(self, count: int) -> None:
        super().__init__()
        self.parts: list[bytes | None] = [None] * count
        self.remaining = count

    def fill(self, index: int, payload: bytes) -> bool:
        self.parts[index] = payload.rstrip(b"\n")
        self.remaining -= 1
        if self.remaining == 0:
            self.payload = b"[" + b",".join(p for p in self.parts if p is not None) + b"]\n"
            self.parts = []
            self.ready = True
            return True
        return False


class _Conn:
    """One accepted connection: its parser, its ordered response slots and its send queue."""

    def __init__(self, server: "RpcServer", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = _StreamParser()
        self.slots: deque[_Slot] = deque()
        self.out: deque[memoryview] = deque()
        self.out_bytes = 0
        self.eof = False            # peer sent EOF: answer what we have, then close
        self.closing = False        # parse error: stop reading, close once flushed
        self.closed = False
        self.ev_mask = 0

    # -- state --------------------------------------------------------------------------------
    def may_parse(self) -> bool:
        return (not self.closing and not self.closed and len(self.slots) < MAX_PENDING_SLOTS
                and self.out_bytes < MAX_OUT_BYTES)

    def may_read(self) -> bool:
        return not self.eof and self.may_parse()

    def finished(self) -> bool:
        """Nothing more will be read or written: close it."""
        if self.slots or self.out:
            return False
        if self.closing:
            return True
        return self.eof and not self.parser.buffered()

    # -- output -------------------------------------------------------------------------------
    def queue(self, payload: bytes) -> None:
        self.out.append(memoryview(payload))
        self.out_bytes += len(payload)

    def advance(self) -> None:
        """Move completed responses from the head of the slot queue to the send queue."""
        slots = self.slots
        while slots and slots[0].ready:
            slot = slots.popleft()
            if slot.payload is not None:
                self.queue(slot.payload)
        if self.out:
            self.flush()
        self.server._update(self)

    def flush(self, limit: int = MAX_SEND_PER_POLL) -> int:
        sent = 0
        while self.out and sent < limit:
            head = self.out[0]
            try:
                n = self.sock.send(head)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("RPC connection fd %d: send failed: %s", self.fd, exc)
                self.server._close_conn(self)
                return sent
            sent += n
            self.out_bytes -= n
            if n == len(head):
                self.out.popleft()
            else:
                self.out[0] = head[n:]
                break
        return sent


class RpcServer:
    """JSON-RPC server on a Unix socket, driven by :meth:`poll`.

    ``RpcServer(path, table=METHODS, state=RUNTIME)`` binds and listens immediately (raising
    :class:`RpcServerError` if the path is held by a live server).  The requests it parses run
    through a :class:`~reactor.rpc.dispatch.Dispatcher`: ``dispatcher=`` serves an existing
    one (the app's, which may have replayed a config before any socket existed); otherwise the
    server makes its own from ``table`` and ``state``.  ``listen=False`` takes the socket path
    (the lock, a stale socket removed; a live one refused) without binding it: :meth:`listen`
    opens it later.  Use it from one thread only: the owner's loop calls ``poll()``; handlers
    run inside ``poll()``; requests may be completed later from the same thread.
    """

    def __init__(self, path: str = DEFAULT_SOCKET, table: MethodTable | None = None,
                 state: int = RUNTIME, max_conns: int = MAX_CONNS,
                 dispatcher: Dispatcher | None = None, listen: bool = True) -> None:
        if dispatcher is None:
            dispatcher = Dispatcher(table, state)
        elif table is not None and table is not dispatcher.table:
            raise ValueError("pass a table or a dispatcher, not both")
        self.dispatcher = dispatcher
        self.path = os.path.abspath(path)
        self.max_conns = max_conns
        self._conns: dict[int, _Conn] = {}
        self._backlog: set[_Conn] = set()    # connections with text left to parse
        self._listen: socket.socket | None = None
        self._lock_fd = -1
        self._lock_path = self.path + ".lock"
        self._sock_ino: tuple[int, int] | None = None
        self._ep = select.epoll()
        try:
            self._claim()
            if listen:
                self.listen()
        except BaseException:
            self.close()
            raise

    # -- the dispatcher's state, for callers that hold the server ---------------------------
    @property
    def table(self) -> MethodTable:
        return self.dispatcher.table

    @property
    def state(self) -> int:
        return self.dispatcher.state

    @property
    def state_listeners(self) -> list:
        return self.dispatcher.state_listeners

    def set_state(self, state: int) -> None:
        """Switch between STARTUP and RUNTIME (``framework_start_init`` moves to RUNTIME)."""
        self.dispatcher.set_state(state)

    def call_local(self, method: str, params: Any, cb: Reply) -> RpcRequest:
        """Run ``method`` through this server's dispatcher (:meth:`Dispatcher.call`)."""
        return self.dispatcher.call(method, params, cb)

    # -- set-up / tear-down -------------------------------------------------------------------
    def _claim(self) -> None:
        """Take the path: the lock file, then a stale socket removed (a live one refused)."""
        path = self.path
        if len(os.fsencode(path)) >= 108:
            raise RpcServerError(f"RPC socket path too long ({len(path)} bytes, max 107): {path}")
        # The lock file often lives in a world-writable directory (/var/tmp): never follow
        # a symlink planted there (O_NOFOLLOW), and use only a regular file of our own
        # (a hard link to someone else's file is refused too).
        try:
            self._lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC
                                    | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            why = ("it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror)
            self._lock_path = ""       # not ours: never unlink it
            raise RpcServerError(f"cannot open lock file {path}.lock: {why}") from None
        st = os.fstat(self._lock_fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(self._lock_fd)
            self._lock_fd = -1
            self._lock_path = ""
            raise RpcServerError(f"cannot use lock file {path}.lock: not a regular file of this "
                                 f"user with one link")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            self._lock_path = ""       # not ours: do not unlink it on close
            raise RpcServerError(f"RPC Unix domain socket path {path} in use. "
                                 f"Specify another.") from None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise RpcServerError(f"{path} exists and is not a socket; not removing it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
            except OSError:
                live = False
            else:
                live = True
            finally:
                probe.close()
            if live:
                raise RpcServerError(f"RPC Unix domain socket path {path} in use "
                                     f"(a server answers there). Specify another.")
            log.info("removing stale RPC socket %s", path)
            os.unlink(path)

    @property
    def listening(self) -> bool:
        return self._listen is not None

    def listen(self) -> None:
        """Bind and listen on the claimed path (the socket file appears now)."""
        if self._listen is not None:
            return
        if self._ep.closed:
            raise RpcServerError("RPC server is closed")
        path = self.path
        # Bound under a private name, listening, then renamed into place: a client that sees
        # the path can connect at once (no window between bind and listen).
        tmp = f"{path}.{os.getpid()}.tmp"
        if len(os.fsencode(tmp)) >= 108:
            tmp = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)          # the socket file is born 0600
        try:
            if tmp != path:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(128)
            if tmp != path:
                os.rename(tmp, path)
        except OSError as exc:
            sock.close()
            if tmp != path:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise RpcServerError(f"cannot bind RPC socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        st = os.lstat(path)
        self._sock_ino = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self._listen = sock
        self._ep.register(sock.fileno(), select.EPOLLIN)

    def close(self) -> None:
        """Close every connection and the listening socket; remove the socket and lock files.
        Requests still in flight are dropped (their late completions are ignored)."""
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        if self._listen is not None:
            try:
                self._ep.unregister(self._listen.fileno())
            except (OSError, ValueError):
                pass
            self._listen.close()
            self._listen = None
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._sock_ino:
                    os.unlink(self.path)
            except OSError:
                pass
        if self._lock_fd >= 0:
            if self._lock_path:
                try:
                    os.unlink(self._lock_path)
                except OSError:
                    pass
            os.close(self._lock_fd)
            self._lock_fd = -1
        if not self._ep.closed:
            self._ep.close()

    @property
    def closed(self) -> bool:
        return self._ep.closed

    def __enter__(self) -> "RpcServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the loop's interface -----------------------------------------------------------------
    def fileno(self) -> int:
        """An epoll fd, readable when :meth:`poll` has socket work to do.  A reactor adds it to
        its own epoll set (or ``select``s on it) to sleep while the control plane is idle."""
        return self._ep.fileno()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def poll(self) -> int:
        """Do the socket work that is ready now, without blocking; return the amount done
        (connections accepted, requests dispatched, reads and sends), 0 when idle."""
        if self._ep.closed:
            return 0
        work = 0
        events = self._ep.poll(0)
        listen_fd = self._listen.fileno() if self._listen is not None else -1
        for fd, ev in events:
            if fd == listen_fd:
                work += self._accept()
                continue
            conn = self._conns.get(fd)
            if conn is None or conn.closed:
                continue
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and conn.may_read():
                work += self._read(conn)
            if conn.closed:
                continue
            if ev & select.EPOLLOUT and conn.out:
                if conn.flush():
                    work += 1
                if not conn.closed:
                    self._update(conn)
            if not conn.closed and ev & (select.EPOLLHUP | select.EPOLLERR) \
                    and (conn.eof or not conn.may_read()):
                # The peer is gone in both directions (HUP cannot be masked, so waiting would
                # spin): what it sent has been dispatched, answers cannot be delivered.
                self._close_conn(conn)
                work += 1
        if self._backlog:
            for conn in list(self._backlog):
                self._backlog.discard(conn)
                if not conn.closed:
                    work += self._parse(conn)
                    if not conn.closed:
                        self._update(conn)
        return work

    # -- connections --------------------------------------------------------------------------
    def _accept(self) -> int:
        n = 0
        while n < MAX_ACCEPTS_PER_POLL and self._listen is not None:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("RPC accept failed: %s", exc)
                break
            n += 1
            if len(self._conns) >= self.max_conns:
                log.error("RPC: too many connections (%d); refusing a new one", len(self._conns))
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(self, sock)
            self._conns[conn.fd] = conn
            conn.ev_mask = select.EPOLLIN
            self._ep.register(conn.fd, conn.ev_mask)
        return n

    def _close_conn(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self._backlog.discard(conn)
        try:
            self._ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass
        conn.slots.clear()
        conn.out.clear()

    def _update(self, conn: _Conn) -> None:
        """Re-arm epoll for what the connection now wants; close it if it is finished."""
        if conn.closed:
            return
        if conn.finished():
            self._close_conn(conn)
            return
        mask = (select.EPOLLIN if conn.may_read() else 0) | (select.EPOLLOUT if conn.out else 0)
        if mask != conn.ev_mask:
            conn.ev_mask = mask
            try:
                self._ep.modify(conn.fd, mask)
            except OSError:
                self._close_conn(conn)
                return
        if conn.may_parse() and conn.parser.buffered():
            self._backlog.add(conn)

    def _read(self, conn: _Conn) -> int:
        work = 0
        for _ in range(MAX_RECVS_PER_POLL):
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("RPC connection fd %d: recv failed: %s", conn.fd, exc)
                self._close_conn(conn)
                return work + 1
            work += 1
            if not data:
                conn.eof = True
                break
            try:
                conn.parser.feed(data)
            except ValueError as exc:
                self._parse_error(conn, exc)
                return work
            if len(data) < RECV_SIZE:
                break
        work += self._parse(conn)
        self._update(conn)
        return work

    def _parse(self, conn: _Conn) -> int:
        """Dispatch up to MAX_REQUESTS_PER_POLL complete values from the connection's buffer."""
        n = 0
        while n < MAX_REQUESTS_PER_POLL and conn.may_parse():
            try:
                value = conn.parser.next()
            except _Incomplete:
                break
            except ValueError as exc:
                self._parse_error(conn, exc)
                break
            n += 1
            self._dispatch_value(conn, value)
        if n and not conn.closed and conn.may_parse() and conn.parser.buffered():
            self._backlog.add(conn)
        return n

    def _parse_error(self, conn: _Conn, exc: Exception) -> None:
        log.info("RPC connection fd %d: parse error (%s); closing after the reply", conn.fd, exc)
        slot = _Slot()
        slot.payload = self._error_payload(None, PARSE_ERROR, ERROR_MESSAGES[PARSE_ERROR])
        slot.ready = True
        conn.slots.append(slot)
        conn.closing = True
        conn.advance()

    # -- requests -----------------------------------------------------------------------------
    def _error_payload(self, req_id: Any, code: int, message: str, data: Any = None) -> bytes:
        err: dict[str, Any] = {"code": int(code), "message": str(message)}
        if data is not None:
            err["data"] = data
        try:
            return _encode({"jsonrpc": "2.0", "id": req_id, "error": err})
        except (TypeError, ValueError):
            err.pop("data", None)
            return _encode({"jsonrpc": "2.0", "id": req_id, "error": err})

    @staticmethod
    def _check_request(obj: Any) -> tuple[bool, Any, bool]:
        """Return (valid, id to answer with, has_id) for one request object."""
        if not isinstance(obj, dict):
            return False, None, True
        req_id = obj.get("id")
        has_id = "id" in obj
        id_ok = req_id is None or (isinstance(req_id, (str, int, float))
                                   and not isinstance(req_id, bool))
        if id_ok and isinstance(req_id, float) and not math.isfinite(req_id):
            id_ok = False                # 1e400: no JSON number can carry it back
        if id_ok and isinstance(req_id, str) and len(req_id) > MAX_ID_LEN:
            id_ok = False
        if not id_ok:
            return False, None, True
        if obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str):
            return False, req_id, True
        if "params" in obj and not isinstance(obj["params"], (dict, list)):
            return False, req_id, True
        if set(obj) - {"jsonrpc", "method", "params", "id"}:
            return False, req_id, True
        return True, req_id, has_id

    def _dispatch_value(self, conn: _Conn, value: Any) -> None:
        if isinstance(value, list):
            if not value:
                self._immediate(conn, None, INVALID_REQUEST, ERROR_MESSAGES[INVALID_REQUEST])
                return
            checks = [self._check_request(item) for item in value]
            answering = [i for i, (ok, _, has_id) in enumerate(checks) if has_id or not ok]
            batch = _Batch(len(answering)) if answering else None
            if batch is not None:
                conn.slots.append(batch)
            index = {i: k for k, i in enumerate(answering)}
            for i, item in enumerate(value):
                ok, req_id, has_id = checks[i]
                answer = has_id or not ok
                reply = self._reply(conn, batch if batch is not None and i in index else None,
                                    index.get(i, -1), req_id, answer)
                req = RpcRequest(self.dispatcher, item.get("method", "") if isinstance(item, dict)
                                 else "", item.get("params") if isinstance(item, dict) else None,
                                 req_id, answer, reply)
                if ok:
                    self.dispatcher.invoke(req)
                else:
                    req.error(INVALID_REQUEST, ERROR_MESSAGES[INVALID_REQUEST])
                if conn.closed:
                    return
            return
        ok, req_id, has_id = self._check_request(value)
        if not ok:
            self._immediate(conn, req_id, INVALID_REQUEST, ERROR_MESSAGES[INVALID_REQUEST])
            return
        slot = None
        if has_id:
            slot = _Slot()
            conn.slots.append(slot)
        req = RpcRequest(self.dispatcher, value["method"], value.get("params"), req_id, has_id,
                         self._reply(conn, slot, -1, req_id, has_id))
        self.dispatcher.invoke(req)

    def _reply(self, conn: _Conn, slot: _Slot | None, batch_index: int, req_id: Any,
               has_id: bool) -> Reply:
        """The completion of one socket request: its answer encoded into its slot (a
        notification's is dropped), the connection's in-order output advanced."""
        def reply(err: Any, result: Any) -> None:
            payload = None
            if has_id:
                if err is not None:
                    payload = self._error_payload(req_id, err["code"], err["message"],
                                                  err.get("data"))
                else:
                    try:
                        payload = _encode({"jsonrpc": "2.0", "id": req_id, "result": result})
                    except (TypeError, ValueError) as exc:
                        log.error("RPC: result is not JSON-serializable: %s", exc)
                        payload = self._error_payload(req_id, INTERNAL_ERROR, "Internal error: "
                                                      f"result is not JSON-serializable: {exc}")
            if slot is None:
                return
            if isinstance(slot, _Batch):
                if payload is None or not slot.fill(batch_index, payload):
                    return
            else:
                slot.payload = payload
                slot.ready = True
            if not conn.closed:
                conn.advance()
        return reply

    def _immediate(self, conn: _Conn, req_id: Any, code: int, message: str) -> None:
        slot = _Slot()
        slot.payload = self._error_payload(req_id, code, message)
        slot.ready = True
        conn.slots.append(slot)
        conn.advance()


__all__ = ["RpcServer", "RpcRequest", "RpcServerError", "DEFAULT_SOCKET", "PARSE_ERROR",
           "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
           "INVALID_STATE", "ERROR_MESSAGES", "MSG_NEEDS_RUNTIME", "MSG_NEEDS_STARTUP"]
