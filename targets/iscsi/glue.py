"""Portal listeners and connections: what ties the iSCSI configuration to sockets.

The main reactor owns the listening sockets of every portal group (SPDK's portal_grp.c:
a group's portals listen when it is created; with ``wait`` the accepting starts only at
iscsi_start_portal_group).  Accepted connections are served on the reactors by
targets/serve, each by an ``IscsiConnection`` (targets/iscsi/conn.py) reading its
reactor's replica (targets/iscsi/nodes.py).
"""
from __future__ import annotations

import logging
import socket

import reactor as rx

from . import config as C

log = logging.getLogger("ringstack.iscsi")


class PortalGroupListeners:
    """The listening sockets of one portal group (main reactor only)."""

    def __init__(self, tag: int, socks: list, portals: list, paused: bool):
        self.tag = tag
        self.socks = socks
        self.portals = portals         # [(host, port)] as configured
        self.paused = paused
        self.server = None             # the serving framework's listener, once started

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.close()
            except Exception:
                log.exception("iscsi: closing the listener of portal group %d", self.tag)
            self.server = None
        for s in self.socks:
            s.close()
        self.socks = []


_groups: dict = {}     # tag -> PortalGroupListeners


def _listen(host: str, port: str) -> socket.socket:
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


def open_portal_group(tag: int, portals: list, wait: bool) -> PortalGroupListeners:
    """Listen on every portal (OSError for the first that cannot, nothing left open)."""
    socks = []
    try:
        for p in portals:
            socks.append(_listen(p["host"], p["port"]))
    except OSError:
        for s in socks:
            s.close()
        raise
    g = PortalGroupListeners(tag, socks, [(p["host"], p["port"]) for p in portals], wait)
    _groups[tag] = g
    if not wait:
        _start_serving(g)
    log.info("iscsi: portal group %d listening on %s%s", tag,
             ", ".join(f"{h}:{p}" for h, p in g.portals), " (paused)" if wait else "")
    return g


def start_portal_group(tag: int) -> None:
    g = _groups.get(tag)
    if g is not None and g.paused:
        g.paused = False
        _start_serving(g)


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


def listening(tag: int):
    """[(host, port number)] a group's sockets are bound to (tests, diagnostics)."""
    g = _groups.get(tag)
    return [] if g is None else [s.getsockname()[:2] for s in g.socks]


def _start_serving(g: PortalGroupListeners) -> None:
    """Hand the group's sockets to the serving framework (accept on the main reactor,
    connections passed round-robin to the reactors)."""
    try:
        from targets.iscsi.conn import IscsiConnection  # noqa: F401
        from targets.serve import serve_listening   # noqa: F401
    except ImportError:
        log.warning("iscsi: portal group %d listens, but no connection engine is present "
                    "to serve it", g.tag)
        return
    g.server = serve_listening(g.socks, _make_connection_factory(g.tag))


def _make_connection_factory(pg_tag: int):
    def make(sock, meta):
        from targets.iscsi.conn import IscsiConnection
        from .nodes import registry
        meta = dict(meta or {}, pg_tag=pg_tag)
        return IscsiConnection(sock, meta, registry())
    return make


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
