"""One NBD client connection: a non-blocking, poll-driven protocol engine (a served
connection of targets/serve, docs/targets.md Contract 1).  This file is the transmission
phase (requests, replies, teardown); the handshake's option haggling is handshake.py.

Nothing here blocks, spawns or sleeps.  The owner (targets/serve's per-reactor poller, or
the tests' standalone loop) calls
`poll()` repeatedly; each call

1. parses what is already buffered (a previous poll may have stopped on backpressure),
2. receives with `recv_into` into one preallocated buffer (write payloads that are not
   yet buffered go straight into the backend's buffer) and parses every complete request
   in it, submitting them to the backend,
3. sends every queued reply with as few `sendmsg` calls as possible (headers and data
   buffers as separate iovecs; a partial send leaves the rest queued),

and returns the amount of work done (0 = idle).  When idle, the owner may sleep until
`fileno()` is readable (if `wants_read()`) or writable (if `wants_write()`), or until a
backend completion arrives (the backend's own poller reports that as work).

Error policy (nbdkit's `validate_request` model): every request is validated here, at
the edge, before the backend sees it.  A bad request gets an error reply and the
connection keeps serving; a refused WRITE still has its payload drained so the stream
stays in sync.  A protocol violation (bad magic, a write too large to drain, bad
handshake) ends this connection only.  Backend errors are logged with their real errno
and reduced to an NBD error in one place (`_proto.nbd_error`).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from collections import deque
from typing import Optional

from . import _proto as P
from .backend import EVENT_REMOVED, Export, ExportHandle, ExportTable
from .handshake import _S_CFLAGS, _S_CLOSING, _S_DEAD, _S_DONE, _S_TRANS, _STATE_NAMES, Handshake

log = logging.getLogger("ringstack.nbd")

try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 1024

_RBUF_SIZE = 256 * 1024
_COMPACT_AT = P.MAX_OPTION_DATA + 64   # keep this much room at the end of the receive buffer
_RECVS_PER_POLL = 8
#: Write payloads (still to receive) at least this large are received in place.
_DIRECT_RECV_MIN = 64 * 1024

_REQ_UNPACK = P.REQUEST.unpack_from
_SIMPLE_PACK = P.SIMPLE_REPLY.pack
_OFFSET_DATA_PACK = P.CHUNK_OFFSET_DATA.pack
_CHUNK_ERROR_PACK = P.CHUNK_ERROR.pack
_SIMPLE_MAGIC = P.SIMPLE_REPLY_MAGIC
_SR_MAGIC = P.STRUCTURED_REPLY_MAGIC
_REQUEST_MAGIC = P.REQUEST_MAGIC
_DONE = P.REPLY_FLAG_DONE
_REPLY_TYPE_OFFSET_DATA = P.REPLY_TYPE_OFFSET_DATA

_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH, _CMD_TRIM, _CMD_WZ = (
    P.CMD_READ, P.CMD_WRITE, P.CMD_DISC, P.CMD_FLUSH, P.CMD_TRIM, P.CMD_WRITE_ZEROES)


class _Req:
    """The one record per request.  It is its own completion callback (`req(err)`), so a
    request costs one small object and no closure."""

    __slots__ = ("conn", "cookie", "typ", "flags", "offset", "length", "buf", "done", "abandoned")

    def __init__(self, conn, cookie, typ, flags, offset, length, buf):
        self.conn = conn
        self.cookie = cookie
        self.typ = typ
        self.flags = flags
        self.offset = offset
        self.length = length
        self.buf = buf
        self.done = False
        self.abandoned = False

    def __call__(self, err: int = 0, scsi=None) -> None:
        c = self.conn
        if self.done:
            log.error("nbd %s: export %r completed %s cookie=%#x twice (backend bug); ignored",
                      c.name, c.export_name, P.CMD_NAMES.get(self.typ), self.cookie)
            return
        self.done = True
        typ = self.typ
        if err or self.abandoned or (typ != _CMD_WRITE and typ != _CMD_READ):
            c._complete(self, err)
            return
        # The two common successes, inlined (one call less per request than _complete;
        # the reply header is coalesced with its neighbours as _queue_small does).
        c._reqs.discard(self)
        c._pending -= 1
        buf = self.buf
        if typ == _CMD_WRITE:
            c.stats["bytes_written"] += self.length
            if self.length == c._wlen:
                c._wbufs.append(buf)     # kept by the connection for the next such write
            else:
                c._handle.free(buf)
            hdr = _SIMPLE_PACK(_SIMPLE_MAGIC, 0, self.cookie)
        else:
            c.stats["bytes_read"] += self.length
            if c._structured:
                hdr = _OFFSET_DATA_PACK(_SR_MAGIC, _DONE, _REPLY_TYPE_OFFSET_DATA, self.cookie,
                                        self.length + 8, self.offset)
            else:
                hdr = _SIMPLE_PACK(_SIMPLE_MAGIC, 0, self.cookie)
        out = c._out
        if out and out[-1] is c._tail:
            c._tail += hdr
        else:
            c._tail = bytearray(hdr)
            out.append(c._tail)
        c._queued += len(hdr)
        if typ == _CMD_READ:
            out.append(buf)
            c._queued += self.length
            c._frees.append((c._queued, buf))


class Connection(Handshake):
    """Serve one NBD client on a connected, non-blocking socket.

    `exports` resolves names during the handshake.  `max_inflight` caps requests accepted
    but not yet answered; `max_outbound` caps reply bytes queued but not yet sent (a slow
    reader stops being read from, instead of growing our memory).
    """

    def __init__(self, sock: socket.socket, exports: ExportTable, *, name: str = "",
                 max_inflight: int = 256, max_outbound: int = 8 * 1024 * 1024):
        sock.setblocking(False)
        try:   # room for a batch of large READ replies per sendmsg (kernel caps it at wmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._sock: Optional[socket.socket] = sock
        self._fd = sock.fileno()
        self._exports = exports
        self.name = name or f"fd{self._fd}"
        self._max_inflight = max_inflight
        self._max_outbound = max_outbound

        self._rbuf = bytearray(_RBUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._eof = False
        self._short_read = False

        self._out: list = []
        self._tail: Optional[bytearray] = None   # coalescing buffer for small replies
        self._queued = 0                         # bytes ever queued
        self._sent = 0                           # bytes ever sent
        self._frees: deque = deque()             # (queued-mark, buf): free once sent past mark
        self._want_write = False
        self._send_blocked = False               # the last flush left bytes the socket refused
        self._parsed_end = -1                     # _rend when the parser last gave up (needs more bytes)

        self._state = _S_CFLAGS
        self._no_zeroes = False
        self._structured = False
        self._nopts = 0
        self._skip = 0                            # payload bytes still to drain
        self._after_skip: Optional[tuple] = None  # reply owed once the drain finishes

        self.export: Optional[Export] = None
        self.export_name: Optional[str] = None
        self._handle: Optional[ExportHandle] = None
        self._size = 0
        self._min_mask = 0
        self._max_payload = 0
        self._drain_limit = 0
        self._readonly = True
        self._fua_flush = False
        self._allowed: dict[int, int] = {}         # command -> allowed flag mask

        self._reqs: set = set()                   # submitted to the backend, not completed
        self._pending = 0                         # accepted, not yet replied
        self._wreq: Optional[_Req] = None         # WRITE whose payload is being received
        self._wfill = 0
        # Buffers of the common pipelined WRITE's length (the first one seen), kept here
        # between requests instead of a handle.alloc/free pair each (at most as many as
        # were in flight at once; given back to the handle before it closes).
        self._wlen = 0
        self._wbufs: list = []
        self._stalled = False                     # stopped parsing (backpressure)
        self.close_reason: Optional[str] = None
        self.stats = {"requests": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0}

        self._queue_small(P.GREETING.pack(P.NBDMAGIC, P.IHAVEOPT,
                                          P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES))
        self._flush()

    # ------------------------------------------------------------------ public contract
    def fileno(self) -> int:
        """The socket fd to wait on (-1 once the socket is closed)."""
        return self._fd if self._sock is not None else -1

    def wants_read(self) -> bool:
        """True when input would be consumed now (false under backpressure or closing)."""
        return self._state <= _S_TRANS and self._sock is not None and not self._stalled

    def wants_write(self) -> bool:
        """True when replies are queued and the last send would have blocked."""
        return self._sock is not None and bool(self._out)

    def needs_poll(self) -> bool:
        """True when `poll()` has work to do without any new socket readiness: requests
        in flight (their completions queue replies), parseable buffered input, replies
        queued that the socket has not refused yet, or a close to finish.  A reactor polls
        such connections every pass and waits for the others on epoll (`wants_read` ->
        readable, `send_blocked` -> writable)."""
        st = self._state
        if st >= _S_DEAD:
            return False
        return bool(self._pending or (self._out and not self._send_blocked)
                    or (self._rend > self._rstart and not self._stalled
                        and self._rend != self._parsed_end)
                    or st == _S_CLOSING)

    @property
    def send_blocked(self) -> bool:
        """Replies are queued and the socket refused more: wait for it to be writable."""
        return self._send_blocked and bool(self._out) and self._sock is not None

    @property
    def done(self) -> bool:
        """Socket closed and every backend operation returned: the owner may drop it."""
        return self._state == _S_DONE

    @property
    def state(self) -> str:
        return _STATE_NAMES[self._state]

    @property
    def inflight(self) -> int:
        return self._pending

    def info(self) -> dict:
        """What get_connections shows beyond name and stats."""
        return {"export_name": self.export_name, "state": self.state, "inflight": self._pending}

    def poll(self) -> int:
        """Do what can be done without blocking; return the amount of work (0 = idle)."""
        st = self._state
        if st >= _S_DEAD:
            return 0
        work = 0
        if st <= _S_TRANS:
            if self._rend > self._rstart or self._skip:
                work += self._parse()
            n = 0
            while self._state <= _S_TRANS and not self._stalled and n < _RECVS_PER_POLL:
                got = self._recv()
                if got <= 0:
                    break
                n += 1
                work += 1 + self._parse()
                if self._short_read:   # the socket had less than we offered: it is drained
                    break
        if self._out and self._sock is not None:
            work += self._flush()
        if self._state == _S_CLOSING and not self._pending and not self._out:
            self._close_socket()
            work += 1
        return work

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Graceful stop: read nothing more, answer what is in flight, then close."""
        if self._state <= _S_TRANS:
            self._begin_closing(reason)

    def detach(self, reason: str = "export removed") -> None:
        """The export is going away: answer every in-flight request with ESHUTDOWN now
        (late backend completions only release buffers), then close cleanly."""
        if self._state >= _S_DEAD:
            return
        for req in list(self._reqs):
            if not req.abandoned:
                req.abandoned = True
                self._pending -= 1
                self._reply_error(req.cookie, req.typ, P.NBD_ESHUTDOWN, reason)
        if self._wreq is not None:
            req, self._wreq = self._wreq, None
            self._pending -= 1
            self._handle.free(req.buf)
            self._reply_error(req.cookie, req.typ, P.NBD_ESHUTDOWN, reason)
        self._begin_closing(reason)

    def abort(self, reason: str = "aborted") -> None:
        """Hard disconnect now."""
        self._die(reason)

    # ------------------------------------------------------------------ receiving
    def _recv(self) -> int:
        """One recv.  Returns bytes received, 0 on EOF or would-block, -1 after an error."""
        sock = self._sock
        try:
            req = self._wreq
            if req is not None and self._rstart == self._rend and req.length - self._wfill >= _DIRECT_RECV_MIN:
                # A large payload goes straight into the backend buffer (no copy through
                # _rbuf).  A small one is received with whatever follows it: one recv for
                # many 4 KiB writes beats one recv per payload tail plus one per header.
                want = req.length - self._wfill
                n = sock.recv_into(req.buf[self._wfill:])
                self._short_read = n < want
                if n:
                    self._wfill += n
                    if self._wfill == req.length:
                        self._wreq = None
                        self._submit_write(req)
                    return n
            else:
                start, end = self._rstart, self._rend
                if start == end:
                    start = end = self._rstart = self._rend = 0
                elif _RBUF_SIZE - end < _COMPACT_AT and start:
                    self._rbuf[:end - start] = self._rview[start:end]
                    end -= start
                    start = self._rstart = 0
                    self._rend = end
                if end == _RBUF_SIZE:
                    self._stalled = True   # parser cannot make progress: wait for completions
                    return 0
                n = sock.recv_into(self._rview[end:])
                self._short_read = n < _RBUF_SIZE - end
                if n:
                    self._rend = end + n
                    return n
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._die(f"recv failed: {exc}")
            return -1
        # n == 0: end of stream
        self._on_eof()
        return 0

    def _on_eof(self) -> None:
        self._eof = True
        if self._state < _S_TRANS:
            self._die("client closed during handshake")
            return
        if self._wreq is not None or self._rend > self._rstart or self._skip:
            log.info("nbd %s: client disconnected in the middle of a request", self.name)
        if self._wreq is not None:
            req, self._wreq = self._wreq, None
            self._pending -= 1
            self._handle.free(req.buf)
        self._rstart = self._rend = 0
        self._skip = 0
        self._after_skip = None
        self._begin_closing("client closed the connection")

    def _parse(self) -> int:
        if self._state == _S_TRANS:
            n = self._parse_requests()
        elif self._state < _S_TRANS:
            n = self._parse_handshake()
        else:
            return 0
        self._parsed_end = self._rend
        return n

    def _drain(self, start: int, end: int) -> int:
        k = self._skip if self._skip < end - start else end - start
        self._skip -= k
        start += k
        if not self._skip and self._after_skip is not None:
            owed, self._after_skip = self._after_skip, None
            owed[0](*owed[1:])
        return start

    def _parse_requests(self) -> int:
        """Parse and submit every complete request in the receive buffer."""
        rbuf = self._rbuf
        rview = self._rview
        reqs = self._reqs
        start, end = self._rstart, self._rend
        count = 0
        self._stalled = False
        while True:
            if self._skip:
                start = self._drain(start, end)
                if self._skip:
                    break
            req = self._wreq
            if req is not None:
                need = req.length - self._wfill
                k = need if need < end - start else end - start
                if k:
                    req.buf[self._wfill:self._wfill + k] = self._rview[start:start + k]
                    self._wfill += k
                    start += k
                if self._wfill < req.length:
                    break
                self._wreq = None
                self._submit_write(req)
            if end - start < 28 or self._state != _S_TRANS:   # (a removed event may fire inside a submit)
                break
            if self._pending >= self._max_inflight or self._queued - self._sent > self._max_outbound:
                self._stalled = True
                break
            magic, flags, typ, cookie, offset, length = _REQ_UNPACK(rbuf, start)
            if magic != _REQUEST_MAGIC:
                self._rstart = start
                self._die(f"bad request magic {magic:#x}")
                return count
            if (typ == _CMD_READ and not flags and 0 < length <= self._max_payload
                    and offset + length <= self._size and not (offset | length) & self._min_mask):
                # The common case, checked inline (what _validate would accept anyway).
                buf = self._handle.alloc(length)
                if buf is None:
                    self._stalled = True
                    break
                start += 28
                count += 1
                self.stats["requests"] += 1
                req = _Req(self, cookie, typ, flags, offset, length, buf)
                self._pending += 1
                self._reqs.add(req)
                try:
                    self._handle.read(offset, length, buf, req)
                except Exception as exc:  # backend bug: log, answer EIO, keep serving
                    self._backend_raised(req, exc)
                continue
            if (typ == _CMD_WRITE and not flags and not self._readonly and 0 < length <= self._max_payload
                    and offset + length <= self._size and not (offset | length) & self._min_mask):
                if end - start >= 28 + length:
                    # The common WRITE with its whole payload buffered (pipelined small
                    # writes: one recv brought many): copy the payload into the handle's
                    # buffer and submit now, without the partial-payload state.
                    handle = self._handle
                    wbufs = self._wbufs
                    if wbufs and length == self._wlen:
                        buf = wbufs.pop()
                    else:
                        buf = handle.alloc(length)
                        if buf is None:
                            self._stalled = True
                            break
                        if not self._wlen:
                            self._wlen = length
                    p = start + 28
                    start = p + length
                    buf[:] = rview[p:start]
                    count += 1
                    self.stats["requests"] += 1
                    req = _Req(self, cookie, typ, flags, offset, length, buf)
                    self._pending += 1
                    reqs.add(req)
                    try:
                        handle.write(offset, buf, req)
                    except Exception as exc:  # backend bug: log, answer EIO, keep serving
                        self._backend_raised(req, exc)
                    continue
                err = 0                 # the common WRITE, checked inline
            else:
                err, why = self._validate(flags, typ, offset, length)
            if typ == _CMD_WRITE:
                if length > self._drain_limit:
                    self._rstart = start
                    self._die(f"WRITE of {length} bytes is too large to drain")
                    return count
                if err:
                    start += 28
                    count += 1
                    self._skip = length
                    self._after_skip = (self._reply_error, cookie, typ, err, why)
                    self.stats["requests"] += 1
                    continue
                if length:
                    buf = self._handle.alloc(length)
                    if buf is None:
                        self._stalled = True
                        break
                    start += 28
                    count += 1
                    self.stats["requests"] += 1
                    self._pending += 1
                    self._wreq = _Req(self, cookie, typ, flags, offset, length, buf)
                    self._wfill = 0
                    continue
            start += 28
            count += 1
            self.stats["requests"] += 1
            if err:
                self._reply_error(cookie, typ, err, why)
                continue
            if typ == _CMD_READ:
                if not length:
                    self._reply_read_empty(cookie)
                    continue
                buf = self._handle.alloc(length)
                if buf is None:
                    start -= 28
                    count -= 1
                    self.stats["requests"] -= 1
                    self._stalled = True
                    break
                req = _Req(self, cookie, typ, flags, offset, length, buf)
                self._pending += 1
                self._reqs.add(req)
                try:
                    self._handle.read(offset, length, buf, req)
                except Exception as exc:  # backend bug: log, answer EIO, keep serving
                    self._backend_raised(req, exc)
            elif typ == _CMD_DISC:
                self._rstart = start
                self._begin_closing("client sent NBD_CMD_DISC")
                return count
            elif not length and typ != _CMD_FLUSH:
                self._queue_small(_SIMPLE_PACK(_SIMPLE_MAGIC, 0, cookie))  # WRITE/TRIM/ZERO of 0 bytes
            else:
                req = _Req(self, cookie, typ, flags, offset, length, None)
                self._pending += 1
                self._reqs.add(req)
                try:
                    if typ == _CMD_FLUSH:
                        self._handle.flush(0, self._size, req)
                    elif typ == _CMD_TRIM:
                        self._handle.unmap(offset, length, req)
                    else:
                        self._handle.write_zeroes(offset, length, req)
                except Exception as exc:
                    self._backend_raised(req, exc)
        self._rstart = start
        return count

    def _validate(self, flags: int, typ: int, offset: int, length: int) -> tuple:
        """(nbd_error, reason) for a request header, (0, None) if it may go to the backend."""
        allowed = self._allowed.get(typ)
        if allowed is None:
            return P.NBD_EINVAL, f"unsupported command {typ}"
        if flags & ~allowed:
            return P.NBD_EINVAL, f"unsupported flags {flags:#x} for {P.CMD_NAMES.get(typ)}"
        if typ == _CMD_DISC or typ == _CMD_FLUSH:
            return 0, None
        if self._readonly and typ != _CMD_READ:
            return P.NBD_EPERM, "export is read-only"
        if offset + length > self._size:
            return (P.NBD_EINVAL if typ == _CMD_READ or typ == _CMD_TRIM else P.NBD_ENOSPC,
                    f"request [{offset}, +{length}) beyond the export size {self._size}")
        if (offset | length) & self._min_mask:
            return P.NBD_EINVAL, f"request [{offset}, +{length}) not aligned to {self._min_mask + 1}"
        if length > self._max_payload and (typ == _CMD_READ or typ == _CMD_WRITE):
            return P.NBD_EINVAL, f"length {length} exceeds the maximum payload {self._max_payload}"
        return 0, None

    # ------------------------------------------------------------------ submission/completion
    def _submit_write(self, req: _Req) -> None:
        self._reqs.add(req)
        try:
            self._handle.write(req.offset, req.buf, req, bool(req.flags & P.CMD_FLAG_FUA))
        except Exception as exc:
            self._backend_raised(req, exc)

    def _backend_raised(self, req: _Req, exc: Exception) -> None:
        log.exception("nbd %s: export %r raised from %s submit", self.name, self.export_name,
                      P.CMD_NAMES.get(req.typ))
        if not req.done:
            req(exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO)

    def _complete(self, req: _Req, err: int) -> None:
        self._reqs.discard(req)
        buf = req.buf
        if req.abandoned:
            if buf is not None:
                self._handle.free(buf)
            if self._state == _S_DEAD and not self._reqs:
                self._finish()
            return
        typ = req.typ
        if (not err and req.flags & P.CMD_FLAG_FUA and self._fua_flush
                and (typ == _CMD_TRIM or typ == _CMD_WZ)):
            # FUA trim / write-zeroes on a write-cache bdev: answered after a flush
            req.flags &= ~P.CMD_FLAG_FUA
            req.done = False
            self._reqs.add(req)
            try:
                self._handle.flush(req.offset, req.length, req)
            except Exception as exc:
                self._backend_raised(req, exc)
            return
        self._pending -= 1
        if err:
            log.warning("nbd %s: export %r %s [%d, +%d) failed: %s", self.name, self.export_name,
                        P.CMD_NAMES.get(typ), req.offset, req.length, os.strerror(abs(err)))
            if buf is not None:
                self._handle.free(buf)
            self._reply_error(req.cookie, typ, P.nbd_error(err), os.strerror(abs(err)))
            return
        if typ == _CMD_READ:
            self.stats["bytes_read"] += req.length
            if self._structured:
                self._queue_small(_OFFSET_DATA_PACK(_SR_MAGIC, _DONE, P.REPLY_TYPE_OFFSET_DATA,
                                                    req.cookie, req.length + 8, req.offset))
            else:
                self._queue_small(_SIMPLE_PACK(_SIMPLE_MAGIC, 0, req.cookie))
            self._out.append(buf)
            self._queued += req.length
            self._frees.append((self._queued, buf))
            return
        if buf is not None:
            self.stats["bytes_written"] += req.length
            self._handle.free(buf)
        self._queue_small(_SIMPLE_PACK(_SIMPLE_MAGIC, 0, req.cookie))

    # ------------------------------------------------------------------ replies
    def _reply_error(self, cookie: int, typ: int, err: int, why: Optional[str]) -> None:
        self.stats["errors"] += 1
        log.debug("nbd %s: cookie=%#x %s -> error %d (%s)", self.name, cookie,
                  P.CMD_NAMES.get(typ, typ), err, why)
        if self._state >= _S_DEAD:
            return
        if self._structured:
            msg = (why or "").encode("utf-8", "replace")[:256]
            self._queue_small(_CHUNK_ERROR_PACK(_SR_MAGIC, _DONE, P.REPLY_TYPE_ERROR, cookie,
                                                6 + len(msg), err, len(msg)) + msg)
        else:
            self._queue_small(_SIMPLE_PACK(_SIMPLE_MAGIC, err, cookie))

    def _reply_read_empty(self, cookie: int) -> None:
        if self._structured:   # OFFSET_DATA must carry >= 1 byte: answer with NONE
            self._queue_small(P.CHUNK_HDR.pack(_SR_MAGIC, _DONE, P.REPLY_TYPE_NONE, cookie, 0))
        else:
            self._queue_small(_SIMPLE_PACK(_SIMPLE_MAGIC, 0, cookie))

    def _queue_small(self, b: bytes) -> None:
        """Queue a small piece (header); consecutive ones share one iovec."""
        out = self._out
        if out and out[-1] is self._tail:
            self._tail += b
        else:
            self._tail = bytearray(b)
            out.append(self._tail)
        self._queued += len(b)

    def _flush(self) -> int:
        """Send queued replies; returns 1 if anything was sent."""
        out = self._out
        sock = self._sock
        sent = 0
        while out:
            try:
                n = sock.sendmsg(out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._die(f"send failed: {exc}")
                return 1
            if not n:
                break
            sent += n
            i = 0
            while n:
                b = out[i]
                lb = len(b)
                if n >= lb:
                    n -= lb
                    i += 1
                else:
                    out[i] = memoryview(b)[n:]
                    n = 0
            del out[:i]
        self._send_blocked = bool(out)
        if sent:
            self._sent += sent
            frees = self._frees
            if frees:
                mark = self._sent
                free = self._handle.free
                while frees and frees[0][0] <= mark:
                    free(frees.popleft()[1])
            if self._stalled and self._queued - self._sent <= self._max_outbound:
                self._stalled = False
                self._parsed_end = -1     # what was buffered may be parseable now
            return 1
        return 0

    # ------------------------------------------------------------------ teardown
    def _on_export_event(self, event: str) -> None:
        if event == EVENT_REMOVED:
            log.info("nbd %s: export %r removed; closing the connection", self.name, self.export_name)
            self.detach("export removed")

    def _begin_closing(self, reason: str) -> None:
        if self._state >= _S_CLOSING:
            return
        self.close_reason = reason
        self._state = _S_CLOSING
        self._stalled = False

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._state = _S_DEAD
        if not self._reqs:
            self._finish()

    def _die(self, reason: str) -> None:
        """Hard disconnect: close the socket now; in-flight ops only release buffers."""
        if self._state >= _S_DEAD:
            return
        if self.close_reason is None or self._state < _S_CLOSING:
            self.close_reason = reason
        log.info("nbd %s: closing connection: %s", self.name, reason)
        for req in self._reqs:
            req.abandoned = True
        self._pending = 0
        if self._wreq is not None:
            req, self._wreq = self._wreq, None
            self._handle.free(req.buf)
        self._out.clear()
        while self._frees:
            self._handle.free(self._frees.popleft()[1])
        self._skip = 0
        self._after_skip = None
        self._close_socket()

    def _finish(self) -> None:
        self._state = _S_DONE
        h, self._handle = self._handle, None
        if h is not None:
            while self._wbufs:
                h.free(self._wbufs.pop())
            try:
                h.close()
            except Exception:
                log.exception("nbd %s: closing the handle of export %r failed", self.name, self.export_name)

    def __repr__(self) -> str:
        return (f"<Connection {self.name} {self.state} export={self.export_name!r} "
                f"inflight={self._pending}>")
