"""The passthru vbdev: the template every virtual bdev module starts from.

This module does nothing useful on purpose.  It sits on top of one *base* bdev, claims it
(so nobody else can write to it behind our back), and forwards every I/O unchanged.  What
it shows is the whole life of a vbdev in ringstack, and each step carries a comment saying
*why* it is done that way.  Copy this file, rename, and change ``_submit`` to do your thing.

The pieces, in the order a request meets them:

1. **The module description** (:data:`passthru_module`): a name for claims and logs, and
   ``config_json`` is not needed because each bdev writes its own entry (see
   ``write_config_json``).  It is registered once, at import, like SPDK's
   ``SPDK_BDEV_MODULE_REGISTER``.

2. **Create** (:func:`create`, called by the RPC in passthru_rpc.py on the main thread).
   Every reactor holds a *replica* of the bdev registry (DESIGN.md, Control plane): a
   bdev exists once per reactor, each with its own module context, its own descriptor on
   the base, its own claim.  So create builds the vbdev here first -- synchronously, so a
   bad request (no such base, name taken, base already claimed) fails before anything was
   broadcast and leaves no trace -- then runs the same builder on every other reactor, and
   answers when all of them did.

3. **Channels**.  The vbdev registers an io_device (one per replica, local to its
   reactor).  A thread that opens the vbdev and asks for a channel gets, through
   ``_channel_create``, a channel to the *base* on that same thread: I/O never leaves the
   submitting thread.

4. **I/O** (:meth:`PassthruFnTable.submit_request`): build the same request against the
   base, with our own completion callback.  A base that is out of bdev_io structures says
   ``-ENOMEM``: we park the request with ``queue_io_wait`` and resubmit when one is free
   (failing it would turn a transient shortage into an I/O error).

5. **Completion** (:func:`_complete`): copy the base's status into ours, give the base's
   bdev_io back (``free_io``) *before* completing ours (our caller's callback may submit
   again and want that bdev_io).

6. **Hot-remove**: when the base goes away, the bdev layer calls our event callback on the
   thread that opened the base.  The main reactor's replica unregisters the vbdev
   everywhere; every replica's ``destruct`` then closes its own base descriptor, which in
   turn lets the base's unregister finish on that reactor.

7. **Delete** (:func:`delete`) is the same unregister, asked for by name.
"""
from __future__ import annotations

import errno
import logging

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.passthru")

#: The module description.  No module_init/fini: the module keeps nothing global; all its
#: state is per reactor, created with the first vbdev and dropped with the last.
passthru_module = bm.register_module(bm.BdevModule("passthru"))


class PtNode:
    """One replica's context of one passthru vbdev (SPDK's ``struct vbdev_passthru``).
    It is also the io_device key of the replica's channels (a plain object, so the
    device stays local to this reactor: each reactor registers its own)."""

    __slots__ = ("name", "base_name", "base_desc", "bdev", "__weakref__")

    def __init__(self, name, base_name):
        self.name = name
        self.base_name = base_name
        self.base_desc = None
        self.bdev = None


class PtChannel:
    """Per-thread channel context: the base's channel on the same thread."""

    __slots__ = ("base_ch",)

    def __init__(self, base_ch):
        self.base_ch = base_ch


def _channel_create(node: PtNode) -> PtChannel:
    # Runs on the thread that asked for a channel to the vbdev: take that thread's
    # channel to the base.  The base descriptor belongs to the reactor's default thread,
    # but a desc's channels may be had on any thread of its reactor (as in SPDK).
    base_ch = api.get_io_channel(node.base_desc)
    if base_ch is None:
        raise RuntimeError(f"passthru {node.name}: no channel to base {node.base_name}")
    return PtChannel(base_ch)


def _channel_destroy(node: PtNode, ctx: PtChannel) -> None:
    api.put_io_channel(ctx.base_ch)


class PassthruFnTable(bm.FnTable):
    """What the bdev layer calls on our bdev (SPDK's ``spdk_bdev_fn_table``)."""

    def submit_request(self, ch, io) -> None:
        # ``ch`` is our channel on the submitting thread (its ctx a PtChannel).  A read
        # may arrive without a buffer (the caller let the layer choose): get one first,
        # from the shared pool, so the base can fill it.
        _vbdev.with_buf(io, lambda io: _submit(ch.ctx, io))

    def io_type_supported(self, node, io_type) -> bool:
        # We support exactly what the base supports: forwarding cannot add abilities.
        return api.io_type_supported(node.base_desc.bdev, io_type)

    def get_io_channel(self, node):
        return rx.get_io_channel(node)

    def destruct(self, node) -> int:
        # Runs on each replica once its last descriptor on the vbdev closed.  Release
        # the claim and close our descriptor on the base *here*, on the thread that
        # opened it, then drop the io_device and the replica's bookkeeping.
        _vbdev.close_base(node.base_desc)
        node.base_desc = None
        rx.io_device_unregister(node)
        _vbdev.state("passthru").pop(node.name, None)
        return 0

    def dump_info_json(self, node, w: dict) -> int:
        # What bdev_get_bdevs shows under driver_specific.
        w["passthru"] = {"name": node.name, "base_bdev_name": node.base_name}
        return 0

    def write_config_json(self, bdev, out: list) -> None:
        # One save_config entry per vbdev: the RPC that recreates it.
        node = bdev.ctxt
        out.append({"method": "bdev_passthru_create",
                    "params": {"name": node.name, "base_bdev_name": node.base_name}})


