"""JSON-RPC methods of the split vbdev (SPDK's bdev_split_create / bdev_split_delete)."""
from reactor.rpc import Param, rpc_method

from . import split
from ._rpcutil import answer, answer_value


@rpc_method("bdev_split_create", params=[
    Param("base_bdev", str, help="bdev to split"),
    Param("split_count", int, min=1, max=1024, help="number of parts"),
    Param("split_size_mb", int, default=0, min=0, help="size of each part in MiB (default: base size / split_count)"),
])
def bdev_split_create(request, params):
    """Split a bdev into equal parts <base>p0..; returns the new bdev names ([] when the base is not registered yet: it is split when it registers)."""
    split.create(params["base_bdev"], params["split_count"], answer_value(request), params["split_size_mb"])


@rpc_method("bdev_split_delete", params=[Param("base_bdev", str, help="the split base bdev")])
def bdev_split_delete(request, params):
    """Delete every split part of a base bdev."""
    split.delete(params["base_bdev"], answer(request, True))
