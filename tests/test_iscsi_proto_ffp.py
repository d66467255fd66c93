"""iSCSI full feature phase: reads, writes, R2T, residuals, sense, CmdSN window, NOP, TMF."""
from __future__ import annotations

import struct

import pytest

import iscsi_fakes as F
from conftest_iscsi import DISK1, target  # noqa: F401  (fixture)
from iscsi_client import TUR, Client, read10, write10
from targets.iscsi import pdu as P


def _login(srv, **kw):
    c = Client(srv.port)
    c.login(DISK1, **kw)
    return c


def test_read_phase_collapse_datasn_offsets_and_statsn(target):
    srv, reg, dev = target
    lun = dev.luns[0]
    lun.data[:64 * 512] = bytes(range(256)) * 128
    with _login(srv, extra=[("MaxBurstLength", "16384")]) as c:
        c.sock.settimeout(5)
        sn0 = c.exp_statsn
        itt = c.scsi(read10(0, 64), read=64 * 512)
        data, last, dis = c.read_all(itt)
        assert data == bytes(lun.data[:64 * 512])
        assert [p.f[10] for p in dis] == list(range(len(dis)))       # DataSN 0..n-1
        assert all(len(p.data) <= 65536 for p in dis)
        # F ends each MaxBurstLength sequence; S + GOOD only on the last
        ends = [p.f[11] + len(p.data) for p in dis if p.flags & 0x80]
        assert ends == [16384, 32768]
        assert last.flags & P.DATAIN_STATUS and last.f[2] & 0xFF == 0
        assert not any(p.flags & 1 for p in dis[:-1])
        assert last.stat_sn == sn0
        assert c.exp_statsn == sn0 + 1


