"""Completion: io_complete (the module's call; inlined for the common case), the
deferred batches (completions never run inside submit), the NOMEM retry (and later
SPDK's nomem poller), failing queued I/O (``_abort_queued_io``/``_abort_buf_io``, for a
channel destroy or a reset), and the status getters (NVMe/SCSI status, iovec, thread,
submit tsc).  Low in the DAG: it imports only the types and the stages -- the latency
histogram is the statistics stage's, a reset's completion the reset stage's
(_stages.py).
"""
from __future__ import annotations

import logging
from collections import deque

import reactor as rx

from ._const import (IO_STATUS_FAILED, IO_STATUS_NOMEM, IO_STATUS_NVME_ERROR,
                     IO_STATUS_PENDING, IO_STATUS_SCSI_ERROR, IO_STATUS_SUCCESS, IO_TYPE_NAMES,
                     IO_TYPE_READ, IO_TYPE_RESET, IO_TYPE_UNMAP, IO_TYPE_WRITE,
                     NOMEM_RETRY_PERIOD_US, NOMEM_THRESHOLD_COUNT, NVME_SC_INTERNAL_DEVICE_ERROR,
                     NVME_SC_SUCCESS, NVME_SCT_GENERIC, SCSI_ASC_NO_ADDITIONAL_SENSE,
                     SCSI_ASCQ_CAUSE_NOT_REPORTABLE, SCSI_SENSE_ABORTED_COMMAND,
                     SCSI_SENSE_NO_SENSE, SCSI_STATUS_CHECK_CONDITION, SCSI_STATUS_GOOD)
from ._stages import reset_stage, stats_stage
from ._types import U64, BdevIo

log = logging.getLogger("ringstack.bdev")


def _abort_buf_io(queue, ch) -> None:
    keep = deque()
    while queue:
        io = queue.popleft()
        if io.ch is ch:
            io_complete(io, IO_STATUS_FAILED)
        else:
            keep.append(io)
    queue.extend(keep)


def _abort_queued_io(queue, ch) -> None:
    for io in [x for x in queue if x.ch is ch]:
        queue.remove(io)
        # io_complete assumes the I/O was submitted to the module: account for the
        # decrement it will do.
        if io.type != IO_TYPE_RESET:
            ch.io_outstanding += 1
            ch.shared_resource.io_outstanding += 1
        io_complete(io, IO_STATUS_FAILED)


# ===================================================================== completion
def _run_deferred(mgmt) -> None:
    batch = mgmt.deferred
    mgmt.deferred = []
    mgmt.deferred_scheduled = False
    for io in batch:
        # Each completion is isolated: a callback that raises must not lose the rest of
        # the batch (try costs nothing in 3.11 when nothing raises).
        try:
            # The common case, _io_complete inlined (one call less per I/O: malloc
            # completes every read and write inside submit, so they all come this way):
            # a successful read or write, out of submit, on its own thread, no proxy.
            t = io.type
            if (io.status != IO_STATUS_SUCCESS or io.in_submit_request or io.proxy
                    or io.io_submit_ch is not None or (t != IO_TYPE_WRITE and t != IO_TYPE_READ)):
                _io_complete(io)
                continue
            ch = io.ch
            st = ch.stat
            lat = ch.clock() - io.submit_tsc
            if t == IO_TYPE_WRITE:
                st.bytes_written += io.num_blocks * io.bdev.blocklen
                st.num_write_ops += 1
                st.write_latency_ticks += lat
            else:
                st.bytes_read += io.num_blocks * io.bdev.blocklen
                st.num_read_ops += 1
                st.read_latency_ticks += lat
            h = ch.histogram
            if h is not None:
                h[lat.bit_length() if lat < U64 else 64] += 1
            io.cb(io, True, io.caller_ctx)
        except Exception:
            callback_raised(io)


def callback_raised(io) -> None:
    """Log a completion callback that raised (from a batch that goes on with the rest)."""
    bdev = getattr(io, "bdev", None)
    log.exception("completion callback of %s I/O on bdev %s raised; continuing the batch",
                  IO_TYPE_NAMES.get(getattr(io, "type", None), "?"),
                  getattr(bdev, "name", "?"))


def _defer(io) -> None:
    """Complete ``io`` from its thread's next deferred batch (one message per thread
    carries every completion deferred until then)."""
    mgmt = io.ch.mgmt
    mgmt.deferred.append(io)
    if not mgmt.deferred_scheduled:
        mgmt.deferred_scheduled = True
        rx.send_msg(mgmt.thread, _run_deferred, mgmt)


