"""Helpers the driver modules share: per-reactor module state, replicated create, and the
"forward a bdev_io to a base bdev" step every vbdev repeats.

The mechanics live here, in one place; drivers/passthru.py (the template) calls them
with a comment at each call saying why, and every other module calls them the same way.

Replication (docs/architecture.md, Ownership): a create RPC runs on the main reactor's app
thread.  ``replicated_create`` builds the bdev there first (synchronously, so a bad
request fails before anything is broadcast and changes nothing), then runs the same
builder on every other reactor through ``bdev.module.broadcast`` and answers only when
all of them applied it.  Deletion is ``bdev_unregister`` on the main thread, which the
bdev layer replicates itself; each replica's ``destruct`` drops its own module state.
"""
from __future__ import annotations

import errno
import logging

import reactor as rx
from bdev import api
from bdev import module as bm

log = logging.getLogger("ringstack.drivers")


def state(module_name: str) -> dict:
    """This reactor's state of a module (never a module global: the deterministic harness
    runs several reactors in one process)."""
    return rx.current_reactor().locals.setdefault("drivers." + module_name, {})


def replicated_create(build, handler, args, cb) -> None:
    """``build(*args) -> int`` here, then ``handler(done, *args)`` on every other reactor
    (``handler`` is the ``@remote`` wrapper of the same build); ``cb(rc)`` on this thread
    once all applied.  All or nothing (docs/architecture.md): arguments another reactor
    could not receive are -EINVAL before anything is built; a failure here answers at
    once (as a message) and broadcasts nothing; a replica that fails makes the bdevs this
    build registered go again, everywhere, before ``cb(rc)``."""
    t = rx.get_thread()
    rc = bm.replicable(handler, list(args))
    if rc:
        rx.send_msg(t, cb, rc)
        return
    before = {b.name for b in api.bdevs()}
    rc = build(*args)
    if rc:
        rx.send_msg(t, cb, rc)
        return
    created = [b.name for b in api.bdevs() if b.name not in before]
    broadcast_create(handler, list(args), created, cb)


def hop_to_main(handler, args, cb, name) -> None:
    """A create requested off the main thread goes there (the main thread owns the
    registry); ``cb(rc, name)`` comes back here: -EINVAL at once (as a message) when the
    request itself cannot cross reactors, -EIO when the main thread cannot answer."""
    try:
        bm.to_main(handler, args, cb, fail=(-bm.EIO, name))
    except rx.FanoutError as exc:
        log.error("create of %r refused before anything was applied: %s", name, exc)
        rx.send_msg(rx.get_thread(), cb, -bm.EINVAL, name)


def broadcast_create(handler, args, created, cb) -> None:
    """The second half of a replicated create, once the main replica registered the bdevs
    named ``created``: ``handler(done, *args)`` on every other reactor, then ``cb(0)``;
    if a replica answers an error, those bdevs are unregistered on every reactor (a
    replica that never built them answers that at once) and ``cb(rc)`` follows."""
    def after(rc):
        if rc == 0:
            cb(0)
            return
        log.error("%s failed on a replica (%d): undoing %s everywhere", getattr(handler, "__qualname__", handler),
                  rc, ", ".join(created) or "nothing")
        _unregister_all(list(created), lambda: cb(rc))
    bm.broadcast(handler, args, after, include_self=False)


def _unregister_all(names, then) -> None:
    while names:
        b = api.get_by_name(names.pop())
        if b is not None and b.status != bm.STATUS_REMOVING:
            bm.bdev_unregister(b, lambda _arg, _rc: _unregister_all(names, then))
            return
    then()


# -------------------------------------------------------------- deferred creation
# SPDK's passthru, split and raid accept a create whose base bdev does not exist yet: the
# request is recorded (on the main replica, which owns the registry) and the vbdev is
# built by examine when the base registers.  The records are each module's
# (``state(<module>)`` of the main reactor); these helpers are the shared mechanics.

def examine_later(module, work) -> None:
    """The body of a module's ``examine_disk`` when it has records waiting for this bdev:
    ``work(done)`` runs as a message on this (the main) thread, after the registration
    that called examine has returned -- so the base's own replicated create has already
    broadcast the base to the other reactors, and the vbdev's replica builders, broadcast
    later from the same thread, find it there (FIFO).  The module's examine stays in
    progress (``bdev_wait_for_examine`` waits) until ``work`` calls ``done()``."""
    rx.send_msg(rx.get_thread(), work, lambda: bm.module_examine_done(module))


