"""`BdevExport`: an NBD export over a bdev, through the bdev *user* API (bdev/api.py).

One `BdevExport` object exists per reactor (each reactor holds its own replica of the bdev
registry, docs/architecture.md "Ownership"); the NBD server opens one `BdevHandle` per connection,
on the reactor thread that serves the connection.  The handle owns a descriptor and an
io_channel of that thread, so the data plane never leaves the thread:

    NBD request -> read/write/flush/unmap/write_zeroes (bytes variants: the server has
    already checked alignment to the bdev block size) -> cb(bdev_io, success, ctx) on the
    same thread -> free_io -> the server's cb(errno)

* ``-ENOMEM`` from a submit (no bdev_io free on this thread) queues an `IoWaitEntry` and
  resubmits from its callback, in order (SPDK's vbdev_passthru pattern).
* Hot-remove: the descriptor's REMOVE event becomes the server's ``"removed"`` event; the
  server answers in-flight requests with ESHUTDOWN and closes the connection; the handle
  closes the desc and puts the channel once every submitted op has completed.
* Buffers (`alloc`): up to 64 KiB they are `api.dma_malloc` buffers, i.e. views of this
  reactor's slice of the bdev layer's shared arena, from the same 8 KiB / 64 KiB pools as
  `get_buf`, QoS bounce copies and every other `dma_malloc` user.  Each view is cached in
  the handle by length and given back with `api.dma_free` only when the connection ends
  (so a `get_buf` waiter of this thread gets it first); a connection holds at most
  CACHE_SMALL/CACHE_LARGE of them and a quarter of each of this reactor's pools.  Such a
  buffer crosses reactors (QoS funnelling) without a bounce copy.
* Pool exhausted: `dma_malloc` answers None at once and never waits.  The handle then
  serves the request from private memory, as it does above 64 KiB and beyond its share:
  `alloc` never returns None, so a connection never stalls on buffers, nothing spins
  waiting for the pool and no request is held back or lost.  Private buffers are cached
  too (up to PRIVATE_CACHE bytes); the bdev layer bounce-copies one only if its I/O
  crosses reactors (and that copy waits for an arena buffer in the layer's own queue).
* FUA: a bdev without a volatile write cache (`has_write_cache` false) persists every write
  it completes, so FUA needs nothing; with a write cache and FLUSH support, a FUA write or
  trim is followed by a flush before it is answered; otherwise FUA is not advertised.
* CAN_MULTI_CONN is advertised: every connection reaches the same bdev, whose flush covers
  all completed writes whoever submitted them.
"""
from __future__ import annotations

import errno
import logging
from typing import Optional

import bdev.api as api
import reactor as rx

from .backend import EVENT_REMOVED, Export, ExportHandle

log = logging.getLogger("ringstack.nbd")

_SMALL = 8 * 1024
_LARGE = 64 * 1024
#: Arena buffers one connection may hold (8 KiB and 64 KiB classes; at most a quarter of
#: the reactor's pool each).  Beyond that its buffers are private memory.
CACHE_SMALL = 256
CACHE_LARGE = 32
#: Private (non-arena) buffer bytes one connection keeps for reuse.
PRIVATE_CACHE = 16 * 1024 * 1024
#: The default NBD maximum payload, when the client asks (a multiple of any block size).
MAX_PAYLOAD = 32 * 1024 * 1024


def _pool_share(count: int) -> int:
    """This reactor's share of an app-wide pool count (the bdev layer's split: reactor i
    gets count // n, plus one for the first count % n reactors)."""
    r = rx.current_reactor()
    n = r.n_reactors
    return count // n + (1 if r.index < count % n else 0)


