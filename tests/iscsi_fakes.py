"""Test-only stand-ins for the iSCSI engine's neighbours: a configuration replica
(Contract 4), a memory SCSI device (a minimal Contract 3: TUR, INQUIRY, READ CAPACITY
10/16, READ/WRITE 10/12/16, REPORT LUNS, everything else INVALID OPERATION CODE), and a
selectors loop in a thread that accepts on 127.0.0.1 and drives IscsiConnection objects.
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from targets.iscsi import ffp as _ffp
from targets.iscsi.conn import IscsiConnection
from targets.iscsi.session import SESSIONS

BASE = "iqn.2016-06.io.spdk"


def _sense(key, asc, ascq=0):
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


class FakeTask:
    def __init__(self, lun, cdb, transfer_length, direction, tag, attr):
        self.lun = lun
        self.cdb = bytes(cdb)
        self.transfer_length = transfer_length
        self.direction = direction
        self.tag = tag
        self.attr = attr
        self.data_out = None
        self.data_in = None
        self.status = 0
        self.sense = b""
        self.aborted = False
        self.released = False
        self.expected_length = None

    def release(self):
        assert not self.released, "released twice"
        self.released = True


class MemLun:
    def __init__(self, num_blocks=2048, block_size=512):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.data = bytearray(num_blocks * block_size)


class MemNexus:
    def __init__(self, dev, iport, tport):
        self.dev = dev
        self.iport = iport
        self.tport = tport
        self.closed = False
        self.executing = {}        # tag -> (task, cb) held by dev.hold_tags

    def alloc(self, n):
        return memoryview(bytearray(n))

    def free(self, buf):
        pass

    def execute(self, task, cb):
        self.dev.executed.append((self.iport, task.lun, task.cdb[0]))
        self.dev.run(task)
        if task.tag in self.dev.hold_tags or self.dev.hold_all:
            self.executing[task.tag] = (task, cb)
            return
        if self.dev.sync:
            cb(task)
        else:
            self.dev.deferred.append((task, cb))

    def data_length(self, lun, cdb):
        return self.dev.data_length(lun, cdb)

    def release_held(self):
        for tag, (task, cb) in list(self.executing.items()):
            del self.executing[tag]
            cb(task)

    def abort_task(self, lun, tag):
        ent = self.executing.pop(tag, None)
        if ent is None:
            return False
        ent[0].aborted = True
        self.dev.deferred.append(ent)
        return True

    def abort_task_set(self, lun):
        for tag, (task, cb) in list(self.executing.items()):
            if task.lun == lun:
                self.abort_task(lun, tag)

    def lun_reset(self, lun, cb):
        self.abort_task_set(lun)
        self.dev.resets.append(("lun", lun))
        self.dev.deferred.append((0, cb))

    def target_reset(self, cb):
        for tag in list(self.executing):
            self.abort_task(0, tag)
        self.dev.resets.append(("target", None))
        self.dev.deferred.append((0, cb))

    def close(self):
        self.closed = True
        self.dev.nexus_closed.append(self.iport)


class MemDev:
    def __init__(self, name, luns=None, sync=False):
        self.name = name
        self.luns = luns if luns is not None else {0: MemLun()}
        self.sync = sync
        self.deferred = deque()
        self.executed = []
        self.hold_tags = set()
        self.hold_all = False
        self.resets = []
        self.nexus_closed = []
        self.nexuses = []

    def open_nexus(self, iport, tport):
        n = MemNexus(self, iport, tport)
        self.nexuses.append(n)
        return n

    def run_deferred(self):
        n = 0
        while self.deferred:
            a, cb = self.deferred.popleft()
            cb(a)
            n += 1
        return n

    # ---------------------------------------------------------------- SCSI
    def run(self, t):
        op = t.cdb[0]
        lun = self.luns.get(t.lun)
        if lun is None and op not in (0x12, 0xA0):
            t.status, t.sense = 2, _sense(0x05, 0x25)
            return
        if op == 0x00:
            return
        if op == 0x12:
            alloc = struct.unpack_from(">H", t.cdb, 3)[0]
            if t.cdb[1] & 1:
                page = t.cdb[2]
                if page == 0x00:
                    d = bytes([0, 0, 0, 3, 0x00, 0x80, 0x83])
                elif page == 0x80:
                    d = bytes([0, 0x80, 0, 8]) + b"SN000001"
                elif page == 0x83:
                    desig = bytes([0x01, 0x03, 0, 8]) + bytes(range(1, 9))
                    d = bytes([0, 0x83, 0, len(desig)]) + desig
                else:
                    t.status, t.sense = 2, _sense(0x05, 0x24)
                    return
            else:
                pq = 0x00 if lun is not None else 0x7F
                d = bytes([pq, 0, 6, 2, 31, 0, 0, 2]) + b"RINGSTCK" + b"FAKE DISK       " \
                    + b"0001"
            self._data(t, d[:alloc], len(d[:alloc]))
            return
        if op == 0x25:
            self._data(t, struct.pack(">II", min(lun.num_blocks - 1, 0xFFFFFFFF),
                                      lun.block_size), 8)
            return
        if op == 0x9E and (t.cdb[1] & 0x1F) == 0x10:
            alloc = struct.unpack_from(">I", t.cdb, 10)[0]
            d = struct.pack(">QI", lun.num_blocks - 1, lun.block_size) + bytes(20)
            self._data(t, d[:alloc], min(alloc, 32))
            return
        if op == 0xA0:
            alloc = struct.unpack_from(">I", t.cdb, 6)[0]
            body = b"".join(struct.pack(">Q", l << 48) for l in sorted(self.luns))
            d = struct.pack(">I4x", len(body)) + body
            self._data(t, d[:alloc], min(alloc, len(d)))
            return
        rw = self._RW.get(op)
        if rw is None:
            t.status, t.sense = 2, _sense(0x05, 0x20)
            return
        lba = struct.unpack_from(rw[0], t.cdb, rw[1])[0]
        nblk = struct.unpack_from(rw[2], t.cdb, rw[3])[0]
        bs = lun.block_size
        length = nblk * bs
        t.expected_length = length
        if lba + nblk > lun.num_blocks:
            t.status, t.sense = 2, _sense(0x05, 0x21)
            return
        xfer = min(length, t.transfer_length)
        if op in (0x28, 0xA8, 0x88):
            t.data_in = memoryview(lun.data)[lba * bs:lba * bs + xfer]
        else:
            if t.data_out is not None:
                lun.data[lba * bs:lba * bs + xfer] = t.data_out[:xfer]

    _RW = {0x28: (">I", 2, ">H", 7), 0x2A: (">I", 2, ">H", 7),
           0xA8: (">I", 2, ">I", 6), 0xAA: (">I", 2, ">I", 6),
           0x88: (">Q", 2, ">I", 10), 0x8A: (">Q", 2, ">I", 10)}

    def data_length(self, lun, cdb):
        rw = self._RW.get(cdb[0])
        lu = self.luns.get(lun)
        if rw is None or lu is None:
            return None
        return struct.unpack_from(rw[2], cdb, rw[3])[0] * lu.block_size

    def _data(self, t, d, expected):
        t.expected_length = expected
        t.data_in = bytes(d[:t.transfer_length])


@dataclass
class FakeNode:
    name: str
    dev: MemDev
    alias: str = ""
    queue_depth: int = 64
    disable_chap: bool = False
    require_chap: bool = False
    mutual_chap: bool = False
    chap_group: int = 0
    header_digest: bool = False
    data_digest: bool = False
    allowed: set = field(default_factory=lambda: {"ANY"})


class FakeRegistry:
    def __init__(self, port=3260):
        self.options = {"node_base": BASE, "nop_timeout": 60, "nop_in_interval": 30,
                        "max_sessions": 128, "max_connections_per_session": 2,
                        "max_queue_depth": 64, "default_time2wait": 2,
                        "default_time2retain": 20, "first_burst_length": 8192,
                        "immediate_data": True, "error_recovery_level": 0,
                        "allow_duplicated_isid": False, "max_burst_length": 1048576}
        self.nodes = {}
        self.chap = {}           # group -> {user: (secret, muser, msecret)}
        self.discovery_auth = (False, False, False, 0)
        self.port = port

    def add_node(self, short, dev, **kw):
        n = FakeNode(f"{BASE}:{short}", dev, **kw)
        self.nodes[n.name] = n
        return n

    def find_target(self, iqn):
        return self.nodes.get(iqn)

    def access_allowed(self, node, initiator_name, initiator_addr, pg_tag):
        return "ANY" in node.allowed or initiator_name in node.allowed

    def send_targets(self, initiator_name, initiator_addr, pg_tag, value, target_addr=None):
        out = []
        for n in self.nodes.values():
            if value not in ("All", n.name):
                continue
            if not self.access_allowed(n, initiator_name, initiator_addr, pg_tag):
                continue
            out.append((n.name, [f"127.0.0.1:{self.port},1"]))
        return out

    def find_chap_secret(self, group_tag, user):
        return self.chap.get(group_tag, {}).get(user)


class Server:
    """A single-threaded selectors loop accepting on 127.0.0.1:<free port>."""

    def __init__(self, reg: FakeRegistry, devs=()):
        self.reg = reg
        self.devs = list(devs)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        reg.port = self.port
        self.conns = []
        self.finished = []
        self._stop = threading.Event()
        self._calls = deque()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def call(self, fn, timeout=5.0):
        """Run fn() on the loop thread and return its result."""
        box = []
        ev = threading.Event()
        self._calls.append((fn, box, ev))
        if not ev.wait(timeout):
            raise TimeoutError("loop did not run the call")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self):
        self._stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "server loop did not stop"
        if self.errors:
            raise self.errors[0]

    def _run(self):
        sel = selectors.DefaultSelector()
        try:
            self._loop(sel)
        except BaseException as e:     # surfaced by stop()
            self.errors.append(e)
        finally:
            for c in self.conns:
                c.abort("server stop")
            for d in self.devs:
                for nx in d.nexuses:
                    nx.release_held()
                d.run_deferred()
            for c in self.conns:
                c.poll()
            sel.close()
            self.lsock.close()
            for s in list(SESSIONS.by_tsih.values()):
                s.close()

    def _loop(self, sel):
        while not self._stop.is_set():
            while self._calls:
                fn, box, ev = self._calls.popleft()
                try:
                    box.append(fn())
                except BaseException as e:
                    box.append(e)
                ev.set()
            try:
                while True:
                    s, addr = self.lsock.accept()
                    meta = {"pg_tag": 1, "portal": ("127.0.0.1", self.port), "peer": addr}
                    self.conns.append(IscsiConnection(s, meta, self.reg))
            except BlockingIOError:
                pass
            busy = False
            for d in self.devs:
                if d.run_deferred():
                    busy = True
            for c in list(self.conns):
                if c.needs_poll() or c.wants_read():
                    if c.poll():
                        busy = True
                if c.done:
                    self.conns.remove(c)
                    self.finished.append(c)
                elif c.needs_poll():
                    busy = True
            if busy:
                continue
            regs = {}
            for c in self.conns:
                ev = 0
                if c.wants_read():
                    ev |= selectors.EVENT_READ
                if c.send_blocked:
                    ev |= selectors.EVENT_WRITE
                if ev and c.fileno() >= 0:
                    regs[c.fileno()] = ev
            regs[self.lsock.fileno()] = selectors.EVENT_READ
            for fd, ev in regs.items():
                sel.register(fd, ev)
            try:
                sel.select(0.02)
            finally:
                for fd in regs:
                    sel.unregister(fd)


def install_fake_scsi(monkeypatch):
    monkeypatch.setattr(_ffp, "ScsiTask", FakeTask)


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
