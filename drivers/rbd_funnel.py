"""The rbd bdev's I/O across reactors: each reactor's own image handle, or one handle for the
whole app with every other reactor funnelling its I/O to it (drivers/rbd.py's data path;
docs/drivers.md, "Across reactors", has the measurements behind the choice).

**Why a funnel.**  Each ringstack reactor is a process, so a handle per reactor is a librados
client per reactor, and Ceph sees that many writers of the image.  With the image's
``exclusive-lock`` feature (Ceph's default) two writing clients pass the lock back and forth
on every burst; each handle also keeps its own librbd cache (a FLUSH through one reactor
does not flush what another reactor's handle cached) and its own watch on the header.
SPDK keeps one image handle per bdev too: its older bdev_rbd sends every I/O to the thread
that opened it (``main_td``, ``spdk_thread_send_msg`` in ``bdev_rbd_submit_request``),
the newer one submits from any thread to that one handle, which a process-per-core design
cannot do.  So, in *funnel mode*, one reactor (the *owner*) holds the only handle; the
others send it each I/O as one message and get the answer as one message back.

**The owner is reactor 0**, the main reactor: the create RPC opens the image there first
(``_build`` runs on the main thread before any replica), so the owner's handle is the one
create opened and there is nothing to hand over; reactor 0 owns every other bdev-wide fact
already (docs/architecture.md, Ownership) and lives as long as the app (its death ends the
instance), where the reactor of a bdev's first channel could come and go.

**The choice, per image** (``choose_funnel``; ``MODE`` from ``RINGSTACK_RBD_FUNNEL``):
``auto`` (default) funnels a writable image that has ``exclusive-lock`` and keeps a handle
per reactor otherwise; ``always`` / ``never`` force one way for every image.  Each replica
decides from the same inputs (the image's features, read-only, the mode), so all agree.

**The pieces.**

* :class:`ImageQueue` -- one open handle's librbd operations in flight on this reactor and
  the one fd-driven poller that collects them (the eventfd of ``rbd_set_image_notification``,
  ``rbd_poll_io_events``), on the thread that opened the handle.  Every channel of this
  reactor starts its operations on it; a completion is handed to the channel's own thread.
  No Python runs in librbd's threads.  With nothing in flight and no eventfd signal still
  owed, the poller returns without a syscall (``_poll`` says why the count is exact).
* :class:`Replica` -- one per (bdev, reactor): the mode, the queue (None on a reactor that
  funnels), the count of *this reactor's* I/O to the bdev in flight, and the RESETs
  waiting for it to reach zero.
* The funnel: :func:`forward` sends ``(origin thread, token, name, uuid, type, offset,
  length, payload)`` to the owner's main thread, :func:`_serve` starts it on the owner's
  queue, the completion sends ``(token, return value, read data)`` straight to the origin
  thread (:func:`_answer`), which completes the bdev_io there: one hop each way.

**Data crosses in the message.**  A bdev_io's buffers are arena memory only sometimes (a
``get_buf`` read, a caller's ``dma_malloc``; bdevperf's and most callers' are private
bytearrays), and the module face gives no arena handle for them.  Copying into the message
also keeps every buffer librbd writes into owned by the process that runs librbd: a
submitter that fails an I/O (its channel closed, the owner died) can reuse its buffer at
once.  READ/WRITE larger than ``CHUNK`` travel as several parts (each its own librbd
operation at the owner, the bdev_io completes when the last answers).  Measured cost in
docs/drivers.md.

**Failure.**  An I/O the owner fails comes back with its errno (logged on the submitting
side); a request for a bdev the owner no longer has (deleted, being deleted) is -ENODEV.
A submitter that dies: the owner's answers to it are dropped (``send`` to a dead reactor
is a no-op); the owner keeps serving.  The owner that dies: every funnelled I/O of this
reactor fails (-EIO) on its thread, and new ones fail at once.  A channel destroyed with
funnelled I/O outstanding fails it; a late answer finds no token and is dropped.  So every
I/O completes exactly once.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import select
import time

import reactor as rx
from bdev import module as bm

from . import _vbdev, rbd_lib

log = logging.getLogger("ringstack.rbd")

#: Which reactor holds the one handle of a funnelled image (see the module docstring).
OWNER = 0
#: Largest READ/WRITE payload one funnel message carries; bigger I/O goes in parts.
CHUNK = 128 * 1024
MODES = ("auto", "always", "never")
MODE = os.environ.get("RINGSTACK_RBD_FUNNEL", "auto")
if MODE not in MODES:
    log.error("RINGSTACK_RBD_FUNNEL=%r is none of %s; using auto", MODE, ", ".join(MODES))
    MODE = "auto"
#: How long closing waits for librbd to finish what is in flight (past the op timeout).
DRAIN_S = 35.0

_READ, _WRITE = bm.IO_TYPE_READ, bm.IO_TYPE_WRITE


def _state() -> dict:
    st = _vbdev.state("rbd.io")
    if not st:
        st.update(disks={}, names={}, pending={}, seq=itertools.count(1))
        rx.watch_reactor_death(_peer_died)
    return st


# ------------------------------------------------------------------- the mode
def choose_funnel(disk) -> bool:
    """Whether ``disk``'s bdev funnels every reactor's I/O to the owner (see MODE)."""
    if rx.current_reactor().n_reactors == 1 or MODE == "never":
        return False
    if MODE == "always":
        return True
    return not disk.read_only and bool(disk.features & rbd_lib.RBD_FEATURE_EXCLUSIVE_LOCK)


class Replica:
    """One rbd bdev's I/O state on one reactor."""

    __slots__ = ("disk", "name", "uuid", "funnel", "remote", "queue", "owner_tid", "busy",
                 "resets", "part_max")

    def __init__(self, disk, funnel: bool):
        r = rx.current_reactor()
        self.disk = disk
        self.name = disk.name
        self.uuid = disk.uuid
        self.funnel = funnel
        self.remote = funnel and r.index != OWNER   # this reactor sends its I/O away
        self.owner_tid = r.default_tid(OWNER)
        self.part_max = min(CHUNK, r.max_record // 2)   # a part always fits one ring record
        self.queue = None
        self.busy = 0          # this reactor's I/O to the bdev in flight (RESET waits for 0)
        self.resets = []       # (channel, bdev_io) of RESETs waiting for busy == 0


def attach(disk) -> bool:
    """At create, on the replica's thread, once the image is open and its features read:
    decide the mode; keep the handle behind a queue.  True when this reactor funnels: its
    handle is then unused, and the control side closes it (on a worker: closing waits on
    the cluster) so this reactor is no client of the image at all."""
    funnel = choose_funnel(disk)
    rep = Replica(disk, funnel)
    if not rep.remote:
        rep.queue = ImageQueue(disk.image, disk.name)
    st = _state()
    st["disks"][disk] = rep
    st["names"][disk.name] = rep
    r = rx.current_reactor()
    if r.index == OWNER and r.n_reactors > 1 and not disk.read_only:
        lock = disk.features & rbd_lib.RBD_FEATURE_EXCLUSIVE_LOCK
        if funnel:
            log.info("rbd %s: every reactor's I/O goes through reactor %d's image handle%s",
                     disk.name, OWNER, " (the image has exclusive-lock)" if lock else "")
        elif lock:
            log.warning("rbd %s: image %s/%s has exclusive-lock and RINGSTACK_RBD_FUNNEL=never: "
                        "writes from several reactors pass the lock between their clients "
                        "(docs/drivers.md)", disk.name, disk.pool_name, disk.rbd_name)
    return rep.remote


def replica_of(disk) -> Replica:
    return _state()["disks"][disk]


def detach(disk, then=None) -> None:
    """At destruct (before the image closes): later requests for the bdev are answered
    -ENODEV at once; what is in flight on this replica's handle finishes first (the owner
    answers every funnelled request it holds), its poller stops, then ``then()``.  The
    wait is the queue poller's, not a blocking one: the reactor goes on serving."""
    st = _state()
    rep = st["disks"].pop(disk, None)
    q = None
    if rep is not None:
        if st["names"].get(rep.name) is rep:
            del st["names"][rep.name]
        q, rep.queue = rep.queue, None
    if q is not None:
        q.close(then)
    elif then is not None:
        then()


# ------------------------------------------------------------------ the queue
class ImageQueue:
    """The librbd operations in flight on one image handle of this reactor."""

    __slots__ = ("image", "thread", "poller", "ops", "_tags", "_owed", "closed", "_closing",
                 "_deadline_poller")

    def __init__(self, image, name):
        self.image = image
        self.thread = rx.get_thread()
        self.ops = {}                  # tag -> (on_done, ctx, what pins the buffers)
        self._tags = itertools.count(1)
        self._owed = 0
        self.closed = False
        self._closing = None           # (then, deadline) while close waits for self.ops
        self._deadline_poller = None
        self.poller = rx.poller_register(self._poll, None, 0, f"rbd_{name}", fd=image.efd)

    def start(self, call, args, on_done, ctx, keep=None) -> int:
        """``call(handle, *args, completion)`` (an ``rbd_aio_*``); ``on_done(ctx, ret)``
        runs on this queue's thread when librbd finishes it.  A negative errno when
        librbd refused it (nothing will call back)."""
        tag = next(self._tags)
        try:
            c = self.image.completion(tag)
        except OSError as exc:
            return -(exc.errno or errno.ENOMEM)
        rc = call(self.image.handle, *args, c)
        if rc < 0:
            self.image.release(c)
            return rc
        self.ops[tag] = (on_done, ctx, keep)
        return 0

    def _poll(self, _arg) -> int:
        # librbd queues a finished completion, then signals the eventfd once for it
        # (librbd/io/AioCompletion.cc complete_event_socket), so a signal may trail what
        # rbd_poll_io_events already returned.  ``_owed`` counts completions collected
        # minus signals read: while it is positive a signal is still coming, and the
        # eventfd must be read once more, or a sleeping reactor would wake on it forever.
        if not self.ops and self._owed <= 0:
            return 0
        if self.closed:
            return 0
        signals, done = self.image.collect()
        owed = self._owed + len(done) - signals
        self._owed = owed if owed > 0 else 0
        ops = self.ops
        for tag, ret in done:
            entry = ops.pop(tag, None)
            if entry is not None:
                try:
                    entry[0](entry[1], ret)
                except Exception:
                    log.exception("rbd: completion handler raised")
        if self._closing is not None and not ops:
            self._closed()
        return len(done)

    def drain(self, finished, timeout: float) -> bool:
        """Block (bounded) until ``finished()`` or nothing is in flight, collecting
        completions meanwhile: for closing, when librbd may still use buffers."""
        deadline = time.monotonic() + timeout
        while self.ops and not finished():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.image.efd], [], [], min(left, 0.1))
            self._poll(None)
        return True

    def close(self, then=None) -> None:
        """Stop once nothing is in flight, then ``then()`` (the image itself is closed
        afterwards by its owner, RbdDisk.disconnect, on a worker).  The wait is this
        queue's poller collecting completions, so the reactor keeps serving meanwhile;
        anything librbd still holds past DRAIN_S fails (its buffers stay pinned by the
        image, which rbd_close waits for)."""
        if self.closed or self._closing is not None:
            return
        self._closing = (then, time.monotonic() + DRAIN_S)
        if not self.ops:
            self._closed()
            return
        self._deadline_poller = rx.poller_register(self._check_deadline, None, 100_000,
                                                   "rbd_close_deadline")

    def _check_deadline(self, _arg) -> int:
        if self.closed or time.monotonic() < self._closing[1]:
            return 0
        log.error("rbd: %d operations still in librbd after %.0f s; failing them",
                  len(self.ops), DRAIN_S)
        for on_done, ctx, _keep in list(self.ops.values()):
            on_done(ctx, -errno.ETIMEDOUT)
        self._closed()
        return 1

    def _closed(self) -> None:
        then = self._closing[0]
        self.closed = True
        if self._deadline_poller is not None:
            rx.poller_unregister(self._deadline_poller)
            self._deadline_poller = None
        if rx.get_thread() is self.thread:
            rx.poller_unregister(self.poller)
        else:
            rx.send_msg(self.thread, rx.poller_unregister, self.poller)
        if then is not None:
            then()


