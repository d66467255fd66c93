"""bdev_null: discards writes, reads return without moving data (a zero buffer when the
caller gave none).  As SPDK's bdev_null, I/O is completed from a per-channel poller, so the
completion never needs the bdev layer's deferral and comes in batches: the cheapest path
through the layer, which is what bdevperf measures.

Python API for the RPC layer (main thread): ``create(name, num_blocks, block_size=512,
uuid=None, cb=None)`` -> ``cb(rc, name)`` once every reactor has it; ``delete(name, cb)``.
"""
from __future__ import annotations

import logging
import uuid as _uuid

import reactor as rx
from reactor import wire

import bdev as _bdev
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.null")

_SUPPORTED = {bm.IO_TYPE_READ, bm.IO_TYPE_WRITE, bm.IO_TYPE_WRITE_ZEROES, bm.IO_TYPE_UNMAP,
              bm.IO_TYPE_FLUSH, bm.IO_TYPE_RESET}
_ZERO = memoryview(bytes(1 << 17))   # what reads without a buffer see (read-only)

null_module = bm.register_module(bm.BdevModule("null"))

_SUCCESS = bm.IO_STATUS_SUCCESS
_complete = bm.bdev_io_complete     # the hot path: no bound-method frame per I/O


class NullChannel:
    __slots__ = ("io", "poller")

    def __init__(self):
        self.io = []
        self.poller = rx.poller_register(_null_poll, self, 0, name="null_poll")


def _null_poll(nch) -> int:
    batch = nch.io
    if not batch:
        return 0
    nch.io = []
    complete = _complete
    for io in batch:
        try:
            complete(io, _SUCCESS)
        except Exception:   # a raising callback must not lose the rest of the batch
            bm.bdev_io_callback_raised(io)
    return 1


def _ch_create(disk):
    return NullChannel()


def _ch_destroy(disk, nch):
    rx.poller_unregister(nch.poller)
    for io in nch.io:
        io.complete(bm.IO_STATUS_FAILED)


class NullDisk(bm.FnTable):
    def __init__(self, name):
        self.name = name
        rx.io_device_register(self, _ch_create, _ch_destroy, name=f"null_{name}")

    def get_io_channel(self, ctxt):
        return rx.get_io_channel(self)

    def io_type_supported(self, ctxt, io_type):
        return io_type in _SUPPORTED

    def submit_request(self, ch, io):
        if io.type == 1 and io.iovs[0] is None:   # READ without a buffer
            n = io.num_blocks * io.bdev.blocklen
            io.iovs[0] = _ZERO[:n] if n <= len(_ZERO) else memoryview(bytes(n))
        ch.ctx.io.append(io)

    def destruct(self, ctxt):
        if rx.io_device_is_registered(self):
            rx.io_device_unregister(self)
        return 0

    def write_config_json(self, bdev, out):
        out.append({"method": "bdev_null_create",
                    "params": {"name": bdev.name, "num_blocks": bdev.blockcnt, "block_size": bdev.blocklen,
                               "physical_block_size": bdev.phys_blocklen or bdev.blocklen,
                               "uuid": bdev.uuid,
                               **{k: getattr(bdev, k) for k in HINTS}}})


#: The geometry hints bdev_null_create takes (in blocks), kept on the bdev and reported by
#: bdev_get_bdevs, as SPDK's null module does.
HINTS = ("preferred_write_granularity", "preferred_write_alignment", "optimal_write_size",
         "preferred_unmap_granularity", "preferred_unmap_alignment")


def _build(name, num_blocks, block_size, uuid, phys=0, hints=None):
    disk = NullDisk(name)
    b = bm.Bdev(name, blocklen=block_size, blockcnt=num_blocks, module=null_module, fn_table=disk,
                ctxt=disk, product_name="Null disk", uuid=uuid)
    b.phys_blocklen = phys or block_size
    for k, v in (hints or {}).items():
        setattr(b, k, v)
    return b


@wire.remote("null.create_replica")
def _create_replica(done, name, num_blocks, block_size, uuid, phys, hints):
    b = _build(name, num_blocks, block_size, uuid, phys, hints)
    rc = bm.bdev_register(b)
    if rc:
        b.fn_table.destruct(b.ctxt)
    done(rc)


def create(name, num_blocks, block_size=512, uuid=None, cb=None, physical_block_size=0,
           **hints) -> None:
    """Create a null bdev on every reactor (main thread); ``cb(rc, name)``.  -EINVAL for a
    bad geometry (a physical block size not a multiple of 512; 0 means the block size) or
    an unknown hint name; ``hints`` are names of :data:`HINTS` with block counts."""
    cb = cb or (lambda rc, name: None)
    t = rx.get_thread()
    hints = {k: v for k, v in hints.items() if v}
    if not bm.on_main_thread():   # the main thread owns the registry: hop there
        _vbdev.hop_to_main(_create_on_main, [name, num_blocks, block_size, uuid,
                                             physical_block_size, hints], cb, name)
        return
    if not name or block_size <= 0 or block_size % 512 or num_blocks <= 0 \
            or num_blocks * block_size >= 1 << 64 \
            or physical_block_size < 0 or physical_block_size % 512 \
            or any(k not in HINTS or not isinstance(v, int) or v < 0 for k, v in hints.items()):
        # (the size in bytes fits SPDK's u64)
        rx.send_msg(t, cb, -bm.EINVAL, name)
        return
    if _bdev.get_by_name(name) is not None:
        rx.send_msg(t, cb, -bm.EEXIST, name)
        return
    uuid = uuid or str(_uuid.uuid4())
    args = [name, num_blocks, block_size, uuid, physical_block_size, hints]
    rc = bm.replicable(_create_replica, args)      # what every other reactor will receive
    if rc:
        rx.send_msg(t, cb, rc, name)
        return
    b = _build(name, num_blocks, block_size, uuid, physical_block_size, hints)
    rc = bm.bdev_register(b)
    if rc:
        b.fn_table.destruct(b.ctxt)
        rx.send_msg(t, cb, rc, name)
        return
    _vbdev.broadcast_create(_create_replica, args, [name], lambda rc: cb(rc, name))


@wire.remote("null.create_on_main")
def _create_on_main(done, name, num_blocks, block_size, uuid, phys, hints):
    create(name, num_blocks, block_size, uuid, cb=lambda rc, name: done(rc, name),
           physical_block_size=phys, **hints)


def delete(name, cb=None) -> None:
    cb = cb or (lambda rc: None)
    b = _bdev.get_by_name(name)
    if b is None or b.module is not null_module:
        rx.send_msg(rx.get_thread(), cb, -bm.ENODEV)
        return
    bm.bdev_unregister(b, lambda arg, rc: cb(rc))
