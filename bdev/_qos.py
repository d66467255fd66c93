"""QoS: rate limits on a bdev as a whole (the seed's spdk_bdev_qos, plus later SPDK's
separate read/write bytes limits).

One thread in the whole app -- the *QoS thread* -- holds the bdev's queue, quota and the
1 ms timeslice poller; every I/O of the bdev is funnelled there:

* same thread: queued directly (seed);
* another thread of the same reactor: the bdev_io itself is sent (seed: ``io_submit_ch``
  swap, completion sent back);
* a thread of another reactor: a compact record ``(origin thread, token, bdev name, type,
  offset, num_blocks, buffer handles)`` is sent; the QoS thread builds a proxy bdev_io over
  the shared-memory buffers, queues it under the same quota and answers ``(token, status)``.
  Payloads that are not already arena buffers are bounce-copied through the sender's slice
  of the arena (docs/architecture.md, Memory).

Which thread: on one reactor, the seed's rule (the first channel that enables QoS).  With
several reactors the main reactor decides: its own first channel, or the first thread
another reactor proposes; the choice is broadcast, and I/O submitted before a replica
learns it waits in ``qos.pending``.  Limit values are replicated to every replica so any
reactor can answer get_qos_rate_limits.
"""
from __future__ import annotations

import logging
from collections import deque

import reactor as rx
from reactor import wire
from reactor.reactor import TID_SHIFT

from . import _bcast
from ._buffers import dma_handles, io_get_buf
from ._complete import _io_complete, io_complete
from ._const import (EAGAIN, EINVAL, IO_STATUS_FAILED, IO_STATUS_NVME_ERROR, IO_STATUS_SCSI_ERROR,
                     IO_STATUS_SUCCESS, IO_TYPE_NVME_ADMIN,
                     IO_TYPE_NVME_IO, IO_TYPE_NVME_IO_MD, IO_TYPE_READ, IO_TYPE_UNMAP,
                     IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, LARGE_BUF_MAX_SIZE, QOS_CONF_TYPE,
                     QOS_LIMIT_NOT_DEFINED, QOS_MIN_BYTE_PER_TIMESLICE, QOS_MIN_BYTES_PER_SEC,
                     QOS_MIN_IO_PER_TIMESLICE, QOS_MIN_IOS_PER_SEC, QOS_NUM_RATE_LIMIT_TYPES,
                     QOS_R_BPS_RATE_LIMIT, QOS_RPC_TYPE, QOS_RW_BPS_RATE_LIMIT,
                     QOS_RW_IOPS_RATE_LIMIT, QOS_TIMESLICE_IN_USEC, QOS_W_BPS_RATE_LIMIT,
                     SMALL_BUF_MAX_SIZE)
from ._manager import get_manager
from ._registry import get_by_name
from ._stages import qos_stage
from ._submit import _io_init, _io_submit_now
from ._types import BDEV_CH_QOS_ENABLED, BdevIo

log = logging.getLogger("ringstack.bdev.qos")

N = QOS_NUM_RATE_LIMIT_TYPES
NOT_DEFINED = QOS_LIMIT_NOT_DEFINED
_RESUBMIT = 99   # answer to a forwarded I/O: "QoS went away, submit it yourself"
_ADMITTED = 98   # answer to a forwarded passthru: "quota taken, submit it yourself"
PROXY_DATA = 1   # BdevIo.proxy: a stand-in for an I/O of another reactor (data path)
PROXY_ADMIT = 2  # BdevIo.proxy: a passthru's quota ticket (the command stays home)
_NVME_TYPES = (IO_TYPE_NVME_ADMIN, IO_TYPE_NVME_IO, IO_TYPE_NVME_IO_MD)


def is_iops_limit(i: int) -> bool:
    return i == QOS_RW_IOPS_RATE_LIMIT


class Qos:
    __slots__ = ("limit", "remaining", "min_per", "max_per", "ch", "io_ch", "thread", "thread_id",
                 "queued", "timeslice_size", "last_timeslice", "poller", "pending", "requested")

    def __init__(self):
        self.limit = [NOT_DEFINED] * N
        self.remaining = [0] * N
        self.min_per = [0] * N
        self.max_per = [0] * N
        self.ch = None          # the QoS channel (only on the replica hosting the thread)
        self.io_ch = None       # the extra channel reference QoS holds
        self.thread = None      # the QoS Thread, when it is on this reactor
        self.thread_id = None   # the QoS thread's id, wherever it is
        self.queued = deque()
        self.timeslice_size = QOS_TIMESLICE_IN_USEC * 1000
        self.last_timeslice = 0
        self.poller = None
        self.pending = deque()  # I/O waiting to learn the QoS thread (several reactors)
        self.requested = False


