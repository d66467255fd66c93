"""bdev_malloc: a RAM disk whose data lives in one shared-memory segment, so every
reactor's replica of the bdev reads and writes the same bytes (docs/architecture.md, Memory).

The main reactor creates the segment (``/ringstack.<pid>.malloc<n>``, owned by the bdev
layer's Instance, so it is unlinked on delete and on every exit path); each other reactor
maps it in its replica.  I/O is a memoryview copy on the submitting thread; the bdev layer
defers the completion out of the submit call.

Python API for the RPC layer (main thread): ``create(name, num_blocks, block_size,
uuid=None, optimal_io_boundary=0, cb=None)`` -> ``cb(rc, name)`` once every reactor has
the bdev; ``delete(name, cb)`` -> ``cb(rc)`` once every reactor dropped it.
"""
from __future__ import annotations

import itertools
import logging
import os
import uuid as _uuid

import reactor as rx
from reactor import wire

import bdev as _bdev
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.malloc")

_seq = itertools.count()
# the per-I/O constants and the module's completion call, bound once (not looked up
# through bm on every I/O)
_READ = bm.IO_TYPE_READ
_WRITE = bm.IO_TYPE_WRITE
_SUCCESS = bm.IO_STATUS_SUCCESS
_complete = bm.io_complete
_SUPPORTED = {bm.IO_TYPE_READ, bm.IO_TYPE_WRITE, bm.IO_TYPE_FLUSH, bm.IO_TYPE_RESET,
              bm.IO_TYPE_UNMAP, bm.IO_TYPE_WRITE_ZEROES}


def _config_json(out: list) -> None:
    pass  # per-bdev entries come from write_config_json


malloc_module = bm.register_module(bm.BdevModule("malloc", config_json=_config_json))


class _Channel:
    __slots__ = ()


def _ch_create(disk):
    return _Channel()


def _ch_destroy(disk, ctx):
    pass


class MallocDisk(bm.FnTable):
    """One reactor's view of a malloc bdev."""

    def __init__(self, name, segment, blocklen, blockcnt, owned):
        self.name = name
        self.segment = segment
        self.buf = segment.buf
        self.blocklen = blocklen
        self.blockcnt = blockcnt
        self.owned = owned
        self.bdev = None
        rx.io_device_register(self, _ch_create, _ch_destroy, name=f"malloc_{name}")

    # ---- fn_table
    def get_io_channel(self, ctxt):
        return rx.get_io_channel(self)

    def io_type_supported(self, ctxt, io_type):
        return io_type in _SUPPORTED

    def submit_request(self, ch, io):
        t = io.type
        if t == _WRITE:
            off = io.offset_blocks * self.blocklen
            buf = self.buf
            iovs = io.iovs
            if len(iovs) == 1:          # the common write: one buffer, one slice copy
                v = iovs[0]
                buf[off:off + len(v)] = v
            else:
                for v in iovs:
                    n = len(v)
                    buf[off:off + n] = v
                    off += n
            _complete(io, _SUCCESS)
        elif t == _READ:
            if io.iovs[0] is None:
                io.get_buf(_read_after_buf, io.num_blocks * self.blocklen)
                return
            self._read(io)
        elif t == bm.IO_TYPE_UNMAP or t == bm.IO_TYPE_WRITE_ZEROES:
            off = io.offset_blocks * self.blocklen
            n = io.num_blocks * self.blocklen
            self.buf[off:off + n] = bytes(n)
            io.complete(bm.IO_STATUS_SUCCESS)
        elif t == bm.IO_TYPE_FLUSH or t == bm.IO_TYPE_RESET:
            io.complete(bm.IO_STATUS_SUCCESS)
        else:
            io.complete(bm.IO_STATUS_FAILED)

    def _read(self, io):
        off = io.offset_blocks * self.blocklen
        buf = self.buf
        iovs = io.iovs
        if len(iovs) == 1:
            v = iovs[0]
            v[:] = buf[off:off + len(v)]
        else:
            for v in iovs:
                n = len(v)
                v[:] = buf[off:off + n]
                off += n
        _complete(io, _SUCCESS)

    def destruct(self, ctxt):
        if rx.io_device_is_registered(self):
            rx.io_device_unregister(self)
        self.buf = None
        seg = self.segment
        if self.owned:
            seg.unlink()
        try:
            seg.close()
        except BufferError as exc:  # a view still alive somewhere: the name is gone anyway
            log.warning("%s", exc)
        return 0

    def dump_info_json(self, ctxt, w):
        w["malloc"] = {"segment": self.segment.name}

    def write_config_json(self, bdev, out):
        out.append({"method": "bdev_malloc_create",
                    "params": {"name": bdev.name, "num_blocks": bdev.blockcnt, "block_size": bdev.blocklen,
                               "physical_block_size": bdev.phys_blocklen or bdev.blocklen,
                               "uuid": bdev.uuid, "optimal_io_boundary": bdev.optimal_io_boundary,
                               "numa_id": bdev.numa_id}})


def _read_after_buf(ch, io):
    io.bdev.ctxt._read(io)


