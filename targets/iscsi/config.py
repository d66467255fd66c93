"""The iSCSI target's configuration as plain data, and every change to it as a pure
operation (SPDK's lib/iscsi tgt_node.c, portal_grp.c, init_grp.c, iscsi_subsystem.c).

:class:`Config` holds options, auth groups, portal groups, initiator groups and target
nodes in SPDK's shapes and orders (lists keep insertion order, as SPDK's TAILQs do).
Each ``op_*`` function checks everything first and raises :class:`ConfigError` before
changing anything, so a refused change leaves the config as it was.  The same function
validates a change on the main reactor and applies it on every replica
(targets/iscsi/nodes.py), so the replicas cannot disagree about what a change does.

Nothing here touches a socket, a bdev or a reactor: the caller checks the facts that live
outside the config (a bdev exists, a portal can listen) before the change is broadcast.
"""
from __future__ import annotations

import copy
import errno
import ipaddress

NODE_BASE = "iqn.2016-06.io.spdk"          # SPDK_ISCSI_DEFAULT_NODEBASE

# SPDK's limits (lib/iscsi/iscsi.h, include/spdk/scsi.h, schema.yaml max_count)
MAX_TARGET_NAME = 223
MAX_INITIATOR_NAME = 223
MAX_INITIATOR_ADDR = 64             # SPDK's MAX_INITIATOR_ADDR (netmask string)
MAX_INITIATOR = 256
MAX_NETMASK = 256
MAX_PORTAL_ADDR = 256
MAX_PORTAL_PORT = 32
MAX_PORTALS = 1024
MAX_PG_IG_MAPS = 256
MAX_LUNS_PER_REQUEST = 64
MAX_SECRETS_PER_REQUEST = 64
SCSI_DEV_MAX_LUN = 256
SCSI_MAX_DEVS = 1024                 # SPDK_SCSI_MAX_DEVS: SCSI device ids 0..1023
SCSI_DEV_MAX_PORTS = 4               # pg maps per target node (a SCSI port each)
CHAP_MAX_LEN = 255                   # ISCSI_CHAP_MAX_USER_LEN / _SECRET_LEN
MAX_QUEUE_DEPTH_LIMIT = 256

#: iscsi_get_options, in SPDK's order (iscsi_opts_info_json) with SPDK's defaults
#: (iscsi_opts_init); auth_file is written only when set, as SPDK does.
_MAX_SESSIONS = 128
_MAX_QD = 64
_MAX_LARGE_DATAIN = 64
_MAX_R2T = 4
DEFAULT_OPTIONS = {
    "node_base": NODE_BASE,
    "max_sessions": _MAX_SESSIONS,
    "max_connections_per_session": 2,
    "max_queue_depth": _MAX_QD,
    "default_time2wait": 2,
    "default_time2retain": 20,
    "first_burst_length": 8192,
    "immediate_data": True,
    "allow_duplicated_isid": False,
    "error_recovery_level": 0,
    "nop_timeout": 60,
    "nop_in_interval": 30,
    "disable_chap": False,
    "require_chap": False,
    "mutual_chap": False,
    "chap_group": 0,
    "max_large_datain_per_connection": _MAX_LARGE_DATAIN,
    "max_r2t_per_connection": _MAX_R2T,
    # PDU_POOL_SIZE / IMMEDIATE_DATA_POOL_SIZE / DATA_OUT_POOL_SIZE of the defaults
    "pdu_pool_size": _MAX_SESSIONS * 2 * (_MAX_QD + _MAX_LARGE_DATAIN + 2 * _MAX_R2T + 8),
    "immediate_data_pool_size": _MAX_SESSIONS * 128,
    "data_out_pool_size": _MAX_SESSIONS * 16,
}
SPDK_MAX_BURST_LENGTH = 8 * 65536 * 32      # SPDK_ISCSI_MAX_BURST_LENGTH


class ConfigError(Exception):
    """A change refused; ``rc`` is a negative errno, ``message`` says why."""

    def __init__(self, rc: int, message: str):
        super().__init__(message)
        self.rc = rc
        self.message = message


def _inval(message: str) -> ConfigError:
    return ConfigError(-errno.EINVAL, message)


