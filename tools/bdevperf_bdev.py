"""bdevperf's one door to the bdev layer.

Everything bdevperf calls on bdevs goes through the names below, so the integration with the
bdev layer is contained in this file.  Two backends:

* ``bdev``: ringstack's bdev layer (``bdev/api.py`` and the modules in ``drivers/``), used
  when it and its malloc module (the embedded default) exist, and always with ``-c``.
* ``standin``: :mod:`tools.bdevperf_standin`, a minimal implementation of the same calls,
  used only while the bdev layer is incomplete.  bdevperf says so on stderr.

``RINGSTACK_BDEVPERF_BACKEND=bdev|standin`` forces one (bdevperf sets it for its reactor
processes, so they bind the same backend as the launcher).

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


_NAMES = ("read_blocks", "write_blocks", "unmap_blocks", "flush_blocks", "write_zeroes_blocks",
          "reset", "free_io", "queue_io_wait", "IoWaitEntry", "get_io_channel", "put_io_channel",
          "close", "desc_get_bdev", "get_name", "get_block_size", "get_num_blocks",
          "io_type_supported", "get_by_name")

BACKEND = ""
IMPORTS: list[str] = []
_b = None


def use_backend(name: str) -> None:
    """Bind this module's names to backend ``name`` ("bdev" or "standin").  Call before the
    app starts: the choice goes to the reactor processes through the environment."""
    global BACKEND, IMPORTS, _b
    if name == "standin":
        from tools import bdevperf_standin as mod
        imports = ["tools.bdevperf_standin"]
    else:
        import bdev as mod
        imports = ["bdev"]
    _b = mod
    BACKEND = name
    IMPORTS = imports
    g = globals()
    for n in _NAMES:
        g[n] = getattr(mod, n)


def real_layer_available() -> bool:
    try:
        return importlib.util.find_spec("bdev.api") is not None
    except ModuleNotFoundError:
        return False


def prepare_real() -> list[str]:
    """Import every module declaring RPC methods (bdev modules and their RPCs) so the
    config loader finds them, and return the bdev/driver modules the reactors must import
    too (their replicated handlers)."""
    import sys
    from reactor import rpc
    rpc.discover()
    mods = sorted(m for m in sys.modules
                  if (m == "bdev" or m.startswith("bdev.") or m.startswith("drivers."))
                  and not m.startswith("drivers.nbd"))
    return mods


use_backend(_pick_backend())


def open_bdev(name: str, write: bool, event_cb=None, event_ctx=None):
    """``(0, desc)`` or ``(-errno, None)``."""
    return _b.open_ext(name, write, event_cb, event_ctx)


def leaf_names() -> list[str]:
    """Names of the bdevs nothing is built on (SPDK's spdk_for_each_bdev_leaf), in order."""
    if BACKEND == "standin":
        return _b.leaf_names()
    out = []
    b = _b.first_leaf()
    while b is not None:
        out.append(_b.get_name(b))
        b = _b.next_leaf(b)
    return out


def dma_malloc(size: int):
    """``(buf, view)``: a buffer valid for I/O on this reactor and a writable memoryview.

    The bdev layer takes any buffer-protocol object and bounce-copies a private one only
    when an I/O has to cross reactors (QoS funnelling); it offers no dma_malloc outside its
    own get_buf pools (which bdevperf must not drain), so this is a private bytearray."""
    if BACKEND == "standin":
        return _b.dma_malloc(size)
    b = bytearray(size)
    return b, memoryview(b)


def dma_free(buf) -> None:
    pass


# ------------------------------------------------------------------- set-up on the app thread
def create_default(done) -> None:
    """Create the embedded default bdev (one malloc bdev); ``done(rc, message)``."""
    spec = DEFAULT_BDEV
    if BACKEND == "standin":
        _b.create("malloc", spec["name"], spec["num_blocks"], spec["block_size"],
                  lambda rc: done(rc, None if not rc else f"cannot create {spec['name']}: {os.strerror(-rc)}"))
        return
    _call_rpc("bdev_malloc_create", dict(spec), done)


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
    _with_server(lambda server, finish: _load(server, config, finish), done)


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
    _with_server(lambda server, finish: _load(server, config, finish), done)


def split_startup(config: dict) -> tuple[dict | None, dict]:
    """``(startup, rest)``: the entries only allowed before framework init (SPDK's STARTUP
    state, e.g. ``bdev_set_options``, which ``save_config`` writes first) and the others,
    each as a config dict.  The app replays ``startup`` before it initialises the bdev
    layer; bdevperf loads ``rest`` once the layer is up and waits for every answer."""
    from reactor.rpc_config import entries
    from reactor.rpc_registry import METHODS, RUNTIME
    startup, rest = [], []
    for _label, method, params in entries(config):
        m = METHODS.resolve(method)
        e = {"method": method} if params is None else {"method": method, "params": params}
        (startup if m is not None and not m.allowed_in(RUNTIME) else rest).append(e)
    wrap = lambda es: {"subsystems": [{"subsystem": "bdev", "config": es}]}  # noqa: E731
    return (wrap(startup) if startup else None), wrap(rest)


def check_config(config: dict) -> str | None:
    """Check every entry of ``config`` against the RPC method table (name and parameter
    schema) before anything starts; returns a one-line error naming the entry, or None.
    Only with the real layer (the stand-in knows two methods and says so itself)."""
    if not real_layer_available():
        return None
    from reactor.rpc_config import entries
    from reactor.rpc_registry import METHODS
    from reactor.rpc_schema import ParamError
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


def _with_server(fn, done):
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


def _load(server, config, finish):
    from reactor.rpc_config import load_config as _lc
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
