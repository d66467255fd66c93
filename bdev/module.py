"""The module-author API (SPDK's include/spdk/bdev_module.h).

A bdev module describes itself with a :class:`BdevModule` and registers it once at import
(``register_module``), builds :class:`Bdev` objects that point at a fn_table and its own
``ctxt``, and calls ``bdev_register`` for each.  The fn_table is any object with:

``destruct(ctxt) -> int``                 0 done, >0 finishes later with bdev_destruct_done
``submit_request(module_ch, bdev_io)``    start the I/O; finish with ``bdev_io.complete(status)``
``io_type_supported(ctxt, io_type) -> bool``
``get_io_channel(ctxt) -> IoChannel``     the module's channel for the calling thread
``dump_info_json(ctxt, w: dict)``         optional: fill ``w`` for bdev_get_bdevs
``write_config_json(bdev, out: list)``    optional: append config entries

Replication (DESIGN.md, Control plane): a module's *create* must run on every reactor so
each has its own Bdev and ctxt.  The pattern (see drivers/malloc.py)::

    @reactor.remote("mymod.create_replica")
    def _create_replica(done, name, ...):
        done(module.bdev_register(_build(name, ...)))

    def create(name, ..., cb):            # main thread
        rc = module.bdev_register(_build(name, ...))       # here, synchronously
        if rc: return cb(rc, name)
        module.broadcast(_create_replica, [name, ...], lambda rc: cb(rc, name),
                         include_self=False)              # then everywhere else

Examine callbacks run on the main reactor only.  Everything a module calls runs on the
calling thread; the I/O calls on the I/O's thread.
"""
from __future__ import annotations

from . import _core
from ._bcast import broadcast  # noqa: F401
from ._const import *  # noqa: F401,F403
from ._core import (Bdev, BdevIo, IoWaitEntry, bdev_destruct_done, bdev_register,  # noqa: F401
                    bdev_unregister, io_complete, io_get_buf, module_claim_bdev,
                    module_examine_done, module_finish_done, module_init_done,
                    module_list_find, module_list_remove, module_release_bdev,
                    notify_blockcnt_change, vbdev_register)


class BdevModule:
    """struct spdk_bdev_module.  ``module_init() -> int`` runs at bdev initialize (an
    ``async_init`` module then calls module_init_done); ``module_fini()`` at finish (an
    ``async_fini`` module calls module_finish_done); ``examine_config(bdev)`` must call
    module_examine_done before returning; ``examine_disk(bdev)`` calls it when done;
    ``config_json(out: list)``; ``get_ctx_size() -> int`` is kept for shape (the Python
    bdev_io has ``driver_ctx`` instead of a sized tail); ``init_complete()`` and
    ``fini_start()`` as in SPDK."""

    def __init__(self, name, *, module_init=None, module_fini=None, init_complete=None,
                 fini_start=None, config_json=None, get_ctx_size=None, examine_config=None,
                 examine_disk=None, async_init=False, async_fini=False):
        self.name = name
        self.module_init = module_init
        self.module_fini = module_fini
        self.init_complete = init_complete
        self.fini_start = fini_start
        self.config_json = config_json
        self.get_ctx_size = get_ctx_size
        self.examine_config = examine_config
        self.examine_disk = examine_disk
        self.async_init = async_init
        self.async_fini = async_fini

    def __repr__(self):
        return f"<BdevModule {self.name}>"


def register_module(module: BdevModule) -> BdevModule:
    """SPDK_BDEV_MODULE_REGISTER: add to the module list (examine-capable ones first).
    Call at import, before the bdev layer initialises."""
    _core.module_list_add(module)
    return module


class FnTable:
    """A convenient base for fn_tables: override what the module supports."""

    def destruct(self, ctxt) -> int:
        return 0

    def submit_request(self, ch, bdev_io) -> None:
        raise NotImplementedError

    def io_type_supported(self, ctxt, io_type) -> bool:
        return False

    def get_io_channel(self, ctxt):
        raise NotImplementedError

    dump_info_json = None
    write_config_json = None


# bdev_io helpers, as free functions too (SPDK names)
bdev_io_complete = io_complete
bdev_io_get_buf = io_get_buf
bdev_io_complete_nvme_status = _core.io_complete_nvme_status
bdev_io_complete_scsi_status = _core.io_complete_scsi_status
bdev_io_get_iovec = _core.io_get_iovec
bdev_io_get_thread = _core.io_get_thread
bdev_io_get_submit_tsc = _core.io_get_submit_tsc
bdev_io_set_buf = _core.io_set_buf
bdev_io_callback_raised = _core.callback_raised   # log a raising callback, keep the batch going
