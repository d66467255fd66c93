"""Cross-core message codec: a handler registered by a stable name, msgpack arguments.

A record is the msgpack array ``[handler_id, arg0, arg1, ...]`` (one message), or an
array of such arrays (a *batch*: what :class:`Sender` builds, one ``Packer.pack`` call
and one ring record for many messages; the per-message cost then drops to the C
loop of msgpack).  ``handler_id`` is
``zlib.crc32(name)``: computed from the name alone, so every process (spawned,
possibly importing modules in another order) agrees on it without coordination;
registration refuses a second name with the same id.  Nothing received is ever
unpickled or eval'd: msgpack only yields None/bool/int/float/str/bytes/list/dict/ExtType,
and a handler can only be one that some module registered on purpose.

Cost per message (measured here): encoding through one reused ``Packer`` ~150 ns
(``msgpack.packb`` builds a Packer per call, ~380 ns); decoding ~120 ns; the handler
lookup is one dict access.
"""
from __future__ import annotations

import logging
import zlib

import msgpack

log = logging.getLogger(__name__)


class CodecError(ValueError):
    """A record that cannot be turned into a handler call (unknown handler,
    undecodable bytes, wrong shape)."""


_handlers: dict[int, object] = {}       # id -> function
_names: dict[int, str] = {}             # id -> name
_ids_by_fn: dict[object, int] = {}      # function -> id
_ids_by_name: dict[str, int] = {}       # name -> id


def lookup(name: str):
    """The function registered as ``name``; CodecError if none."""
    fn = _handlers.get(handler_id(name))
    if fn is None:
        raise CodecError(f"no handler registered as {name!r}")
    return fn


def handlers_by_id() -> dict:
    """The live id -> function table (read-only by convention), for consumers that
    decode on their own hot path (the reactor's inbound loop)."""
    return _handlers


def batch_header(n: int) -> bytes:
    """The msgpack array header for ``n`` elements: a batch record is this header
    followed by ``n`` records made by :func:`encode`, concatenated (each message was
    encoded, and so validated, when it was sent; the batch costs one join)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def handler_id(name: str) -> int:
    """The stable id of handler ``name`` (same in every process)."""
    return zlib.crc32(name.encode())


def register_handler(name: str, fn) -> None:
    """Register ``fn`` under ``name``.  Registering the same function (or one with the
    same module and qualified name, as a re-import gives) again is a no-op; a
    different function under a taken name or id is an error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"handler name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"handler {name!r} is not callable: {fn!r}")
    hid = handler_id(name)
    old_name = _names.get(hid)
    if old_name is not None and old_name != name:
        raise ValueError(f"handler name {name!r} collides with {old_name!r} (crc32 {hid:#010x}); rename one")
    old = _handlers.get(hid)
    if old is not None and old is not fn and _origin(old) != _origin(fn):
        raise ValueError(f"handler name {name!r} is already registered to {_origin(old)}")
    if old is not None:
        _ids_by_fn.pop(old, None)
    _handlers[hid] = fn
    _names[hid] = name
    _ids_by_fn[fn] = hid
    _ids_by_name[name] = hid


def _origin(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def handler(name: str):
    """Decorator: ``@handler("bdev.io_done")`` registers the function under that name."""
    def register(fn):
        register_handler(name, fn)
        return fn
    return register


def unregister_handler(name: str) -> None:
    hid = _ids_by_name.pop(name, None)
    if hid is not None:
        _ids_by_fn.pop(_handlers.pop(hid), None)
        del _names[hid]


def handler_name(fn_or_id) -> str | None:
    hid = fn_or_id if isinstance(fn_or_id, int) else _ids_by_fn.get(fn_or_id)
    return _names.get(hid)


def _id_of(name_or_fn) -> int:
    hid = _ids_by_fn.get(name_or_fn) if not isinstance(name_or_fn, str) else _ids_by_name.get(name_or_fn)
    if hid is None:
        raise CodecError(f"no handler registered as {name_or_fn!r}")
    return hid


_packer = msgpack.Packer(autoreset=True, use_bin_type=True)
_pack = _packer.pack
_unpackb = msgpack.unpackb
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData, RecursionError)


def encode(name_or_fn, *args) -> bytes:
    """One record calling the registered handler (given by name or function) with
    ``args`` (msgpack-encodable values)."""
    hid = _ids_by_fn.get(name_or_fn)
    if hid is None:
        hid = _id_of(name_or_fn)
    try:
        return _pack((hid, *args))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode arguments for {handler_name(hid)!r}: {exc}") from exc


def encoder(name_or_fn):
    """A fast encoder bound to one handler: ``enc = encoder(fn); enc(a, b) -> bytes``.
    Skips the name lookup on every call (the hot path of a sender)."""
    hid = _id_of(name_or_fn)
    pack = _packer.pack

    def encode_bound(*args) -> bytes:
        return pack((hid, *args))
    return encode_bound


def decode(record) -> tuple:
    """``(fn, args)`` for a record, or CodecError if it names no registered handler,
    is not valid msgpack, or is not ``[int, ...]``."""
    try:
        msg = _unpackb(record, use_list=False, raw=False, strict_map_key=True)
    except _MSGPACK_ERRORS as exc:
        raise CodecError(f"undecodable record ({len(record)} bytes): {exc}") from None
    if type(msg) is not tuple or not msg or type(msg[0]) is not int:
        raise CodecError(f"record is not [handler_id, args...]: {type(msg).__name__}")
    fn = _handlers.get(msg[0])
    if fn is None:
        raise CodecError(f"unknown handler id {msg[0]:#x}")
    return fn, msg[1:]


