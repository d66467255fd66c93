"""Each reactor's replica of the iSCSI configuration (docs/targets.md, Contract 4).

The control plane (targets/iscsi/rpc.py) decides every change on the main reactor,
checks it against the main reactor's replica, then broadcasts it with an undo
(reactor.fanout): every reactor applies the same pure operation (targets/iscsi/config.py)
to its own replica and builds its own SCSI devices.  A reactor that fails (a bdev it
cannot open) answers an error and every reactor that applied the change restores what it
had, so a refused change leaves every replica as it was.

Changes arrive one at a time (the control plane's queue), so a replica keeps exactly
one undo record: the state before the last change it applied.

The protocol engine of a connection reads its reactor's replica::

    reg = registry()
    reg.options, reg.discovery_auth
    reg.find_target(iqn) -> TargetNode | None
    reg.access_allowed(node, initiator_name, initiator_addr, pg_tag) -> bool
    reg.send_targets(initiator_name, initiator_addr, pg_tag, value, target_addr=None)
    reg.find_chap_secret(group_tag, user) -> (secret, muser, msecret) | None
"""
from __future__ import annotations

import errno
import logging

import reactor as rx

from . import config as C

log = logging.getLogger("ringstack.iscsi")

_KEY = "iscsi.registry"


def _scsi_dev_class():
    """targets.scsi.ScsiDev when the SCSI layer is present (None otherwise: the
    control plane then still works, with no device behind a target)."""
    try:
        from targets.scsi import ScsiDev
    except ImportError:
        return None
    return ScsiDev


def _close_dev(dev) -> None:
    for name in ("close", "destruct", "destroy"):
        fn = getattr(dev, name, None)
        if callable(fn):
            try:
                fn()
            except Exception:
                log.exception("closing SCSI device %s", getattr(dev, "name", "?"))
            return


class TargetNode:
    """A target node as a connection sees it (read-only for the engine)."""

    __slots__ = ("name", "alias", "dev", "queue_depth", "disable_chap", "require_chap",
                 "mutual_chap", "chap_group", "header_digest", "data_digest", "pg_maps",
                 "luns", "active_conns")

    def __init__(self, t: dict, dev):
        self.dev = dev
        self.active_conns = 0          # the engine counts its logged-in sessions here
        self.update(t)

    def update(self, t: dict) -> None:
        self.name = t["name"]
        self.alias = t["alias_name"]
        self.queue_depth = t["queue_depth"]
        self.disable_chap = t["disable_chap"]
        self.require_chap = t["require_chap"]
        self.mutual_chap = t["mutual_chap"]
        self.chap_group = t["chap_group"]
        self.header_digest = t["header_digest"]
        self.data_digest = t["data_digest"]
        self.pg_maps = [(pg, tuple(igs)) for pg, igs in t["pg_maps"]]
        self.luns = [tuple(x) for x in t["luns"]]

    def __repr__(self):
        return f"<TargetNode {self.name} luns={self.luns}>"


