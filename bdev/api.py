"""The bdev user API (SPDK's include/spdk/bdev.h).

Conventions, as in SPDK:

* Functions that can fail return a negative errno (``-EINVAL``...) and change nothing;
  ``open``/``open_ext`` return ``(rc, desc)``.
* An I/O call either returns a negative errno and never calls back, or returns 0 and
  calls ``cb(bdev_io, success, cb_arg)`` exactly once, later, on the calling thread
  (never inside the call).  The callback gives the bdev_io back with ``free_io``.
* I/O calls run on the thread owning the channel (``get_io_channel(desc)`` on that
  thread); descriptors are opened and closed on one thread.
* ``-ENOMEM`` means no bdev_io is free on this thread: ``queue_io_wait`` an
  :class:`IoWaitEntry` and retry from its callback.
* Buffers: anything supporting the buffer protocol with the right length (bytearray,
  memoryview); iovecs are lists of such.  A read may pass ``None`` and get a buffer
  from the layer's shared pool in ``bdev_io.iovs[0]``.
* DMA buffers (SPDK's spdk_dma_malloc/zmalloc/free; the NBD export's buffers): ``dma_malloc(size,
  align=512)`` / ``dma_zmalloc`` return a memoryview in this reactor's slice of the shared
  arena (or None when that pool is empty or size > 64 KiB -- no waiting), ``dma_free(buf)``
  gives it back.  Such a buffer crosses reactors (QoS) without a bounce copy.
* Latency: ``io_get_submit_tsc(bdev_io)`` (also ``bdev_io.get_submit_tsc()``) is when the
  layer accepted the I/O, in ns of ``reactor.now_ns()``'s clock; a completion callback
  computes ``now_ns() - io_get_submit_tsc(io)`` without a clock read at submit time.
"""
from __future__ import annotations

from . import _qos
from ._const import (EVENT_REMOVE, EVENT_RESIZE, IO_STATUS_FAILED, IO_STATUS_NOMEM,  # noqa: F401
                     IO_STATUS_NVME_ERROR, IO_STATUS_PENDING, IO_STATUS_SCSI_ERROR,
                     IO_STATUS_SUCCESS, IO_TYPE_FLUSH, IO_TYPE_NVME_ADMIN, IO_TYPE_NVME_IO,
                     IO_TYPE_NVME_IO_MD, IO_TYPE_READ, IO_TYPE_RESET, IO_TYPE_UNMAP,
                     IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, QOS_LIMIT_NOT_DEFINED,
                     QOS_NUM_RATE_LIMIT_TYPES, QOS_R_BPS_RATE_LIMIT, QOS_RW_BPS_RATE_LIMIT,
                     QOS_RW_IOPS_RATE_LIMIT, QOS_W_BPS_RATE_LIMIT)
from ._bdev_io import free_io, queue_io_wait  # noqa: F401
from ._buffers import dma_free, dma_malloc, dma_zmalloc  # noqa: F401
from ._channel import get_io_channel, put_io_channel  # noqa: F401
from ._complete import (io_get_iovec, io_get_nvme_status, io_get_scsi_status,  # noqa: F401
                        io_get_submit_tsc, io_get_thread)
from ._lifecycle import finish, initialize, subsystem_config_json, wait_for_examine  # noqa: F401
from ._manager import get_opts, set_opts  # noqa: F401
from ._registry import (alias_add, alias_del, alias_del_all, bdevs, close,  # noqa: F401
                        desc_get_bdev, dump_info_json, first, first_leaf, get_aliases,
                        get_block_size, get_buf_align, get_by_name, get_name, get_num_blocks,
                        get_optimal_io_boundary, get_product_name, get_uuid, has_write_cache,
                        io_type_supported, next, next_leaf, open, open_ext, unwatch_registry,
                        watch_registry)
