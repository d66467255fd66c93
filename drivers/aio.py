"""The file bdev (SPDK's "aio" module): a regular file or a block device, I/O done off the
reactor loop by the kernel, completions reported on the submitting thread.

How I/O flows (see drivers/aio_engine.py for the engine and the measurements behind it):

* Each thread that does I/O to an aio bdev has a channel, and each channel owns an engine
  (an io_uring by default) and one fd-driven poller.  ``submit_request`` writes an SQE;
  the poller publishes the batch with one syscall, reaps completions by reading the CQ
  ring (no syscall) and completes each bdev_io on this thread.  A sleeping reactor is
  woken by the ring's eventfd, so idle costs nothing and latency does not wait for a tick.
* Every reactor's replica opens the file itself (its own fd): nothing crosses processes.
* Durability: ``flush`` is an ``fdatasync`` of the file (async through the ring), so data
  written and flushed survives a restart of the target.  ``o_direct`` (a ringstack
  extension, default off) opens with O_DIRECT; unaligned buffers then go through an
  aligned bounce buffer in the engine.
* ``unmap``/``write_zeroes`` on a regular file are ``fallocate`` (punch hole / zero range),
  done inline (a metadata operation) and completed from the poller.  ``reset`` completes
  once the channel has nothing in flight.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import uuid as _uuid

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev
from .aio_engine import make_engine

log = logging.getLogger("ringstack.aio")

aio_module = bm.register_module(bm.BdevModule("aio"))

#: Engine used by new channels: "auto" (io_uring when available), "uring" or "sync".
ENGINE = os.environ.get("RINGSTACK_AIO_ENGINE", "auto")

_BLKSSZGET = 0x1268
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_libc = None


def _fallocate(fd, mode, offset, length) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) != 0:
        return -ctypes.get_errno()
    return 0


class AioDisk:
    """One replica's context of one file bdev; also its io_device key (local)."""

    __slots__ = ("name", "filename", "fd", "block_size", "readonly", "o_direct", "is_file",
                 "bdev", "uuid", "__weakref__")

    def __init__(self, name, filename, block_size, readonly, o_direct):
        self.name = name
        self.filename = filename
        self.block_size = block_size
        self.readonly = readonly
        self.o_direct = o_direct
        self.fd = -1
        self.is_file = True
        self.bdev = None
        self.uuid = None


class AioChannel:
    __slots__ = ("disk", "engine", "poller", "resets")

    def __init__(self, disk):
        self.disk = disk
        self.engine = make_engine(ENGINE)
        self.resets = []
        # fd-driven: a sleeping reactor wakes when the engine's eventfd is signalled.
        self.poller = rx.poller_register(self._poll, None, 0, f"aio_{disk.name}",
                                         fd=self.engine.fileno())

    def _poll(self, _arg) -> int:
        n = self.engine.poll()
        if self.resets and not self.engine.inflight:
            resets, self.resets = self.resets, []
            for io in resets:
                io.complete(bm.IO_STATUS_SUCCESS)
            n += 1
        return n


def _channel_create(disk):
    return AioChannel(disk)


def _channel_destroy(disk, ch):
    rx.poller_unregister(ch.poller)
    # The kernel may still write into buffers of in-flight I/O: finish it before the
    # ring goes (the layer normally destroys channels only when they are idle).
    n = 0
    while ch.engine.inflight and n < 100000:
        ch.engine.poll()
        n += 1
    ch.engine.close()


class AioFnTable(bm.FnTable):
    def submit_request(self, ch, io) -> None:
        _vbdev.with_buf(io, lambda io: _submit(ch.ctx, io))

    def io_type_supported(self, disk, io_type) -> bool:
        if io_type in (bm.IO_TYPE_READ, bm.IO_TYPE_RESET):
            return True
        if disk.readonly:
            return False
        if io_type in (bm.IO_TYPE_WRITE, bm.IO_TYPE_FLUSH):
            return True
        if io_type in (bm.IO_TYPE_UNMAP, bm.IO_TYPE_WRITE_ZEROES):
            return disk.is_file
        return False

    def get_io_channel(self, disk):
        return rx.get_io_channel(disk)

    def destruct(self, disk) -> int:
        if disk.fd >= 0:
            os.close(disk.fd)
            disk.fd = -1
        rx.io_device_unregister(disk)
        _vbdev.state("aio").pop(disk.name, None)
        return 0

    def dump_info_json(self, disk, w: dict) -> int:
        w["aio"] = {"filename": disk.filename, "block_size_override": True,
                    "readonly": disk.readonly, "fallocate": disk.is_file,
                    "o_direct": disk.o_direct}
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        d = bdev.ctxt
        params = {"name": d.name, "filename": d.filename, "block_size": d.block_size,
                  "readonly": d.readonly}
        if d.o_direct:
            params["o_direct"] = True
        if d.uuid:
            params["uuid"] = d.uuid
        out.append({"method": "bdev_aio_create", "params": params})


_fn_table = AioFnTable()


