"""ringstack's JSON-RPC control plane: the public face.

Module authors declare methods here; the main reactor hosts the server; tools call it::

    from reactor.rpc import rpc_method, Param, RUNTIME

    @rpc_method("bdev_null_delete", params=[Param("name", str)])
    def bdev_null_delete(request, params):
        bdev = lookup(params["name"])
        if bdev is None:
            request.errno(-errno.ENODEV)          # -19 "No such device"
            return
        bdev.unregister(lambda rc: request.errno(rc) if rc else request.result(True))

    server = RpcServer("/var/tmp/spdk.sock")      # on the main reactor
    poller(server.poll); sleep_on(server.fileno())

    RpcClient("/var/tmp/spdk.sock").call("bdev_get_bdevs", {"name": "Null0"})

The pieces live in this package's modules: ``schema`` (Param/Schema), ``registry`` (the
method table, STARTUP/RUNTIME, built-in methods), ``server`` (the poll-driven Unix-socket
server), ``client`` (a small blocking client), ``config`` (SPDK JSON config load/save and the
framework_* methods), ``app`` (the app's own methods), ``docs`` (docs/rpc.md generator),
``testing`` (a poll loop in a thread, for tests).  Import from here.
"""
from reactor.rpc import config  # noqa: F401  (registers the framework/config methods)
from reactor.rpc.dispatch import Dispatcher
from reactor.rpc.client import RpcClient, RpcConnectionError, RpcError, RpcTimeout
from reactor.rpc.registry import (METHODS, RAW, RUNTIME, STARTUP, STATE_NAMES, Method,
                                  MethodTable, discover, register_alias, rpc_method,
                                  version_info)
from reactor.rpc.schema import ANY, I32_MAX, I32_MIN, U8, U32, U64, Param, ParamError, Schema
from reactor.rpc.server import (DEFAULT_SOCKET, ERROR_MESSAGES, INTERNAL_ERROR, INVALID_PARAMS,
                                INVALID_REQUEST, INVALID_STATE, METHOD_NOT_FOUND, PARSE_ERROR,
                                RpcRequest, RpcServer, RpcServerError)

__all__ = [
    "rpc_method", "register_alias", "Param", "Schema", "ParamError", "ANY", "RAW",
    "U8", "U32", "U64", "I32_MIN", "I32_MAX",
    "STARTUP", "RUNTIME", "STATE_NAMES", "Method", "MethodTable", "METHODS", "discover",
    "version_info",
    "Dispatcher", "RpcServer", "RpcRequest", "RpcServerError", "DEFAULT_SOCKET",
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "INVALID_STATE", "ERROR_MESSAGES",
    "RpcClient", "RpcError", "RpcConnectionError", "RpcTimeout",
]