def _build(name, segment, blocklen, blockcnt, uuid, boundary, owned, phys, numa_id):
    disk = MallocDisk(name, segment, blocklen, blockcnt, owned)
    b = bm.Bdev(name, blocklen=blocklen, blockcnt=blockcnt, module=malloc_module, fn_table=disk,
                ctxt=disk, product_name="Malloc disk", uuid=uuid, write_cache=True,
                optimal_io_boundary=boundary, split_on_optimal_io_boundary=bool(boundary))
    b.phys_blocklen = phys or blocklen
    b.numa_id = numa_id         # SPDK's malloc always reports one (-1: any node)
    disk.bdev = b
    return b


def numa_node_present(numa_id) -> bool:
    """-1 (any node) or a NUMA node this machine has (SPDK_ENV_FOREACH_NUMA_ID); a machine
    without /sys/devices/system/node has node 0 only."""
    if numa_id == -1:
        return True
    root = "/sys/devices/system/node"
    if not os.path.isdir(root):
        return numa_id == 0
    return os.path.isdir(os.path.join(root, f"node{numa_id}"))


@wire.remote("malloc.create_replica")
def _create_replica(done, name, seg_name, blocklen, blockcnt, uuid, boundary, phys, numa_id):
    from ipc.shm import Segment
    try:
        seg = Segment.attach(seg_name)
    except (OSError, ValueError) as exc:
        log.error("malloc %s: cannot map %s: %s", name, seg_name, exc)
        done(-5)
        return
    b = _build(name, seg, blocklen, blockcnt, uuid, boundary, False, phys, numa_id)
    rc = bm.bdev_register(b)
    if rc:
        b.fn_table.destruct(b.ctxt)
    done(rc)


def create(name=None, num_blocks=0, block_size=512, uuid=None, optimal_io_boundary=0, cb=None,
           physical_block_size=0, numa_id=-1) -> None:
    """Create a malloc bdev on every reactor (main thread).  ``cb(rc, name)`` once all
    have it: -EINVAL for a bad geometry (a physical block size not a multiple of 512, 0
    meaning the block size) or a NUMA node the machine lacks, -EEXIST for a taken name,
    -ENOMEM when the segment cannot be created.  ``numa_id`` is recorded and reported (the
    segment's pages are not bound to the node)."""
    from ipc.shm import Segment
    cb = cb or (lambda rc, name: None)
    t = rx.get_thread()
    if not bm.on_main_thread():   # the main thread owns the registry: hop there
        _vbdev.hop_to_main(_create_on_main, [name, num_blocks, block_size, uuid,
                                             optimal_io_boundary, physical_block_size, numa_id],
                           cb, name)
        return
    if name is None:
        n = 0
        while _bdev.get_by_name(f"Malloc{n}") is not None:
            n += 1
        name = f"Malloc{n}"

    def fail(rc):
        rx.send_msg(t, cb, rc, name)
    if block_size <= 0 or block_size % 512 or num_blocks <= 0 or optimal_io_boundary < 0 \
            or num_blocks * block_size >= 1 << 64 \
            or physical_block_size < 0 or physical_block_size % 512 \
            or not numa_node_present(numa_id):      # (the size in bytes fits SPDK's u64)
        fail(-bm.EINVAL)
        return
    if _bdev.get_by_name(name) is not None:
        fail(-bm.EEXIST)
        return
    inst = bm.shm_instance()
    if inst is None:
        fail(-bm.ENODEV)
        return
    try:
        seg = Segment.create(inst, f"malloc{next(_seq)}", num_blocks * block_size)
    except (OSError, ValueError, OverflowError, MemoryError) as exc:   # no room: one line
        log.error("malloc %s: cannot create its segment of %d bytes: %s", name,
                  num_blocks * block_size, exc)
        fail(-bm.ENOMEM)
        return
    uuid = uuid or str(_uuid.uuid4())
    args = [name, seg.name, block_size, num_blocks, uuid, optimal_io_boundary,
            physical_block_size, numa_id]
    rc = bm.replicable(_create_replica, args)      # what every other reactor will receive
    if rc:
        seg.unlink()
        seg.close()
        fail(rc)
        return
    b = _build(name, seg, block_size, num_blocks, uuid, optimal_io_boundary, True,
               physical_block_size, numa_id)
    rc = bm.bdev_register(b)
    if rc:
        b.fn_table.destruct(b.ctxt)
        fail(rc)
        return
    _vbdev.broadcast_create(_create_replica, args, [name], lambda rc: cb(rc, name))


@wire.remote("malloc.create_on_main")
def _create_on_main(done, name, num_blocks, block_size, uuid, optimal_io_boundary, phys, numa_id):
    create(name, num_blocks, block_size, uuid, optimal_io_boundary,
           cb=lambda rc, name: done(rc, name), physical_block_size=phys, numa_id=numa_id)


def delete(name, cb=None) -> None:
    """Unregister the malloc bdev ``name`` on every reactor; ``cb(rc)`` (-ENODEV if it is
    not a malloc bdev).  The segment is unlinked when the main replica destructs."""
    cb = cb or (lambda rc: None)
    b = _bdev.get_by_name(name)
    if b is None or b.module is not malloc_module:
        rx.send_msg(rx.get_thread(), cb, -bm.ENODEV)
        return
    bm.bdev_unregister(b, lambda arg, rc: cb(rc))