def aio_call(kind, off, length, arr=None, n=0):
    """``(rbd_aio_* call, its arguments before the completion)`` for an I/O type, or
    ``(None, None)`` for one librbd cannot do."""
    lib = rbd_lib.load()[1]
    if kind == _READ:
        return lib.rbd_aio_readv, (arr, n, off)
    if kind == _WRITE:
        return lib.rbd_aio_writev, (arr, n, off)
    if kind == bm.IO_TYPE_FLUSH:
        return lib.rbd_aio_flush, ()
    if kind == bm.IO_TYPE_UNMAP:
        return lib.rbd_aio_discard, (off, length)
    if kind == bm.IO_TYPE_WRITE_ZEROES and rbd_lib.has_write_zeroes():
        return _write_zeroes, (off, length)
    return None, None


def _write_zeroes(handle, off, length, c):
    return rbd_lib.load()[1].rbd_aio_write_zeroes(handle, off, length, c, 0, 0)


# ------------------------------------------------------------------ RESET
def queue_reset(ch, io) -> None:
    """RESET (on the channel's thread): complete once this reactor has none of its own
    I/O to the bdev in flight -- local or funnelled (librbd cannot cancel; SPDK's bdev_rbd
    waits for the bdev's queue depth the same way)."""
    rep = ch.rep
    rep.resets.append((ch, io))
    if not rep.busy:
        rx.send_msg(ch.thread, finish_resets, rep)


