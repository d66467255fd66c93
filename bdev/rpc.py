"""The bdev layer's JSON-RPC methods (SPDK's lib/bdev/bdev_rpc.c): names, parameters and
result shapes as SPDK has them, so scripts/rpc.py and SPDK's Python client work.

They run on the main reactor's app thread, against the main replica of the registry;
anything that needs every reactor (stats, histograms, QoS) goes through the bdev layer's
cross-reactor walks and answers when they finish.  Errors are negative errno with
strerror (-19 "No such device" for an unknown bdev) and change nothing.
"""
from __future__ import annotations

import base64
import errno
import struct

import reactor as rx
from reactor.rpc import RUNTIME, STARTUP, U8, U32, Param, rpc_method
from reactor.rpc import U64 as U64_MAX      # (bdev's own U64 is 1 << 64)

from . import _qos, _stats
from . import api
from ._const import (BUF_LARGE_CACHE_SIZE, BUF_SMALL_CACHE_SIZE, IO_TYPE_NAMES,
                     QOS_LIMIT_NOT_DEFINED, QOS_RPC_TYPE)
from ._manager import get_manager
from ._types import U64, IoStat

#: The io types listed in supported_io_types, in SPDK's order and with SPDK's names.
_IO_TYPES_LISTED = [(t, IO_TYPE_NAMES[t]) for t in sorted(IO_TYPE_NAMES)]
_WAIT_POLL_US = 1000


def _layer_up(request) -> bool:
    if get_manager() is None:
        request.errno(-errno.ENODEV)
        return False
    return True


def _bdev_or_enodev(request, name):
    """The bdev named ``name``, or None once the request is answered -ENODEV."""
    b = api.get_by_name(name)
    if b is None:
        request.errno(-errno.ENODEV)
    return b


def _bdevs_named(request, name):
    """``[bdev]`` for ``name``, every bdev when ``name`` is None, or None once the
    request is answered -ENODEV."""
    if name is None:
        return list(api.bdevs())
    b = _bdev_or_enodev(request, name)
    return None if b is None else [b]


def _answer_rc(request):
    """A ``(arg, rc)`` completion answering the errno of ``rc``, or true when it is 0."""
    return lambda _arg, rc: request.errno(rc) if rc else request.result(True)


