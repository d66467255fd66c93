"""JSON-RPC methods of the error-injection vbdev (SPDK's bdev_error_*)."""
from reactor.rpc import U8, U32, U64, Param, rpc_method

from . import error
from ._rpcutil import answer


@rpc_method("bdev_error_create", params=[
    Param("base_name", str, help="base bdev; the new bdev is EE_<base_name>"),
    Param("uuid", str, required=False, fixed="the vbdev's UUID is not chosen by the caller",
          help="UUID of the new bdev"),
])
def bdev_error_create(request, params):
    """Create an error-injection bdev EE_<base_name> over a base bdev."""
    error.create(params["base_name"], answer(request, True))


@rpc_method("bdev_error_delete", params=[Param("name", str, help="error bdev name (EE_...)")])
def bdev_error_delete(request, params):
    """Delete an error-injection bdev."""
    error.delete(params["name"], answer(request, True))


@rpc_method("bdev_error_inject_error", params=[
    Param("name", str, help="error bdev name (EE_...)"),
    Param("io_type", str, choices=("read", "write", "unmap", "flush", "write_zeroes", "reset",
                                   "all", "clear"), help="I/O type to act on; clear disarms"),
    Param("error_type", str, choices=error.ERROR_TYPES, help="what to do to those I/Os"),
    Param("nvme_sct", int, default=0, min=0, max=U32, fixed="no nvme_failure error type",
          help="NVMe status code type (nvme_failure)"),
    Param("nvme_sc", int, default=0, min=0, max=U32, fixed="no nvme_failure error type",
          help="NVMe status code (nvme_failure)"),
    Param("num", int, default=1, min=0, max=U32, help="how many I/Os (per reactor)"),
    Param("queue_depth", int, default=0, min=0, max=U64,
          fixed="errors are injected at any queue depth",
          help="trigger only at this queue depth"),
    Param("corrupt_offset", int, default=0, min=0, max=U64, help="byte to corrupt (corrupt_data)"),
    Param("corrupt_value", int, default=0, min=0, max=U8, help="XOR mask (corrupt_data; 0: 0xff)"),
])
def bdev_error_inject_error(request, params):
    """Inject errors into the next I/Os of a type on an error bdev."""
    error.inject(params["name"], params["io_type"], params["error_type"], params["num"],
                 answer(request, True), params["corrupt_offset"], params["corrupt_value"])
