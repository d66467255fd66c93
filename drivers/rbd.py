"""The Ceph RBD bdev (SPDK's module/bdev/rbd): an RBD image of a real Ceph cluster as a bdev,
through librbd's C API (drivers/rbd_lib.py).

How I/O flows:

* Across reactors (drivers/rbd_funnel.py): a bdev whose image has ``exclusive-lock``
  (``RINGSTACK_RBD_FUNNEL=auto``, the default) has one image handle, on reactor 0; every
  other reactor closes its own at create and funnels each I/O there over the reactor
  rings, one message each way, so Ceph sees one writer.  Any other image keeps a handle
  per reactor, so nothing crosses processes (docs/drivers.md, "Across reactors", has the
  measurements).
* A reactor's handle serves every thread of that reactor: one queue of librbd
  operations with one fd-driven poller on the eventfd registered with
  ``rbd_set_image_notification``.  ``submit_request`` starts an ``rbd_aio_*`` call with a
  completion that has no callback; librbd signals the eventfd when it finishes, the
  poller collects with ``rbd_poll_io_events`` and the bdev_io completes on its channel's
  thread.  No Python runs in librbd's threads; a sleeping reactor is woken by the eventfd.
* READ/WRITE are ``rbd_aio_readv``/``writev`` straight from the bdev_io's buffers (copied
  into the message when funnelled), FLUSH ``rbd_aio_flush``, UNMAP ``rbd_aio_discard``,
  WRITE_ZEROES ``rbd_aio_write_zeroes`` (librbd >= Octopus; not offered with an older
  librbd), RESET completes once this reactor has none of its I/O to the bdev in flight.
* Bounded failure: every client gets ``rados_osd_op_timeout``, ``rados_mon_op_timeout``
  and ``client_mount_timeout`` (``TIMEOUTS``; the caller's config overrides them), so a
  cluster that stops answering fails I/O within that long.
* Control calls never run on a reactor: connect, ioctx/open/stat, resize, close and
  ``rados_shutdown`` go to a worker thread (reactor/offload.py) and their outcome comes
  back to the reactor thread; the RPC answers when they are done, other RPCs and I/O on
  every reactor go on meanwhile (drivers/rbd_control.py says how, and the rules for
  requests that meet a pending one).

This file is the bdev's I/O side (the disk, its channels, the fn_table); the control side
(registered clusters, create, delete, resize) is drivers/rbd_control.py, whose functions
are also reachable here: ``rbd.register_cluster``, ``unregister_cluster``,
``clusters_info``, ``create``, ``delete``, ``resize`` (main thread; each answers through
``cb``).
"""
from __future__ import annotations

import itertools
import errno
import logging
import ctypes
import os
import time

import reactor as rx
from bdev import module as bm

from . import _vbdev, rbd_funnel, rbd_lib

log = logging.getLogger("ringstack.rbd")

#: Seconds a librados call may wait for the cluster before failing (-ETIMEDOUT); set on
#: every client before the caller's options, which win.
TIMEOUTS = {"rados_osd_op_timeout": 30, "rados_mon_op_timeout": 30, "client_mount_timeout": 30}


def _config_json(out: list) -> None:
    # Registered clusters come before the bdevs that use them (SPDK's bdev_rbd_config_json).
    for name, info in sorted(_clusters().items()):
        out.append({"method": "bdev_rbd_register_cluster", "params": info.params()})


rbd_module = bm.register_module(bm.BdevModule("rbd", config_json=_config_json))


def _clusters() -> dict:
    return _vbdev.state("rbd.clusters")