def dispatch(record) -> bool:
    """Decode and run one record.  Any decoding error, and a TypeError from calling the
    handler with the wrong arguments, is logged and the record dropped: the consumer
    keeps running.  Returns whether the handler ran.  Other exceptions raised *by* the
    handler propagate (they are the handler's bugs, not bad input)."""
    try:
        msg = _unpackb(record, use_list=False, raw=False, strict_map_key=True)
        if type(msg) is tuple and msg and type(msg[0]) is tuple:
            return _dispatch_batch(msg) > 0
        fn = _handlers[msg[0]]
    except _MSGPACK_ERRORS as exc:
        log.error("dropping undecodable record (%d bytes): %s", len(record), exc)
        return False
    except (KeyError, IndexError):
        log.error("dropping record for unknown handler: %r", _describe(record))
        return False
    if type(msg) is not tuple:
        log.error("dropping record that is not [handler_id, args...]: %r", _describe(record))
        return False
    try:
        fn(*msg[1:])
    except TypeError as exc:
        if _is_call_mismatch(exc, fn):
            log.error("dropping message for %s: %s", _names.get(msg[0]), exc)
            return False
        raise
    return True


def dispatch_many(records) -> int:
    """Run every message of every record, in order; returns how many handlers ran.
    The loop is inlined (the per-message cost on a consumer's hot path); a record that
    fails to decode is handed to ``dispatch``, which decodes it again (failing the same
    way) and logs it.  Bad messages inside a batch are logged and skipped one by one."""
    ran = 0
    unpackb = _unpackb
    handlers = _handlers
    for record in records:
        try:
            msg = unpackb(record, use_list=False, raw=False, strict_map_key=True)
            head = msg[0]
            if type(head) is tuple:
                ran += _dispatch_batch(msg)
                continue
            fn = handlers[head]
        except Exception:
            ran += dispatch(record)
            continue
        if type(msg) is not tuple:
            log.error("dropping record that is not [handler_id, args...]: %r", _describe(record))
            continue
        try:
            fn(*msg[1:])
        except TypeError as exc:
            if _is_call_mismatch(exc, fn):
                log.error("dropping message for %s: %s", _names.get(head), exc)
                continue
            raise
        ran += 1
    return ran


def _dispatch_batch(batch) -> int:
    ran = 0
    handlers = _handlers
    for msg in batch:
        try:
            fn = handlers[msg[0]]
            if type(msg) is not tuple:
                raise TypeError
        except (KeyError, IndexError, TypeError):
            log.error("dropping message of a batch: not [known handler_id, args...]: %.60r", msg)
            continue
        try:
            fn(*msg[1:])
        except TypeError as exc:
            if _is_call_mismatch(exc, fn):
                log.error("dropping message for %s: %s", _names.get(msg[0]), exc)
                continue
            raise
        ran += 1
    return ran


def message(name_or_fn, *args) -> tuple:
    """The in-memory form of one message, ``(handler_id, *args)``, for ``encode_batch``."""
    hid = _ids_by_fn.get(name_or_fn)
    if hid is None:
        hid = _id_of(name_or_fn)
    return (hid, *args)


def encode_batch(messages) -> bytes:
    """One record holding many messages (a list of ``message(...)`` tuples)."""
    try:
        return _pack(messages)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode a batch of {len(messages)} messages: {exc}") from exc


class Sender:
    """Batches handler calls for one ring: ``call()`` appends (no encoding yet),
    ``flush()`` encodes everything queued as one batch record (split if it would not
    fit a ring record) and flushes the :class:`ipc.ring.Producer`.  Backpressure is
    the producer's: records it cannot publish stay queued there, in order."""

    __slots__ = ("producer", "_messages")

    def __init__(self, producer):
        self.producer = producer
        self._messages: list = []

    def call(self, name_or_fn, *args) -> None:
        hid = _ids_by_fn.get(name_or_fn)
        if hid is None:
            hid = _id_of(name_or_fn)
        self._messages.append((hid, *args))

    def flush(self) -> bool:
        """True when nothing is left queued (in this Sender or the producer)."""
        messages = self._messages
        if messages:
            self._messages = []
            self._send(messages)
        return self.producer.flush()

    def _send(self, messages) -> None:
        record = encode_batch(messages)
        if len(record) <= self.producer.max_record:
            self.producer.send(record)
        elif len(messages) == 1:
            raise CodecError(f"one message of {len(record)} bytes exceeds the ring's largest record "
                             f"({self.producer.max_record} bytes); pass large data through an arena")
        else:
            half = len(messages) // 2
            self._send(messages[:half])
            self._send(messages[half:])

    @property
    def pending(self) -> int:
        return len(self._messages) + self.producer.pending


def _is_call_mismatch(exc: TypeError, fn) -> bool:
    # The traceback starts at dispatch()'s frame.  A TypeError raised by the call itself
    # (wrong argument count or names) has no further frame; one raised inside the
    # handler's body does, and is the handler's bug, not bad input.
    tb = exc.__traceback__
    return tb is None or tb.tb_next is None


def _describe(record) -> str:
    head = bytes(record[:16])
    return head.hex() + ("..." if len(record) > 16 else "")