class BdevExport(Export):
    """Export bdev `bdev_name` (looked up in *this* reactor's replica) as `name`.

    Raises OSError(ENODEV) if the bdev does not exist here."""

    def __init__(self, bdev_name: str, name: Optional[str] = None, *, readonly: bool = False,
                 description: Optional[str] = None):
        b = api.get_by_name(bdev_name)
        if b is None:
            raise OSError(errno.ENODEV, f"bdev {bdev_name!r} does not exist")
        self.bdev_name = api.get_name(b)
        bs = api.get_block_size(b)
        size = bs * api.get_num_blocks(b)
        can_write = bool(api.io_type_supported(b, api.IO_TYPE_WRITE)) and not readonly
        can_flush = bool(api.io_type_supported(b, api.IO_TYPE_FLUSH))
        write_cache = bool(api.has_write_cache(b))
        super().__init__(
            name if name is not None else self.bdev_name, size,
            description=description if description is not None else
            f"bdev {self.bdev_name} ({api.get_product_name(b) or 'bdev'})",
            block_min=bs, block_preferred=max(bs, 4096), block_max=MAX_PAYLOAD,
            readonly=not can_write,
            can_flush=can_flush,
            can_trim=bool(api.io_type_supported(b, api.IO_TYPE_UNMAP)),
            can_write_zeroes=bool(api.io_type_supported(b, api.IO_TYPE_WRITE_ZEROES)),
            can_fua=(not write_cache) or can_flush,
            can_multi_conn=True)
        self.requested_readonly = readonly
        self.fua_needs_flush = write_cache and can_flush
        self.handles: list["BdevHandle"] = []

    def open(self, event_cb) -> "BdevHandle":
        """Open a desc + channel on the calling reactor thread (OSError if the bdev is gone
        or cannot be opened for writing, e.g. claimed by a module)."""
        h = BdevHandle(self, event_cb)
        self.handles.append(h)
        return h

    def info(self) -> dict:
        return {"export_name": self.name, "bdev_name": self.bdev_name, "size": self.size,
                "block_size": self.block_min, "readonly": self.readonly,
                "flags": self.transmission_flags()}


