"""JSON-RPC methods of the malloc bdev (SPDK's bdev_malloc_create / bdev_malloc_delete)
over drivers/malloc.py's create/delete."""
from reactor.rpc import I32_MAX, U32, U64, Param, rpc_method

from . import malloc
from ._rpcutil import answer, answer_value, dif_params, physical_block_size_param


@rpc_method("bdev_malloc_create", params=[
    Param("name", str, required=False, help="bdev name (default: MallocN)"),
    Param("num_blocks", int, min=1, max=U64, help="number of blocks"),
    Param("block_size", int, min=512, max=U32, help="block size in bytes (a multiple of 512)"),
    Param("uuid", str, required=False, format="uuid", help="UUID of the new bdev"),
    Param("optimal_io_boundary", int, default=0, min=0, max=U32, help="split I/O at this many blocks"),
    physical_block_size_param(),
    *dif_params(interleave=True),
    Param("numa_id", int, default=-1, min=-1, max=I32_MAX,
          help="NUMA node of the memory (-1: any); a node the machine lacks is EINVAL; "
               "recorded and reported, the pages are not bound to it"),
])
def bdev_malloc_create(request, params):
    """Create a RAM disk in shared memory (every reactor maps the same data)."""
    malloc.create(params["name"], params["num_blocks"], params["block_size"], params["uuid"],
                  params["optimal_io_boundary"], cb=answer_value(request),
                  physical_block_size=params["physical_block_size"], numa_id=params["numa_id"])


@rpc_method("bdev_malloc_delete", params=[Param("name", str, help="malloc bdev name")])
def bdev_malloc_delete(request, params):
    """Delete a malloc bdev."""
    malloc.delete(params["name"], answer(request, True))