def finish_resets(rep) -> None:
    """Complete the waiting RESETs of ``rep`` if nothing is in flight (each on its thread)."""
    if rep.busy or not rep.resets:
        return
    resets, rep.resets = rep.resets, []
    me = rx.get_thread()
    for ch, io in resets:
        if ch.thread is me:
            io.complete(bm.IO_STATUS_SUCCESS)
        else:
            rx.send_msg(ch.thread, io.complete, bm.IO_STATUS_SUCCESS)


# ------------------------------------------------------------------ the funnel
class _Funnelled:
    """A bdev_io sent to the owner, in ``parts`` messages (one unless READ/WRITE > CHUNK)."""

    __slots__ = ("ch", "io", "tokens", "left", "ret")

    def __init__(self, ch, io):
        self.ch = ch
        self.io = io
        self.tokens = []
        self.left = 0
        self.ret = 0


def forward(ch, io, kind, off, length) -> None:
    """On a reactor that funnels: send ``io`` to the owner; it completes on this thread
    when the owner answers (or fails if the owner cannot: it died, the bdev went)."""
    rep = ch.rep
    st = _state()
    rec = _Funnelled(ch, io)
    ch.inflight[io] = rec
    rep.busy += 1
    r = rx.current_reactor()
    step = rep.part_max
    if length > step and (kind == _READ or kind == _WRITE):
        parts = [(p, min(step, length - p)) for p in range(0, length, step)]
    else:
        parts = ((0, length),)      # the common case: one part, no list built
    data = _gather(io, length) if kind == _WRITE else None
    origin = ch.thread.id
    pending = st["pending"]
    rec.left = len(parts)
    for poff, plen in parts:
        token = next(st["seq"])
        pending[token] = (rec, poff, plen)
        rec.tokens.append(token)
        payload = data[poff:poff + plen] if data is not None else None
        if OWNER in r.dead or r.send(rep.owner_tid, _serve, (
                origin, token, rep.name, rep.uuid, kind, off + poff, plen, payload)) < 0:
            # the owner is gone: this part fails, as a message (never inside submit)
            rx.send_msg(ch.thread, _answer, token, -errno.EIO, None)


