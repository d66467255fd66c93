"""iSCSI protocol engine: codec, negotiation, CHAP, login and sessions (raw initiator)."""
from __future__ import annotations

import pytest

import iscsi_fakes as F
from conftest_iscsi import DISK1, target  # noqa: F401  (fixture)
from iscsi_client import Client
from targets.iscsi import pdu as P
from targets.iscsi import session as S
from targets.iscsi.chap import AuthError, ChapServer, chap_response, encode_hex
from targets.iscsi.negotiate import Negotiation, NegotiationError, target_values


# ---------------------------------------------------------------------- units
def test_serial_number_arithmetic_wraps():
    assert P.sn_lt(0xFFFFFFFF, 0) and P.sn_gt(0, 0xFFFFFFFF)
    assert P.sn_lt(1, 2) and not P.sn_lt(2, 2) and not P.sn_gt(2, 2)
    assert P.sn_add(0xFFFFFFFF, 2) == 1


def test_lun_field_round_trip():
    for lun in (0, 1, 255, 256, 16383):
        assert P.lun_to_int(P.int_to_lun(lun)) == lun


def test_text_codec_rejects_a_pair_without_equals():
    assert P.decode_text(b"A=1\0B=\0") == [("A", "1"), ("B", "")]
    with pytest.raises(ValueError):
        P.decode_text(b"A=1\0junk\0")


def test_digest_is_crc32c_little_endian():
    assert P.digest(b"123456789") == (0xE3069283).to_bytes(4, "little")


def _neg(**opts):
    base = dict(F.FakeRegistry().options)
    base.update(opts)
    return Negotiation(target_values(base))


def test_negotiation_result_functions():
    n = _neg()
    assert n.offer("MaxBurstLength", "262144", discovery=False, leading=True) == "262144"
    assert n.offer("FirstBurstLength", "65536", discovery=False, leading=True) == "8192"
    assert n.offer("DefaultTime2Wait", "0", discovery=False, leading=True) == "2"
    assert n.offer("InitialR2T", "No", discovery=False, leading=True) == "Yes"
    assert n.offer("ImmediateData", "Yes", discovery=False, leading=True) == "Yes"
    assert n.offer("HeaderDigest", "None,CRC32C", discovery=False, leading=True) == "None"
    assert n.offer("DataDigest", "CRC32C,None", discovery=False, leading=True) == "CRC32C"
    assert n.offer("ErrorRecoveryLevel", "2", discovery=False, leading=True) == "0"
    assert n.offer("MaxRecvDataSegmentLength", "4096", discovery=False, leading=True) is None
    assert n.value("MaxRecvDataSegmentLength") == 4096
    assert n.value("MaxOutstandingR2T") == 1          # never sent: RFC default


def test_negotiation_answers_reject_notunderstood_irrelevant():
    n = _neg(immediate_data=False)
    assert n.offer("MaxBurstLength", "100", discovery=False, leading=True) == "Reject"
    assert n.offer("InitialR2T", "maybe", discovery=False, leading=True) == "Reject"
    assert n.offer("HeaderDigest", "MD5", discovery=False, leading=True) == "Reject"
    assert n.offer("X-com.example.Foo", "1", discovery=False, leading=True) == "NotUnderstood"
    assert n.offer("ImmediateData", "Yes", discovery=False, leading=True) == "No"
    assert n.offer("MaxConnections", "4", discovery=True, leading=True) == "Irrelevant"
    with pytest.raises(NegotiationError):
        n.offer("MaxBurstLength", "4096", discovery=False, leading=True)


def test_node_digest_requirement_makes_crc32c_the_only_choice():
    node = F.FakeNode("n", None, header_digest=True)
    n = Negotiation(target_values(F.FakeRegistry().options, node))
    assert n.offer("HeaderDigest", "None", discovery=False, leading=True) == "Reject"
    assert n.offer("DataDigest", "None", discovery=False, leading=True) == "None"


