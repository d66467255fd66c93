"""NBD server control plane on the main reactor: JSON-RPC methods, the "nbd" subsystem
(JSON config: save_config writes, load_config replays), and `start_exporting_all` behind
``ringstack start --nbd SOCK``.

Methods (all RUNTIME, on the app thread; each answers once every reactor applied it):

  nbd_server_start {listen}            Unix socket path, or host:port (":port" = loopback)
  nbd_export_add {bdev_name, export_name?, readonly?}  -> export name
  nbd_export_remove {export_name}      connections of that export get ESHUTDOWN and close
  nbd_get_exports                      [{export_name, bdev_name, size, ..., connections}]
  nbd_get_stats                        per-reactor counters (placement, requests, bytes)
  nbd_server_stop                      connections finish in-flight requests, then close
  nbd_start_disk / nbd_stop_disk / nbd_get_disks   SPDK's kernel-device methods (below)

Operations run one at a time, in arrival order (a queue on the app thread), so an export
added while a stop is under way cannot slip between two reactors' tables.  The main
reactor keeps a read-only *watch* descriptor per export: when the bdev is hot-removed,
its REMOVE event takes the export out of every reactor's table (each connection got its
own REMOVE event on its own reactor and closed itself).
"""
from __future__ import annotations

import errno
import logging
import os
import re

import bdev.api as api
import reactor as rx
from reactor import subsystem
from reactor.rpc import Param, rpc_method

from .. import serve
from ..serve.listener import parse_address
from . import service
from .service import NAME

log = logging.getLogger("ringstack.nbd")

#: Upper bound on a whole stop (the per-reactor drain plus the walk), used at app shutdown
#: so that a dead reactor cannot hold the shutdown forever.
FINI_TIMEOUT_S = serve.STOP_DRAIN_S + 3.0


class _Server:
    """What the main reactor knows about the running server."""

    def __init__(self, listen: str):
        self.listen = listen
        self.exports: dict = {}      # export name -> {"bdev_name", "readonly"}
        self.watch: dict = {}        # export name -> read-only desc on the app thread
        self.auto = False            # --nbd: export bdevs registered later too


_server: _Server | None = None
_ops = serve.OneAtATime("nbd")


def _fail(cb, rc: int, message: str | None = None) -> None:
    cb(rc if rc < 0 else -rc, message or os.strerror(abs(rc)), None)


# ====================================================================== operations
# Each takes cb(rc, message, result) and runs inside _ops.run.

def server_start(listen: str, cb, conn_opts: dict | None = None) -> None:
    def op(done):
        global _server

        def reply(rc, msg, result):
            done()
            cb(rc, msg, result)
        if _server is not None:
            _fail(reply, -errno.EEXIST, f"NBD server already listening on {_server.listen}")
            return
        try:
            parse_address(listen)
        except ValueError as exc:
            _fail(reply, -errno.EINVAL, str(exc))
            return
        if serve.current(NAME) is not None:
            _fail(reply, -errno.EBUSY, "a previous NBD server is still stopping")
            return
        _server = _Server(listen)

        def started(rc, msg):
            if rc:
                log.error("nbd_server_start: %s", msg)
                _reset()
                reply(rc, msg, None)
                return
            srv = serve.current(NAME)
            log.info("nbd: serving on %s (reactors %s)", nbd_uri(srv.listeners[0]), srv.rr)
            reply(0, None, True)
        serve.start(NAME, started, opts={"conn_opts": conn_opts} if conn_opts else None,
                    listen=[(listen, {})])
    _ops.run(op)


def nbd_uri(listener) -> str:
    """The NBD URI of a listener (nbd+unix:///?socket=PATH or nbd://HOST:PORT/)."""
    if listener.path is not None:
        return f"nbd+unix:///?socket={listener.path}"
    return f"nbd://{listener.display}/"


def _reset() -> None:
    global _server
    s, _server = _server, None
    if s is not None and s.auto:
        s.auto = False
        api.unwatch_registry(_auto_export)
    if s is not None:
        for desc in s.watch.values():
            api.close(desc)
        s.watch.clear()


def server_stop(cb) -> None:
    def op(done):
        if _server is None:
            done()
            _fail(cb, -errno.EINVAL, "NBD server is not running")
            return
        _reset()

        def stopped(rc, msg):
            done()
            cb(0, None, True)
        serve.stop(NAME, stopped)
    _ops.run(op)


