"""The backend interface the NBD server serves (implemented over the bdev layer by
`BdevExport`; the tests' bytearray-backed `MemoryExport` lives in tests/nbd_memory.py).

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
