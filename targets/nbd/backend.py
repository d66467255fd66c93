"""The backend interface the NBD server serves (implemented by the bdev layer), and a
bytearray-backed `MemoryExport` for tests and debugging.

Two audiences: the NBD server only *calls* `Export.open()` and the `ExportHandle` methods;
a backend author subclasses `Export` and `ExportHandle`.

Contract for every I/O method of `ExportHandle` (read/write/flush/unmap/write_zeroes: the
shape of targets/serve's `BdevHandle`, docs/targets.md Contract 2, which `BdevExport`
hands out as is):

* `cb(err, scsi=None)` is called **exactly once**, with 0 on success or an errno
  (SPDK-style negative, or positive) on failure; NBD ignores `scsi`.  It may be called later (from a later poll of the
  owner's loop) or synchronously inside the submit call; the server handles both (a
  completion only queues a reply, it never re-enters request parsing).
* The submit call itself does not raise for I/O errors; it reports them through `cb`.
  (If it raises anyway, the server logs it and answers EIO: a backend bug is not the
  client's fault, but it must not kill the reactor.)
* After the export is removed, every outstanding operation still completes (with an
  error such as ENODEV), so that its buffer can be released.
* Data buffers come from `alloc(length)` and go back through `free(buf)`; the server
  frees a READ buffer only after the reply carrying it was sent.  `alloc` returning None
  means "out of buffers now": the server stops reading new requests on that connection
  and retries on its next poll (backpressure, not an error).  Buffers must be contiguous
  byte memoryviews (format 'B'); the bdev layer may place them in shared memory.

All calls happen on the thread (reactor) that opened the handle.
"""
from __future__ import annotations

import errno
import logging
from typing import Callable, Iterable, Iterator, Optional

from . import _proto as P

log = logging.getLogger("ringstack.nbd")

Completion = Callable[..., None]          # cb(err, scsi=None)
EventCallback = Callable[[str], None]     # event_cb("removed")

EVENT_REMOVED = "removed"


def _pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


class Export:
    """An exportable block device: geometry plus capabilities.  Subclasses implement
    `open()`.  The block sizes are validated here, once (qemu drops the connection on
    an invalid NBD_INFO_BLOCK_SIZE, so they must never reach the wire wrong)."""

    def __init__(self, name: str, size: int, *, description: str = "",
                 block_min: int = 1, block_preferred: int = 4096,
                 block_max: int = P.DEFAULT_MAX_PAYLOAD, readonly: bool = False,
                 can_flush: bool = True, can_trim: bool = True,
                 can_write_zeroes: bool = True, can_fua: bool = True,
                 can_multi_conn: bool = True):
        if not isinstance(name, str) or len(name.encode()) > P.MAX_STRING or "\0" in name:
            raise ValueError(f"invalid export name {name!r}")
        if len(description.encode()) > P.MAX_STRING:
            raise ValueError("export description longer than 4096 bytes")
        if size < 0 or size >= 1 << 63:
            raise ValueError(f"invalid export size {size}")
        if not (_pow2(block_min) and block_min <= 65536):
            raise ValueError(f"block_min {block_min} must be a power of 2 in 1..65536")
        if not (_pow2(block_preferred) and block_preferred >= max(block_min, 512)):
            raise ValueError(f"block_preferred {block_preferred} must be a power of 2 >= max(block_min, 512)")
        if not (block_max >= block_preferred and (block_max % block_min == 0 or block_max == 0xFFFFFFFF)):
            raise ValueError(f"block_max {block_max} must be >= block_preferred and a multiple of block_min")
        if size % block_min:
            raise ValueError(f"size {size} is not a multiple of block_min {block_min}")
        self.name = name
        self.size = size
        self.description = description
        self.block_min = block_min
        self.block_preferred = block_preferred
        self.block_max = block_max
        self.readonly = readonly
        self.can_flush = can_flush
        self.can_trim = can_trim and not readonly
        self.can_write_zeroes = can_write_zeroes and not readonly
        self.can_fua = can_fua
        self.can_multi_conn = can_multi_conn

    def transmission_flags(self) -> int:
        """The NBD transmission flags for this export (derived, never configured)."""
        f = P.TF_HAS_FLAGS
        if self.readonly:
            f |= P.TF_READ_ONLY
        if self.can_flush:
            f |= P.TF_SEND_FLUSH
        if self.can_fua:
            f |= P.TF_SEND_FUA
        if self.can_trim:
            f |= P.TF_SEND_TRIM
        if self.can_write_zeroes:
            f |= P.TF_SEND_WRITE_ZEROES
        if self.can_multi_conn:
            f |= P.TF_CAN_MULTI_CONN
        return f

    def open(self, event_cb: EventCallback) -> "ExportHandle":
        """Open a per-connection handle.  `event_cb(event)` is called on the opener's
        thread when the backend changes under the handle (`"removed"`).  Raises OSError
        (e.g. ENODEV) if the export cannot be opened."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} size={self.size}>"


class ExportHandle:
    """Per-connection I/O handle.  See the module docstring for the completion contract."""

    def alloc(self, length: int) -> Optional[memoryview]:
        """A writable byte buffer of exactly `length` bytes, or None when exhausted."""
        return memoryview(bytearray(length))

    def free(self, buf: memoryview) -> None:
        """Give back a buffer obtained from `alloc`."""

    def read(self, offset: int, length: int, buf: memoryview, cb: Completion) -> None:
        raise NotImplementedError

    def write(self, offset: int, data: memoryview, cb: Completion, fua: bool = False) -> None:
        raise NotImplementedError

    def flush(self, offset: int, length: int, cb: Completion) -> None:
        raise NotImplementedError

    def unmap(self, offset: int, length: int, cb: Completion) -> None:
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int, cb: Completion) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the handle.  Called once, after every submitted operation completed."""


