"""One iSCSI connection: the poll-driven protocol engine (docs/targets.md, Contract 1).

Nothing here blocks.  `poll()` receives into one preallocated buffer, frames every complete
PDU in it (BHS, AHS, optional header/data CRC32C), dispatches it, and sends every queued
PDU with as few `sendmsg` calls as possible (headers and Data-In payloads as separate
iovecs, so read data is never copied).  SCSI completions only queue PDUs.

Error policy, ErrorRecoveryLevel 0 (RFC 7143 7.x, SPDK's choices): a PDU that can be
answered gets a Reject and the connection goes on (unknown opcode, SNACK, Login in full
feature phase, Data-Out for an unknown task or out of DataSN order, bad immediate data, a
field that makes no sense); a PDU that breaks the framing or the data sequence (length
over MaxRecvDataSegmentLength, header digest error, data digest error, wrong BufferOffset,
data past an R2T, a misplaced F bit) gets a Reject where possible and this connection is
closed; its session's other connections are unaffected.  Commands outside the CmdSN
window are dropped silently (RFC 3720 3.2.2.1, libiscsi iSCSICmdSnTooHigh/TooLow).

Split: login.py (login phase), ffp.py (SCSI commands, data transfer, task management);
this module has the framing, I/O, NOP, Text, Logout, Reject and the contract.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import deque
from typing import Optional

from . import pdu as P
from .ffp import FfpMixin
from .login import LOGIN_MAX_DSL, LoginMixin
from .negotiate import RFC_DEFAULTS
from .session import SESSION_DISCOVERY, reactor_core, reactor_of_tsih, reactor_placement

log = logging.getLogger("ringstack.iscsi")

try:
    _IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
except (ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 1024

_RBUF_SIZE = 256 * 1024
_ROOM_MIN = 80 * 1024           # compact when less than this is left at the end
_RECVS_PER_POLL = 8
_TARGET_MAX_RECV_DSL = 8192     # SPDK's target-side MaxRecvDataSegmentLength default
_MAX_TEXT_REQUEST = 64 * 1024
#: SPDK's ISCSI_LOGIN_TIMEOUT: a connection that has not logged in by then is closed.
#: RINGSTACK_ISCSI_LOGIN_TIMEOUT (seconds) overrides it (SPDK has no option for it;
#: the tests use a short one).
LOGIN_TIMEOUT_S = 30.0


def login_timeout() -> float:
    try:
        v = float(os.environ.get("RINGSTACK_ISCSI_LOGIN_TIMEOUT", LOGIN_TIMEOUT_S))
    except ValueError:
        return LOGIN_TIMEOUT_S
    return v if v > 0 else LOGIN_TIMEOUT_S

_P_LOGIN, _P_FFP, _P_LOGOUT, _P_CLOSING, _P_DEAD, _P_DONE = range(6)
_PHASE_NAMES = ("login", "full_feature", "logout", "closing", "dead", "done")

_unpack = P.bhs_unpack
_pack = P.bhs_pack
_RSVD = P.RESERVED_TAG

_ids = itertools.count()
#: Live connections of this process (reactor), for iscsi_get_connections.
LIVE: set = set()


def _meta_get(meta, key, default=None):
    if meta is None:
        return default
    if isinstance(meta, dict):
        return meta.get(key, default)
    return getattr(meta, key, default)


def connections() -> list[dict]:
    """This reactor's full-feature connections in SPDK's iscsi_get_connections shape."""
    return [c.info() for c in sorted(LIVE, key=lambda c: c.id) if c.session is not None]


class IscsiConnection(LoginMixin, FfpMixin):
    """Serve one iSCSI connection on a connected socket.  `meta` carries `pg_tag`,
    `portal` (host, port) and `peer` (host, port); `registry` is this reactor's
    configuration replica (Contract 4) or a callable returning it."""

    def __init__(self, sock: socket.socket, meta, registry, *,
                 max_outbound: int = 8 * 1024 * 1024, hand_over=None):
        if not hasattr(registry, "find_target") and callable(registry):
            registry = registry()
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self._sock: Optional[socket.socket] = sock
        self._fd = sock.fileno()
        self.reg = registry
        self.id = next(_ids)
        self.pg_tag = int(_meta_get(meta, "pg_tag", 1))
        portal = _meta_get(meta, "portal", None)
        peer = _meta_get(meta, "peer", None)
        try:
            portal = portal or sock.getsockname()[:2]
            peer = peer or sock.getpeername()[:2]
        except OSError:
            portal = portal or ("", 0)
            peer = peer or ("", 0)
        self.portal = tuple(portal)
        self.peer = tuple(peer)
        self.peer_host = str(self.peer[0])
        self.name = f"iscsi{self.id}:{self.peer_host}:{self.peer[1]}"
        self.lcore_id = reactor_core()
        self.reactor_index, self._n_reactors = reactor_placement()
        # hand_over(sock, received, dest) -> bool: the serving framework's move of this
        # socket to another reactor (a connection joining a session that lives there)
        self._hand_over = hand_over
        self._meta = meta
        received = _meta_get(meta, "received", b"") or b""
        self._handed_over = _meta_get(meta, "handed_over_from", None) is not None
        self._max_outbound = max_outbound

        self._rbuf = bytearray(_RBUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._parsed_end = -1

        self._out: deque = deque()
        self._queued = 0
        self._sent = 0
        self._frees: deque = deque()
        self._send_blocked = False
        self._stalled = False

        self._phase = _P_LOGIN
        self.close_reason: Optional[str] = None
        self.session = None
        self.cid = 0
        self.stat_sn = 0
        self.exp_stat_sn = 0
        self.max_recv_dsl = _TARGET_MAX_RECV_DSL
        self._recv_limit = LOGIN_MAX_DSL
        self.max_send_dsl = RFC_DEFAULTS["MaxRecvDataSegmentLength"]
        self._hd = 0             # header digest bytes (0 or 4)
        self._dd = 0             # data digest bytes (0 or 4)
        self._text_pending = None   # (itt, ttt, remaining bytes) of a long Text Response
        self._text_req = bytearray()
        self._nop_ttt = 0
        self._nop_sent_at = 0.0
        self._last_rx = time.monotonic()
        self._login_timeout = login_timeout()
        self._login_deadline = self._last_rx + self._login_timeout
        self._logout_itt = None
        self._inflight = 0
        self.stats = {"requests": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0,
                      "pdus_in": 0, "pdus_out": 0, "rejects": 0, "cmdsn_dropped": 0,
                      "data_in_bytes": 0, "data_out_bytes": 0}
        opts = getattr(registry, "options", {}) or {}
        self._nop_interval = float(opts.get("nop_in_interval", 30))
        self._nop_timeout = float(opts.get("nop_timeout", 60))
        self._login_init()
        self._ffp_init()
        if received:        # bytes read on the reactor that handed the connection over
            n = len(received)
            if n > _RBUF_SIZE - _ROOM_MIN:
                raise ValueError(f"handed-over input too long ({n} bytes)")
            self._rbuf[0:n] = received
            self._rend = n
            self.stats["bytes_read"] += n
        LIVE.add(self)

    # ------------------------------------------------------------------ contract
    def fileno(self) -> int:
        return self._fd if self._sock is not None else -1

    def wants_read(self) -> bool:
        return (self._phase <= _P_FFP and self._sock is not None and not self._stalled)

    @property
    def send_blocked(self) -> bool:
        return self._send_blocked and bool(self._out) and self._sock is not None

    def needs_poll(self) -> bool:
        ph = self._phase
        if ph == _P_DONE:
            return False
        if ph == _P_DEAD:
            return self._inflight == 0
        return bool(self._inflight or (self._out and not self._send_blocked)
                    or ph >= _P_LOGOUT
                    or (self._rend > self._rstart and not self._stalled
                        and self._rend != self._parsed_end))

    @property
    def done(self) -> bool:
        return self._phase == _P_DONE

    def shutdown(self, reason: str = "shutdown") -> None:
        """Graceful: read nothing more, let in-flight commands answer, then close."""
        if self._phase <= _P_LOGOUT:
            self.close_reason = reason
            self._drop_waiting_tasks()
            self._phase = _P_CLOSING

    def abort(self, reason: str = "abort") -> None:
        if self._phase >= _P_DEAD:
            return
        self.close_reason = self.close_reason or reason
        self._out.clear()
        self._close_socket()

    def deadline(self):
        """Monotonic time (s) by which poll() must run for the login timeout or the NOP-In
        timers, or None."""
        if self._phase == _P_LOGIN:
            return self._login_deadline
        if self._phase != _P_FFP or self._nop_interval <= 0:
            return None
        if self._nop_sent_at:
            return self._nop_sent_at + self._nop_timeout
        return self._last_rx + self._nop_interval

    def closing_or_dead(self) -> bool:
        return self._phase >= _P_LOGOUT

    def info(self) -> dict:
        s = self.session
        return {
            "id": self.id, "cid": self.cid, "tsih": s.tsih if s else 0,
            "lcore_id": self.lcore_id,
            "initiator_addr": self.peer_host, "target_addr": str(self.portal[0]),
            "target_node_name": (s.target_name if s and not s.discovery else ""),
            "initiator_name": self.initiator_name,
            "session_type": self.session_type, "isid": s.isid_hex if s else "",
            "state": _PHASE_NAMES[self._phase],
        }

    # ------------------------------------------------------------------ poll
    def poll(self) -> int:
        ph = self._phase
        if ph >= _P_DEAD:
            if ph == _P_DEAD and self._inflight == 0:
                self._finish()
                return 1
            return 0
        work = 0
        if self._out and not self._send_blocked:
            work += self._flush()
        if ph <= _P_FFP and not self._stalled:
            if self._rend > self._rstart and self._rend != self._parsed_end:
                work += self._parse()
            if self._sock is not None and self._phase <= _P_FFP and not self._stalled:
                work += self._receive()
        if self._phase == _P_FFP and self._nop_interval > 0:
            self._nop_timer()
        elif self._phase == _P_LOGIN and time.monotonic() > self._login_deadline:
            self._fatal(f"no login within {self._login_timeout:g}s")
            return work + 1
        if self._out and self._sock is not None:
            work += self._flush()
        ph = self._phase
        if ph == _P_LOGOUT:
            if self._inflight == 0:
                self._send_logout_rsp()
                work += self._flush()
        elif ph == _P_CLOSING:
            if not self._out and self._inflight == 0 and not self._pending_responses():
                self._close_socket()
                work += 1
        if self._phase == _P_DEAD and self._inflight == 0:
            self._finish()
            work += 1
        return work

    def _receive(self) -> int:
        work = 0
        sock = self._sock
        for _ in range(_RECVS_PER_POLL):
            if len(self._rbuf) - self._rend < _ROOM_MIN:
                self._compact()
            room = len(self._rbuf) - self._rend
            try:
                n = sock.recv_into(self._rview[self._rend:], room)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._fatal(f"recv: {e}", drop_output=True)
                return work + 1
            if n == 0:
                # the initiator went away: nothing more can be answered; tasks still in
                # the SCSI layer finish into the void (done waits for them)
                self.close_reason = self.close_reason or "peer closed"
                self._close_socket()
                return work + 1
            self._rend += n
            self.stats["bytes_read"] += n
            self._last_rx = time.monotonic()
            work += 1
            self._parse()
            if self._phase > _P_FFP or self._stalled or n < room:
                break
        return work

    def _compact(self) -> None:
        s, e = self._rstart, self._rend
        if s == 0:
            return
        if e > s:
            self._rbuf[0:e - s] = self._rview[s:e]
        self._rstart, self._rend = 0, e - s
        self._parsed_end = -1

    def _parse(self) -> int:
        """Frame and dispatch every complete PDU in the receive buffer."""
        buf, view = self._rbuf, self._rview
        n = 0
        while self._phase <= _P_FFP and not self._stalled:
            s, e = self._rstart, self._rend
            hd = self._hd
            if e - s < 48 + hd:
                break
            f = _unpack(buf, s)
            if (self._phase == _P_LOGIN and self._lg_first and f[4] & 0xFFFF
                    and (f[0] & 0x3F) == P.OP_LOGIN_REQ and self._join_elsewhere(f[4] & 0xFFFF)):
                return n
            w = f[3]
            ahs = (w >> 24) << 2
            dsl = w & 0xFFFFFF
            if dsl > self._recv_limit:
                self._protocol_error(f"data segment {dsl} over MaxRecvDataSegmentLength "
                                     f"{self._recv_limit}", bytes(view[s:s + 48]))
                break
            hlen = 48 + ahs
            dstart = s + hlen + hd
            total = hlen + hd + ((dsl + 3) & ~3) + (self._dd if dsl else 0)
            if e - s < total:
                if len(buf) - s < total:
                    self._compact()
                break
            if hd:
                if P.crc32c(view[s:s + hlen]) != P.LE32.unpack_from(buf, s + hlen)[0]:
                    self._fatal("header digest error")
                    break
            if dsl and self._dd:
                pend = dstart + ((dsl + 3) & ~3)
                if P.crc32c(view[dstart:pend]) != P.LE32.unpack_from(buf, pend)[0]:
                    self.stats["errors"] += 1
                    self._reject(P.REJECT_DATA_DIGEST, bytes(view[s:s + 48]))
                    self._close_after_flush("data digest error")
                    break
            self._rstart = s + total
            n += 1
            self.stats["pdus_in"] += 1
            self._dispatch(f, view, s, dstart, dsl)
            if self._queued - self._sent > self._max_outbound:
                self._stalled = True
        # remember where parsing starved (only then: a stop on backpressure must resume)
        self._parsed_end = self._rend if not self._stalled else -1
        if self._rstart == self._rend:
            self._rstart = self._rend = 0
            self._parsed_end = -1
        return n

    def _join_elsewhere(self, tsih: int) -> bool:
        """A login that joins session `tsih` (its first PDU) on a reactor where the
        session does not live: hand the socket and every byte read so far to the
        session's reactor, which continues the login (the session's CmdSN window stays
        on one reactor).  False: serve it here (a TSIH no reactor owns is answered
        "session does not exist" here; a connection is handed over once at most)."""
        dest = reactor_of_tsih(tsih)
        if (self._hand_over is None or self._handed_over or dest == self.reactor_index
                or not 0 <= dest < self._n_reactors):
            return False
        sock = self._sock
        data = bytes(self._rview[self._rstart:self._rend])
        if not self._hand_over(sock, data, dest):
            return False
        log.info("iscsi %s: joins session tsih=%d: handed over to reactor %d", self.name,
                 tsih, dest)
        self.close_reason = f"handed over to reactor {dest}"
        self._sock = None           # the framework owns (and closed) our copy
        self._out.clear()
        self._rstart = self._rend = 0
        self._phase = _P_DEAD
        self._finish()
        return True

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, f, buf, s, dstart, dsl) -> None:
        op = f[0] & 0x3F
        if op == P.OP_DATA_OUT:
            if self._phase == _P_FFP:
                self._on_data_out(f, buf, dstart, dsl)
            else:
                self._login_fail(P.LOGIN_INVALID_DURING_LOGIN, "Data-Out during login")
            return
        if self._phase == _P_LOGIN:
            if op == P.OP_LOGIN_REQ:
                self._on_login_pdu(f, bytes(buf[dstart:dstart + dsl]))
            else:
                self._login_fail(P.LOGIN_INVALID_DURING_LOGIN,
                                 f"opcode 0x{op:02x} before login finished")
            return
        hdr = None
        if op not in (P.OP_SCSI_CMD, P.OP_NOP_OUT, P.OP_TEXT_REQ, P.OP_TMF_REQ,
                      P.OP_LOGOUT_REQ):
            hdr = bytes(buf[s:s + 48])
            why = {P.OP_LOGIN_REQ: "Login in full feature phase",
                   P.OP_SNACK: "SNACK at ErrorRecoveryLevel 0"}.get(op)
            if why:
                self._reject(P.REJECT_PROTOCOL_ERROR, hdr)
            else:
                why = f"unknown opcode 0x{op:02x}"
                self._reject(P.REJECT_COMMAND_NOT_SUPPORTED, hdr)
            log.info("iscsi %s: rejected: %s", self.name, why)
            return
        self.exp_stat_sn = f[8]
        imm = f[0] & P.IMMEDIATE_BIT
        if op == P.OP_NOP_OUT and f[5] == _RSVD:
            self._on_nop_out_reply(f)
            return
        sess = self.session
        counted = False
        if not imm:
            r = sess.cmdsn_check(f[7])
            if r < 0:
                self.stats["cmdsn_dropped"] += 1
                log.info("iscsi %s: %s CmdSN %d outside [%d, %d]: dropped", self.name,
                         P.OPCODE_NAMES.get(op, op), f[7], sess.exp_cmdsn, sess.max_cmdsn)
                return
            if r > 0:
                if not sess.hold(f[7], self, bytes(buf[s:dstart + dsl])):
                    self.stats["cmdsn_dropped"] += 1
                return
            counted = True
        self._dispatch_cmd(op, f, buf, s, dstart, dsl, counted)
        if sess.held:
            sess.release_held()

    def deliver_held(self, raw: bytes) -> None:
        """A command that waited for its CmdSN (session.release_held)."""
        view = memoryview(raw)
        f = _unpack(raw, 0)
        ahs = (f[3] >> 24) << 2
        dsl = f[3] & 0xFFFFFF
        self._dispatch_cmd(f[0] & 0x3F, f, view, 0, 48 + ahs + self._hd, dsl, True)

    def _dispatch_cmd(self, op, f, buf, s, dstart, dsl, counted) -> None:
        self.stats["requests"] += 1
        if op == P.OP_SCSI_CMD:
            if self.session.discovery:
                self._reject(P.REJECT_PROTOCOL_ERROR, bytes(buf[s:s + 48]))
                self._answered(counted)
                return
            self._on_scsi_cmd(f, buf, s, dstart, dsl, counted)
        elif op == P.OP_NOP_OUT:
            self._on_nop_out(f, buf, dstart, dsl)
            self._answered(counted)
        elif op == P.OP_TEXT_REQ:
            self._on_text(f, bytes(buf[dstart:dstart + dsl]), bytes(buf[s:s + 48]))
            self._answered(counted)
        elif op == P.OP_TMF_REQ:
            if self.session.discovery:
                self._reject(P.REJECT_PROTOCOL_ERROR, bytes(buf[s:s + 48]))
                self._answered(counted)
                return
            self._on_tmf(f, counted)
        else:
            self._on_logout(f, counted)

    def _answered(self, counted: bool) -> None:
        if counted and self.session is not None:
            self.session.answered()

    # ------------------------------------------------------------------ queueing
    def _queue_pdu(self, hdr: bytes, data=b"") -> None:
        """Queue one PDU: header (+ digest), data segment, padding (+ digest)."""
        out = self._out
        if self._hd:
            hdr = hdr + P.digest(hdr)
        n = len(data)
        if n:
            pad = P.PADS[n & 3]
            if self._dd:
                dg = P.digest_iov((data, pad))
                if n < 4096:
                    out.append(hdr + bytes(data) + pad + dg)
                else:
                    out.append(hdr)
                    out.append(data)
                    out.append(pad + dg)
            elif n < 4096:
                out.append(hdr + bytes(data) + pad)
            else:
                out.append(hdr)
                out.append(data)
                if pad:
                    out.append(pad)
            self._queued += len(hdr) + n + len(pad) + self._dd
        else:
            out.append(hdr)
            self._queued += len(hdr)
        self.stats["pdus_out"] += 1

    def _stat_fields(self, advance: bool = True):
        """(StatSN, ExpCmdSN, MaxCmdSN) for a response; advances StatSN."""
        sn = self.stat_sn
        if advance:
            self.stat_sn = (sn + 1) & 0xFFFFFFFF
        s = self.session
        return sn, s.exp_cmdsn, s.max_cmdsn

    def _flush(self) -> int:
        sock = self._sock
        if sock is None:
            return 0
        out = self._out
        work = 0
        while out:
            iov = list(itertools.islice(out, 0, _IOV_MAX))
            try:
                n = sock.sendmsg(iov)
            except (BlockingIOError, InterruptedError):
                self._send_blocked = True
                break
            except OSError as e:
                self._fatal(f"send: {e}", drop_output=True)
                return work + 1
            work += 1
            self._sent += n
            self.stats["bytes_written"] += n
            left = n
            while left:
                b = out[0]
                ln = len(b)
                if ln <= left:
                    out.popleft()
                    left -= ln
                else:
                    out[0] = memoryview(b)[left:]
                    left = 0
            total = sum(len(b) for b in iov)
            if n < total:
                self._send_blocked = True
                break
        else:
            self._send_blocked = False
        frees = self._frees
        while frees and frees[0][0] <= self._sent:
            self._release(frees.popleft()[1])
        if (self._stalled and not self._lg_wait
                and self._queued - self._sent <= self._max_outbound // 2):
            self._stalled = False
        return work

    def _release(self, st) -> None:
        try:
            st.release()
        except Exception:
            log.exception("iscsi %s: task release failed", self.name)

    # ------------------------------------------------------------------ errors/closing
    def _reject(self, reason: int, hdr: bytes) -> None:
        self.stats["rejects"] += 1
        self.stats["errors"] += 1
        sn, exp, mx = self._stat_fields() if self.session else (self.stat_sn, 0, 0)
        h = _pack(P.OP_REJECT, 0x80, reason << 8, 48, 0, _RSVD, 0, sn, exp, mx, 0, 0, 0)
        self._queue_pdu(h, hdr[:48])

    def _protocol_error(self, why: str, hdr: Optional[bytes]) -> None:
        """Reject (when a session exists to number it) and close this connection."""
        log.warning("iscsi %s: protocol error: %s", self.name, why)
        if hdr is not None and self._phase == _P_FFP:
            self._reject(P.REJECT_PROTOCOL_ERROR, hdr)
        else:
            self.stats["errors"] += 1
        self._close_after_flush(f"protocol error: {why}")

    def _fatal(self, why: str, drop_output: bool = False) -> None:
        log.warning("iscsi %s: %s: closing", self.name, why)
        self.stats["errors"] += 1
        self.close_reason = self.close_reason or why
        if drop_output:
            self._out.clear()
        self._drop_waiting_tasks()
        self._close_socket()

    def _close_after_flush(self, why: str) -> None:
        self.close_reason = self.close_reason or why
        self._drop_waiting_tasks()
        if self._phase < _P_CLOSING:
            self._phase = _P_CLOSING

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is not None:
            self._sock = None
            try:
                # unread input makes close() send a RST, which can destroy the Reject or
                # Login Response still in flight: drain what is already here first
                for _ in range(16):
                    if not sock.recv_into(self._rview, len(self._rbuf)):
                        break
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        self._phase = _P_DEAD
        self._out.clear()
        while self._frees:
            self._release(self._frees.popleft()[1])
        self._drop_waiting_tasks()
        s = self.session
        if s is not None:
            s.remove_conn(self)
        LIVE.discard(self)

    def _finish(self) -> None:
        self._phase = _P_DONE
        LIVE.discard(self)
        if self.session is not None:
            self.session.conn_finished(self)
        log.debug("iscsi %s: done (%s)", self.name, self.close_reason)

    # ------------------------------------------------------------------ NOP
    def _on_nop_out(self, f, buf, dstart, dsl) -> None:
        data = bytes(buf[dstart:dstart + min(dsl, self.max_send_dsl)])
        sn, exp, mx = self._stat_fields()
        h = _pack(P.OP_NOP_IN, 0x80, 0, len(data), f[4], f[5], _RSVD, sn, exp, mx, 0, 0, 0)
        self._queue_pdu(h, data)

    def _on_nop_out_reply(self, f) -> None:
        if f[6] != _RSVD and f[6] == self._nop_ttt:
            self._nop_sent_at = 0.0

    def _nop_timer(self) -> None:
        now = time.monotonic()
        if self._nop_sent_at:
            if now - self._nop_sent_at > self._nop_timeout:
                self._fatal(f"no NOP-Out answer in {self._nop_timeout:g}s")
            return
        if now - self._last_rx >= self._nop_interval:
            self._nop_ttt = (self._nop_ttt + 1) & 0x7FFFFFFF or 1
            sn, exp, mx = self._stat_fields(advance=False)
            h = _pack(P.OP_NOP_IN, 0x80, 0, 0, 0, _RSVD, self._nop_ttt, sn, exp, mx, 0, 0, 0)
            self._queue_pdu(h)
            self._nop_sent_at = now
            self._last_rx = now

    # ------------------------------------------------------------------ Text
    def _on_text(self, f, data: bytes, hdr: bytes) -> None:
        flags, itt, ttt = f[1], f[5], f[6]
        if ttt != _RSVD:
            tp = self._text_pending
            if tp is None or tp[0] != itt or tp[1] != ttt:
                self._reject(P.REJECT_INVALID_PDU_FIELD, hdr)
                return
            self._text_pending = None
            self._send_text_chunks(itt, tp[2])
            return
        self._text_pending = None
        self._text_req += data
        if len(self._text_req) > _MAX_TEXT_REQUEST:
            self._text_req = bytearray()
            self._reject(P.REJECT_PROTOCOL_ERROR, hdr)
            return
        if flags & P.TEXT_CONTINUE:
            # more request text follows: an empty response asks for it (RFC 7143 11.10)
            self._text_rsp(0, itt, self._alloc_text_ttt(), b"")
            return
        try:
            pairs = P.decode_text(self._text_req)
        except ValueError:
            self._text_req = bytearray()
            self._reject(P.REJECT_PROTOCOL_ERROR, hdr)
            return
        self._text_req = bytearray()
        answer = []
        for k, v in pairs:
            if k == "SendTargets":
                answer.extend(self._send_targets(v))
            elif k == "MaxRecvDataSegmentLength":
                try:
                    n = int(v, 0)
                except ValueError:
                    n = 0
                if 512 <= n <= 16777215:
                    self.max_send_dsl = n
                else:
                    answer.append((k, "Reject"))
            elif k in RFC_DEFAULTS:
                answer.append((k, "Reject"))   # not renegotiable in full feature phase
            else:
                answer.append((k, "NotUnderstood"))
        self._send_text_chunks(itt, P.encode_text(answer))

    def _send_targets(self, value: str) -> list:
        sess = self.session
        if not sess.discovery:
            if value == "All":
                return [("SendTargets", "Reject")]
            value = value or sess.target_name
        try:
            targets = self.reg.send_targets(self.initiator_name, self.peer_host,
                                            self.pg_tag, value, target_addr=str(self.portal[0]))
        except Exception:
            log.exception("iscsi %s: send_targets failed", self.name)
            targets = []
        out = []
        for iqn, addrs in targets:
            out.append(("TargetName", iqn))
            for a in addrs:
                out.append(("TargetAddress", a))
        return out

    def _alloc_text_ttt(self) -> int:
        self._nop_ttt = (self._nop_ttt + 1) & 0x7FFFFFFF or 1
        return self._nop_ttt

    def _send_text_chunks(self, itt: int, payload: bytes) -> None:
        chunk = self.max_send_dsl
        if len(payload) <= chunk:
            self._text_rsp(0x80, itt, _RSVD, payload)
            return
        ttt = self._alloc_text_ttt()
        self._text_pending = (itt, ttt, payload[chunk:])
        self._text_rsp(P.TEXT_CONTINUE, itt, ttt, payload[:chunk])

    def _text_rsp(self, flags: int, itt: int, ttt: int, data: bytes) -> None:
        sn, exp, mx = self._stat_fields()
        h = _pack(P.OP_TEXT_RSP, flags, 0, len(data), 0, itt, ttt, sn, exp, mx, 0, 0, 0)
        self._queue_pdu(h, data)

    # ------------------------------------------------------------------ Logout
    def _on_logout(self, f, counted: bool) -> None:
        reason = f[1] & 0x7F
        cid = f[6] >> 16
        itt = f[5]
        sess = self.session
        if reason == P.LOGOUT_CLOSE_SESSION or (reason == P.LOGOUT_CLOSE_CONNECTION
                                                and cid == self.cid):
            self._logout_itt = (itt, P.LOGOUT_RSP_SUCCESS, reason, counted)
            self._drop_waiting_tasks()
            self._phase = _P_LOGOUT     # answer once in-flight commands finish
            return
        if reason == P.LOGOUT_CLOSE_CONNECTION:
            other = sess.find_conn(cid)
            rsp = P.LOGOUT_RSP_CID_NOT_FOUND
            if other is not None:
                other.abort(f"logged out by connection {self.cid}")
                rsp = P.LOGOUT_RSP_SUCCESS
            self._logout_response(itt, rsp)
        else:   # remove the connection for recovery: needs ErrorRecoveryLevel 2
            self._logout_response(itt, P.LOGOUT_RSP_RECOVERY_UNSUPPORTED)
        self._answered(counted)

    def _logout_response(self, itt: int, rsp: int) -> None:
        sn, exp, mx = self._stat_fields()
        p = self.session.params
        t2w = int(p.get("DefaultTime2Wait", 2)) if rsp == 0 else 0
        t2r = int(p.get("DefaultTime2Retain", 20)) if rsp == 0 else 0
        h = _pack(P.OP_LOGOUT_RSP, 0x80, rsp << 8, 0, 0, itt, 0, sn, exp, mx, 0,
                  (t2w << 16) | t2r, 0)
        self._queue_pdu(h)

    def _send_logout_rsp(self) -> None:
        itt, rsp, reason, counted = self._logout_itt
        self._answered(counted)
        self._logout_response(itt, rsp)
        self._phase = _P_CLOSING
        self.close_reason = self.close_reason or "logout"
        if reason == P.LOGOUT_CLOSE_SESSION:
            for c in list(self.session.conns):
                if c is not self:
                    c.abort("session logged out")

    # ------------------------------------------------------------------ FFP entry
    def _apply_params(self, neg, sess) -> None:
        self.max_send_dsl = neg.value("MaxRecvDataSegmentLength")
        self._recv_limit = self.max_recv_dsl
        self._hd = 4 if neg.value("HeaderDigest") == "CRC32C" else 0
        self._dd = 4 if neg.value("DataDigest") == "CRC32C" else 0
        p = sess.params
        self._immediate_data = bool(p["ImmediateData"])
        self._initial_r2t = bool(p["InitialR2T"])
        self._first_burst = int(p["FirstBurstLength"])
        self._max_burst = int(p["MaxBurstLength"])
        self._max_r2t = int(p["MaxOutstandingR2T"])

    def _enter_ffp(self) -> None:
        self._phase = _P_FFP
        s = self.session
        log.info("iscsi %s: %s session tsih=%d cid=%d %s -> %s (HD=%s DD=%s)", self.name,
                 "discovery" if s.session_type == SESSION_DISCOVERY else "normal", s.tsih,
                 self.cid, self.initiator_name, self.target_name or "-",
                 bool(self._hd), bool(self._dd))
