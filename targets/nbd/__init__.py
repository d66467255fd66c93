"""NBD export server (a "target", like SPDK's nbd/nvmf): serves `Export`s over the NBD
protocol (fixed newstyle) to nbdinfo, nbdcopy, qemu-img/qemu-io, fio's nbd engine and
nbd-client.  Poll-driven, no threads, no asyncio: see docs/nbd.md.

Public names:
  backend side  Export, ExportHandle, ExportTable, MemoryExport, EVENT_REMOVED
  server side   Connection, NbdTarget, Listener, NbdLoop
  fd passing    send_fd, recv_fd, socket_from_fd
  errors        nbd_error (the one errno -> NBD error mapping)
"""
from ._proto import nbd_error
from .backend import EVENT_REMOVED, Export, ExportHandle, ExportTable, MemoryExport
from .connection import Connection
from .listener import Listener, parse_address, recv_fd, send_fd, socket_from_fd
from .server import NbdLoop, NbdTarget

__all__ = [
    "EVENT_REMOVED", "Export", "ExportHandle", "ExportTable", "MemoryExport",
    "Connection", "NbdTarget", "NbdLoop", "Listener", "parse_address",
    "send_fd", "recv_fd", "socket_from_fd", "nbd_error",
]