class ExportTable:
    """Name -> Export, plus the default export served for the empty name."""

    def __init__(self, exports: Iterable[Export] = ()):
        self._by_name: dict[str, Export] = {}
        self.default_name: Optional[str] = None
        for e in exports:
            self.add(e)

    def add(self, export: Export, default: bool = False) -> None:
        if export.name in self._by_name:
            raise ValueError(f"export {export.name!r} already exists")
        self._by_name[export.name] = export
        if default or self.default_name is None:
            self.default_name = export.name

    def remove(self, name: str) -> Export:
        export = self._by_name.pop(name)
        if self.default_name == name:
            self.default_name = next(iter(self._by_name), None)
        return export

    def lookup(self, name: str) -> Optional[Export]:
        e = self._by_name.get(name)
        if e is None and name == "" and self.default_name is not None:
            e = self._by_name.get(self.default_name)
        return e

    def __iter__(self) -> Iterator[Export]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)


# --------------------------------------------------------------------------------------
# MemoryExport: the test/debug backend
# --------------------------------------------------------------------------------------

class MemoryExport(Export):
    """A bytearray-backed export.

    `async_completion=True` defers every completion to the next `poll()` (which the
    owner's loop must call); `reorder=True` additionally completes each batch in reverse
    submission order, so replies leave out of order.  Data moves at completion time, as
    a DMA engine would, which catches buffer-lifetime bugs in the server.
    `buffer_budget` bounds the bytes handed out by `alloc` (backpressure tests).
    `inject_error(op, err, count)` makes the next `count` ops of that kind fail.
    """

    def __init__(self, name: str, size: int, *, async_completion: bool = False,
                 reorder: bool = False, buffer_budget: int = 256 * 1024 * 1024, **kw):
        super().__init__(name, size, **kw)
        self.data = bytearray(size)
        self.async_completion = async_completion
        self.reorder = reorder
        self.buffer_budget = buffer_budget
        self.buffers_in_use = 0
        self.removed = False
        self.handles: list[MemoryHandle] = []
        self.stats = {"read": 0, "write": 0, "flush": 0, "trim": 0, "write_zeroes": 0, "fua": 0}
        self._pending: list = []          # (fn, args, cb) awaiting poll()
        self._errors: dict[str, list[int]] = {}

    # -- test knobs --
    def inject_error(self, op: str, err: int, count: int = 1) -> None:
        self._errors.setdefault(op, []).extend([err] * count)

    def remove(self) -> None:
        """Hot-remove: notify every open handle; pending and later ops fail with ENODEV."""
        if self.removed:
            return
        self.removed = True
        for h in list(self.handles):
            h._event_cb(EVENT_REMOVED)

    def poll(self) -> int:
        """Complete the operations submitted before this call.  Returns how many."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        if self.reorder:
            batch.reverse()
        for fn, args, cb in batch:
            cb(self._run(fn, args))
        return len(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- internals --
    def _run(self, fn, args) -> int:
        if self.removed:
            return errno.ENODEV
        return fn(*args)

    def _submit(self, op: str, fn, args, cb: Completion) -> None:
        self.stats[op] += 1
        errs = self._errors.get(op)
        if errs:
            err = errs.pop(0)
            fn, args = (lambda e: e), (err,)
        if self.async_completion:
            self._pending.append((fn, args, cb))
        else:
            cb(self._run(fn, args))

    def _do_read(self, offset, length, buf) -> int:
        buf[:length] = memoryview(self.data)[offset:offset + length]
        return 0

    def _do_write(self, offset, data) -> int:
        self.data[offset:offset + len(data)] = data
        return 0

    def _do_zero(self, offset, length) -> int:
        self.data[offset:offset + length] = bytes(length)
        return 0

    def open(self, event_cb: EventCallback) -> "MemoryHandle":
        if self.removed:
            raise OSError(errno.ENODEV, f"export {self.name!r} was removed")
        h = MemoryHandle(self, event_cb)
        self.handles.append(h)
        return h


class MemoryHandle(ExportHandle):
    __slots__ = ("_export", "_event_cb", "closed")

    def __init__(self, export: MemoryExport, event_cb: EventCallback):
        self._export = export
        self._event_cb = event_cb
        self.closed = False

    def alloc(self, length: int) -> Optional[memoryview]:
        e = self._export
        if e.buffers_in_use + length > e.buffer_budget and e.buffers_in_use:
            return None
        e.buffers_in_use += length
        return memoryview(bytearray(length))

    def free(self, buf: memoryview) -> None:
        self._export.buffers_in_use -= len(buf)

    def _check(self, offset: int, length: int) -> None:
        # Inside the boundary: the server validated already, so this is an assertion.
        assert 0 <= offset and offset + length <= self._export.size, (offset, length)
        assert not self.closed

    def read(self, offset, length, buf, cb):
        self._check(offset, length)
        e = self._export
        e._submit("read", e._do_read, (offset, length, buf), cb)

    def write(self, offset, data, cb, fua=False):
        self._check(offset, len(data))
        e = self._export
        if fua:
            e.stats["fua"] += 1
        e._submit("write", e._do_write, (offset, data), cb)

    def flush(self, offset, length, cb):
        assert not self.closed
        self._export._submit("flush", lambda: 0, (), cb)

    def unmap(self, offset, length, cb):
        self._check(offset, length)
        e = self._export
        e._submit("trim", e._do_zero, (offset, length), cb)

    def write_zeroes(self, offset, length, cb):
        self._check(offset, length)
        e = self._export
        e._submit("write_zeroes", e._do_zero, (offset, length), cb)

    def close(self) -> None:
        assert not self.closed, "handle closed twice"
        self.closed = True
        self._export.handles.remove(self)