class Registry:
    """One reactor's replica: the plain config plus the runtime objects built from it."""

    def __init__(self):
        self.config = C.Config()
        self.nodes: dict = {}         # lower-case full name -> TargetNode
        self._undo = None             # (change id, config, nodes, devs built by that change)

    # ------------------------------------------------------------------ engine queries
    @property
    def options(self) -> dict:
        return self.config.options

    @property
    def discovery_auth(self) -> tuple:
        o = self.config.options
        return (o["disable_chap"], o["require_chap"], o["mutual_chap"], o["chap_group"])

    def find_target(self, iqn: str):
        return self.nodes.get(iqn.lower()) if iqn else None

    def portal_group(self, tag: int):
        return self.config.portal_groups.get(tag)

    def _ig_allows_name(self, ig_tag: int, iqn: str):
        ig = self.config.initiator_groups.get(ig_tag)
        return None if ig is None else C.initiator_name_verdict(ig["initiators"], iqn)

    def access_allowed(self, node, initiator_name: str, initiator_addr: str, pg_tag: int) -> bool:
        """SPDK's iscsi_tgt_node_access: through the pg map of ``pg_tag``, the first
        initiator group naming the initiator decides (a "!" entry denies outright); an
        allowing group must also match the address with one of its netmasks."""
        if node is None or not initiator_name or not initiator_addr:
            return False
        igs = next((igs for pg, igs in node.pg_maps if pg == pg_tag), None)
        if igs is None:
            return False
        for ig_tag in igs:
            verdict = self._ig_allows_name(ig_tag, initiator_name)
            if verdict is None:
                continue
            if verdict is False:
                return False
            ig = self.config.initiator_groups[ig_tag]
            if any(C.netmask_allows(m, initiator_addr) for m in ig["netmasks"]):
                return True
        return False

    def _name_allowed(self, node, iqn: str) -> bool:
        # SPDK's iscsi_tgt_node_allow_iscsi_name: the first group (over every pg map)
        # that names the initiator decides; addresses are not looked at
        for _pg, igs in node.pg_maps:
            for ig_tag in igs:
                verdict = self._ig_allows_name(ig_tag, iqn)
                if verdict is not None:
                    return verdict
        return False

    def send_targets(self, initiator_name: str, initiator_addr: str, pg_tag: int, value: str,
                     target_addr: str | None = None) -> list:
        """SPDK's iscsi_send_tgts: for ``value`` "All" (any case) every target, else the
        one named, that the initiator's name is allowed to see; each with the portals
        of its public (non-private) mapped portal groups as "host:port,tag".  A
        wildcard portal (0.0.0.0 / [::]) is reported as ``target_addr``, the address
        the initiator connected to (skipped when unknown or of the other family)."""
        out = []
        for node in self.nodes.values():
            if value.lower() != "all" and value.lower() != node.name.lower():
                continue
            if not self._name_allowed(node, initiator_name):
                continue
            addrs = []
            for tag, _igs in node.pg_maps:
                pg = self.config.portal_groups.get(tag)
                if pg is None or pg["private"]:
                    continue
                for p in pg["portals"]:
                    host = p["host"]
                    if host in ("0.0.0.0", "[::]"):
                        if not target_addr:
                            continue
                        v6 = ":" in target_addr
                        if v6 != (host == "[::]"):
                            continue
                        host = f"[{target_addr}]" if v6 else target_addr
                    addrs.append(f"{host}:{p['port']},{tag}")
            out.append((node.name, addrs))
        return out

    def find_chap_secret(self, group_tag: int, user: str):
        for s in self.config.auth_groups.get(group_tag, ()):
            if s["user"] == user:
                return (s["secret"], s.get("muser"), s.get("msecret"))
        return None

    # ------------------------------------------------------------------ changes
    def apply(self, change_id: int, op: str, args: dict) -> None:
        """Apply one change (ConfigError if refused; then nothing changed here).  The
        devices it replaces stay open until :meth:`commit` (an undo puts them back)."""
        if op == "target_node_add_lun":
            # SPDK's iscsi_tgt_node_add_lun: not while sessions use the target
            key = self.config.find_target_key(args["name"]) or self.config.find_target_key(
                C.full_target_name(args["name"], self.config.options["node_base"]))
            node = self.nodes.get(key.lower()) if key else None
            n = _active_conns(node) if node is not None else 0
            if n:
                raise C.ConfigError(-errno.EBUSY, f"target {node.name} has active "
                                    f"connections (count={n})")
        new = self.config.copy()
        C.OPS[op](new, args)
        nodes, built = self._rebuild(new, keep_dev_on_shrink=(op == "lun_removed"))
        self._undo = (change_id, self.config, self.nodes, built, op, args)
        self.config, self.nodes = new, nodes

    def commit(self, change_id: int) -> None:
        """The change was applied everywhere: close the devices it replaced or dropped."""
        if self._undo is None or self._undo[0] != change_id:
            return
        _cid, _cfg, old_nodes, _built, op, args = self._undo
        self._undo = None
        live = {id(n.dev) for n in self.nodes.values() if n.dev is not None}
        for key, node in old_nodes.items():
            if key not in self.nodes:
                # SPDK's iscsi_tgt_node_destruct: the node's connections log out first
                _drop_sessions(node.name, "target node deleted")
            if node.dev is not None and id(node.dev) not in live:
                _close_dev(node.dev)
        if op == "lun_removed":
            # the device kept its object; one that can drop a LUN is told to (the LUN's
            # commands fail already: the SCSI layer saw the bdev go)
            node = self.find_target(args["name"])
            remove = getattr(node.dev, "remove_lun", None) if node is not None else None
            if callable(remove):
                remove(args["lun_id"])

    def undo(self, change_id: int) -> None:
        """The change failed somewhere: back to the state before it, here too."""
        if self._undo is None or self._undo[0] != change_id:
            return
        _cid, cfg, nodes, built = self._undo[:4]
        self._undo = None
        for dev in built:
            _close_dev(dev)
        self.config, self.nodes = cfg, nodes
        for node in nodes.values():
            if node.dev is not None:
                _reregister(node.dev)
        for node in nodes.values():          # attributes a kept node took from the change
            node.update(cfg.targets[node.name])

    def _rebuild(self, cfg: C.Config, keep_dev_on_shrink: bool = False):
        """TargetNodes for ``cfg``: a node whose LUN list is unchanged keeps its device
        (and its sessions); a new or re-LUNed one gets a new device, except a LUN taken
        away by hot-remove (``keep_dev_on_shrink``): the SCSI layer dropped that LUN
        from the device itself."""
        out, built = {}, []
        try:
            for name, t in cfg.targets.items():
                key = name.lower()
                old = self.nodes.get(key)
                luns = [tuple(x) for x in t["luns"]]
                if old is not None and (old.luns == luns or (
                        keep_dev_on_shrink and set(luns) <= set(old.luns))):
                    old.update(t)         # the same object: sessions hold it
                    out[key] = old
                    continue
                dev = _make_dev(name, luns, t["dev_id"])
                if dev is not None:
                    built.append(dev)
                node = TargetNode(t, dev)
                if old is not None:
                    node.active_conns = old.active_conns
                out[key] = node
        except Exception:
            for dev in built:
                _close_dev(dev)
            for node in self.nodes.values():     # kept nodes already updated: put back
                node.update(self.config.targets[node.name])
                if node.dev is not None:
                    _reregister(node.dev)
            raise
        return out, built


