"""`BdevExport`: an NBD export over a bdev, through the bdev *user* API (bdev/api.py).

One `BdevExport` object exists per reactor (each reactor holds its own replica of the bdev
registry, docs/architecture.md "Ownership"); the NBD server opens one
`targets.serve.BdevHandle` per connection, on the reactor thread that serves the
connection (desc + io_channel of that thread, ENOMEM waits, arena buffers, hot-remove:
targets/serve/bdev_handle.py).  The handle's I/O methods are what the NBD connection
calls (the `ExportHandle` shape, backend.py), so nothing sits between the two.

* Hot-remove: the handle's ``"removed"`` event reaches the connection, which answers
  in-flight requests with ESHUTDOWN and closes; the handle closes the desc and puts the
  channel once every submitted op has completed.
* FUA: a bdev without a volatile write cache (`has_write_cache` false) persists every write
  it completes, so FUA needs nothing; with a write cache and FLUSH support, a FUA write is
  followed by a flush inside the handle, and a FUA trim / write-zeroes by one the
  connection sends (`fua_needs_flush`); otherwise FUA is not advertised.
* CAN_MULTI_CONN is advertised: every connection reaches the same bdev, whose flush covers
  all completed writes whoever submitted them.
"""
from __future__ import annotations

import errno
import logging
from typing import Optional

import bdev.api as api

from ..serve.bdev_handle import BdevHandle
from .backend import Export

log = logging.getLogger("ringstack.nbd")

#: The default NBD maximum payload, when the client asks (a multiple of any block size).
MAX_PAYLOAD = 32 * 1024 * 1024


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

    def open(self, event_cb) -> BdevHandle:
        """Open a desc + channel on the calling reactor thread (OSError if the bdev is gone
        or cannot be opened for writing, e.g. claimed by a module)."""
        return BdevHandle(self.bdev_name, not self.readonly, event_cb)

    def info(self) -> dict:
        return {"export_name": self.name, "bdev_name": self.bdev_name, "size": self.size,
                "block_size": self.block_min, "readonly": self.readonly,
                "flags": self.transmission_flags()}
