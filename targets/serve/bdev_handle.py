"""`BdevHandle`: a bdev opened for one connection, on the thread that serves it
(docs/targets.md, Contract 2).  Every target (NBD, SCSI for iSCSI) reaches its bdevs
through one of these, over the bdev *user* API only (bdev/api.py).

The handle owns a descriptor and an io_channel of the opening thread, so the data plane
never leaves that thread:

    request -> read/write/flush/unmap/write_zeroes/reset (byte offsets, already checked
    by the caller against the block size and the bdev's size) -> the bdev layer ->
    completion on the same thread -> free_io -> ``cb(err, scsi)``

* ``cb(err, scsi)`` runs exactly once, on the serving thread, and never inside the submit
  call (a submit the layer refuses, e.g. -EINVAL, is answered from a message, so a
  caller's parser is never re-entered).  ``err`` is 0 or a negative errno (-EIO when
  the bdev failed the I/O); ``scsi`` is None on success, and on a failed I/O the
  ``(sc, sk, asc, ascq)`` of ``api.io_get_scsi_status``, read before the bdev_io is freed
  (an NVMe or SCSI status the module set is translated by the layer; a plain failure is
  CHECK CONDITION / ABORTED COMMAND).
* ``-ENOMEM`` from a submit (no bdev_io free on this thread) queues an `IoWaitEntry` and
  resubmits from its callback; later ops queue behind it, so ops reach the bdev in the
  order they were submitted (SPDK's vbdev_passthru pattern).
* Hot-remove: the descriptor's REMOVE event becomes ``event_cb("removed")`` (once);
  RESIZE becomes ``event_cb("resized")`` after `num_blocks` was refreshed.  Outstanding
  ops still complete (the layer fails or finishes them).
* `close()` may be called with ops outstanding: the desc is closed and the channel put
  once the last of them (and any still waiting for a bdev_io) has completed.
* Buffers (`alloc`): up to 64 KiB they are `api.dma_malloc` buffers, i.e. views of this
  reactor's slice of the bdev layer's shared arena, from the same 8 KiB / 64 KiB pools as
  `get_buf`, QoS bounce copies and every other `dma_malloc` user.  Each view is cached in
  the handle by length and given back with `api.dma_free` only when the handle closes
  (so a `get_buf` waiter of this thread gets it first); a handle holds at most
  CACHE_SMALL/CACHE_LARGE of them and a quarter of each of this reactor's pools.  Such a
  buffer crosses reactors (QoS funnelling) without a bounce copy.
* Pool exhausted: `dma_malloc` answers None at once and never waits.  The handle then
  serves the request from private memory, as it does above 64 KiB and beyond its share:
  `alloc` never returns None, so a connection never stalls on buffers, nothing spins
  waiting for the pool and no request is held back or lost.  Private buffers are cached
  too (up to PRIVATE_CACHE bytes); the bdev layer bounce-copies one only if its I/O
  crosses reactors (and that copy waits for an arena buffer in the layer's own queue).
* FUA: a bdev without a volatile write cache (`has_write_cache` false) persists every
  write it completes, so FUA needs nothing; with a write cache and FLUSH support, a FUA
  write is followed by a flush of its range before it is answered (`fua_supported` is
  False when neither holds: the caller must not offer FUA then).
"""
from __future__ import annotations

import errno
import logging
from typing import Callable, Optional

import bdev.api as api
import reactor as rx

log = logging.getLogger("ringstack.serve")

EVENT_REMOVED = "removed"
EVENT_RESIZED = "resized"

_SMALL = 8 * 1024
_LARGE = 64 * 1024
#: Arena buffers one handle may hold (8 KiB and 64 KiB classes; at most a quarter of the
#: reactor's pool each).  Beyond that its buffers are private memory.
CACHE_SMALL = 256
CACHE_LARGE = 32
#: Private (non-arena) buffer bytes one handle keeps for reuse.
PRIVATE_CACHE = 16 * 1024 * 1024