def _engine_conns() -> list:
    """This reactor's connection engines (targets/iscsi/conn.py), if present."""
    try:
        from targets.iscsi import conn
    except ImportError:
        return []
    return list(getattr(conn, "LIVE", ()))


def _conn_target(c) -> str:
    s = getattr(c, "session", None)
    if s is None or getattr(s, "discovery", False):
        return ""
    return (getattr(s, "target_name", "") or "").lower()


def _active_conns(node) -> int:
    """Sessions on this reactor using ``node``: the engine's own count if it keeps one,
    else its live connections logged in to the node."""
    return node.active_conns or sum(1 for c in _engine_conns() if _conn_target(c) == node.name.lower())


def _drop_sessions(name: str, reason: str) -> None:
    for c in _engine_conns():
        if _conn_target(c) == name.lower():
            try:
                c.shutdown(reason)
            except Exception:
                log.exception("iscsi: shutting down a connection of %s", name)


def _reregister(dev) -> None:
    """A device built under the same name as an older one replaced it in the SCSI
    layer's per-reactor table (targets/scsi/dev.py); closing the newer one on undo must
    give the name back to the older one."""
    try:
        from targets.scsi import dev as scsi_dev
    except ImportError:
        return
    table = getattr(scsi_dev, "_devs", None)
    if callable(table) and getattr(dev, "name", None) is not None:
        table().setdefault(dev.name, dev)


def _make_dev(name: str, luns: list, dev_id: int = 0):
    cls = _scsi_dev_class()
    if cls is None:
        return None
    try:
        try:
            return cls(name, [(i, b) for i, b in luns], dev_id=dev_id)
        except TypeError:      # a ScsiDev without device ids (Contract 3 names none)
            return cls(name, [(i, b) for i, b in luns])
    except OSError as exc:
        raise C.ConfigError(-(exc.errno or errno.EIO),
                            f"cannot build SCSI device {name}: {exc}") from None
    except ValueError as exc:
        raise C.ConfigError(-errno.EINVAL, f"cannot build SCSI device {name}: {exc}") from None


def registry() -> Registry:
    """This reactor's replica (created empty on first use)."""
    r = rx.current_reactor()
    reg = r.locals.get(_KEY)
    if reg is None:
        reg = r.locals[_KEY] = Registry()
    return reg


def reset_registry() -> None:
    """Drop this reactor's replica, closing its devices (app shutdown)."""
    r = rx.current_reactor()
    reg = r.locals.pop(_KEY, None)
    if reg is not None:
        for node in reg.nodes.values():
            if node.dev is not None:
                _close_dev(node.dev)


# ---------------------------------------------------------------------- broadcast steps
@rx.remote("iscsi.nodes.apply")
def _apply_step(done, change_id, op, args):
    try:
        registry().apply(change_id, op, args)
    except C.ConfigError as exc:
        log.error("iscsi: reactor %d refused %s: %s", rx.current_reactor().index, op, exc.message)
        done(exc.rc, exc.message)
        return
    done(0)


@rx.remote("iscsi.nodes.commit")
def _commit_step(done, change_id):
    registry().commit(change_id)
    done(0)


@rx.remote("iscsi.nodes.undo")
def _undo_step(done, change_id, op, args):
    registry().undo(change_id)
    done(0)


@rx.remote("iscsi.nodes.reset")
def _reset_step(done):
    reset_registry()
    done(0)
