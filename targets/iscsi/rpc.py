"""SPDK's iscsi_* JSON-RPC methods (lib/iscsi/iscsi_rpc.c) and the "iscsi" subsystem
(save_config/load_config), on the main reactor; every change goes through
targets/iscsi/control.py (checked, broadcast to every reactor all or nothing).

Parameters are SPDK's (schema/schema.yaml), results and error codes SPDK's: most
refusals are -32602 "Invalid parameters" as SPDK answers them, followed here by the
reason (": portal group 1 already exists"); the auth-group and CHAP methods use SPDK's
own messages ("Could not find auth group (1)").
"""
from __future__ import annotations

import errno
import logging
import os

import bdev.api as api
import reactor as rx
from reactor import subsystem
from reactor.rpc import I32_MAX, I32_MIN, U32, Param, STARTUP, rpc_method

from . import config as C
from . import control
from . import glue
from . import nodes

log = logging.getLogger("ringstack.iscsi")

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_I32 = dict(min=I32_MIN, max=I32_MAX)
_U32 = dict(min=0, max=U32)


def _tag(help_text: str) -> Param:
    return Param("tag", int, help=help_text, **_I32)


def _invalid(request, why: str) -> None:
    request.error(INVALID_PARAMS, f"Invalid parameters: {why}")


def _answer(request, fmt=None):
    """cb(err) for control.change: true, or the error ``fmt(err)`` gives as (code,
    message) (default: -32602 "Invalid parameters: <why>")."""
    def cb(err):
        if err is None:
            request.result(True)
        elif fmt is not None:
            request.error(*fmt(err))
        else:
            _invalid(request, err.message)
    return cb


# ---------------------------------------------------------------------- nested objects
class _Bad(Exception):
    pass


def _objects(items, what: str, fields: dict, limit: int) -> list:
    """SPDK's object-array decoders: each item an object with known keys of the right
    JSON type, required ones present (fields: name -> (type, required)); at most
    ``limit`` items."""
    if len(items) > limit:
        raise _Bad(f"{what}: more than {limit} entries")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Bad(f"{what}[{i}] must be an object")
        for k, v in item.items():
            if k not in fields:
                raise _Bad(f"{what}[{i}]: unknown key '{k}'")
            typ = fields[k][0]
            ok = (isinstance(v, int) and not isinstance(v, bool) and I32_MIN <= v <= I32_MAX) \
                if typ is int else isinstance(v, typ)
            if not ok or (typ is str and "\0" in v):
                raise _Bad(f"{what}[{i}].{k} must be {'an int32' if typ is int else 'a string'}")
        for k, (_t, required) in fields.items():
            if required and k not in item:
                raise _Bad(f"{what}[{i}]: missing '{k}'")
        out.append(dict(item))
    return out


def _strings(items, what: str, limit: int) -> list:
    items = items or []
    if len(items) > limit:
        raise _Bad(f"{what}: more than {limit} entries")
    for i, s in enumerate(items):
        if not isinstance(s, str) or "\0" in s:
            raise _Bad(f"{what}[{i}] must be a string")
    return list(items)


_PG_IG_MAP = {"pg_tag": (int, True), "ig_tag": (int, True)}
_LUN = {"bdev_name": (str, False), "lun_id": (int, False)}
_PORTAL = {"host": (str, True), "port": (str, True)}
_SECRET = {"user": (str, True), "secret": (str, True), "muser": (str, False),
           "msecret": (str, False)}


# ====================================================================== portal groups
@rpc_method("iscsi_create_portal_group", params=[
    _tag("portal group tag (unique, > 0)"),
    Param("portals", list, items=dict, help="[{host, port}]: host an IP address (IPv6 in "
          "brackets; 0.0.0.0 / [::] all), port a string"),
    Param("private", bool, default=False,
          help="private: its portals are not returned by discovery (SendTargets)"),
    Param("wait", bool, default=False,
          help="do not accept connections until iscsi_start_portal_group"),
])
def _create_portal_group(request, params):
    """Create a portal group: its portals listen on the main reactor at once."""
    try:
        portals = _objects(params["portals"], "portals", _PORTAL, C.MAX_PORTALS)
    except _Bad as exc:
        _invalid(request, str(exc))
        return
    tag = params["tag"]
    args = {"tag": tag, "portals": portals, "private": params["private"], "wait": params["wait"]}
    control.change("create_portal_group", args, _answer(request),
                   prepare=lambda after: control.open_portals(tag, after))


