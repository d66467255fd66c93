"""The split vbdev (SPDK's vbdev_split): cut one base bdev into ``split_count`` equal
parts ``<base>p0 .. <base>p{n-1}``.  The parts share one descriptor and one claim on the
base (SPDK's "part base"); the last part's destruct closes it.  Each I/O is forwarded
with its offset shifted by the part's start.

A create whose base does not exist yet is recorded (``_pending()``, on the main reactor)
and answers ``[]``; examine builds the parts when the base registers (SPDK's
vbdev_split_examine); delete forgets a waiting record; save_config writes it.  Unlike
passthru's, the record of a built split goes with it (hot-remove included), as SPDK's
split config does."""
from __future__ import annotations

import errno
import logging
import os

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.split")

split_module = bm.register_module(bm.BdevModule(
    "split", examine_disk=lambda bdev: _examine(bdev),
    config_json=lambda out: _config_json(out), module_fini=lambda: _pending().clear()))


def _pending() -> dict:
    """Splits asked for over a base that is not registered yet: {base name: (split_count,
    split_size_mb)}, on the main reactor."""
    return _vbdev.state("split.pending")


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
    """Split ``base_bdev`` on every reactor; ``cb(rc, names)``: the parts' names, or
    ``[]`` when the base is not there yet (the split is recorded and made by examine when
    it registers).  -EEXIST when that base is split or recorded already."""
    names = _names(base_bdev, split_count)
    args = (base_bdev, split_count, split_size_mb or 0)
    pend = _pending()
    t = rx.get_thread()
    if base_bdev in pend or base_bdev in _vbdev.state("split"):
        rx.send_msg(t, cb, -errno.EEXIST, [])
        return
    rc = bm.replicable(_create_replica, list(args))
    if rc:
        rx.send_msg(t, cb, rc, [])
        return
    if _vbdev.base_missing(base_bdev):
        pend[base_bdev] = args[1:]
        log.info("split %s: creation deferred until the bdev registers", base_bdev)
        rx.send_msg(t, cb, 0, [])
        return

    def built(rc):
        if rc == -errno.ENODEV and _vbdev.base_missing(base_bdev):
            pend[base_bdev] = args[1:]   # the base went meanwhile: wait for it
            cb(0, [])
            return
        cb(rc, names)
    _vbdev.replicated_create(_build, _create_replica, args, built)


def _examine(bdev) -> None:
    """examine_disk (main reactor): make the split recorded for ``bdev``."""
    base = bdev.name
    if base not in _pending():
        bm.module_examine_done(split_module)
        return

    def work(done):
        rec = _pending().get(base)
        if rec is None or _vbdev.base_missing(base):
            done()                       # deleted or gone meanwhile
            return

        def built(rc):
            if rc:
                log.error("split %s: cannot split: %s", base, os.strerror(-rc))
            elif _pending().get(base) is rec:
                del _pending()[base]     # made: the split's own state is its record now
            done()
        _vbdev.replicated_create(_build, _create_replica, (base, *rec), built)
    _vbdev.examine_later(split_module, work)


def _config_json(out: list) -> None:
    """save_config: the splits still waiting for their base (a made split writes its entry
    with its first part)."""
    for base, (count, size_mb) in _pending().items():
        params = {"base_bdev": base, "split_count": count}
        if size_mb:
            params["split_size_mb"] = size_mb
        out.append({"method": "bdev_split_create", "params": params})


def delete(base_bdev, cb) -> None:
    """Unregister every part of ``base_bdev``, or forget a split still waiting for it;
    ``cb(rc)`` (-ENODEV if it is neither)."""
    base = _vbdev.state("split").get(base_bdev)
    if base is None:
        rc = -errno.ENODEV
        if _pending().pop(base_bdev, None) is not None:
            rc = 0                       # a split still waiting for its base: forgotten
        rx.send_msg(rx.get_thread(), cb, rc)
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