def _io_complete(io) -> None:
    if io.in_submit_request or io.io_submit_ch is not None:
        # Back to the submitting thread (QoS), and never inside submit: a callback that
        # submits again must not recurse.
        if io.io_submit_ch is not None:
            io.ch = io.io_submit_ch
            io.io_submit_ch = None
        mgmt = io.ch.mgmt      # _defer(io), inlined: malloc completes every I/O in submit
        mgmt.deferred.append(io)
        if not mgmt.deferred_scheduled:
            mgmt.deferred_scheduled = True
            rx.send_msg(mgmt.thread, _run_deferred, mgmt)
        return
    ch = io.ch
    if io.status == IO_STATUS_SUCCESS and not io.proxy:
        t = io.type
        if t == IO_TYPE_READ:
            st = ch.stat
            st.bytes_read += io.num_blocks * io.bdev.blocklen
            st.num_read_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.read_latency_ticks += lat
            if ch.histogram is not None:
                stats_stage.histogram_add(ch, lat)
        elif t == IO_TYPE_WRITE:
            st = ch.stat
            st.bytes_written += io.num_blocks * io.bdev.blocklen
            st.num_write_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.write_latency_ticks += lat
            if ch.histogram is not None:
                stats_stage.histogram_add(ch, lat)
        elif t == IO_TYPE_UNMAP:
            st = ch.stat
            st.bytes_unmapped += io.num_blocks * io.bdev.blocklen
            st.num_unmap_ops += 1
            st.unmap_latency_ticks += ch.clock() - io.submit_tsc
    io.cb(io, io.status == IO_STATUS_SUCCESS, io.caller_ctx)


def _ch_retry_io(ch) -> None:
    _sr_retry_io(ch.shared_resource)


def _sr_retry_io(sr) -> None:
    """The seed's _spdk_bdev_ch_retry_io, on the shared resource (its queue may hold I/O
    of several bdevs sharing the module channel)."""
    if sr.io_outstanding > sr.nomem_threshold:
        # Let more I/O complete first: some modules cannot take a new I/O inside a
        # completion, and a big I/O may need several small ones to finish.
        return
    q = sr.nomem_io
    while q:
        io = q.popleft()
        io.ch.io_outstanding += 1
        sr.io_outstanding += 1
        io.status = IO_STATUS_PENDING
        io.bdev._submit(io.ch.channel, io)
        if io.status == IO_STATUS_NOMEM:
            break


def _nomem_poller(sr) -> int:
    """Later SPDK's bdev_no_mem_poller: nothing was outstanding when an I/O hit NOMEM, so
    no completion will retry the queue; retry it from here.  One-shot: re-registered only
    if the queue is still parked with nothing outstanding."""
    rx.poller_unregister(sr.nomem_poller)
    sr.nomem_poller = None
    if sr.nomem_io:
        _sr_retry_io(sr)
    # a retried I/O that hit NOMEM again may have registered a new poller already
    if sr.nomem_io and sr.io_outstanding == 0 and sr.nomem_poller is None:
        sr.nomem_poller = rx.poller_register(_nomem_poller, sr, NOMEM_RETRY_PERIOD_US,
                                             name="bdev_nomem_retry")
    return rx.POLLER_BUSY


