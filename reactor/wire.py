"""What a message looks like when it crosses reactors: ``(target thread id, handler,
args)`` encoded by :mod:`ipc.codec` (handler by registered name, arguments in msgpack).

``remote`` is the decorator users put on functions that other reactors may call through
``send_msg``/``for_each_channel``/``for_each_thread``; it is the codec's registry, under a
name that reads well at the call site.
"""
from __future__ import annotations

import msgpack

from ipc import codec

WireError = codec.CodecError


def remote(name: str):
    """Register a function under a stable ``name`` so other reactors can run it:
    ``@remote("myapp.ping") def ping(n): ...``."""
    return codec.handler(name)


def name_of(fn) -> str | None:
    """The registered name of ``fn``, or None if it is not ``@remote``."""
    return codec.handler_name(fn)


def is_remote(fn) -> bool:
    return codec.handler_name(fn) is not None


lookup = codec.lookup


def encode_msg(tid: int, fn, args) -> bytes:
    try:
        return _encode(fn, tid, *args)
    except WireError:
        if codec.handler_name(fn) is None:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)!r} is not registered with @reactor.remote(name); "
                "only registered functions can be sent to another reactor") from None
        raise


_encode = codec.encode


_unpackb = msgpack.unpackb
_HANDLERS = codec.handlers_by_id()


def decode_record(record) -> list:
    """``[(tid, fn, args), ...]`` for one inbound record: a single message
    ``[hid, tid, *args]`` or a batch ``[[hid, tid, *args], ...]`` (see
    ``codec.batch_header``).  Raises WireError for an undecodable record; a bad message
    inside a batch is logged and skipped so the rest of the batch is delivered."""
    try:
        msg = _unpackb(record, use_list=False, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WireError(f"undecodable record ({len(record)} bytes): {exc}") from None
    if type(msg) is not tuple or not msg:
        raise WireError(f"record is not a message or a batch: {type(msg).__name__}")
    batch = msg if type(msg[0]) is tuple else (msg,)
    out = []
    handlers = _HANDLERS
    for m in batch:
        try:
            fn = handlers[m[0]]
            tid = m[1]
            if type(tid) is not int:
                raise TypeError
        except (KeyError, IndexError, TypeError):
            codec.log.error("dropping message: not [known handler id, thread id, args...]: %.60r", m)
            continue
        out.append((tid, fn, m[2:]))
    return out

