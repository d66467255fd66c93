"""The delay vbdev (SPDK's vbdev_delay): forwards every I/O to its base and holds each
read/write completion until the configured latency has passed since submission -- the
average latency for 99 in 100 I/Os, the p99 latency for the rest.  Latencies are in
microseconds and may be changed at run time (``update_latency``, applied on every
reactor).  Held completions sit in a per-channel deque (submission order = due order for
one latency, so a deque with a due-time scan is enough) drained by a poller that exists
only while something is held.  Time is the reactor clock (the mock clock in
deterministic mode, so tests advance it instead of sleeping)."""
from __future__ import annotations

import errno
import logging
import random
from collections import deque

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.delay")

delay_module = bm.register_module(bm.BdevModule("delay"))

LATENCY_TYPES = ("avg_read", "p99_read", "avg_write", "p99_write")


class DelayDisk:
    __slots__ = ("name", "base_name", "desc", "bdev", "lat", "__weakref__")

    def __init__(self, name, base_name, lat):
        self.name = name
        self.base_name = base_name
        self.desc = None
        self.bdev = None
        self.lat = dict(lat)       # latency type -> µs


class DelayChannel:
    __slots__ = ("base_ch", "held", "poller", "rng")

    def __init__(self, base_ch):
        self.base_ch = base_ch
        self.held = deque()        # [due_ns, io, success]
        self.poller = None
        self.rng = random.Random(0x5EED)

    def _poll(self, _arg) -> int:
        now = rx.now_ns()
        held = self.held
        n = 0
        # not strictly FIFO (a p99 I/O may be due after later ones): scan what is due
        keep = deque()
        while held:
            due, io, ok = held.popleft()
            if due <= now:
                io.complete(bm.IO_STATUS_SUCCESS if ok else bm.IO_STATUS_FAILED)
                n += 1
            else:
                keep.append((due, io, ok))
        self.held = keep
        if not keep:
            rx.poller_unregister(self.poller)
            self.poller = None
        return n


def _ch_create(disk):
    return DelayChannel(_vbdev.base_channel(disk, "delay"))


def _ch_destroy(disk, dch):
    if dch.poller is not None:
        rx.poller_unregister(dch.poller)
    for _, io, _ok in dch.held:
        io.complete(bm.IO_STATUS_FAILED)
    dch.held.clear()
    api.put_io_channel(dch.base_ch)


def _child_done(child, success, arg):
    io, dch, start = arg
    api.free_io(child)
    disk = io.bdev.ctxt
    kind = "read" if io.type == bm.IO_TYPE_READ else "write"
    us = disk.lat["p99_" + kind] if dch.rng.randrange(100) == 0 else disk.lat["avg_" + kind]
    due = start + us * 1000
    if due <= rx.now_ns():
        io.complete(bm.IO_STATUS_SUCCESS if success else bm.IO_STATUS_FAILED)
        return
    dch.held.append((due, io, success))
    if dch.poller is None:
        dch.poller = rx.poller_register(dch._poll, None, 0, f"delay_{disk.name}")


class DelayFnTable(_vbdev.OverBaseFnTable):
    module_name = "delay"

    def submit_request(self, ch, io) -> None:
        disk = io.bdev.ctxt
        dch = ch.ctx
        if io.type in (bm.IO_TYPE_READ, bm.IO_TYPE_WRITE):
            start = rx.now_ns()
            sub = _vbdev.Resubmitter(disk.desc.bdev, dch.base_ch, lambda io: _vbdev.submit_to_base(
                io, disk.desc, dch.base_ch, cb=_child_done, cb_arg=(io, dch, start)))
        else:
            sub = _vbdev.Resubmitter(disk.desc.bdev, dch.base_ch,
                                     lambda io: _vbdev.submit_to_base(io, disk.desc, dch.base_ch))
        _vbdev.with_buf(io, sub)

    def dump_info_json(self, disk, w: dict) -> int:
        w["delay"] = {"name": disk.name, "base_bdev_name": disk.base_name,
                      **{f"{k}_latency": v for k, v in disk.lat.items()}}
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        d = bdev.ctxt
        out.append({"method": "bdev_delay_create",
                    "params": {"name": d.name, "base_bdev_name": d.base_name,
                               **{f"{k}_latency": v for k, v in d.lat.items()}}})


_fn_table = DelayFnTable()


def _check(lat) -> bool:
    return lat["avg_read"] <= lat["p99_read"] and lat["avg_write"] <= lat["p99_write"] \
        and all(v >= 0 for v in lat.values())


def _build(name, base_name, lat) -> int:
    lat = dict(lat)
    if not _check(lat):
        return -errno.EINVAL
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    disk = DelayDisk(name, base_name, lat)
    rc, desc = _vbdev.open_base(base_name, _vbdev.base_event_unregister, disk, delay_module)
    if rc:
        return rc
    disk.desc = desc
    return _vbdev.register_over_base(disk, delay_module, "delay", _fn_table, "delay",
                                     _ch_create, _ch_destroy)


@rx.remote("drivers.delay.create_replica")
def _create_replica(done, name, base_name, lat):
    done(_build(name, base_name, lat))


def create(name, base_bdev_name, avg_read, p99_read, avg_write, p99_write, cb) -> None:
    """Create delay vbdev ``name`` over ``base_bdev_name`` (latencies in µs); ``cb(rc)``:
    -EINVAL when an average exceeds its p99."""
    lat = {"avg_read": avg_read, "p99_read": p99_read, "avg_write": avg_write,
           "p99_write": p99_write}
    _vbdev.replicated_create(_build, _create_replica, (name, base_bdev_name, lat), cb)


def delete(name, cb) -> None:
    _vbdev.unregister_by_name(name, delay_module, cb)


def _update(name, latency_type, us) -> int:
    disk = _vbdev.state("delay").get(name)
    if disk is None:
        return -errno.ENODEV
    if latency_type not in LATENCY_TYPES:
        return -errno.EINVAL
    new = dict(disk.lat)
    new[latency_type] = us
    if not _check(new):
        return -errno.EINVAL
    disk.lat = new
    return 0


@rx.remote("drivers.delay.update_replica")
def _update_replica(done, name, latency_type, us):
    done(_update(name, latency_type, us))


def update_latency(name, latency_type, us, cb) -> None:
    """Change one latency of delay bdev ``name`` on every reactor; ``cb(rc)``."""
    _vbdev.replicated_create(_update, _update_replica, (name, latency_type, us), cb)