def _submit(ach: AioChannel, io) -> None:
    disk = ach.disk
    t = io.type
    bs = disk.block_size
    if t == bm.IO_TYPE_READ or t == bm.IO_TYPE_WRITE:
        iovs = io.iovs if len(io.iovs) == io.iovcnt else io.iovs[:io.iovcnt]
        rc = ach.engine.submit_rw(disk.fd, t == bm.IO_TYPE_WRITE, iovs, io.offset_blocks * bs,
                                  lambda st: _done(io, st), disk.o_direct)
        if rc:
            # Ring full: the layer queues the I/O and retries as others complete.
            io.complete(bm.IO_STATUS_NOMEM)
        return
    if t == bm.IO_TYPE_FLUSH:
        if ach.engine.submit_fsync(disk.fd, lambda st: _done(io, st)):
            io.complete(bm.IO_STATUS_NOMEM)
        return
    if t == bm.IO_TYPE_UNMAP or t == bm.IO_TYPE_WRITE_ZEROES:
        mode = _FALLOC_FL_KEEP_SIZE | (_FALLOC_FL_PUNCH_HOLE if t == bm.IO_TYPE_UNMAP
                                        else _FALLOC_FL_ZERO_RANGE)
        rc = _fallocate(disk.fd, mode, io.offset_blocks * bs, io.num_blocks * bs)
        if rc == -errno.EOPNOTSUPP and t == bm.IO_TYPE_WRITE_ZEROES:
            # Some filesystems have no ZERO_RANGE: a punched hole reads back as zeroes too.
            rc = _fallocate(disk.fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE,
                            io.offset_blocks * bs, io.num_blocks * bs)
        # complete later (a message on this thread), never inside submit
        rx.send_msg(rx.get_thread(), _done, io, rc)
        return
    if t == bm.IO_TYPE_RESET:
        ach.resets.append(io)    # completes when nothing is in flight on this channel
        return
    io.complete(bm.IO_STATUS_FAILED)


def _done(io, status) -> None:
    if status:
        log.error("aio %s: %s of %d blocks at %d failed: %s", io.bdev.name,
                  bm.IO_TYPE_NAMES.get(io.type, io.type), io.num_blocks, io.offset_blocks,
                  os.strerror(-status))
    io.complete(bm.IO_STATUS_FAILED if status else bm.IO_STATUS_SUCCESS)


def _detect(fd) -> tuple[bool, int, int]:
    """(is_regular_file, size_bytes, logical_block_size_or_0)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return True, st.st_size, 0
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            lbs = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))[0]
        except OSError:
            lbs = 512
        return False, size, lbs
    raise OSError(errno.EINVAL, "not a regular file or block device")


def _build(name, filename, block_size, readonly, o_direct, uuid) -> int:
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    if o_direct:
        flags |= os.O_DIRECT
    try:
        fd = os.open(filename, flags)
    except OSError as exc:
        log.error("aio %s: cannot open %s: %s", name, filename, exc.strerror)
        return -(exc.errno or errno.EIO)
    try:
        is_file, size, lbs = _detect(fd)
    except OSError as exc:
        os.close(fd)
        return -(exc.errno or errno.EINVAL)
    bs = block_size or lbs or 512
    if bs < 512 or bs & (bs - 1) or (lbs and bs < lbs):
        log.error("aio %s: invalid block size %d", name, bs)
        os.close(fd)
        return -errno.EINVAL
    if size < bs:
        log.error("aio %s: %s is smaller than one block", name, filename)
        os.close(fd)
        return -errno.EINVAL
    disk = AioDisk(name, filename, bs, readonly, o_direct)
    disk.fd = fd
    disk.is_file = is_file
    disk.uuid = uuid
    bdev = bm.Bdev(name, blocklen=bs, blockcnt=size // bs, module=aio_module,
                   fn_table=_fn_table, ctxt=disk, product_name="AIO disk",
                   write_cache=True, uuid=uuid)
    disk.bdev = bdev
    rx.io_device_register(disk, _channel_create, _channel_destroy, name=f"aio.{name}")
    rc = bm.bdev_register(bdev)
    if rc:
        rx.io_device_unregister(disk)
        os.close(fd)
        return rc
    _vbdev.state("aio")[name] = disk
    return 0


@rx.remote("drivers.aio.create_replica")
def _create_replica(done, name, filename, block_size, readonly, o_direct, uuid):
    done(_build(name, filename, block_size, readonly, o_direct, uuid))


def create(name, filename, cb, block_size=0, readonly=False, o_direct=False, uuid=None) -> None:
    """Create file bdev ``name`` on every reactor (main thread); ``cb(rc)``: 0, -EEXIST,
    -ENOENT/-EACCES (open failed), -EINVAL (block size, file too small)."""
    filename = os.path.abspath(filename)
    uuid = uuid or str(_uuid.uuid4())
    _vbdev.replicated_create(_build, _create_replica,
                             (name, filename, block_size, bool(readonly), bool(o_direct), uuid), cb)


def delete(name, cb) -> None:
    _vbdev.unregister_by_name(name, aio_module, cb)