@rpc_method("iscsi_start_portal_group", params=[_tag("portal group tag")])
def _start_portal_group(request, params):
    """Start accepting on a portal group created with wait (success if already started)."""
    tag = params["tag"]
    control.change("start_portal_group", {"tag": tag}, _answer(request),
                   finish=lambda _cfg: glue.start_portal_group(tag))


@rpc_method("iscsi_delete_portal_group", params=[_tag("portal group tag")])
def _delete_portal_group(request, params):
    """Delete a portal group: its listeners close and every target node's mapping of it
    goes (SPDK's iscsi_tgt_node_delete_map)."""
    tag = params["tag"]
    control.change("delete_portal_group", {"tag": tag}, _answer(request),
                   finish=lambda _cfg: glue.close_tag(tag))


@rpc_method("iscsi_get_portal_groups")
def _get_portal_groups(request, params):
    """[{tag, portals: [{host, port}], private}]"""
    return control.main_config().portal_groups_info()


# ====================================================================== initiator groups
@rpc_method("iscsi_create_initiator_group", params=[
    _tag("initiator group tag (unique, > 0)"),
    Param("initiators", list, items=str,
          help='initiator names: "ANY", an iSCSI name, "!name" / "!ANY" to deny'),
    Param("netmasks", list, items=str,
          help='"ANY", an IPv4 address or CIDR (10.0.0.0/8), "[IPv6]" or "[IPv6]/bits"'),
])
def _create_initiator_group(request, params):
    """Create an initiator group."""
    try:
        names = _strings(params["initiators"], "initiators", C.MAX_INITIATOR)
        masks = _strings(params["netmasks"], "netmasks", C.MAX_NETMASK)
    except _Bad as exc:
        _invalid(request, str(exc))
        return
    control.change("create_initiator_group",
                   {"tag": params["tag"], "initiators": names, "netmasks": masks}, _answer(request))


def _ig_edit(op):
    def handler(request, params):
        try:
            names = _strings(params["initiators"], "initiators", C.MAX_INITIATOR)
            masks = _strings(params["netmasks"], "netmasks", C.MAX_NETMASK)
        except _Bad as exc:
            _invalid(request, str(exc))
            return
        control.change(op, {"tag": params["tag"], "initiators": names, "netmasks": masks},
                       _answer(request))
    return handler


_IG_EDIT_PARAMS = [
    _tag("initiator group tag"),
    Param("initiators", list, items=str, required=False, help="initiator names"),
    Param("netmasks", list, items=str, required=False, help="netmasks"),
]
rpc_method("iscsi_initiator_group_add_initiators", params=_IG_EDIT_PARAMS,
           help="Add initiator names and/or netmasks to an initiator group (all or none).")(
    _ig_edit("initiator_group_add"))
rpc_method("iscsi_initiator_group_remove_initiators", params=_IG_EDIT_PARAMS,
           help="Remove initiator names and/or netmasks from an initiator group (all or none).")(
    _ig_edit("initiator_group_remove"))


@rpc_method("iscsi_delete_initiator_group", params=[_tag("initiator group tag")])
def _delete_initiator_group(request, params):
    """Delete an initiator group: it leaves every target node's maps (a portal group
    mapped to no other initiator group is unmapped too)."""
    control.change("delete_initiator_group", {"tag": params["tag"]}, _answer(request))


@rpc_method("iscsi_get_initiator_groups")
def _get_initiator_groups(request, params):
    """[{tag, initiators, netmasks}]"""
    return control.main_config().initiator_groups_info()


# ====================================================================== auth groups
def _strerror(rc: int) -> str:
    return os.strerror(abs(rc))


@rpc_method("iscsi_create_auth_group", params=[
    _tag("auth group tag (unique, > 0)"),
    Param("secrets", list, items=dict, required=False,
          help="[{user, secret, muser?, msecret?}]"),
])
def _create_auth_group(request, params):
    """Create a CHAP auth group."""
    tag = params["tag"]
    try:
        secrets = _objects(params["secrets"] or [], "secrets", _SECRET, C.MAX_SECRETS_PER_REQUEST)
    except _Bad as exc:
        _invalid(request, str(exc))
        return

    def fmt(err):
        if tag in control.main_config().auth_groups:      # the tag itself is taken
            return INVALID_PARAMS, f"Could not add auth group ({tag}), {_strerror(err.rc)}"
        return INVALID_PARAMS, f"Could not add secret to auth group ({tag}), {_strerror(err.rc)}"
    control.change("create_auth_group", {"tag": tag, "secrets": secrets}, _answer(request, fmt))


