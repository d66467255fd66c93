"""NBD on targets/serve: the protocol "nbd", its per-reactor context and its own fanout
operations (export_add / export_remove).

Per reactor, the serve framework holds the listeners, fd passing, the poller and the
connections (targets/serve/server.py); NBD adds an `ExportTable` of `BdevExport` objects
built from *this* reactor's bdev replica.  Every change to it is applied on every reactor
by a fanout from the main reactor, in the order the main reactor made it, all or nothing
(an export added on reactor 0 but refused on reactor 1 does not stay on reactor 0).
"""
from __future__ import annotations

import errno
import logging

from .. import serve
from .backend import ExportTable
from .bdev_export import BdevExport
from .transmission import Connection

log = logging.getLogger("ringstack.nbd")

NAME = "nbd"


class NbdContext:
    """NBD's state on one reactor: the export table and the connection options."""

    def __init__(self, server):
        self.server = server
        self.exports = ExportTable()
        self.conn_opts = dict(server.opts.get("conn_opts") or {})

    def make(self, sock, meta) -> Connection:
        return Connection(sock, self.exports, name=meta.get("conn_name", ""), **self.conn_opts)

    def remove_export(self, name: str) -> None:
        """Stop exporting `name`: in-flight requests get ESHUTDOWN and its connections close."""
        self.exports.remove(name)
        for c in self.server.connections:
            if c.export_name == name:
                c.detach("export removed")


serve.register_protocol(NAME, NbdContext)


def current() -> NbdContext | None:
    srv = serve.current(NAME)
    return srv.ctx if srv is not None else None


@serve.op(NAME, "export_add", undo="export_remove")
def _op_export_add(server, args, finish) -> None:
    if server is None:
        finish(-errno.ENODEV, None, "NBD server not running")
        return
    try:
        e = BdevExport(args["bdev_name"], args["export_name"], readonly=args["readonly"])
    except OSError as exc:
        finish(-(exc.errno or errno.EIO), None, str(exc.strerror or exc))
        return
    except ValueError as exc:          # what the bdev is cannot be exported (its size...)
        finish(-errno.EINVAL, None, str(exc))
        return
    try:
        server.ctx.exports.add(e)
    except ValueError as exc:          # the name is taken on this reactor
        finish(-errno.EEXIST, None, str(exc))
        return
    finish()


@serve.op(NAME, "export_remove")
def _op_export_remove(server, args, finish) -> None:
    if server is not None and args["export_name"] in [e.name for e in server.ctx.exports]:
        server.ctx.remove_export(args["export_name"])
    finish()