def bdev_info(b) -> dict:
    """One entry of bdev_get_bdevs (SPDK's rpc_dump_bdev_info)."""
    limits = _qos.get_rate_limits(b)
    out = {
        "name": b.name,
        "aliases": list(b.aliases),
        "product_name": b.product_name,
        "block_size": b.blocklen,
        "num_blocks": b.blockcnt,
        "preferred_write_alignment": b.preferred_write_alignment,
        "preferred_write_granularity": b.preferred_write_granularity,
        "optimal_write_size": b.optimal_write_size,
        "preferred_unmap_alignment": b.preferred_unmap_alignment,
        "preferred_unmap_granularity": b.preferred_unmap_granularity,
        "uuid": str(b.uuid) if b.uuid else "",
        "assigned_rate_limits": {
            QOS_RPC_TYPE[i]: (limits[i] if i == 0 else limits[i] // (1024 * 1024))
            for i in range(len(QOS_RPC_TYPE))},
        "claimed": b.claim_module is not None,
        "zoned": False,
        "supported_io_types": {name: bool(api.io_type_supported(b, t))
                               for t, name in _IO_TYPES_LISTED},
        "driver_specific": {},
    }
    if b.numa_id is not None:           # SPDK: only when the module set one (numa.id_valid)
        out["numa_id"] = b.numa_id
    if b.optimal_io_boundary:
        out["optimal_io_boundary"] = b.optimal_io_boundary
    if b.claim_module is not None:
        out["claim_type"] = "exclusive_write"
    out["write_cache"] = bool(b.write_cache)
    try:
        api.dump_info_json(b, out["driver_specific"])
    except Exception:  # noqa: BLE001 - one module's bug must not break the listing
        import logging
        logging.getLogger("ringstack.bdev").exception("dump_info_json of %s", b.name)
    return out


WAIT_TIMEOUT_MAX_MS = 3_600_000     # a waiting request still gets its answer within an hour


@rpc_method("bdev_get_bdevs", params=[
    Param("name", str, required=False, help="bdev name or alias (default: all)"),
    Param("timeout", int, default=0, min=0, max=WAIT_TIMEOUT_MAX_MS,
          help="ms to wait for the bdev to appear (at most one hour: a request is answered)"),
])
def bdev_get_bdevs(request, params):
    """Get information about block devices (all, or one by name)."""
    if not _layer_up(request):
        return
    name = params["name"]
    if name is None:
        return [bdev_info(b) for b in api.bdevs()]
    b = api.get_by_name(name)
    if b is not None:
        return [bdev_info(b)]
    timeout = params["timeout"]
    if not timeout:
        request.errno(-errno.ENODEV)
        return
    # Wait for it to be registered (SPDK's spdk_bdev_open_async with a timeout).
    deadline = rx.now_ns() + timeout * 1_000_000
    holder = {}

    def check(_arg):
        b = api.get_by_name(name)
        if b is None and rx.now_ns() < deadline:
            return 0
        rx.poller_unregister(holder["p"])
        if b is None:
            request.errno(-errno.ENODEV)
        else:
            request.result([bdev_info(b)])
        return 1
    holder["p"] = rx.poller_register(check, None, _WAIT_POLL_US, "bdev_get_bdevs_wait")


def _iostat_entry(b, st) -> dict:
    d = {"name": b.name}
    d.update({f: getattr(st, f) for f in IoStat.FIELDS})
    d["queue_depth_polling_period"] = _stats.get_qd_sampling_period(b)
    qd = _stats.get_qd(b)
    d["queue_depth"] = 0 if qd == U64 - 1 else qd
    d["io_time"] = _stats.get_io_time(b)
    d["weighted_io_time"] = _stats.get_weighted_io_time(b)
    return d


@rpc_method("bdev_get_iostat", params=[
    Param("names", list, items=str, required=False, help="bdev names (default: all)"),
    Param("per_channel", bool, default=False,
          help="one entry per channel instead of a sum (exactly one bdev in names)"),
    Param("reset_mode", str, default="none", choices=_stats.RESET_MODES,
          help="reset the statistics as they are read (all; maxmin and error find nothing "
               "to reset: ringstack keeps neither min/max latencies nor error counters)"),
    Param("name", str, required=False, help="one bdev name (older SPDK's form of names)"),
])
def bdev_get_iostat(request, params):
    """Get I/O statistics of block devices (summed over every reactor, or per channel)."""
    if not _layer_up(request):
        return
    names = params["names"]
    if params["name"] is not None:
        if names is not None:
            request.error(-32602, "Invalid parameters: give names or name, not both")
            return
        names = [params["name"]]
    if params["per_channel"] and (names is None or len(names) != 1):
        request.errno(-errno.EINVAL)       # SPDK: "Can't use per_channel with multiple bdevs"
        return
    if names is None:
        todo = list(api.bdevs())
    else:
        todo = [api.get_by_name(n) for n in names]
        if None in todo:
            request.errno(-errno.ENODEV)
            return
    reset_mode = params["reset_mode"]
    head = {"tick_rate": 1_000_000_000, "ticks": rx.now_ns()}
    if params["per_channel"]:
        b = todo[0]

        def got_channels(bdev, chans, _arg, rc):
            if rc:
                request.errno(rc)
                return
            request.result({**head, "name": bdev.name, "channels": chans})
        _stats.get_channels_stat(b, got_channels, reset_mode=reset_mode)
        return
    out = []

    def next_one(i):
        if i == len(todo):
            request.result({**head, "bdevs": out})
            return

        def got(bdev, st, _arg, rc):
            if rc == 0:
                out.append(_iostat_entry(bdev, st))
            next_one(i + 1)
        _stats.get_device_stat(todo[i], got, reset_mode=reset_mode)
    next_one(0)


@rpc_method("bdev_reset_iostat", params=[
    Param("name", str, required=False, help="bdev name (default: all)"),
    Param("mode", str, default="all", choices=_stats.RESET_MODES,
          help="what to reset: all; maxmin and error find nothing to reset (ringstack keeps "
               "neither min/max latencies nor error counters); none"),
])
def bdev_reset_iostat(request, params):
    """Reset I/O statistics of block devices on every reactor."""
    if not _layer_up(request):
        return
    todo = _bdevs_named(request, params["name"])
    if todo is None:
        return

    def next_one(i):
        if i == len(todo):
            request.result(True)
            return
        _stats.reset_device_stat(todo[i], lambda bdev, arg, rc: next_one(i + 1),
                                 mode=params["mode"])
    next_one(0)


@rpc_method("bdev_set_qos_limit", params=[
    Param("name", str, help="bdev name"),
    Param("rw_ios_per_sec", int, required=False, min=0, max=U64_MAX,
          help="IO/s limit (0: none; rounded up to a multiple of 1000)"),
    Param("rw_mbytes_per_sec", int, required=False, min=0, max=U64_MAX, help="read+write MiB/s limit (0: none)"),
    Param("r_mbytes_per_sec", int, required=False, min=0, max=U64_MAX, help="read MiB/s limit (0: none)"),
    Param("w_mbytes_per_sec", int, required=False, min=0, max=U64_MAX, help="write MiB/s limit (0: none)"),
])
def bdev_set_qos_limit(request, params):
    """Set, change or remove QoS rate limits of a bdev (applies to the bdev as a whole)."""
    if not _layer_up(request):
        return
    b = _bdev_or_enodev(request, params["name"])
    if b is None:
        return
    limits = [params[k] for k in QOS_RPC_TYPE]
    if all(v is None for v in limits):
        request.error(-32602, "Invalid parameters: no rate limits specified")
        return
    limits = [QOS_LIMIT_NOT_DEFINED if v is None else v for v in limits]
    api.set_qos_rate_limits(b, limits, _answer_rc(request))


@rpc_method("bdev_set_options", params=[
    Param("bdev_io_pool_size", int, required=False, min=1, max=U32,
          help="bdev_io structures in the app, split over the reactors"),
    Param("bdev_io_cache_size", int, required=False, min=0, max=U32, help="bdev_io cached per thread"),
    Param("bdev_auto_examine", bool, default=True,
          fixed="every registered bdev is examined; there is no bdev_examine",
          help="examine every new bdev"),
    Param("iobuf_small_cache_size", int, default=128, min=0, max=U32,
          fixed="no per-thread iobuf cache: buffers come from the reactor's arena slice",
          help="small iobuf buffers cached per thread"),
    Param("iobuf_large_cache_size", int, default=16, min=0, max=U32,
          fixed="no per-thread iobuf cache: buffers come from the reactor's arena slice",
          help="large iobuf buffers cached per thread"),
], states=STARTUP)
def bdev_set_options(request, params):
    """Set bdev layer options (before framework_start_init, i.e. with --wait-for-rpc); pool sizes are app-wide, split over the reactors; the buffer pools are iobuf_set_options'."""  # noqa: E501
    # The bdev_io pool must hold bdev_io_cache_size x (threads + 1) per reactor share
    # (bdev.set_opts); -EINVAL otherwise.
    opts = api.get_opts()
    for k in ("bdev_io_pool_size", "bdev_io_cache_size"):
        if params[k] is not None:
            opts[k] = params[k]
    rc = api.set_opts(opts)
    if rc:
        # set_opts' -1 (the seed's code for a pool too small for the caches) is EPERM as
        # an errno: report it as the invalid parameter it is
        request.errno(-errno.EINVAL if rc == -1 or rc > 0 else rc)
        return
    return True


@rpc_method("bdev_wait_for_examine", states=RUNTIME)
def bdev_wait_for_examine(request, params):
    """Answer once no bdev module has an init or examine in progress."""
    if not _layer_up(request):
        return
    api.wait_for_examine(lambda _arg: request.result(True))


@rpc_method("bdev_enable_histogram", params=[
    Param("name", str, help="bdev name"),
    Param("enable", bool, help="enable or disable"),
    Param("opc", str, required=False, fixed="reads and writes are tallied, no other choice",
          help="I/O type to tally"),
    Param("granularity", int, default=0, min=0, max=U8,
          fixed="ringstack's buckets are SPDK's layout at granularity 0; SPDK's default is 7",
          help="log2 of the buckets per power-of-two range"),
    Param("min_nsec", int, default=0, min=0, max=U64_MAX,
          fixed="every latency is tallied", help="smallest latency tracked (ns)"),
    Param("max_nsec", int, default=U64_MAX, min=0, max=U64_MAX,
          fixed="every latency is tallied", help="largest latency tracked (ns)"),
])
def bdev_enable_histogram(request, params):
    """Enable or disable latency histograms of a bdev on every reactor."""
    if not _layer_up(request):
        return
    b = _bdev_or_enodev(request, params["name"])
    if b is None:
        return
    api.histogram_enable(b, _answer_rc(request), None, params["enable"])


@rpc_method("bdev_get_histogram", params=[Param("name", str, help="bdev name")])
def bdev_get_histogram(request, params):
    """Get a bdev's latency histogram in SPDK's layout (scripts/histogram.py reads it):
    base64 of little-endian u64 bucket counts with granularity 0, min_range 0, max_range 64,
    i.e. bucket i holds I/Os whose latency in ns has bit length i; tsc_rate 1e9 (ns)."""
    if not _layer_up(request):
        return
    b = _bdev_or_enodev(request, params["name"])
    if b is None:
        return

    def got(_arg, rc, buckets):
        if rc:
            request.errno(rc)
            return
        blob = struct.pack(f"<{len(buckets)}Q", *buckets)
        request.result({"histogram": base64.b64encode(blob).decode(), "granularity": 0,
                        "min_range": 0, "max_range": len(buckets) - 1, "bucket_shift": 0,
                        "tsc_rate": 1_000_000_000, "buckets": buckets})
    api.histogram_get(b, got)