def _not_found_or(tag, other):
    def fmt(err):
        if tag not in control.main_config().auth_groups:
            return INVALID_PARAMS, f"Could not find auth group ({tag})"
        return INVALID_PARAMS, other(err)
    return fmt


@rpc_method("iscsi_delete_auth_group", params=[_tag("auth group tag")])
def _delete_auth_group(request, params):
    """Delete a CHAP auth group."""
    tag = params["tag"]
    control.change("delete_auth_group", {"tag": tag},
                   _answer(request, _not_found_or(tag, lambda e: e.message)))


@rpc_method("iscsi_auth_group_add_secret", params=[
    _tag("auth group tag"),
    Param("user", str, help="CHAP user name"),
    Param("secret", str, help="CHAP secret"),
    Param("muser", str, required=False, help="mutual CHAP user name"),
    Param("msecret", str, required=False, help="mutual CHAP secret"),
])
def _auth_group_add_secret(request, params):
    """Add a secret to a CHAP auth group."""
    tag = params["tag"]
    args = {k: params[k] for k in ("tag", "user", "secret", "muser", "msecret")}
    control.change("auth_group_add_secret", args, _answer(request, _not_found_or(
        tag, lambda e: f"Could not add secret to auth group ({tag}), {_strerror(e.rc)}")))


@rpc_method("iscsi_auth_group_remove_secret", params=[
    _tag("auth group tag"), Param("user", str, help="CHAP user name of the secret")])
def _auth_group_remove_secret(request, params):
    """Remove a secret from a CHAP auth group."""
    tag = params["tag"]
    control.change("auth_group_remove_secret", {"tag": tag, "user": params["user"]},
                   _answer(request, _not_found_or(
                       tag, lambda e: f"Could not delete secret from CHAP group ({tag}), "
                                      f"{_strerror(e.rc)}")))


@rpc_method("iscsi_get_auth_groups")
def _get_auth_groups(request, params):
    """[{tag, secrets: [{user, secret, muser?, msecret?}]}]"""
    return control.main_config().auth_groups_info()


_CHAP_PARAMS = [
    Param("disable_chap", bool, default=False, help="no CHAP"),
    Param("require_chap", bool, default=False, help="CHAP required"),
    Param("mutual_chap", bool, default=False, help="mutual CHAP (with require_chap)"),
    Param("chap_group", int, default=0, help="auth group tag (0: none)", **_I32),
]


def _chap(params) -> dict:
    return {k: params[k] for k in ("disable_chap", "require_chap", "mutual_chap", "chap_group")}


@rpc_method("iscsi_set_discovery_auth", params=_CHAP_PARAMS)
def _set_discovery_auth(request, params):
    """CHAP for discovery sessions."""
    control.change("set_discovery_auth", _chap(params), _answer(
        request, lambda e: (INVALID_PARAMS, "Invalid combination of CHAP params")))


# ====================================================================== target nodes
@rpc_method("iscsi_create_target_node", params=[
    Param("name", str, help='target name; without iqn./eui./naa. it goes under node_base '
          '("disk1" -> "iqn.2016-06.io.spdk:disk1")'),
    Param("alias_name", str, required=False, help="alias (\"\" or left out: none)"),
    Param("luns", list, items=dict, help="[{bdev_name, lun_id}]; LUN 0 is required"),
    Param("pg_ig_maps", list, items=dict, help="[{pg_tag, ig_tag}] (the groups must exist)"),
    Param("queue_depth", int, help="per-session queue depth (<= 0 or > max_queue_depth: "
          "max_queue_depth)", **_I32),
    *_CHAP_PARAMS,
    Param("header_digest", bool, default=False, help="require HeaderDigest=CRC32C"),
    Param("data_digest", bool, default=False, help="require DataDigest=CRC32C"),
])
def _create_target_node(request, params):
    """Create a target node: a SCSI device per reactor over the LUNs' bdevs."""
    try:
        luns = _objects(params["luns"], "luns", _LUN, C.MAX_LUNS_PER_REQUEST)
        maps = _objects(params["pg_ig_maps"], "pg_ig_maps", _PG_IG_MAP, C.MAX_PG_IG_MAPS)
    except _Bad as exc:
        _invalid(request, str(exc))
        return
    args = dict(params, luns=luns, pg_ig_maps=maps)

    def prepare(after):
        control.check_bdevs_writable(C.check_luns(luns))
    control.change("create_target_node", args, _answer(request), prepare=prepare,
                   finish=control.sync_watches)


