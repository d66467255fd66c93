"""A stub bdev module for the bdev tests: holds every I/O until the test completes it
(SPDK's test/unit/lib/bdev/mt/bdev.c stub), plus helpers to bring the layer up and
down in deterministic mode."""
from __future__ import annotations

from collections import deque

import reactor as rx
from reactor import wire

import bdev as B
from bdev import module as bm

ALL_TYPES = {B.IO_TYPE_READ, B.IO_TYPE_WRITE, B.IO_TYPE_UNMAP, B.IO_TYPE_FLUSH, B.IO_TYPE_RESET,
             B.IO_TYPE_NVME_ADMIN, B.IO_TYPE_NVME_IO, B.IO_TYPE_NVME_IO_MD, B.IO_TYPE_WRITE_ZEROES}

stub_module = bm.BdevModule("bdev_ut_stub")


class StubChannel:
    def __init__(self, disk):
        self.disk = disk
        self.outstanding = deque()
        self.avail = -1          # >= 0: answer NOMEM once this many are outstanding
        self.thread = rx.get_thread()


class StubDisk(bm.FnTable):
    def __init__(self, name):
        self.name = name
        self.supported = set(ALL_TYPES)
        self.log = []            # (type, offset_blocks, num_blocks, [iov lengths]) per submit
        self.channels = []
        self.destructed = False
        self.fail_inline = None  # status to complete inline with (inside submit)
        self.no_channel = False  # get_io_channel gives None (the module has no channel)
        self.fail_create_ch = False  # the module's own channel create fails

    # fn_table
    def get_io_channel(self, ctxt):
        if self.no_channel:
            return None
        return rx.get_io_channel(self)

    def io_type_supported(self, ctxt, io_type):
        return io_type in self.supported

    def submit_request(self, ch, io):
        sc = ch.ctx
        iovs = io.iovs if io.type in (B.IO_TYPE_READ, B.IO_TYPE_WRITE) and io.iovs else []
        self.log.append((io.type, io.offset_blocks, io.num_blocks,
                         [len(v) if v is not None else 0 for v in iovs]))
        if self.fail_inline is not None:
            io.complete(self.fail_inline)
            return
        if io.type == B.IO_TYPE_RESET:
            # a reset aborts everything outstanding on this channel first
            while sc.outstanding:
                sc.outstanding.popleft().complete(B.IO_STATUS_FAILED)
        elif sc.avail >= 0 and len(sc.outstanding) >= sc.avail:
            io.complete(B.IO_STATUS_NOMEM)
            return
        sc.outstanding.append(io)

    def destruct(self, ctxt):
        self.destructed = True
        if rx.io_device_is_registered(self):   # two bdevs may share one disk
            rx.io_device_unregister(self)
        return 0


def _ch_create(disk):
    if disk.fail_create_ch:
        raise RuntimeError(f"stub {disk.name}: channel create refused")
    c = StubChannel(disk)
    disk.channels.append(c)
    return c


def _ch_destroy(disk, c):
    disk.channels.remove(c)


def _build(name, blockcnt, blocklen, **kw):
    disk = StubDisk(name)
    rx.io_device_register(disk, _ch_create, _ch_destroy, name=f"stub_{name}")
    b = bm.Bdev(name, blocklen=blocklen, blockcnt=blockcnt, module=stub_module, fn_table=disk,
                ctxt=disk, product_name="stub", **kw)
    rx.current_reactor().locals.setdefault("stub", {})[name] = disk
    return b


@wire.remote("test.stub_create_replica")
def _create_replica(done, name, blockcnt, blocklen, kw):
    done(bm.bdev_register(_build(name, blockcnt, blocklen, **dict(kw))))


def create(name="stub0", blockcnt=1024, blocklen=512, **kw):
    """On the current (main) thread: register the stub on every reactor.  Returns the
    local Bdev; poll to let the other replicas apply it."""
    b = _build(name, blockcnt, blocklen, **kw)
    rc = bm.bdev_register(b)
    assert rc == 0, rc
    bm.broadcast(_create_replica, [name, blockcnt, blocklen, kw], None, include_self=False)
    return b


def disk(name="stub0"):
    return rx.current_reactor().locals["stub"][name]


def outstanding(name="stub0"):
    """Outstanding I/O on the current thread's stub channel."""
    t = rx.get_thread()
    for c in disk(name).channels:
        if c.thread is t:
            return c.outstanding
    return deque()


def complete(name="stub0", n=None, status=B.IO_STATUS_SUCCESS):
    """Complete up to n (all if None) outstanding I/O of the current thread's channel."""
    q = outstanding(name)
    if n is None:
        n = len(q)      # only what is outstanding now, not what completions submit
    done = 0
    while q and done < n:
        q.popleft().complete(status)
        done += 1
    return done


def set_avail(name, n):
    t = rx.get_thread()
    for c in disk(name).channels:
        if c.thread is t:
            c.avail = n


def init_layer(h, conf=None):
    """bdev initialize on thread 0, polled to completion."""
    if bm.module_list_find(stub_module.name) is None:
        bm.register_module(stub_module)
    h.set_thread(0)
    out = []
    B.initialize(lambda arg, rc: out.append(rc), conf=conf)
    h.poll_threads()
    assert out == [0]


def fini_layer(h):
    h.set_thread(0)
    out = []
    B.finish(lambda arg: out.append(1))
    h.poll_threads()
    assert out == [1]
    bm.module_list_remove(stub_module)


class Cpl:
    """Collects completions: cb(bdev_io, success, arg) -> records and frees."""

    def __init__(self):
        self.done = []
        self.threads = []        # the thread each completion ran on (same order as done)

    def __call__(self, io, success, arg):
        self.done.append((arg, success))
        self.threads.append(rx.get_thread().name)
        B.free_io(io)

    def by_arg(self):
        """{arg: (success, thread name)}; fails if an arg completed more than once."""
        out = {}
        for (a, ok), t in zip(self.done, self.threads):
            assert a not in out, f"completion of {a!r} ran twice"
            out[a] = (ok, t)
        return out

    def args(self):
        return [a for a, _ in self.done]

    def statuses(self):
        return [s for _, s in self.done]


def assert_idle(*io_chs):
    """Nothing in flight: every given bdev io_channel and its shared resource count no
    outstanding I/O, and the shared resource has nothing parked after NOMEM."""
    for ch in io_chs:
        c = ch.ctx
        assert c.io_outstanding == 0, (ch, c.io_outstanding)
        assert c.shared_resource.io_outstanding == 0, (ch, c.shared_resource.io_outstanding)
        assert not c.shared_resource.nomem_io, (ch, len(c.shared_resource.nomem_io))


def open_on(h, threads, name, write=True):
    """Open ``name`` and get a channel on each of ``threads``: {thread: (desc, io_ch)}."""
    out = {}
    for i in threads:
        h.set_thread(i)
        rc, d = B.open(B.get_by_name(name), write)
        assert rc == 0, rc
        out[i] = (d, B.get_io_channel(d))
    return out


def close_on(h, ctx):
    """Undo :func:`open_on`: each channel put and desc closed on its own thread, polled."""
    for i, (d, c) in ctx.items():
        h.set_thread(i)
        B.put_io_channel(c)
        B.close(d)
    h.poll_threads()
