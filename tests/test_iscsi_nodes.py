"""The iSCSI configuration replica: SPDK's rules as pure operations (targets/iscsi/config.py),
the queries a connection makes (access, SendTargets, CHAP secrets: targets/iscsi/nodes.py),
and all-or-nothing changes across reactors (targets/iscsi/control.py) in the
deterministic two-reactor harness."""
import errno

import pytest

from reactor.testing import Harness
from targets.iscsi import config as C
from targets.iscsi import control, nodes
from targets.serve import OneAtATime


def tnode(name="disk1", luns=None, maps=None, **kw):
    a = {"name": name, "alias_name": "", "luns": luns or [{"bdev_name": "Malloc0", "lun_id": 0}],
         "pg_ig_maps": maps or [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64,
         "disable_chap": False, "require_chap": False, "mutual_chap": False, "chap_group": 0,
         "header_digest": False, "data_digest": False}
    a.update(kw)
    return a


def base_cfg():
    cfg = C.Config()
    C.op_create_portal_group(cfg, {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    C.op_create_initiator_group(cfg, {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]})
    return cfg


def refused(fn, cfg, args, rc=None):
    before = cfg.copy().__dict__
    with pytest.raises(C.ConfigError) as ei:
        fn(cfg, args)
    assert cfg.__dict__ == before, "a refused change changed the config"
    if rc is not None:
        assert ei.value.rc == rc, ei.value.message
    return ei.value.message


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize("name, full", [
    ("disk1", "iqn.2016-06.io.spdk:disk1"),
    ("iqn.2001-04.com.example:storage", "iqn.2001-04.com.example:storage"),
    ("IQN.2001-04.com.example:x", "IQN.2001-04.com.example:x"),
    ("naa.5000c5000000000a", "naa.5000c5000000000a"),
    ("eui.0123456789abcdef", "eui.0123456789abcdef"),
    ("my:disk", "iqn.2016-06.io.spdk:my:disk"),      # SPDK looks at the prefix only
])
def test_target_names_go_under_the_node_base_unless_they_are_iscsi_names(name, full):
    assert C.full_target_name(name, C.NODE_BASE) == full


@pytest.mark.parametrize("bad", ["iqn.2016-06.io.spdk:disk_1", "iqn.2016-06.io.spdk:a b",
                                 "iqn.16-06.io.spdk:x", "iqn.2016-06.io.spdk:a/b",
                                 "iqn.2016-06.io.spdk:" + "x" * 210])
def test_invalid_target_names_are_refused(bad):
    cfg = base_cfg()
    refused(C.op_create_target_node, cfg, tnode(bad), -errno.EINVAL)


def test_create_target_node_rules():
    cfg = base_cfg()
    C.op_create_target_node(cfg, tnode(queue_depth=0))
    t = cfg.targets["iqn.2016-06.io.spdk:disk1"]
    assert t["queue_depth"] == 64                   # <= 0: max_queue_depth (SPDK)
    assert "already exists" in refused(C.op_create_target_node, cfg, tnode("DISK1"), -errno.EEXIST)
    assert "no LUN 0" in refused(C.op_create_target_node, cfg,
                                 tnode("d2", luns=[{"bdev_name": "M", "lun_id": 1}]))
    assert "duplicated" in refused(C.op_create_target_node, cfg, tnode("d2", luns=[
        {"bdev_name": "M", "lun_id": 0}, {"bdev_name": "N", "lun_id": 0}]))
    assert "out of range" in refused(C.op_create_target_node, cfg, tnode("d2", luns=[
        {"bdev_name": "M", "lun_id": 0}, {"bdev_name": "N", "lun_id": 256}]))
    assert "portal group 9 not found" in refused(
        C.op_create_target_node, cfg, tnode("d2", maps=[{"pg_tag": 9, "ig_tag": 2}]))
    assert "initiator group 9" in refused(
        C.op_create_target_node, cfg, tnode("d2", maps=[{"pg_tag": 1, "ig_tag": 9}]))
    assert "CHAP" in refused(C.op_create_target_node, cfg, tnode("d2", disable_chap=True,
                                                                 require_chap=True))
    assert "CHAP" in refused(C.op_create_target_node, cfg, tnode("d2", mutual_chap=True))
    assert "auth group ID" in refused(C.op_create_target_node, cfg, tnode("d2", chap_group=-1))


def test_scsi_device_ids_are_the_lowest_free_ones():
    cfg = base_cfg()
    for n in ("a", "b", "c"):
        C.op_create_target_node(cfg, tnode(n))
    C.op_delete_target_node(cfg, {"name": "b"})
    C.op_create_target_node(cfg, tnode("d"))
    assert cfg.scsi_devices_info() == [{"id": 0, "device_name": f"{C.NODE_BASE}:a"},
                                       {"id": 1, "device_name": f"{C.NODE_BASE}:d"},
                                       {"id": 2, "device_name": f"{C.NODE_BASE}:c"}]


def test_lun_ids_and_free_id():
    cfg = base_cfg()
    C.op_create_target_node(cfg, tnode(luns=[{"bdev_name": "A", "lun_id": 0},
                                             {"bdev_name": "C", "lun_id": 2}]))
    t = cfg.targets["iqn.2016-06.io.spdk:disk1"]
    assert C.free_lun_id(t) == 1
    C.op_target_node_add_lun(cfg, {"name": "disk1", "bdev_name": "B", "lun_id": -1})
    assert t["luns"] == [[0, "A"], [1, "B"], [2, "C"]]
    assert "duplicated" in refused(C.op_target_node_add_lun, cfg,
                                   {"name": "iqn.2016-06.io.spdk:disk1", "bdev_name": "D", "lun_id": 2})
    refused(C.op_target_node_add_lun, cfg, {"name": "disk1", "bdev_name": "D", "lun_id": -2})
    refused(C.op_target_node_add_lun, cfg, {"name": "nope", "bdev_name": "D", "lun_id": 3},
            -errno.ENOENT)


# ---------------------------------------------------------------------- groups
def test_portal_groups():
    cfg = base_cfg()
    assert "already exists" in refused(C.op_create_portal_group, cfg, {
        "tag": 1, "portals": [{"host": "127.0.0.1", "port": "3262"}]}, -errno.EEXIST)
    # a portal in another group is a duplicate too (SPDK's global portal list)
    assert "portal (127.0.0.1, 3260)" in refused(C.op_create_portal_group, cfg, {
        "tag": 5, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    refused(C.op_create_portal_group, cfg, {"tag": 5, "portals": [{"host": "1.2.3.4", "port": "0"}]})
    refused(C.op_create_portal_group, cfg, {"tag": 5, "portals": [{"host": "1.2.3.4", "port": "x"}]})
    C.op_create_portal_group(cfg, {"tag": 5, "portals": [{"host": "*", "port": "0x0cbd"},
                                                         {"host": "[*]", "port": "3260"}]})
    assert [p["host"] for p in cfg.portal_groups[5]["portals"]] == ["0.0.0.0", "[::]"]


def test_deleting_a_portal_group_unmaps_it_and_an_initiator_group_empties_maps():
    cfg = base_cfg()
    C.op_create_portal_group(cfg, {"tag": 3, "portals": [{"host": "127.0.0.2", "port": "3260"}]})
    C.op_create_initiator_group(cfg, {"tag": 4, "initiators": ["ANY"], "netmasks": ["ANY"]})
    C.op_create_target_node(cfg, tnode(maps=[{"pg_tag": 1, "ig_tag": 2}, {"pg_tag": 3, "ig_tag": 2},
                                             {"pg_tag": 3, "ig_tag": 4}]))
    t = cfg.targets["iqn.2016-06.io.spdk:disk1"]
    C.op_delete_initiator_group(cfg, {"tag": 2})
    assert t["pg_maps"] == [[3, [4]]]              # pg 1 lost its only ig: unmapped
    C.op_delete_portal_group(cfg, {"tag": 3})
    assert t["pg_maps"] == []
    assert cfg.targets                              # the node stays


def test_initiator_groups_all_or_nothing():
    cfg = base_cfg()
    refused(C.op_create_initiator_group, cfg, {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]},
            -errno.EEXIST)
    refused(C.op_create_initiator_group, cfg, {"tag": 7, "initiators": [], "netmasks": ["ANY"]})
    refused(C.op_create_initiator_group, cfg, {"tag": 7, "initiators": ["a", "a"], "netmasks": ["ANY"]},
            -errno.EEXIST)
    # add: a duplicate netmask refuses the initiators added with it too
    refused(C.op_initiator_group_add, cfg, {"tag": 2, "initiators": ["iqn.x"],
                                            "netmasks": ["127.0.0.1/32"]}, -errno.EEXIST)
    refused(C.op_initiator_group_remove, cfg, {"tag": 2, "initiators": ["ANY"],
                                               "netmasks": ["10.0.0.0/8"]}, -errno.ENOENT)
    C.op_initiator_group_add(cfg, {"tag": 2, "initiators": ["iqn.a", "ALL"], "netmasks": []})
    assert cfg.initiator_groups[2]["initiators"] == ["ANY", "iqn.a", "ANY"]   # SPDK: ALL -> ANY
    C.op_initiator_group_remove(cfg, {"tag": 2, "initiators": ["iqn.a"], "netmasks": None})
    assert cfg.initiator_groups[2]["initiators"] == ["ANY", "ANY"]


def test_auth_groups():
    cfg = C.Config()
    C.op_create_auth_group(cfg, {"tag": 1, "secrets": [{"user": "u", "secret": "s"}]})
    refused(C.op_create_auth_group, cfg, {"tag": 1, "secrets": []}, -errno.EEXIST)
    refused(C.op_create_auth_group, cfg, {"tag": 2, "secrets": [{"user": "u", "secret": "s"},
                                                                {"user": "u", "secret": "t"}]},
            -errno.EEXIST)
    refused(C.op_auth_group_add_secret, cfg, {"tag": 1, "user": "v", "secret": "s", "muser": "m",
                                              "msecret": None}, -errno.EINVAL)
    C.op_auth_group_add_secret(cfg, {"tag": 1, "user": "v", "secret": "s", "muser": "m",
                                     "msecret": "ms"})
    refused(C.op_auth_group_remove_secret, cfg, {"tag": 1, "user": "w"}, -errno.ENODEV)
    assert cfg.auth_groups_info() == [{"tag": 1, "secrets": [
        {"user": "u", "secret": "s"}, {"user": "v", "secret": "s", "muser": "m", "msecret": "ms"}]}]


def test_options_are_verified_and_set_once():
    cfg = C.Config()
    assert "max_queue_depth" in refused(C.op_set_options, cfg, {"max_queue_depth": 257})
    assert "nop_in_interval" in refused(C.op_set_options, cfg, {"nop_in_interval": 61})
    assert "first_burst_length" in refused(C.op_set_options, cfg, {"first_burst_length": 511})
    C.op_set_options(cfg, {"nop_timeout": 30, "max_queue_depth": 16})
    assert refused(C.op_set_options, cfg, {}, -32603) == "Must not call more than once"
    assert cfg.options["max_queue_depth"] == 16


# ---------------------------------------------------------------------- matching
@pytest.mark.parametrize("mask, addr, ok", [
    ("ANY", "10.1.2.3", True), ("any", "::1", True),
    ("10.0.0.0/8", "10.200.1.1", True), ("10.0.0.0/8", "11.0.0.1", False),
    ("127.0.0.1", "127.0.0.1", True), ("127.0.0.1/32", "127.0.0.2", False),
    ("192.168.1.0/24", "192.168.1.77", True), ("10.0.0.0/0", "1.1.1.1", False),   # /0 is invalid
    ("[fe80::]/10", "fe80::1", True), ("[fe80::]/10", "fec0::1", False),
    ("[::1]", "::1", True), ("[::1]", "127.0.0.1", False), ("10.0.0.0/8", "::1", False),
    ("garbage", "10.0.0.1", False),
])
def test_netmasks(mask, addr, ok):
    assert C.netmask_allows(mask, addr) is ok


def _reg(cfg):
    """A replica of ``cfg`` outside any reactor (no SCSI devices: queries only)."""
    reg = nodes.Registry()
    reg.config = cfg
    reg.nodes = {k.lower(): nodes.TargetNode(t, None) for k, t in cfg.targets.items()}
    return reg


def test_access_follows_spdks_first_matching_group():
    cfg = base_cfg()
    C.op_create_portal_group(cfg, {"tag": 3, "portals": [{"host": "0.0.0.0", "port": "3270"}],
                                   "private": True})
    C.op_create_initiator_group(cfg, {"tag": 5, "initiators": ["!iqn.bad", "iqn.good"],
                                      "netmasks": ["10.0.0.0/8"]})
    C.op_create_initiator_group(cfg, {"tag": 6, "initiators": ["ANY"], "netmasks": ["ANY"]})
    C.op_create_target_node(cfg, tnode(maps=[{"pg_tag": 1, "ig_tag": 5}, {"pg_tag": 1, "ig_tag": 6},
                                             {"pg_tag": 3, "ig_tag": 5}]))
    reg = _reg(cfg)
    node = reg.find_target("IQN.2016-06.IO.SPDK:DISK1")        # case-insensitive
    assert node is not None and node.name == "iqn.2016-06.io.spdk:disk1"
    assert reg.access_allowed(node, "iqn.good", "10.1.1.1", 1)
    assert reg.access_allowed(node, "iqn.other", "192.168.0.1", 1)      # ig 5 silent, ig 6 ANY
    assert not reg.access_allowed(node, "iqn.bad", "10.1.1.1", 1)       # "!" denies outright
    assert reg.access_allowed(node, "iqn.good", "192.168.0.1", 1)     # ig 5 allows the name, ig 6 the address
    assert not reg.access_allowed(node, "iqn.good", "192.168.0.1", 3)   # netmask of ig 5
    assert not reg.access_allowed(node, "iqn.good", "10.1.1.1", 9)      # pg not mapped
    assert not reg.access_allowed(None, "iqn.good", "10.1.1.1", 1)


def test_send_targets_lists_public_portals_of_targets_the_name_may_see():
    cfg = base_cfg()
    C.op_create_portal_group(cfg, {"tag": 3, "portals": [{"host": "127.0.0.3", "port": "3260"}],
                                   "private": True})
    C.op_create_portal_group(cfg, {"tag": 4, "portals": [{"host": "0.0.0.0", "port": "3261"},
                                                         {"host": "[::]", "port": "3262"}]})
    C.op_create_initiator_group(cfg, {"tag": 5, "initiators": ["!ANY"], "netmasks": ["ANY"]})
    C.op_create_target_node(cfg, tnode("a", maps=[{"pg_tag": 1, "ig_tag": 2}, {"pg_tag": 3, "ig_tag": 2},
                                                  {"pg_tag": 4, "ig_tag": 2}]))
    C.op_create_target_node(cfg, tnode("hidden", maps=[{"pg_tag": 1, "ig_tag": 5}]))
    reg = _reg(cfg)
    got = reg.send_targets("iqn.init", "127.0.0.1", 1, "All", target_addr="127.0.0.1")
    assert got == [("iqn.2016-06.io.spdk:a", ["127.0.0.1:3260,1", "127.0.0.1:3261,4"])]
    got6 = reg.send_targets("iqn.init", "::1", 4, "ALL", target_addr="::1")
    assert got6 == [("iqn.2016-06.io.spdk:a", ["127.0.0.1:3260,1", "[::1]:3262,4"])]
    assert reg.send_targets("iqn.init", "127.0.0.1", 1, "iqn.2016-06.io.spdk:hidden") == []
    assert reg.send_targets("iqn.init", "127.0.0.1", 1, "iqn.2016-06.io.spdk:A")[0][0] == \
        "iqn.2016-06.io.spdk:a"


def test_chap_secret_lookup_and_discovery_auth():
    cfg = C.Config()
    C.op_create_auth_group(cfg, {"tag": 1, "secrets": [{"user": "u", "secret": "s", "muser": "m",
                                                        "msecret": "ms"}]})
    C.op_set_discovery_auth(cfg, {"disable_chap": False, "require_chap": True, "mutual_chap": True,
                                  "chap_group": 1})
    reg = _reg(cfg)
    assert reg.find_chap_secret(1, "u") == ("s", "m", "ms")
    assert reg.find_chap_secret(1, "x") is None and reg.find_chap_secret(2, "u") is None
    assert reg.discovery_auth == (False, True, True, 1)


# ---------------------------------------------------------------------- replicas
class FakeDev:
    made = []

    def __init__(self, name, luns, dev_id=0):
        self.name, self.luns, self.dev_id, self.closed = name, luns, dev_id, False
        FakeDev.made.append(self)

    def close(self):
        assert not self.closed
        self.closed = True


@pytest.fixture
def two(monkeypatch):
    FakeDev.made = []
    monkeypatch.setattr(nodes, "_scsi_dev_class", lambda: FakeDev)
    monkeypatch.setattr(control, "_ops", OneAtATime("iscsi"))   # a queue of this test's own
    with Harness(n_reactors=2) as h:
        h.set_thread(0)
        yield h


def run(h, op, args):
    out = []
    control.change(op, args, out.append)
    h.poll_threads()
    assert len(out) == 1
    return out[0]


def replicas(h):
    out = []
    for i in (0, 1):
        h.set_thread(i)
        reg = nodes.registry()
        out.append((reg.config.target_nodes_info(), reg.config.portal_groups_info(),
                    reg.config.initiator_groups_info(),
                    sorted((k, n.dev.luns if n.dev else None) for k, n in reg.nodes.items())))
    h.set_thread(0)
    return out


def test_a_change_reaches_every_replica_and_builds_a_device_on_each(two):
    h = two
    assert run(h, "create_portal_group", {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]}) is None
    assert run(h, "create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]}) is None
    assert run(h, "create_target_node", tnode()) is None
    a, b = replicas(h)
    assert a == b and a[0][0]["name"] == "iqn.2016-06.io.spdk:disk1"
    assert len(FakeDev.made) == 2                     # one device per reactor
    # a LUN added: a new device per reactor, the old ones closed once it is committed
    assert run(h, "target_node_add_lun", {"name": "disk1", "bdev_name": "M1", "lun_id": 1}) is None
    assert [d.closed for d in FakeDev.made] == [True, True, False, False]
    assert replicas(h)[0] == replicas(h)[1]
    assert run(h, "delete_target_node", {"name": "iqn.2016-06.io.spdk:disk1"}) is None
    assert all(d.closed for d in FakeDev.made)
    assert replicas(h)[0][0] == [] == replicas(h)[1][0]


def test_a_reactor_that_refuses_leaves_every_replica_unchanged(two, monkeypatch):
    h = two
    run(h, "create_portal_group", {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    run(h, "create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    run(h, "create_target_node", tnode())
    before = replicas(h)
    built_before = len(FakeDev.made)

    real = nodes._make_dev

    def fails_on_reactor_1(name, luns, dev_id=0):
        import reactor as rx
        if rx.current_reactor().index == 1:
            raise C.ConfigError(-errno.ENOMEM, "no memory for the device")
        return real(name, luns, dev_id)
    monkeypatch.setattr(nodes, "_make_dev", fails_on_reactor_1)
    err = run(h, "create_target_node", tnode("disk2"))
    assert err is not None and err.rc == -errno.ENOMEM and "reactor 1" in err.message
    assert replicas(h) == before
    new = FakeDev.made[built_before:]
    assert len(new) == 1 and new[0].closed          # reactor 0's device was undone
    err = run(h, "target_node_add_lun", {"name": "disk1", "bdev_name": "M1", "lun_id": 1})
    assert err is not None and replicas(h) == before
    assert not any(d.closed for d in FakeDev.made[:built_before])   # the live ones kept

    # a refusal of the config itself: nothing is sent at all
    monkeypatch.setattr(nodes, "_make_dev", real)
    err = run(h, "create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    assert err.rc == -errno.EEXIST and replicas(h) == before


def test_hot_removed_lun_keeps_the_device_and_the_node(two):
    h = two
    run(h, "create_portal_group", {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    run(h, "create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    run(h, "create_target_node", tnode(luns=[{"bdev_name": "M0", "lun_id": 0},
                                             {"bdev_name": "M1", "lun_id": 1}]))
    assert run(h, "lun_removed", {"name": "iqn.2016-06.io.spdk:disk1", "lun_id": 1,
                                  "bdev_name": "M1"}) is None
    a, b = replicas(h)
    assert a == b and a[0][0]["luns"] == [{"bdev_name": "M0", "lun_id": 0}]
    assert not any(d.closed for d in FakeDev.made)    # the SCSI layer dropped the LUN itself


def test_add_lun_is_refused_while_sessions_use_the_target(two):
    h = two
    run(h, "create_portal_group", {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})
    run(h, "create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    run(h, "create_target_node", tnode())
    h.set_thread(1)
    nodes.registry().find_target("iqn.2016-06.io.spdk:disk1").active_conns = 1
    h.set_thread(0)
    before = replicas(h)
    err = run(h, "target_node_add_lun", {"name": "disk1", "bdev_name": "M1", "lun_id": 1})
    assert err.rc == -errno.EBUSY and "active connections" in err.message
    assert replicas(h) == before
