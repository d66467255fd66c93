"""JSON-RPC methods of the raid vbdev (SPDK's bdev_raid_create / _delete / _get_bdevs)."""
import errno
import os

from reactor.rpc import INTERNAL_ERROR, RUNTIME, STARTUP, U32, Param, rpc_method

from . import raid


@rpc_method("bdev_raid_create", params=[
    Param("name", str, help="raid bdev name"),
    Param("raid_level", str, choices=("raid0", "0", "raid1", "1", "concat"), help="raid level"),
    Param("base_bdevs", list, items=str, help="base bdev names"),
    Param("strip_size_kb", int, default=0, min=0, max=U32, help="strip size in KiB (raid0, concat)"),
    Param("uuid", str, required=False, format="uuid", help="UUID of the raid bdev"),
    Param("superblock", bool, default=False, fixed="no superblock is written",
          help="store the raid's description in a superblock on each base"),
])
def bdev_raid_create(request, params):
    """Create a raid0, raid1 or concat bdev over base bdevs (configuring until every base is registered)."""
    name = params["name"]
    if len(params["base_bdevs"]) > 255:            # SPDK's decoder: at most 255 bases
        request.error(-32602, "Invalid parameters: parameter 'base_bdevs' holds more than 255 names")
        return
    if any(b == "" for b in params["base_bdevs"]):
        request.error(-errno.EINVAL, "The base bdev name cannot be empty: " + os.strerror(errno.EINVAL))
        return

    def done(rc):
        if rc:       # SPDK's text: "Failed to create RAID bdev raid0: File exists"
            request.error(rc, f"Failed to create RAID bdev {name}: {os.strerror(-rc)}")
        else:
            request.result(True)
    raid.create(name, params["raid_level"], params["base_bdevs"], done,
                strip_size_kb=params["strip_size_kb"], uuid=params["uuid"])


@rpc_method("bdev_raid_delete", params=[
    Param("name", str, help="raid bdev name"),
    Param("clear_sb", bool, default=False,
          help="clear the superblock of every base (ringstack's raids have none: nothing to clear)"),
])
def bdev_raid_delete(request, params):
    """Delete a raid bdev (online, or still configuring)."""
    name = params["name"]

    def done(rc):
        if rc == -errno.ENODEV:           # SPDK's texts: not found, then any other failure
            request.error(rc, f"raid bdev {name} not found")
        elif rc:
            request.error(INTERNAL_ERROR, os.strerror(-rc))
        else:
            request.result(True)
    raid.delete(name, done)


@rpc_method("bdev_raid_get_bdevs", params=[
    Param("category", str, default="all", choices=("all", "online", "configuring", "offline"),
          help="which raid bdevs"),
])
def bdev_raid_get_bdevs(request, params):
    """List raid bdevs with their state and base bdevs."""
    return raid.get_bdevs(params["category"])


# SPDK's raid options configure its background process (rebuild of a raid1 base): ringstack
# raids have none, so the defaults are all it takes -- which is what a config SPDK saved
# carries unless someone tuned them.
@rpc_method("bdev_raid_set_options", params=[
    Param("process_window_size_kb", int, default=1024, min=1, max=U32,
          fixed="ringstack raids run no background process (rebuild)",
          help="background process window in KiB"),
    Param("process_max_bandwidth_mb_sec", int, default=0, min=0, max=U32,
          fixed="ringstack raids run no background process (rebuild)",
          help="background process bandwidth cap in MiB/s (0: none)"),
], states=STARTUP | RUNTIME)
def bdev_raid_set_options(request, params):
    """Set the raid module's options (SPDK's; accepted at their defaults)."""
    return True
