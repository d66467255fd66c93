"""The iSCSI control plane's engine on the main reactor: one change at a time, checked,
broadcast to every replica all or nothing, and the main-only resources that go with it
(portal listeners, a watch descriptor per LUN's bdev for hot-remove).

A change runs through :func:`change`:

1. checked against a copy of the main reactor's replica (the pure operation refuses
   before anything happened anywhere);
2. the facts outside the config checked on the main reactor (the bdevs of new LUNs
   exist and can be opened for writing; a new portal group's portals can listen);
3. broadcast with an undo (reactor.fanout.gather): each reactor applies it to its
   replica and builds its SCSI devices; if one refuses, every reactor that applied it
   undoes it, the main resources of step 2 are released, and the caller gets the
   refusing reactor's reason;
4. on success a commit broadcast lets replicas close the devices the change replaced.

Operations queue in arrival order (as drivers/nbd's control plane does), so a change
never starts before the previous one was answered everywhere.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os

import bdev.api as api
import reactor as rx

from .. import serve
from . import config as C
from . import glue
from . import nodes

log = logging.getLogger("ringstack.iscsi")

_ops = serve.OneAtATime("iscsi")
_change_ids = itertools.count(1)

#: (target full name, lun_id) -> read-only desc on the main thread: its REMOVE event
#: takes the LUN out of every replica
_watches: dict = {}


def main_config() -> C.Config:
    return nodes.registry().config


def change(op: str, args: dict, cb, prepare=None, finish=None) -> None:
    """Apply config operation ``op`` everywhere; ``cb(err)`` with ``err`` None or a
    ConfigError.  ``prepare(cfg_after) -> release`` (may raise ConfigError) acquires the
    main-reactor resources the change needs once the config check passed; ``release()``
    runs if the broadcast fails.  ``finish(cfg_after)`` runs after a successful change
    (main-only bookkeeping), before ``cb``."""
    def op_fn(done):
        def reply(err):
            done()
            cb(err)
        trial = main_config().copy()
        try:
            C.OPS[op](trial, args)
            release = prepare(trial) if prepare is not None else None
        except C.ConfigError as exc:
            reply(exc)
            return
        cid = next(_change_ids)
        try:
            rx.fanout.check(nodes._apply_step, (cid, op, args))
        except rx.fanout.FanoutError as exc:
            if release:
                release()
            reply(C.ConfigError(-errno.EINVAL, str(exc)))
            return

        def applied(rc, results):
            if rc:
                why = next((v for _i, r, v in results if r and v), None) or os.strerror(abs(rc))
                bad = next((i for i, r, _v in results if r), None)
                if release:
                    release()
                reply(C.ConfigError(rc, f"reactor {bad}: {why}" if bad is not None else why))
                return

            def committed(_rc):
                if finish is not None:
                    try:
                        finish(main_config())
                    except Exception:
                        log.exception("iscsi: bookkeeping after %s", op)
                reply(None)
            rx.broadcast(nodes._commit_step, (cid,), committed)
        rx.gather(nodes._apply_step, (cid, op, args), applied, undo=nodes._undo_step)
    _ops.run(op_fn)


# ====================================================================== main resources
def check_bdevs_writable(luns) -> None:
    """Each bdev exists and can be opened for writing (SPDK's scsi_lun_construct opens
    it read-write): the first that cannot fails the change, naming it."""
    for _lun_id, bdev_name in luns:
        rc, desc = api.open_ext(bdev_name, True, _ignore_event)
        if rc:
            raise C.ConfigError(rc, f"bdev {bdev_name} cannot be opened for writing: "
                                f"{os.strerror(-rc)}" if rc != -errno.ENODEV else
                                f"bdev {bdev_name} does not exist")
        api.close(desc)


def _ignore_event(*_a) -> None:
    pass


def sync_watches(cfg: C.Config) -> None:
    """One watch desc per (target, LUN) of ``cfg``: open the new ones, close the gone."""
    want = {(t["name"], lun_id): bdev for t in cfg.targets.values() for lun_id, bdev in t["luns"]}
    for key in list(_watches):
        if key not in want or _watches[key][0] != want[key]:
            api.close(_watches.pop(key)[1])
    for key, bdev in want.items():
        if key in _watches:
            continue
        rc, desc = api.open_ext(bdev, False, _on_lun_event, key)
        if rc:
            log.error("iscsi: cannot watch bdev %s of %s LUN %d: %s", bdev, key[0], key[1],
                      os.strerror(-rc))
            continue
        _watches[key] = (bdev, desc)


def close_watches() -> None:
    for _bdev, desc in _watches.values():
        api.close(desc)
    _watches.clear()


def _on_lun_event(event, bdev, key) -> None:
    if event != api.EVENT_REMOVE:
        return
    name, lun_id = key
    w = _watches.pop(key, None)
    if w is None:
        return
    api.close(w[1])        # the removal waits for every open desc: ours goes first
    log.warning("iscsi: bdev %s was removed: LUN %d leaves target %s", w[0], lun_id, name)

    def done(err):
        if err is not None:
            log.error("iscsi: removing LUN %d of %s: %s", lun_id, name, err.message)
    change("lun_removed", {"name": name, "lun_id": lun_id, "bdev_name": w[0]}, done)


def open_portals(tag: int, cfg_after: C.Config):
    """Listen on every portal of the new group ``tag`` (main reactor); return the
    release function.  A portal that cannot listen fails the change."""
    pg = cfg_after.portal_groups[tag]
    try:
        handle = glue.open_portal_group(tag, pg["portals"], pg["wait"])
    except OSError as exc:
        raise C.ConfigError(-(exc.errno or errno.EIO), f"cannot listen on portal: {exc}") from None
    return lambda: glue.close_portal_group(handle)


def reset_all(done) -> None:
    """App shutdown: listeners closed, connections finished (the server stopped on every
    reactor), watches closed, every replica dropped."""
    glue.close_all()

    def stopped():
        close_watches()
        rx.broadcast(nodes._reset_step, (), lambda _rc: done())
    glue.stop_server(stopped)