# ------------------------------------------------------------------ quota
def _update_max_quota(qos) -> None:
    for i in range(N):
        if qos.limit[i] == NOT_DEFINED:
            qos.max_per[i] = 0
            continue
        mx = qos.limit[i] * QOS_TIMESLICE_IN_USEC // 1_000_000
        qos.max_per[i] = max(mx, qos.min_per[i])
        qos.remaining[i] = qos.max_per[i]


def _io_to_limit(io) -> bool:
    t = io.type
    return t in (IO_TYPE_READ, IO_TYPE_WRITE, IO_TYPE_UNMAP, IO_TYPE_WRITE_ZEROES, IO_TYPE_NVME_IO,
                 IO_TYPE_NVME_IO_MD)


def _io_size(io) -> int:
    t = io.type
    if t == IO_TYPE_NVME_IO or t == IO_TYPE_NVME_IO_MD:
        return io.nvme_nbytes or 0
    if t in (IO_TYPE_READ, IO_TYPE_WRITE, IO_TYPE_UNMAP, IO_TYPE_WRITE_ZEROES):
        return io.num_blocks * io.bdev.blocklen
    return 0


def _limit_applies(i, io) -> bool:
    if i == QOS_R_BPS_RATE_LIMIT:
        return io.type == IO_TYPE_READ
    if i == QOS_W_BPS_RATE_LIMIT:
        return io.type == IO_TYPE_WRITE
    return True


def io_submit(ch) -> None:
    """The seed's _spdk_bdev_qos_io_submit: submit queued I/O while quota remains."""
    bdev = ch.bdev
    qos = bdev.qos
    sr = ch.shared_resource
    q = qos.queued
    rem = qos.remaining
    mx = qos.max_per
    while q:
        io = q[0]
        for i in range(N):
            if mx[i] > 0 and rem[i] <= 0 and _limit_applies(i, io):
                return
        q.popleft()
        if _io_to_limit(io):
            size = _io_size(io)
            if mx[QOS_RW_IOPS_RATE_LIMIT]:
                rem[QOS_RW_IOPS_RATE_LIMIT] -= 1
            if mx[QOS_RW_BPS_RATE_LIMIT]:
                rem[QOS_RW_BPS_RATE_LIMIT] -= size
            if mx[QOS_R_BPS_RATE_LIMIT] and io.type == IO_TYPE_READ:
                rem[QOS_R_BPS_RATE_LIMIT] -= size
            if mx[QOS_W_BPS_RATE_LIMIT] and io.type == IO_TYPE_WRITE:
                rem[QOS_W_BPS_RATE_LIMIT] -= size
        if io.proxy == PROXY_ADMIT:
            # A passthru of another reactor: its quota is taken, it runs where it was
            # submitted (an NVMe command is an opaque object that does not cross).
            origin, token = io.caller_ctx
            rx.current_reactor().send(origin, _qos_fwd_done, (token, _ADMITTED, 0, 0, None))
            continue
        ch.io_outstanding += 1
        sr.io_outstanding += 1
        bdev._submit(ch.channel, io)


def _poll_qos(qos) -> int:
    now = rx.current_reactor().now()
    if now < qos.last_timeslice + qos.timeslice_size:
        return 0
    for i in range(N):
        # Overrun (negative remaining) carries into the next timeslice; leftovers do not.
        if qos.remaining[i] > 0:
            qos.remaining[i] = 0
    while now >= qos.last_timeslice + qos.timeslice_size:
        qos.last_timeslice += qos.timeslice_size
        for i in range(N):
            qos.remaining[i] += qos.max_per[i]
    if qos.ch is not None:
        io_submit(qos.ch)
    return 1


# ------------------------------------------------------------------ QoS thread set-up
def _setup_local(bdev, ch, io_ch) -> None:
    """On ch's thread: this thread becomes the QoS thread of ``bdev``."""
    qos = bdev.qos
    qos.io_ch = io_ch
    qos.ch = ch
    qos.thread = ch.thread
    qos.thread_id = ch.thread.id
    for i in range(N):
        qos.min_per[i] = QOS_MIN_IO_PER_TIMESLICE if is_iops_limit(i) else QOS_MIN_BYTE_PER_TIMESLICE
        if qos.limit[i] == 0:
            qos.limit[i] = NOT_DEFINED
    _update_max_quota(qos)
    qos.last_timeslice = rx.current_reactor().now()
    qos.poller = rx.poller_register(_poll_qos, qos, QOS_TIMESLICE_IN_USEC, name=f"qos_{bdev.name}")


