"""The raid vbdev (SPDK's module/bdev/raid): raid0 (striping), raid1 (mirroring) and
concat over base bdevs given by name.

Layout:

* **raid0**: strip ``s`` (``strip_size_kb`` KiB) of the raid lives on base ``s % n`` at
  strip ``s // n``.  Size: n x the smallest base, rounded down to whole strips.
* **concat**: the bases one after the other, each rounded down to whole strips.
* **raid1**: every base holds every block; size of the smallest base; no strip size.

Reads and writes of raid0/concat never cross a strip: the bdev sets
``optimal_io_boundary`` to the strip and asks the layer to split there, so one I/O maps
to one base.  Unmap, write_zeroes and flush may span strips: they fan out, one child per
(base, contiguous range), and complete when all children did.  raid1 reads one base
(round robin over the live ones) and fans writes, unmaps, flushes and resets out to all.

Hot-remove: raid0/concat cannot lose a base, so the main reactor unregisters the raid
bdev.  raid1 keeps serving from the others: each reactor's replica drops its channels'
references to the removed base (a message to each of its threads holding a channel),
then closes its descriptor, which lets the base's unregister finish; the raid goes
offline (and is unregistered) only when no base is left.

Deferred creation (SPDK's raid examine): a create naming bases that are not all registered
makes a *configuring* raid on the main reactor: no bdev yet, the present bases opened and
claimed there (the claims reach the other replicas), the missing ones shown unconfigured
by bdev_raid_get_bdevs.  When a missing base registers, examine claims it; when the last
one is there, the reservations are dropped and the raid is built by the same replicated
create as an immediate one (then ``online``).  Deleting a configuring raid releases its
bases.  save_config writes a configuring raid's create too.

Resize (SPDK's raid0/raid1 ``resize``): when a base grows, every replica gets the RESIZE
event on its own base descriptor and recomputes the size from its bases (raid0: n x the
smallest, whole strips; raid1: the smallest live base); concat keeps its size, as in SPDK.
"""
from __future__ import annotations

import errno
import logging
import os

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.raid")

raid_module = bm.register_module(bm.BdevModule(
    "raid", examine_disk=lambda bdev: _examine(bdev),
    config_json=lambda out: _config_json(out), module_fini=lambda: _drop_configuring()))

NULL_UUID = "00000000-0000-0000-0000-000000000000"

LEVELS = {"raid0": "raid0", "0": "raid0", "raid1": "raid1", "1": "raid1", "concat": "concat"}


class Base:
    __slots__ = ("name", "desc", "blocks", "start")

    def __init__(self, name):
        self.name = name
        self.desc = None
        self.blocks = 0      # blocks of this base used by the raid
        self.start = 0       # concat: first raid block on this base


class RaidNode:
    __slots__ = ("name", "level", "strip_size_kb", "strip", "bases", "bdev", "state", "uuid",
                 "__weakref__")

    def __init__(self, name, level, strip_size_kb, base_names, uuid):
        self.name = name
        self.level = level
        self.strip_size_kb = strip_size_kb
        self.strip = 0
        self.bases = [Base(n) for n in base_names]
        self.bdev = None
        self.state = "configuring"
        self.uuid = uuid

    def live(self):
        return [i for i, b in enumerate(self.bases) if b.desc is not None]


class RaidChannel:
    __slots__ = ("chs", "rr")

    def __init__(self, chs):
        self.chs = chs       # per base: IoChannel, or None once the base is gone
        self.rr = 0


def _ch_create(node):
    chs = []
    for b in node.bases:
        if b.desc is None:
            chs.append(None)
            continue
        ch = api.get_io_channel(b.desc)
        if ch is None:
            for c in chs:
                if c is not None:
                    api.put_io_channel(c)
            raise RuntimeError(f"raid {node.name}: no channel to {b.name}")
        chs.append(ch)
    return RaidChannel(chs)


def _ch_destroy(node, rch):
    for c in rch.chs:
        if c is not None:
            api.put_io_channel(c)
    rch.chs = []


class _Join:
    """A parent I/O waiting for its children; fails if any child failed."""

    __slots__ = ("io", "left", "ok")

    def __init__(self, io, n):
        self.io = io
        self.left = n
        self.ok = True

    def child_done(self, child, success, _arg=None):
        if child is not None:
            api.free_io(child)
        if not success:
            self.ok = False
        self.left -= 1
        if self.left == 0:
            self.io.complete(bm.IO_STATUS_SUCCESS if self.ok else bm.IO_STATUS_FAILED)


