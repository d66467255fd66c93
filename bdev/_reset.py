"""Reset: spdk_bdev_reset and its arbitration by the main thread (one reset of a bdev
at a time across all reactors: ``_channel_start_reset``, ``_reset_ask``,
``_reset_grant``, ``_reset_finished``), the freeze and unfreeze walks, the completion of a
reset (installed as the reset stage: the completion room below calls it), and the main
replica's clean-up when a reactor dies holding a reset.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque

import reactor as rx
from reactor import wire
from reactor.reactor import TID_SHIFT

from . import _bcast
from ._bdev_io import _get_io
from ._complete import _abort_buf_io, _abort_queued_io, _io_complete
from ._const import ENOMEM, IO_STATUS_NOMEM, IO_TYPE_RESET
from ._manager import _mgr
from ._stages import qos_stage, reset_stage
from ._submit import _io_init, _submit_reset
from ._types import BDEV_CH_QOS_ENABLED, BDEV_CH_RESET_IN_PROGRESS

log = logging.getLogger("ringstack.bdev")


# ===================================================================== reset
def reset(desc, ch, cb, cb_arg=None) -> int:
    """spdk_bdev_reset: freeze every channel of the bdev (all reactors), fail the I/O
    queued in them (nomem, buffer waits, QoS), submit the reset, unfreeze; ``cb`` after
    the unfreeze.  A reset while another is in progress waits for it."""
    bdev = desc.bdev
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_RESET
    io.ch_ref = None
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = io.num_blocks = 0
    _io_init(io, bdev, cb_arg, cb)
    io.submit_tsc = channel.clock()
    channel.queued_resets.append(io)
    _channel_start_reset(channel)
    return 0


_reset_tokens = itertools.count(1)


def _channel_start_reset(ch) -> None:
    """Start ``ch``'s first queued reset once the bdev has no reset in progress.

    The reset in progress is a bdev-wide fact owned by the main thread
    (docs/architecture.md).  On one reactor the main replica *is* this one: the seed's
    check of ``bdev.reset_in_progress``.  With several, the channel asks the main
    thread, which grants one reset of the bdev at a time across all reactors in the
    order asked (``_reset_ask``); the granted channel freezes every channel everywhere,
    submits, unfreezes and reports back (``_reset_finished``), and the next one runs."""
    if not ch.queued_resets:
        return
    bdev = ch.bdev
    r = rx.current_reactor()
    if r.n_reactors == 1:
        if bdev.reset_in_progress is None:
            _run_reset(ch)
        return
    if ch.reset_token:
        return          # asked already; the grant starts the first queued one
    token = _reset_tokens.__next__()   # (the registry's next() is SPDK's bdev iterator)
    ch.reset_token = token
    bdev.mgr.reset_askers[token] = ch
    r.send(r.default_tid(0), _reset_ask, (bdev.name, rx.get_thread().id, token))


def _run_reset(ch) -> None:
    bdev = ch.bdev
    io = ch.queued_resets[0]
    bdev.reset_in_progress = io
    # Hold a channel reference for the life of the reset, so the walks below never
    # find the device gone.
    io.ch_ref = rx.get_io_channel(bdev)
    _bcast.for_each_channel(bdev, _reset_freeze_channel, {"bdev": bdev.name},
                            _ResetCpl(ch).freeze_done)


@wire.remote("bdev.reset_ask")
def _reset_ask(name, tid, token) -> None:
    """Main thread: a channel (thread ``tid``) asks to run its reset of ``name``."""
    m = _mgr(False)
    b = m.names.get(name) if m is not None else None
    if b is None:
        rx.current_reactor().send(tid, _reset_grant, (token, False))
        return
    b.reset_waiting.append((tid, token))
    if b.reset_holder is None:
        _reset_grant_next(b)


def _reset_grant_next(b) -> None:
    r = rx.current_reactor()
    while b.reset_waiting:
        tid, token = b.reset_waiting.popleft()
        if (tid >> TID_SHIFT) in r.dead:
            continue
        b.reset_holder = (tid, token)
        r.send(tid, _reset_grant, (token, True))
        return


@wire.remote("bdev.reset_grant")
def _reset_grant(token, granted) -> None:
    """On the asking channel's thread: the main thread's answer."""
    m = _mgr(False)
    ch = m.reset_askers.pop(token, None) if m is not None else None
    if ch is None:
        return
    ch.reset_token = 0
    name = ch.bdev.name
    if not granted:               # the bdev is leaving the main replica
        _abort_queued_io(ch.queued_resets, ch)
        return
    if not ch.queued_resets:      # aborted meanwhile (its channel went away)
        _send_reset_finished(name, token)
        return
    ch.bdev.reset_token = token
    _run_reset(ch)


def _send_reset_finished(name, token) -> None:
    r = rx.current_reactor()
    r.send(r.default_tid(0), _reset_finished, (name, token))


@wire.remote("bdev.reset_finished")
def _reset_finished(name, token) -> None:
    """Main thread: the granted reset is done (or was not needed); grant the next."""
    m = _mgr(False)
    b = m.names.get(name) if m is not None else None
    if b is None or b.reset_holder is None or b.reset_holder[1] != token:
        return
    b.reset_holder = None
    _reset_grant_next(b)


def _resets_on_reactor_death(r, m, index) -> None:
    """Main replica: reactor ``index`` died.  Its queued asks go; a reset it held leaves
    channels frozen on the survivors, so the main thread unfreezes them and grants the
    next reset."""
    for b in m.bdevs:
        b.reset_waiting = deque(w for w in b.reset_waiting if (w[0] >> TID_SHIFT) != index)
        holder = b.reset_holder
        if holder is not None and (holder[0] >> TID_SHIFT) == index:
            log.error("bdev %s: reactor %d died holding its reset; unfreezing", b.name, index)
            rx.send_msg(r.default_thread, _unfreeze_after_death, b, holder[1])


def _unfreeze_after_death(b, token) -> None:
    def done(it, status, b=b, token=token):
        _reset_finished(b.name, token)
    _bcast.for_each_channel(b, _unfreeze_channel, {"bdev": b.name}, done)


class _ResetCpl:
    __slots__ = ("ch", "io")

    def __init__(self, ch, io=None):
        self.ch = ch
        self.io = io

    def freeze_done(self, it, status) -> None:
        ch = self.ch
        io = ch.queued_resets.popleft()
        _submit_reset(io)

    def unfreeze_done(self, it, status) -> None:
        io = self.io
        ch = io.ch
        if io.ch_ref is not None:
            rx.put_io_channel(io.ch_ref)
            io.ch_ref = None
        token = ch.bdev.reset_token
        ch.bdev.reset_token = 0
        _io_complete(io)
        if token:
            _send_reset_finished(ch.bdev.name, token)
            _channel_start_reset(ch)      # this channel's next queued reset asks again


def _reset_io_complete(io, status) -> None:
    """io_complete of a reset (the completion room calls it through the reset stage; the
    status is set): the reset in progress unfreezes every channel, then completes."""
    bdev = io.bdev
    if status == IO_STATUS_NOMEM:
        log.error("NOMEM returned for reset")
    if io is bdev.reset_in_progress:
        bdev.reset_in_progress = None
        _bcast.for_each_channel(bdev, _unfreeze_channel, {"bdev": bdev.name}, _ResetCpl(io.ch, io).unfreeze_done)
        return
    _io_complete(io)


@wire.remote("bdev.reset_freeze")
def _reset_freeze_channel(it) -> None:
    channel = it.get_channel().ctx
    bdev = channel.bdev
    channel.flags |= BDEV_CH_RESET_IN_PROGRESS
    mgmt = channel.mgmt
    tmp = deque()
    if channel.flags & BDEV_CH_QOS_ENABLED and bdev.qos is not None and bdev.qos.ch is channel:
        tmp, bdev.qos.queued = bdev.qos.queued, deque()
    _abort_queued_io(channel.shared_resource.nomem_io, channel)
    _abort_buf_io(mgmt.need_buf_small, channel)
    _abort_buf_io(mgmt.need_buf_large, channel)
    qos_stage.abort_pending(bdev, channel)
    _abort_queued_io(tmp, channel)
    rx.for_each_channel_continue(it, 0)


@wire.remote("bdev.reset_unfreeze")
def _unfreeze_channel(it) -> None:
    ch = it.get_channel().ctx
    ch.flags &= ~BDEV_CH_RESET_IN_PROGRESS
    if ch.queued_resets and ch.thread.reactor.n_reactors == 1:
        _channel_start_reset(ch)          # the seed; with several reactors each asked main
    rx.for_each_channel_continue(it, 0)


# The completion room (below this one) hands a module's reset completion here.
reset_stage.install(complete=_reset_io_complete)
