"""Small helpers the module RPC files share: answer a request from a module's ``cb(rc)``."""
from __future__ import annotations


def answer(request, result):
    """A ``cb(rc)`` that answers ``request``: ``result`` on 0, else the negative errno with
    its strerror (SPDK's ``spdk_jsonrpc_send_error_response(request, rc, spdk_strerror(-rc))``)."""
    def cb(rc):
        if rc:
            request.errno(rc)
        else:
            request.result(result() if callable(result) else result)
    return cb
