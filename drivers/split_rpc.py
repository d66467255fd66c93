"""JSON-RPC methods of the split vbdev (SPDK's bdev_split_create / bdev_split_delete)."""
import os

from reactor.rpc import INVALID_PARAMS, U64, Param, rpc_method

from . import split


@rpc_method("bdev_split_create", params=[
    Param("base_bdev", str, help="bdev to split"),
    Param("split_count", int, min=1, max=1024, help="number of parts"),
    Param("split_size_mb", int, default=0, min=0, max=U64, help="size of each part in MiB (default: base size / split_count)"),
])
def bdev_split_create(request, params):
    """Split a bdev into equal parts <base>p0..; returns the new bdev names ([] when the base is not registered yet: it is split when it registers)."""
    count, base = params["split_count"], params["base_bdev"]

    def done(rc, names):     # SPDK answers -32602 with the count, the base and strerror
        if rc:
            request.error(INVALID_PARAMS, f"Failed to create {count} split bdevs from "
                                          f"'{base}': {os.strerror(-rc)}")
        else:
            request.result(names)
    split.create(base, count, done, params["split_size_mb"])


@rpc_method("bdev_split_delete", params=[Param("base_bdev", str, help="the split base bdev")])
def bdev_split_delete(request, params):
    """Delete every split part of a base bdev."""
    split.delete(params["base_bdev"],
                 lambda rc: request.error(INVALID_PARAMS, os.strerror(-rc)) if rc
                 else request.result(True))
