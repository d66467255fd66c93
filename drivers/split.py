"""The split vbdev (SPDK's vbdev_split): cut one base bdev into ``split_count`` equal
parts ``<base>p0 .. <base>p{n-1}``.  The parts share one descriptor and one claim on the
base (SPDK's "part base"); the last part's destruct closes it.  Each I/O is forwarded
with its offset shifted by the part's start."""
from __future__ import annotations

import errno
import logging

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.split")

split_module = bm.register_module(bm.BdevModule("split"))


class SplitBase:
    """The shared part of one split base, per replica."""

    __slots__ = ("base_name", "desc", "parts", "split_count", "split_size_mb", "removing")

    def __init__(self, base_name, split_count, split_size_mb):
        self.base_name = base_name
        self.desc = None
        self.parts = []
        self.split_count = split_count
        self.split_size_mb = split_size_mb
        self.removing = False


class Part:
    __slots__ = ("name", "base", "offset_blocks", "bdev", "__weakref__")

    def __init__(self, name, base, offset_blocks):
        self.name = name
        self.base = base
        self.offset_blocks = offset_blocks
        self.bdev = None


def _ch_create(part):
    ch = api.get_io_channel(part.base.desc)
    if ch is None:
        raise RuntimeError(f"split {part.name}: no channel to {part.base.base_name}")
    return ch


def _ch_destroy(part, base_ch):
    api.put_io_channel(base_ch)


class SplitFnTable(bm.FnTable):
    def submit_request(self, ch, io) -> None:
        part = io.bdev.ctxt
        sub = _vbdev.Resubmitter(part.base.desc.bdev, ch.ctx, lambda io: _vbdev.submit_to_base(
            io, part.base.desc, ch.ctx, io.offset_blocks + part.offset_blocks))
        _vbdev.with_buf(io, sub)

    def io_type_supported(self, part, io_type) -> bool:
        return api.io_type_supported(part.base.desc.bdev, io_type)

    def get_io_channel(self, part):
        return rx.get_io_channel(part)

    def destruct(self, part) -> int:
        rx.io_device_unregister(part)
        base = part.base
        if part in base.parts:
            base.parts.remove(part)
        if not base.parts:
            _vbdev.close_base(base.desc)
            base.desc = None
            _vbdev.state("split").pop(base.base_name, None)
        return 0

    def dump_info_json(self, part, w: dict) -> int:
        w["split"] = {"base_bdev": part.base.base_name, "offset_blocks": part.offset_blocks}
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        # One entry per split base, written with its first part.
        part = bdev.ctxt
        base = part.base
        if base.parts and base.parts[0] is part:
            params = {"base_bdev": base.base_name, "split_count": base.split_count}
            if base.split_size_mb:
                params["split_size_mb"] = base.split_size_mb
            out.append({"method": "bdev_split_create", "params": params})


_fn_table = SplitFnTable()


def _base_event(event, bdev, base) -> None:
    if event != api.EVENT_REMOVE or not _vbdev.on_main_reactor() or base.removing:
        return
    base.removing = True
    for part in list(base.parts):
        if part.bdev is not None and part.bdev.status != bm.STATUS_REMOVING:
            bm.bdev_unregister(part.bdev, None)


def _geometry(base_bdev, split_count, split_size_mb):
    if split_size_mb:
        blocks = split_size_mb * 1024 * 1024 // base_bdev.blocklen
        if blocks == 0 or blocks * split_count > base_bdev.blockcnt:
            return None
        return blocks
    blocks = base_bdev.blockcnt // split_count
    return blocks or None


def _names(base_name, split_count):
    return [f"{base_name}p{i}" for i in range(split_count)]


def _build(base_name, split_count, split_size_mb) -> int:
    st = _vbdev.state("split")
    if base_name in st:
        return -errno.EEXIST
    b = api.get_by_name(base_name)
    if b is None:
        return -errno.ENODEV
    blocks = _geometry(b, split_count, split_size_mb)
    if blocks is None:
        log.error("split %s: %d parts of %s MiB do not fit", base_name, split_count, split_size_mb)
        return -errno.EINVAL
    names = _names(base_name, split_count)
    if any(api.get_by_name(n) is not None for n in names):
        return -errno.EEXIST
    base = SplitBase(base_name, split_count, split_size_mb)
    rc, desc = _vbdev.open_base(base_name, _base_event, base, split_module)
    if rc:
        return rc
    base.desc = desc
    st[base_name] = base
    for i, name in enumerate(names):
        part = Part(name, base, i * blocks)
        bdev = _vbdev.bdev_like(name, b, split_module, _fn_table, part, "Split Disk",
                                blockcnt=blocks)
        part.bdev = bdev
        rx.io_device_register(part, _ch_create, _ch_destroy, name=f"split.{name}")
        base.parts.append(part)
        rc = bm.vbdev_register(bdev, [b], 1)
        if rc:  # cannot happen after the name check; undo the local parts anyway
            log.error("split %s: register %s failed: %d", base_name, name, rc)
            base.parts.remove(part)
            rx.io_device_unregister(part)
            for p in list(base.parts):
                bm.bdev_unregister(p.bdev, None)
            return rc
    return 0


@rx.remote("drivers.split.create_replica")
def _create_replica(done, base_name, split_count, split_size_mb):
    done(_build(base_name, split_count, split_size_mb))


def create(base_bdev, split_count, cb, split_size_mb=0) -> None:
    """Split ``base_bdev`` on every reactor; ``cb(rc, names)``."""
    names = _names(base_bdev, split_count)
    _vbdev.replicated_create(_build, _create_replica, (base_bdev, split_count, split_size_mb or 0),
                             lambda rc: cb(rc, names))


def delete(base_bdev, cb) -> None:
    """Unregister every part of ``base_bdev``; ``cb(rc)`` (-ENODEV if it is not split)."""
    base = _vbdev.state("split").get(base_bdev)
    if base is None:
        rx.send_msg(rx.get_thread(), cb, -errno.ENODEV)
        return
    parts = [p.bdev for p in base.parts]
    left = [len(parts)]
    rcs = []

    def one(_arg, rc):
        rcs.append(rc)
        left[0] -= 1
        if left[0] == 0:
            cb(next((r for r in rcs if r), 0))
    for b in parts:
        bm.bdev_unregister(b, one)