def _submit_child(join, desc, ch, io, offset, num) -> None:
    """One child of ``io`` to a base: same type, given range; ENOMEM waits and retries."""
    t = io.type
    cb = join.child_done
    if t == bm.IO_TYPE_READ:
        rc = api.readv_blocks(desc, ch, _iovs(io), offset, num, cb, join)
    elif t == bm.IO_TYPE_WRITE:
        rc = api.writev_blocks(desc, ch, _iovs(io), offset, num, cb, join)
    elif t == bm.IO_TYPE_UNMAP:
        rc = api.unmap_blocks(desc, ch, offset, num, cb, join)
    elif t == bm.IO_TYPE_WRITE_ZEROES:
        rc = api.write_zeroes_blocks(desc, ch, offset, num, cb, join)
    elif t == bm.IO_TYPE_FLUSH:
        rc = api.flush_blocks(desc, ch, offset, num, cb, join)
    elif t == bm.IO_TYPE_RESET:
        rc = api.reset(desc, ch, cb, join)
    else:
        rc = -errno.ENOTSUP
    if rc == -errno.ENOMEM:
        entry = api.IoWaitEntry(desc.bdev, lambda _a: _submit_child(join, desc, ch, io, offset, num), None)
        if api.queue_io_wait(desc.bdev, ch, entry) == 0:
            return
    if rc:
        log.error("raid %s: child submit failed: %d", io.bdev.name, rc)
        join.child_done(None, False)


def _iovs(io):
    return io.iovs if len(io.iovs) == io.iovcnt else io.iovs[:io.iovcnt]


