"""JSON-RPC methods of the passthru vbdev (SPDK's bdev_passthru_create / _delete)."""
from reactor.rpc import Param, rpc_method

from . import passthru
from ._rpcutil import answer


@rpc_method("bdev_passthru_create", params=[
    Param("base_bdev_name", str, help="bdev to sit on"),
    Param("name", str, help="name of the passthru bdev"),
    Param("uuid", str, required=False, fixed="the vbdev's UUID is not chosen by the caller",
          help="UUID of the new bdev"),
])
def bdev_passthru_create(request, params):
    """Create a passthru vbdev over a base bdev (claims the base, forwards every I/O); over a base not registered yet, recorded and built when it registers."""
    passthru.create(params["name"], params["base_bdev_name"], answer(request, params["name"]))


@rpc_method("bdev_passthru_delete", params=[Param("name", str, help="passthru bdev name")])
def bdev_passthru_delete(request, params):
    """Delete a passthru vbdev."""
    passthru.delete(params["name"], answer(request, True))