from ._registry import bdev_unregister  # noqa: F401  users may hot-remove too (e.g. an RPC delete)
from ._reset import reset  # noqa: F401
from ._submit import (flush, flush_blocks, nvme_admin_passthru, nvme_io_passthru,  # noqa: F401
                      nvme_io_passthru_md, read, read_blocks, readv, readv_blocks, unmap,
                      unmap_blocks, write, write_blocks, write_zeroes, write_zeroes_blocks,
                      writev, writev_blocks)
from ._types import Bdev, BdevIo, Desc, IoStat, IoWaitEntry  # noqa: F401
from ._stats import (get_channels_stat, get_device_stat, get_io_stat, get_io_time,  # noqa: F401
                     get_qd, get_qd_sampling_period, get_weighted_io_time, histogram_enable,
                     histogram_get, reset_device_stat, set_qd_sampling_period)

get_qos_rate_limits = _qos.get_rate_limits
set_qos_rate_limits = _qos.set_rate_limits
get_qos_rpc_type = _qos.get_rpc_type

__all__ = [
    # descriptors and channels
    "Bdev", "Desc", "open", "open_ext", "close", "desc_get_bdev", "get_io_channel",
    "put_io_channel",
    # I/O (bytes and _blocks variants), the bdev_io, -ENOMEM waits
    "read", "read_blocks", "readv", "readv_blocks", "write", "write_blocks", "writev",
    "writev_blocks", "write_zeroes", "write_zeroes_blocks", "unmap", "unmap_blocks", "flush",
    "flush_blocks", "reset", "nvme_admin_passthru", "nvme_io_passthru", "nvme_io_passthru_md",
    "BdevIo", "free_io", "io_get_nvme_status", "io_get_scsi_status", "io_get_iovec",
    "io_get_thread", "io_get_submit_tsc", "IoWaitEntry", "queue_io_wait",
    # DMA buffers
    "dma_malloc", "dma_zmalloc", "dma_free",
    # the registry
    "get_by_name", "bdevs", "first", "next", "first_leaf", "next_leaf", "alias_add",
    "alias_del", "alias_del_all", "get_aliases", "bdev_unregister", "watch_registry",
    "unwatch_registry", "wait_for_examine",
    # getters
    "get_name", "get_product_name", "get_block_size", "get_num_blocks", "get_uuid",
    "get_buf_align", "get_optimal_io_boundary", "has_write_cache", "io_type_supported",
    "dump_info_json",
    # QoS
    "get_qos_rate_limits", "set_qos_rate_limits", "get_qos_rpc_type", "QOS_LIMIT_NOT_DEFINED",
    "QOS_NUM_RATE_LIMIT_TYPES", "QOS_RW_IOPS_RATE_LIMIT", "QOS_RW_BPS_RATE_LIMIT",
    "QOS_R_BPS_RATE_LIMIT", "QOS_W_BPS_RATE_LIMIT",
    # statistics and histograms
    "IoStat", "get_device_stat", "get_channels_stat", "get_io_stat", "reset_device_stat",
    "get_qd", "get_qd_sampling_period", "set_qd_sampling_period", "get_io_time",
    "get_weighted_io_time", "histogram_enable", "histogram_get",
    # the layer itself
    "initialize", "finish", "get_opts", "set_opts", "subsystem_config_json",
    # constants
    "EVENT_REMOVE", "EVENT_RESIZE",
    "IO_TYPE_READ", "IO_TYPE_WRITE", "IO_TYPE_UNMAP", "IO_TYPE_FLUSH", "IO_TYPE_RESET",
    "IO_TYPE_NVME_ADMIN", "IO_TYPE_NVME_IO", "IO_TYPE_NVME_IO_MD", "IO_TYPE_WRITE_ZEROES",
    "IO_STATUS_SCSI_ERROR", "IO_STATUS_NVME_ERROR", "IO_STATUS_FAILED", "IO_STATUS_PENDING",
    "IO_STATUS_SUCCESS", "IO_STATUS_NOMEM",
]
