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
  cluster that stops answering fails I/O and blocks create/delete for at most that long.
  The connect and open at create are synchronous on the main reactor (as SPDK's are on
  its app thread), bounded by the same timeouts.

Python API (main thread): ``register_cluster``, ``unregister_cluster``, ``clusters_info``,
``create``, ``delete``, ``resize``; each answers through ``cb``.
"""
from __future__ import annotations

import errno
import logging
import ctypes
import os
import time
import uuid as _uuid

import reactor as rx
from bdev import api
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


class ClusterInfo:
    """A registered cluster on one reactor: its parameters, and this reactor's client
    (connected on first use, shared by every rbd bdev replica here that names it)."""

    def __init__(self, name, user_id, config_param, config_file, key_file, core_mask):
        self.name = name
        self.user_id = user_id
        self.config_param = config_param
        self.config_file = config_file
        self.key_file = key_file
        self.core_mask = core_mask
        self.client = None
        self.ref = 0

    def params(self) -> dict:
        p = {"name": self.name}
        for k in ("user_id", "config_param", "config_file", "key_file", "core_mask"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        return p

    def info(self) -> dict:
        return {"cluster_name": self.name,
                **{k: v for k, v in self.params().items() if k != "name"}}

    def get(self):
        if self.client is None:
            self.client = rbd_lib.Client(self.user_id, self.config_param, self.config_file,
                                         self.key_file, defaults=TIMEOUTS, registered=True)
        self.ref += 1
        return self.client

    def put(self):
        self.ref -= 1

    def shutdown(self):
        if self.client is not None:
            self.client.close()
            self.client = None


class RbdDisk:
    """One replica of one rbd bdev; also its io_device key (local)."""

    __slots__ = ("name", "pool_name", "rbd_name", "user_id", "config", "cluster_name",
                 "read_only", "client", "cluster", "image", "thread",
                 "bdev", "uuid", "features", "__weakref__")

    def __init__(self, name, pool_name, rbd_name, user_id, config, cluster_name, read_only):
        self.name = name
        self.pool_name = pool_name
        self.rbd_name = rbd_name
        self.user_id = user_id
        self.config = config
        self.cluster_name = cluster_name
        self.read_only = read_only
        self.client = None        # this replica's own client (None with a cluster)
        self.cluster = None       # or the registered cluster's entry
        self.image = None
        self.thread = None
        self.bdev = None
        self.uuid = None
        self.features = 0

    def connect(self) -> None:
        if self.cluster_name is not None:
            info = _clusters().get(self.cluster_name)
            if info is None:
                raise rbd_lib.RbdError(errno.ENOENT, f"no cluster {self.cluster_name}")
            client = info.get()
            self.cluster = info
        else:
            client = self.client = rbd_lib.Client(self.user_id, self.config, None, None,
                                                  defaults=TIMEOUTS)
        try:
            self.image = rbd_lib.Image(client, self.pool_name, self.rbd_name, self.read_only)
        except BaseException:
            self.disconnect()
            raise

    def open_image(self):
        return rbd_lib.Image(self.client or self.cluster.client, self.pool_name,
                             self.rbd_name, self.read_only)

    def disconnect(self) -> None:
        if self.image is not None:
            self.image.close()
            self.image = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.put()
            self.cluster = None


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
        rx.io_device_unregister(disk)
        rbd_funnel.detach(disk)     # what is in flight on the handle finishes first
        disk.disconnect()
        st = _vbdev.state("rbd")
        if st.get(disk.name) is disk:
            del st[disk.name]
        return 0

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


def _build(name, pool_name, rbd_name, block_size, user_id, config, cluster_name, uuid,
           read_only) -> int:
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    err = rbd_lib.available()
    if err:
        log.error("rbd %s: %s", name, err)
        return -errno.ENOTSUP
    disk = RbdDisk(name, pool_name, rbd_name, user_id, config, cluster_name, read_only)
    try:
        disk.connect()
        size = disk.image.size()
        disk.features = disk.image.features()
    except OSError as exc:
        log.error("rbd %s: %s", name, exc)
        disk.disconnect()
        return -(exc.errno or errno.EIO)
    if size < block_size:
        log.error("rbd %s: image %s/%s is smaller than one block", name, pool_name, rbd_name)
        disk.disconnect()
        return -errno.EINVAL
    disk.uuid = uuid
    disk.thread = rx.get_thread()
    rbd_funnel.attach(disk)     # the I/O side: this reactor's handle, or the funnel
    bdev = bm.Bdev(name, blocklen=block_size, blockcnt=size // block_size, module=rbd_module,
                   fn_table=_fn_table, ctxt=disk, product_name="Ceph Rbd Disk",
                   write_cache=False, uuid=uuid)
    disk.bdev = bdev
    rx.io_device_register(disk, _channel_create, _channel_destroy, name=f"rbd.{name}")
    rc = bm.bdev_register(bdev)
    if rc:
        rx.io_device_unregister(disk)
        rbd_funnel.detach(disk)
        disk.disconnect()
        return rc
    _vbdev.state("rbd")[name] = disk
    return 0


@rx.remote("drivers.rbd.create_replica")
def _create_replica(done, *args):
    done(_build(*args))


def _next_name() -> str:
    n = 0
    while api.get_by_name(f"Ceph{n}") is not None:
        n += 1
    return f"Ceph{n}"


def create(name, pool_name, rbd_name, block_size, cb, user_id=None, config=None,
           cluster_name=None, uuid=None, read_only=False) -> None:
    """Create rbd bdev ``name`` (default CephN) on every reactor (main thread);
    ``cb(rc, name)``: -EINVAL (block size), -EEXIST, -ENOENT (pool, image or cluster
    missing), -ETIMEDOUT/-EIO (cluster unreachable)."""
    if block_size <= 0 or block_size % 512:
        rx.send_msg(rx.get_thread(), cb, -errno.EINVAL, name)
        return
    if cluster_name is not None and cluster_name not in _clusters():
        log.error("rbd: no registered cluster %s", cluster_name)
        rx.send_msg(rx.get_thread(), cb, -errno.ENOENT, name)
        return
    name = name or _next_name()
    uuid = uuid or str(_uuid.uuid4())
    args = (name, pool_name, rbd_name, block_size, user_id,
            dict(config) if config is not None else None, cluster_name, uuid, bool(read_only))
    _vbdev.replicated_create(_build, _create_replica, args, lambda rc: cb(rc, name))


def delete(name, cb) -> None:
    _vbdev.unregister_by_name(name, rbd_module, cb)


# ---- resize (grow only, as SPDK): the main replica resizes the image, every replica
# takes the new block count.

#: How long a replica waits for its image handle to see a resize done through another.
RESIZE_SEEN_S = 5.0


@rx.remote("drivers.rbd.resize_replica")
def _resize_replica(done, name, blocks):
    b = api.get_by_name(name)
    if b is None:
        return done(-errno.ENODEV)
    # The main replica resized the image through its own client; this replica's handle
    # learns of it from the header watch (milliseconds later) and refuses I/O past its old
    # size until then.  rbd_get_size refreshes the handle once the notification is in.
    want = blocks * b.blocklen
    deadline = time.monotonic() + RESIZE_SEEN_S
    try:
        # (a reactor that funnels has no handle: the owner's already has the new size)
        while b.ctxt.image is not None and b.ctxt.image.size() < want:
            if time.monotonic() > deadline:
                log.error("rbd %s: this reactor's image handle did not see the resize", name)
                return done(-errno.ETIMEDOUT)
            time.sleep(0.002)
    except OSError as exc:
        return done(-(exc.errno or errno.EIO))
    done(bm.notify_blockcnt_change(b, blocks))


def resize(name, new_size_mib, cb) -> None:
    """Grow the image behind ``name`` to ``new_size_mib`` MiB; ``cb(rc)``: -ENODEV (no such
    bdev), -EINVAL (not rbd, or smaller than now)."""
    t = rx.get_thread()
    b = api.get_by_name(name)
    if b is None:
        return rx.send_msg(t, cb, -errno.ENODEV)
    if b.module is not rbd_module:
        return rx.send_msg(t, cb, -errno.EINVAL)
    if b.blocklen * b.blockcnt // (1 << 20) > new_size_mib or new_size_mib >= 1 << 44:
        log.error("rbd %s: the new size must be larger than the current one", name)
        return rx.send_msg(t, cb, -errno.EINVAL)
    nbytes = new_size_mib << 20
    try:
        b.ctxt.image.resize(nbytes)
    except OSError as exc:
        log.error("rbd %s: %s", name, exc)
        return rx.send_msg(t, cb, -(exc.errno or errno.EIO))
    blocks = nbytes // b.blocklen
    rc = bm.notify_blockcnt_change(b, blocks)
    if rc:
        return rx.send_msg(t, cb, rc)
    bm.broadcast(_resize_replica, [name, blocks], cb, include_self=False)


# ---- registered clusters: parameters on every reactor, a client per reactor

def _add_cluster(name, user_id, config_param, config_file, key_file, core_mask) -> int:
    if name in _clusters():
        return -errno.EEXIST
    _clusters()[name] = ClusterInfo(name, user_id, config_param, config_file, key_file,
                                    core_mask)
    return 0


@rx.remote("drivers.rbd.add_cluster")
def _add_cluster_replica(done, *args):
    done(_add_cluster(*args))


@rx.remote("drivers.rbd.drop_cluster")
def _drop_cluster_replica(done, name):
    info = _clusters().pop(name, None)
    if info is not None:
        info.shutdown()
    done(0)


def register_cluster(name, cb, user_id=None, config_param=None, config_file=None,
                     key_file=None, core_mask=None) -> None:
    """SPDK's bdev_rbd_register_cluster: connect once here (so a wrong configuration is an
    error now, as in SPDK), then record it on every reactor; ``cb(rc)``."""
    t = rx.get_thread()
    if name in _clusters():
        log.error("rbd: cluster %s already exists", name)
        return rx.send_msg(t, cb, -errno.EEXIST)
    err = rbd_lib.available()
    if err:
        log.error("rbd: %s", err)
        return rx.send_msg(t, cb, -errno.ENOTSUP)
    args = [name, user_id, dict(config_param) if config_param is not None else None,
            config_file, key_file, core_mask]
    rc = bm.replicable(_add_cluster_replica, args)
    if rc:
        return rx.send_msg(t, cb, rc)
    _add_cluster(*args)
    info = _clusters()[name]
    try:
        info.get()
        info.put()
    except OSError as exc:
        log.error("rbd: cluster %s: %s", name, exc)
        del _clusters()[name]
        info.shutdown()
        return rx.send_msg(t, cb, -(exc.errno or errno.EIO))

    def after(rc):
        if rc:
            _clusters().pop(name, None)
            info.shutdown()
        cb(rc)
    bm.broadcast(_add_cluster_replica, args, after, include_self=False,
                 undo=_drop_cluster_replica)


def unregister_cluster(name, cb) -> None:
    """Forget a registered cluster everywhere; -1 (EPERM, as SPDK's bare -1) when it is
    unknown or a bdev still uses it."""
    t = rx.get_thread()
    info = _clusters().get(name)
    users = [d for d in _vbdev.state("rbd").values() if d.cluster_name == name]
    if info is None or users:
        log.error("rbd: cluster %s %s", name, "is still used" if users else "is not registered")
        return rx.send_msg(t, cb, -errno.EPERM)
    del _clusters()[name]
    info.shutdown()
    bm.broadcast(_drop_cluster_replica, [name], cb, include_self=False)


def clusters_info(name=None):
    """(rc, result): one cluster's entry, or the list of all; -ENOENT as SPDK (none
    registered, or no such name)."""
    cs = _clusters()
    if not cs:
        return -errno.ENOENT, None
    if name is not None:
        c = cs.get(name)
        return (0, c.info()) if c is not None else (-errno.ENOENT, None)
    return 0, [c.info() for _n, c in sorted(cs.items())]