class RbdDisk:
    """One replica of one rbd bdev; also its io_device key (local).

    ``connect`` and ``disconnect`` block on the cluster: they run on an offload worker
    (drivers/rbd_control.py), never on a reactor, and while one runs the worker alone
    touches the disk (it is not registered yet, or no longer).  Open order: the client
    (own, or the registered cluster's of this reactor), then ``image``, its ``size`` and
    ``features``."""

    __slots__ = ("name", "pool_name", "rbd_name", "user_id", "config", "cluster_name",
                 "read_only", "client", "cluster", "image", "thread",
                 "bdev", "uuid", "features", "size", "lane", "__weakref__")

    def __init__(self, name, pool_name, rbd_name, user_id, config, cluster_name, read_only):
        self.name = name
        self.pool_name = pool_name
        self.rbd_name = rbd_name
        self.user_id = user_id
        self.config = config
        self.cluster_name = cluster_name
        self.read_only = read_only
        self.client = None        # this replica's own client (None with a cluster)
        self.cluster = None       # or the registered cluster's entry (rbd_control.ClusterInfo)
        self.image = None
        self.thread = None
        self.bdev = None
        self.uuid = None
        self.features = 0
        self.size = 0             # bytes, as the image said at open
        self.lane = rx.offload.Lane(f"rbd {name}")   # its control calls, one at a time

    def connect(self, cluster_client=None) -> None:
        """Blocking (a worker): connect an own client unless ``cluster_client`` is given,
        open the image, read its size and features.  On failure nothing stays open."""
        try:
            client = cluster_client
            if client is None:
                client = self.client = rbd_lib.Client(self.user_id, self.config, None, None,
                                                      defaults=TIMEOUTS)
            self.image = rbd_lib.Image(client, self.pool_name, self.rbd_name, self.read_only)
            self.size = self.image.size()
            self.features = self.image.features()
        except BaseException:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Blocking (a worker): close the image (rbd_close waits for librbd's in-flight
        I/O) and the own client.  A registered cluster's client stays: its reference is
        given back on the reactor (rbd_control)."""
        if self.image is not None:
            self.image.close()
            self.image = None
        if self.client is not None:
            self.client.close()
            self.client = None


class RbdChannel:
    """A thread's channel to one rbd bdev.  Its I/O goes to this reactor's image queue
    (``rep.queue``: the replica's own handle, or the owner's on the owner reactor) or, on a
    reactor that funnels, to the owner reactor (drivers/rbd_funnel.py); either way it
    completes here, on this thread (``finish``)."""

    __slots__ = ("rep", "thread", "inflight")

    def __init__(self, disk: RbdDisk):
        self.rep = rbd_funnel.replica_of(disk)
        self.thread = rx.get_thread()
        self.inflight = {}        # bdev_io -> what pins its buffers, or its funnel record

    def start(self, io, call, args, keep=None) -> None:
        """Start ``call`` on this reactor's image handle for ``io``."""
        q = self.rep.queue
        rc = q.start(call, args, _local_done, (self, io), keep) if q is not None else -errno.ENODEV
        if rc < 0:
            rx.send_msg(self.thread, _done, io, rc)   # never inside submit_request
            return
        self.inflight[io] = keep
        self.rep.busy += 1

    def finish(self, io, ret) -> None:
        """On this thread: ``io`` is done (``ret`` < 0: failed).  Once only: an I/O this
        channel already failed (it closed) is not completed again."""
        if self.inflight.pop(io, _GONE) is _GONE:
            return
        rep = self.rep
        rep.busy -= 1
        _done(io, ret)
        if rep.resets and not rep.busy:
            rbd_funnel.finish_resets(rep)

    def close(self) -> None:
        rep = self.rep
        if rep.remote:
            # Funnelled I/O is in the owner's hands; its buffers are copies, so it can fail
            # now and its late answer is dropped.
            rbd_funnel.fail_funnelled(self, -errno.EIO)
        elif self.inflight and rep.queue is not None:
            # librbd may still write into the buffers of what is in flight: wait for it (the
            # layer destroys channels when idle; this is the exception, bounded).
            rep.queue.drain(lambda: not self.inflight, rbd_funnel.DRAIN_S)
        for io in list(self.inflight):
            self.finish(io, -errno.EIO)


_GONE = object()


def _local_done(ctx, ret) -> None:
    """A librbd completion, on the image queue's thread: to the channel's thread."""
    ch, io = ctx
    if ret >= 0 and io.type == bm.IO_TYPE_READ and ret != io.num_blocks * io.bdev.blocklen:
        ret = -errno.EIO          # a short read is a failed read (as SPDK's bdev_rbd)
    if rx.get_thread() is ch.thread:
        ch.finish(io, ret)
    else:
        rx.send_msg(ch.thread, ch.finish, io, ret)


def _channel_create(disk):
    return RbdChannel(disk)


def _channel_destroy(disk, ch):
    ch.close()