def enable_on_channel(bdev, ch) -> None:
    """The seed's _spdk_bdev_enable_qos, on ch's thread (channel create, enable walk)."""
    qos = bdev.qos
    if qos is None:
        return
    if qos.thread_id is None:
        _choose_thread(bdev, ch)
    ch.flags |= BDEV_CH_QOS_ENABLED


def _choose_thread(bdev, ch) -> None:
    """On ch's thread, while the bdev has no QoS thread: on the main reactor (or the only
    one) ch's thread becomes it; elsewhere ch's thread is proposed to the main reactor."""
    qos = bdev.qos
    r = rx.current_reactor()
    if r.n_reactors == 1 or r.index == 0:
        _setup_local(bdev, ch, rx.get_io_channel(bdev))   # (ch may still be being created)
        if r.n_reactors > 1:
            _bcast.broadcast(_qos_thread_set, [bdev.name, qos.thread_id], None, include_self=False)
    elif not qos.requested:
        qos.requested = True
        r.send(r.default_tid(0), _qos_choose_req, (bdev.name, ch.thread.id))


@wire.remote("bdev.qos_choose_req")
def _qos_choose_req(name, tid) -> None:
    bdev = get_by_name(name)
    if bdev is None or bdev.qos is None:
        return
    r = rx.current_reactor()
    qos = bdev.qos
    if (tid >> TID_SHIFT) in r.dead:
        return    # proposed by a reactor that died since
    if qos.thread_id is None:
        qos.thread_id = tid
        _bcast.broadcast(_qos_thread_set, [name, tid], None, include_self=False)
    else:  # already chosen: make sure the asker knows
        r.send(r.default_tid(tid >> TID_SHIFT), _qos_thread_set_msg, (name, qos.thread_id))


@wire.remote("bdev.qos_thread_set")
def _qos_thread_set(done, name, tid) -> None:
    _apply_thread(name, tid)
    done(0)


@wire.remote("bdev.qos_thread_set_msg")
def _qos_thread_set_msg(name, tid) -> None:
    _apply_thread(name, tid)


def _apply_thread(name, tid) -> None:
    bdev = get_by_name(name)
    if bdev is None or bdev.qos is None:
        return
    qos = bdev.qos
    r = rx.current_reactor()
    if (tid >> TID_SHIFT) in r.dead:
        return    # chosen before its reactor died (a reactor-death notice re-chooses)
    if qos.thread_id == tid and (qos.ch is not None or (tid >> TID_SHIFT) != r.index):
        _flush_pending(bdev)
        return
    qos.thread_id = tid
    if (tid >> TID_SHIFT) == r.index:
        t = r.threads_by_id.get(tid)
        if t is not None:
            rx.send_msg(t, _setup_by_tid, bdev)
            return
    _flush_pending(bdev)


def _setup_by_tid(bdev) -> None:
    qos = bdev.qos
    if qos is None or qos.ch is not None:
        return
    io_ch = rx.get_io_channel(bdev)
    if io_ch is None:
        return
    io_ch.ctx.io_ch = io_ch
    _setup_local(bdev, io_ch.ctx, io_ch)
    io_ch.ctx.flags |= BDEV_CH_QOS_ENABLED
    _flush_pending(bdev)


def _flush_pending(bdev) -> None:
    qos = bdev.qos
    while qos.pending:
        io = qos.pending.popleft()
        rx.send_msg(io.ch.thread, _resubmit_pending, io)


def _resubmit_pending(io) -> None:
    if io.ch.flags & BDEV_CH_QOS_ENABLED and io.bdev.qos is not None:
        route(io)
    else:
        _io_submit_now(io)


# ------------------------------------------------------------------ funnelling
def route(io) -> None:
    """The QoS branch of spdk_bdev_io_submit, on the submitting thread."""
    qos = io.bdev.qos
    t = rx.get_thread()
    if qos.thread is t:
        _io_submit_now(io)
        return
    tid = qos.thread_id
    if tid is None:
        # QoS was torn down (last desc closed) and this channel still has it on: wait for
        # a QoS thread, asking the main reactor for one (this thread, if it is on the main
        # reactor) -- the limit keeps holding for the bdev as a whole.  (The seed queues
        # it on the QoS object with no poller until some channel is created.)
        qos.pending.append(io)
        _choose_thread(io.bdev, io.ch)
        if qos.thread is t:
            _flush_pending(io.bdev)
        return
    if qos.thread is not None:
        io.io_submit_ch = io.ch
        io.ch = qos.ch
        rx.send_msg(qos.thread, _io_submit_now, io)
        return
    if (tid >> TID_SHIFT) == rx.current_reactor().index:
        qos.pending.append(io)  # chosen here but not set up yet; _setup_by_tid flushes
        return
    if io.type == IO_TYPE_READ and io.iovs[0] is None:
        n = io.num_blocks * io.bdev.blocklen
        if n <= LARGE_BUF_MAX_SIZE:
            io_get_buf(io, _forward_after_buf, n)
            return
    if not _forward(io):
        io.ch.mgmt.fwd_wait.append(io)


