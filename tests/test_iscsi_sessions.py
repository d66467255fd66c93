"""iSCSI sessions across reactors (process mode, `ringstack start -m 0x3 --iscsi PORT`,
the raw initiator of tests/iscsi_client.py): the main reactor's session directory decides
TSIHs, ERL 0 reinstatement and max_sessions whichever reactor a connection was placed on;
a connection joining a session on the other reactor is handed over there and shares the
session's CmdSN window; the idle timers (login timeout, NOP-In / nop_timeout) fire on an
idle reactor, which still sleeps.  Consecutive connections alternate between the two
reactors (round-robin placement), which is what puts a second connection elsewhere."""
import time

import pytest

from iscsi_client import Client, read10
from targets.iscsi import pdu as P
from test_iscsi_rpc import NB, free_port, start  # noqa: F401  (the fixture)
from test_iscsi_serve import malloc_config

TARGET = f"{NB}:Malloc0"


def begin(start, tmp_path, **options):  # noqa: F811
    port = free_port()
    if options:
        t = start("--wait-for-rpc")
        t.call("iscsi_set_options", **options)       # before framework_start_init (SPDK)
        t.call("framework_start_init")
        assert t.call("framework_wait_init") is True
        t.cli("bdev_malloc_create", "-b", "Malloc0", "16", "512")
        t.cli("iscsi_create_portal_group", "1", f"127.0.0.1:{port}")
        t.cli("iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32")
        t.cli("iscsi_create_target_node", "Malloc0", "", "Malloc0:0", "1:2", "64", "-d")
    else:
        t = start("-c", malloc_config(tmp_path, ["Malloc0"]), "--iscsi", str(port))
    deadline = time.monotonic() + 20
    while not t.call("iscsi_get_target_nodes") and time.monotonic() < deadline:
        time.sleep(0.05)
    return t, port


def conns(t):
    return sorted((c["tsih"], c["cid"], c["lcore_id"]) for c in t.call("iscsi_get_connections"))


def joined(port, lead, cid=1, expect_ok=True):
    c = Client(port)
    c.isid, c.tsih, c.cid = lead.isid, lead.tsih, cid
    c.exp_statsn = 0
    r = c.login(TARGET, expect_ok=expect_ok)
    return c, r


def read_ok(c, cmdsn):
    itt = c.scsi(read10(0, 1), read=512, cmdsn=cmdsn)
    data, rsp = b"", None
    while True:
        p = c.recv()
        if p.op == P.OP_DATA_IN:
            data += p.data
            if p.flags & 1:
                rsp = p
                break
        elif p.op == P.OP_SCSI_RSP:
            rsp = p
            break
    assert rsp.itt == itt and len(data) == 512
    return rsp


def test_second_connection_on_the_other_reactor_joins_and_shares_the_cmdsn_window(start, tmp_path):  # noqa: F811,E501
    t, port = begin(start, tmp_path)
    lead = Client(port)
    r = lead.login(TARGET, extra=[("MaxConnections", "4")])
    assert r.text["MaxConnections"] == "2"          # max_connections_per_session
    second, r = joined(port, lead)
    assert r.tsih == lead.tsih
    cs = conns(t)
    assert [c[:2] for c in cs] == [(lead.tsih, 0), (lead.tsih, 1)]
    assert cs[0][2] == cs[1][2], cs          # both on the session's reactor
    # one CmdSN window: CmdSN n on the first connection, n+1 on the second, n+2 first
    n = lead.cmdsn
    assert read_ok(lead, n).exp_cmdsn == n + 1
    assert read_ok(second, n + 1).exp_cmdsn == n + 2
    assert read_ok(lead, n + 2).exp_cmdsn == n + 3
    # a command ahead of the window's ExpCmdSN on one connection waits for the other's
    itt = second.scsi(read10(0, 1), read=512, cmdsn=n + 4)
    assert second.silent(0.3)
    read_ok(lead, n + 3)
    got = second.recv()
    assert got.itt == itt
    # MaxConnections (max_connections_per_session 2): a third is refused, nothing changes
    third, r = joined(port, lead, cid=2, expect_ok=False)
    assert r.status_class == P.LOGIN_TOO_MANY_CONNECTIONS
    assert third.closed_by_target()
    assert conns(t) == cs
    lead.ping()
    second.ping()
    for c in (lead, second, third):
        c.close()


def test_unknown_tsih_is_session_does_not_exist_and_changes_nothing(start, tmp_path):  # noqa: F811
    t, port = begin(start, tmp_path)
    lead = Client(port)
    lead.login(TARGET)
    before = conns(t)
    for tsih in (lead.tsih + 1, lead.tsih ^ 1024, 0xFFFF):   # this reactor, the other, none
        c = Client(port)
        c.isid, c.tsih, c.cid = lead.isid, tsih, 1
        r = c.login(TARGET, expect_ok=False)
        assert r.status_class == P.LOGIN_SESSION_DOES_NOT_EXIST, (tsih, hex(r.status_class))
        assert c.closed_by_target()
        c.close()
    # another initiator's ISID does not open someone else's session either
    c = Client(port)
    c.isid, c.tsih, c.cid = lead.isid + 1, lead.tsih, 1
    assert c.login(TARGET, expect_ok=False).status_class == P.LOGIN_SESSION_DOES_NOT_EXIST
    c.close()
    assert conns(t) == before
    lead.ping()
    lead.close()


def test_reinstatement_from_the_other_reactor_closes_the_old_session(start, tmp_path):  # noqa: F811
    t, port = begin(start, tmp_path)
    old = Client(port)
    old.login(TARGET)
    new = Client(port)                        # same initiator, ISID and target, TSIH 0
    new.login(TARGET)
    assert old.closed_by_target(5.0)
    (tsih, cid, core), = conns(t)
    assert tsih == new.tsih
    new.ping()
    read_ok(new, new.cmdsn)
    new.close()
    old.close()


