"""JSON-RPC methods of the delay vbdev (SPDK's bdev_delay_*)."""
import errno

from bdev import api
from reactor.rpc import INVALID_PARAMS, INVALID_REQUEST, U64, Param, rpc_method

from . import delay
from ._rpcutil import answer


@rpc_method("bdev_delay_create", params=[
    Param("base_bdev_name", str, help="bdev to sit on"),
    Param("name", str, help="name of the delay bdev"),
    Param("avg_read_latency", int, min=0, max=U64, help="average read latency (µs)"),
    Param("p99_read_latency", int, min=0, max=U64, help="p99 read latency (µs)"),
    Param("avg_write_latency", int, min=0, max=U64, help="average write latency (µs)"),
    Param("p99_write_latency", int, min=0, max=U64, help="p99 write latency (µs)"),
    Param("uuid", str, required=False, fixed="the vbdev's UUID is not chosen by the caller",
          help="UUID of the new bdev"),
])
def bdev_delay_create(request, params):
    """Create a delay vbdev that holds read/write completions for the given latencies."""
    delay.create(params["name"], params["base_bdev_name"], params["avg_read_latency"],
                 params["p99_read_latency"], params["avg_write_latency"],
                 params["p99_write_latency"], answer(request, params["name"]))


@rpc_method("bdev_delay_delete", params=[Param("name", str, help="delay bdev name")])
def bdev_delay_delete(request, params):
    """Delete a delay vbdev."""
    delay.delete(params["name"], answer(request, True))


@rpc_method("bdev_delay_update_latency", params=[
    Param("delay_bdev_name", str, help="delay bdev name"),
    Param("latency_type", str, choices=delay.LATENCY_TYPES, help="which latency"),
    Param("latency_us", int, min=0, max=U64, help="new value (µs)"),
])
def bdev_delay_update_latency(request, params):
    """Change one latency of a delay vbdev at run time."""
    b = api.get_by_name(params["delay_bdev_name"])     # SPDK's texts and codes for these two
    if b is None:
        request.error(INVALID_PARAMS, "The requested bdev does not exist.")
        return
    if b.module is not delay.delay_module:
        request.error(INVALID_REQUEST, "The requested bdev is not a delay bdev.")
        return
    delay.update_latency(params["delay_bdev_name"], params["latency_type"], params["latency_us"],
                         answer(request, True))