def _forward_after_buf(_module_ch, io) -> None:
    if not _forward(io):
        io.ch.mgmt.fwd_wait.append(io)


def _alloc(m, length):
    if length <= SMALL_BUF_MAX_SIZE:
        if m.small_avail <= 0:
            return None
        h = m.buf_pool.get(length)
        if h is not None:
            m.small_avail -= 1
        return h
    if m.large_avail <= 0:
        return None
    h = m.buf_pool.get(length)
    if h is not None:
        m.large_avail -= 1
    return h


def _free(m, h) -> None:
    m.buf_pool.put(h)
    if h.length <= SMALL_BUF_MAX_SIZE:
        m.small_avail += 1
    else:
        m.large_avail += 1


def _forward(io) -> bool:
    """Send ``io`` to the QoS thread on another reactor.  False when no bounce buffer is
    free (the caller queues it; a freed buffer retries)."""
    mgmt = io.ch.mgmt
    m = mgmt.mgr
    bdev = io.bdev
    r = rx.current_reactor()
    qos = bdev.qos
    dest_tid = qos.thread_id if qos is not None else None
    if dest_tid is None:
        _resubmit_pending(io)  # QoS moved or went away meanwhile: route it again
        return True
    if (dest_tid >> TID_SHIFT) in r.dead:
        # The QoS thread's reactor died while this I/O waited for a buffer: fail it here.
        fail_forwarded(io)
        return True
    handles = []
    bounce = []
    t = io.type
    if t == IO_TYPE_READ or t == IO_TYPE_WRITE:
        if io.iovcnt == 1 and io.buf is not None:
            handles.append(list(io.buf))
        elif m.dma and (dh := dma_handles(m, io.iovs, io.iovcnt,
                                                io.num_blocks * bdev.blocklen)) is not None:
            handles = dh           # the caller's dma_malloc buffers cross as they are
        else:
            left = io.num_blocks * bdev.blocklen
            while left > 0:
                n = min(left, LARGE_BUF_MAX_SIZE)
                h = _alloc(m, n)
                if h is None:
                    for b in bounce:
                        _free(m, b)
                    return False
                bounce.append(h)
                handles.append(list(h))
                left -= n
            if t == IO_TYPE_WRITE:
                _copy_iovs_to(io.iovs, bounce, m)
    # NVMe I/O passthru counts against the quota as in the seed (_spdk_bdev_qos_io_to_limit),
    # but its command is an opaque object that does not cross reactors: only a ticket
    # (type, nbytes) travels; the QoS thread queues it under the quota and answers
    # _ADMITTED, and the command is submitted here (_qos_fwd_done).  Admin passthru is not
    # limited (seed) but keeps its place in the QoS queue the same way.
    nbytes = (io.nvme_nbytes or 0) if t in _NVME_TYPES else 0
    io.submit_tsc = io.ch.clock()   # latency is measured on the submitting side
    m.fwd_seq += 1
    token = m.fwd_seq
    m.fwd[token] = (io, dest_tid >> TID_SHIFT)
    io.fwd = bounce
    r.send(dest_tid, _qos_fwd_submit,
           (rx.get_thread().id, token, bdev.name, t, io.offset_blocks, io.num_blocks, handles, nbytes))
    return True


def fail_forwarded(io) -> None:
    """Complete a funnelled I/O (not yet, or no longer, forwarded) with failure on its
    thread; its bounce buffers (if any) go back to the pool."""
    m = io.ch.mgmt.mgr
    bounce, io.fwd = io.fwd, None
    for h in bounce or ():
        _free(m, h)
    io.status = IO_STATUS_FAILED
    io.in_submit_request = True    # never inside a submit call: deferred to a message
    _io_complete(io)


