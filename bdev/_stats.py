"""I/O statistics: per channel, per device (all reactors' channels plus the history of
closed channels), queue-depth sampling, io_time/weighted_io_time, latency histograms.

Aggregation crosses reactors by walking with the running sums in the walk's ctx (ctx
travels by value): first every reactor's replica (closed-channel history), then every
channel.  Callbacks run on the calling thread.
"""
from __future__ import annotations

import logging

import reactor as rx
from reactor import wire

from . import _bcast
from ._registry import get_by_name
from ._stages import stats_stage
from ._types import U64, IoStat

log = logging.getLogger("ringstack.bdev.stats")

HISTOGRAM_BUCKETS = 65   # bucket i counts latencies with bit_length() == i (ns)


def get_io_stat(bdev, ch):
    """spdk_bdev_get_io_stat: a copy of this channel's stats (channel's thread)."""
    return ch.ctx.stat.copy()


def _zero():
    return [0] * len(IoStat.FIELDS)


def _add(acc, values):
    return [a + b for a, b in zip(acc, values)]


#: SPDK's reset modes (enum spdk_bdev_reset_stat_mode).  IoStat has neither min/max
#: latencies nor error counters, so "maxmin" and "error" find nothing to reset and only
#: "all" zeroes anything.
RESET_MODES = ("all", "maxmin", "error", "none")


@wire.remote("bdev.stat_replica")
def _stat_replica(it) -> None:
    ctx = it.ctx
    b = get_by_name(ctx["bdev"])
    if b is not None:
        ctx["s"] = _add(ctx["s"], b.stat.to_list())
        if ctx["reset"]:
            b.stat = IoStat()
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.stat_channel")
def _stat_channel(it) -> None:
    ctx = it.ctx
    ch = it.get_channel().ctx
    ctx["s"] = _add(ctx["s"], ch.stat.to_list())
    if ctx["reset"]:
        ch.stat = IoStat()
    rx.for_each_channel_continue(it, 0)


def get_device_stat(bdev, cb, cb_arg=None, reset_mode: str = "none") -> None:
    """spdk_bdev_get_device_stat: ``cb(bdev, stat, cb_arg, rc)`` with the sum over every
    channel on every reactor, plus the channels already closed.  ``reset_mode`` "all"
    zeroes each stat in the same step that reads it (no I/O is lost in between)."""
    ctx = {"bdev": bdev.name, "s": _zero(), "reset": reset_mode == "all"}

    def channels_done(it, status):
        st = IoStat()
        st.add_list(it.ctx["s"])
        cb(bdev, st, cb_arg, 0)

    def replicas_done(it, status):
        if status:   # a reactor died under the walk: report what we have, with the error
            st = IoStat()
            st.add_list(it.ctx["s"])
            cb(bdev, st, cb_arg, status)
            return
        _bcast.for_each_channel(bdev, _stat_channel, it.ctx, channels_done)

    _bcast.for_each_reactor(_stat_replica, ctx, replicas_done)


@wire.remote("bdev.stat_reset_replica")
def _stat_reset_replica(it) -> None:
    b = get_by_name(it.ctx["bdev"])
    if b is not None:
        b.stat = IoStat()
        if b.histogram is not None:
            b.histogram = [0] * HISTOGRAM_BUCKETS
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.stat_reset_channel")
def _stat_reset_channel(it) -> None:
    ch = it.get_channel().ctx
    ch.stat = IoStat()
    if ch.histogram is not None:
        ch.histogram = [0] * HISTOGRAM_BUCKETS
    rx.for_each_channel_continue(it, 0)


def reset_device_stat(bdev, cb, cb_arg=None, mode: str = "all") -> None:
    """bdev_reset_iostat (later SPDK): zero every channel's and replica's stats;
    ``cb(bdev, cb_arg, rc)``.  Modes other than "all" have nothing to reset here
    (:data:`RESET_MODES`)."""
    if mode != "all":
        rx.send_msg(rx.get_thread(), cb, bdev, cb_arg, 0)
        return
    ctx = {"bdev": bdev.name}
    _bcast.for_each_reactor(_stat_reset_replica, ctx, lambda it, st: _bcast.for_each_channel(
        bdev, _stat_reset_channel, ctx, lambda it2, st2: cb(bdev, cb_arg, st2)))


@wire.remote("bdev.stat_per_channel")
def _stat_per_channel(it) -> None:
    ch = it.get_channel().ctx
    entry = ch.stat.to_dict()
    entry["thread_id"] = ch.thread.id
    entry["thread"] = ch.thread.name
    if it.ctx["reset"]:
        ch.stat = IoStat()
    it.ctx["channels"] = list(it.ctx["channels"]) + [entry]
    rx.for_each_channel_continue(it, 0)


def get_channels_stat(bdev, cb, cb_arg=None, reset_mode: str = "none") -> None:
    """Per-channel iostat (SPDK's bdev_get_iostat per_channel): ``cb(bdev, [dict per
    channel], cb_arg, rc)``; ``reset_mode`` as for :func:`get_device_stat`."""
    _bcast.for_each_channel(bdev, _stat_per_channel,
                            {"bdev": bdev.name, "channels": [], "reset": reset_mode == "all"},
                        lambda it, st: cb(bdev, list(it.ctx["channels"]), cb_arg, st))


# ----------------------------------------------------------------- queue depth
@wire.remote("bdev.qd_channel")
def _qd_channel(it) -> None:
    it.ctx["qd"] = it.ctx["qd"] + it.get_channel().ctx.io_outstanding
    rx.for_each_channel_continue(it, 0)


