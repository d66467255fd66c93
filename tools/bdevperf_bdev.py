"""bdevperf's one door to the bdev layer.

Everything bdevperf calls on bdevs goes through the names below, so the integration with the
bdev layer is contained in this file.  Two backends:

* ``bdev``: ringstack's bdev layer (``bdev/api.py`` and the modules in ``drivers/``), used
  whenever it can be imported.
* ``standin``: :mod:`tools.bdevperf_standin`, a minimal implementation of the same calls,
  used only while the bdev layer does not exist yet.  bdevperf says so on stderr.

The data-plane names (``read_blocks`` ... ``queue_io_wait``) are bound to the backend's own
functions (no wrapper on the I/O path).  Their contract is SPDK's bdev.h:
``fn(desc, ch, [buf,] offset_blocks, num_blocks, cb, cb_arg) -> 0 | -errno``, ``cb(bdev_io,
success, cb_arg)`` exactly once, never inside the submit, on the submitting thread.
"""
from __future__ import annotations

import errno
import importlib
import importlib.util
import logging
import os
import tempfile

log = logging.getLogger("ringstack.bdevperf")

IO_TYPE_READ, IO_TYPE_WRITE, IO_TYPE_UNMAP, IO_TYPE_FLUSH, IO_TYPE_RESET = 1, 2, 3, 4, 5
IO_TYPE_WRITE_ZEROES = 9

#: The embedded default when no -c is given (SPDK's usual test bdev: 64 MiB of 512-byte blocks).
DEFAULT_BDEV = {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}


def _pick_backend() -> str:
    forced = os.environ.get("RINGSTACK_BDEVPERF_BACKEND")
    if forced in ("bdev", "standin"):
        return forced
    # The real layer needs its core and at least the malloc module (the embedded default).
    for mod in ("bdev.api", "drivers.malloc"):
        try:
            if importlib.util.find_spec(mod) is None:
                return "standin"
        except ModuleNotFoundError:
            return "standin"
    return "bdev"


BACKEND = _pick_backend()

if BACKEND == "standin":
    from tools import bdevperf_standin as _b

    #: Modules every reactor must import (their @remote handlers and registrations).
    IMPORTS = ["tools.bdevperf_standin"]
else:  # pragma: no cover - exercised once bdev/api.py lands
    import bdev.api as _b
    IMPORTS = ["bdev.api"] + [m for m in ("drivers.malloc", "drivers.null", "drivers.error")
                              if importlib.util.find_spec(m) is not None]

# -- data plane (bound to the backend's functions: no extra call on the I/O path)
read_blocks = _b.read_blocks
write_blocks = _b.write_blocks
unmap_blocks = _b.unmap_blocks
flush_blocks = _b.flush_blocks
write_zeroes_blocks = _b.write_zeroes_blocks
reset = _b.reset
free_io = _b.free_io
queue_io_wait = _b.queue_io_wait
IoWaitEntry = _b.IoWaitEntry

# -- descriptors, channels, getters
get_io_channel = _b.get_io_channel
put_io_channel = _b.put_io_channel
close = _b.close
desc_get_bdev = _b.desc_get_bdev
get_name = _b.get_name
get_block_size = _b.get_block_size
get_num_blocks = _b.get_num_blocks
io_type_supported = _b.io_type_supported
get_by_name = _b.get_by_name


def open_bdev(name: str, write: bool, event_cb=None, event_ctx=None):
    """``(0, desc)`` or ``(-errno, None)``."""
    return _b.open_ext(name, write, event_cb, event_ctx)


def leaf_names() -> list[str]:
    """Names of the bdevs nothing is built on (SPDK's spdk_for_each_bdev_leaf), in order."""
    return _b.leaf_names()


def dma_malloc(size: int):
    """``(buf, view)``: a buffer valid for I/O on this reactor and a writable memoryview."""
    return _b.dma_malloc(size)


def dma_free(buf) -> None:
    _b.dma_free(buf)


# ------------------------------------------------------------------- set-up on the app thread
def create_default(done) -> None:
    """Create the embedded default bdev (one malloc bdev); ``done(rc, message)``."""
    spec = DEFAULT_BDEV
    if BACKEND == "standin":
        _b.create("malloc", spec["name"], spec["num_blocks"], spec["block_size"],
                  lambda rc: done(rc, None if not rc else f"cannot create {spec['name']}: {os.strerror(-rc)}"))
        return
    _call_rpc("bdev_malloc_create", dict(spec), done)  # pragma: no cover


def load_config(path: str, done) -> None:
    """Replay an SPDK JSON config (``-c``); ``done(rc, message)``."""
    from reactor.rpc_config import ConfigError, read_config
    try:
        config = read_config(path)
    except ConfigError as exc:
        done(-errno.EINVAL, str(exc))
        return
    if BACKEND == "standin":
        _standin_config(config, done)
        return
    _with_server(lambda server, finish: _load(server, config, finish), done)  # pragma: no cover


def load_config_dict(config: dict, done) -> None:
    """Replay an SPDK JSON config given as a dict (bench scaling builds its bdevs so)."""
    from reactor.rpc_config import ConfigError, entries
    try:
        entries(config)
    except ConfigError as exc:
        done(-errno.EINVAL, str(exc))
        return
    if BACKEND == "standin":
        _standin_config(config, done)
        return
    _with_server(lambda server, finish: _load(server, config, finish), done)  # pragma: no cover


def _standin_config(config, done) -> None:
    """The stand-in understands bdev_malloc_create and bdev_null_create only."""
    from reactor.rpc_config import entries
    todo = []
    for label, method, params in entries(config):
        params = params or {}
        if method == "bdev_malloc_create":
            todo.append(("malloc", params.get("name") or f"Malloc{len(todo)}",
                         int(params["num_blocks"]), int(params.get("block_size", 512))))
        elif method == "bdev_null_create":
            todo.append(("null", params["name"], int(params["num_blocks"]),
                         int(params.get("block_size", 512))))
        elif method.startswith("bdev_"):
            done(-errno.ENOTSUP, f"{label} {method}: not available without the bdev layer "
                                 "(bdevperf is running on its stand-in)")
            return
    def step(i):
        if i == len(todo):
            done(0, None)
            return
        kind, name, nb, bs = todo[i]
        _b.create(kind, name, nb, bs,
                  lambda rc: step(i + 1) if not rc else done(rc, f"{name}: {os.strerror(-rc)}"))
    step(0)


def _with_server(fn, done):  # pragma: no cover - needs the bdev layer
    """Run ``fn(server, finish)`` with an RPC server on a private socket (the config loader
    replays entries through the RPC method table); closed when ``finish(rc, msg)`` runs."""
    from reactor.rpc_server import RpcServer
    d = tempfile.mkdtemp(prefix="bdevperf.")
    server = RpcServer(os.path.join(d, "rpc.sock"))

    def finish(rc, msg):
        server.close()
        try:
            os.rmdir(d)
        except OSError:
            pass
        done(rc, msg)
    fn(server, finish)


def _load(server, config, finish):  # pragma: no cover
    from reactor.rpc_config import load_config as _lc
    from reactor.rpc_registry import RUNTIME
    server.set_state(RUNTIME) if hasattr(server, "set_state") else None
    _lc(server, config, lambda rc, msg: finish(rc, msg))


def _call_rpc(method, params, done):  # pragma: no cover
    def fn(server, finish):
        def cb(err, result):
            if err is not None:
                finish(err.get("code", -1), f"{method}: {err.get('message')}")
            else:
                finish(0, None)
        server.call_local(method, params, cb)
    _with_server(fn, done)
