"""The bdev_io pool: this reactor's share of the app-wide pool, each thread's cache
(filled when its management channel is created, so no thread can be starved by the
others), ``_get_io``, ``free_io`` and the -ENOMEM wait (``queue_io_wait``).  Above the
buffers (a freed bdev_io gives its buffer back), below submission.
"""
from __future__ import annotations

import logging

import reactor as rx

from ._buffers import _put_buf
from ._const import EINVAL, IO_TYPE_NVME_ADMIN, IO_TYPE_NVME_IO_MD
from ._types import BdevIo, MgmtChannel

log = logging.getLogger("ringstack.bdev")


# ----------------------------------------------------------------- management channel
def _mgmt_channel_create(mgr):
    t = rx.get_thread()
    ch = MgmtChannel(mgr, t)
    # Pre-populate the cache so this thread cannot be starved by others.
    for _ in range(ch.cache_size):
        if mgr.io_pool_avail <= 0:
            break
        mgr.io_pool_avail -= 1
        ch.cache.append(mgr.io_free.pop() if mgr.io_free else BdevIo())
    return ch


def _mgmt_channel_destroy(mgr, ch) -> None:
    if ch.need_buf_small or ch.need_buf_large:
        log.error("pending I/O list wasn't empty on mgmt channel free")
    if ch.shared_resources:
        log.error("module channel list wasn't empty on mgmt channel free")
    while ch.cache:
        mgr.io_free.append(ch.cache.pop())
        mgr.io_pool_avail += 1


# ===================================================================== bdev_io pool
def _get_io(channel):
    mgmt = channel.mgmt
    cache = mgmt.cache
    if cache:
        return cache.pop()
    if mgmt.io_wait_queue:
        # Waiters first: this caller must not jump the line.
        return None
    m = mgmt.mgr
    if m.io_pool_avail > 0:
        m.io_pool_avail -= 1
        return m.io_free.pop() if m.io_free else BdevIo()
    return None


def free_io(io) -> None:
    """spdk_bdev_free_io: give a completed bdev_io back (from its completion callback)."""
    if io.buf is not None:
        _put_buf(io)
    mgmt = io.ch.mgmt
    # drop references to the caller's and the arena's memory (a pooled bdev_io must not
    # keep a buffer alive, nor an arena mapping from being unmapped)
    io.cb = io.caller_ctx = io.desc = io.child_iov = None
    io.fwd = None          # bounce handles (QoS funnelling)
    iov = io._iov
    iov[0] = None
    io.iovs = iov          # not the caller's iovec list (readv/writev) nor a module's
    if IO_TYPE_NVME_ADMIN <= io.type <= IO_TYPE_NVME_IO_MD:
        io.nvme_cmd = io.nvme_buf = io.md_buf = None
    cache = mgmt.cache
    if len(cache) < mgmt.cache_size:
        cache.append(io)
        q = mgmt.io_wait_queue
        if q:
            while cache and q:
                entry = q.popleft()
                entry.cb_fn(entry.cb_arg)
    else:
        m = mgmt.mgr
        m.io_pool_avail += 1
        m.io_free.append(io)


def queue_io_wait(bdev, ch, entry) -> int:
    """spdk_bdev_queue_io_wait: after an -ENOMEM, ``entry.cb_fn(entry.cb_arg)`` runs when
    a bdev_io is free again on this thread.  -EINVAL if entry.bdev differs or the cache
    still has a bdev_io (the caller would wait forever)."""
    channel = ch.ctx
    mgmt = channel.mgmt
    if bdev is not entry.bdev:
        log.error("bdevs do not match")
        return -EINVAL
    if mgmt.cache:
        log.error("cannot queue io_wait if a bdev_io is available in the per-thread cache")
        return -EINVAL
    mgmt.io_wait_queue.append(entry)
    return 0
