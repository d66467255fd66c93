"""Shared setup for the SCSI target tests: a two-reactor Harness with the bdev layer and
malloc bdevs, a ScsiDev replica on each reactor, nexuses on either reactor, and
``run(nexus, cdb, ...)`` that executes one CDB and polls until it answers.

The nexuses open the real BdevHandle (targets/serve/bdev_handle.py, Contract 2)."""
from __future__ import annotations

import errno

import reactor as rx
from reactor.testing import Harness

import bdev as B
import bdev_stub as Stub
from drivers import malloc

from targets.scsi import DIR_FROM_DEV, DIR_NONE, DIR_TO_DEV, ScsiDev, ScsiTask
from targets.scsi import sense as S
from targets.scsi import find_dev

BS = 512
NBLK = 1024
INI1, INI2 = "iqn.2016-06.io.spdk:init1,i,0x00023d000001", "iqn.2016-06.io.spdk:init2,i,0x00023d000002"
TGT = "iqn.2016-06.io.spdk:disk1,t,0x0001"


class Env:
    """threads 0 (reactor 0, the main thread) and 1 (reactor 1)."""

    def __init__(self, h: Harness, luns=((0, "m0"),), dev_name="disk1"):
        self.h = h
        self.dev_name = dev_name
        self.nexuses = []
        for i in (0, 1):
            h.set_thread(i)
            ScsiDev(dev_name, list(luns))
        h.set_thread(0)

    def dev(self, thread):
        self.h.set_thread(thread)
        return find_dev(self.dev_name)

    def nexus(self, thread=0, ini=INI1, tgt=TGT):
        n = self.dev(thread).open_nexus(ini, tgt)
        self.nexuses.append((thread, n))
        return n

    def close(self):
        for thread, n in self.nexuses:
            self.h.set_thread(thread)
            n.close()
        self.h.poll_threads()
        for i in (0, 1):
            self.h.set_thread(i)
            d = find_dev(self.dev_name)
            if d is not None:
                d.destruct()
        self.h.set_thread(0)


def make_task(cdb, data_out=None, tl=None, lun=0, tag=1, direction=None):
    cdb = bytes(cdb)
    if tl is None:
        tl = len(data_out) if data_out is not None else 0
    if direction is None:
        direction = DIR_TO_DEV if data_out is not None else (DIR_FROM_DEV if tl else DIR_NONE)
    t = ScsiTask(lun, cdb, tl, direction, tag)
    if data_out is not None:
        t.data_out = memoryview(bytearray(data_out))
    return t


def submit(env, nexus, thread, task):
    out = []
    env.h.set_thread(thread)
    nexus.execute(task, lambda t: out.append(t))
    return out


def run(env, nexus, cdb, data_out=None, tl=None, lun=0, thread=None, tag=1):
    """Execute one CDB on ``nexus`` (on its thread) and poll until it completes."""
    thread = _thread_of(env, nexus) if thread is None else thread
    t = make_task(cdb, data_out, tl, lun, tag)
    out = submit(env, nexus, thread, t)
    env.h.poll_threads()
    assert out == [t], f"task did not complete exactly once: {out}"
    data = bytes(t.data_in)
    env.h.set_thread(thread)
    t.release()
    t.data_in = data
    return t


def _thread_of(env, nexus):
    for th, n in env.nexuses:
        if n is nexus:
            return th
    return 0


def sense_of(t):
    """(status, sense key, asc, ascq)."""
    if t.status != S.CHECK_CONDITION:
        return (t.status, None, None, None)
    return (t.status, t.sense[2] & 0x0F, t.sense[12], t.sense[13])


def check(t, sk, code):
    assert sense_of(t) == (S.CHECK_CONDITION, sk, *code), (sense_of(t), t.sense.hex())


def good(t):
    assert t.status == S.GOOD, sense_of(t)
    return t


# -- CDB builders
def cdb10(op, lba, n, flags=0):
    return bytes([op, flags]) + lba.to_bytes(4, "big") + bytes([0]) + n.to_bytes(2, "big") + b"\0"


def cdb12(op, lba, n, flags=0):
    return bytes([op, flags]) + lba.to_bytes(4, "big") + n.to_bytes(4, "big") + b"\0\0"


def cdb16(op, lba, n, flags=0):
    return bytes([op, flags]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + b"\0\0"


def read(env, nx, lba, n, **kw):
    return run(env, nx, cdb10(0x28, lba, n), tl=n * BS, **kw)


def write(env, nx, lba, data, **kw):
    return run(env, nx, cdb10(0x2A, lba, len(data) // BS), data_out=data, **kw)


def pr_out(env, nx, sa, rkey=0, sa_rkey=0, rtype=0, flags=0, scope=0):
    param = rkey.to_bytes(8, "big") + sa_rkey.to_bytes(8, "big") + bytes(4) + bytes([flags, 0, 0, 0])
    cdb = bytes([0x5F, sa, (scope << 4) | rtype, 0, 0]) + len(param).to_bytes(4, "big") + b"\0"
    return run(env, nx, cdb, data_out=param)


def pr_in(env, nx, sa, alloc=4096):
    return run(env, nx, bytes([0x5E, sa, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\0",
               tl=alloc)


def read_keys(env, nx):
    t = good(pr_in(env, nx, 0))
    d = t.data_in
    n = int.from_bytes(d[4:8], "big") // 8
    return int.from_bytes(d[0:4], "big"), [int.from_bytes(d[8 + 8 * i:16 + 8 * i], "big")
                                           for i in range(n)]


def bring_up(h, blocks=NBLK, names=("m0",), bs=BS):
    Stub.init_layer(h)
    h.set_thread(0)
    rcs = []
    for name in names:
        malloc.create(name, blocks, bs, cb=lambda rc, name: rcs.append(rc))
    h.poll_threads()
    assert rcs == [0] * len(names), rcs


def tear_down(h, names=("m0",)):
    h.set_thread(0)
    for name in names:
        if B.get_by_name(name) is not None:
            malloc.delete(name, lambda rc: None)
    h.poll_threads()
    Stub.fini_layer(h)


__all__ = ["Env", "run", "submit", "make_task", "sense_of", "check", "good", "cdb10", "cdb12",
           "cdb16", "read", "write", "pr_out", "pr_in", "read_keys", "bring_up", "tear_down",
           "BS", "NBLK", "INI1", "INI2", "TGT", "S", "rx", "errno"]


class HandleSpy:
    """Stands in for a nexus's BdevHandle (its slots refuse new attributes): every
    member is the handle's unless the test sets its own."""

    def __init__(self, h):
        object.__setattr__(self, "_h", h)

    def __getattr__(self, name):
        return getattr(self._h, name)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        object.__delattr__(self, name)


def spy_handle(nexus, lun=0):
    v = nexus.views[lun]
    v.h = HandleSpy(v.h)
    return v.h