# ====================================================================== names and checks
def full_target_name(name: str, node_base: str) -> str:
    """SPDK's iscsi_tgt_node_construct: a name not starting iqn./eui./naa. (any case)
    is put under the node base: "disk1" -> "iqn.2016-06.io.spdk:disk1"."""
    if name[:4].lower() in ("iqn.", "eui.", "naa."):
        return name
    return f"{node_base}:{name}"


def check_iscsi_name(name: str) -> str | None:
    """SPDK's check_iscsi_name (RFC 3722 character set, iqn. date form): None if valid,
    else why not."""
    if len(name.encode()) > MAX_TARGET_NAME:
        return f"longer than {MAX_TARGET_NAME} bytes"
    for ch in name.encode():
        if (0 < ch <= 0x2c or ch == 0x2f or 0x3b <= ch <= 0x40 or 0x5b <= ch <= 0x60
                or 0x7b <= ch <= 0x7f or chr(ch).isspace()):
            return f"invalid character {chr(ch)!r}"
    if name[:4].lower() == "iqn.":
        d = name[4:12]
        if not (len(d) == 8 and d[:4].isdigit() and d[4] == "-" and d[5:7].isdigit()
                and d[7] == "."):
            return 'invalid iqn format, expected "iqn.YYYY-MM.reversed.domain.name"'
    return None


def check_chap_params(disable: bool, require: bool, mutual: bool, group: int) -> str | None:
    """SPDK's iscsi_check_chap_params: None if valid.  Allowed: Auto (none set), None
    (disable), CHAP (require), CHAP mutual (require + mutual)."""
    if group < 0:
        return f"invalid auth group ID ({group})"
    if (disable, require, mutual) in ((False, False, False), (True, False, False),
                                      (False, True, False), (False, True, True)):
        return None
    return (f"invalid combination of CHAP params (disable_chap={disable}, "
            f"require_chap={require}, mutual_chap={mutual})")


def normalise_portal_host(host: str) -> str:
    """SPDK's iscsi_portal_create: "*" -> "0.0.0.0", "[*]" -> "[::]"."""
    if host.lower() == "[*]":
        return "[::]"
    if host == "*":
        return "0.0.0.0"
    return host


def parse_port(port: str) -> int | None:
    """SPDK's strtol(port, NULL, 0) check in iscsi_portal_open: 1..65535, else None."""
    try:
        n = int(port, 0)
    except ValueError:
        return None
    return n if 0 < n <= 65535 else None


