"""bdevperf's ``-J FILE``: log every JSON-RPC call to FILE, opened in append mode (SPDK's
``spdk_jsonrpc_set_log_file``): one line ``[date time.usec] request: {...}`` per call and
one ``[date time.usec] response: {...}`` per answer, each JSON on one line.

The bdevperf process's method table is wrapped for the run (and restored after), so every
method the app serves is logged, through the handler contract alone: the handler gets a
request that logs what it answers.  A request the server refuses before any handler runs
(unknown method, a method not allowed in the current state, invalid parameters) is answered
without passing here, so it is not logged.
"""
from __future__ import annotations

import datetime
import json
import os


def _stamp() -> str:
    now = datetime.datetime.now()
    return now.strftime("[%Y-%m-%d %H:%M:%S.") + f"{now.microsecond:06d}] "


class _LoggedRequest:
    """Forwards to the server's request; logs the response it is completed with."""

    def __init__(self, real, log):
        self._real = real
        self._log = log

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _answer(self, body: dict) -> None:
        if self._real.has_id and not self._real.done:
            self._log.write("response: ", dict({"jsonrpc": "2.0", "id": self._real.id}, **body))

    def result(self, value=True):
        self._answer({"result": value})
        self._real.result(value)

    def error(self, code, message, data=None):
        err = {"code": int(code), "message": str(message)}
        if data is not None:
            err["data"] = data
        self._answer({"error": err})
        self._real.error(code, message, data)

    def errno(self, rc):
        rc = -abs(int(rc))
        self.error(rc, os.strerror(-rc))


class RpcLog:
    def __init__(self, path: str, table):
        self.f = open(path, "a", encoding="utf-8")
        self.saved = []
        for m in table:
            if m.handler is not None and m.alias_of is None:
                self.saved.append((m, m.handler))
                m.handler = self._wrap(m.handler)

    def write(self, prefix: str, obj) -> None:
        if self.f is None:
            return
        try:
            text = json.dumps(obj, separators=(",", ":"))
        except (TypeError, ValueError):
            text = repr(obj)
        self.f.write(_stamp() + prefix + text + "\n")
        self.f.flush()

    def _wrap(self, handler):
        def logged(request, params):
            req = {"jsonrpc": "2.0", "method": request.method}
            if request.params is not None:
                req["params"] = request.params
            if request.has_id:
                req["id"] = request.id
            self.write("request: ", req)
            proxy = _LoggedRequest(request, self)
            ret = handler(proxy, params)
            if ret is not None and not request.done:
                proxy.result(ret)
            return None
        logged.__doc__ = handler.__doc__
        return logged

    def close(self) -> None:
        for m, h in self.saved:
            m.handler = h
        self.saved = []
        if self.f is not None:
            self.f.close()
            self.f = None
