"""`MemoryExport`: a bytearray-backed NBD export (targets/nbd/backend.py's interface) for
the protocol tests and the standalone test server (tests/nbd_standalone.py): synchronous
or deferred completions, reordering, injected errors, hot-remove, a buffer budget."""
from __future__ import annotations

import errno
from typing import Optional

from targets.nbd.backend import EVENT_REMOVED, Completion, EventCallback, Export, ExportHandle



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