def run_each(items, step, then) -> None:
    """``step(item, next)`` for each item, one after the other (each replicated create
    answers before the next starts), then ``then()``."""
    items = list(items)

    def nxt(*_):
        if not items:
            then()
            return
        step(items.pop(0), nxt)
    nxt()


def base_missing(name: str) -> bool:
    """True when ``name`` is no registered bdev a vbdev could open now (absent, or on its
    way out): a create over it is deferred, as SPDK defers on -ENODEV."""
    b = api.get_by_name(name)
    return b is None or b.status == bm.STATUS_REMOVING


def unregister_by_name(name: str, module, cb) -> None:
    """Delete RPCs: unregister bdev ``name`` if ``module`` owns it; ``cb(rc)`` with
    -ENODEV when there is no such bdev of this module."""
    bdev = api.get_by_name(name)
    if bdev is None or bdev.module is not module or bdev.name != name:
        rx.send_msg(rx.get_thread(), cb, -errno.ENODEV)
        return
    bm.bdev_unregister(bdev, lambda _arg, rc: cb(rc))


def open_base(name: str, remove_cb, ctx, module):
    """Open base bdev ``name`` for a vbdev and claim it for ``module`` (the claim makes
    the descriptor read-write).  Returns ``(rc, desc)``: -ENODEV when missing, -EPERM
    when another module claimed it.  On the main reactor this is the claim; a replica's
    builder runs after the main one's claim has reached it and attaches its own
    descriptor to that claim (so it opens read-only first: a write open of a claimed
    bdev is refused)."""
    rc, desc = api.open_ext(name, False, remove_cb, ctx)
    if rc:
        return rc, None
    rc = bm.module_claim_bdev(desc.bdev, desc, module)
    if rc:
        api.close(desc)
        return rc, None
    return 0, desc


def close_base(desc) -> None:
    """Release the claim and close (a vbdev's destruct).  The main replica's release is
    the one that counts (it reaches the others); elsewhere it only closes."""
    if desc is None:
        return
    b = desc.bdev
    if b.claim_module is not None:
        bm.module_release_bdev(b)
    api.close(desc)


def on_main_reactor() -> bool:
    return rx.current_reactor().index == 0


# -------------------------------------------------------------- a vbdev over one base
# The vbdevs that wrap a single base (passthru, delay, error) keep its descriptor in
# ``disk.desc``, the vbdev in ``disk.bdev`` and the replica in
# ``state(<module>)[disk.name]``.

def base_event_unregister(event, _bdev, disk) -> None:
    """A base's event callback: when the base goes away, the main reactor unregisters the
    vbdev (the bdev layer replicates that to every reactor; each destruct closes its own
    base descriptor)."""
    if event == api.EVENT_REMOVE and on_main_reactor() and disk.bdev is not None \
            and disk.bdev.status != bm.STATUS_REMOVING:
        bm.bdev_unregister(disk.bdev, None)


def bdev_like(name, base, module, fn_table, ctxt, product_name, blockcnt=None):
    """A vbdev ``Bdev`` with the geometry of ``base`` (its block count unless given)."""
    return bm.Bdev(name, blocklen=base.blocklen,
                   blockcnt=base.blockcnt if blockcnt is None else blockcnt,
                   module=module, fn_table=fn_table, ctxt=ctxt, product_name=product_name,
                   write_cache=base.write_cache, need_aligned_buffer=base.need_aligned_buffer,
                   optimal_io_boundary=base.optimal_io_boundary,
                   split_on_optimal_io_boundary=base.split_on_optimal_io_boundary)


def register_over_base(disk, module, module_name, fn_table, product_name,
                       ch_create, ch_destroy) -> int:
    """Register ``disk``'s vbdev (named ``disk.name``) over the base open in ``disk.desc``:
    its io_device, the bdev, and this replica's state.  On failure undo the io_device,
    release and close the base, and return the error."""
    name = disk.name
    desc = disk.desc
    b = desc.bdev
    bdev = bdev_like(name, b, module, fn_table, disk, product_name)
    disk.bdev = bdev
    rx.io_device_register(disk, ch_create, ch_destroy, name=f"{module_name}.{name}")
    rc = bm.vbdev_register(bdev, [b], 1)
    if rc:
        rx.io_device_unregister(disk)
        close_base(desc)
        return rc
    state(module_name)[name] = disk
    return 0