def _chap_answer(srv, secret=b"s3cret", **extra):
    ans = dict(srv.step({"CHAP_A": "7,5"}))
    ident, chal = int(ans["CHAP_I"]), bytes.fromhex(ans["CHAP_C"][2:])
    keys = {"CHAP_N": "u", "CHAP_R": encode_hex(chap_response(ident, secret, chal))}
    keys.update(extra)
    return srv.step(keys)


def test_chap_server_one_way_and_mutual():
    secrets = {"u": ("s3cret", "mu", "ms3cret")}
    srv = ChapServer(secrets.get, mutual=False)
    assert _chap_answer(srv) == [] and srv.state == "done"
    srv = ChapServer(secrets.get, mutual=True)
    with pytest.raises(AuthError):          # mutual required, no initiator challenge
        _chap_answer(srv)
    srv = ChapServer(secrets.get, mutual=True)
    out = dict(_chap_answer(srv, CHAP_I="9", CHAP_C="0x0102"))
    assert out["CHAP_N"] == "mu"
    assert out["CHAP_R"] == encode_hex(chap_response(9, b"ms3cret", b"\x01\x02"))
    assert srv.state == "done"


def test_chap_rejects_bad_response_and_reflection():
    secrets = {"u": ("s3cret", "mu", "ms3cret")}
    srv = ChapServer(secrets.get, mutual=False)
    ans = dict(srv.step({"CHAP_A": "5"}))
    with pytest.raises(AuthError):
        srv.step({"CHAP_N": "u", "CHAP_R": "0x" + "00" * 16})
    srv = ChapServer(secrets.get, mutual=False)
    ans = dict(srv.step({"CHAP_A": "5"}))
    ident, chal = int(ans["CHAP_I"]), bytes.fromhex(ans["CHAP_C"][2:])
    with pytest.raises(AuthError):    # the initiator reflects our own challenge
        srv.step({"CHAP_N": "u", "CHAP_R": encode_hex(chap_response(ident, b"s3cret", chal)),
                  "CHAP_I": "1", "CHAP_C": encode_hex(chal)})
    with pytest.raises(AuthError):
        ChapServer(secrets.get, False).step({"CHAP_A": "6"})


# ---------------------------------------------------------------------- login
def test_login_normal_session_declares_tpgt_alias_and_limits(target):
    srv, reg, dev = target
    with Client(srv.port) as c:
        keys = [("InitiatorName", "iqn.x:y"), ("TargetName", DISK1), ("AuthMethod", "None")]
        r = c.login_pdu(keys, 0, 1)
        assert r.status_class == 0 and r.op == P.OP_LOGIN_RSP
        t = r.text
        assert t["TargetPortalGroupTag"] == "1" and t["TargetAlias"] == "Disk One"
        assert t["AuthMethod"] == "None"
        r = c.login_pdu([("MaxBurstLength", "262144"), ("X-foo", "1"),
                         ("MaxRecvDataSegmentLength", "65536")], 1, 3)
        t = r.text
        assert r.tsih != 0 and t["MaxBurstLength"] == "262144"
        assert t["X-foo"] == "NotUnderstood" and t["MaxRecvDataSegmentLength"] == "8192"
        c.tsih = r.tsih
        c.ping()
        assert dev.nexuses and dev.nexuses[0].iport == f"iqn.x:y,i,0x{c.isid:012x}"
        assert dev.nexuses[0].tport == f"{DISK1},t,0x0001"


@pytest.mark.parametrize("keys,status", [
    ([("TargetName", DISK1)], P.LOGIN_MISSING_PARAMETER),
    ([("InitiatorName", "iqn.x:y")], P.LOGIN_MISSING_PARAMETER),
    ([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1 + "x")], P.LOGIN_TARGET_NOT_FOUND),
    ([("InitiatorName", "iqn.x:y"), ("SessionType", "Weird")],
     P.LOGIN_SESSION_TYPE_UNSUPPORTED),
    ([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1), ("TargetName", DISK1)],
     P.LOGIN_INITIATOR_ERROR),
])
def test_login_failures_answer_status_and_close(target, keys, status):
    srv, reg, dev = target
    with Client(srv.port) as c:
        r = c.login_pdu(keys, 0, 1)
        assert r.status_class == status
        assert c.closed_by_target()
    with Client(srv.port) as c2:      # the target keeps serving others
        c2.login(DISK1)
        c2.ping()