def export_add(bdev_name: str, export_name: str | None, readonly: bool, cb) -> None:
    def op(done):
        def reply(rc, msg, result):
            done()
            cb(rc, msg, result)
        s = _server
        if s is None:
            _fail(reply, -errno.EINVAL, "NBD server is not running (nbd_server_start first)")
            return
        # "" is a real name: the default export, what a client whose URI names no export
        # gets (nbd://host:port, nbd+unix:///?socket=...), as nbdkit and qemu-nbd serve it
        name = export_name if export_name is not None else bdev_name
        if len(name.encode()) > 4096 or "\0" in name:
            _fail(reply, -errno.EINVAL, f"invalid export name {name!r}")
            return
        if name in s.exports:
            _fail(reply, -errno.EEXIST, f"export {name!r} already exists")
            return
        if api.get_by_name(bdev_name) is None:
            _fail(reply, -errno.ENODEV, f"bdev {bdev_name!r} does not exist")
            return
        if not readonly:   # a claimed bdev cannot be written: say so now, not per client
            rc, desc = api.open_ext(bdev_name, True, _ignore_event)
            if rc:
                _fail(reply, rc, f"cannot open bdev {bdev_name!r} for writing: {os.strerror(-rc)}")
                return
            api.close(desc)
        rc, watch = api.open_ext(bdev_name, False, _on_watch_event, name)
        if rc:
            _fail(reply, rc, f"cannot open bdev {bdev_name!r}: {os.strerror(-rc)}")
            return

        def added(rc, outs, msg):
            if rc:
                api.close(watch)
                serve.run_on_all_reactors(NAME, "export_remove", {"export_name": name},
                                          lambda *_: reply(rc, msg, None))
                return
            s.exports[name] = {"bdev_name": api.get_name(api.desc_get_bdev(watch)),
                               "readonly": bool(readonly)}
            s.watch[name] = watch
            reply(0, None, name)
        serve.run_on_all_reactors(NAME, "export_add", {"bdev_name": bdev_name, "export_name": name,
                                                       "readonly": bool(readonly)}, added)
    _ops.run(op)


def export_remove(export_name: str, cb) -> None:
    def op(done):
        s = _server
        if s is None or export_name not in s.exports:
            done()
            _fail(cb, -errno.ENOENT, f"export {export_name!r} does not exist")
            return
        del s.exports[export_name]
        w = s.watch.pop(export_name, None)
        if w is not None:
            api.close(w)

        def removed(rc, outs, msg):
            done()
            cb(0, None, True)
        serve.run_on_all_reactors(NAME, "export_remove", {"export_name": export_name}, removed)
    _ops.run(op)


def _ignore_event(event, bdev, ctx) -> None:
    pass


def _on_watch_event(event, bdev, name) -> None:
    """REMOVE on the main reactor's watch desc: take the export out everywhere."""
    if event != api.EVENT_REMOVE:
        return
    s = _server
    if s is None or name not in s.exports:
        return
    log.warning("nbd: bdev %s was removed; removing export %r", api.get_name(bdev), name)

    def done_cb(rc, msg, result):
        if rc:
            log.error("nbd: removing export %r after hot-remove: %s", name, msg)
    export_remove(name, done_cb)


def get_info(cb) -> None:
    def op(done):
        s = _server
        if s is None:
            done()
            cb(0, None, [])
            return

        def got(rc, msg, infos):
            done()
            cb(rc, msg, infos)
        serve.get_connections(NAME, got)
    _ops.run(op)


def _exports_result(infos) -> list:
    s = _server
    if s is None:
        return []
    svc = service.current()
    out = []
    for name, cfg in s.exports.items():
        e = None
        if svc is not None:
            e = next((x for x in svc.exports if x.name == name), None)
        entry = {"export_name": name, "bdev_name": cfg["bdev_name"],
                 "readonly": e.readonly if e is not None else cfg["readonly"],
                 "size": e.size if e is not None else 0,
                 "block_size": e.block_min if e is not None else 0,
                 "transmission_flags": e.transmission_flags() if e is not None else 0,
                 "connections": []}
        for info in infos:
            if not info:
                continue
            for c in info["connections"]:
                if c.get("export_name") == name:
                    cs = c["stats"]
                    entry["connections"].append({
                        "name": c["name"], "export_name": name, "state": c["state"],
                        "inflight": c["inflight"], "requests": cs["requests"],
                        "bytes_read": cs["bytes_read"], "bytes_written": cs["bytes_written"],
                        "reactor": info["reactor"], "lcore": info["lcore"]})
        out.append(entry)
    return out


