"""A small blocking JSON-RPC client for ringstack's (or SPDK's) Unix socket.

``RpcClient(path, timeout=60).call(method, params)`` returns the result or raises
:class:`RpcError` (with ``.code``/``.message``); connection problems raise
:class:`RpcConnectionError`, a missing answer :class:`RpcTimeout`.  The client is for tools and
tests, never for a reactor loop (it blocks).
"""
from __future__ import annotations

import codecs
import json
import socket
import time
from typing import Any

_DECODER = json.JSONDecoder()


class RpcError(Exception):
    """The server answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data


class RpcConnectionError(Exception):
    """Could not reach the server, or it went away mid-call."""


class RpcTimeout(RpcConnectionError):
    """No complete answer within the timeout."""


class RpcClient:
    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.timeout = timeout
        self._next_id = 0
        self._buf = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            reason = exc.strerror or str(exc)
            raise RpcConnectionError(f"cannot connect to {path}: {reason}") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------
    def call(self, method: str, params: Any = None) -> Any:
        """Send one request and wait for its answer; return ``result`` or raise RpcError."""
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params is not None:
            req["params"] = params
        return self.request(req)

    def request(self, req: dict) -> Any:
        """Send a request object as given (``jsonrpc`` and ``id`` added when missing)."""
        req = dict(req)
        req.setdefault("jsonrpc", "2.0")
        if "id" not in req:
            self._next_id += 1
            req["id"] = self._next_id
        self.send_raw(json.dumps(req).encode())
        resp = self.recv_value()
        if not isinstance(resp, dict):
            raise RpcConnectionError(f"unexpected response: {resp!r}")
        if "error" in resp:
            err = resp["error"] or {}
            raise RpcError(err.get("code", 0), err.get("message", ""), err.get("data"))
        return resp.get("result")

    # -- raw access (tests, `ringstack rpc -`) ------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise RpcConnectionError(f"send to {self.path} failed: {exc}") from None

    def recv_value(self, timeout: float | None = None) -> Any:
        """Return the next JSON value the server sends (responses are a stream of values)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    value, end = _DECODER.raw_decode(text)
                except ValueError:
                    pass
                else:
                    self._buf = text[end:]
                    return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise RpcTimeout(f"timed out waiting for a response from {self.path}")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                raise RpcTimeout(f"timed out waiting for a response from {self.path}") from None
            except OSError as exc:
                raise RpcConnectionError(f"receive from {self.path} failed: {exc}") from None
            if not data:
                raise RpcConnectionError(f"{self.path} closed the connection"
                                         + (f" (partial response {self._buf[:80]!r})"
                                            if self._buf.strip() else ""))
            self._buf += self._utf8.decode(data)
