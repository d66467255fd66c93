"""Method dispatch, apart from any socket: the state, the table, the request contract.

A :class:`Dispatcher` is what runs a JSON-RPC method: it looks the name up in its
:class:`~reactor.rpc.registry.MethodTable`, checks the current state (SPDK's STARTUP/RUNTIME),
validates the parameters against the method's schema and calls the handler with an
:class:`RpcRequest`.  The socket server (:mod:`reactor.rpc.server`) hands every request it
parses to a dispatcher; so do in-process callers, with no socket at all::

    d = Dispatcher(state=STARTUP)
    d.call("bdev_set_options", {"bdev_io_pool_size": 4096}, lambda err, result: ...)

The app owns one dispatcher from its first moment: the start-up config is replayed through it
before the RPC socket exists (SPDK's order), and the server it opens later (or at once, with
``--wait-for-rpc``) serves the same dispatcher, so state and ``framework_wait_init`` waiters
carry over.  bdevperf loads its ``-c`` config through a private one.

Error codes are SPDK's (include/spdk/jsonrpc.h); -1 with lib/rpc/rpc.c's wording is a method
called in a state its mask does not allow.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from reactor.rpc.registry import METHODS, RUNTIME, STARTUP, MethodTable
from reactor.rpc.schema import ParamError

log = logging.getLogger("ringstack.rpc")

# JSON-RPC error codes (include/spdk/jsonrpc.h).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
INVALID_STATE = -1

ERROR_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid parameters",
    INTERNAL_ERROR: "Internal error",
}

# lib/rpc/rpc.c wording for SPDK_JSONRPC_ERROR_INVALID_STATE.
MSG_NEEDS_RUNTIME = ("Method may only be called after framework is initialized "
                     "using framework_start_init RPC.")
MSG_NEEDS_STARTUP = ("Method may only be called before framework is initialized. "
                     "Use --wait-for-rpc command line parameter and then issue this RPC "
                     "before the framework_start_init RPC.")

#: ``reply(error, result)``: ``error`` is None or ``{"code", "message"[, "data"]}``.
Reply = Callable[[Any, Any], None]


class RpcRequest:
    """One JSON-RPC request handed to a method handler.

    Complete it exactly once, now or from any later poll of the same process:
    ``result(value)``, ``error(code, message)`` or ``errno(-e)``.  A handler may instead
    *return* a non-None value, which is sent as the result.  Completing a request whose
    caller has gone away is harmless (the answer is dropped).  A second completion is a bug in
    the caller: it is logged and ignored.  ``request.server`` is the dispatcher (its ``state``,
    ``table``, ``set_state``), whether or not a socket carried the request.
    """

    __slots__ = ("server", "method", "params", "id", "has_id", "done", "_reply", "__weakref__")

    def __init__(self, dispatcher: "Dispatcher", method: str, params: Any, req_id: Any = None,
                 has_id: bool = True, reply: Reply | None = None) -> None:
        self.server = dispatcher
        self.method = method
        self.params = params            # as sent (the handler gets the validated copy)
        self.id = req_id
        self.has_id = has_id
        self.done = False
        self._reply = reply

    @property
    def dispatcher(self) -> "Dispatcher":
        return self.server

    @property
    def is_notification(self) -> bool:
        return not self.has_id

    def result(self, value: Any = True) -> None:
        """Send ``value`` as the result (SPDK methods without data answer ``true``)."""
        if self._check_once():
            return
        reply, self._reply = self._reply, None
        if reply is not None:
            reply(None, value)

    def error(self, code: int, message: str, data: Any = None) -> None:
        """Send a JSON-RPC error.  ``code`` is an int, ``message`` a one-line string."""
        if self._check_once():
            return
        reply, self._reply = self._reply, None
        if reply is not None:
            err: dict[str, Any] = {"code": int(code), "message": str(message)}
            if data is not None:
                err["data"] = data
            reply(err, None)

    def errno(self, rc: int) -> None:
        """Fail with a negative errno: code ``rc``, message ``os.strerror(-rc)`` (SPDK's
        ``spdk_jsonrpc_send_error_response(request, rc, spdk_strerror(-rc))``)."""
        rc = int(rc)
        if rc > 0:
            rc = -rc
        self.error(rc, os.strerror(-rc))

    def _check_once(self) -> bool:
        if self.done:
            log.error("RPC %s (id %r): request completed twice; second completion ignored",
                      self.method, self.id)
            return True
        self.done = True
        return False

    def __repr__(self) -> str:
        return f"<RpcRequest {self.method} id={self.id!r}{' done' if self.done else ''}>"


class Dispatcher:
    """Runs methods of ``table`` (default: the process-wide :data:`METHODS`) in ``state``.

    Use it from one thread only (handlers may complete requests from later polls of that
    thread).  ``state_listeners`` are ``fn(dispatcher, state)`` callables run after every
    :meth:`set_state`.
    """

    def __init__(self, table: MethodTable | None = None, state: int = RUNTIME) -> None:
        if state not in (STARTUP, RUNTIME):
            raise ValueError("state must be STARTUP or RUNTIME")
        self.table = METHODS if table is None else table
        self.state = state
        self.state_listeners: list = []

    def set_state(self, state: int) -> None:
        """Switch between STARTUP and RUNTIME (``framework_start_init`` moves to RUNTIME)."""
        if state not in (STARTUP, RUNTIME):
            raise ValueError("state must be STARTUP or RUNTIME")
        self.state = state
        for fn in list(self.state_listeners):
            try:
                fn(self, state)
            except Exception:  # noqa: BLE001
                log.exception("RPC state listener %r raised", fn)

    def call(self, method: str, params: Any, cb: Reply) -> RpcRequest:
        """Run ``method`` exactly as a socket request would run (state check, validation,
        handler); ``cb(error, result)`` gets ``None, result`` or ``{"code", "message"}, None``
        -- possibly before this returns, possibly from a later poll."""
        req = RpcRequest(self, method, params, None, True, cb)
        self.invoke(req)
        return req

    call_local = call

    def invoke(self, req: RpcRequest) -> None:
        """Look the method up, check state and params, run the handler (SPDK's
        jsonrpc_handler + the handler's spdk_json_decode_object)."""
        m = self.table.get(req.method)
        if m is None:
            req.error(METHOD_NOT_FOUND, ERROR_MESSAGES[METHOD_NOT_FOUND])
            return
        if m.alias_of is not None:
            if m.deprecated and not m._warned:
                log.warning("RPC method %s is deprecated.  Use %s instead.", m.name, m.alias_of)
                m._warned = True
            target = self.table.get(m.alias_of)
            if target is None:
                req.error(METHOD_NOT_FOUND, ERROR_MESSAGES[METHOD_NOT_FOUND])
                return
            m = target
        if not m.allowed_in(self.state):
            req.error(INVALID_STATE,
                      MSG_NEEDS_RUNTIME if self.state == STARTUP else MSG_NEEDS_STARTUP)
            return
        try:
            params = m.validate(req.params)
        except ParamError as exc:
            log.info("RPC %s: invalid parameters: %s", m.name, exc)
            req.error(INVALID_PARAMS, f"{ERROR_MESSAGES[INVALID_PARAMS]}: {exc}")
            return
        try:
            ret = m.handler(req, params)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the server
            log.exception("RPC %s: handler raised", m.name)
            if not req.done:
                req.error(INTERNAL_ERROR, str(exc) or type(exc).__name__)
            return
        if ret is not None and not req.done:
            req.result(ret)


__all__ = ["Dispatcher", "RpcRequest", "Reply", "PARSE_ERROR", "INVALID_REQUEST",
           "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR", "INVALID_STATE",
           "ERROR_MESSAGES", "MSG_NEEDS_RUNTIME", "MSG_NEEDS_STARTUP"]