def base_channel(disk, module_name):
    """A channel to ``disk``'s base for a new vbdev channel (raises when there is none)."""
    base_ch = api.get_io_channel(disk.desc)
    if base_ch is None:
        raise RuntimeError(f"{module_name} {disk.name}: no channel to {disk.base_name}")
    return base_ch


class OverBaseFnTable(bm.FnTable):
    """The fn_table methods a vbdev over one base shares; ``module_name`` names its state."""

    module_name = None

    def io_type_supported(self, disk, io_type) -> bool:
        return api.io_type_supported(disk.desc.bdev, io_type)

    def get_io_channel(self, disk):
        return rx.get_io_channel(disk)

    def destruct(self, disk) -> int:
        close_base(disk.desc)
        disk.desc = None
        rx.io_device_unregister(disk)
        state(self.module_name).pop(disk.name, None)
        return 0


# -------------------------------------------------------------- forwarding
_STATUS = {True: bm.IO_STATUS_SUCCESS, False: bm.IO_STATUS_FAILED}


def _forward_done(child, success, parent) -> None:
    # The base's status, NVMe/SCSI detail included, becomes the parent's; the child
    # bdev_io goes back to the pool before the parent completes (its callback may submit).
    st = child.status
    sct_sc = child.get_nvme_status() if st == bm.IO_STATUS_NVME_ERROR else None
    api.free_io(child)
    if sct_sc is not None:
        parent.complete_nvme_status(*sct_sc)
    else:
        parent.complete(_STATUS[success])


def submit_to_base(io, desc, ch, offset_blocks=None, cb=_forward_done, cb_arg=None) -> int:
    """Submit the equivalent of ``io`` to a base bdev (``desc``/``ch``) at ``offset_blocks``
    (default: the same offset).  Returns what the base's call returned (0, -ENOMEM...).
    ``cb(child, success, cb_arg or io)`` when it completes."""
    off = io.offset_blocks if offset_blocks is None else offset_blocks
    arg = io if cb_arg is None else cb_arg
    t = io.type
    if t == bm.IO_TYPE_READ:
        return api.readv_blocks(desc, ch, _iovs(io), off, io.num_blocks, cb, arg)
    if t == bm.IO_TYPE_WRITE:
        return api.writev_blocks(desc, ch, _iovs(io), off, io.num_blocks, cb, arg)
    if t == bm.IO_TYPE_UNMAP:
        return api.unmap_blocks(desc, ch, off, io.num_blocks, cb, arg)
    if t == bm.IO_TYPE_WRITE_ZEROES:
        return api.write_zeroes_blocks(desc, ch, off, io.num_blocks, cb, arg)
    if t == bm.IO_TYPE_FLUSH:
        return api.flush_blocks(desc, ch, off, io.num_blocks, cb, arg)
    if t == bm.IO_TYPE_RESET:
        return api.reset(desc, ch, cb, arg)
    return -errno.ENOTSUP


def _iovs(io):
    iovs = io.iovs
    return iovs if len(iovs) == io.iovcnt else iovs[:io.iovcnt]


class Resubmitter:
    """Submit ``io`` through ``submit(io) -> rc``; on -ENOMEM wait for a free bdev_io on
    the base (``queue_io_wait``) and try again; any other error fails ``io``."""

    __slots__ = ("base_bdev", "base_ch", "submit")

    def __init__(self, base_bdev, base_ch, submit):
        self.base_bdev = base_bdev
        self.base_ch = base_ch
        self.submit = submit

    def __call__(self, io) -> None:
        rc = self.submit(io)
        if rc == 0:
            return
        if rc == -errno.ENOMEM:
            entry = api.IoWaitEntry(self.base_bdev, self, io)
            if api.queue_io_wait(self.base_bdev, self.base_ch, entry) == 0:
                return
        log.error("%s: submit to base failed: %s", io.bdev.name, rc)
        io.complete(bm.IO_STATUS_FAILED)


def read_needs_buf(io) -> bool:
    return io.type == bm.IO_TYPE_READ and io.iovs[0] is None


def with_buf(io, then) -> None:
    """Make sure a read has a data buffer (SPDK's spdk_bdev_io_get_buf), then ``then(io)``."""
    if read_needs_buf(io):
        def got(_ch, io):
            if io.iovs[0] is None:
                io.complete(bm.IO_STATUS_FAILED)
                return
            then(io)
        io.get_buf(got, io.num_blocks * io.bdev.blocklen)
    else:
        then(io)