@rpc_method("iscsi_delete_target_node", params=[Param("name", str, help="target name")])
def _delete_target_node(request, params):
    """Delete a target node (its sessions are dropped)."""
    def cb(err):
        if err is None:
            request.result(True)
        else:
            request.errno(err.rc)        # SPDK: rc and spdk_strerror (-ENOENT)
    control.change("delete_target_node", {"name": params["name"]}, cb,
                   finish=control.sync_watches)


def _pg_ig_edit(op):
    def handler(request, params):
        try:
            maps = _objects(params["pg_ig_maps"], "pg_ig_maps", _PG_IG_MAP, C.MAX_PG_IG_MAPS)
        except _Bad as exc:
            _invalid(request, str(exc))
            return
        control.change(op, {"name": params["name"], "pg_ig_maps": maps}, _answer(request))
    return handler


_PG_IG_PARAMS = [Param("name", str, help="target name"),
                 Param("pg_ig_maps", list, items=dict, help="[{pg_tag, ig_tag}]")]
rpc_method("iscsi_target_node_add_pg_ig_maps", params=_PG_IG_PARAMS,
           help="Map portal/initiator group pairs to a target node (all or none).")(
    _pg_ig_edit("target_node_add_pg_ig_maps"))
rpc_method("iscsi_target_node_remove_pg_ig_maps", params=_PG_IG_PARAMS,
           help="Unmap portal/initiator group pairs from a target node (all or none).")(
    _pg_ig_edit("target_node_remove_pg_ig_maps"))


@rpc_method("iscsi_target_node_add_lun", params=[
    Param("name", str, help="target name"),
    Param("bdev_name", str, help="bdev of the new LUN"),
    Param("lun_id", int, default=-1, help="LUN ID (-1: the lowest free one)", **_I32),
])
def _target_node_add_lun(request, params):
    """Add a LUN to a target node (not while it has sessions, as SPDK)."""
    lun_id = params["lun_id"]
    try:
        t = control.main_config().target_by_arg(params["name"])
        if lun_id == -1:       # resolved here, so every replica adds the same id
            lun_id = C.free_lun_id(t)
    except C.ConfigError as exc:
        _invalid(request, exc.message)
        return
    args = {"name": params["name"], "bdev_name": params["bdev_name"], "lun_id": lun_id}

    def prepare(after):
        control.check_bdevs_writable([(lun_id, params["bdev_name"])])
    control.change("target_node_add_lun", args, _answer(request), prepare=prepare,
                   finish=control.sync_watches)


@rpc_method("iscsi_target_node_set_auth", params=[Param("name", str, help="target name"),
                                                  *_CHAP_PARAMS])
def _target_node_set_auth(request, params):
    """CHAP settings of a target node."""
    name = params["name"]

    def fmt(err):
        if err.rc == -errno.ENOENT:
            return INVALID_PARAMS, f"Could not find target {name}"
        return INVALID_PARAMS, "Invalid combination of auth params"
    control.change("target_node_set_auth", dict(_chap(params), name=name), _answer(request, fmt))


@rpc_method("iscsi_get_target_nodes")
def _get_target_nodes(request, params):
    """[{name, alias_name?, pg_ig_maps, luns, queue_depth, disable_chap, require_chap,
    mutual_chap, chap_group, header_digest, data_digest}]"""
    return control.main_config().target_nodes_info()


@rpc_method("scsi_get_devices")
def _scsi_get_devices(request, params):
    """SCSI devices (one per target node): [{id, device_name}] by id."""
    return control.main_config().scsi_devices_info()


# ====================================================================== options
_NOT_IMPLEMENTED_ERL = "ErrorRecoveryLevel 0 only"