class _QdCpl:
    __slots__ = ("bdev",)

    def __init__(self, bdev):
        self.bdev = bdev

    def __call__(self, it, status) -> None:
        b = self.bdev
        b.qd_walk_busy = False
        b.measured_queue_depth = it.ctx["qd"]
        if b.measured_queue_depth:
            b.io_time += b.period
            b.weighted_io_time += b.period * b.measured_queue_depth


def _calculate_qd(bdev) -> int:
    if bdev.qd_walk_busy:
        return 0   # the previous sample is still walking: do not pile walks up
    bdev.qd_walk_busy = True
    _bcast.for_each_channel(bdev, _qd_channel, {"bdev": bdev.name, "qd": 0}, _QdCpl(bdev))
    return 1


def set_qd_sampling_period(bdev, period: int) -> None:
    """spdk_bdev_set_qd_sampling_period (µs; 0 stops): a poller on the calling thread
    sums io_outstanding over every channel each period."""
    bdev.period = period
    if bdev.qd_poller is not None:
        stop_qd(bdev)
        bdev.measured_queue_depth = U64 - 1
    if period:
        bdev.qd_poller = rx.poller_register(_calculate_qd, bdev, period, name=f"qd_{bdev.name}")


def stop_qd(bdev) -> None:
    p = bdev.qd_poller
    bdev.qd_poller = None
    if p is not None:
        if p.thread is rx.get_thread():
            rx.poller_unregister(p)
        else:
            rx.send_msg(p.thread, rx.poller_unregister, p)


def get_qd(bdev):
    return bdev.measured_queue_depth


def get_qd_sampling_period(bdev):
    return bdev.period


def get_io_time(bdev):
    return bdev.io_time


def get_weighted_io_time(bdev):
    return bdev.weighted_io_time


# ----------------------------------------------------------------- histograms
def histogram_add(ch, lat_ns: int) -> None:
    ch.histogram[lat_ns.bit_length() if lat_ns < (1 << 64) else 64] += 1


def histogram_fold(bdev, buckets) -> None:
    """A closed channel's histogram goes into its replica's history (as its iostat does),
    so histogram_get keeps counting it."""
    h = bdev.histogram
    if h is None:
        bdev.histogram = list(buckets)
    else:
        bdev.histogram = [a + b for a, b in zip(h, buckets)]


@wire.remote("bdev.hist_enable_replica")
def _hist_enable_replica(it) -> None:
    b = get_by_name(it.ctx["bdev"])
    if b is not None:
        on = bool(it.ctx["on"])
        b.histogram_enabled = on
        if not on:
            b.histogram = None           # disabling drops the history, as it drops channels'
        elif b.histogram is None:
            b.histogram = [0] * HISTOGRAM_BUCKETS
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.hist_enable_channel")
def _hist_enable_channel(it) -> None:
    ch = it.get_channel().ctx
    if it.ctx["on"]:
        if ch.histogram is None:
            ch.histogram = [0] * HISTOGRAM_BUCKETS
    else:
        ch.histogram = None
    rx.for_each_channel_continue(it, 0)


def histogram_enable(bdev, cb, cb_arg=None, enable: bool = True) -> None:
    """spdk_bdev_histogram_enable: latency histograms on every channel of every reactor;
    ``cb(cb_arg, rc)``."""
    ctx = {"bdev": bdev.name, "on": bool(enable)}
    _bcast.for_each_reactor(_hist_enable_replica, ctx, lambda it, st: _bcast.for_each_channel(
        bdev, _hist_enable_channel, ctx, lambda it2, st2: cb(cb_arg, st2)))


@wire.remote("bdev.hist_get_channel")
def _hist_get_channel(it) -> None:
    h = it.get_channel().ctx.histogram
    if h is not None:
        it.ctx["b"] = [a + b for a, b in zip(it.ctx["b"], h)]
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.hist_get_replica")
def _hist_get_replica(it) -> None:
    b = get_by_name(it.ctx["bdev"])
    if b is not None and b.histogram is not None:
        it.ctx["b"] = [a + c for a, c in zip(it.ctx["b"], b.histogram)]
    rx.for_each_channel_continue(it, 0)


def histogram_get(bdev, cb, cb_arg=None) -> None:
    """spdk_bdev_histogram_get: ``cb(cb_arg, rc, buckets)``; bucket i counts I/O whose
    latency in ns has bit length i (so [2**(i-1), 2**i) ns).  -EFAULT if disabled.  Sums
    every reactor's closed channels (folded in when each was destroyed) and every live
    channel, since the histogram was enabled or the stats last reset."""
    if not bdev.histogram_enabled:
        rx.send_msg(rx.get_thread(), cb, cb_arg, -14, None)
        return

    def replicas_done(it, status):
        _bcast.for_each_channel(bdev, _hist_get_channel, it.ctx,
                            lambda it2, st: cb(cb_arg, st, list(it2.ctx["b"])))

    _bcast.for_each_reactor(_hist_get_replica, {"bdev": bdev.name, "b": [0] * HISTOGRAM_BUCKETS},
                        replicas_done)


# The rooms below call the statistics through this stage (bdev/_stages.py: they cannot
# import this module).
stats_stage.install(histogram_add=histogram_add, histogram_fold=histogram_fold, stop_qd=stop_qd,
                    set_qd_sampling_period=set_qd_sampling_period)