# _copy_iovs_to and _copy_to_iovs mirror each other and stay apart on purpose: they copy
# every forwarded I/O's data (no per-chunk direction test), and they differ at the edges
# (the write side casts the caller's buffers; the read side stops where the bounce ends).
def _copy_iovs_to(iovs, handles, m) -> None:
    views = [m.buf_pool.view(h) for h in handles]
    vi = 0
    voff = 0
    for src in iovs:
        src = memoryview(src).cast("B") if not isinstance(src, memoryview) else src
        soff = 0
        while soff < len(src):
            dst = views[vi]
            n = min(len(src) - soff, len(dst) - voff)
            dst[voff:voff + n] = src[soff:soff + n]
            soff += n
            voff += n
            if voff == len(dst):
                vi += 1
                voff = 0
    for v in views:
        v.release()


def _copy_to_iovs(handles, iovs, m) -> None:
    views = [m.buf_pool.view(h) for h in handles]
    vi = 0
    voff = 0
    for dst in iovs:
        doff = 0
        while doff < len(dst) and vi < len(views):
            src = views[vi]
            n = min(len(dst) - doff, len(src) - voff)
            dst[doff:doff + n] = src[voff:voff + n]
            doff += n
            voff += n
            if voff == len(src):
                vi += 1
                voff = 0
    for v in views:
        v.release()


def retry_fwd_wait(mgmt) -> None:
    while mgmt.fwd_wait:
        io = mgmt.fwd_wait[0]
        if not _forward(io):
            return
        mgmt.fwd_wait.popleft()


@wire.remote("bdev.qos_fwd_submit")
def _qos_fwd_submit(origin, token, name, io_type, offset_blocks, num_blocks, handles, nbytes=0) -> None:
    from ipc import arena as _arena
    r = rx.current_reactor()
    bdev = get_by_name(name)
    qos = bdev.qos if bdev is not None else None
    if qos is None or qos.ch is None or qos.thread is not rx.get_thread():
        r.send(origin, _qos_fwd_done, (token, _RESUBMIT, 0, 0, None))
        return
    p = BdevIo()
    p.ch = qos.ch
    p.desc = None
    p.type = io_type
    p.offset_blocks = offset_blocks
    p.num_blocks = num_blocks
    if handles:
        p.iovs = [_arena.view(_arena.BufferHandle(*h)) for h in handles]
    else:
        p.iovs = [None]
    p.iovcnt = len(p.iovs) if handles else 0
    _io_init(p, bdev, (origin, token), _proxy_done)
    p.nvme_nbytes = nbytes
    p.proxy = PROXY_ADMIT if io_type in _NVME_TYPES else PROXY_DATA
    _io_submit_now(p)


def _proxy_done(p, success, ctx) -> None:
    origin, token = ctx
    if p.iovs:
        for v in p.iovs:
            if isinstance(v, memoryview):
                v.release()
    p.iovs = None
    scsi = None
    if p.status == IO_STATUS_SCSI_ERROR:
        scsi = (p.scsi_sc, p.scsi_sk, p.scsi_asc, p.scsi_ascq)
    rx.current_reactor().send(origin, _qos_fwd_done, (token, p.status, p.nvme_sct, p.nvme_sc, scsi))


@wire.remote("bdev.qos_fwd_done")
def _qos_fwd_done(token, status, sct, sc, scsi=None) -> None:
    """On the submitting thread: the QoS thread's answer for a forwarded I/O -- its
    status (NVMe sct/sc and SCSI sense travel with it), _ADMITTED (a passthru may go to
    the module now) or _RESUBMIT (QoS went away)."""
    m = get_manager()
    entry = m.fwd.pop(token, None) if m is not None else None
    if entry is None:
        log.error("completion of unknown forwarded I/O %s", token)
        return
    io = entry[0]
    bounce, io.fwd = io.fwd, None
    if status == _RESUBMIT:
        for h in bounce:
            _free(m, h)
        _resubmit_pending(io)   # QoS moved or went away: route again (or submit, if off)
        return
    if status == _ADMITTED:
        _io_submit_now(io, bypass_qos=True)
        return
    if bounce:
        if status == IO_STATUS_SUCCESS and io.type == IO_TYPE_READ:
            _copy_to_iovs(bounce, io.iovs, m)
        for h in bounce:
            _free(m, h)
        if io.ch.mgmt.fwd_wait:
            retry_fwd_wait(io.ch.mgmt)
    io.status = status
    if status == IO_STATUS_NVME_ERROR:
        io.nvme_sct, io.nvme_sc = sct, sc
    elif status == IO_STATUS_SCSI_ERROR and scsi is not None:
        io.scsi_sc, io.scsi_sk, io.scsi_asc, io.scsi_ascq = scsi
    _io_complete(io)


# ------------------------------------------------------------------ teardown
def _qos_channel_destroy(qos) -> None:
    """On the old QoS thread: release what QoS held."""
    if qos.io_ch is not None:
        rx.put_io_channel(qos.io_ch)
        qos.io_ch = None
    rx.poller_unregister(qos.poller)
    qos.poller = None


