"""JSON-RPC methods of the file (aio) bdev: SPDK's bdev_aio_create / bdev_aio_delete."""
from reactor.rpc import U32, Param, rpc_method

from . import aio
from ._rpcutil import answer


@rpc_method("bdev_aio_create", params=[
    Param("name", str, help="bdev name"),
    Param("filename", str, help="path of the file or block device"),
    Param("block_size", int, default=0, min=0, max=U32, help="block size in bytes (default: the device's, 512 for files)"),
    Param("readonly", bool, default=False, help="open read-only"),
    Param("fallocate", bool, default=False, help="accepted for SPDK compatibility (unmap/write_zeroes use fallocate on files)"),
    Param("uuid", str, required=False, format="uuid", help="UUID of the new bdev"),
    Param("nowait", bool, default=False, fixed="no RWF_NOWAIT submission",
          help="submit with RWF_NOWAIT (block devices)"),
    Param("o_direct", bool, default=False, help="ringstack: open with O_DIRECT"),
])
def bdev_aio_create(request, params):
    """Create a bdev on a file or block device (I/O through io_uring off the reactor loop)."""
    aio.create(params["name"], params["filename"], answer(request, params["name"]),
               block_size=params["block_size"], readonly=params["readonly"],
               o_direct=params["o_direct"], uuid=params["uuid"])


@rpc_method("bdev_aio_delete", params=[Param("name", str, help="aio bdev name")])
def bdev_aio_delete(request, params):
    """Delete an aio bdev."""
    aio.delete(params["name"], answer(request, True))