_fn_table = PassthruFnTable()


def _submit(pch: PtChannel, io) -> None:
    node = io.bdev.ctxt
    rc = _vbdev.submit_to_base(io, node.base_desc, pch.base_ch, cb=_complete)
    if rc == 0:
        return
    if rc == -errno.ENOMEM:
        # The base has no free bdev_io on this thread: wait for one, then resubmit.
        # Not an error -- the layer calls us back when a bdev_io is freed here.
        entry = api.IoWaitEntry(node.base_desc.bdev, _resubmit, (pch, io))
        if api.queue_io_wait(node.base_desc.bdev, pch.base_ch, entry) == 0:
            return
    log.error("passthru %s: base %s refused the I/O: %s", node.name, node.base_name, rc)
    io.complete(bm.IO_STATUS_FAILED)


def _resubmit(arg) -> None:
    pch, io = arg
    _submit(pch, io)


def _complete(base_io, success, io) -> None:
    # Free the base's bdev_io first: our completion may run a callback that submits
    # again on this thread, and it should find the bdev_io back in the cache.
    nvme = base_io.get_nvme_status() if base_io.status == bm.IO_STATUS_NVME_ERROR else None
    api.free_io(base_io)
    if nvme is not None:
        io.complete_nvme_status(*nvme)     # keep the base's NVMe status for the caller
    else:
        io.complete(bm.IO_STATUS_SUCCESS if success else bm.IO_STATUS_FAILED)


def _base_event(event, bdev, node) -> None:
    # The base is going away (or was resized).  Only the main reactor starts the
    # vbdev's unregister: the bdev layer replicates it to every reactor, whose destructs
    # close their own base descriptors.  (If every replica unregistered on its own, the
    # same vbdev would be unregistered n times.)
    if event == api.EVENT_REMOVE and _vbdev.on_main_reactor() and node.bdev is not None \
            and node.bdev.status != bm.STATUS_REMOVING:
        bm.bdev_unregister(node.bdev, None)


def _build(name: str, base_name: str) -> int:
    """Create this reactor's replica of the vbdev.  Returns 0 or a negative errno, and on
    error leaves nothing behind."""
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    node = PtNode(name, base_name)
    rc, desc = _vbdev.open_base(base_name, _base_event, node, passthru_module)
    if rc:
        return rc
    base = desc.bdev
    node.base_desc = desc
    # The vbdev copies the geometry of its base: same blocks, same size, same rules.
    bdev = bm.Bdev(name, blocklen=base.blocklen, blockcnt=base.blockcnt,
                   module=passthru_module, fn_table=_fn_table, ctxt=node,
                   product_name="passthru", write_cache=base.write_cache,
                   need_aligned_buffer=base.need_aligned_buffer,
                   optimal_io_boundary=base.optimal_io_boundary,
                   split_on_optimal_io_boundary=base.split_on_optimal_io_boundary)
    node.bdev = bdev
    rx.io_device_register(node, _channel_create, _channel_destroy, name=f"passthru.{name}")
    rc = bm.vbdev_register(bdev, [base], 1)
    if rc:
        rx.io_device_unregister(node)
        _vbdev.close_base(desc)
        return rc
    _vbdev.state("passthru")[name] = node
    return 0


@rx.remote("drivers.passthru.create_replica")
def _create_replica(done, name, base_name):
    done(_build(name, base_name))


def create(name: str, base_bdev_name: str, cb) -> None:
    """Create passthru vbdev ``name`` over ``base_bdev_name`` on every reactor (main
    thread); ``cb(rc)`` when done: 0, -EEXIST (name taken), -ENODEV (no base), -EPERM
    (base claimed by another module)."""
    _vbdev.replicated_create(_build, _create_replica, (name, base_bdev_name), cb)


def delete(name: str, cb) -> None:
    """Unregister passthru vbdev ``name`` everywhere; ``cb(rc)`` (-ENODEV if unknown)."""
    _vbdev.unregister_by_name(name, passthru_module, cb)