# The last close across reactors.  Every replica tells the main one when its count of open
# descs of a bdev goes 0 -> 1 or 1 -> 0 (one message per transition, FIFO per reactor
# pair, so the main replica's view of each reactor is the last state that reactor sent).
# When no reactor has a desc open, the main replica destroys QoS everywhere: each replica
# swaps in a fresh Qos with the same limits and the old QoS thread gives back what it
# queued.  A desc opened meanwhile (its report still in flight) is harmless: its channel
# still has QoS on, and its next I/O asks the main reactor for a new QoS thread.
def report_open_descs(bdev, is_open: bool) -> None:
    r = rx.current_reactor()
    if r.index == 0:
        _maybe_destroy(bdev)
    else:
        r.send(r.default_tid(0), _open_descs_report, (bdev.name, r.index, bool(is_open)))


@wire.remote("bdev.open_descs_report")
def _open_descs_report(name, index, is_open) -> None:
    bdev = get_by_name(name)
    if bdev is None:
        return
    bdev.open_elsewhere[index] = is_open
    if not is_open:
        _maybe_destroy(bdev)


def _maybe_destroy(bdev) -> None:
    """Main replica: destroy QoS if no reactor has a desc of ``bdev`` open."""
    qos = bdev.qos
    if qos is None or bdev.open_descs or any(bdev.open_elsewhere.values()):
        return
    if qos.thread_id is None or bdev.qos_mod_in_progress:
        return   # nothing to tear down yet, or a change in flight decides
    _swap_replica(bdev)
    if bdev.mgr.reactor.n_reactors > 1:
        _bcast.broadcast(_qos_destroy_replica, [bdev.name], None, include_self=False)


@wire.remote("bdev.qos_destroy_replica")
def _qos_destroy_replica(done, name) -> None:
    bdev = get_by_name(name)
    if bdev is not None and bdev.qos is not None:
        _swap_replica(bdev)
    done(0)


def _swap_replica(bdev) -> None:
    old = bdev.qos
    new = Qos()
    new.limit = list(old.limit)
    new.pending = old.pending     # waiting for a QoS thread: still are (route asks again)
    old.pending = deque()
    bdev.qos = new
    if old.thread is not None:
        rx.send_msg(old.thread, _qos_teardown, old)


def _qos_teardown(qos) -> None:
    """On the old QoS thread: queued I/O goes back to its thread to be routed again
    (proxies to their reactor), then the channel reference and the poller go."""
    r = rx.current_reactor()
    while qos.queued:
        io = qos.queued.popleft()
        if io.proxy:
            origin, token = io.caller_ctx
            r.send(origin, _qos_fwd_done, (token, _RESUBMIT, 0, 0, None))
            continue
        if io.io_submit_ch is not None:
            io.ch = io.io_submit_ch
            io.io_submit_ch = None
        rx.send_msg(io.ch.thread, _resubmit_pending, io)
    _qos_channel_destroy(qos)


def on_fini(bdev) -> None:
    qos = bdev.qos
    if qos is not None and qos.thread is not None:
        rx.send_msg(qos.thread, _qos_channel_destroy, qos)


def abort_pending(bdev, ch) -> None:
    """Fail I/O of ``ch`` still waiting to be funnelled (reset, channel destroy)."""
    qos = bdev.qos
    if qos is not None and qos.pending:
        mine = [io for io in qos.pending if io.ch is ch]
        for io in mine:
            qos.pending.remove(io)
            ch.io_outstanding += 1
            ch.shared_resource.io_outstanding += 1
            io_complete(io, IO_STATUS_FAILED)
    fw = ch.mgmt.fwd_wait
    if fw:
        mine = [io for io in fw if io.ch is ch]
        for io in mine:
            fw.remove(io)
            ch.io_outstanding += 1
            ch.shared_resource.io_outstanding += 1
            io_complete(io, IO_STATUS_FAILED)


# ------------------------------------------------------------------ limits
def get_rate_limits(bdev) -> list:
    """spdk_bdev_get_qos_rate_limits: [rw_ios, rw_bytes, r_bytes, w_bytes] per second, 0
    where not set."""
    out = [0] * N
    if bdev.qos is not None:
        for i in range(N):
            if bdev.qos.limit[i] != NOT_DEFINED:
                out[i] = bdev.qos.limit[i]
    return out


def get_rpc_type(i: int) -> str:
    return QOS_RPC_TYPE[i]


