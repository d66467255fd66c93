"""One way to serve connections (docs/targets.md, "targets/serve"): listeners on the main
reactor, fd passing round-robin to reactors, a per-reactor fd-driven poller holding the
connections, all-or-nothing control fanouts, and `BdevHandle` (a bdev opened on the
serving thread).  Protocol-agnostic: it knows nothing of NBD, SCSI or iSCSI.

  register_protocol(name, make_context)     every reactor, at import
  op(protocol, name, undo=None)             decorator: a protocol's own fanout step
  start(protocol, cb, opts=, listen=)       main reactor: a Server on every reactor
  stop(protocol, cb)                        drain, then close, everywhere
  run_on_all_reactors(protocol, op, args, cb)   all or nothing
  get_connections(protocol, cb)             every reactor's Server.info()
  current(protocol) -> Server | None        this reactor's server (.ctx, .connections,
                                            .listen(address, meta), .unlisten(lst))
"""
from .bdev_handle import EVENT_REMOVED, EVENT_RESIZED, BdevHandle
from .control import (OneAtATime, get_connections, op, register_protocol, run_on_all_reactors,
                      start, stop)
from .listener import Listener, parse_address, recv_fd, send_fd, socket_from_fd
from .server import STOP_DRAIN_S, Server, current

__all__ = ["BdevHandle", "EVENT_REMOVED", "EVENT_RESIZED", "register_protocol", "op", "start", "OneAtATime",
           "stop", "run_on_all_reactors", "get_connections", "current", "Server", "Listener",
           "parse_address", "send_fd", "recv_fd", "socket_from_fd", "STOP_DRAIN_S"]