def test_max_sessions_counts_every_reactor(start, tmp_path):  # noqa: F811
    t, port = begin(start, tmp_path, max_sessions=2)
    a, b = Client(port), Client(port)
    a.isid, b.isid = 0x8000_0000_0001, 0x8000_0000_0002
    a.login(TARGET)
    b.login(TARGET)
    assert len({c[2] for c in conns(t)}) == 2     # one session on each reactor
    before = conns(t)
    for isid in (0x8000_0000_0003, 0x8000_0000_0004):   # both reactors refuse a third
        c = Client(port)
        c.isid = isid
        r = c.login(TARGET, expect_ok=False)
        assert r.status_class == P.LOGIN_OUT_OF_RESOURCES
        assert c.closed_by_target()
        c.close()
    assert conns(t) == before
    a.ping()
    b.ping()
    a.close()                                   # a closed session frees its place
    deadline = time.monotonic() + 5
    while len(conns(t)) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    c = Client(port)
    c.isid = 0x8000_0000_0005
    c.login(TARGET)
    c.ping()
    for x in (b, c):
        x.close()


def test_silent_client_is_dropped_after_the_login_timeout(start, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RINGSTACK_ISCSI_LOGIN_TIMEOUT", "1")
    t, port = begin(start, tmp_path)
    silent = [Client(port), Client(port)]        # one on each reactor
    t0 = time.monotonic()
    for c in silent:
        assert c.closed_by_target(5.0)
    assert time.monotonic() - t0 < 4.0
    for c in silent:
        c.close()


def test_nop_in_after_the_interval_and_drop_when_unanswered(start, tmp_path):  # noqa: F811
    import psutil
    t, port = begin(start, tmp_path, nop_in_interval=1, nop_timeout=1)
    quiet, polite = Client(port), Client(port)
    quiet.isid, polite.isid = 0x8000_0000_0011, 0x8000_0000_0012
    quiet.login(TARGET)
    polite.login(TARGET)
    procs = [psutil.Process(t.proc.pid)] + psutil.Process(t.proc.pid).children()
    for p in procs:
        p.cpu_percent()
    # The other answers its NOP-Ins (NOP-Out with the TTT) from the start, in a thread of
    # its own: its timer runs alongside the quiet one's, so answering only after the quiet
    # connection is gone would race its own nop_timeout.
    import threading
    answered, failure = [], []

    def answer_twice():
        try:
            for _ in range(2):
                polite.sock.settimeout(5.0)
                n = polite.recv()
                assert n.op == P.OP_NOP_IN and n.ttt != P.RESERVED_TAG, n
                polite.send(P.OP_NOP_OUT | P.IMMEDIATE_BIT, 0x80, 0, 0, P.RESERVED_TAG,
                            (n.ttt, polite.cmdsn, polite.exp_statsn, 0, 0, 0, 0))
                answered.append(n)
        except Exception as exc:     # reported by the main thread
            failure.append(exc)
    th = threading.Thread(target=answer_twice, daemon=True)
    th.start()
    quiet.sock.settimeout(5.0)
    nop = quiet.recv()                          # nobody polls the connection but the timer
    assert nop.op == P.OP_NOP_IN and nop.itt == P.RESERVED_TAG and nop.ttt != P.RESERVED_TAG
    assert quiet.closed_by_target(5.0)          # unanswered within nop_timeout
    th.join(15)
    assert not failure and len(answered) == 2, (failure, answered)
    polite.ping()                               # and it stays
    usage = [p.cpu_percent() for p in procs]
    assert all(u < 20 for u in usage), usage    # the timers do not keep the reactors awake
    quiet.close()
    polite.close()


def test_directory_decisions():
    """The main reactor's SessionDirectory: TSIH ranges per reactor, reinstatement, the
    max_sessions count over reactors, and a refusal that changes nothing."""
    from targets.iscsi.session import SESSION_DISCOVERY, SESSION_NORMAL, SessionDirectory
    d = SessionDirectory()
    a = d.open(0, "ini", 1, "tgt", SESSION_NORMAL, 2, True)
    b = d.open(1, "ini", 2, "tgt", SESSION_NORMAL, 2, True)
    assert a == (1, "", []) and b == (1024, "", [])
    # full: refused, and the session it would have reinstated stays
    before = {k: list(v) for k, v in d.entries.items()}
    assert d.open(0, "ini", 3, "tgt", SESSION_DISCOVERY, 2, True) == (0, "max_sessions reached", [])
    assert d.entries == before
    assert d.open(0, "ini", 2, "tgt", SESSION_NORMAL, 1, True) == (0, "max_sessions reached", [])
    assert d.entries == before               # the session it would have reinstated stays
    # same initiator/ISID/target from the other reactor: the old one is closed on reactor 0,
    # and its TSIH is kept until reactor 0 reports it closed
    tsih, why, close = d.open(1, "ini", 1, "tgt", SESSION_NORMAL, 2, True)
    assert (tsih, close) == (1025, [(0, 1)]) and d.live() == 2
    assert d.open(0, "x", 9, "tgt", SESSION_NORMAL, 3, True)[0] == 2     # not 1: closing
    d.closed(1)
    assert d.open(0, "y", 9, "tgt", SESSION_NORMAL, 9, True)[0] == 1
    # allow_duplicated_isid: no reinstatement
    assert d.open(1, "ini", 1, "tgt", SESSION_NORMAL, 9, False)[2] == []
    d.forget_reactor(1)
    assert all(e[0] == 0 for e in d.entries.values())
