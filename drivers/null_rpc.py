"""JSON-RPC methods of the null bdev (SPDK's bdev_null_create / _delete / _resize) over
drivers/null.py's create/delete; the resize is replicated here."""
import errno

import reactor as rx
from bdev import api
from bdev import module as bm
from reactor.rpc import U32, U64, Param, rpc_method

from . import null
from ._rpcutil import answer, answer_value, dif_params, physical_block_size_param


@rpc_method("bdev_null_create", params=[
    Param("name", str, help="bdev name"),
    Param("num_blocks", int, min=1, max=U64, help="number of blocks"),
    Param("block_size", int, min=512, max=U32, help="block size in bytes (a multiple of 512)"),
    Param("uuid", str, required=False, format="uuid", help="UUID of the new bdev"),
    physical_block_size_param(),
    *dif_params(),
    *[Param(k, int, default=0, min=0, max=U32, help="in blocks; reported by bdev_get_bdevs")
      for k in null.HINTS],
])
def bdev_null_create(request, params):
    """Create a null bdev (writes discarded, reads move no data): the benchmark baseline."""
    null.create(params["name"], params["num_blocks"], params["block_size"], params["uuid"],
                cb=answer_value(request), physical_block_size=params["physical_block_size"],
                **{k: params[k] for k in null.HINTS})


@rpc_method("bdev_null_delete", params=[Param("name", str, help="null bdev name")])
def bdev_null_delete(request, params):
    """Delete a null bdev."""
    null.delete(params["name"], answer(request, True))


def _resize(name, new_size_mb) -> int:
    b = api.get_by_name(name)
    if b is None or b.module is not null.null_module:
        return -errno.ENODEV
    if new_size_mb * 1024 * 1024 >= 1 << 64:
        return -errno.EINVAL        # the size in bytes must fit SPDK's u64
    blocks = new_size_mb * 1024 * 1024 // b.blocklen
    if blocks == 0:
        return -errno.EINVAL
    return bm.notify_blockcnt_change(b, blocks)


@rx.remote("drivers.null.resize_replica")
def _resize_replica(done, name, new_size_mb, old_blocks):
    done(_resize(name, new_size_mb))


@rx.remote("drivers.null.resize_undo")
def _resize_undo(done, name, new_size_mb, old_blocks):
    """A replica could not take the new size: the ones that did go back to the old one."""
    b = api.get_by_name(name)
    done(bm.notify_blockcnt_change(b, old_blocks) if b is not None else 0)


@rpc_method("bdev_null_resize", params=[
    Param("name", str, help="null bdev name"),
    Param("new_size", int, min=1, max=U64, help="new size in MiB"),
])
def bdev_null_resize(request, params):
    """Resize a null bdev (growing always works; shrinking fails with EBUSY while open, on
    any reactor: then no reactor keeps the new size)."""
    name, size = params["name"], params["new_size"]
    b = api.get_by_name(name)
    old = b.blockcnt if b is not None else 0
    args = [name, size, old]
    rc = bm.replicable(_resize_replica, args)
    if rc == 0:
        rc = _resize(name, size)
    if rc:
        request.errno(rc)
        return

    def after(rc):
        if rc == 0:
            request.result(True)
            return
        bm.notify_blockcnt_change(b, old)      # the broadcast undid the others
        request.errno(rc)
    bm.broadcast(_resize_replica, args, after, include_self=False, undo=_resize_undo)
