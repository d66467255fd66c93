"""librados/librbd's C API through ctypes, for the rbd bdev (drivers/rbd.py).

There is no maintained PyPI binding of librbd (Ceph's own ``rados``/``rbd`` Cython modules
ship only as Debian's python3-rbd, built for the system interpreter), so the dozen calls
the bdev needs are bound here against Debian's ``librados2``/``librbd1`` directly.

Threading contract: librbd runs its I/O in its own threads.  No Python callback is ever
handed to librbd (``rbd_aio_create_completion`` gets a NULL callback); instead an image
handle has an eventfd registered with ``rbd_set_image_notification`` and finished
completions are collected with ``rbd_poll_io_events`` on the thread that owns the handle.
Every ctypes call releases the GIL while in C, so librbd's threads never wait for Python.

The calls that talk to the cluster synchronously (connect, ioctx create, open, stat,
resize, close, shutdown) block their caller for at most the configured
``rados_mon_op_timeout`` / ``client_mount_timeout`` / ``rados_osd_op_timeout``; the bdev
sets all three (drivers/rbd.py) and makes these calls on offload workers, never on a
reactor thread (drivers/rbd_control.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

#: rbd_event_type_t (librbd.h): EVENT_TYPE_PIPE = 1, EVENT_TYPE_EVENTFD = 2
EVENT_TYPE_EVENTFD = 2
#: rbd features bit (include/rbd/features.h)
RBD_FEATURE_EXCLUSIVE_LOCK = 1 << 2

_c_void_p = ctypes.c_void_p
_rados = None
_rbd = None
_load_error: str | None = None


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _bind(lib, name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


def load():
    """(rados, rbd) CDLLs with their signatures set; raises OSError if either is missing."""
    global _rados, _rbd, _load_error
    if _rbd is not None:
        return _rados, _rbd
    if _load_error is not None:
        raise OSError(_load_error)
    try:
        rados = ctypes.CDLL(ctypes.util.find_library("rados") or "librados.so.2")
        rbd = ctypes.CDLL(ctypes.util.find_library("rbd") or "librbd.so.1")
    except OSError as exc:
        _load_error = f"librados/librbd not loadable: {exc}"
        raise OSError(_load_error) from None
    P, I, S, U64 = _c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64
    PP = ctypes.POINTER(_c_void_p)
    _bind(rados, "rados_create", I, PP, S)
    _bind(rados, "rados_conf_read_file", I, P, S)
    _bind(rados, "rados_conf_set", I, P, S, S)
    _bind(rados, "rados_connect", I, P)
    _bind(rados, "rados_shutdown", None, P)
    _bind(rados, "rados_ioctx_create", I, P, S, PP)
    _bind(rados, "rados_ioctx_destroy", None, P)
    _bind(rbd, "rbd_open", I, P, S, PP, S)
    _bind(rbd, "rbd_open_read_only", I, P, S, PP, S)
    _bind(rbd, "rbd_close", I, P)
    _bind(rbd, "rbd_get_size", I, P, ctypes.POINTER(U64))
    _bind(rbd, "rbd_get_features", I, P, ctypes.POINTER(U64))
    _bind(rbd, "rbd_resize", I, P, U64)
    _bind(rbd, "rbd_set_image_notification", I, P, I, I)
    _bind(rbd, "rbd_poll_io_events", I, P, PP, I)
    _bind(rbd, "rbd_aio_create_completion", I, P, P, PP)
    _bind(rbd, "rbd_aio_get_arg", P, P)
    _bind(rbd, "rbd_aio_get_return_value", ctypes.c_ssize_t, P)
    _bind(rbd, "rbd_aio_release", None, P)
    _bind(rbd, "rbd_aio_readv", I, P, ctypes.POINTER(Iovec), I, U64, P)
    _bind(rbd, "rbd_aio_writev", I, P, ctypes.POINTER(Iovec), I, U64, P)
    _bind(rbd, "rbd_aio_flush", I, P, P)
    _bind(rbd, "rbd_aio_discard", I, P, U64, U64, P)
    # write_zeroes arrived in Octopus; older librbd gets discard with zeroing (drivers/rbd.py).
    if hasattr(rbd, "rbd_aio_write_zeroes"):
        _bind(rbd, "rbd_aio_write_zeroes", I, P, U64, U64, P, I, I)
    _rados, _rbd = rados, rbd
    return rados, rbd


def available() -> str | None:
    """None if the libraries load, else why not."""
    try:
        load()
    except OSError as exc:
        return str(exc)
    return None


def has_write_zeroes() -> bool:
    return hasattr(load()[1], "rbd_aio_write_zeroes")


def _s(v) -> bytes | None:
    return None if v is None else v.encode()


class RbdError(OSError):
    pass


def _check(rc, what):
    if rc < 0:
        raise RbdError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


class Client:
    """One librados client connected to a cluster (rados_t)."""

    def __init__(self, user_id=None, config=None, config_file=None, key_file=None,
                 defaults=None, registered=False):
        """``config``: a dict of librados options (SPDK's ``config``/``config_param``).
        As SPDK: a bdev's own client (``registered`` False) reads the default ceph.conf only
        when it has no ``config``; a registered cluster reads ``config_file``, or tries the
        default location without failing, then applies ``config``.  ``defaults`` are set
        first (the bdev's timeouts) so the caller's options win."""
        rados, _ = load()
        self._rados = rados
        self.handle = _c_void_p()
        _check(rados.rados_create(ctypes.byref(self.handle), _s(user_id)), "rados_create")
        try:
            for k, v in (defaults or {}).items():
                _check(rados.rados_conf_set(self.handle, k.encode(), str(v).encode()),
                       f"rados_conf_set {k}")
            if registered:
                rc = rados.rados_conf_read_file(self.handle, _s(config_file))
                if config_file is not None:
                    _check(rc, f"rados_conf_read_file {config_file}")
            elif not config:
                _check(rados.rados_conf_read_file(self.handle, None),
                       "rados_conf_read_file (default)")
            for k, v in (config or {}).items():
                _check(rados.rados_conf_set(self.handle, k.encode(), str(v).encode()),
                       f"rados_conf_set {k}")
            if key_file is not None:
                _check(rados.rados_conf_set(self.handle, b"keyring", key_file.encode()),
                       "rados_conf_set keyring")
            _check(rados.rados_connect(self.handle), "rados_connect")
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.handle:
            self._rados.rados_shutdown(self.handle)
            self.handle = _c_void_p()


class Image:
    """One open image (its own ioctx) with an eventfd for completions."""

    def __init__(self, client: Client, pool, name, read_only=False):
        rados, rbd = load()
        self._rados, self._rbd = rados, rbd
        self.ioctx = _c_void_p()
        self.handle = _c_void_p()
        self.efd = -1
        _check(rados.rados_ioctx_create(client.handle, pool.encode(), ctypes.byref(self.ioctx)),
               f"pool {pool}")
        try:
            op = rbd.rbd_open_read_only if read_only else rbd.rbd_open
            _check(op(self.ioctx, name.encode(), ctypes.byref(self.handle), None),
                   f"image {pool}/{name}")
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            _check(rbd.rbd_set_image_notification(self.handle, self.efd, EVENT_TYPE_EVENTFD),
                   "rbd_set_image_notification")
        except BaseException:
            self.close()
            raise
        self._events = (_c_void_p * 64)()

    def size(self) -> int:
        v = ctypes.c_uint64()
        _check(self._rbd.rbd_get_size(self.handle, ctypes.byref(v)), "rbd_get_size")
        return v.value

    def features(self) -> int:
        v = ctypes.c_uint64()
        _check(self._rbd.rbd_get_features(self.handle, ctypes.byref(v)), "rbd_get_features")
        return v.value

    def resize(self, nbytes) -> None:
        _check(self._rbd.rbd_resize(self.handle, nbytes), "rbd_resize")

    def completion(self, tag: int):
        """A new completion whose arg is ``tag``; NULL callback (see the module doc)."""
        c = _c_void_p()
        _check(self._rbd.rbd_aio_create_completion(_c_void_p(tag), None, ctypes.byref(c)),
               "rbd_aio_create_completion")
        return c

    def release(self, c) -> None:
        self._rbd.rbd_aio_release(c)

    def poll(self):
        """[(tag, return value)] of finished completions (each released)."""
        return self.collect()[1]

    def collect(self):
        """``(signals, [(tag, return value)])``: the eventfd's count (librbd signals once
        per finished completion, after queueing it) and the finished completions, each
        released.  A caller that stops polling when idle compares the two: a signal can
        trail the completion it announces."""
        try:
            signals = os.eventfd_read(self.efd)
        except BlockingIOError:
            signals = 0
        out = []
        rbd = self._rbd
        ev = self._events
        while True:
            n = rbd.rbd_poll_io_events(self.handle, ev, len(ev))
            if n <= 0:
                return signals, out
            for i in range(n):
                c = ev[i]
                out.append((rbd.rbd_aio_get_arg(c) or 0, rbd.rbd_aio_get_return_value(c)))
                rbd.rbd_aio_release(c)
            if n < len(ev):
                return signals, out

    def close(self) -> None:
        if self.handle:
            self._rbd.rbd_close(self.handle)       # waits for librbd's in-flight I/O
            self.handle = _c_void_p()
        if self.ioctx:
            self._rados.rados_ioctx_destroy(self.ioctx)
            self.ioctx = _c_void_p()
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1