@rpc_method("iscsi_set_options", states=STARTUP, params=[
    Param("auth_file", str, required=False,
          fixed="no CHAP secret file: use iscsi_create_auth_group"),
    Param("node_base", str, required=False, help="prefix of target names"),
    Param("nop_timeout", int, required=False, help="NOP-In timeout, s", **_I32),
    Param("nop_in_interval", int, required=False, help="NOP-In interval, s (0..60)", **_I32),
    *[Param(p.name, p.type, required=False, help=p.help + " (discovery sessions)",
            **({"min": p.min, "max": p.max} if p.type is int else {}))
      for p in _CHAP_PARAMS],
    Param("max_sessions", int, required=False, help="1..65535", **_U32),
    Param("max_queue_depth", int, required=False, help="1..256", **_U32),
    Param("max_connections_per_session", int, required=False, help="MaxConnections", **_U32),
    Param("default_time2wait", int, required=False, help="DefaultTime2Wait (<= 3600)", **_U32),
    Param("default_time2retain", int, required=False, help="DefaultTime2Retain (<= 3600)", **_U32),
    Param("first_burst_length", int, required=False, help="FirstBurstLength", **_U32),
    Param("immediate_data", bool, required=False, help="ImmediateData"),
    Param("error_recovery_level", int, default=0, fixed=_NOT_IMPLEMENTED_ERL, **_U32),
    Param("allow_duplicated_isid", bool, required=False, help="allow a duplicated ISID"),
    Param("max_large_datain_per_connection", int, required=False,
          help="split reads in flight per connection", **_U32),
    Param("max_r2t_per_connection", int, required=False, help="R2Ts in flight per connection",
          **_U32),
    Param("pdu_pool_size", int, required=False, help="SPDK's PDU pool (kept, not used)", **_U32),
    Param("immediate_data_pool_size", int, required=False,
          help="SPDK's immediate data pool (kept, not used)", **_U32),
    Param("data_out_pool_size", int, required=False,
          help="SPDK's data-out pool (kept, not used)", **_U32),
])
def _set_options(request, params):
    """Global iSCSI parameters; before framework_start_init only, once (as SPDK)."""
    args = {k: v for k, v in params.items() if v is not None and k != "auth_file"}

    def fmt(err):
        if err.rc == INTERNAL_ERROR:
            return INTERNAL_ERROR, err.message
        return INVALID_PARAMS, f"Invalid parameters: {err.message}"
    control.change("set_options", args, _answer(request, fmt))


@rpc_method("iscsi_get_options")
def _get_options(request, params):
    """The global iSCSI parameters (SPDK's field names)."""
    return control.main_config().options_info()


# ====================================================================== connections
def _gather_connections(cb) -> None:
    def got(rc, results):
        conns = []
        for _i, r, v in results:
            if not r and v:
                conns.extend(v)
        cb(conns)
    rx.gather(glue._connections_step, (), got)


@rpc_method("iscsi_get_connections")
def _get_connections(request, params):
    """Connections on every reactor: [{id, cid, tsih, state, login_phase,
    initiator_addr, target_addr, target_node_name, thread_name}]"""
    _gather_connections(request.result)


#: the engine's connection phases as SPDK's connection states (lib/iscsi/conn.h:
#: RUNNING from accept through logout, EXITING while closing, EXITED once closed)
_SPDK_STATE = {"login": "running", "full_feature": "running", "logout": "running",
               "running": "running", "closing": "exiting", "exiting": "exiting",
               "dead": "exited", "done": "exited", "exited": "exited"}


@rpc_method("iscsi_get_stats")
def _get_stats(request, params):
    """Connections by state: {invalid, running, exiting, exited}."""
    def count(conns):
        out = {"invalid": 0, "running": 0, "exiting": 0, "exited": 0}
        for c in conns:
            out[_SPDK_STATE.get(str(c.get("state", "")).lower(), "invalid")] += 1
        request.result(out)
    _gather_connections(count)


@rpc_method("iscsi_get_replicas")
def _get_replicas(request, params):
    """(ringstack) Each reactor's replica of the iSCSI config: [{reactor, portal_groups,
    initiator_groups, auth_groups, target_nodes, options}] — the replicas must agree."""
    def got(rc, results):
        request.result([dict(v, reactor=i) if v else {"reactor": i, "error": r}
                        for i, r, v in results])
    rx.gather(_replica_step, (), got)


@rx.remote("iscsi.rpc.replica")
def _replica_step(done):
    reg = nodes.registry()
    c = reg.config
    done(0, {"portal_groups": c.portal_groups_info(), "initiator_groups": c.initiator_groups_info(),
             "auth_groups": c.auth_groups_info(), "target_nodes": c.target_nodes_info(),
             "options": c.options_info(),
             "devices": sorted([n.name, None if n.dev is None else type(n.dev).__name__,
                                [list(x) for x in n.luns]] for n in reg.nodes.values())})


# ====================================================================== --iscsi
_auto = {"on": False}
AUTO_PG = 1
AUTO_IG = 1