def config_from_conf(bdev, conf) -> None:
    """The seed's [QoS] section: ``{"Limit_IOPS": ["<bdev> <ios/s>"], "Limit_BPS":
    ["<bdev> <MB/s>"], ...}``.  Invalid values leave QoS off (logged)."""
    if not conf:
        return
    limits = [NOT_DEFINED] * N
    found = False
    for j, key in enumerate(QOS_CONF_TYPE):
        for entry in conf.get(key, ()):
            parts = str(entry).split()
            if len(parts) == 2 and parts[0] == bdev.name:
                v = int(parts[1])
                limits[j] = v if is_iops_limit(j) else v * 1024 * 1024
                found = True
                break
    if not found:
        return
    for i in range(N):
        if limits[i] == NOT_DEFINED:
            continue
        mn = QOS_MIN_IOS_PER_SEC if is_iops_limit(i) else QOS_MIN_BYTES_PER_SEC
        if limits[i] == 0 or limits[i] % mn:
            log.error("assigned limit %d on bdev %s is not a multiple of %d; QoS not enabled",
                      limits[i], bdev.name, mn)
            return
    if bdev.qos is None:
        bdev.qos = Qos()
    bdev.qos.limit = limits


def _set_limits(bdev, limits) -> None:
    for i in range(N):
        if limits[i] != NOT_DEFINED:
            bdev.qos.limit[i] = NOT_DEFINED if limits[i] == 0 else limits[i]


def set_rate_limits(bdev, limits, cb, cb_arg=None) -> None:
    """spdk_bdev_set_qos_rate_limits (main thread): ``limits`` = [rw_ios_per_sec,
    rw_mbytes_per_sec, r_mbytes_per_sec, w_mbytes_per_sec], QOS_LIMIT_NOT_DEFINED (or
    None) = leave as is, 0 = no limit.  Rounded up to multiples of 1000 IO/s and
    1 MiB/s as today's SPDK does (the seed's were 10000 and 10 MiB).  Enables, updates or
    disables QoS on every reactor while I/O flows; ``cb(cb_arg, status)``, -EAGAIN while another change is in progress."""
    limits = [NOT_DEFINED if v is None else int(v) for v in list(limits) + [None] * (N - len(limits))][:N]
    disable = True
    for i in range(N):
        if limits[i] == NOT_DEFINED:
            continue
        if limits[i] > 0:
            disable = False
        if is_iops_limit(i):
            mn = QOS_MIN_IOS_PER_SEC
        else:
            limits[i] = limits[i] * 1024 * 1024
            mn = QOS_MIN_BYTES_PER_SEC
        rem = limits[i] % mn
        if rem:
            log.error("requested rate limit %d is not a multiple of %d; rounded up", limits[i], mn)
            limits[i] += mn - rem
    if _bcast.replicable(_qos_apply_limits, [bdev.name, limits]):
        cb(cb_arg, -EINVAL)     # a limit no other reactor could receive: nothing changes
        return
    if bdev.qos_mod_in_progress:
        cb(cb_arg, -EAGAIN)
        return
    bdev.qos_mod_in_progress = True
    if disable and bdev.qos is not None:
        for i in range(N):
            if limits[i] == NOT_DEFINED and bdev.qos.limit[i] not in (0, NOT_DEFINED):
                disable = False
                break
    ctx = _SetCtx(bdev, cb, cb_arg)
    name = bdev.name
    if not disable:
        if bdev.qos is None:
            bdev.qos = Qos()
            _set_limits(bdev, limits)
            _bcast.broadcast(_qos_apply_limits, [name, limits], ctx.after_replicas_enable, include_self=False)
        else:
            _set_limits(bdev, limits)
            if bdev.qos.ch is not None:
                _update_max_quota(bdev.qos)
            _bcast.broadcast(_qos_apply_limits, [name, limits], ctx.done_rc, include_self=False)
    elif bdev.qos is not None:
        _set_limits(bdev, limits)
        _bcast.for_each_channel(bdev, _disable_qos_msg, {"bdev": name}, ctx.after_disable_walk)
    else:
        ctx.done(0)


class _SetCtx:
    __slots__ = ("bdev", "cb", "cb_arg")

    def __init__(self, bdev, cb, cb_arg):
        self.bdev = bdev
        self.cb = cb
        self.cb_arg = cb_arg

    def done(self, status) -> None:
        self.bdev.qos_mod_in_progress = False
        self.cb(self.cb_arg, status)

    def done_rc(self, rc) -> None:
        self.done(rc)

    def after_replicas_enable(self, rc) -> None:
        _bcast.for_each_channel(self.bdev, _enable_qos_msg, {"bdev": self.bdev.name},
                            lambda it, status: self.done(status))

    def after_disable_walk(self, it, status) -> None:
        _bcast.broadcast(_qos_disable_replica, [self.bdev.name], self.done_rc, include_self=True)