def io_complete(io, status) -> None:
    """spdk_bdev_io_complete (module side, on the I/O's thread).  Also ``BdevIo.complete``.

    The hot path: the common case (a read or write completed outside submit, on its own
    thread) is inlined down to the stats and the user's callback; the rest goes through
    _io_complete."""
    io.status = status
    t = io.type
    if t == IO_TYPE_RESET:
        reset_stage.complete(io, status)   # _reset.py: unfreeze every channel, or complete
        return
    ch = io.ch
    sr = ch.shared_resource
    ch.io_outstanding -= 1
    sr.io_outstanding -= 1
    if status == IO_STATUS_NOMEM:
        sr.nomem_io.appendleft(io)
        # Retry after NOMEM_THRESHOLD_COUNT completions, or half the queue for
        # shallow queues.
        sr.nomem_threshold = max(sr.io_outstanding // 2, sr.io_outstanding - NOMEM_THRESHOLD_COUNT)
        if sr.io_outstanding == 0 and sr.nomem_poller is None:
            # No completion will come to retry it (e.g. queue depth 1): later SPDK's poller.
            sr.nomem_poller = rx.poller_register(_nomem_poller, sr, NOMEM_RETRY_PERIOD_US,
                                                 name="bdev_nomem_retry")
        return
    if sr.nomem_io:
        _sr_retry_io(sr)
    if io.in_submit_request and io.io_submit_ch is None:
        # Completed inside its submit (malloc, null: every I/O): the thread's next
        # deferred batch completes it (_io_complete's first branch, inlined).
        mgmt = ch.mgmt
        mgmt.deferred.append(io)
        if not mgmt.deferred_scheduled:
            mgmt.deferred_scheduled = True
            rx.send_msg(mgmt.thread, _run_deferred, mgmt)
        return
    if io.in_submit_request or io.io_submit_ch is not None or io.proxy:
        _io_complete(io)
        return
    if status == IO_STATUS_SUCCESS:
        if t == IO_TYPE_READ:
            st = ch.stat
            st.bytes_read += io.num_blocks * io.bdev.blocklen
            st.num_read_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.read_latency_ticks += lat
            h = ch.histogram
            if h is not None:
                h[lat.bit_length() if lat < U64 else 64] += 1
        elif t == IO_TYPE_WRITE:
            st = ch.stat
            st.bytes_written += io.num_blocks * io.bdev.blocklen
            st.num_write_ops += 1
            lat = ch.clock() - io.submit_tsc
            st.write_latency_ticks += lat
            h = ch.histogram
            if h is not None:
                h[lat.bit_length() if lat < U64 else 64] += 1
        elif t == IO_TYPE_UNMAP:
            st = ch.stat
            st.bytes_unmapped += io.num_blocks * io.bdev.blocklen
            st.num_unmap_ops += 1
            st.unmap_latency_ticks += ch.clock() - io.submit_tsc
        io.cb(io, True, io.caller_ctx)
    else:
        io.cb(io, False, io.caller_ctx)


def io_complete_scsi_status(io, sc, sk, asc, ascq) -> None:
    if sc == SCSI_STATUS_GOOD:
        io.status = IO_STATUS_SUCCESS
    else:
        io.status = IO_STATUS_SCSI_ERROR
        io.scsi_sc, io.scsi_sk, io.scsi_asc, io.scsi_ascq = sc, sk, asc, ascq
    io_complete(io, io.status)


def io_get_scsi_status(io):
    """(sc, sk, asc, ascq) for any completed I/O (NVMe errors translated)."""
    s = io.status
    if s == IO_STATUS_SUCCESS:
        return (SCSI_STATUS_GOOD, SCSI_SENSE_NO_SENSE, SCSI_ASC_NO_ADDITIONAL_SENSE,
                SCSI_ASCQ_CAUSE_NOT_REPORTABLE)
    if s == IO_STATUS_NVME_ERROR:
        from ._scsi_nvme import translate
        return translate(io.nvme_sct, io.nvme_sc)
    if s == IO_STATUS_SCSI_ERROR:
        return (io.scsi_sc, io.scsi_sk, io.scsi_asc, io.scsi_ascq)
    return (SCSI_STATUS_CHECK_CONDITION, SCSI_SENSE_ABORTED_COMMAND, SCSI_ASC_NO_ADDITIONAL_SENSE,
            SCSI_ASCQ_CAUSE_NOT_REPORTABLE)


def io_complete_nvme_status(io, sct, sc) -> None:
    if sct == NVME_SCT_GENERIC and sc == NVME_SC_SUCCESS:
        io.status = IO_STATUS_SUCCESS
    else:
        io.nvme_sct = sct
        io.nvme_sc = sc
        io.status = IO_STATUS_NVME_ERROR
    io_complete(io, io.status)


def io_get_nvme_status(io):
    """(sct, sc) for any completed I/O."""
    if io.status == IO_STATUS_NVME_ERROR:
        return io.nvme_sct, io.nvme_sc
    if io.status == IO_STATUS_SUCCESS:
        return NVME_SCT_GENERIC, NVME_SC_SUCCESS
    return NVME_SCT_GENERIC, NVME_SC_INTERNAL_DEVICE_ERROR


def io_get_iovec(io):
    if io is None:
        return None, 0
    if io.type in (IO_TYPE_READ, IO_TYPE_WRITE):
        return io.iovs, io.iovcnt
    return None, 0


def io_get_thread(io):
    return io.ch.thread


def io_get_submit_tsc(io) -> int:
    """spdk_bdev_io_get_submit_tsc: when the layer accepted this I/O for submission, in
    ns of the reactor's clock (``reactor.now_ns()``; the mock clock in deterministic
    mode) -- the timestamp the layer's own latency stats start from, read once per I/O
    anyway.  A completion callback can take ``now_ns() - io_get_submit_tsc(io)`` as the
    I/O's latency without reading the clock at submit time too.  It includes time
    queued under QoS or on the NOMEM queue; for a split I/O or emulated write zeroes it
    is the parent's submission.  Valid from submission until free_io."""
    return io.submit_tsc


# The module's completion call is the hot path: bind it straight to io_complete (no extra
# method frame).  The other module-author methods of this room are bound the same way
# (BdevIo lives in _types.py, below: it cannot call up into this room).
BdevIo.complete = io_complete
BdevIo.complete_nvme_status = io_complete_nvme_status
BdevIo.complete_scsi_status = io_complete_scsi_status
BdevIo.get_nvme_status = io_get_nvme_status
BdevIo.get_scsi_status = io_get_scsi_status
BdevIo.get_iovec = io_get_iovec