def test_login_not_allowed_and_unsupported_version(target):
    srv, reg, dev = target
    reg.nodes[DISK1].allowed = {"iqn.only:me"}
    with Client(srv.port) as c:
        r = c.login(DISK1, expect_ok=False)
        assert r.status_class == P.LOGIN_AUTHORIZATION_FAILURE
    with Client(srv.port) as c:
        r = c.login_pdu([("InitiatorName", "iqn.only:me"), ("TargetName", DISK1)], 0, 1,
                        vmin=1)
        assert r.status_class == P.LOGIN_UNSUPPORTED_VERSION
    with Client(srv.port) as c:
        c.login(DISK1, initiator="iqn.only:me")


def test_non_login_pdu_during_login_is_refused(target):
    srv, reg, dev = target
    with Client(srv.port) as c:
        c.nop()
        r = c.recv()
        assert r.op == P.OP_LOGIN_RSP and r.status_class == P.LOGIN_INVALID_DURING_LOGIN
        assert c.closed_by_target()


def test_login_stage_rules(target):
    srv, reg, dev = target
    with Client(srv.port) as c:        # operational keys in the security stage: negotiated
        r = c.login_pdu([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1),
                         ("MaxBurstLength", "4096"), ("X-vendor", "1")], 0, 1)
        assert r.status_class == 0 and r.text["MaxBurstLength"] == "4096"
        assert r.text["X-vendor"] == "NotUnderstood"
        r = c.login_pdu([("CHAP_A", "5")], 1, 3)   # security keys after it
        assert r.status_class == P.LOGIN_INITIATOR_ERROR
    with Client(srv.port) as c:        # NSG going backwards
        r = c.login_pdu([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1)], 1, 0)
        assert r.status_class == P.LOGIN_INITIATOR_ERROR
    with Client(srv.port) as c:        # straight to the operational stage: allowed w/o CHAP
        r = c.login_pdu([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1)], 1, 3)
        assert r.status_class == 0 and r.tsih


def test_login_text_continued_over_c_bit_pdus(target):
    srv, reg, dev = target
    with Client(srv.port) as c:
        text = P.encode_text([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1),
                              ("AuthMethod", "None")])
        r = c.login_pdu(text[:10], 0, 1, transit=False, cont=True)
        assert r.status_class == 0 and not r.data and not r.flags & P.LOGIN_TRANSIT
        r = c.login_pdu(text[10:], 0, 1)
        assert r.status_class == 0 and r.text["AuthMethod"] == "None"
        assert r.flags & P.LOGIN_TRANSIT


def test_chap_login_one_way_mutual_and_failures(target):
    srv, reg, dev = target
    node = reg.nodes[DISK1]
    node.require_chap, node.chap_group = True, 1
    reg.chap[1] = {"alice": ("alicesecret1", "tgt", "targetsecret")}
    with Client(srv.port) as c:        # CHAP required, None offered
        r = c.login(DISK1, expect_ok=False)
        assert r.status_class == P.LOGIN_AUTH_FAILED
    with Client(srv.port) as c:
        r = c.login(DISK1, chap=("alice", "wrong"), expect_ok=False)
        assert r.status_class == P.LOGIN_AUTH_FAILED
        assert c.closed_by_target()
    with Client(srv.port) as c:
        c.login(DISK1, chap=("alice", "alicesecret1"))
        c.ping()
    node.mutual_chap = True
    with Client(srv.port) as c:        # mutual required, initiator sends no challenge
        r = c.login(DISK1, chap=("alice", "alicesecret1"), expect_ok=False)
        assert r.status_class == P.LOGIN_AUTH_FAILED
    with Client(srv.port) as c:
        c.login(DISK1, chap=("alice", "alicesecret1"), mutual=("tgt", "targetsecret"))
        c.ping()