def test_read_underflow_sets_u_and_residual_in_collapsed_datain(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(read10(0, 1), read=4096)        # one block asked, EDTL 4096
        data, last, dis = c.read_all(itt)
        assert len(data) == 512
        assert last.flags & P.DATAIN_UNDERFLOW and last.f[12] == 4096 - 512


def test_read_overflow_sets_o(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(read10(0, 2), read=512)
        data, last, dis = c.read_all(itt)
        assert len(data) == 512
        assert last.flags & P.DATAIN_OVERFLOW and last.f[12] == 512


def test_check_condition_goes_in_a_scsi_response_with_sense(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(read10(5000, 1), read=512)        # past the end
        data, rsp, dis = c.read_all(itt)
        assert rsp.op == P.OP_SCSI_RSP and not dis
        assert rsp.f[2] & 0xFF == P.SCSI_CHECK_CONDITION
        slen = struct.unpack_from(">H", rsp.data)[0]
        sense = rsp.data[2:2 + slen]
        assert sense[2] & 0xF == 0x05 and sense[12] == 0x21
        itt = c.scsi(b"\xee" + bytes(9))              # unknown opcode
        _, rsp, _ = c.read_all(itt)
        assert rsp.data[2 + 12] == 0x20


def test_write_immediate_and_r2t_with_max_burst(target):
    srv, reg, dev = target
    lun = dev.luns[0]
    with _login(srv, extra=[("MaxBurstLength", "4096"), ("FirstBurstLength", "1024"),
                            ("MaxOutstandingR2T", "2")]) as c:
        payload = bytes((i * 7) & 0xFF for i in range(16 * 512))
        itt = c.scsi(write10(10, 16), write=payload[:1024], edtl=len(payload))
        got = 1024
        r2ts = []
        while got < len(payload):
            r = c.recv()
            assert r.op == P.OP_R2T and r.itt == itt, r
            r2ts.append(r)
            off, length = r.f[11], r.f[12]
            assert length <= 4096 and off == got
            for i, o in enumerate(range(off, off + length, 1024)):
                c.data_out(itt, r.ttt, i, o, payload[o:o + 1024],
                           final=o + 1024 == off + length)
            got += length
        assert [r.f[10] for r in r2ts] == list(range(len(r2ts)))         # R2TSN
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.f[2] & 0xFF == 0 and not r.flags & 6
        assert r.f[10] == len(r2ts)                                      # ExpDataSN
        assert bytes(lun.data[10 * 512:26 * 512]) == payload


def test_unsolicited_data_out_when_initial_r2t_no(target):
    srv, reg, dev = target
    reg.options["initial_r2t"] = False
    with _login(srv, extra=[("InitialR2T", "No"), ("FirstBurstLength", "2048")]) as c:
        assert c.last_login.text["InitialR2T"] == "No"
        payload = bytes(range(256)) * 16                     # 4096 bytes
        itt = c.scsi(write10(0, 8), write=payload[:512], edtl=4096, final=False)
        c.data_out(itt, P.RESERVED_TAG, 0, 512, payload[512:1024], final=False)
        c.data_out(itt, P.RESERVED_TAG, 1, 1024, payload[1024:2048], final=True)
        r = c.recv()
        assert r.op == P.OP_R2T and r.f[11] == 2048 and r.f[12] == 2048
        c.data_out(itt, r.ttt, 0, 2048, payload[2048:], final=True)
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.f[2] & 0xFF == 0
        assert bytes(dev.luns[0].data[:4096]) == payload


def test_write_residuals_solicit_only_what_the_cdb_transfers(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(write10(0, 1), write=b"b" * 512, edtl=10000)
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP, r            # no R2T for the 9488 extra bytes
        assert r.flags & P.RSP_UNDERFLOW and r.f[12] == 10000 - 512
        itt = c.scsi(write10(0, 2), write=b"c" * 512)   # EDTL one block, CDB two
        r = c.recv()
        assert r.flags & P.RSP_OVERFLOW and r.f[12] == 512
        assert bytes(dev.luns[0].data[512:1024]) == bytes(512)


def test_nop_out_echoes_data_and_nop_without_reply(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.nop(b"hello world", immediate=False)
        r = c.recv()
        assert r.op == P.OP_NOP_IN and r.itt == itt and r.data == b"hello world"
        assert r.ttt == P.RESERVED_TAG
        c.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, 0, 0, P.RESERVED_TAG,
               (P.RESERVED_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0))   # no answer wanted
        assert c.silent()
        c.ping()


def test_target_nop_in_after_idle_interval(target):
    srv, reg, dev = target
    reg.options["nop_in_interval"] = 0.2
    with _login(srv) as c:
        import time
        d = srv.call(lambda: srv.conns[0].deadline())
        assert d is not None and d - time.monotonic() <= 0.2
        r = c.recv()
        assert r.op == P.OP_NOP_IN and r.itt == P.RESERVED_TAG and r.ttt != P.RESERVED_TAG
        c.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, 0, 0, P.RESERVED_TAG,
               (r.ttt, c.cmdsn, c.exp_statsn, 0, 0, 0, 0))
        c.ping()


def test_cmdsn_window_drops_too_high_and_too_low(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.ping()
        mx = c.max_cmdsn
        assert mx == P.sn_add(c.cmdsn, 8 - 1)          # queue depth 8
        c.scsi(TUR, cmdsn=P.sn_add(mx, 1))              # above MaxCmdSN
        assert c.silent()
        c.scsi(TUR, cmdsn=P.sn_add(c.cmdsn, -1 & 0xFFFFFFFF))   # below ExpCmdSN
        assert c.silent()
        itt = c.scsi(TUR)                               # the window is unchanged
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.itt == itt and r.exp_cmdsn == c.cmdsn
        assert srv.call(lambda: srv.conns[0].stats["cmdsn_dropped"]) == 2


@pytest.mark.parametrize("digests", [(False, False), (True, True)])
def test_cmdsn_gap_waits_then_delivers_in_order(target, digests):
    srv, reg, dev = target
    with _login(srv, digests=digests) as c:
        first = c.cmdsn
        i2 = c.scsi(write10(3, 1), write=b"w" * 512, cmdsn=first + 1)
        assert c.silent()                           # waits for CmdSN `first`
        i1 = c.scsi(TUR, cmdsn=first)
        c.cmdsn = first + 2
        got = [c.recv().itt, c.recv().itt]
        assert got == [i1, i2]
        assert bytes(dev.luns[0].data[3 * 512:4 * 512]) == b"w" * 512


def test_window_closes_at_queue_depth_and_reopens(target):
    srv, reg, dev = target
    dev.hold_all = True
    with _login(srv) as c:
        itts = [c.scsi(TUR) for _ in range(8)]
        c.ping()                                   # immediate: still answered
        r = c.ping()
        assert r.max_cmdsn == P.sn_add(c.cmdsn, -1 & 0xFFFFFFFF)   # closed
        c.scsi(TUR)                                # beyond: dropped
        assert c.silent()
        srv.call(lambda: [n.release_held() for n in dev.nexuses])
        got = {c.recv().itt for _ in range(8)}
        assert got == set(itts)
        c.cmdsn -= 1
        dev.hold_all = False
        itt = c.scsi(TUR)
        assert c.recv().itt == itt


def test_immediate_command_does_not_advance_cmdsn(target):
    srv, reg, dev = target
    with _login(srv) as c:
        sn = c.cmdsn
        itt = c.scsi(TUR, imm_bit=True)
        r = c.recv()
        assert r.itt == itt and r.exp_cmdsn == sn


def test_abort_task_and_task_set(target):
    srv, reg, dev = target
    with _login(srv) as c:
        dev.hold_all = True
        itt = c.scsi(read10(0, 1), read=512)
        c.ping()
        t = c.tmf(P.TMF_ABORT_TASK, rtt=itt, refcmdsn=c.cmdsn - 1)
        r = c.recv()
        assert r.op == P.OP_TMF_RSP and r.itt == t and r.f[2] >> 8 == P.TMF_RSP_COMPLETE
        t = c.tmf(P.TMF_ABORT_TASK, rtt=0x5555, refcmdsn=c.cmdsn - 1)
        r = c.recv()
        assert r.f[2] >> 8 == P.TMF_RSP_NO_TASK
        i1 = c.scsi(TUR)
        i2 = c.scsi(TUR)
        c.ping()
        t = c.tmf(P.TMF_ABORT_TASK_SET)
        r = c.recv()
        assert r.itt == t and r.f[2] >> 8 == P.TMF_RSP_COMPLETE
        assert c.silent()                     # aborted tasks answer nothing
        dev.hold_all = False
        itt = c.scsi(TUR)                     # ... but their CmdSNs were released
        r = c.recv()
        assert r.itt == itt and r.max_cmdsn == P.sn_add(r.exp_cmdsn, 7)


def test_abort_of_a_task_the_scsi_layer_just_finished_sends_no_response(target):
    """The SCSI layer finished the task but its completion has not reached the
    connection when ABORT TASK arrives (abort_task finds nothing): FUNCTION COMPLETE,
    and the late completion then answers nothing (libiscsi AbortTaskSimpleAsync: an
    aborted write must not also be reported GOOD)."""
    srv, reg, dev = target
    with _login(srv) as c:
        dev.hold_all = True
        itt = c.scsi(read10(0, 1), read=512)
        c.ping()
        finished = []

        def finish_in_scsi():        # out of the layer, its callback not yet run
            for nx in dev.nexuses:
                finished.extend(nx.executing.values())
                nx.executing.clear()
        srv.call(finish_in_scsi)
        assert len(finished) == 1
        t = c.tmf(P.TMF_ABORT_TASK, rtt=itt, refcmdsn=c.cmdsn - 1)
        r = c.recv()
        assert r.op == P.OP_TMF_RSP and r.itt == t and r.f[2] >> 8 == P.TMF_RSP_COMPLETE
        srv.call(lambda: [cb(task) for task, cb in finished])
        assert c.silent()                     # no SCSI Response, no Data-In
        dev.hold_all = False
        tur = c.scsi(TUR)
        r = c.recv()
        assert r.itt == tur and r.max_cmdsn == P.sn_add(r.exp_cmdsn, 7)


def test_lun_reset_warm_reset_and_unsupported(target):
    srv, reg, dev = target
    with _login(srv) as c:
        t = c.tmf(P.TMF_LOGICAL_UNIT_RESET)
        r = c.recv()
        assert r.itt == t and r.f[2] >> 8 == P.TMF_RSP_COMPLETE
        t = c.tmf(P.TMF_TARGET_WARM_RESET)
        assert c.recv().f[2] >> 8 == P.TMF_RSP_COMPLETE
        assert dev.resets == [("lun", 0), ("target", None)]
        for func, want in ((P.TMF_CLEAR_ACA, P.TMF_RSP_NOT_SUPPORTED),
                           (P.TMF_TARGET_COLD_RESET, P.TMF_RSP_NOT_SUPPORTED),
                           (P.TMF_TASK_REASSIGN, P.TMF_RSP_NO_REASSIGN)):
            t = c.tmf(func)
            r = c.recv()
            assert r.itt == t and r.f[2] >> 8 == want
        c.ping()


@pytest.mark.parametrize("hd,dd", [(True, False), (True, True), (False, True)])
def test_digests_both_directions(target, hd, dd):
    srv, reg, dev = target
    with _login(srv, digests=(hd, dd)) as c:
        assert (c.hd, c.dd) == (hd, dd)
        c.ping()
        payload = b"z" * 1536
        itt = c.scsi(write10(0, 3), write=payload)
        assert c.recv().f[2] & 0xFF == 0
        itt = c.scsi(read10(0, 3), read=1536)
        data, _, _ = c.read_all(itt)
        assert data == payload


def test_logout_waits_for_inflight_commands(target):
    srv, reg, dev = target
    with _login(srv) as c:
        dev.hold_all = True
        itt = c.scsi(TUR)
        c.ping()
        sn = c.cmdsn
        c.cmdsn += 1
        c.send(P.OP_LOGOUT_REQ, 0x80, 0, 0, 0x999, (0, sn, c.exp_statsn, 0, 0, 0, 0))
        assert c.silent()
        srv.call(lambda: [n.release_held() for n in dev.nexuses])
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.itt == itt
        r = c.recv()
        assert r.op == P.OP_LOGOUT_RSP and r.itt == 0x999
        assert c.closed_by_target()


def test_backpressure_stops_reading_when_outbound_is_full(monkeypatch):
    import socket as _s
    from targets.iscsi.conn import IscsiConnection
    F.install_fake_scsi(monkeypatch)
    reg = F.FakeRegistry()
    dev = F.MemDev("d", {0: F.MemLun(num_blocks=8192)}, sync=True)
    reg.add_node("disk1", dev)
    a, b = _s.socketpair()
    a.setsockopt(_s.SOL_SOCKET, _s.SO_RCVBUF, 4096)
    conn = IscsiConnection(b, {"pg_tag": 1, "portal": ("x", 1), "peer": ("y", 2)}, reg,
                           max_outbound=256 * 1024)
    try:
        c = Client.__new__(Client)
        c.sock, c.hd, c.dd, c.cmdsn, c.exp_statsn, c.itt = a, False, False, 1, 0, 0x100
        c.isid, c.tsih, c.cid, c.max_cmdsn = 0x801234, 0, 0, 0
        a.setblocking(False)
        import threading
        stop = threading.Event()

        def pump():
            while not stop.is_set() and not conn.done:
                conn.poll()
                stop.wait(0.001)
        # login over the socketpair, driving the engine from a thread
        th = threading.Thread(target=pump, daemon=True)
        th.start()
        a.settimeout(5)
        c.login(DISK1)
        stop.set()
        th.join()
        for _ in range(8):                 # 8 x 2 MiB reads, never read by the client
            c.scsi(read10(0, 4096), read=4096 * 512)
        for _ in range(50):
            conn.poll()
        assert not conn.wants_read() and conn.send_blocked
        queued = conn._queued - conn._sent
        assert queued < 256 * 1024 + 4 * 1024 * 1024     # bounded: one command past the cap
    finally:
        conn.abort("test end")
        conn.poll()
        a.close()
        from targets.iscsi import session as S
        for s in list(S.SESSIONS.by_tsih.values()):
            s.close()


def test_read_underflow_from_the_data_length_alone(target):
    """A SCSI layer that does not say what the CDB asked for: the Data-In length decides."""
    srv, reg, dev = target
    run = dev.run

    def run_without_expected_length(t):
        run(t)
        t.expected_length = None
    dev.run = run_without_expected_length
    with _login(srv) as c:
        itt = c.scsi(read10(0, 1), read=2048)
        data, last, _ = c.read_all(itt)
        assert len(data) == 512
        assert last.flags & P.DATAIN_UNDERFLOW and last.f[12] == 1536


def test_unanswered_nop_in_times_the_connection_out(target):
    srv, reg, dev = target
    reg.options["nop_in_interval"] = 0.1
    reg.options["nop_timeout"] = 0.3
    with _login(srv) as c:
        r = c.recv()
        assert r.op == P.OP_NOP_IN and r.ttt != P.RESERVED_TAG
        assert c.closed_by_target(timeout=3)       # never answered
    assert F.wait_for(lambda: srv.call(lambda: bool(srv.finished)))
    assert "NOP-Out" in srv.call(lambda: srv.finished[-1].close_reason)


def test_shutdown_finishes_inflight_then_closes_and_abort_is_immediate(target):
    srv, reg, dev = target
    dev.hold_all = True
    with _login(srv) as c:
        itt = c.scsi(TUR)
        c.ping()
        srv.call(lambda: srv.conns[0].shutdown("test"))
        assert not srv.call(lambda: srv.conns[0].wants_read())
        assert c.silent()
        srv.call(lambda: [n.release_held() for n in dev.nexuses])
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.itt == itt     # answered before the close
        assert c.closed_by_target()
    assert F.wait_for(lambda: srv.call(lambda: not srv.conns))
    with _login(srv) as c:
        c.scsi(TUR)
        c.ping()
        conn = srv.call(lambda: srv.conns[0])
        srv.call(lambda: conn.abort("test abort"))
        assert c.closed_by_target()
        assert srv.call(lambda: conn.fileno()) == -1
        assert not srv.call(lambda: conn.done)          # a task is still in the SCSI layer
        srv.call(lambda: [n.release_held() for n in dev.nexuses])
        assert F.wait_for(lambda: srv.call(lambda: conn.done))


def test_max_r2t_per_connection_queues_the_next_write(target):
    srv, reg, dev = target
    reg.options["max_r2t_per_connection"] = 1
    with _login(srv) as c:
        i1 = c.scsi(write10(0, 1), write=b"", edtl=512)
        i2 = c.scsi(write10(1, 1), write=b"", edtl=512)
        r1 = c.recv()
        assert r1.op == P.OP_R2T and r1.itt == i1
        assert c.silent()                          # i2 waits for i1's R2T to finish
        c.data_out(i1, r1.ttt, 0, 0, b"1" * 512)
        got = {}
        for _ in range(2):
            p = c.recv()
            got[p.op] = p
        assert got[P.OP_SCSI_RSP].itt == i1 and got[P.OP_R2T].itt == i2
        c.data_out(i2, got[P.OP_R2T].ttt, 0, 0, b"2" * 512)
        assert c.recv().itt == i2
        assert bytes(dev.luns[0].data[:1024]) == b"1" * 512 + b"2" * 512