class BdevHandle(ExportHandle):
    """One connection's desc + io_channel (see the module docstring)."""

    __slots__ = ("export", "desc", "ch", "bdev", "_event_cb", "_bufs", "_by_len", "_private",
                 "_taken_small", "_taken_large", "_cap_small", "_cap_large", "_waiting",
                 "_shift", "closed", "removed")

    def __init__(self, export: BdevExport, event_cb):
        self.export = export
        self._event_cb = event_cb
        rc, desc = api.open_ext(export.bdev_name, not export.readonly, self._on_bdev_event)
        if rc:
            raise OSError(-rc, f"cannot open bdev {export.bdev_name!r}: {errno.errorcode.get(-rc, rc)}")
        ch = api.get_io_channel(desc)
        if ch is None:
            api.close(desc)
            raise OSError(errno.ENOMEM, f"no io_channel for bdev {export.bdev_name!r}")
        self.desc = desc
        self.ch = ch
        self.bdev = api.desc_get_bdev(desc)
        self._bufs: dict = {}          # id(view) -> (its free list, view, is a dma buffer)
        self._by_len: dict = {}        # length -> free views of that length
        self._private = 0              # bytes of private buffers cached
        self._taken_small = self._taken_large = 0
        opts = api.get_opts()
        self._cap_small = min(CACHE_SMALL, _pool_share(opts["small_buf_pool_size"]) // 4)
        self._cap_large = min(CACHE_LARGE, _pool_share(opts["large_buf_pool_size"]) // 4)
        self._waiting: list = []        # ops waiting for a bdev_io (ENOMEM), in order
        self._shift = export.block_min.bit_length() - 1
        self.closed = False
        self.removed = False

    # ------------------------------------------------------------------ events
    def _on_bdev_event(self, event, bdev, ctx) -> None:
        if event == api.EVENT_REMOVE:
            if self.removed or self.closed:
                return
            self.removed = True
            log.info("nbd: bdev %s hot-removed under export %r", self.export.bdev_name,
                     self.export.name)
            self._event_cb(EVENT_REMOVED, self.export)

    # ------------------------------------------------------------------ buffers
    def alloc(self, length: int) -> Optional[memoryview]:
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
            if self._private + length > PRIVATE_CACHE:
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
        ent = self._bufs.get(id(buf))
        if ent is not None:
            ent[0].append(buf)

    def _release_buffers(self) -> None:
        cached = sum(len(lst) for lst in self._by_len.values())
        if cached != len(self._bufs):
            log.error("nbd: export %r: %d buffers not returned at close", self.export.name,
                      len(self._bufs) - cached)
        for _lst, v, dma in self._bufs.values():
            if not dma:
                v.release()
            elif api.dma_free(v):   # releases the view; a get_buf waiter here gets it first
                log.error("nbd: export %r: a dma buffer could not be returned", self.export.name)
        self._bufs.clear()
        self._by_len.clear()
        self._taken_small = self._taken_large = 0
        self._private = 0

    # ------------------------------------------------------------------ I/O
    # Each op is (submit function, args); `_go` submits it and handles ENOMEM.  The
    # completion context is the server's cb (or a FUA chain), so no per-I/O object is made.
    def _go(self, fn, args, cb) -> None:
        if self._waiting:                       # keep order behind earlier ENOMEM waiters
            self._waiting.append((fn, args, cb))
            return
        rc = fn(self.desc, self.ch, *args, _done, cb)
        if rc == 0:
            return
        if rc == -errno.ENOMEM:
            self._waiting.append((fn, args, cb))
            self._queue_wait()
            return
        cb(-rc)                                 # EINVAL/EBADF...: the server logs it

    def _queue_wait(self) -> None:
        entry = api.IoWaitEntry(self.bdev, self._retry, None)
        rc = api.queue_io_wait(self.bdev, self.ch, entry)
        if rc:
            # A bdev_io is available again already (the cache refilled in between).
            _defer(self._retry)

    def _retry(self, _arg=None) -> None:
        waiting = self._waiting
        while waiting:
            fn, args, cb = waiting[0]
            rc = fn(self.desc, self.ch, *args, _done, cb)
            if rc == -errno.ENOMEM:
                self._queue_wait()
                return
            waiting.pop(0)
            if rc:
                cb(-rc)

    def read(self, offset, length, buf, cb):
        # The server checked alignment to block_min (the bdev block size): blocks variant.
        sh = self._shift
        if not self._waiting:
            rc = _read_blocks(self.desc, self.ch, buf, offset >> sh, length >> sh, _done, cb)
            if not rc:
                return
            if rc != _ENOMEM:
                cb(-rc)
                return
        self._go(_read_blocks, (buf, offset >> sh, length >> sh), cb)

    def write(self, offset, data, fua, cb):
        if fua and self.export.fua_needs_flush:
            cb = _ThenFlush(self, cb)
        sh = self._shift
        if not self._waiting:
            rc = _write_blocks(self.desc, self.ch, data, offset >> sh, len(data) >> sh, _done, cb)
            if not rc:
                return
            if rc != _ENOMEM:
                cb(-rc)
                return
        self._go(_write_blocks, (data, offset >> sh, len(data) >> sh), cb)

    def flush(self, cb):
        self._go(api.flush, (0, self.export.size), cb)

    def trim(self, offset, length, fua, cb):
        if fua and self.export.fua_needs_flush:
            cb = _ThenFlush(self, cb)
        self._go(api.unmap, (offset, length), cb)

    def write_zeroes(self, offset, length, fua, cb):
        if fua and self.export.fua_needs_flush:
            cb = _ThenFlush(self, cb)
        self._go(api.write_zeroes, (offset, length), cb)

    def close(self) -> None:
        assert not self.closed, "handle closed twice"
        self.closed = True
        if self._waiting:   # cannot happen (the server closes after every op completed)
            log.error("nbd: export %r closed with %d ops waiting for a bdev_io",
                      self.export.name, len(self._waiting))
        self._release_buffers()
        api.put_io_channel(self.ch)
        api.close(self.desc)
        try:
            self.export.handles.remove(self)
        except ValueError:
            pass


_read_blocks = api.read_blocks
_write_blocks = api.write_blocks
_ENOMEM = -errno.ENOMEM


class _ThenFlush:
    """FUA on a bdev with a write cache: after the write succeeds, flush, then answer."""

    __slots__ = ("h", "cb")

    def __init__(self, h, cb):
        self.h = h
        self.cb = cb

    def __call__(self, err: int) -> None:
        if err:
            self.cb(err)
            return
        h = self.h
        h._go(api.flush, (0, h.export.size), self.cb)


def _done(bdev_io, success, cb) -> None:
    """The bdev completion (on the handle's thread): free the bdev_io, answer the server."""
    api.free_io(bdev_io)   # drops the bdev_io's references to our (arena) buffer
    cb(0 if success else errno.EIO)


def _defer(fn) -> None:
    rx.send_msg(rx.get_thread(), fn, None)