def start_exporting_all(listen: str, cb=None) -> None:
    """``ringstack start --nbd SOCK``: start the server on ``listen`` and export every bdev
    registered now, each under its own name, and every bdev registered later while the
    server runs (the bdev layer's registry notifications); a deleted bdev's export goes
    away with it.  ``cb(rc, message)`` when the bdevs present at start are exported."""
    def started(rc, msg, _):
        if rc:
            log.error("--nbd %s: %s", listen, msg)
            if cb:
                cb(rc, msg)
            return
        if _server is not None and not _server.auto:
            _server.auto = True
            api.watch_registry(_auto_export)    # before listing: nothing slips in between
        names = [api.get_name(b) for b in api.bdevs()]
        if not names:
            log.warning("--nbd %s: no bdev to export yet (add them with nbd_export_add)", listen)
        left = [len(names)]
        errs = []

        def one(rc, msg, _):
            if rc:
                errs.append(msg)
            left[0] -= 1
            if left[0] == 0:
                for m in errs:
                    log.error("--nbd: %s", m)
                log.warning("NBD server on %s exporting %s", listen, ", ".join(names) or "nothing")
                if cb:
                    cb(-errno.EIO if errs else 0, "; ".join(errs) or None)
        for n in names:
            export_add(n, None, False, one)
        if not names and cb:
            cb(0, None)
    server_start(listen, started)


def _auto_export(event: str, name: str) -> None:
    """Registry notification (main thread) while ``--nbd`` runs: export a new bdev under
    its name (not one claimed by a module: its virtual bdev is what gets exported), and
    remove the export of a bdev being deleted (its watch desc's REMOVE does too; whichever
    runs second finds nothing to do)."""
    s = _server
    if s is None or not s.auto:
        return
    if event == "register":
        b = api.get_by_name(name)
        if b is None or name in s.exports or getattr(b, "claim_module", None) is not None:
            return

        def added(rc, msg, _):
            if rc and rc != -errno.EEXIST:
                log.error("--nbd: cannot export new bdev %s: %s", name, msg)
            elif not rc:
                log.warning("NBD server on %s now exports %s", s.listen, name)
        export_add(name, None, False, added)
    elif event == "unregister":
        cfg = s.exports.get(name)
        if cfg is not None and cfg["bdev_name"] == name:
            export_remove(name, lambda rc, msg, _: None)


# ====================================================================== RPC methods
def _answer(request):
    def cb(rc, msg, result):
        if rc:
            request.error(rc, msg or os.strerror(-rc))
        else:
            request.result(result)
    return cb


@rpc_method("nbd_server_start", params=[
    Param("listen", str, help="Unix socket path, or host:port (TCP; ':port' binds 127.0.0.1)"),
    Param("max_inflight", int, default=256, min=1, max=65536,
          help="requests in flight per connection before it stops reading"),
])
def _nbd_server_start(request, params):
    """Start the NBD server: listener on the main reactor, connections spread over every
    reactor."""
    opts = {"max_inflight": params["max_inflight"]} if params["max_inflight"] != 256 else None
    server_start(params["listen"], _answer(request), opts)


@rpc_method("nbd_server_stop")
def _nbd_server_stop(request, params):
    """Stop the NBD server: connections finish in-flight requests and close; every export
    is dropped."""
    server_stop(_answer(request))


@rpc_method("nbd_export_add", params=[
    Param("bdev_name", str, help="bdev to export"),
    Param("export_name", str, required=False,
          help="NBD export name (default: the bdev name; \"\" is the default export, served to a client that names none)"),
    Param("readonly", bool, default=False, help="export read-only"),
])
def _nbd_export_add(request, params):
    """Export a bdev over NBD; returns the export name."""
    export_add(params["bdev_name"], params["export_name"], params["readonly"], _answer(request))


@rpc_method("nbd_export_remove", params=[Param("export_name", str, help="export to remove")])
def _nbd_export_remove(request, params):
    """Stop exporting: its connections get ESHUTDOWN for in-flight requests and close."""
    export_remove(params["export_name"], _answer(request))


@rpc_method("nbd_get_exports")
def _nbd_get_exports(request, params):
    """List the exports with their geometry and open connections (reactor of each)."""
    get_info(lambda rc, msg, infos: request.error(rc, msg) if rc else
             request.result(_exports_result(infos)))


#: the counters every reactor reports, before any connection added to them
_ZERO_STATS = {"connections_accepted": 0, "connections_open": 0, "requests": 0, "errors": 0,
               "bytes_read": 0, "bytes_written": 0}


@rpc_method("nbd_get_stats")
def _nbd_get_stats(request, params):
    """Per-reactor NBD counters: connections accepted/open, requests, errors, bytes."""
    def got(rc, msg, infos):
        if rc:
            request.error(rc, msg)
            return
        s = _server
        srv = serve.current(NAME)
        uri = nbd_uri(srv.listeners[0]) if srv is not None and srv.listeners else None
        request.result({"listen": s.listen if s else None, "uri": uri,
                        "reactors": [dict(_ZERO_STATS, **i["stats"], reactor=i["reactor"],
                                          lcore=i["lcore"]) for i in infos if i]})
    get_info(got)