def _ranges(node, offset, num):
    """[(base index, base offset, blocks)] covering raid blocks [offset, offset+num)."""
    out = []
    s = node.strip
    n = len(node.bases)
    end = offset + num
    pos = offset
    while pos < end:
        if node.level == "raid0":
            strip = pos // s
            idx = strip % n
            in_strip = pos % s
            cnt = min(s - in_strip, end - pos)
            boff = (strip // n) * s + in_strip
        else:  # concat
            idx = next(i for i, b in enumerate(node.bases) if b.start <= pos < b.start + b.blocks)
            b = node.bases[idx]
            cnt = min(b.start + b.blocks - pos, end - pos)
            boff = pos - b.start
        if out and out[-1][0] == idx and out[-1][1] + out[-1][2] == boff:
            out[-1] = (idx, out[-1][1], out[-1][2] + cnt)   # contiguous on the same base
        else:
            out.append((idx, boff, cnt))
        pos += cnt
    return out


def _submit(rch, io) -> None:
    node = io.bdev.ctxt
    t = io.type
    if node.level == "raid1":
        live = [i for i in node.live() if rch.chs[i] is not None]
        if not live:
            io.complete(bm.IO_STATUS_FAILED)
            return
        if t == bm.IO_TYPE_READ:
            idx = live[rch.rr % len(live)]
            rch.rr += 1
            targets = [(idx, io.offset_blocks, io.num_blocks)]
        else:
            targets = [(i, io.offset_blocks, io.num_blocks) for i in live]
    elif t == bm.IO_TYPE_RESET:
        targets = [(i, 0, 0) for i in range(len(node.bases))]
    elif t == bm.IO_TYPE_FLUSH and io.num_blocks == 0:
        targets = []
    else:
        targets = _ranges(node, io.offset_blocks, io.num_blocks)
    if any(node.bases[i].desc is None or rch.chs[i] is None for i, _, _ in targets):
        io.complete(bm.IO_STATUS_FAILED)
        return
    if not targets:
        rx.send_msg(rx.get_thread(), io.complete, bm.IO_STATUS_SUCCESS)
        return
    join = _Join(io, len(targets))
    for i, off, num in targets:
        _submit_child(join, node.bases[i].desc, rch.chs[i], io, off, num)


class RaidFnTable(bm.FnTable):
    def submit_request(self, ch, io) -> None:
        _vbdev.with_buf(io, lambda io: _submit(ch.ctx, io))

    def io_type_supported(self, node, io_type) -> bool:
        if io_type not in (bm.IO_TYPE_READ, bm.IO_TYPE_WRITE, bm.IO_TYPE_UNMAP, bm.IO_TYPE_FLUSH,
                           bm.IO_TYPE_RESET, bm.IO_TYPE_WRITE_ZEROES):
            return False
        bases = [b for b in node.bases if b.desc is not None]
        return bool(bases) and all(api.io_type_supported(b.desc.bdev, io_type) for b in bases)

    def get_io_channel(self, node):
        return rx.get_io_channel(node)

    def destruct(self, node) -> int:
        for b in node.bases:
            _vbdev.close_base(b.desc)
            b.desc = None
        node.state = "offline"
        rx.io_device_unregister(node)
        _vbdev.state("raid").pop(node.name, None)
        return 0

    def dump_info_json(self, node, w: dict) -> int:
        w["raid"] = info(node)
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        out.append(_create_entry(bdev.ctxt))


_fn_table = RaidFnTable()


def info(node) -> dict:
    """One entry of bdev_raid_get_bdevs (SPDK's shape; a base not there yet has the null
    uuid and no data)."""
    live = node.live()
    configuring = node.bdev is None
    return {"name": node.name, "uuid": node.uuid or "", "strip_size_kb": node.strip_size_kb,
            "state": node.state, "raid_level": node.level, "superblock": False,
            "num_base_bdevs": len(node.bases), "num_base_bdevs_discovered": len(live),
            "num_base_bdevs_operational": len(node.bases) if configuring else len(live),
            "base_bdevs_list": [{"name": b.name,
                                 "uuid": str(b.desc.bdev.uuid or NULL_UUID) if b.desc else NULL_UUID,
                                 "is_configured": b.desc is not None, "data_offset": 0,
                                 "data_size": (b.desc.bdev.blockcnt if configuring else b.blocks)
                                 if b.desc else 0} for b in node.bases]}


def _create_entry(node) -> dict:
    params = {"name": node.name, "raid_level": node.level,
              "base_bdevs": [b.name for b in node.bases]}
    if node.level != "raid1":
        params["strip_size_kb"] = node.strip_size_kb
    if node.uuid:
        params["uuid"] = node.uuid
    return {"method": "bdev_raid_create", "params": params}


def _base_event(event, bdev, ctx) -> None:
    node, idx = ctx
    if event == api.EVENT_RESIZE and node.bases[idx].desc is not None:
        _resize(node)
        return
    if event != api.EVENT_REMOVE or node.bases[idx].desc is None:
        return
    if node.level != "raid1":
        if _vbdev.on_main_reactor() and node.bdev is not None \
                and node.bdev.status != bm.STATUS_REMOVING:
            node.state = "offline"
            bm.bdev_unregister(node.bdev, None)
        return
    # raid1: this replica stops using base idx on every thread of this reactor that holds
    # a channel to the raid, then closes its descriptor.
    r = rx.current_reactor()
    holders = [t for t in r.threads if node in t.io_channels]
    left = [len(holders)]
    home = rx.get_thread()

    def dropped():
        left[0] -= 1
        if left[0] == 0:
            _close_removed(node, idx)

    def drop_on_thread():
        ch = rx.get_thread().io_channels.get(node)
        if ch is not None and ch.ctx.chs and ch.ctx.chs[idx] is not None:
            api.put_io_channel(ch.ctx.chs[idx])
            ch.ctx.chs[idx] = None
        rx.send_msg(home, dropped)

    if not holders:
        _close_removed(node, idx)
        return
    for t in holders:
        rx.send_msg(t, drop_on_thread)


def _close_removed(node, idx) -> None:
    b = node.bases[idx]
    if b.desc is None:
        return
    _vbdev.close_base(b.desc)
    b.desc = None
    if not node.live():
        node.state = "offline"
        if _vbdev.on_main_reactor() and node.bdev is not None \
                and node.bdev.status != bm.STATUS_REMOVING:
            bm.bdev_unregister(node.bdev, None)


def _resize(node) -> None:
    """A base of ``node`` changed size (this replica): follow it, as SPDK's raid0/raid1
    resize do; a shrink the layer refuses (open descs) leaves the raid as it was."""
    if node.bdev is None or node.level == "concat" or node.bdev.status == bm.STATUS_REMOVING:
        return
    live = [b for b in node.bases if b.desc is not None]
    if not live:
        return
    smallest = min(b.desc.bdev.blockcnt for b in live)
    if node.level == "raid0":
        if len(live) != len(node.bases):
            return
        per = smallest // node.strip * node.strip
        total = per * len(node.bases)
    else:
        per = total = smallest
    if total == node.bdev.blockcnt or total == 0:
        return
    old = node.bdev.blockcnt
    rc = bm.notify_blockcnt_change(node.bdev, total)
    if rc:
        log.error("raid %s: cannot change block count %d -> %d: %d", node.name, old, total, rc)
        return
    for b in node.bases:
        b.blocks = per
    log.info("raid %s: block count changed from %d to %d", node.name, old, total)


def _check(level, strip_size_kb, base_names) -> int:
    """What a create can be refused for before any base is looked at (-EINVAL)."""
    level = LEVELS.get(level)
    if level is None or not base_names or len(set(base_names)) != len(base_names) \
            or any(not n for n in base_names):
        return -errno.EINVAL
    if level == "raid1":
        if strip_size_kb or len(base_names) < 2:
            return -errno.EINVAL
    elif not strip_size_kb or strip_size_kb & (strip_size_kb - 1):
        return -errno.EINVAL
    return 0


def _build(name, level, strip_size_kb, base_names, uuid) -> int:
    rc = _check(level, strip_size_kb, base_names)
    if rc:
        return rc
    level = LEVELS[level]
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    bases = []
    for n in base_names:
        b = api.get_by_name(n)
        if b is None:
            return -errno.ENODEV
        # claims are the main reactor's: there a claimed base is refused; a replica's
        # builder finds the main one's claim for raid already in place
        if b.claim_module is not None and (_vbdev.on_main_reactor() or b.claim_module is not raid_module):
            return -errno.EPERM
        bases.append(b)
    blocklen = bases[0].blocklen
    if any(b.blocklen != blocklen for b in bases):
        return -errno.EINVAL
    node = RaidNode(name, level, strip_size_kb, list(base_names), uuid)
    if level != "raid1":
        node.strip = strip_size_kb * 1024 // blocklen
        if node.strip == 0:
            return -errno.EINVAL
    if level == "raid0":
        per = min(b.blockcnt for b in bases) // node.strip * node.strip
        for nb in node.bases:
            nb.blocks = per
        total = per * len(bases)
    elif level == "concat":
        total = 0
        for nb, b in zip(node.bases, bases):
            nb.blocks = b.blockcnt // node.strip * node.strip
            nb.start = total
            total += nb.blocks
    else:
        total = min(b.blockcnt for b in bases)
        for nb in node.bases:
            nb.blocks = total
    if total == 0:
        return -errno.EINVAL
    for i, nb in enumerate(node.bases):
        rc, desc = _vbdev.open_base(nb.name, _base_event, (node, i), raid_module)
        if rc:
            for x in node.bases[:i]:
                _vbdev.close_base(x.desc)
                x.desc = None
            return rc
        nb.desc = desc
    bdev = bm.Bdev(name, blocklen=blocklen, blockcnt=total, module=raid_module,
                   fn_table=_fn_table, ctxt=node, product_name="Raid Volume",
                   write_cache=any(b.write_cache for b in bases),
                   optimal_io_boundary=node.strip,
                   split_on_optimal_io_boundary=bool(node.strip), uuid=uuid)
    node.bdev = bdev
    rx.io_device_register(node, _ch_create, _ch_destroy, name=f"raid.{name}")
    rc = bm.vbdev_register(bdev, bases, len(bases))
    if rc:
        rx.io_device_unregister(node)
        for x in node.bases:
            _vbdev.close_base(x.desc)
            x.desc = None
        return rc
    node.state = "online"
    _vbdev.state("raid")[name] = node
    return 0


@rx.remote("drivers.raid.create_replica")
def _create_replica(done, name, level, strip_size_kb, base_names, uuid):
    done(_build(name, level, strip_size_kb, list(base_names), uuid))


def create(name, raid_level, base_bdevs, cb, strip_size_kb=0, uuid=None) -> None:
    """Create raid bdev ``name`` on every reactor; ``cb(rc)``: -EINVAL (level, strip size,
    base count, block sizes), -EPERM (a present base claimed), -EEXIST.  When some bases
    are not registered yet, the raid is recorded as configuring (0) and built when the
    last one registers."""
    import uuid as _uuid
    args = (name, raid_level, strip_size_kb or 0, list(base_bdevs), uuid or str(_uuid.uuid4()))
    t = rx.get_thread()
    rc = _check(raid_level, args[2], args[3])
    if rc == 0 and (name in _vbdev.state("raid") or api.get_by_name(name) is not None):
        rc = -errno.EEXIST
    if rc == 0:
        rc = bm.replicable(_create_replica, list(args))
    if rc:
        rx.send_msg(t, cb, rc)
        return
    if not any(_vbdev.base_missing(n) for n in args[3]):
        _vbdev.replicated_create(_build, _create_replica, args, cb)
        return
    node = RaidNode(name, LEVELS[raid_level], args[2], args[3], args[4])
    for i in range(len(node.bases)):
        rc = _reserve(node, i)
        if rc:
            _release(node)
            rx.send_msg(t, cb, rc)
            return
    _vbdev.state("raid")[name] = node
    log.info("raid %s: configuring, %d of %d base bdevs present", name, len(node.live()),
             len(node.bases))
    rx.send_msg(t, cb, 0)


# ------------------------------------------------------------ configuring (main reactor)
def _reserve(node, idx) -> int:
    """A configuring raid takes base ``idx`` if it is registered: opened and claimed for
    raid on the main reactor (the claim reaches every replica), same block size as the
    bases it holds.  0 when taken or still missing; the error otherwise."""
    b = node.bases[idx]
    if b.desc is not None or _vbdev.base_missing(b.name):
        return 0
    rc, desc = _vbdev.open_base(b.name, _reserved_event, (node, idx), raid_module)
    if rc:
        return rc
    held = [x.desc.bdev.blocklen for x in node.bases if x.desc is not None]
    if held and held[0] != desc.bdev.blocklen:
        log.error("raid %s: base bdev %s has block size %d, the others %d", node.name, b.name,
                  desc.bdev.blocklen, held[0])
        _vbdev.close_base(desc)
        return -errno.EINVAL
    b.desc = desc
    return 0


def _release(node) -> None:
    for b in node.bases:
        if b.desc is not None:
            _vbdev.close_base(b.desc)
            b.desc = None


def _reserved_event(event, _bdev, ctx) -> None:
    """A base a configuring raid holds goes away: the raid lets it go and waits again."""
    node, idx = ctx
    b = node.bases[idx]
    if event == api.EVENT_REMOVE and node.bdev is None and b.desc is not None:
        _vbdev.close_base(b.desc)
        b.desc = None


def _configuring(name):
    node = _vbdev.state("raid").get(name)
    return node if node is not None and node.bdev is None else None


def _examine(bdev) -> None:
    """examine_disk (main reactor): configuring raids waiting for ``bdev`` take it; one
    that has every base then is built."""
    waiting = [n.name for n in _vbdev.state("raid").values() if n.bdev is None
               and any(b.name == bdev.name and b.desc is None for b in n.bases)]
    if not waiting:
        bm.module_examine_done(raid_module)
        return

    def one(name, nxt):
        node = _configuring(name)
        if node is None:
            nxt()                                  # deleted meanwhile
            return
        for i, b in enumerate(node.bases):
            if b.name == bdev.name:
                rc = _reserve(node, i)
                if rc:
                    log.error("raid %s: cannot take base bdev %s: %s", name, b.name,
                              os.strerror(-rc))
        if len(node.live()) < len(node.bases):
            nxt()
            return
        _configure(node, nxt)
    _vbdev.examine_later(raid_module, lambda done: _vbdev.run_each(waiting, one, done))


def _configure(node, then) -> None:
    """Every base is there: drop the reservations and build the raid everywhere (the
    build claims the bases again, in the same order on every replica).  If that fails,
    the raid goes back to configuring with what it can hold."""
    _release(node)
    st = _vbdev.state("raid")
    del st[node.name]
    args = (node.name, node.level, node.strip_size_kb, [b.name for b in node.bases], node.uuid)

    def built(rc):
        if rc:
            log.error("raid %s: cannot bring it online: %s", node.name, os.strerror(-rc))
            if node.name not in st and api.get_by_name(node.name) is None:
                st[node.name] = node
                for i in range(len(node.bases)):
                    _reserve(node, i)
        then()
    _vbdev.replicated_create(_build, _create_replica, args, built)


def _drop_configuring() -> None:
    st = _vbdev.state("raid")
    for name in [n for n, node in st.items() if node.bdev is None]:
        _release(st.pop(name))


def _config_json(out: list) -> None:
    """save_config: the raids still configuring (an online one writes its own entry)."""
    for node in _vbdev.state("raid").values():
        if node.bdev is None:
            out.append(_create_entry(node))


def delete(name, cb) -> None:
    """Unregister raid ``name`` everywhere; a configuring one releases its bases and is
    forgotten.  ``cb(rc)`` (-ENODEV if unknown)."""
    node = _configuring(name)
    if node is not None:
        _release(node)
        del _vbdev.state("raid")[name]
        rx.send_msg(rx.get_thread(), cb, 0)
        return
    _vbdev.unregister_by_name(name, raid_module, cb)


def get_bdevs(category: str) -> list:
    """bdev_raid_get_bdevs: raids of this (main) replica in ``category`` (all, online,
    configuring, offline)."""
    out = []
    for node in _vbdev.state("raid").values():
        if category == "all" or node.state == category:
            out.append(info(node))
    return out
