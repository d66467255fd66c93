"""A thread's channel to a bdev (spdk_bdev_channel): get/put_io_channel, and the
io_device's create and destroy callbacks the registry registers for each bdev.  Create
finds or makes the thread's shared resource for the module channel and enables QoS on the
channel (through the QoS stage); destroy folds the channel's stats into the bdev (the
histogram through the statistics stage) and fails what is still queued on it.
"""
from __future__ import annotations

import reactor as rx

from ._complete import _abort_buf_io, _abort_queued_io
from ._stages import qos_stage, stats_stage
from ._types import BdevChannel, SharedResource


# ===================================================================== channels
def get_io_channel(desc):
    """spdk_bdev_get_io_channel: this thread's channel to the desc's bdev (or None)."""
    ch = rx.get_io_channel(desc.bdev)
    if ch is not None:
        ch.ctx.io_ch = ch
    return ch


def put_io_channel(ch) -> None:
    rx.put_io_channel(ch)


def _channel_create(bdev):
    ch = BdevChannel(bdev)
    ch.thread = rx.get_thread()
    ch.clock = ch.thread.reactor.now
    ch.channel = bdev.fn_table.get_io_channel(bdev.ctxt)
    if ch.channel is None:
        raise RuntimeError(f"module of {bdev.name} gave no io_channel")
    m = bdev.mgr
    mgmt_io_ch = rx.get_io_channel(m.mgmt_key)
    if mgmt_io_ch is None:
        rx.put_io_channel(ch.channel)
        raise RuntimeError("no bdev management channel")
    mgmt = mgmt_io_ch.ctx
    for sr in mgmt.shared_resources:
        if sr.shared_ch is ch.channel:
            rx.put_io_channel(mgmt_io_ch)
            sr.ref += 1
            break
    else:
        sr = SharedResource(mgmt, ch.channel)
        mgmt.shared_resources.append(sr)
        ch.mgmt_io_ch = mgmt_io_ch
    ch.shared_resource = sr
    ch.mgmt = mgmt
    if bdev.histogram_enabled:
        ch.histogram = [0] * 65
    qos_stage.enable_on_channel(bdev, ch)
    return ch


def _channel_destroy(bdev, ch) -> None:
    # The channel's history goes into the bdev so device stats keep it (the histogram too).
    bdev.stat.add(ch.stat)
    if ch.histogram is not None and bdev.histogram_enabled:
        stats_stage.histogram_fold(bdev, ch.histogram)
    sr = ch.shared_resource
    mgmt = sr.mgmt_ch
    _abort_queued_io(ch.queued_resets, ch)
    _abort_queued_io(sr.nomem_io, ch)
    _abort_buf_io(mgmt.need_buf_small, ch)
    _abort_buf_io(mgmt.need_buf_large, ch)
    qos_stage.abort_pending(bdev, ch)
    rx.put_io_channel(ch.channel)
    sr.ref -= 1
    if sr.ref == 0:
        if sr.nomem_poller is not None:
            rx.poller_unregister(sr.nomem_poller)
            sr.nomem_poller = None
        mgmt.shared_resources.remove(sr)
        # The mgmt channel reference was taken by whichever channel created sr; it is
        # the same per-thread IoChannel, so any release of one reference is equivalent.
        rx.put_io_channel(rx.get_thread().io_channels[bdev.mgr.mgmt_key])
