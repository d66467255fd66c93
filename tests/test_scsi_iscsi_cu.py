"""libiscsi's compliance suite against the SCSI target: the iSCSI engine
(targets/iscsi, Contract 1/3) in front of ScsiDev replicas on two reactors of a Harness,
a malloc bdev behind, connections alternating between the reactors (so the multipath
tests put their two initiators on different reactors), and
``iscsi-test-cu --test=SCSI --dataloss`` with a second URL for the multipath tests.
Every test of the family must pass (the suite counts its own skips -- commands answered
INVALID OPERATION CODE, removable-medium tests -- as passes)."""
import os
import re
import selectors
import shutil
import socket
import subprocess
import time

import pytest

from reactor.testing import Harness

import bdev_stub as Stub
from drivers import malloc

from targets.scsi import ScsiDev

try:
    from targets.iscsi.conn import IscsiConnection
    from targets.iscsi import session as _session
except ImportError:          # the iSCSI engine is not on this tree yet
    IscsiConnection = None

pytestmark = pytest.mark.skipif(IscsiConnection is None or not shutil.which("iscsi-test-cu"),
                                reason="needs targets/iscsi and libiscsi-bin")

IQN = "iqn.2016-06.io.spdk:disk1"
TGT_BLOCKS = 32768


class _Node:
    def __init__(self, dev):
        self.name = IQN
        self.alias = ""
        self.dev = dev
        self.queue_depth = 64
        self.disable_chap = False
        self.require_chap = False
        self.mutual_chap = False
        self.chap_group = 0
        self.header_digest = False
        self.data_digest = False


class _Registry:
    """A one-node Contract 4 replica (no CHAP, every initiator allowed)."""

    def __init__(self, dev, port):
        self.node = _Node(dev)
        self.port = port
        self.options = {"node_base": "iqn.2016-06.io.spdk", "nop_timeout": 60,
                        "nop_in_interval": 30, "max_sessions": 128,
                        "max_connections_per_session": 2, "max_queue_depth": 64,
                        "default_time2wait": 2, "default_time2retain": 20,
                        "first_burst_length": 8192, "immediate_data": True,
                        "error_recovery_level": 0, "allow_duplicated_isid": False,
                        "max_burst_length": 1048576}
        self.discovery_auth = (False, False, False, 0)

    def find_target(self, iqn):
        return self.node if iqn == IQN else None

    def access_allowed(self, node, initiator_name, initiator_addr, pg_tag):
        return True

    def send_targets(self, initiator_name, initiator_addr, pg_tag, value):
        return [(IQN, [f"127.0.0.1:{self.port},1"])] if value in ("All", IQN) else []

    def find_chap_secret(self, group_tag, user):
        return None


def _serve_until(h, lsock, regs, proc, deadline):
    conns = []
    sel = selectors.DefaultSelector()
    n = 0
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("iscsi-test-cu did not finish in time")
            try:
                while True:
                    s, addr = lsock.accept()
                    th = n % len(regs)
                    n += 1
                    h.set_thread(th)
                    meta = {"pg_tag": 1, "portal": lsock.getsockname(), "peer": addr}
                    conns.append((th, IscsiConnection(s, meta, regs[th])))
            except BlockingIOError:
                pass
            busy = h.poll_threads()
            for th, c in list(conns):
                h.set_thread(th)
                if (c.needs_poll() or c.wants_read()) and c.poll():
                    busy += 1
                if c.done:
                    conns.remove((th, c))
                elif c.needs_poll():
                    busy += 1
            busy += h.poll_threads()
            if busy:
                continue
            fds = {lsock.fileno(): selectors.EVENT_READ}
            for _th, c in conns:
                ev = (selectors.EVENT_READ if c.wants_read() else 0) | \
                     (selectors.EVENT_WRITE if c.send_blocked else 0)
                if ev and c.fileno() >= 0:
                    fds[c.fileno()] = ev
            for fd, ev in fds.items():
                sel.register(fd, ev)
            try:
                sel.select(0.01)
            finally:
                for fd in fds:
                    sel.unregister(fd)
    finally:
        for th, c in conns:
            h.set_thread(th)
            c.abort("test over")
        for _ in range(100):
            h.poll_threads()
            for th, c in list(conns):
                h.set_thread(th)
                c.poll()
                if c.done:
                    conns.remove((th, c))
            if not conns:
                break
        sel.close()
        for s in list(_session.SESSIONS.by_tsih.values()):
            s.close()
        h.poll_threads()


def test_iscsi_test_cu_scsi_family(tmp_path):
    with Harness(2, n_reactors=2) as h:
        Stub.init_layer(h)
        h.set_thread(0)
        rcs = []
        malloc.create("Malloc0", TGT_BLOCKS, 512, cb=lambda rc, name: rcs.append(rc))
        h.poll_threads()
        assert rcs == [0]
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        devs, regs = [], []
        for i in (0, 1):
            h.set_thread(i)
            devs.append(ScsiDev(IQN, [(0, "Malloc0")]))
            regs.append(_Registry(devs[-1], port))
        url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
        log = tmp_path / "cu.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(["iscsi-test-cu", "--test=SCSI", "--dataloss", "-n", url, url],
                                    stdout=f, stderr=subprocess.STDOUT)
        try:
            _serve_until(h, lsock, regs, proc, time.monotonic() + 240)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, 9)
                proc.wait()
            lsock.close()
            for i, d in enumerate(devs):
                h.set_thread(i)
                d.destruct()
            h.poll_threads()
            h.set_thread(0)
            malloc.delete("Malloc0", lambda rc: None)
            h.poll_threads()
            Stub.fini_layer(h)
        out = log.read_text()
        m = re.search(r"tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
        assert m, out[-3000:]
        total, ran, passed, failed = map(int, m.groups())
        assert failed == 0 and passed == ran == total, out[-3000:]
        assert passed > 146                      # tgtd passes 146 of 215
