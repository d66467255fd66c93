"""Small helpers the module RPC files share: answer a request from a module's ``cb(rc)``,
and the parameters several modules take alike."""
from __future__ import annotations

from reactor.rpc import I32_MAX, I32_MIN, U32, Param

_NO_MD = "no metadata/DIF"


def dif_params(interleave: bool = False) -> list:
    """The metadata/DIF parameters of SPDK's malloc and null creates, accepted at their
    defaults only (ringstack's bdevs carry no metadata)."""
    out = [Param("md_size", int, default=0, min=0, max=U32, fixed=_NO_MD,
                 help="metadata bytes per block")]
    if interleave:
        out.append(Param("md_interleave", bool, default=False, fixed=_NO_MD,
                         help="metadata interleaved with the data"))
    out += [Param("dif_type", int, default=0, min=I32_MIN, max=I32_MAX, fixed=_NO_MD,
                  help="protection information type"),
            Param("dif_is_head_of_md", bool, default=False, fixed=_NO_MD,
                  help="protection information in the first 8 bytes of metadata"),
            Param("dif_pi_format", int, default=0, min=0, max=U32, fixed=_NO_MD,
                  help="protection information format")]
    return out


def physical_block_size_param() -> Param:
    return Param("physical_block_size", int, default=0, min=0, max=U32,
                 help="physical block size in bytes, a multiple of 512 (0: the block size)")


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