_ENOMEM = -errno.ENOMEM
_EIO = -errno.EIO
_read_blocks = api.read_blocks
_write_blocks = api.write_blocks
_free_io = api.free_io
_scsi_status = api.io_get_scsi_status

Completion = Callable[[int, Optional[tuple]], None]


def _pool_share(count: int) -> int:
    """This reactor's share of an app-wide pool count (the bdev layer's split: reactor i
    gets count // n, plus one for the first count % n reactors)."""
    r = rx.current_reactor()
    n = r.n_reactors
    return count // n + (1 if r.index < count % n else 0)


class BdevHandle:
    """One (connection, bdev): desc + io_channel of the calling thread (module docstring).

    Raises OSError(errno) if the bdev does not exist (ENODEV), cannot be opened for
    writing (EPERM: claimed by a module), or has no channel here."""

    __slots__ = ("desc", "ch", "bdev", "name", "block_size", "num_blocks", "has_write_cache",
                 "fua_needs_flush", "fua_supported", "_event_cb", "_bufs", "_by_len",
                 "_private", "_taken_small", "_taken_large", "_cap_small", "_cap_large",
                 "_waiting", "_shift", "_outstanding", "_done", "closed", "released",
                 "removed", "writable")

    def __init__(self, bdev_name: str, write: bool = True, event_cb=None):
        self._event_cb = event_cb
        self.closed = self.released = self.removed = False
        rc, desc = api.open_ext(bdev_name, bool(write), self._on_bdev_event)
        if rc:
            raise OSError(-rc, f"cannot open bdev {bdev_name!r}"
                          f"{' for writing' if write else ''}: {errno.errorcode.get(-rc, rc)}")
        ch = api.get_io_channel(desc)
        if ch is None:
            api.close(desc)
            raise OSError(errno.ENOMEM, f"no io_channel for bdev {bdev_name!r}")
        self.desc = desc
        self.ch = ch
        b = self.bdev = api.desc_get_bdev(desc)
        self.name = api.get_name(b)
        self.writable = bool(write)
        self.block_size = api.get_block_size(b)
        self.num_blocks = api.get_num_blocks(b)
        self.has_write_cache = bool(api.has_write_cache(b))
        can_flush = bool(api.io_type_supported(b, api.IO_TYPE_FLUSH))
        self.fua_needs_flush = self.has_write_cache and can_flush
        self.fua_supported = (not self.has_write_cache) or can_flush
        self._shift = self.block_size.bit_length() - 1
        self._bufs: dict = {}          # id(view) -> (its free list, view, is a dma buffer)
        self._by_len: dict = {}        # length -> free views of that length
        self._private = 0              # bytes of private buffers cached
        self._taken_small = self._taken_large = 0
        opts = api.get_opts()
        self._cap_small = min(CACHE_SMALL, _pool_share(opts["small_buf_pool_size"]) // 4)
        self._cap_large = min(CACHE_LARGE, _pool_share(opts["large_buf_pool_size"]) // 4)
        self._waiting: list = []       # ops waiting for a bdev_io (ENOMEM), in order
        self._outstanding = 0          # submitted (or waiting) ops not yet completed
        self._done = self._complete    # bound once: the completion of every op

    def supports(self, io_type: int) -> bool:
        return bool(api.io_type_supported(self.bdev, io_type))

    @property
    def outstanding(self) -> int:
        """Ops submitted (or waiting for a bdev_io) whose cb has not run yet."""
        return self._outstanding

    # ------------------------------------------------------------------ events
    def _on_bdev_event(self, event, bdev, ctx) -> None:
        if self.closed:
            return
        if event == api.EVENT_REMOVE:
            if self.removed:
                return
            self.removed = True
            log.info("serve: bdev %s hot-removed under an open handle", self.name)
            if self._event_cb is not None:
                self._event_cb(EVENT_REMOVED)
        elif event == api.EVENT_RESIZE:
            self.num_blocks = api.get_num_blocks(bdev)
            if self._event_cb is not None:
                self._event_cb(EVENT_RESIZED)

    # ------------------------------------------------------------------ buffers
    def alloc(self, length: int) -> memoryview:
        """A contiguous 'B' memoryview of exactly `length` bytes (never None)."""
        # Hot path: a cached view of exactly this length (dict get + list pop).
        lst = self._by_len.get(length)
        if lst:
            return lst.pop()
        v = self._take(length) if length <= _LARGE else None
        dma = v is not None
        if not dma:
            # Private memory (over 64 KiB, this handle's share used up, or the pool
            # empty): cached too, up to PRIVATE_CACHE bytes, so a stream of 128 KiB reads
            # does not pay for a fresh zeroed allocation each time.
            v = memoryview(bytearray(length))
            if self._private + length > PRIVATE_CACHE or self.released:
                return v
            self._private += length
        if lst is None:
            lst = self._by_len[length] = []
        # A view stays bound to its length while this handle caches it.
        self._bufs[id(v)] = (lst, v, dma)
        return v

    def _take(self, length: int) -> Optional[memoryview]:
        """A dma_malloc buffer of exactly `length` bytes (<= 64 KiB), or None when this
        handle holds its share of that size class or the pool is empty (dma_malloc does
        not wait: the caller falls back to private memory)."""
        if self.released:
            return None
        if length <= _SMALL:
            if self._taken_small >= self._cap_small:
                return None
            v = api.dma_malloc(length)
            if v is not None:
                self._taken_small += 1
        else:
            if self._taken_large >= self._cap_large:
                return None
            v = api.dma_malloc(length)
            if v is not None:
                self._taken_large += 1
        return v

    def free(self, buf: memoryview) -> None:
        """Give back a buffer from `alloc` (kept for reuse until the handle closes)."""
        ent = self._bufs.get(id(buf))
        if ent is not None:
            ent[0].append(buf)

    def _release_buffers(self) -> None:
        cached = sum(len(lst) for lst in self._by_len.values())
        if cached != len(self._bufs):
            log.error("serve: bdev %s: %d buffers not returned at close", self.name,
                      len(self._bufs) - cached)
        for _lst, v, dma in self._bufs.values():
            if not dma:
                v.release()
            elif api.dma_free(v):   # releases the view; a get_buf waiter here gets it first
                log.error("serve: bdev %s: a dma buffer could not be returned", self.name)
        self._bufs.clear()
        self._by_len.clear()
        self._taken_small = self._taken_large = 0
        self._private = 0

    # ------------------------------------------------------------------ completion
    def _complete(self, bdev_io, success, cb) -> None:
        """The bdev completion (on this thread): read the SCSI status of a failure, free
        the bdev_io, answer the caller."""
        if success:
            _free_io(bdev_io)   # drops the bdev_io's references to our (arena) buffer
            self._outstanding -= 1
            cb(0, None)
        else:
            scsi = _scsi_status(bdev_io)
            _free_io(bdev_io)
            self._outstanding -= 1
            cb(_EIO, scsi)
        # after cb: a FUA chain submits its flush from it (still outstanding then)
        if self.closed and not self._outstanding:
            self._release()

    def _refused(self, rc: int, cb) -> None:
        """A submit the layer refused (not ENOMEM): answer from a message, not inside the
        caller's submit call."""
        rx.send_msg(rx.get_thread(), self._answer_refused, (rc, cb))

    def _answer_refused(self, arg) -> None:
        rc, cb = arg
        self._outstanding -= 1
        cb(rc, None)
        if self.closed and not self._outstanding:
            self._release()

    # ------------------------------------------------------------------ submission
    # Each op is (submit function, args): fn(desc, ch, *args, completion, cb).  The
    # completion context is the caller's cb (or a FUA chain), so no per-I/O object is made.
    def _go(self, fn, args, cb) -> None:
        self._outstanding += 1
        if self._waiting:                       # keep order behind earlier ENOMEM waiters
            self._waiting.append((fn, args, cb))
            return
        rc = fn(self.desc, self.ch, *args, self._done, cb)
        if rc == 0:
            return
        if rc == _ENOMEM:
            self._waiting.append((fn, args, cb))
            self._queue_wait()
            return
        self._refused(rc, cb)

    def _queue_wait(self) -> None:
        entry = api.IoWaitEntry(self.bdev, self._retry, None)
        if api.queue_io_wait(self.bdev, self.ch, entry):
            # A bdev_io is available again already (the cache refilled in between).
            rx.send_msg(rx.get_thread(), self._retry, None)

    def _retry(self, _arg=None) -> None:
        waiting = self._waiting
        while waiting:
            fn, args, cb = waiting[0]
            rc = fn(self.desc, self.ch, *args, self._done, cb)
            if rc == _ENOMEM:
                self._queue_wait()
                return
            waiting.pop(0)
            if rc:
                self._refused(rc, cb)

    def read(self, offset: int, length: int, buf, cb: Completion) -> None:
        sh = self._shift
        if not self._waiting:
            # the common case inline: one submit, no tuple of args
            rc = _read_blocks(self.desc, self.ch, buf, offset >> sh, length >> sh, self._done, cb)
            if not rc:
                self._outstanding += 1
                return
            if rc != _ENOMEM:
                self._outstanding += 1
                self._refused(rc, cb)
                return
        self._go(_read_blocks, (buf, offset >> sh, length >> sh), cb)

    def write(self, offset: int, data, cb: Completion, fua: bool = False) -> None:
        if fua and self.fua_needs_flush:
            cb = _ThenFlush(self, offset, len(data), cb)
        sh = self._shift
        if not self._waiting:
            rc = _write_blocks(self.desc, self.ch, data, offset >> sh, len(data) >> sh,
                               self._done, cb)
            if not rc:
                self._outstanding += 1
                return
            if rc != _ENOMEM:
                self._outstanding += 1
                self._refused(rc, cb)
                return
        self._go(_write_blocks, (data, offset >> sh, len(data) >> sh), cb)

    def flush(self, offset: int, length: int, cb: Completion) -> None:
        self._go(api.flush, (offset, length), cb)

    def unmap(self, offset: int, length: int, cb: Completion) -> None:
        self._go(api.unmap, (offset, length), cb)

    def write_zeroes(self, offset: int, length: int, cb: Completion) -> None:
        self._go(api.write_zeroes, (offset, length), cb)

    def reset(self, cb: Completion) -> None:
        """spdk_bdev_reset: the layer fails what is queued in every channel of the bdev,
        resets it, and ``cb`` runs after the unfreeze."""
        self._go(api.reset, (), cb)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Once.  Closes the desc and puts the channel now, or after the last outstanding
        op completed."""
        if self.closed:
            raise RuntimeError(f"BdevHandle of {self.name} closed twice")
        self.closed = True
        if not self._outstanding:
            self._release()

    def _release(self) -> None:
        if self.released:
            return
        self.released = True
        self._release_buffers()
        api.put_io_channel(self.ch)
        api.close(self.desc)

    def __repr__(self) -> str:
        return (f"<BdevHandle {self.name} outstanding={self._outstanding}"
                f"{' closed' if self.closed else ''}>")


class _ThenFlush:
    """FUA on a bdev with a write cache: after the write succeeds, flush its range, then
    answer (an outstanding op throughout: the flush is counted by its own submit)."""

    __slots__ = ("h", "offset", "length", "cb")

    def __init__(self, h, offset, length, cb):
        self.h = h
        self.offset = offset
        self.length = length
        self.cb = cb

    def __call__(self, err: int, scsi=None) -> None:
        if err:
            self.cb(err, scsi)
            return
        # the write is still counted outstanding while this runs, so the handle is open
        self.h._go(api.flush, (self.offset, self.length), self.cb)
