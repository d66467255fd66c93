"""Protocol abuse on a raw socket: each case checks the Reject or the drop, and that
another connection (and, where the rules keep it, the same one) goes on working."""
from __future__ import annotations

import struct

import iscsi_fakes as F
from conftest_iscsi import DISK1, target  # noqa: F401  (fixture)
from iscsi_client import TUR, Client, read10, write10
from targets.iscsi import pdu as P
from targets.iscsi import session as S


def _login(srv, **kw):
    c = Client(srv.port)
    c.login(DISK1, **kw)
    return c


def _reject_reason(p):
    assert p.op == P.OP_REJECT, p
    return p.f[2] >> 8


def _other_connection_works(srv):
    with Client(srv.port) as o:
        o.isid = 0x80_00_00_00_00_77
        o.login(DISK1)
        o.ping()
        itt = o.scsi(read10(0, 1), read=512)
        data, _, _ = o.read_all(itt)
        assert len(data) == 512


def test_unknown_opcode_is_rejected_and_connection_goes_on(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.send(0x1C, 0x80, itt=0x42)
        r = c.recv()
        assert _reject_reason(r) == P.REJECT_COMMAND_NOT_SUPPORTED
        assert r.data[:1] == bytes([0x1C])           # the rejected header comes back
        c.send(P.OP_NOP_IN, 0x80, itt=0x43)          # a target opcode from the initiator
        assert _reject_reason(c.recv()) == P.REJECT_COMMAND_NOT_SUPPORTED
        c.ping()


def test_snack_and_login_in_full_feature_phase_are_protocol_errors(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.send(P.OP_SNACK, 0x80, itt=0x50)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        c.send(P.OP_LOGIN_REQ | P.IMMEDIATE_BIT, 0x87, itt=0x51)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        c.ping()


def test_segment_over_max_recv_dsl_drops_only_this_connection(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, itt=0x60,
               w=(P.RESERVED_TAG, c.cmdsn, 0, 0, 0, 0, 0), dsl=9000)   # > 8192 declared
        r = c.recv()
        assert _reject_reason(r) == P.REJECT_PROTOCOL_ERROR
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_garbage_bytes_after_login(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.send_raw(b"\xff" * 48)        # opcode 0x3f, huge length
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_data_out_for_unknown_task_is_rejected(target):
    srv, reg, dev = target
    with _login(srv) as c:
        c.data_out(0xABCD, 0x77, 0, 0, b"x" * 512)
        assert _reject_reason(c.recv()) == P.REJECT_INVALID_PDU_FIELD
        c.ping()
        # a TTT this task never got
        itt = c.scsi(write10(0, 2), write=b"", edtl=1024)
        r = c.recv()
        assert r.op == P.OP_R2T
        c.data_out(itt, r.ttt + 100, 0, 0, b"x" * 512)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_wrong_datasn_is_rejected_connection_stays(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(write10(0, 2), write=b"", edtl=1024)
        r = c.recv()
        assert r.op == P.OP_R2T
        c.data_out(itt, r.ttt, 5, 0, b"x" * 512, final=False)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        c.ping()                                        # still served
        c.data_out(itt, r.ttt, 0, 0, b"x" * 512, final=False)    # the right one now
        c.data_out(itt, r.ttt, 1, 512, b"y" * 512, final=True)
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.itt == itt and r.f[2] & 0xFF == 0
        assert bytes(dev.luns[0].data[:1024]) == b"x" * 512 + b"y" * 512


def test_wrong_buffer_offset_drops_the_connection(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(write10(0, 2), write=b"", edtl=1024)
        r = c.recv()
        c.data_out(itt, r.ttt, 0, 512, b"x" * 512)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        assert c.closed_by_target()
    assert bytes(dev.luns[0].data[:1024]) == bytes(1024)     # nothing was written
    _other_connection_works(srv)


def test_data_past_the_r2t_and_early_f_bit(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.scsi(write10(0, 2), write=b"", edtl=1024)
        r = c.recv()
        c.data_out(itt, r.ttt, 0, 0, b"x" * 1536)
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        assert c.closed_by_target()
    with _login(srv) as c:
        itt = c.scsi(write10(0, 2), write=b"", edtl=1024)
        r = c.recv()
        c.data_out(itt, r.ttt, 0, 0, b"x" * 512, final=True)    # F before the end
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_immediate_data_rules(target):
    srv, reg, dev = target
    with _login(srv, extra=[("FirstBurstLength", "4096")]) as c:
        c.scsi(write10(0, 1), write=b"x" * 1024, edtl=512)    # more than EDTL
        assert _reject_reason(c.recv()) == P.REJECT_PROTOCOL_ERROR
        c.scsi(write10(0, 32), write=b"x" * 4608, edtl=16384)  # > FirstBurstLength 4096
        r = c.recv()
        assert _reject_reason(r) == P.REJECT_PROTOCOL_ERROR
        c.ping()
    assert bytes(dev.luns[0].data[:1024]) == bytes(1024)


def test_edtl_without_direction_is_an_invalid_field(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.next_itt()
        c.send(P.OP_SCSI_CMD, 0x80, 0, 0, itt,
               (512, c.cmdsn, c.exp_statsn, 0, 0, 0, 0))
        c.cmdsn += 1
        assert _reject_reason(c.recv()) == P.REJECT_INVALID_PDU_FIELD
        itt = c.scsi(TUR)                        # the rejected command used its CmdSN
        assert c.recv().itt == itt


def test_duplicate_itt_is_rejected(target):
    srv, reg, dev = target
    dev.hold_all = True
    with _login(srv) as c:
        itt = c.scsi(TUR)
        c.scsi(TUR, itt=itt)
        assert _reject_reason(c.recv()) == P.REJECT_INVALID_PDU_FIELD
        srv.call(lambda: [n.release_held() for n in dev.nexuses])
        assert c.recv().itt == itt


def test_header_digest_error_drops_the_connection(target):
    srv, reg, dev = target
    with _login(srv, digests=(True, False)) as c:
        c.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, 0, 0, 0x70,
               (P.RESERVED_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0), hdr_digest_ok=False)
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_data_digest_error_is_rejected_then_dropped(target):
    srv, reg, dev = target
    with _login(srv, digests=(True, True)) as c:
        c.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, 0, 0, 0x71,
               (P.RESERVED_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0), b"ping",
               data_digest_ok=False)
        assert _reject_reason(c.recv()) == P.REJECT_DATA_DIGEST
        assert c.closed_by_target()
    _other_connection_works(srv)


def test_bidirectional_command_gets_check_condition(target):
    srv, reg, dev = target
    with _login(srv) as c:
        itt = c.next_itt()
        c.send(P.OP_SCSI_CMD, 0x80 | 0x40 | 0x20, 0, 0, itt,
               (512, c.cmdsn, c.exp_statsn) + struct.unpack(">4I", read10(0, 1).ljust(16, b"\0")))
        c.cmdsn += 1
        r = c.recv()
        assert r.op == P.OP_SCSI_RSP and r.f[2] & 0xFF == P.SCSI_CHECK_CONDITION
        assert r.data[2 + 12] == 0x24
        c.ping()


def test_peer_disconnect_mid_write_frees_the_task(target):
    srv, reg, dev = target
    c = _login(srv)
    c.scsi(write10(0, 4), write=b"", edtl=2048)
    assert c.recv().op == P.OP_R2T
    c.close()
    assert F.wait_for(lambda: srv.call(lambda: not srv.conns))
    assert srv.call(lambda: srv.finished[-1].done and not srv.finished[-1]._tasks)
    _other_connection_works(srv)


def test_nexus_outlives_the_connection_until_its_tasks_return(target):
    srv, reg, dev = target
    dev.hold_all = True
    c = _login(srv)
    c.scsi(read10(0, 1), read=512)
    c.ping()
    c.close()
    assert F.wait_for(lambda: srv.call(lambda: not any(
        x.fileno() >= 0 for x in srv.conns)))
    assert dev.nexus_closed == []            # a task is still in the SCSI layer
    srv.call(lambda: [n.release_held() for n in dev.nexuses])
    assert F.wait_for(lambda: srv.call(lambda: dev.nexus_closed != []))
    assert F.wait_for(lambda: srv.call(lambda: not srv.conns))


def test_protocol_error_on_one_connection_of_a_session_spares_the_other(target):
    srv, reg, dev = target
    a = _login(srv, extra=[("MaxConnections", "2")])
    b = Client(srv.port)
    b.tsih, b.cid, b.isid = a.tsih, 1, a.isid
    b.login(DISK1)
    b.cmdsn = a.cmdsn
    b.send_raw(b"\xff" * 48)
    assert b.closed_by_target()
    a.cmdsn = b.cmdsn
    itt = a.scsi(read10(0, 1), read=512)
    data, _, _ = a.read_all(itt)
    assert len(data) == 512
    assert srv.call(lambda: len(S.SESSIONS.by_tsih[a.tsih].conns)) == 1
    a.close()
    b.close()


def test_a_connection_that_never_logs_in_is_closed(target, monkeypatch):
    from targets.iscsi import conn as C
    monkeypatch.setattr(C, "LOGIN_TIMEOUT_S", 0.3)
    srv, reg, dev = target
    with Client(srv.port) as c:
        assert c.closed_by_target(timeout=3)
    assert F.wait_for(lambda: srv.call(lambda: bool(srv.finished)))
    assert "login" in srv.call(lambda: srv.finished[-1].close_reason)
    _other_connection_works(srv)
