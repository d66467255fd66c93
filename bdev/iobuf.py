"""The "iobuf" subsystem: the data-buffer pools' options where SPDK keeps them
(module/event/subsystems/iobuf, lib/thread/iobuf.c).

ringstack's buffer pools belong to the bdev layer (``bdev/_buffers.py``): two classes, small
(up to 8 KiB) and large (up to 64 KiB), each an app-wide count split over the reactors.  SPDK
sets their counts with ``iobuf_set_options`` in its own ``iobuf`` subsystem, before the bdev
subsystem initialises, and saves them there; so does ringstack:

* ``small_pool_count`` / ``large_pool_count`` set the bdev layer's ``small_buf_pool_size`` /
  ``large_buf_pool_size`` (implemented);
* ``small_bufsize`` / ``large_bufsize``: ringstack's classes are fixed, 8192 and 65536 bytes;
  the fixed sizes and SPDK's defaults (8192, 135168: what an SPDK-saved config carries) are
  accepted, any other size is refused naming the parameter;
* ``enable_numa``: only ``false`` (no NUMA pools).
"""
from __future__ import annotations

import errno

from reactor import subsystem
from reactor.rpc import STARTUP, U32, Param, rpc_method

from . import api
from ._const import LARGE_BUF_MAX_SIZE, SMALL_BUF_MAX_SIZE

#: SPDK's iobuf defaults (lib/thread/iobuf.c IOBUF_DEFAULT_*_BUFSIZE) that stand for
#: ringstack's fixed classes when a config from SPDK names them.
SPDK_SMALL_BUFSIZE = 8192
SPDK_LARGE_BUFSIZE = 135168


@rpc_method("iobuf_set_options", params=[
    Param("small_pool_count", int, required=False, min=1, max=U32,
          help="small (8 KiB) buffers in the app, split over the reactors (a u32 here: "
               "each is backed by the shared arena)"),
    Param("large_pool_count", int, required=False, min=1, max=U32,
          help="large (64 KiB) buffers in the app, split over the reactors (a u32 here)"),
    Param("small_bufsize", int, required=False,
          choices=tuple(sorted({SMALL_BUF_MAX_SIZE, SPDK_SMALL_BUFSIZE})),
          help="fixed in ringstack: 8192 (SPDK's default accepted)"),
    Param("large_bufsize", int, required=False,
          choices=tuple(sorted({LARGE_BUF_MAX_SIZE, SPDK_LARGE_BUFSIZE})),
          help="fixed in ringstack: 65536 (SPDK's default 135168 accepted)"),
    Param("enable_numa", bool, required=False, choices=(False,),
          help="per-NUMA pools: not supported, only false"),
], states=STARTUP)
def iobuf_set_options(request, params):
    """Set the buffer pools' options (before framework_start_init, i.e. with --wait-for-rpc)."""
    opts = api.get_opts()
    for ours, theirs in (("small_buf_pool_size", "small_pool_count"),
                         ("large_buf_pool_size", "large_pool_count")):
        if params[theirs] is not None:
            opts[ours] = params[theirs]
    rc = api.set_opts(opts)
    if rc:
        request.errno(-errno.EINVAL if rc == -1 or rc > 0 else rc)
        return
    return True


def config_json() -> list:
    """The ``iobuf`` subsystem's config: one iobuf_set_options with the pools in effect."""
    opts = api.get_opts()
    return [{"method": "iobuf_set_options", "params": {
        "small_pool_count": opts["small_buf_pool_size"],
        "large_pool_count": opts["large_buf_pool_size"],
        "small_bufsize": SMALL_BUF_MAX_SIZE,
        "large_bufsize": LARGE_BUF_MAX_SIZE,
        "enable_numa": False}}]


subsystem.register_subsystem("iobuf", write_config=config_json)
