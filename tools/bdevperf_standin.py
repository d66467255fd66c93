"""A minimal bdev layer with SPDK's contract, for what the real one does not make easy.

bdevperf was written while ``bdev/`` was being built; this module let it run meanwhile, and
it stays for two jobs: measuring bdevperf's own per-I/O cost over a layer that does next to
nothing (BENCHMARKS.md), and a second implementation of the contract the tests run
bdevperf's ``-ENOMEM``/``queue_io_wait`` path against (256 bdev_ios per channel).
bdevperf uses it only when ``RINGSTACK_BDEVPERF_BACKEND=standin`` or when the bdev layer or
its malloc module is missing, and then says so on stderr.

It implements the small part of SPDK's bdev.h that bdevperf calls, with the same contract
(``read_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg) -> 0 | -errno``;
``cb(bdev_io, success, cb_arg)`` runs exactly once, never inside the submit call, on the
submitting thread; ``-ENOMEM`` when the channel's bdev_io pool is empty, then
``queue_io_wait``), and two modules shaped like SPDK's:

* ``null``: completions from a per-channel poller, no data movement (module/bdev/null);
* ``malloc``: data in memory, copied at submit, completed from the same poller.

What it is **not**: the real bdev layer.  Each reactor process holds its own replica of each
bdev, and a stand-in malloc bdev's data lives in that process's private memory (the real
malloc module maps one shared segment on every reactor).  bdevperf's -C mode gives every
reactor a disjoint LBA slice, so verify runs are still meaningful; nothing else relies on it.
"""
from __future__ import annotations

import errno
from collections import deque

import reactor as rx

ENOMEM = errno.ENOMEM
EINVAL = errno.EINVAL
ENODEV = errno.ENODEV
EBADF = errno.EBADF

IO_TYPE_READ, IO_TYPE_WRITE, IO_TYPE_UNMAP, IO_TYPE_FLUSH, IO_TYPE_RESET = 1, 2, 3, 4, 5
IO_TYPE_WRITE_ZEROES = 9

#: bdev_ios per channel (small on purpose: bdevperf's ENOMEM/queue_io_wait path gets used
#: at depth > 256, as with SPDK's per-thread bdev_io cache).
IO_POOL_PER_CHANNEL = 256


class Bdev:
    __slots__ = ("name", "kind", "block_size", "num_blocks", "data", "aliases")

    def __init__(self, name, kind, block_size, num_blocks):
        self.name = name
        self.kind = kind
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.data = bytearray(block_size * num_blocks) if kind == "malloc" else None
        self.aliases = ()


class Desc:
    __slots__ = ("bdev", "write", "thread", "closed")

    def __init__(self, bdev, write, thread):
        self.bdev = bdev
        self.write = write
        self.thread = thread
        self.closed = False


class BdevIo:
    __slots__ = ("type", "success", "cb", "cb_arg", "ch")

    def __init__(self, ch):
        self.ch = ch
        self.type = 0
        self.success = True
        self.cb = None
        self.cb_arg = None


class IoWaitEntry:
    """SPDK's spdk_bdev_io_wait_entry: ``cb_fn(cb_arg)`` runs when a bdev_io frees up."""

    __slots__ = ("bdev", "cb_fn", "cb_arg")

    def __init__(self, bdev=None, cb_fn=None, cb_arg=None):
        self.bdev = bdev
        self.cb_fn = cb_fn
        self.cb_arg = cb_arg


class Channel:
    __slots__ = ("bdev", "free", "done", "waiters", "poller", "thread", "refs")

    def __init__(self, bdev):
        self.bdev = bdev
        self.free = [BdevIo(self) for _ in range(IO_POOL_PER_CHANNEL)]
        self.done: deque = deque()
        self.waiters: deque = deque()
        self.thread = rx.get_thread()
        self.refs = 1
        self.poller = rx.poller_register(self._complete, None, 0, f"standin_{bdev.name}")

    def _complete(self, _arg):
        done = self.done
        if not done:
            return 0
        n = len(done)
        popleft = done.popleft
        for _ in range(n):
            io = popleft()
            io.cb(io, io.success, io.cb_arg)
        return n


def _registry() -> dict:
    return rx.current_reactor().locals.setdefault("bdevperf.standin", {})


# ------------------------------------------------------------------------ control plane
@rx.remote("bdevperf.standin.create")
def _create_replica(it):
    kind, name, num_blocks, block_size = it.ctx
    reg = _registry()
    if name not in reg:
        reg[name] = Bdev(name, kind, block_size, num_blocks)
    rx.for_each_channel_continue(it, 0)