def _auto_name(bdev_name: str) -> str:
    """A bdev name as a target name under node_base: characters an iSCSI name cannot
    hold ("_", " ", "/", ...) become "-"."""
    out = []
    for ch in bdev_name:
        out.append(ch if C.check_iscsi_name(ch) is None and ch != ":" else "-")
    return "".join(out)


def _auto_export_one(name: str, cb=None) -> None:
    args = {"name": _auto_name(name), "alias_name": name, "luns": [{"bdev_name": name, "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": AUTO_PG, "ig_tag": AUTO_IG}], "queue_depth": 0,
            "disable_chap": False, "require_chap": False, "mutual_chap": False, "chap_group": 0,
            "header_digest": False, "data_digest": False}

    def prepare(after):
        control.check_bdevs_writable([(0, name)])

    def done(err):
        if err is not None:
            log.error("--iscsi: cannot export bdev %s: %s", name, err.message)
        if cb:
            cb(err)
    control.change("create_target_node", args, done, prepare=prepare, finish=control.sync_watches)


def start_exporting_all(listen: str, cb=None) -> None:
    """``ringstack start --iscsi [HOST:]PORT``: portal group 1 on HOST:PORT (127.0.0.1
    by default), initiator group 1 (ANY, ANY), and a target node
    ``<node_base>:<bdev name>`` with the bdev as LUN 0 for every bdev now and every bdev
    registered later; a deleted bdev's target node goes with it."""
    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    if host != "[::]" and ":" in host and not host.startswith("["):
        host = f"[{host}]"

    def pg_done(err):
        if err is not None:
            log.error("--iscsi %s: %s", listen, err.message)
            if cb:
                cb(err)
            return
        control.change("create_initiator_group",
                       {"tag": AUTO_IG, "initiators": ["ANY"], "netmasks": ["ANY"]}, ig_done)

    def ig_done(err):
        if err is not None:
            log.error("--iscsi: %s", err.message)
        if not _auto["on"]:
            _auto["on"] = True
            api.watch_registry(_on_registry)
        names = [api.get_name(b) for b in api.bdevs()
                 if getattr(b, "claim_module", None) is None]
        left = [len(names)]
        if not names:
            log.warning("iSCSI target on %s:%s: no bdev to export yet", host, port)
            if cb:
                cb(None)

        def one(_err):
            left[0] -= 1
            if left[0] == 0:
                log.warning("iSCSI target on %s:%s exporting %s", host, port, ", ".join(names))
                if cb:
                    cb(None)
        for n in names:
            _auto_export_one(n, one)
    control.change("create_portal_group",
                   {"tag": AUTO_PG, "portals": [{"host": host, "port": port}],
                    "private": False, "wait": False}, pg_done,
                   prepare=lambda after: control.open_portals(AUTO_PG, after))


def _on_registry(event: str, name: str) -> None:
    if not _auto["on"]:
        return
    if event == "register":
        b = api.get_by_name(name)
        if b is None or getattr(b, "claim_module", None) is not None:
            return
        _auto_export_one(name)
    elif event == "unregister":
        cfg = control.main_config()
        key = cfg.find_target_key(C.full_target_name(_auto_name(name), cfg.options["node_base"]))
        if key is not None and cfg.targets[key]["alias_name"] == name:
            control.change("delete_target_node", {"name": key}, lambda _e: None,
                           finish=control.sync_watches)


# ====================================================================== subsystem
def _write_config() -> list:
    """SPDK's spdk_iscsi_config_json order: options, portal groups, initiator groups,
    target nodes, auth groups."""
    c = control.main_config()
    opts = c.options_info()
    out = [{"method": "iscsi_set_options", "params": opts}]
    for pg in c.portal_groups_info():
        out.append({"method": "iscsi_create_portal_group", "params": pg})
    for ig in c.initiator_groups_info():
        out.append({"method": "iscsi_create_initiator_group", "params": ig})
    for t in c.target_nodes_info():
        out.append({"method": "iscsi_create_target_node", "params": t})
    for ag in c.auth_groups_info():
        out.append({"method": "iscsi_create_auth_group", "params": ag})
    return out


def _fini(done) -> None:
    if _auto["on"]:
        _auto["on"] = False
        api.unwatch_registry(_on_registry)
    control.reset_all(done)


subsystem.register_subsystem(
    "iscsi", init=glue.start_server, fini=_fini, write_config=_write_config,
    depends=tuple(d for d in ("bdev", "scsi") if d in subsystem._registry))
