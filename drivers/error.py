"""The error-injection vbdev (SPDK's vbdev_error): ``EE_<base>`` forwards every I/O to its
base, except that ``inject`` makes the next ``num`` I/Os of a type fail, hang, return
corrupted data or report ``NOMEM``.

Injection state lives in each reactor's replica; ``inject`` sets it on every reactor, and
each reactor counts its own ``num`` (an I/O never leaves its thread, so a global count
would need a round trip per I/O; tests and users inject, then drive I/O from one place).
Pending (hung) I/Os are failed by a reset of the bdev, as in SPDK.
"""
from __future__ import annotations

import errno
import logging

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.error")

error_module = bm.register_module(bm.BdevModule("error"))

IO_TYPES = {"read": bm.IO_TYPE_READ, "write": bm.IO_TYPE_WRITE, "unmap": bm.IO_TYPE_UNMAP,
            "flush": bm.IO_TYPE_FLUSH, "write_zeroes": bm.IO_TYPE_WRITE_ZEROES,
            "reset": bm.IO_TYPE_RESET}
ERROR_TYPES = ("failure", "pending", "corrupt_data", "nomem")


class ErrorDisk:
    __slots__ = ("name", "base_name", "desc", "bdev", "inject", "__weakref__")

    def __init__(self, name, base_name):
        self.name = name
        self.base_name = base_name
        self.desc = None
        self.bdev = None
        # io_type -> [error_type, remaining, corrupt_offset, corrupt_value]
        self.inject = {}


class ErrorChannel:
    __slots__ = ("base_ch", "pending")

    def __init__(self, base_ch):
        self.base_ch = base_ch
        self.pending = []


def _ch_create(disk):
    return ErrorChannel(_vbdev.base_channel(disk, "error"))


def _ch_destroy(disk, ech):
    for io in ech.pending:
        io.complete(bm.IO_STATUS_FAILED)
    ech.pending = []
    api.put_io_channel(ech.base_ch)


def _corrupt(io, offset, value) -> None:
    pos = offset
    for v in io.iovs[:io.iovcnt]:
        mv = v if isinstance(v, memoryview) else memoryview(v)
        if pos < mv.nbytes:
            mv = mv.cast("B") if mv.format != "B" else mv
            mv[pos] ^= (value or 0xFF)
            return
        pos -= mv.nbytes


def _read_done_corrupt(child, success, arg):
    io, offset, value = arg
    api.free_io(child)
    if success:
        _corrupt(io, offset, value)
    io.complete(bm.IO_STATUS_SUCCESS if success else bm.IO_STATUS_FAILED)


class ErrorFnTable(_vbdev.OverBaseFnTable):
    module_name = "error"

    def submit_request(self, ch, io) -> None:
        disk = io.bdev.ctxt
        ech = ch.ctx
        if io.type == bm.IO_TYPE_RESET:
            # A reset fails the I/O we were told to hold, then goes to the base.
            pend, ech.pending = ech.pending, []
            for p in pend:
                p.complete(bm.IO_STATUS_FAILED)
        cfg = disk.inject.get(io.type)
        if cfg is not None and cfg[1] > 0:
            cfg[1] -= 1
            kind = cfg[0]
            if kind == "failure":
                io.complete(bm.IO_STATUS_FAILED)
                return
            if kind == "nomem":
                io.complete(bm.IO_STATUS_NOMEM)
                return
            if kind == "pending":
                ech.pending.append(io)
                return
            if kind == "corrupt_data":
                if io.type == bm.IO_TYPE_WRITE:
                    _corrupt(io, cfg[2], cfg[3])
                elif io.type == bm.IO_TYPE_READ:
                    arg = (io, cfg[2], cfg[3])
                    _vbdev.with_buf(io, _vbdev.Resubmitter(
                        disk.desc.bdev, ech.base_ch, lambda io: _vbdev.submit_to_base(
                            io, disk.desc, ech.base_ch, cb=_read_done_corrupt, cb_arg=arg)))
                    return
        _vbdev.with_buf(io, _vbdev.Resubmitter(
            disk.desc.bdev, ech.base_ch,
            lambda io: _vbdev.submit_to_base(io, disk.desc, ech.base_ch)))

    def dump_info_json(self, disk, w: dict) -> int:
        w["error_disk"] = {"base_bdev": disk.base_name}
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        out.append({"method": "bdev_error_create", "params": {"base_name": bdev.ctxt.base_name}})


_fn_table = ErrorFnTable()


def _build(base_name) -> int:
    name = "EE_" + base_name
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    disk = ErrorDisk(name, base_name)
    rc, desc = _vbdev.open_base(base_name, _vbdev.base_event_unregister, disk, error_module)
    if rc:
        return rc
    disk.desc = desc
    return _vbdev.register_over_base(disk, error_module, "error", _fn_table,
                                     "Error Injection Disk", _ch_create, _ch_destroy)


@rx.remote("drivers.error.create_replica")
def _create_replica(done, base_name):
    done(_build(base_name))


def create(base_name, cb) -> None:
    """Create ``EE_<base_name>`` on every reactor; ``cb(rc)``."""
    _vbdev.replicated_create(_build, _create_replica, (base_name,), cb)


def delete(name, cb) -> None:
    _vbdev.unregister_by_name(name, error_module, cb)


def _apply(name, io_type, error_type, num, corrupt_offset, corrupt_value) -> int:
    disk = _vbdev.state("error").get(name)
    if disk is None:
        return -errno.ENODEV
    types = list(IO_TYPES.values()) if io_type in ("all", "clear") else [IO_TYPES[io_type]]
    for t in types:
        if io_type == "clear":
            disk.inject.pop(t, None)
        else:
            disk.inject[t] = [error_type, num, corrupt_offset, corrupt_value]
    return 0


@rx.remote("drivers.error.inject_replica")
def _inject_replica(done, *args):
    done(_apply(*args))


def inject(name, io_type, error_type, num, cb, corrupt_offset=0, corrupt_value=0) -> None:
    """Arm (or with io_type "clear", disarm) injection on every reactor; ``cb(rc)``:
    -ENODEV for an unknown error bdev, -EINVAL for an unknown io_type/error_type."""
    if io_type not in IO_TYPES and io_type not in ("all", "clear") or error_type not in ERROR_TYPES:
        rx.send_msg(rx.get_thread(), cb, -errno.EINVAL)
        return
    _vbdev.replicated_create(_apply, _inject_replica,
                             (name, io_type, error_type, num, corrupt_offset, corrupt_value), cb)