def _iovec(io, writable):
    """(ctypes iovec array, count, pins) over the bdev_io's buffers."""
    iovs = io.iovs if len(io.iovs) == io.iovcnt else io.iovs[:io.iovcnt]
    arr = (rbd_lib.Iovec * len(iovs))()
    pins = [arr]
    for i, v in enumerate(iovs):
        try:
            c = (ctypes.c_char * len(v)).from_buffer(v)
        except TypeError:
            if writable:
                raise
            c = ctypes.create_string_buffer(bytes(v), len(v))   # a read-only write source
        pins.append(c)
        arr[i].base = ctypes.addressof(c)
        arr[i].len = len(v)
    return arr, len(iovs), pins


class RbdFnTable(bm.FnTable):
    def submit_request(self, ch, io) -> None:
        _vbdev.with_buf(io, lambda io: _submit(ch.ctx, io))

    def io_type_supported(self, disk, io_type) -> bool:
        if io_type in (bm.IO_TYPE_READ, bm.IO_TYPE_RESET):
            return True
        if disk.read_only:
            return False
        if io_type in (bm.IO_TYPE_WRITE, bm.IO_TYPE_FLUSH, bm.IO_TYPE_UNMAP):
            return True
        if io_type == bm.IO_TYPE_WRITE_ZEROES:
            return rbd_lib.has_write_zeroes()
        return False

    def get_io_channel(self, disk):
        return rx.get_io_channel(disk)

    def destruct(self, disk) -> int:
        # Asynchronous (returns 1): closing the image and the client waits on the cluster,
        # so it runs on a worker and bdev_destruct_done follows (rbd_control.destruct).
        return _control().destruct(disk)

    def dump_info_json(self, disk, w: dict) -> int:
        info = {"pool_name": disk.pool_name, "rbd_name": disk.rbd_name}
        if disk.cluster_name is not None:
            c = _clusters().get(disk.cluster_name)
            if c is not None:
                # SPDK dumps the cluster's entry in place of user_id/config.
                info.update({k: v for k, v in c.params().items()
                             if k not in ("name", "core_mask")})
        else:
            if disk.user_id is not None:
                info["user_id"] = disk.user_id
            if disk.config is not None:
                info["config"] = dict(disk.config)
        w["rbd"] = info
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        d = bdev.ctxt
        p = {"name": bdev.name, "pool_name": d.pool_name, "rbd_name": d.rbd_name,
             "block_size": bdev.blocklen}
        if d.user_id is not None:
            p["user_id"] = d.user_id
        if d.config is not None:
            p["config"] = dict(d.config)
        if d.cluster_name is not None:
            p["cluster_name"] = d.cluster_name
        if d.read_only:
            p["read_only"] = True
        p["uuid"] = d.uuid
        out.append({"method": "bdev_rbd_create", "params": p})


_fn_table = RbdFnTable()


def _submit(ch: RbdChannel, io) -> None:
    t = io.type
    if t == bm.IO_TYPE_RESET:
        rbd_funnel.queue_reset(ch, io)
        return
    bs = io.bdev.blocklen
    off, length = io.offset_blocks * bs, io.num_blocks * bs
    if ch.rep.remote:
        rbd_funnel.forward(ch, io, t, off, length)
        return
    if t == bm.IO_TYPE_READ or t == bm.IO_TYPE_WRITE:
        arr, n, pins = _iovec(io, t == bm.IO_TYPE_READ)
        call, args = rbd_funnel.aio_call(t, off, length, arr, n)
        ch.start(io, call, args, keep=pins)
        return
    call, args = rbd_funnel.aio_call(t, off, length)
    if call is None:
        io.complete(bm.IO_STATUS_FAILED)
        return
    ch.start(io, call, args)


def _done(io, ret) -> None:
    if ret < 0:
        log.error("rbd %s: %s of %d blocks at %d failed: %s", io.bdev.name,
                  bm.IO_TYPE_NAMES.get(io.type, io.type), io.num_blocks, io.offset_blocks,
                  os.strerror(-ret))
    io.complete(bm.IO_STATUS_FAILED if ret < 0 else bm.IO_STATUS_SUCCESS)


def _control():
    from . import rbd_control     # the control side imports this file, not the reverse
    return rbd_control


_CONTROL_API = frozenset(("register_cluster", "unregister_cluster", "clusters_info", "create",
                          "delete", "resize", "ClusterInfo", "Failure"))


def __getattr__(name):
    # rbd.create(...) and friends, as before the control side moved to rbd_control.py.
    if name in _CONTROL_API:
        return getattr(_control(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