def create(kind: str, name: str, num_blocks: int, block_size: int, cb) -> None:
    """Create bdev ``name`` on every reactor; ``cb(rc)`` on the calling thread."""
    if kind not in ("null", "malloc"):
        rx.send_msg(rx.get_thread(), cb, -EINVAL)
        return
    if name in _registry():
        rx.send_msg(rx.get_thread(), cb, -errno.EEXIST)
        return
    rx.for_each_reactor(_create_replica, [kind, name, num_blocks, block_size],
                        lambda it, status: cb(status))


def get_by_name(name):
    return _registry().get(name)


def leaf_names() -> list[str]:
    return list(_registry())


def get_name(bdev):
    return bdev.name


def get_block_size(bdev):
    return bdev.block_size


def get_num_blocks(bdev):
    return bdev.num_blocks


def io_type_supported(bdev, io_type) -> bool:
    return io_type in (IO_TYPE_READ, IO_TYPE_WRITE, IO_TYPE_UNMAP, IO_TYPE_FLUSH,
                       IO_TYPE_RESET, IO_TYPE_WRITE_ZEROES)


def open_ext(name, write, event_cb=None, event_ctx=None):
    """``(0, desc)`` or ``(-ENODEV, None)``."""
    bdev = _registry().get(name)
    if bdev is None:
        return -ENODEV, None
    return 0, Desc(bdev, write, rx.get_thread())


def close(desc) -> None:
    desc.closed = True


def desc_get_bdev(desc):
    return desc.bdev


def get_io_channel(desc):
    return Channel(desc.bdev)


def put_io_channel(ch) -> None:
    rx.poller_unregister(ch.poller)


def dma_malloc(size: int):
    """``(buf, view)``: the buffer to pass to read/write and a writable memoryview of it."""
    b = bytearray(size)
    return b, memoryview(b)


def dma_free(buf) -> None:
    pass


# --------------------------------------------------------------------------- data plane
def _get_io(ch, cb, cb_arg, io_type):
    free = ch.free
    if not free:
        return None
    io = free.pop()
    io.cb = cb
    io.cb_arg = cb_arg
    io.type = io_type
    io.success = True
    return io


def read_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg) -> int:
    bdev = desc.bdev
    if offset_blocks + num_blocks > bdev.num_blocks or num_blocks <= 0:
        return -EINVAL
    free = ch.free
    if not free:
        return -ENOMEM
    io = free.pop()
    io.cb = cb
    io.cb_arg = cb_arg
    io.success = True
    data = bdev.data
    if data is not None:
        bs = bdev.block_size
        n = num_blocks * bs
        buf[:n] = data[offset_blocks * bs:offset_blocks * bs + n]
    ch.done.append(io)
    return 0


def write_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg) -> int:
    bdev = desc.bdev
    if not desc.write:
        return -EBADF
    if offset_blocks + num_blocks > bdev.num_blocks or num_blocks <= 0:
        return -EINVAL
    free = ch.free
    if not free:
        return -ENOMEM
    io = free.pop()
    io.cb = cb
    io.cb_arg = cb_arg
    io.success = True
    data = bdev.data
    if data is not None:
        bs = bdev.block_size
        n = num_blocks * bs
        data[offset_blocks * bs:offset_blocks * bs + n] = buf[:n]
    ch.done.append(io)
    return 0


def _range_op(desc, ch, offset_blocks, num_blocks, cb, cb_arg, io_type, zero):
    bdev = desc.bdev
    if not desc.write:
        return -EBADF
    if offset_blocks + num_blocks > bdev.num_blocks or num_blocks <= 0:
        return -EINVAL
    io = _get_io(ch, cb, cb_arg, io_type)
    if io is None:
        return -ENOMEM
    if zero and bdev.data is not None:
        bs = bdev.block_size
        bdev.data[offset_blocks * bs:(offset_blocks + num_blocks) * bs] = bytes(num_blocks * bs)
    ch.done.append(io)
    return 0


def unmap_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg) -> int:
    return _range_op(desc, ch, offset_blocks, num_blocks, cb, cb_arg, IO_TYPE_UNMAP, True)


def write_zeroes_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg) -> int:
    return _range_op(desc, ch, offset_blocks, num_blocks, cb, cb_arg, IO_TYPE_WRITE_ZEROES, True)


def flush_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg) -> int:
    return _range_op(desc, ch, offset_blocks, num_blocks, cb, cb_arg, IO_TYPE_FLUSH, False)


def reset(desc, ch, cb, cb_arg) -> int:
    io = _get_io(ch, cb, cb_arg, IO_TYPE_RESET)
    if io is None:
        return -ENOMEM
    ch.done.append(io)
    return 0


def free_io(io) -> None:
    ch = io.ch
    io.cb = io.cb_arg = None
    ch.free.append(io)
    if ch.waiters:
        w = ch.waiters.popleft()
        w.cb_fn(w.cb_arg)


def queue_io_wait(bdev, ch, entry) -> int:
    if ch.free:
        return -EINVAL      # SPDK: only valid right after -ENOMEM
    ch.waiters.append(entry)
    return 0