def _gather(io, length):
    """The bytes a WRITE carries (one copy into the message)."""
    iovs = io.iovs
    if io.iovcnt == 1:
        v = memoryview(iovs[0])
        if v.format != "B" or v.ndim != 1:
            v = v.cast("B")
        return v[:length]       # copied when the message is encoded
    return memoryview(b"".join(iovs[:io.iovcnt]))[:length]


def _scatter(io, off, data) -> None:
    """Copy a READ part's ``data`` into the bdev_io's buffers at byte ``off``."""
    if io.iovcnt == 1 and off == 0:
        memoryview(io.iovs[0]).cast("B")[:len(data)] = data
        return
    pos = 0
    left = len(data)
    src = memoryview(data)
    for v in io.iovs[:io.iovcnt]:
        n = len(v)
        if pos + n <= off:
            pos += n
            continue
        start = max(0, off - pos)
        k = min(n - start, left)
        dst = v if isinstance(v, memoryview) else memoryview(v)
        dst[start:start + k] = src[:k]
        src = src[k:]
        left -= k
        pos += n
        if left == 0:
            return


@rx.remote("drivers.rbd.funnel_answer")
def _answer(token, ret, data) -> None:
    """On the submitting thread: the owner's answer for one part."""
    entry = _state()["pending"].pop(token, None)
    if entry is None:
        return          # failed already (its channel closed, or the owner died)
    rec, poff, plen = entry
    io = rec.io
    if ret >= 0 and io.type == _READ:
        if ret != plen or data is None or len(data) != plen:
            ret = -errno.EIO       # a short read is a failed read (as SPDK's bdev_rbd)
        else:
            _scatter(io, poff, data)
    if ret < 0 and not rec.ret:
        rec.ret = ret
    rec.left -= 1
    if rec.left == 0:
        rec.ch.finish(io, rec.ret)


