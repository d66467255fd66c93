"""Portal listeners and connections: what ties the iSCSI configuration to sockets.

The main reactor owns the listening sockets of every portal group (SPDK's portal_grp.c:
a group's portals listen when it is created; with ``wait`` the accepting starts only at
iscsi_start_portal_group).  Accepted connections are served on the reactors by
targets/serve, each by an ``IscsiConnection`` (targets/iscsi/conn.py) reading its
reactor's replica (targets/iscsi/nodes.py).
"""
from __future__ import annotations

import errno
import logging
import socket

import reactor as rx

from . import config as C

log = logging.getLogger("ringstack.iscsi")


PROTOCOL = "iscsi"


def _serve():
    """targets.serve when the serving framework is present (else None: portals then
    listen but nothing accepts)."""
    try:
        import targets.serve as serve
    except ImportError:
        return None
    return serve if hasattr(serve, "register_protocol") else None


class _Context:
    """The serving framework's per-reactor context: builds each connection's engine."""

    def __init__(self, server):
        self.server = server

    def make(self, sock, meta):
        from targets.iscsi.conn import IscsiConnection
        from .nodes import registry
        meta = dict(meta or {})
        server = self.server
        sent = {k: v for k, v in meta.items() if k not in ("received", "conn_name")}

        def hand_over(sock, received, dest):
            return server.hand_over(sock, sent, received, dest)
        # the framework's "peer"/"listen" are display strings; the engine reads the
        # socket's own addresses when "peer"/"portal" are absent
        meta.pop("peer", None)
        meta.pop("portal", None)
        return IscsiConnection(sock, meta, registry(), hand_over=hand_over)


def _register_protocol() -> None:
    serve = _serve()
    if serve is not None:
        serve.register_protocol(PROTOCOL, _Context)


_register_protocol()


def start_server(done) -> None:
    """Subsystem init (main reactor): the iSCSI server on every reactor, holding no
    listener yet (portal groups add theirs).  A server that cannot start is logged:
    the control plane still works, and portal groups then cannot be created."""
    serve = _serve()
    if serve is None:
        done(0)
        return

    def started(rc, msg):
        if rc:
            log.error("iscsi: the server did not start on every reactor: %s", msg)
        done(0)
    serve.start(PROTOCOL, started)


def stop_server(done) -> None:
    serve = _serve()
    if serve is None or serve.current(PROTOCOL) is None:
        done()
        return
    serve.stop(PROTOCOL, lambda rc, msg: done(), reason="iSCSI target shutting down")


class PortalGroupListeners:
    """The listeners of one portal group (main reactor only).  Accepting ones belong to
    the serving framework; a group created with ``wait`` holds plain listening sockets
    (the port is taken, nothing is accepted: SPDK's paused acceptor) until started."""

    def __init__(self, tag: int, portals: list):
        self.tag = tag
        self.portals = portals          # [(host, port string)] as configured
        self.reserved: list = []        # plain sockets while paused
        self.listeners: list = []       # the framework's Listeners once accepting

    def close(self) -> None:
        srv = _server()
        for lst in self.listeners:
            if srv is not None:
                srv.unlisten(lst)
            else:
                lst.close()
        self.listeners = []
        for s in self.reserved:
            s.close()
        self.reserved = []


_groups: dict = {}     # tag -> PortalGroupListeners


def _server():
    serve = _serve()
    return serve.current(PROTOCOL) if serve is not None else None


def _address(host: str, port: str) -> str:
    return f"{host}:{C.parse_port(port)}"


def _reserve(host: str, port: str) -> socket.socket:
    addr = C.portal_bind_host(host)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, C.parse_port(port)))
        s.listen(128)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def _accept_on(g: PortalGroupListeners) -> None:
    """Accept on every portal of ``g`` through the framework (OSError, nothing left)."""
    srv = _server()
    if srv is None:
        raise OSError(errno.ENOTCONN, "the iSCSI server is not running")
    try:
        for host, port in g.portals:
            g.listeners.append(srv.listen(_address(host, port), {"pg_tag": g.tag}))
    except ValueError as exc:
        g.close()
        raise OSError(errno.EINVAL, str(exc)) from None
    except OSError:
        g.close()
        raise


def open_portal_group(tag: int, portals: list, wait: bool) -> PortalGroupListeners:
    """Listen on every portal (OSError for the first that cannot, nothing left open)."""
    g = PortalGroupListeners(tag, [(p["host"], p["port"]) for p in portals])
    if wait or _serve() is None:
        try:
            for host, port in g.portals:
                g.reserved.append(_reserve(host, port))
        except OSError:
            g.close()
            raise
        if _serve() is None:
            log.warning("iscsi: portal group %d listens, but no serving framework is present "
                        "to accept", tag)
    else:
        _accept_on(g)
    _groups[tag] = g
    log.info("iscsi: portal group %d listening on %s%s", tag,
             ", ".join(f"{h}:{p}" for h, p in g.portals), " (paused)" if wait else "")
    return g


def start_portal_group(tag: int) -> None:
    """iscsi_start_portal_group: a paused group starts accepting (its reserved sockets
    give way to the framework's listeners)."""
    g = _groups.get(tag)
    if g is None or not g.reserved or _serve() is None:
        return
    for s in g.reserved:
        s.close()
    g.reserved = []
    try:
        _accept_on(g)
    except OSError as exc:
        log.error("iscsi: portal group %d cannot accept: %s", tag, exc)


def close_portal_group(handle) -> None:
    if _groups.get(handle.tag) is handle:
        del _groups[handle.tag]
    handle.close()


def close_tag(tag: int) -> None:
    g = _groups.pop(tag, None)
    if g is not None:
        g.close()


def close_all() -> None:
    for tag in list(_groups):
        close_tag(tag)


# ---------------------------------------------------------------------- connections
def local_connections() -> list:
    """This reactor's iSCSI connections as SPDK's iscsi_get_connections entries (the
    protocol engine's list; none when the engine is absent)."""
    try:
        from targets.iscsi.conn import connections
    except ImportError:
        return []
    try:
        return list(connections())
    except Exception:
        log.exception("iscsi: listing connections")
        return []


@rx.remote("iscsi.glue.connections")
def _connections_step(done):
    done(0, local_connections())
