"""Buffers: io_get_buf/io_set_buf (a bdev_io's data buffer from this reactor's slice of
the shared arena, waiting while the pool is empty), giving one back (to the first waiter
of the thread, else the pool; then I/O waiting to be funnelled to QoS retries, through
the QoS stage), and the users' DMA buffers (dma_malloc/zmalloc/free, dma_handles).
"""
from __future__ import annotations

import logging

import reactor as rx

from ._complete import io_complete
from ._const import EINVAL, IO_STATUS_FAILED, LARGE_BUF_MAX_SIZE, SMALL_BUF_MAX_SIZE
from ._manager import _mgr
from ._stages import qos_stage
from ._types import BdevIo

log = logging.getLogger("ringstack.bdev")


# ===================================================================== buffers
def io_set_buf(io, buf, length) -> None:
    io.iovs[0] = buf if buf is None or len(buf) == length else buf[:length]


def io_get_buf(io, cb, length) -> None:
    """spdk_bdev_io_get_buf: ``cb(module_ch, io)`` once iovs[0] has a buffer of ``length``
    bytes from the shared arena (512-byte aligned); queued while the pool is empty."""
    if io.iovs[0] is not None:
        cb(io.ch.channel, io)
        return
    if length > LARGE_BUF_MAX_SIZE:
        log.error("get_buf of %d bytes exceeds %d", length, LARGE_BUF_MAX_SIZE)
        io_complete(io, IO_STATUS_FAILED)
        return
    mgmt = io.ch.mgmt
    m = mgmt.mgr
    io.buf_len = length
    io.get_buf_cb = cb
    if length <= SMALL_BUF_MAX_SIZE:
        if m.small_avail <= 0:
            mgmt.need_buf_small.append(io)
            return
        m.small_avail -= 1
    else:
        if m.large_avail <= 0:
            mgmt.need_buf_large.append(io)
            return
        m.large_avail -= 1
    h = m.buf_pool.get(length)
    if h is None:  # arena slice smaller than the pool option: behave as empty
        if length <= SMALL_BUF_MAX_SIZE:
            m.small_avail += 1
            mgmt.need_buf_small.append(io)
        else:
            m.large_avail += 1
            mgmt.need_buf_large.append(io)
        return
    io.buf = h
    io.iovs[0] = m.buf_pool.view(h)
    cb(io.ch.channel, io)


def _put_buf(io) -> None:
    h = io.buf
    io.buf = None
    if io.iovs:
        io.iovs[0] = None
    mgmt = io.ch.mgmt
    _return_buf(mgmt.mgr, mgmt, h, io.buf_len <= SMALL_BUF_MAX_SIZE)


def _return_buf(m, mgmt, h, small) -> None:
    """A buffer of this reactor's slice is free: to the first waiter of ``mgmt`` (the
    freeing thread's management channel, if it has one), else back to the pool."""
    if mgmt is None:
        m.buf_pool.put(h)
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        return
    q = mgmt.need_buf_small if small else mgmt.need_buf_large
    if q:
        tmp = q.popleft()
        h2 = h._replace(length=tmp.buf_len)
        tmp.buf = h2
        tmp.iovs[0] = m.buf_pool.view(h2)
        tmp.get_buf_cb(tmp.ch.channel, tmp)
    else:
        m.buf_pool.put(h)
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        if mgmt.fwd_wait:
            qos_stage.retry_fwd_wait(mgmt)



# BdevIo's get_buf/set_buf are these functions (BdevIo lives in _types.py, below this room).
BdevIo.get_buf = io_get_buf
BdevIo.set_buf = io_set_buf

# ----------------------------------------------------------------- dma buffers (user API)
DMA_MAX_ALIGN = 4096   # every arena buffer starts on a 4 KiB boundary of a page-aligned map


def dma_malloc(size: int, align: int = 512):
    """spdk_dma_malloc for bdev users: a writable memoryview of exactly ``size`` bytes
    in this reactor's slice of the shared buffer arena, aligned to ``align`` (a power of
    two up to 4096), or None.  Call it on a thread of a reactor where the bdev layer is
    initialised; use the buffer from any thread of that reactor and give it back with
    :func:`dma_free` there.

    The buffer comes from the same per-reactor pools as the layer's own buffers (8 KiB
    class up to 8 KiB, 64 KiB class up to 64 KiB; ``small/large_buf_pool_size``), so
    held buffers leave fewer for ``get_buf`` and QoS bounce copies.  Exhaustion: None at
    once (no waiting, nothing queued), as is a size above 64 KiB (use several buffers
    in an iovec) or <= 0, or a bad ``align``.  Contents are not zeroed (dma_zmalloc).

    Passed to read/write(v) as is (the whole view, as one iovec entry or several), an
    I/O that must cross reactors (QoS funnelling) travels as its arena handle: no bounce
    copy.  A slice of it, or any other buffer, is bounce-copied when it has to cross."""
    m = _mgr()
    if (not isinstance(size, int) or size <= 0 or size > LARGE_BUF_MAX_SIZE or align <= 0
            or align & (align - 1) or align > DMA_MAX_ALIGN):
        log.error("dma_malloc(%r, align=%r): size must be 1..%d and align a power of two <= %d",
                  size, align, LARGE_BUF_MAX_SIZE, DMA_MAX_ALIGN)
        return None
    small = size <= SMALL_BUF_MAX_SIZE
    if small:
        if m.small_avail <= 0:
            return None
        m.small_avail -= 1
    else:
        if m.large_avail <= 0:
            return None
        m.large_avail -= 1
    h = m.buf_pool.get(size) if m.buf_pool is not None else None
    if h is None:
        if small:
            m.small_avail += 1
        else:
            m.large_avail += 1
        return None
    v = m.buf_pool.view(h)
    m.dma[id(v)] = (v, h)
    return v


def dma_zmalloc(size: int, align: int = 512):
    """spdk_dma_zmalloc: dma_malloc, zero-filled."""
    v = dma_malloc(size, align)
    if v is not None:
        v[:] = bytes(len(v))
    return v


def dma_free(buf) -> int:
    """spdk_dma_free: give back a dma_malloc buffer (on a thread of the reactor that
    allocated it).  The view is released: using it afterwards raises ValueError.  0, or
    -EINVAL (logged) for anything dma_malloc on this reactor did not return, or a second
    free.  A freed buffer goes first to a get_buf waiter of the calling thread."""
    m = _mgr()
    e = m.dma.get(id(buf))
    if e is None or e[0] is not buf:
        log.error("dma_free of a buffer dma_malloc on reactor %d did not return (or freed twice)",
                  m.reactor.index)
        return -EINVAL
    del m.dma[id(buf)]
    v, h = e
    try:
        v.release()
    except BufferError:
        pass     # something still exports it (the caller's problem, as use after free is)
    t = rx.get_thread()
    ioch = t.io_channels.get(m.mgmt_key) if t is not None else None
    _return_buf(m, ioch.ctx if ioch is not None else None, h, h.length <= SMALL_BUF_MAX_SIZE)
    return 0


def dma_handles(m, iovs, iovcnt, nbytes):
    """Arena handles for ``iovs`` when every entry is a whole dma_malloc buffer of this
    replica (trimmed to ``nbytes`` in all), else None."""
    dma = m.dma
    out = []
    left = nbytes
    for i in range(iovcnt):
        v = iovs[i]
        e = dma.get(id(v))
        if e is None or e[0] is not v:
            return None
        if left <= 0:
            break
        h = e[1]
        n = min(h.length, left)
        out.append([h.arena_id, h.offset, n])
        left -= n
    return out if left <= 0 else None
