"""Full feature phase SCSI traffic (RFC 7143 11.2-11.9): SCSI Command with immediate and
unsolicited data, R2T / Data-Out with DataSN and BufferOffset checks, Data-In with phase
collapse, SCSI Response with residuals and sense, and Task Management.  A mixin of
IscsiConnection.

The SCSI layer is Contract 3 (docs/targets.md): one ScsiTask per command, executed on the
session's I_T nexus; its completion only queues PDUs.
"""
from __future__ import annotations

import logging
from collections import deque

# Contract 3; tests may install a stand-in for ScsiTask (tests/iscsi_fakes.py)
from ..scsi import DIR_FROM_DEV, DIR_NONE, DIR_TO_DEV, ScsiTask
from ..scsi import sense as _sense
from . import pdu as P

log = logging.getLogger("ringstack.iscsi")
_debug = log.isEnabledFor(logging.DEBUG)

_pack = P.bhs_pack
_RSVD = P.RESERVED_TAG
_DATA_IN = P.OP_DATA_IN
_SCSI_RSP = P.OP_SCSI_RSP
_ILLEGAL_REQUEST_INVALID_CDB = _sense.fixed_sense(_sense.ILLEGAL_REQUEST,
                                                 *_sense.INVALID_FIELD_IN_CDB)

# task states
_T_DATA = 1        # collecting Data-Out
_T_EXEC = 2        # executing in the SCSI layer
_T_GONE = 3        # answered, aborted or dropped


class _Task:
    """One SCSI command of this connection.  It is its own completion callback.  Only
    what every command needs is set per instance; the write state (Data-Out bookkeeping)
    falls back to these class defaults until a write sets it."""

    buf = None           # Data-Out buffer (nexus.alloc)
    received = 0         # Data-Out bytes in buf
    want = 0             # bytes to solicit: EDTL, or less if the CDB asks less
    unsol_end = 0        # end of the unsolicited burst (immediate + unsolicited Data-Out)
    unsol_got = 0
    unsol_datasn = 0
    unsol_done = True
    r2t_next = 0         # next offset to ask for
    r2ts = ()            # outstanding R2Ts: [ttt, offset, length, got, next DataSN]
    r2tsn = 0
    st = None
    abort_answered = False   # ABORT TASK said FUNCTION COMPLETE: its response must never go

    def __init__(self, conn, itt, lun, lun_field, cdb, edtl, attr, direction, counted):
        self.conn = conn
        self.itt = itt
        self.lun = lun
        self.lun_field = lun_field
        self.cdb = cdb
        self.edtl = edtl
        self.attr = attr
        self.direction = direction
        self.counted = counted
        self.state = _T_DATA

    def __call__(self, st) -> None:
        self.conn._scsi_done(self, st)


