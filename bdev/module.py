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

Replication (docs/architecture.md, Ownership): a module's *create* must run on every reactor so
each has its own Bdev and ctxt.  The pattern (see drivers/malloc.py)::

    @reactor.remote("mymod.create_replica")
    def _create_replica(done, name, ...):
        done(module.bdev_register(_build(name, ...)))

    def create(name, ..., cb):
        if not module.on_main_thread():                    # the main thread owns the
            return module.to_main(_create_on_main, [name, ...], cb)   # registry: hop there
        rc = module.bdev_register(_build(name, ...))       # here, synchronously
        if rc: return cb(rc, name)
        module.broadcast(_create_replica, [name, ...], lambda rc: cb(rc, name),
                         include_self=False)              # then everywhere else

(``_create_on_main`` is the ``@reactor.remote`` wrapper of ``create`` itself.)  A module
whose bdevs keep data in shared memory creates its segments with ``shm_instance()``.
Errors are the negated errno constants exported here (``-module.EINVAL``).

Examine callbacks run on the main reactor only.  Everything a module calls runs on the
calling thread; the I/O calls on the I/O's thread.
"""
from __future__ import annotations

from ._bcast import broadcast, on_main_thread, replicable, to_main
from ._const import (EAGAIN, EBADF, EBUSY, EEXIST, EINVAL, EIO, ENODEV, ENOENT, ENOMEM,
                     ENOTSUP, EPERM, EVENT_REMOVE, EVENT_RESIZE, IO_STATUS_FAILED,
                     IO_STATUS_NOMEM, IO_STATUS_NVME_ERROR, IO_STATUS_PENDING,
                     IO_STATUS_SCSI_ERROR, IO_STATUS_SUCCESS, IO_TYPE_FLUSH, IO_TYPE_INVALID,
                     IO_TYPE_NAMES, IO_TYPE_NVME_ADMIN, IO_TYPE_NVME_IO, IO_TYPE_NVME_IO_MD,
                     IO_TYPE_READ, IO_TYPE_RESET, IO_TYPE_UNMAP, IO_TYPE_WRITE,
                     IO_TYPE_WRITE_ZEROES, LARGE_BUF_MAX_SIZE, NUM_IO_TYPES, NVME_SC_SUCCESS,
                     NVME_SC_INTERNAL_DEVICE_ERROR, NVME_SCT_GENERIC,
                     SCSI_ASC_INTERNAL_TARGET_FAILURE, SCSI_ASC_INVALID_COMMAND_OPERATION_CODE,
                     SCSI_ASC_INVALID_FIELD_IN_CDB, SCSI_ASC_LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
                     SCSI_ASC_NO_ADDITIONAL_SENSE, SCSI_ASC_UNRECOVERED_READ_ERROR,
                     SCSI_ASC_WRITE_ERROR, SCSI_ASCQ_CAUSE_NOT_REPORTABLE,
                     SCSI_SENSE_ABORTED_COMMAND, SCSI_SENSE_HARDWARE_ERROR,
                     SCSI_SENSE_ILLEGAL_REQUEST, SCSI_SENSE_MEDIUM_ERROR, SCSI_SENSE_NO_SENSE,
                     SCSI_SENSE_NOT_READY, SCSI_STATUS_CHECK_CONDITION, SCSI_STATUS_GOOD,
                     SMALL_BUF_MAX_SIZE, STATUS_INVALID, STATUS_READY, STATUS_REMOVING)
from . import _buffers, _complete, _manager
from ._buffers import io_get_buf
from ._complete import io_complete
from ._lifecycle import module_examine_done, module_finish_done, module_init_done
from ._manager import module_list_find, module_list_remove
from ._registry import (bdev_destruct_done, bdev_register, bdev_unregister, module_claim_bdev,
                        module_release_bdev, notify_blockcnt_change, vbdev_register)
from ._types import Bdev, BdevIo, IoWaitEntry

__all__ = [
    # module description and registration
    "BdevModule", "register_module", "module_list_find", "module_list_remove",
    "module_init_done", "module_finish_done", "module_examine_done",
    # bdevs
    "Bdev", "FnTable", "bdev_register", "vbdev_register", "bdev_unregister",
    "bdev_destruct_done", "notify_blockcnt_change", "module_claim_bdev",
    "module_release_bdev",
    # replication (docs/architecture.md, Ownership) and the module's shared memory
    "broadcast", "replicable", "on_main_thread", "to_main", "shm_instance",
    # the bdev_io
    "BdevIo", "IoWaitEntry", "io_complete", "io_get_buf", "bdev_io_complete",
    "bdev_io_get_buf", "bdev_io_complete_nvme_status", "bdev_io_complete_scsi_status",
    "bdev_io_get_iovec", "bdev_io_get_thread", "bdev_io_get_submit_tsc", "bdev_io_set_buf",
    "bdev_io_callback_raised",
    # errno values (returned negated)
    "EAGAIN", "EBADF", "EBUSY", "EEXIST", "EINVAL", "EIO", "ENODEV", "ENOENT", "ENOMEM",
    "ENOTSUP", "EPERM",
    # io types, statuses, events, bdev states
    "IO_TYPE_INVALID", "IO_TYPE_READ", "IO_TYPE_WRITE", "IO_TYPE_UNMAP", "IO_TYPE_FLUSH",
    "IO_TYPE_RESET", "IO_TYPE_NVME_ADMIN", "IO_TYPE_NVME_IO", "IO_TYPE_NVME_IO_MD",
    "IO_TYPE_WRITE_ZEROES", "NUM_IO_TYPES", "IO_TYPE_NAMES",
    "IO_STATUS_SCSI_ERROR", "IO_STATUS_NVME_ERROR", "IO_STATUS_FAILED", "IO_STATUS_PENDING",
    "IO_STATUS_SUCCESS", "IO_STATUS_NOMEM",
    "EVENT_REMOVE", "EVENT_RESIZE", "STATUS_INVALID", "STATUS_READY", "STATUS_REMOVING",
    # get_buf limits
    "SMALL_BUF_MAX_SIZE", "LARGE_BUF_MAX_SIZE",
    # NVMe and SCSI status values for complete_nvme_status / complete_scsi_status
    "NVME_SCT_GENERIC", "NVME_SC_SUCCESS", "NVME_SC_INTERNAL_DEVICE_ERROR",
    "SCSI_STATUS_GOOD", "SCSI_STATUS_CHECK_CONDITION",
    "SCSI_SENSE_NO_SENSE", "SCSI_SENSE_NOT_READY", "SCSI_SENSE_MEDIUM_ERROR",
    "SCSI_SENSE_HARDWARE_ERROR", "SCSI_SENSE_ILLEGAL_REQUEST", "SCSI_SENSE_ABORTED_COMMAND",
    "SCSI_ASC_NO_ADDITIONAL_SENSE", "SCSI_ASC_WRITE_ERROR", "SCSI_ASC_UNRECOVERED_READ_ERROR",
    "SCSI_ASC_INVALID_COMMAND_OPERATION_CODE", "SCSI_ASC_LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE",
    "SCSI_ASC_INVALID_FIELD_IN_CDB", "SCSI_ASC_INTERNAL_TARGET_FAILURE",
    "SCSI_ASCQ_CAUSE_NOT_REPORTABLE",
]

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
    _manager.module_list_add(module)
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
bdev_io_complete_nvme_status = _complete.io_complete_nvme_status
bdev_io_complete_scsi_status = _complete.io_complete_scsi_status
bdev_io_get_iovec = _complete.io_get_iovec
bdev_io_get_thread = _complete.io_get_thread
bdev_io_get_submit_tsc = _complete.io_get_submit_tsc
bdev_io_set_buf = _buffers.io_set_buf
bdev_io_callback_raised = _complete.callback_raised   # log a raising callback, keep the batch going


def shm_instance():
    """This replica's owner of the bdev layer's shared memory (an ``ipc.shm.Instance``):
    on the main reactor once ``initialize`` ran, else None (the other replicas map what
    the main one created; before initialize there is nothing to own).  A module creates
    its per-bdev segments with it, ``Segment.create(shm_instance(), what, size)``, so
    they are unlinked at bdev finish and on every exit path (drivers/malloc.py)."""
    m = _manager.get_manager()
    return m.instance if m is not None else None
