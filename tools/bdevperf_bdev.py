"""bdevperf's one door to the bdev layer.

Everything bdevperf calls on bdevs goes through the names below, so the integration with the
bdev layer (the user API, ``bdev.api``, and the modules in ``drivers/``) is contained in this
file.

The data-plane names (``read_blocks`` ... ``queue_io_wait``) are the user API's own functions
(no wrapper on the I/O path).  Their contract is SPDK's bdev.h:
``fn(desc, ch, [buf,] offset_blocks, num_blocks, cb, cb_arg) -> 0 | -errno``, ``cb(bdev_io,
success, cb_arg)`` exactly once, never inside the submit, on the submitting thread.
"""
from __future__ import annotations

import errno
import logging

from bdev import api
from bdev.api import (IO_TYPE_FLUSH, IO_TYPE_READ, IO_TYPE_RESET, IO_TYPE_UNMAP,  # noqa: F401
                      IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, IoWaitEntry, close, desc_get_bdev,
                      flush_blocks, free_io, get_block_size, get_by_name, get_io_channel,
                      get_name, get_num_blocks, io_type_supported, put_io_channel,
                      queue_io_wait, read_blocks, reset, unmap_blocks, write_blocks,
                      write_zeroes_blocks)

log = logging.getLogger("ringstack.bdevperf")

#: The embedded default when no -c is given (SPDK's usual test bdev: 64 MiB of 512-byte blocks).
DEFAULT_BDEV = {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}


def prepare_real() -> list[str]:
    """Import every module declaring RPC methods (bdev modules and their RPCs) so the
    config loader finds them, and return the bdev/driver modules the reactors must import
    too (their replicated handlers)."""
    import sys
    from reactor import rpc
    rpc.discover()
    mods = sorted(m for m in sys.modules
                  if m == "bdev" or m.startswith("bdev.") or m.startswith("drivers."))
    return mods


def open_bdev(name: str, write: bool, event_cb=None, event_ctx=None):
    """``(0, desc)`` or ``(-errno, None)``."""
    return api.open_ext(name, write, event_cb, event_ctx)


def leaf_names() -> list[str]:
    """Names of the bdevs nothing is built on (SPDK's spdk_for_each_bdev_leaf), in order."""
    out = []
    b = api.first_leaf()
    while b is not None:
        out.append(api.get_name(b))
        b = api.next_leaf(b)
    return out


def dma_malloc(size: int):
    """``(buf, view)``: a buffer valid for I/O on this reactor and a writable memoryview.

    A private bytearray: the bdev layer takes any buffer-protocol object and bounce-copies
    a private one only when an I/O has to cross reactors (QoS funnelling), and bdevperf's
    queue of buffers must not drain the layer's shared pools (``api.dma_malloc``), which
    its modules' ``get_buf`` and the QoS bounce copies draw from too."""
    b = bytearray(size)
    return b, memoryview(b)


def dma_free(buf) -> None:
    pass


# ------------------------------------------------------------------- set-up on the app thread
def create_default(done) -> None:
    """Create the embedded default bdev (one malloc bdev); ``done(rc, message)``."""
    _call_rpc("bdev_malloc_create", dict(DEFAULT_BDEV), done)


def load_config_dict(config: dict, done) -> None:
    """Replay an SPDK JSON config (the RUNTIME entries of ``-c``/``--json``, or the configs
    bench scaling builds) through the RPC method table; ``done(rc, message)``.  The one place
    bdevperf loads a config."""
    from reactor.rpc.config import ConfigError, entries
    try:
        entries(config)
    except ConfigError as exc:
        done(-errno.EINVAL, str(exc))
        return
    _with_server(lambda server, finish: _load(server, config, finish), done)


def split_startup(config: dict) -> tuple[dict | None, dict]:
    """``(startup, rest)``: the entries only allowed before framework init (SPDK's STARTUP
    state, e.g. ``bdev_set_options``, which ``save_config`` writes first) and the others,
    each as a config dict.  The app replays ``startup`` before it initialises the bdev
    layer; bdevperf loads ``rest`` once the layer is up and waits for every answer."""
    from reactor.rpc.config import entries
    from reactor.rpc.registry import METHODS, RUNTIME
    startup, rest = [], []
    for _label, method, params in entries(config):
        m = METHODS.resolve(method)
        e = {"method": method} if params is None else {"method": method, "params": params}
        (startup if m is not None and not m.allowed_in(RUNTIME) else rest).append(e)
    wrap = lambda es: {"subsystems": [{"subsystem": "bdev", "config": es}]}  # noqa: E731
    return (wrap(startup) if startup else None), wrap(rest)


def check_config(config: dict) -> str | None:
    """Check every entry of ``config`` against the RPC method table (name and parameter
    schema) before anything starts; returns a one-line error naming the entry, or None."""
    from reactor.rpc.config import entries
    from reactor.rpc.registry import METHODS
    from reactor.rpc.schema import ParamError
    prepare_real()
    for label, method, params in entries(config):
        m = METHODS.resolve(method)
        if m is None:
            return f"{label}: unknown method '{method}'"
        try:
            m.validate(params)
        except ParamError as exc:
            return f"{label} {method}: invalid parameters: {exc}"
    return None


def _with_server(fn, done):
    """Run ``fn(dispatcher, finish)`` with a private RPC dispatcher in RUNTIME state (the
    config loader replays entries through the RPC method table; no socket is opened);
    ``finish(rc, msg)`` calls ``done``."""
    from reactor.rpc.dispatch import Dispatcher
    fn(Dispatcher(), done)


def _load(server, config, finish):
    from reactor.rpc.config import load_config as _lc
    _lc(server, config, lambda rc, msg: finish(rc, msg))


def _call_rpc(method, params, done):
    def fn(server, finish):
        def cb(err, result):
            if err is not None:
                finish(err.get("code", -1), f"{method}: {err.get('message')}")
            else:
                finish(0, None)
        server.call_local(method, params, cb)
    _with_server(fn, done)