def test_disable_chap_refuses_chap_only(target):
    srv, reg, dev = target
    reg.nodes[DISK1].disable_chap = True
    with Client(srv.port) as c:
        r = c.login_pdu([("InitiatorName", "iqn.x:y"), ("TargetName", DISK1),
                         ("AuthMethod", "CHAP")], 0, 1)
        assert r.status_class == P.LOGIN_AUTH_FAILED


def test_discovery_send_targets_and_irrelevant_keys(target):
    srv, reg, dev = target
    reg.add_node("disk2", F.MemDev("disk2"))
    with Client(srv.port) as c:
        r = c.login(discovery=True, extra=[("MaxConnections", "2")])
        assert r.text["MaxConnections"] == "Irrelevant"
        itt = c.text([("SendTargets", "All")])
        r = c.recv()
        assert r.op == P.OP_TEXT_RSP and r.itt == itt and r.flags & 0x80
        pairs = P.decode_text(r.data)
        assert ("TargetName", DISK1) in pairs and ("TargetName", F.BASE + ":disk2") in pairs
        assert ("TargetAddress", f"127.0.0.1:{srv.port},1") in pairs
        c.scsi(bytes(6))                 # SCSI in a discovery session: Reject
        r = c.recv()
        assert r.op == P.OP_REJECT and r.f[2] >> 8 == P.REJECT_PROTOCOL_ERROR
        r = c.logout()
        assert r.op == P.OP_LOGOUT_RSP and (r.f[2] >> 8) == 0
        assert c.closed_by_target()


def test_long_text_response_is_split_with_continue_and_ttt(target):
    srv, reg, dev = target
    for i in range(40):
        reg.add_node(f"a-rather-long-target-name-number-{i:03d}", F.MemDev(f"d{i}"))
    with Client(srv.port) as c:
        c.login(discovery=True)
        itt = c.text([("MaxRecvDataSegmentLength", "512"), ("SendTargets", "All")])
        data = b""
        ttt = P.RESERVED_TAG
        for _ in range(100):
            if ttt != P.RESERVED_TAG:
                c.text(b"", ttt=ttt, itt=itt)
            r = c.recv()
            assert r.op == P.OP_TEXT_RSP and r.itt == itt and len(r.data) <= 512
            data += r.data
            if r.flags & 0x80:
                assert not r.flags & P.TEXT_CONTINUE and r.ttt == P.RESERVED_TAG
                break
            assert r.flags & P.TEXT_CONTINUE and r.ttt != P.RESERVED_TAG
            ttt = r.ttt
        names = [v for k, v in P.decode_text(data) if k == "TargetName"]
        assert len(names) == 41
        c.text(b"", ttt=0x1234, itt=itt)     # a TTT we never handed out
        r = c.recv()
        assert r.op == P.OP_REJECT and r.f[2] >> 8 == P.REJECT_INVALID_PDU_FIELD


def test_session_reinstatement_closes_the_old_session(target):
    srv, reg, dev = target
    a = Client(srv.port)
    a.login(DISK1)
    a.ping()
    old_tsih = a.tsih
    with Client(srv.port) as b:          # same initiator name + ISID, TSIH 0
        b.login(DISK1)
        b.ping()
        assert a.closed_by_target()
        assert dev.nexus_closed          # the old I_T nexus went with its session
        assert srv.call(lambda: old_tsih not in S.SESSIONS.by_tsih or
                        S.SESSIONS.by_tsih[old_tsih].conns[0].peer[1] ==
                        b.sock.getsockname()[1])
    a.close()