class FfpMixin:
    def _ffp_init(self) -> None:
        self._tasks: dict = {}        # ITT -> _Task (collecting data or executing)
        self._ttts: dict = {}         # TTT -> (task, r2t record)
        self._next_ttt = 0
        self._discard: dict = {}      # ITT of an answered write -> True (drain its Data-Out)
        self._immediate_data = True
        self._initial_r2t = True
        self._first_burst = 65536
        self._max_burst = 262144
        self._max_r2t = 1
        self._tmf_pending = 0
        self._pending_r2t = 0         # R2Ts outstanding on this connection
        self._r2t_waiting = deque()   # write tasks waiting for max_r2t_per_connection
        opts = getattr(self.reg, "options", {}) or {}
        self._max_r2t_conn = max(1, int(opts.get("max_r2t_per_connection", 4)))

    def _pending_responses(self) -> bool:
        return self._tmf_pending > 0

    # ------------------------------------------------------------------ SCSI Command
    def _on_scsi_cmd(self, f, buf, s, dstart, dsl, counted) -> None:
        flags = f[1]
        itt = f[5]
        edtl = f[6]
        if itt in self._tasks or itt == _RSVD:
            self._reject(P.REJECT_INVALID_PDU_FIELD, bytes(buf[s:s + 48]))
            self._answered(counted)
            return
        cdb = bytes(buf[s + 32:s + 48])
        if (flags & 0x60) == 0x40 and not dsl and dstart == s + 48 + self._hd:
            # the common READ: no AHS, no data; straight to the SCSI layer
            f4 = f[4]
            t = _Task(self, itt, P.lun_to_int(f4), f4, cdb, edtl, flags & 7, DIR_FROM_DEV,
                      counted)
            self._tasks[itt] = t
            self._execute(t)
            return
        if _debug:
            log.debug("iscsi %s: SCSI 0x%02x ITT 0x%x EDTL %d immediate %d flags 0x%02x",
                      self.name, cdb[0], itt, edtl, dsl, flags)
        ahs_len = dstart - s - 48 - self._hd
        bidi = False
        if ahs_len:
            pos, end = s + 48, s + 48 + ahs_len
            while pos + 4 <= end:
                alen = (buf[pos] << 8) | buf[pos + 1]
                atype = buf[pos + 2]
                if atype == P.AHS_EXTENDED_CDB and alen > 1:
                    cdb += bytes(buf[pos + 4:pos + 3 + alen])
                elif atype == P.AHS_BIDI_READ_LENGTH:
                    bidi = True
                pos += 4 + ((alen - 1 + 3) & ~3) if alen else 4
        read = flags & P.CMD_READ
        write = flags & P.CMD_WRITE
        lun = P.lun_to_int(f[4])
        if write:
            direction = DIR_TO_DEV
        elif read:
            direction = DIR_FROM_DEV
        else:
            direction = DIR_NONE
        t = _Task(self, itt, lun, f[4], cdb, edtl, flags & P.CMD_ATTR_MASK, direction, counted)
        if (read and write) or bidi:
            # bidirectional commands are not supported (SPDK: neither)
            self._tasks[itt] = t
            self._respond_early(t, P.SCSI_CHECK_CONDITION, _ILLEGAL_REQUEST_INVALID_CDB,
                                dsl, final=bool(flags & P.FLAG_FINAL))
            return
        if not (read or write) and edtl:
            # SPDK: EDTL > 0 with neither R nor W is an invalid field
            self._reject(P.REJECT_INVALID_PDU_FIELD, bytes(buf[s:s + 48]))
            self._answered(counted)
            return
        if dsl and (not write or dsl > edtl or dsl > self._first_burst
                    or not self._immediate_data):
            # SPDK rejects the command (protocol error) and the connection goes on; its
            # unsolicited Data-Out, if any follows, is drained
            log.warning("iscsi %s: ITT 0x%x: immediate data %d bytes (EDTL %d, write %s, "
                        "FirstBurstLength %d, ImmediateData %s): rejected", self.name, itt,
                        dsl, edtl, bool(write), self._first_burst, self._immediate_data)
            self._reject(P.REJECT_PROTOCOL_ERROR, bytes(buf[s:s + 48]))
            if write and not (flags & P.FLAG_FINAL):
                self._discard_add(itt)
            self._answered(counted)
            return
        self._tasks[itt] = t
        if not write or edtl == 0:
            if write and not (flags & P.FLAG_FINAL) and not self._initial_r2t:
                self._discard_add(itt)
            self._execute(t)
            return
        nexus = self.session.nexus
        try:
            t.buf = nexus.alloc(edtl)
        except Exception:
            log.exception("iscsi %s: no buffer for a %d-byte write", self.name, edtl)
            t.buf = None
        if t.buf is None:
            self._respond_early(t, P.SCSI_BUSY, b"", dsl, final=bool(flags & P.FLAG_FINAL))
            return
        if dsl:
            t.buf[0:dsl] = buf[dstart:dstart + dsl]
            self.stats["data_out_bytes"] += dsl
        t.want = edtl
        t.r2ts = []
        # solicit no more than the CDB transfers (libiscsi iSCSIResiduals: EDTL 10000
        # for a one-block WRITE is an underflow, not 10000 bytes of R2T)
        data_length = getattr(nexus, "data_length", None)
        if data_length is not None:
            try:
                want = data_length(lun, cdb)
            except Exception:
                log.exception("iscsi %s: data_length failed", self.name)
                want = None
            if want is not None and 0 <= want < edtl:
                t.want = want
        t.received = dsl
        t.unsol_got = dsl
        if not self._initial_r2t and not (flags & P.FLAG_FINAL):
            t.unsol_end = min(self._first_burst, edtl)
            t.unsol_done = t.unsol_end <= dsl
        else:
            t.unsol_end = dsl
        t.r2t_next = max(t.unsol_end, dsl)
        if t.received >= t.want and t.unsol_done:
            self._execute(t)
            return
        self._send_r2ts(t)

    def _discard_add(self, itt: int) -> None:
        if len(self._discard) >= _MAX_DISCARD:
            self._discard.pop(next(iter(self._discard)))
        self._discard[itt] = True

    def _respond_early(self, t, status, sense, dsl, final) -> None:
        """Answer a write (or bad command) before its data arrived; unsolicited Data-Out
        that may still come for it is drained."""
        if t.direction == DIR_TO_DEV and not final and not self._initial_r2t:
            self._discard_add(t.itt)
        self._send_response(t, status, sense, 0, 0, 0)
        self._task_gone(t)

    def _send_r2ts(self, t) -> None:
        """R2Ts for what t still needs: at most MaxOutstandingR2T for the task and
        max_r2t_per_connection on the connection (SPDK); a task over the connection's
        limit waits in line for an R2T of another task to finish."""
        limit = self._max_r2t
        sess = self.session
        while len(t.r2ts) < limit and t.r2t_next < t.want:
            if self._pending_r2t >= self._max_r2t_conn:
                if t not in self._r2t_waiting:
                    self._r2t_waiting.append(t)
                return
            self._pending_r2t += 1
            length = min(self._max_burst, t.want - t.r2t_next)
            self._next_ttt = (self._next_ttt + 1) & 0x7FFFFFFF
            ttt = self._next_ttt
            r2t = [ttt, t.r2t_next, length, 0, 0]      # ttt, offset, length, got, DataSN
            t.r2ts.append(r2t)
            self._ttts[ttt] = (t, r2t)
            h = _pack(P.OP_R2T, 0x80, 0, 0, t.lun_field, t.itt, ttt, self.stat_sn,
                      sess.exp_cmdsn, sess.max_cmdsn, t.r2tsn, t.r2t_next, length)
            self._queue_pdu(h)
            t.r2tsn += 1
            t.r2t_next += length

    # ------------------------------------------------------------------ Data-Out
    def _on_data_out(self, f, buf, dstart, dsl) -> None:
        itt, ttt, datasn, offset = f[5], f[6], f[10], f[11]
        final = f[1] & P.FLAG_FINAL
        if _debug:
            log.debug("iscsi %s: Data-Out ITT 0x%x TTT 0x%x DataSN %d offset %d len %d F=%d",
                      self.name, itt, ttt, datasn, offset, dsl, bool(final))
        t = self._tasks.get(itt)
        if t is None or t.state != _T_DATA:
            if ttt == _RSVD and itt in self._discard:
                if final:
                    del self._discard[itt]
                return
            self._reject(P.REJECT_INVALID_PDU_FIELD, self._header_of(f))
            log.info("iscsi %s: Data-Out for unknown task ITT 0x%x TTT 0x%x", self.name,
                     itt, ttt)
            return
        if ttt == _RSVD:
            if t.unsol_done:
                return self._data_error(f, t, "unsolicited Data-Out not expected")
            if datasn != t.unsol_datasn:
                return self._datasn_error(f, t, datasn, t.unsol_datasn)
            if offset != t.unsol_got:
                return self._data_error(f, t, f"BufferOffset {offset}, expected {t.unsol_got}")
            end = offset + dsl
            if end > t.unsol_end:
                return self._data_error(f, t, f"unsolicited data past FirstBurstLength "
                                              f"({end} > {t.unsol_end})")
            if (end == t.unsol_end) != bool(final):
                return self._data_error(f, t, "F bit does not end the unsolicited burst")
            t.buf[offset:end] = buf[dstart:dstart + dsl]
            t.unsol_got = end
            t.unsol_datasn += 1
            if final:
                t.unsol_done = True
        else:
            ent = self._ttts.get(ttt)
            if ent is None or ent[0] is not t:
                return self._data_error(f, t, f"TTT 0x{ttt:x} not an R2T of this task")
            r2t = ent[1]
            if datasn != r2t[4]:
                return self._datasn_error(f, t, datasn, r2t[4])
            exp_off = r2t[1] + r2t[3]
            if offset != exp_off:
                return self._data_error(f, t, f"BufferOffset {offset}, expected {exp_off}")
            end = offset + dsl
            if end > r2t[1] + r2t[2]:
                return self._data_error(f, t, "Data-Out past the R2T's desired length")
            if (end == r2t[1] + r2t[2]) != bool(final):
                return self._data_error(f, t, "F bit does not end the R2T's sequence")
            t.buf[offset:end] = buf[dstart:dstart + dsl]
            r2t[3] += dsl
            r2t[4] += 1
            if final:
                t.r2ts.remove(r2t)
                del self._ttts[ttt]
                self._pending_r2t -= 1
        t.received += dsl
        self.stats["data_out_bytes"] += dsl
        if t.received >= t.want and not t.r2ts and t.unsol_done:
            self._execute(t)
        elif final and ttt != _RSVD:
            self._send_r2ts(t)
        if final and ttt != _RSVD and self._r2t_waiting:
            self._serve_r2t_waiting()

    def _serve_r2t_waiting(self) -> None:
        waiting = self._r2t_waiting
        while waiting and self._pending_r2t < self._max_r2t_conn:
            t = waiting.popleft()
            if t.state == _T_DATA:
                self._send_r2ts(t)

    def _header_of(self, f) -> bytes:
        return _pack(*f)

    def _datasn_error(self, f, t, got: int, want: int) -> None:
        """A Data-Out out of DataSN order is rejected and dropped; the connection goes on
        (SPDK: ERL 0 has no recovery R2T).  The task then never completes: the initiator
        times out and aborts it (libiscsi iSCSIDataSnInvalid expects the write to fail)."""
        self.stats["data_errors"] = self.stats.get("data_errors", 0) + 1
        log.warning("iscsi %s: ITT 0x%x: DataSN %d, expected %d: rejected", self.name, t.itt,
                    got, want)
        self._reject(P.REJECT_PROTOCOL_ERROR, self._header_of(f))

    def _data_error(self, f, t, why: str) -> None:
        """A broken data sequence: at ErrorRecoveryLevel 0 the connection cannot recover
        it (no recovery R2T, no SNACK).  Reject and close this connection."""
        self.stats["data_errors"] = self.stats.get("data_errors", 0) + 1
        self._protocol_error(f"ITT 0x{t.itt:x}: {why}", self._header_of(f))

    # ------------------------------------------------------------------ execution
    def _execute(self, t) -> None:
        st = ScsiTask(t.lun, t.cdb, t.edtl, t.direction, t.itt, t.attr)
        if t.buf is not None:
            st.data_out = t.buf
        t.st = st
        t.state = _T_EXEC
        self._inflight += 1
        try:
            self.session.nexus.execute(st, t)
        except Exception:
            log.exception("iscsi %s: SCSI execute raised (ITT 0x%x)", self.name, t.itt)
            if t.state == _T_EXEC:
                self._inflight -= 1
                t.st = None
                self._free_buf(t)
                self._send_response(t, P.SCSI_CHECK_CONDITION, bytes(
                    [0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0, 0, 0, 0, 0]),
                    0, 0, 0)
                self._task_gone(t)

    def _free_buf(self, t) -> None:
        if t.buf is not None:
            b, t.buf = t.buf, None
            nx = self.session.nexus if self.session is not None else None
            if nx is not None:
                try:
                    nx.free(b)
                except Exception:
                    log.exception("iscsi %s: nexus.free failed", self.name)

    def _task_gone(self, t) -> None:
        if t.state == _T_GONE:
            return
        t.state = _T_GONE
        if self._tasks.get(t.itt) is t:
            del self._tasks[t.itt]
        if t.r2ts:
            for r in t.r2ts:
                self._ttts.pop(r[0], None)
            self._pending_r2t -= len(t.r2ts)
            t.r2ts = ()
            if self._r2t_waiting:
                self._serve_r2t_waiting()
        self._answered(t.counted)
        t.counted = False

    def _scsi_done(self, t, st) -> None:
        if t.state != _T_EXEC or t.st is not st:
            log.error("iscsi %s: SCSI task ITT 0x%x completed twice (SCSI layer bug)",
                      self.name, t.itt)
            return
        self._inflight -= 1
        if t.buf is not None:
            self._free_buf(t)
        if self._sock is None or t.abort_answered or getattr(st, "aborted", False):
            self._task_gone(t)
            self._release(st)
            return
        if t.direction == DIR_FROM_DEV and not st.status and not st.sense:
            data = st.data_in
            n = len(data)
            edtl = t.edtl
            if 0 < n <= edtl and n <= self.max_send_dsl and n <= self._max_burst:
                # one Data-In carries data and GOOD status (phase collapse), built here
                # without the general path's loop and calls
                exp = getattr(st, "expected_length", None)
                if exp is None:
                    exp = n
                if exp == edtl:
                    rflags = residual = 0
                elif exp < edtl:
                    rflags, residual = P.RSP_UNDERFLOW, edtl - exp
                else:
                    rflags, residual = P.RSP_OVERFLOW, exp - edtl
                del self._tasks[t.itt]
                t.state = _T_GONE
                sess = self.session
                if t.counted:
                    t.counted = False
                    if sess.unanswered > 0:
                        sess.unanswered -= 1
                sn = self.stat_sn
                self.stat_sn = (sn + 1) & 0xFFFFFFFF
                exp_cmdsn = sess.exp_cmdsn
                h = _pack(_DATA_IN, 0x81 | rflags, 0, n, t.lun_field, t.itt, _RSVD, sn,
                          exp_cmdsn, (exp_cmdsn + sess.queue_depth - 1 - sess.unanswered)
                          & 0xFFFFFFFF, 0, 0, residual)
                if self._hd or self._dd or n & 3 or n < 4096:
                    self._queue_pdu(h, data)
                else:
                    out = self._out
                    out.append(h)
                    out.append(data)
                    self._queued += 48 + n
                    self.stats["pdus_out"] += 1
                self.stats["data_in_bytes"] += n
                self._frees.append((self._queued, st))
                return
        self._complete(t, st)

    def _complete(self, t, st) -> None:
        """Data-In (collapsing GOOD status into the last one) or SCSI Response."""
        edtl = t.edtl
        status = st.status
        sense = st.sense or b""
        data = st.data_in if t.direction == DIR_FROM_DEV else None
        n = len(data) if data is not None else 0
        if n > edtl:
            n = edtl
        # Residuals (RFC 7143 11.4.5) compare EDTL with what the command means to move:
        # the SCSI layer's expected_length when it says so, with any status (libiscsi
        # iSCSIResiduals accepts CHECK CONDITION for a partial block but still wants the
        # overflow), else, for a GOOD read, the Data-In length.
        expected = getattr(st, "expected_length", None)
        rflags = residual = 0
        if expected is not None:
            if expected > edtl:
                rflags, residual = P.RSP_OVERFLOW, expected - edtl
            elif expected < edtl:
                rflags, residual = P.RSP_UNDERFLOW, edtl - expected
        elif t.direction == DIR_FROM_DEV and n < edtl and status == P.SCSI_GOOD:
            rflags, residual = P.RSP_UNDERFLOW, edtl - n
        ndatain = 0
        if n:
            collapse = status == P.SCSI_GOOD and not sense
            ndatain = self._send_data_in(t, data, n, collapse, status, rflags, residual)
            if collapse:
                self._task_gone(t)
                self._frees.append((self._queued, st))
                return
        self._send_response(t, status, sense, residual, rflags,
                            ndatain if t.direction == DIR_FROM_DEV else t.r2tsn)
        self._task_gone(t)
        self._frees.append((self._queued, st))

    def _send_data_in(self, t, data, n, collapse, status, rflags, residual) -> int:
        view = data if isinstance(data, memoryview) else memoryview(data)
        seg = self.max_send_dsl
        burst = self._max_burst
        sess = self.session
        lunf, itt = t.lun_field, t.itt
        q = self._queue_pdu
        off = 0
        datasn = 0
        burst_left = burst
        while off < n:
            ln = seg if n - off > seg else n - off
            if ln > burst_left:
                ln = burst_left
            last = off + ln == n
            burst_left -= ln
            if last and collapse:
                # phase collapse: status rides in the last Data-In (RFC 7143 11.7.4)
                self._task_gone(t)    # opens the CmdSN window in this very PDU
                sn = self.stat_sn
                self.stat_sn = (sn + 1) & 0xFFFFFFFF
                h = _pack(_DATA_IN, 0x81 | rflags, status, ln, lunf, itt, _RSVD, sn,
                          sess.exp_cmdsn, sess.max_cmdsn, datasn, off, residual)
            else:
                fl = 0x80 if (last or burst_left == 0) else 0
                h = _pack(_DATA_IN, fl, 0, ln, lunf, itt, _RSVD, 0,
                          sess.exp_cmdsn, sess.max_cmdsn, datasn, off, 0)
            q(h, view[off:off + ln])
            if burst_left == 0:
                burst_left = burst
            off += ln
            datasn += 1
        self.stats["data_in_bytes"] += n
        return datasn

    def _send_response(self, t, status, sense, residual, rflags, exp_datasn) -> None:
        if t.counted:
            self._answered(True)
            t.counted = False
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & 0xFFFFFFFF
        sess = self.session
        data = (len(sense).to_bytes(2, "big") + bytes(sense)) if sense else b""
        h = _pack(_SCSI_RSP, 0x80 | rflags, status, len(data), 0, t.itt, 0, sn,
                  sess.exp_cmdsn, sess.max_cmdsn, exp_datasn, 0, residual)
        self._queue_pdu(h, data)
        if status != P.SCSI_GOOD:
            self.stats["errors"] += 1

    def _drop_waiting_tasks(self) -> None:
        """Tasks still collecting Data-Out can never finish once input stops."""
        self._r2t_waiting.clear()
        for t in [t for t in self._tasks.values() if t.state == _T_DATA]:
            self._free_buf(t)
            self._task_gone(t)

    # ------------------------------------------------------------------ Task management
    def _on_tmf(self, f, counted) -> None:
        func = f[1] & 0x7F
        itt = f[5]
        lun = P.lun_to_int(f[4])
        sess = self.session
        nexus = sess.nexus
        self._answered(counted)
        if func == P.TMF_ABORT_TASK:
            rtt = f[6]
            t = self._find_task(rtt)
            if t is None or t.lun != lun:
                # already answered (or never seen): RFC 7143 11.5.1 "task does not exist",
                # unless its CmdSN was never received -- then it counts as done
                ref = f[9]
                rsp = (P.TMF_RSP_COMPLETE if (t is None and P.sn_lt(ref, f[7])
                                              and not P.sn_lt(ref, sess.exp_cmdsn))
                       else P.TMF_RSP_NO_TASK)
                return self._tmf_rsp(itt, rsp)
            t.conn._abort_local(t)     # the task may live on another connection
            return self._tmf_rsp(itt, P.TMF_RSP_COMPLETE)
        if func == P.TMF_ABORT_TASK_SET:
            for c in list(sess.conns):
                for t in list(c._tasks.values()):
                    if t.lun == lun:
                        c._abort_local(t)
            try:
                nexus.abort_task_set(lun)
            except Exception:
                log.exception("iscsi %s: abort_task_set failed", self.name)
            return self._tmf_rsp(itt, P.TMF_RSP_COMPLETE)
        if func in (P.TMF_LOGICAL_UNIT_RESET, P.TMF_TARGET_WARM_RESET):
            for c in list(sess.conns):
                for t in list(c._tasks.values()):
                    if func == P.TMF_TARGET_WARM_RESET or t.lun == lun:
                        if t.state == _T_DATA:
                            c._abort_local(t)
            self._tmf_pending += 1
            self._inflight += 1
            answered = []

            def reset_done(rc, itt=itt):
                if answered:
                    return
                answered.append(1)
                self._inflight -= 1
                self._tmf_pending -= 1
                if self._sock is not None:
                    self._tmf_rsp(itt, P.TMF_RSP_COMPLETE if rc == 0 else P.TMF_RSP_REJECTED)
            try:
                if func == P.TMF_LOGICAL_UNIT_RESET:
                    nexus.lun_reset(lun, reset_done)
                else:
                    nexus.target_reset(reset_done)
            except Exception:
                log.exception("iscsi %s: reset failed", self.name)
                reset_done(-5)
            return
        if func == P.TMF_TASK_REASSIGN:
            return self._tmf_rsp(itt, P.TMF_RSP_NO_REASSIGN)
        self._tmf_rsp(itt, P.TMF_RSP_NOT_SUPPORTED)

    def _find_task(self, itt):
        for c in self.session.conns:
            t = c._tasks.get(itt)
            if t is not None:
                return t
        return None

    def _abort_local(self, t) -> None:
        """Abort one of this connection's tasks: no response is sent for it (SAM)."""
        if t.state == _T_DATA:
            self._free_buf(t)
            self._discard_add(t.itt)
            self._task_gone(t)
        elif t.state == _T_EXEC:
            # The SCSI layer may have finished the task already, its completion still on
            # the way to us (abort_task then finds nothing): whatever it says, the task is
            # answered as aborted -- no SCSI Response after a FUNCTION COMPLETE.
            t.abort_answered = True
            try:
                self.session.nexus.abort_task(t.lun, t.itt)
            except Exception:
                log.exception("iscsi %s: abort_task failed", self.name)
            # its completion (task.aborted) answers nothing; CmdSN is released then

    def _tmf_rsp(self, itt: int, rsp: int) -> None:
        sn, exp, mx = self._stat_fields()
        h = _pack(P.OP_TMF_RSP, 0x80, rsp << 8, 0, 0, itt, 0, sn, exp, mx, 0, 0, 0)
        self._queue_pdu(h)