def portal_bind_host(host: str) -> str:
    """The address to bind for a portal host: "[::1]" -> "::1"."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _spdk_all_to_any(name: str) -> str:
    # init_grp.c: the first "ALL" in an initiator name or netmask becomes "ANY"
    i = name.find("ALL")
    return name if i < 0 else name[:i] + "ANY" + name[i + 3:]


# ====================================================================== matching
def netmask_allows(mask: str, addr: str) -> bool:
    """SPDK's iscsi_netmask_allow_addr: "ANY" (any case), an IPv4 address or CIDR
    ("10.0.0.0/8"), or a bracketed IPv6 one ("[fe80::]/10"); a bad mask matches nothing."""
    if mask.lower() == "any":
        return True
    if mask.startswith("["):
        end = mask.find("]")
        if end < 0:
            return False
        net, rest, family, full = mask[1:end], mask[end + 1:], 6, 128
        if rest and not rest.startswith("/"):
            rest = ""         # SPDK ignores what follows "]" unless it is "/bits"
    else:
        net, _, bits = mask.partition("/")
        rest, family, full = ("/" + bits) if _ else "", 4, 32
    bits = full
    if rest.startswith("/"):
        try:
            bits = int(rest[1:])
        except ValueError:
            return False
        if not 0 < bits <= full:
            return False
    try:
        n = ipaddress.ip_address(net)
        a = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return False
    if n.version != family or a.version != family:
        return False
    shift = full - bits
    return (int(n) >> shift) == (int(a) >> shift)


def initiator_name_verdict(initiators: list, iqn: str) -> bool | None:
    """SPDK's iscsi_init_grp_allow_iscsi_name: the first entry that names ``iqn`` (or
    "ANY") decides, "!" denying; None when no entry names it."""
    low = iqn.lower()
    for name in initiators:
        if name.startswith("!") and name[1:].lower() in ("any", low):
            return False
        if name.lower() in ("any", low):
            return True
    return None


# ====================================================================== the config
class Config:
    """The whole iSCSI configuration, plain data (deep-copyable, msgpack-encodable)."""

    def __init__(self):
        self.options: dict = dict(DEFAULT_OPTIONS)
        self.options_set = False       # iscsi_set_options may be called once (SPDK)
        self.auth_groups: dict = {}    # tag -> [{"user","secret"[,"muser","msecret"]}]
        self.portal_groups: dict = {}  # tag -> {"portals": [{"host","port"}], "private", "wait"}
        self.initiator_groups: dict = {}   # tag -> {"initiators": [...], "netmasks": [...]}
        self.targets: dict = {}        # full name -> target dict (see op_create_target_node)

    def copy(self) -> "Config":
        return copy.deepcopy(self)

    def find_target_key(self, name: str) -> str | None:
        """The stored name of the target ``name`` names (case-insensitive, as SPDK's
        iscsi_find_tgt_node)."""
        if name in self.targets:
            return name
        low = name.lower()
        return next((k for k in self.targets if k.lower() == low), None)

    def target_by_arg(self, name: str) -> dict:
        """The target an RPC's ``name`` refers to: full name, or short name under the
        node base (SPDK's RPCs take the full name; a short one is accepted too)."""
        key = self.find_target_key(name)
        if key is None:
            key = self.find_target_key(full_target_name(name, self.options["node_base"]))
        if key is None:
            raise ConfigError(-errno.ENOENT, f"target node {name} not found")
        return self.targets[key]

    # -------------------------------------------------------------- queries (SPDK shapes)
    def options_info(self) -> dict:
        out = {}
        if self.options.get("auth_file") is not None:
            out["auth_file"] = self.options["auth_file"]
        out.update((k, self.options[k]) for k in DEFAULT_OPTIONS)
        return out

    def portal_groups_info(self) -> list:
        return [{"tag": tag, "portals": [dict(p) for p in pg["portals"]], "private": pg["private"]}
                for tag, pg in self.portal_groups.items()]

    def initiator_groups_info(self) -> list:
        return [{"tag": tag, "initiators": list(ig["initiators"]), "netmasks": list(ig["netmasks"])}
                for tag, ig in self.initiator_groups.items()]

    def auth_groups_info(self) -> list:
        return [{"tag": tag, "secrets": [dict(s) for s in secrets]}
                for tag, secrets in self.auth_groups.items()]

    def scsi_devices_info(self) -> list:
        return [{"id": t["dev_id"], "device_name": t["name"]}
                for t in sorted(self.targets.values(), key=lambda t: t["dev_id"])]

    def target_nodes_info(self) -> list:
        out = []
        for t in self.targets.values():
            e = {"name": t["name"]}
            if t["alias_name"]:
                e["alias_name"] = t["alias_name"]
            e["pg_ig_maps"] = [{"pg_tag": pg, "ig_tag": ig} for pg, igs in t["pg_maps"] for ig in igs]
            e["luns"] = [{"bdev_name": b, "lun_id": lun} for lun, b in t["luns"]]
            for k in ("queue_depth", "disable_chap", "require_chap", "mutual_chap",
                      "chap_group", "header_digest", "data_digest"):
                e[k] = t[k]
            out.append(e)
        return out


# ====================================================================== operations
# Each op_<name>(cfg, args) validates, then mutates cfg; ConfigError before any mutation.

def op_set_options(cfg: Config, a: dict) -> None:
    if cfg.options_set:
        raise ConfigError(-32603, "Must not call more than once")
    new = dict(cfg.options)
    for k, v in a.items():
        if v is not None:
            new[k] = v
    err = verify_options(new)
    if err:
        raise _inval(err)
    cfg.options = new
    cfg.options_set = True


def verify_options(o: dict) -> str | None:
    """SPDK's iscsi_opts_verify (there it fails the subsystem's start; here the RPC)."""
    rules = [
        (0 < o["max_sessions"] <= 65535, "max_sessions must be 1..65535"),
        (0 < o["max_connections_per_session"] <= 65535, "max_connections_per_session must be 1..65535"),
        (0 < o["max_queue_depth"] <= MAX_QUEUE_DEPTH_LIMIT, "max_queue_depth must be 1..256"),
        (o["default_time2wait"] <= 3600, "default_time2wait must be no more than 3600"),
        (o["default_time2retain"] <= 3600, "default_time2retain must be no more than 3600"),
        (512 <= o["first_burst_length"] <= SPDK_MAX_BURST_LENGTH,
         f"first_burst_length must be 512..{SPDK_MAX_BURST_LENGTH}"),
        (o["error_recovery_level"] <= 2, "error_recovery_level must be 0..2"),
        (o["nop_timeout"] >= 0, "nop_timeout must not be negative"),
        (0 <= o["nop_in_interval"] <= 60, "nop_in_interval must be 0..60"),
        (o["max_large_datain_per_connection"] > 0, "max_large_datain_per_connection must be > 0"),
        (o["max_r2t_per_connection"] > 0, "max_r2t_per_connection must be > 0"),
        (o["pdu_pool_size"] > 0, "pdu_pool_size must be > 0"),
        (o["immediate_data_pool_size"] > 0, "immediate_data_pool_size must be > 0"),
        (o["data_out_pool_size"] > 0, "data_out_pool_size must be > 0"),
    ]
    for ok, why in rules:
        if not ok:
            return why
    return check_chap_params(o["disable_chap"], o["require_chap"], o["mutual_chap"],
                             o["chap_group"])


def op_set_discovery_auth(cfg: Config, a: dict) -> None:
    err = check_chap_params(a["disable_chap"], a["require_chap"], a["mutual_chap"], a["chap_group"])
    if err:
        raise _inval(err)
    for k in ("disable_chap", "require_chap", "mutual_chap", "chap_group"):
        cfg.options[k] = a[k]


def _check_secret(secrets: list, s: dict) -> None:
    # SPDK's iscsi_auth_group_add_secret, in its order
    if s.get("muser") is not None and s.get("msecret") is None:
        raise _inval("msecret must be specified with muser")
    if any(x["user"] == s["user"] for x in secrets):
        raise ConfigError(-errno.EEXIST, f"user {s['user']} for secret is duplicated")
    for k in ("user", "secret", "muser", "msecret"):
        if s.get(k) is not None and len(s[k].encode()) > CHAP_MAX_LEN:
            raise _inval(f"CHAP {k} longer than {CHAP_MAX_LEN} characters")


def _secret_entry(s: dict) -> dict:
    e = {"user": s["user"], "secret": s["secret"]}
    if s.get("muser"):
        e["muser"] = s["muser"]
        e["msecret"] = s["msecret"]
    return e


def op_create_auth_group(cfg: Config, a: dict) -> None:
    tag = a["tag"]
    if tag in cfg.auth_groups:
        raise ConfigError(-errno.EEXIST, f"auth group {tag} already exists")
    secrets: list = []
    for s in a.get("secrets") or []:
        _check_secret(secrets, s)
        secrets.append(_secret_entry(s))
    cfg.auth_groups[tag] = secrets


def op_delete_auth_group(cfg: Config, a: dict) -> None:
    if a["tag"] not in cfg.auth_groups:
        raise ConfigError(-errno.ENOENT, f"auth group {a['tag']} not found")
    del cfg.auth_groups[a["tag"]]


def op_auth_group_add_secret(cfg: Config, a: dict) -> None:
    secrets = cfg.auth_groups.get(a["tag"])
    if secrets is None:
        raise ConfigError(-errno.ENOENT, f"auth group {a['tag']} not found")
    _check_secret(secrets, a)
    secrets.append(_secret_entry(a))


def op_auth_group_remove_secret(cfg: Config, a: dict) -> None:
    secrets = cfg.auth_groups.get(a["tag"])
    if secrets is None:
        raise ConfigError(-errno.ENOENT, f"auth group {a['tag']} not found")
    i = next((i for i, s in enumerate(secrets) if s["user"] == a["user"]), None)
    if i is None:
        raise ConfigError(-errno.ENODEV, f"secret of user {a['user']} not found")
    del secrets[i]


def op_create_portal_group(cfg: Config, a: dict) -> None:
    tag = a["tag"]
    portals = a["portals"]
    if len(portals) > MAX_PORTALS:
        raise _inval(f"more than {MAX_PORTALS} portals")
    existing = {(p["host"], p["port"]) for pg in cfg.portal_groups.values() for p in pg["portals"]}
    out = []
    for p in portals:
        host, port = p["host"], p["port"]
        if len(host.encode()) > MAX_PORTAL_ADDR or len(port.encode()) > MAX_PORTAL_PORT:
            raise _inval(f"portal ({host}, {port}): host or port too long")
        host = normalise_portal_host(host)
        if (host, port) in existing:
            raise ConfigError(-errno.EEXIST, f"portal ({host}, {port}) already exists")
        if parse_port(port) is None:
            raise _inval(f"portal ({host}, {port}): invalid port {port}")
        existing.add((host, port))
        out.append({"host": host, "port": port})
    if tag in cfg.portal_groups:
        raise ConfigError(-errno.EEXIST, f"portal group {tag} already exists")
    cfg.portal_groups[tag] = {"portals": out, "private": bool(a.get("private")),
                              "wait": bool(a.get("wait"))}


def op_start_portal_group(cfg: Config, a: dict) -> None:
    pg = cfg.portal_groups.get(a["tag"])
    if pg is None:
        raise ConfigError(-errno.ENOENT, f"portal group {a['tag']} not found")
    pg["wait"] = False


def op_delete_portal_group(cfg: Config, a: dict) -> None:
    tag = a["tag"]
    if tag not in cfg.portal_groups:
        raise ConfigError(-errno.ENOENT, f"portal group {tag} not found")
    del cfg.portal_groups[tag]
    # iscsi_tgt_node_delete_map(pg, NULL): every target's map of that group goes too
    for t in cfg.targets.values():
        t["pg_maps"] = [m for m in t["pg_maps"] if m[0] != tag]


def _check_names_and_masks(initiators: list, netmasks: list) -> None:
    for n in initiators:
        if len(n.encode()) > MAX_INITIATOR_NAME:
            raise _inval(f"initiator name {n[:32]}... is longer than {MAX_INITIATOR_NAME} bytes")
    for m in netmasks:
        if len(m.encode()) > MAX_INITIATOR_ADDR:
            raise _inval(f"netmask {m[:32]}... is longer than {MAX_INITIATOR_ADDR} bytes")


def _add_unique(into: list, items: list, limit: int, what: str) -> list:
    out = list(into)
    for x in items:
        if len(out) >= limit:
            raise ConfigError(-errno.EPERM, f"more than {limit} {what}s")
        if x in out:
            raise ConfigError(-errno.EEXIST, f"{what} {x} is already in the group")
        out.append(_spdk_all_to_any(x))
    return out


def op_create_initiator_group(cfg: Config, a: dict) -> None:
    tag = a["tag"]
    if not a["initiators"] or not a["netmasks"]:
        raise _inval("initiators and netmasks must not be empty")
    _check_names_and_masks(a["initiators"], a["netmasks"])
    names = _add_unique([], a["initiators"], MAX_INITIATOR, "initiator")
    masks = _add_unique([], a["netmasks"], MAX_NETMASK, "netmask")
    if tag in cfg.initiator_groups:
        raise ConfigError(-errno.EEXIST, f"initiator group {tag} already exists")
    cfg.initiator_groups[tag] = {"initiators": names, "netmasks": masks}


def op_initiator_group_add(cfg: Config, a: dict) -> None:
    ig = cfg.initiator_groups.get(a["tag"])
    if ig is None:
        raise ConfigError(-errno.ENOENT, f"initiator group {a['tag']} not found")
    names, masks = a.get("initiators") or [], a.get("netmasks") or []
    _check_names_and_masks(names, masks)
    new_names = _add_unique(ig["initiators"], names, MAX_INITIATOR, "initiator")
    new_masks = _add_unique(ig["netmasks"], masks, MAX_NETMASK, "netmask")
    ig["initiators"], ig["netmasks"] = new_names, new_masks


def op_initiator_group_remove(cfg: Config, a: dict) -> None:
    ig = cfg.initiator_groups.get(a["tag"])
    if ig is None:
        raise ConfigError(-errno.ENOENT, f"initiator group {a['tag']} not found")
    names, masks = list(ig["initiators"]), list(ig["netmasks"])
    for what, have, gone in (("initiator", names, a.get("initiators") or []),
                             ("netmask", masks, a.get("netmasks") or [])):
        for x in gone:
            if x not in have:
                raise ConfigError(-errno.ENOENT, f"{what} {x} is not in the group")
            have.remove(x)
    ig["initiators"], ig["netmasks"] = names, masks


def op_delete_initiator_group(cfg: Config, a: dict) -> None:
    tag = a["tag"]
    if tag not in cfg.initiator_groups:
        raise ConfigError(-errno.ENOENT, f"initiator group {tag} not found")
    del cfg.initiator_groups[tag]
    # iscsi_tgt_node_delete_map(NULL, ig): a pg map left with no ig goes too
    for t in cfg.targets.values():
        maps = []
        for pg, igs in t["pg_maps"]:
            igs = [i for i in igs if i != tag]
            if igs:
                maps.append([pg, igs])
        t["pg_maps"] = maps


def _add_maps(cfg: Config, maps: list, pairs: list) -> list:
    """SPDK's iscsi_target_node_add_pg_ig_maps on a copy of ``maps``: every pg and ig
    must exist, a pair must not be mapped yet, at most 4 portal groups per target."""
    out = [[pg, list(igs)] for pg, igs in maps]
    for pg, ig in pairs:
        if pg not in cfg.portal_groups:
            raise ConfigError(-errno.ENOENT, f"portal group {pg} not found")
        if ig not in cfg.initiator_groups:
            raise ConfigError(-errno.ENOENT, f"initiator group {ig} not found")
        m = next((m for m in out if m[0] == pg), None)
        if m is None:
            if len(out) >= SCSI_DEV_MAX_PORTS:
                raise _inval(f"more than {SCSI_DEV_MAX_PORTS} portal groups mapped")
            m = [pg, []]
            out.append(m)
        if ig in m[1]:
            raise ConfigError(-errno.EEXIST, f"map {pg}:{ig} already exists")
        m[1].append(ig)
    return out


def check_luns(luns: list) -> list:
    """SPDK's spdk_scsi_dev_construct rules for a new device's LUN list: at least one,
    LUN 0 among them, ids 0..255 and unique, each naming a bdev.  Returns [[id, bdev]]
    ordered by id (SPDK keeps a device's LUNs sorted)."""
    if not luns:
        raise _inval("no LUNs specified")
    if len(luns) > MAX_LUNS_PER_REQUEST:
        raise _inval(f"more than {MAX_LUNS_PER_REQUEST} LUNs")
    out: list = []
    for lun in luns:
        bdev, lun_id = lun.get("bdev_name"), lun.get("lun_id", 0)
        if bdev is None:
            raise _inval(f"LUN {lun_id} names no bdev")
        if not 0 <= lun_id < SCSI_DEV_MAX_LUN:
            raise _inval(f"LUN ID {lun_id} is out of range 0..{SCSI_DEV_MAX_LUN - 1}")
        if any(i == lun_id for i, _ in out):
            raise ConfigError(-errno.EEXIST, f"LUN ID {lun_id} is duplicated")
        out.append([lun_id, bdev])
    if not any(i == 0 for i, _ in out):
        raise _inval("no LUN 0 specified")
    return sorted(out)


def op_create_target_node(cfg: Config, a: dict) -> None:
    """``a`` carries the RPC's parameters plus ``luns`` already checked (check_luns)."""
    err = check_chap_params(a["disable_chap"], a["require_chap"], a["mutual_chap"], a["chap_group"])
    if err:
        raise _inval(err)
    if not a["pg_ig_maps"]:
        raise _inval("no pg_ig_maps given (num_maps = 0)")
    if len(a["pg_ig_maps"]) > MAX_PG_IG_MAPS:
        raise _inval(f"more than {MAX_PG_IG_MAPS} pg_ig_maps")
    name = full_target_name(a["name"], cfg.options["node_base"])
    why = check_iscsi_name(name)
    if why:
        raise _inval(f"target name {name} is invalid: {why}")
    alias = a.get("alias_name") or ""
    if len(alias.encode()) > MAX_TARGET_NAME:
        raise _inval(f"alias longer than {MAX_TARGET_NAME} bytes")
    luns = check_luns(a["luns"])
    maps = _add_maps(cfg, [], [(m["pg_tag"], m["ig_tag"]) for m in a["pg_ig_maps"]])
    qd = a["queue_depth"]
    if not 0 < qd <= cfg.options["max_queue_depth"]:
        qd = cfg.options["max_queue_depth"]       # SPDK: an invalid depth means the maximum
    if cfg.find_target_key(name) is not None:
        raise ConfigError(-errno.EEXIST, f"target node {name} already exists")
    # SPDK's allocate_dev: the lowest free SCSI device id (scsi_get_devices shows it)
    used = {t["dev_id"] for t in cfg.targets.values()}
    dev_id = next((i for i in range(SCSI_MAX_DEVS) if i not in used), None)
    if dev_id is None:
        raise ConfigError(-errno.ENOSPC, f"more than {SCSI_MAX_DEVS} SCSI devices")
    cfg.targets[name] = {
        "name": name, "dev_id": dev_id, "alias_name": alias, "pg_maps": maps, "luns": luns, "queue_depth": qd,
        "disable_chap": a["disable_chap"], "require_chap": a["require_chap"],
        "mutual_chap": a["mutual_chap"], "chap_group": a["chap_group"],
        "header_digest": a["header_digest"], "data_digest": a["data_digest"]}


def op_delete_target_node(cfg: Config, a: dict) -> None:
    t = cfg.target_by_arg(a["name"])
    del cfg.targets[t["name"]]


def op_target_node_add_pg_ig_maps(cfg: Config, a: dict) -> None:
    t = cfg.target_by_arg(a["name"])
    t["pg_maps"] = _add_maps(cfg, t["pg_maps"], [(m["pg_tag"], m["ig_tag"]) for m in a["pg_ig_maps"]])


def op_target_node_remove_pg_ig_maps(cfg: Config, a: dict) -> None:
    t = cfg.target_by_arg(a["name"])
    out = [[pg, list(igs)] for pg, igs in t["pg_maps"]]
    for m in a["pg_ig_maps"]:
        pg, ig = m["pg_tag"], m["ig_tag"]
        if pg not in cfg.portal_groups:
            raise ConfigError(-errno.ENOENT, f"portal group {pg} not found")
        if ig not in cfg.initiator_groups:
            raise ConfigError(-errno.ENOENT, f"initiator group {ig} not found")
        pm = next((x for x in out if x[0] == pg), None)
        if pm is None or ig not in pm[1]:
            raise ConfigError(-errno.ENOENT, f"map {pg}:{ig} is not mapped")
        pm[1].remove(ig)
        if not pm[1]:
            out.remove(pm)
    t["pg_maps"] = out


def op_target_node_set_auth(cfg: Config, a: dict) -> None:
    t = cfg.target_by_arg(a["name"])
    err = check_chap_params(a["disable_chap"], a["require_chap"], a["mutual_chap"], a["chap_group"])
    if err:
        raise _inval(err)
    for k in ("disable_chap", "require_chap", "mutual_chap", "chap_group"):
        t[k] = a[k]


def op_target_node_add_lun(cfg: Config, a: dict) -> None:
    """``a["lun_id"]`` is the id to use (-1: the lowest free one, SPDK's
    scsi_dev_find_free_lun); the caller resolves -1 first with :func:`free_lun_id` so
    every replica adds the same id."""
    t = cfg.target_by_arg(a["name"])
    lun_id = a["lun_id"]
    if lun_id < -1:
        raise _inval(f"LUN ID {lun_id} is negative")
    if lun_id == -1:
        lun_id = free_lun_id(t)
    if lun_id >= SCSI_DEV_MAX_LUN:
        raise ConfigError(-errno.ENOSPC, "no free LUN ID") if a["lun_id"] == -1 else \
            _inval(f"LUN ID {lun_id} is more than the maximum")
    if any(i == lun_id for i, _ in t["luns"]):
        raise ConfigError(-errno.EEXIST, f"LUN ID {lun_id} is duplicated")
    t["luns"] = sorted(t["luns"] + [[lun_id, a["bdev_name"]]])


def free_lun_id(t: dict) -> int:
    want = 0
    for i, _ in t["luns"]:
        if i > want:
            break
        want = i + 1
    return want


def op_lun_removed(cfg: Config, a: dict) -> None:
    """A LUN's bdev went away (hot-remove): the LUN leaves the target; the target stays."""
    key = cfg.find_target_key(a["name"])
    if key is None:
        return
    t = cfg.targets[key]
    t["luns"] = [[i, b] for i, b in t["luns"] if not (i == a["lun_id"] and b == a["bdev_name"])]


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}