def test_second_connection_joins_and_max_connections(target):
    srv, reg, dev = target
    a = Client(srv.port)
    a.login(DISK1, extra=[("MaxConnections", "2")])
    assert a.last_login.text["MaxConnections"] == "2"
    b = Client(srv.port)
    b.tsih, b.cid, b.cmdsn, b.isid = a.tsih, 1, a.cmdsn, a.isid
    b.login(DISK1)
    assert b.tsih == a.tsih
    # the CmdSN window is the session's: a command on b advances ExpCmdSN seen on a
    b.cmdsn = a.cmdsn
    itt = b.scsi(bytes(6))
    r = b.recv()
    assert r.op == P.OP_SCSI_RSP and r.itt == itt
    a.cmdsn = b.cmdsn
    itt = a.scsi(bytes(6))
    r = a.recv()
    assert r.op == P.OP_SCSI_RSP and r.exp_cmdsn == a.cmdsn
    c = Client(srv.port)
    c.tsih, c.cid, c.isid = a.tsih, 2, a.isid
    r = c.login(DISK1, expect_ok=False)
    assert r.status_class == P.LOGIN_TOO_MANY_CONNECTIONS
    c.close()
    d = Client(srv.port)
    d.tsih, d.cid = 0x7777, 3
    r = d.login(DISK1, expect_ok=False)
    assert r.status_class == P.LOGIN_SESSION_DOES_NOT_EXIST
    d.close()
    # logout (close connection) of b from a
    r = a.logout(reason=P.LOGOUT_CLOSE_CONNECTION, cid=1)
    assert r.op == P.OP_LOGOUT_RSP and r.f[2] >> 8 == 0
    assert b.closed_by_target()
    a.ping()
    r = a.logout(reason=P.LOGOUT_CLOSE_CONNECTION, cid=9)
    assert r.f[2] >> 8 == P.LOGOUT_RSP_CID_NOT_FOUND
    r = a.logout(reason=P.LOGOUT_REMOVE_FOR_RECOVERY, cid=0)
    assert r.f[2] >> 8 == P.LOGOUT_RSP_RECOVERY_UNSUPPORTED
    r = a.logout()
    assert r.f[2] >> 8 == 0 and (r.f[11] >> 16) == 2 and (r.f[11] & 0xFFFF) == 20
    assert a.closed_by_target()
    a.close()
    b.close()


def test_get_connections_shape(target):
    srv, reg, dev = target
    from targets.iscsi.conn import connections
    with Client(srv.port) as c:
        c.login(DISK1)
        c.ping()
        lst = srv.call(connections)
        assert len(lst) == 1
        e = lst[0]
        assert e["tsih"] == c.tsih and e["cid"] == 0 and e["target_node_name"] == DISK1
        assert e["initiator_addr"] == "127.0.0.1" and e["target_addr"] == "127.0.0.1"
        assert {"id", "lcore_id"} <= set(e)


def test_send_targets_in_a_normal_session(target):
    srv, reg, dev = target
    reg.add_node("disk2", F.MemDev("disk2"))
    with Client(srv.port) as c:
        c.login(DISK1)
        itt = c.text([("SendTargets", "")])
        r = c.recv()
        assert r.itt == itt and P.decode_text(r.data) == [
            ("TargetName", DISK1), ("TargetAddress", f"127.0.0.1:{srv.port},1")]
        c.text([("SendTargets", "All"), ("Foo", "bar"), ("InitialR2T", "No")])
        t = c.recv().text
        assert t == {"SendTargets": "Reject", "Foo": "NotUnderstood", "InitialR2T": "Reject"}
        c.ping()


def test_max_sessions_refuses_the_next_login(target):
    srv, reg, dev = target
    reg.options["max_sessions"] = 1
    with Client(srv.port) as a:
        a.login(DISK1)
        with Client(srv.port) as b:
            b.isid = 0x80_00_00_00_00_02
            r = b.login(DISK1, expect_ok=False)
            assert r.status_class == P.LOGIN_OUT_OF_RESOURCES
            assert b.closed_by_target()
        assert srv.call(lambda: len(S.SESSIONS.by_tsih)) == 1
        a.ping()


def test_tsih_names_its_reactor():
    t = S.SessionTable(index=3)
    tsih = t.alloc_tsih()
    assert S.reactor_of_tsih(tsih) == 3
    assert S.reactor_of_tsih(S.SessionTable(index=0).alloc_tsih()) == 0