def fail_funnelled(ch, ret) -> None:
    """Fail every funnelled I/O of channel ``ch`` now (on its thread); answers that come
    later find no token and are dropped."""
    pending = _state()["pending"]
    for io, rec in list(ch.inflight.items()):
        if isinstance(rec, _Funnelled):
            for token in rec.tokens:
                pending.pop(token, None)
            ch.finish(io, ret)


def _peer_died(index) -> None:
    """Reactor ``index`` died (run on this reactor): if it was the owner, every funnelled
    I/O here fails on its own thread.  (A dead submitter needs nothing: the owner's
    answers to it are dropped by ``send``.)"""
    if index != OWNER:
        return
    st = _state()
    chans = {rec.ch for rec, _o, _n in st["pending"].values()}
    if chans:
        log.error("rbd: reactor %d (the owner of funnelled images) died: failing %d I/O",
                  index, len(st["pending"]))
    r = rx.current_reactor()
    for ch in chans:
        r.send(ch.thread, fail_funnelled, (ch, -errno.EIO))


# ------------------------------------------------------------------ the owner's side
@rx.remote("drivers.rbd.funnel_submit")
def _serve(origin, token, name, uuid, kind, off, length, data) -> None:
    """On the owner's main thread: start one funnelled part on this replica's handle."""
    r = rx.current_reactor()
    rep = _state()["names"].get(name)
    if rep is None or rep.uuid != uuid or rep.queue is None:
        r.send(origin, _answer, (token, -errno.ENODEV, None))
        return
    keep = buf = None
    arr, n = None, 0
    if kind == _READ or kind == _WRITE:
        arr = (rbd_lib.Iovec * 1)()
        n = 1
        if kind == _READ:
            buf = bytearray(length)
            cbuf = (ctypes.c_char * length).from_buffer(buf)
            arr[0].base = ctypes.addressof(cbuf)
            keep = (arr, cbuf)
        else:
            if data is None or len(data) != length:
                r.send(origin, _answer, (token, -errno.EINVAL, None))
                return
            ptr = ctypes.c_char_p(data)          # points into ``data``: no copy
            arr[0].base = ctypes.cast(ptr, ctypes.c_void_p).value
            keep = (arr, ptr, data)
        arr[0].len = length
    call, args = aio_call(kind, off, length, arr, n)
    if call is None:
        r.send(origin, _answer, (token, -errno.ENOTSUP, None))
        return
    rc = rep.queue.start(call, args, _served, (origin, token, buf), keep)
    if rc < 0:
        r.send(origin, _answer, (token, rc, None))


def _served(ctx, ret) -> None:
    origin, token, buf = ctx
    data = buf if buf is not None and ret == len(buf) else None
    # A dead origin's answer is dropped here (send returns -EIO): the owner carries on.
    rx.current_reactor().send(origin, _answer, (token, ret, data))
