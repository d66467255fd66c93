"""JSON-RPC methods of the raid vbdev (SPDK's bdev_raid_create / _delete / _get_bdevs)."""
from reactor.rpc import Param, rpc_method

from . import raid
from ._rpcutil import answer


@rpc_method("bdev_raid_create", params=[
    Param("name", str, help="raid bdev name"),
    Param("raid_level", str, choices=("raid0", "0", "raid1", "1", "concat"), help="raid level"),
    Param("base_bdevs", list, items=str, help="base bdev names"),
    Param("strip_size_kb", int, default=0, min=0, help="strip size in KiB (raid0, concat)"),
    Param("uuid", str, required=False, help="UUID of the raid bdev"),
    Param("superblock", bool, default=False, help="accepted for SPDK compatibility (no superblock is written)"),
])
def bdev_raid_create(request, params):
    """Create a raid0, raid1 or concat bdev over base bdevs (configuring until every base is registered)."""
    raid.create(params["name"], params["raid_level"], params["base_bdevs"], answer(request, True),
                strip_size_kb=params["strip_size_kb"], uuid=params["uuid"])


@rpc_method("bdev_raid_delete", params=[
    Param("name", str, help="raid bdev name"),
    Param("clear_sb", bool, default=False,
          help="clear the superblock of the bases (no superblock is written: nothing to clear)"),
])
def bdev_raid_delete(request, params):
    """Delete a raid bdev (online, or still configuring)."""
    raid.delete(params["name"], answer(request, True))


@rpc_method("bdev_raid_get_bdevs", params=[
    Param("category", str, default="all", choices=("all", "online", "configuring", "offline"),
          help="which raid bdevs"),
])
def bdev_raid_get_bdevs(request, params):
    """List raid bdevs with their state and base bdevs."""
    return raid.get_bdevs(params["category"])
