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


def answer_value(request):
    """A ``cb(rc, value)`` that answers ``request`` with ``value`` on 0, else the errno
    (the create functions call back with the new bdev's name, or split's names)."""
    def cb(rc, value):
        if rc:
            request.errno(rc)
        else:
            request.result(value)
    return cb
