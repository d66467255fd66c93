"""What a message looks like when it crosses reactors: ``(target thread id, handler,
args)`` encoded by :mod:`ipc.codec` (handler by registered name, arguments in msgpack).

``remote`` is the decorator users put on functions that other reactors may call through
``send_msg``/``for_each_channel``/``for_each_thread``; it is the codec's registry, under a
name that reads well at the call site.
"""
from __future__ import annotations

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


def lookup(name: str):
    """The function registered as ``name`` (CodecError if none)."""
    fn = codec._handlers.get(codec.handler_id(name))
    if fn is None:
        raise WireError(f"no handler registered as {name!r}")
    return fn


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


def decode_msg(record):
    fn, args = codec.decode(record)
    if not args or not isinstance(args[0], int):
        raise WireError("record lacks a target thread id")
    return args[0], fn, tuple(args[1:])