# ====================================================================== kernel nbd devices
# SPDK's nbd_start_disk attaches a bdev to a kernel /dev/nbdN (lib/nbd/nbd_rpc.c).  Here
# the checks and answers are SPDK's, in SPDK's order: the device's name (/dev/nbd<N>, no
# tail), busy (ours, or /sys/block/nbdN/pid present), the first free one when none is
# named ("nbd device not found" when no /dev/nbdN exists, as on a host without the nbd
# module), the bdev opened for writing, then the device node opened.  Handing an opened
# device to the kernel's driver (NBD_SET_SOCK / NBD_DO_IT) is not done: that last step
# answers -EOPNOTSUPP, so this target serves no kernel device: nbd_get_disks is [] and
# nbd_stop_disk finds nothing to stop, with SPDK's answers for that.
_NBD_DEV = re.compile(r"/dev/nbd(\d+)\Z")


def _nbd_device_state(path: str) -> int:
    """SPDK's check_available_nbd_disk: 0 free, -EBUSY in use, -EINVAL not /dev/nbd<N>."""
    m = _NBD_DEV.match(path)
    if m is None:
        return -errno.EINVAL
    if os.path.exists(f"/sys/block/nbd{int(m.group(1))}/pid"):
        return -errno.EBUSY
    return 0


def _free_nbd_device():
    i = 0
    while os.path.exists(f"/dev/nbd{i}"):
        if _nbd_device_state(f"/dev/nbd{i}") == 0:
            return f"/dev/nbd{i}"
        i += 1
    return None


@rpc_method("nbd_start_disk", params=[
    Param("bdev_name", str, help="bdev to attach"),
    Param("nbd_device", str, required=False, help="/dev/nbd<N> (default: the first free one)"),
])
def _nbd_start_disk(request, params):
    """Attach a bdev to a kernel NBD device (SPDK's method; here every check is SPDK's, but the hand-over to the kernel's nbd driver is not implemented: -EOPNOTSUPP)."""  # noqa: E501
    path = params["nbd_device"]
    if path is not None:
        rc = _nbd_device_state(path)
        if rc == -errno.EBUSY:
            request.errno(rc)
            return
        if rc:
            request.error(-errno.ENODEV, f"illegal nbd device {path}")
            return
    else:
        path = _free_nbd_device()
        if path is None:
            request.error(-errno.ENODEV, "nbd device not found")
            return
    rc, desc = api.open_ext(params["bdev_name"], True, _ignore_event)
    if rc:
        request.errno(rc)
        return
    api.close(desc)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        request.errno(-(exc.errno or errno.EIO))
        return
    os.close(fd)
    request.error(-errno.EOPNOTSUPP, f"{path}: attaching a kernel nbd device is not implemented "
                  "(export the bdev with nbd_export_add and connect nbd-client to it)")


@rpc_method("nbd_stop_disk", params=[Param("nbd_device", str, help="/dev/nbd<N>")])
def _nbd_stop_disk(request, params):
    """Detach a kernel NBD device (SPDK's method): -ENODEV, as SPDK answers for a device it does not serve (this target serves none)."""  # noqa: E501
    request.errno(-errno.ENODEV)


@rpc_method("nbd_get_disks", params=[
    Param("nbd_device", str, required=False, help="only this device"),
])
def _nbd_get_disks(request, params):
    """The kernel NBD devices this target serves (SPDK's method, [{nbd_device, bdev_name}]): none, so [] (-ENODEV for a named device)."""  # noqa: E501
    if params["nbd_device"] is not None:
        request.errno(-errno.ENODEV)
        return
    return []


# ====================================================================== subsystem
def _write_config() -> list:
    s = _server
    if s is None:
        return []
    out = [{"method": "nbd_server_start", "params": {"listen": s.listen}}]
    for name, cfg in s.exports.items():
        out.append({"method": "nbd_export_add", "params": {
            "bdev_name": cfg["bdev_name"], "export_name": name, "readonly": cfg["readonly"]}})
    return out


def _fini(done) -> None:
    """App shutdown: stop the server on every reactor (bounded: a reactor that died cannot
    hold the shutdown), before the bdev layer finishes."""
    if _server is None and serve.current(NAME) is None:
        done()
        return
    fired = []
    timer = []

    def finish(*_):
        if fired:
            return
        fired.append(1)
        if timer:
            rx.poller_unregister(timer[0])
        srv = serve.current(NAME)
        if srv is not None:        # the walk never came back: close what is local at least
            srv.stop(lambda: None)
            srv._finish_stop()
        done()

    def expired(_arg):
        log.error("nbd: server stop did not finish in %.0f s; continuing the shutdown", FINI_TIMEOUT_S)
        finish()
        return 1
    timer.append(rx.poller_register(expired, None, int(FINI_TIMEOUT_S * 1e6), "nbd_fini_timeout"))
    if _server is None:
        serve.stop(NAME, finish)
    else:
        server_stop(finish)


subsystem.register_subsystem("nbd", fini=_fini,
                             depends=("bdev",) if "bdev" in subsystem._registry else (),
                             write_config=_write_config)
