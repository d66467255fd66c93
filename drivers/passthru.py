"""The passthru vbdev: the template every virtual bdev module starts from.

This module does nothing useful on purpose.  It sits on top of one *base* bdev, claims it
(so nobody else can write to it behind our back), and forwards every I/O unchanged.  What
it shows is the whole life of a vbdev in ringstack, and each step carries a comment saying
*why* it is done that way.  Copy this file, rename, and change ``submit_request`` to do
your thing.  The mechanics every vbdev over one base shares live in ``drivers/_vbdev.py``
and are called here exactly as drivers/delay.py and drivers/error.py call them.

The pieces, in the order a request meets them:

1. **The module description** (:data:`passthru_module`): a name for claims and logs, and
   ``config_json`` is not needed because each bdev writes its own entry (see
   ``write_config_json``).  It is registered once, at import, like SPDK's
   ``SPDK_BDEV_MODULE_REGISTER``.

2. **Create** (:func:`create`, called by the RPC in passthru_rpc.py on the main thread).
   Every reactor holds a *replica* of the bdev registry (docs/architecture.md, Ownership): a
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

5. **Completion** (``_vbdev.submit_to_base``'s default callback): copy the base's status
   into ours (NVMe status included), give the base's bdev_io back (``free_io``) *before*
   completing ours (our caller's callback may submit again and want that bdev_io).

6. **Hot-remove**: when the base goes away, the bdev layer calls our event callback on the
   thread that opened the base.  The main reactor's replica unregisters the vbdev
   everywhere; every replica's ``destruct`` then closes its own base descriptor, which in
   turn lets the base's unregister finish on that reactor.

7. **Delete** (:func:`delete`) is the same unregister, asked for by name.

8. **Deferred creation** (SPDK's examine): a create whose base does not exist yet is
   accepted and recorded (the main reactor's ``_records()``, SPDK's ``g_bdev_names``);
   when a bdev registers, the bdev layer calls our ``examine_disk`` on the main reactor,
   which builds every vbdev recorded over it -- the same replicated create, run as a
   message once the base's own registration has reached the other reactors
   (``_vbdev.examine_later``).  The record lives until the vbdev is deleted: when the base
   is hot-removed the vbdev goes, and it comes back if the base registers again (as in
   SPDK).  save_config writes the records still waiting (``_config_json``).
"""
from __future__ import annotations

import errno
import logging
import os

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev

log = logging.getLogger("ringstack.passthru")

#: The module description.  No module_init/fini: the module keeps nothing global; all its
#: state is per reactor (``_vbdev.state("passthru")``), created with the first vbdev and
#: dropped with the last.
passthru_module = bm.register_module(bm.BdevModule(
    "passthru", examine_disk=lambda bdev: _examine(bdev),
    config_json=lambda out: _config_json(out), module_fini=lambda: _records().clear()))


def _records() -> dict:
    """The creates asked for, built or waiting: {vbdev name: base name}.  Kept on the main
    reactor (which runs the create RPCs and examine); empty on the others."""
    return _vbdev.state("passthru.records")


class PtNode:
    """One replica's context of one passthru vbdev (SPDK's ``struct vbdev_passthru``).
    It is also the io_device key of the replica's channels (a plain object, so the
    device stays local to this reactor: each reactor registers its own).  The field
    names are the ones the ``_vbdev`` helpers use: ``desc`` is our descriptor on the
    base, ``bdev`` the vbdev."""

    __slots__ = ("name", "base_name", "desc", "bdev", "__weakref__")

    def __init__(self, name, base_name):
        self.name = name
        self.base_name = base_name
        self.desc = None
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
    # ``base_channel`` raises when the base gives none, so no half-made channel exists.
    return PtChannel(_vbdev.base_channel(node, "passthru"))


def _channel_destroy(node: PtNode, ctx: PtChannel) -> None:
    api.put_io_channel(ctx.base_ch)


class PassthruFnTable(_vbdev.OverBaseFnTable):
    """What the bdev layer calls on our bdev (SPDK's ``spdk_bdev_fn_table``).

    Inherited from ``OverBaseFnTable``, because every vbdev over one base does the same:
    ``io_type_supported`` -- exactly what the base supports (forwarding cannot add
    abilities); ``get_io_channel`` -- this thread's channel to our io_device; and
    ``destruct`` -- runs on each replica once its last descriptor on the vbdev closed:
    release the claim and close our descriptor on the base *here*, on the reactor that
    opened it, then drop the io_device and the replica's state (``module_name``)."""

    module_name = "passthru"

    def submit_request(self, ch, io) -> None:
        # ``ch`` is our channel on the submitting thread (its ctx a PtChannel).  A read
        # may arrive without a buffer (the caller let the layer choose): ``with_buf``
        # gets one first, from the shared pool, so the base can fill it.  Then the same
        # request goes to the base (``submit_to_base``; its completion callback copies
        # the status back, see 5. above).  A base out of bdev_io structures answers
        # -ENOMEM: ``Resubmitter`` parks the request with ``queue_io_wait`` and tries
        # again when one is free on this thread -- not an error, failing it would turn
        # a transient shortage into an I/O error; any other refusal fails the I/O.
        node = io.bdev.ctxt
        pch = ch.ctx
        _vbdev.with_buf(io, _vbdev.Resubmitter(
            node.desc.bdev, pch.base_ch,
            lambda io: _vbdev.submit_to_base(io, node.desc, pch.base_ch)))

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