@wire.remote("bdev.qos_apply_limits")
def _qos_apply_limits(done, name, limits) -> None:
    bdev = get_by_name(name)
    if bdev is not None:
        if bdev.qos is None:
            bdev.qos = Qos()
        _set_limits(bdev, list(limits))
        if bdev.qos.ch is not None:
            _update_max_quota(bdev.qos)
    done(0)


@wire.remote("bdev.qos_enable")
def _enable_qos_msg(it) -> None:
    ch = it.get_channel().ctx
    enable_on_channel(ch.bdev, ch)
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.qos_disable")
def _disable_qos_msg(it) -> None:
    ch = it.get_channel().ctx
    ch.flags &= ~BDEV_CH_QOS_ENABLED
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.qos_disable_replica")
def _qos_disable_replica(done, name) -> None:
    bdev = get_by_name(name)
    if bdev is None or bdev.qos is None:
        done(0)
        return
    qos = bdev.qos
    bdev.qos = None
    # I/O still waiting for a QoS thread goes back to its own thread.
    while qos.pending:
        io = qos.pending.popleft()
        rx.send_msg(io.ch.thread, _io_submit_now, io)
    if qos.thread is not None:
        rx.send_msg(qos.thread, _disable_qos_done, qos, done)
    else:
        done(0)


def _disable_qos_done(qos, done) -> None:
    """On the QoS thread: send queued I/O back to its thread for resubmission."""
    r = rx.current_reactor()
    while qos.queued:
        io = qos.queued.popleft()
        if io.proxy:
            origin, token = io.caller_ctx
            r.send(origin, _qos_fwd_done, (token, _RESUBMIT, 0, 0, None))
            continue
        if io.io_submit_ch is not None:
            io.ch = io.io_submit_ch
            io.io_submit_ch = None
        rx.send_msg(io.ch.thread, _io_submit_now, io)
    _qos_channel_destroy(qos)
    done(0)


def write_config_json(bdev, out: list) -> None:
    if bdev.qos is None:
        return
    lim = get_rate_limits(bdev)
    if not any(lim):
        return
    params = {"name": bdev.name}
    for i in range(N):
        if lim[i]:
            params[QOS_RPC_TYPE[i]] = lim[i] if is_iops_limit(i) else lim[i] // (1024 * 1024)
    out.append({"method": "bdev_set_qos_limit", "params": params})


# ------------------------------------------------------------------ a reactor died
def on_reactor_death(r, m, index: int) -> None:
    """Reactor ``index`` died (on reactor ``r``, replica ``m``): a QoS thread that lived
    there is forgotten (the next I/O asks the main reactor for a new one, which then
    enforces the same limits); I/O forwarded there, passthru tickets included, fails on
    its submitting thread; I/O waiting for a bounce buffer to go there fails too."""
    for bdev in m.bdevs:
        qos = bdev.qos
        if qos is not None and qos.thread_id is not None and (qos.thread_id >> TID_SHIFT) == index:
            log.error("bdev %s: its QoS thread was on reactor %d, which died; choosing another",
                      bdev.name, index)
            qos.thread_id = None
            qos.requested = False
    for token, (io, dest) in list(m.fwd.items()):
        if dest == index:
            r.send(io.ch.thread, _qos_fwd_done, (token, IO_STATUS_FAILED, 0, 0, None))
    for t in list(r.threads):
        ch = t.io_channels.get(m.mgmt_key)
        if ch is not None and ch.ctx.fwd_wait:
            r.send(t, _fail_fwd_wait, (ch.ctx,))


def _fail_fwd_wait(mgmt) -> None:
    """On the waiting thread: I/O whose QoS thread is gone (its reactor died) fails."""
    r = rx.current_reactor()
    keep = deque()
    while mgmt.fwd_wait:
        io = mgmt.fwd_wait.popleft()
        qos = io.bdev.qos
        tid = qos.thread_id if qos is not None else None
        if tid is None or (tid >> TID_SHIFT) in r.dead:
            fail_forwarded(io)
        else:
            keep.append(io)
    mgmt.fwd_wait.extend(keep)


# The rooms below call QoS through this stage (bdev/_stages.py: they cannot import it).
qos_stage.install(route=route, io_submit=io_submit, retry_fwd_wait=retry_fwd_wait,
                  enable_on_channel=enable_on_channel, abort_pending=abort_pending,
                  config_from_conf=config_from_conf, on_fini=on_fini,
                  report_open_descs=report_open_descs)
