"""NBD export server (a "target", like SPDK's lib/nbd): serves bdevs over the NBD
protocol (fixed newstyle) to nbdinfo, nbdcopy, qemu-img/qemu-io, fio's nbd engine and
nbd-client, on targets/serve (docs/nbd.md, docs/targets.md).

  handshake.py     option haggling        transmission.py  requests and replies
  backend.py       Export / ExportHandle / ExportTable (what a connection serves)
  bdev_export.py   BdevExport: an export over a bdev (targets.serve.BdevHandle per connection)
  service.py       the "nbd" protocol on targets/serve, export_add/remove fanouts
  rpc.py           nbd_* JSON-RPC methods, the "nbd" subsystem, --nbd
"""
from ._proto import nbd_error
from .backend import EVENT_REMOVED, Export, ExportHandle, ExportTable
from .transmission import Connection

__all__ = ["EVENT_REMOVED", "Export", "ExportHandle", "ExportTable", "Connection", "nbd_error"]