def _build(name: str, base_name: str) -> int:
    """Create this reactor's replica of the vbdev.  Returns 0 or a negative errno, and on
    error leaves nothing behind."""
    if api.get_by_name(name) is not None:
        return -errno.EEXIST
    node = PtNode(name, base_name)
    # Open the base read-write and claim it (-ENODEV: no such base, -EPERM: another
    # module claimed it).  The event callback is the hot-remove step: when the base goes
    # away, only the main reactor starts the vbdev's unregister -- the bdev layer
    # replicates it to every reactor, whose destructs close their own base descriptors
    # (if every replica unregistered on its own, the vbdev would be unregistered n times).
    rc, desc = _vbdev.open_base(base_name, _vbdev.base_event_unregister, node, passthru_module)
    if rc:
        return rc
    node.desc = desc
    # The vbdev copies the geometry of its base (same blocks, same size, same rules),
    # registers its io_device and the bdev, and records the replica in the module state;
    # on failure it undoes all of that and releases the base.
    return _vbdev.register_over_base(node, passthru_module, "passthru", _fn_table, "passthru",
                                     _channel_create, _channel_destroy)


@rx.remote("drivers.passthru.create_replica")
def _create_replica(done, name, base_name):
    done(_build(name, base_name))


def create(name: str, base_bdev_name: str, cb) -> None:
    """Create passthru vbdev ``name`` over ``base_bdev_name`` on every reactor (main
    thread); ``cb(rc)`` when done: 0 (built, or recorded until the base registers),
    -EEXIST (name taken or already recorded), -EPERM (base claimed by another module).
    A create that fails leaves no record."""
    recs = _records()
    if name in recs or api.get_by_name(name) is not None:
        rc = -errno.EEXIST
    else:
        rc = bm.replicable(_create_replica, [name, base_bdev_name])
    if rc:
        rx.send_msg(rx.get_thread(), cb, rc)
        return
    recs[name] = base_bdev_name
    if _vbdev.base_missing(base_bdev_name):
        log.info("passthru %s: creation deferred until bdev %s registers", name, base_bdev_name)
        rx.send_msg(rx.get_thread(), cb, 0)
        return

    def built(rc):
        if rc == -errno.ENODEV and _vbdev.base_missing(base_bdev_name):
            rc = 0                       # the base went meanwhile: wait for it (SPDK)
        elif rc:
            recs.pop(name, None)         # all or nothing: no record of a failed create
        cb(rc)
    _vbdev.replicated_create(_build, _create_replica, (name, base_bdev_name), built)


def _examine(bdev) -> None:
    """examine_disk (main reactor): build the vbdevs recorded over ``bdev``."""
    base = bdev.name
    waiting = [n for n, b in _records().items() if b == base and api.get_by_name(n) is None]
    if not waiting:
        bm.module_examine_done(passthru_module)
        return

    def build_one(name, nxt):
        if _records().get(name) != base or api.get_by_name(name) is not None \
                or _vbdev.base_missing(base):
            nxt()                        # deleted, built or gone meanwhile
            return

        def built(rc):
            if rc:
                log.error("passthru %s: cannot create over %s: %s", name, base, os.strerror(-rc))
            nxt()
        _vbdev.replicated_create(_build, _create_replica, (name, base), built)
    _vbdev.examine_later(passthru_module,
                         lambda done: _vbdev.run_each(waiting, build_one, done))


def _config_json(out: list) -> None:
    """save_config: the creates still waiting for their base (a built vbdev writes its
    own entry, ``write_config_json``)."""
    for name, base in _records().items():
        if api.get_by_name(name) is None:
            out.append({"method": "bdev_passthru_create",
                        "params": {"name": name, "base_bdev_name": base}})


def delete(name: str, cb) -> None:
    """Unregister passthru vbdev ``name`` everywhere and forget its record; a create still
    waiting for its base is just forgotten.  ``cb(rc)`` (-ENODEV if unknown)."""
    recs = _records()
    b = api.get_by_name(name)
    if b is not None and b.module is passthru_module and b.name == name:
        def done(rc):
            if rc == 0:
                recs.pop(name, None)
            cb(rc)
        _vbdev.unregister_by_name(name, passthru_module, done)
        return
    rc = -errno.ENODEV
    if name in recs:
        del recs[name]
        rc = 0
    rx.send_msg(rx.get_thread(), cb, rc)
