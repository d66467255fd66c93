"""SPDK's iscsi_* RPCs against a real two-reactor `ringstack start -m 0x3`, driven by SPDK's
own CLI (`spdk-rpc`) with command lines as SPDK's test/iscsi_tgt/*.sh write them.  Every
refusal is checked for its error and for having changed nothing on either reactor
(iscsi_get_replicas: each reactor's own replica) nor left a portal listening."""
import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from proc_util import stop_all, wait_for_socket
from reactor.rpc import RpcClient
from reactor.rpc.client import RpcError

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATA = os.path.join(os.path.dirname(__file__), "data", "spdk")
SPDK_RPC = os.path.join(os.path.dirname(sys.executable), "spdk-rpc")
pytestmark = pytest.mark.skipif(not os.path.exists(SPDK_RPC), reason="spdk-rpc not installed")

NB = "iqn.2016-06.io.spdk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Tgt:
    def __init__(self, sock, proc):
        self.sock, self.proc = sock, proc
        self.rpc = RpcClient(sock, timeout=30)

    def call(self, method, **params):
        return self.rpc.call(method, params or None)

    def cli(self, *argv):
        p = subprocess.run([SPDK_RPC, "-s", self.sock, *argv], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, f"{argv}: {p.stdout}{p.stderr}"
        out = p.stdout.strip()
        return json.loads(out) if out[:1] in ("[", "{", '"') or out in ("true", "false") else out or None

    def cli_fails(self, *argv):
        p = subprocess.run([SPDK_RPC, "-s", self.sock, *argv], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode != 0, f"{argv} unexpectedly passed: {p.stdout}"
        text = p.stdout + p.stderr
        assert "response:" in text, f"{argv}: {text}"
        text = text[text.index("response:"):]
        err = json.loads(text[text.index("{"):])
        return err["code"], err["message"]

    def replicas(self):
        """Each reactor's replica (both must agree)."""
        reps = self.call("iscsi_get_replicas")
        assert [r["reactor"] for r in reps] == [0, 1]
        a, b = ({k: v for k, v in r.items() if k != "reactor"} for r in reps)
        assert a == b, "the reactors' replicas disagree"
        return a


@pytest.fixture
def start(tmp_path):
    procs = []

    def run(*extra, name="t"):
        sock = str(tmp_path / f"{name}.sock")
        argv = [sys.executable, "-m", "tools.cli", "start", "-m", "0x3", "-r", sock, *extra]
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        procs.append(p)
        wait_for_socket(sock, p, timeout=60)
        t = Tgt(sock, p)
        if "--wait-for-rpc" not in extra:
            assert t.call("framework_wait_init") is True
        return t
    yield run
    stop_all(procs)
    for p in procs:
        err = p.stderr.read() if p.stderr and not p.stderr.closed else ""
        assert "Traceback" not in err, err


def setup_common(t, port):
    """test/iscsi_tgt/common.sh + fio.sh: PORTAL_TAG=1, INITIATOR_TAG=2 (ANY, 127.0.0.1/32)."""
    assert t.cli("bdev_malloc_create", "64", "512") == "Malloc0"
    t.cli("iscsi_create_portal_group", "1", f"127.0.0.1:{port}")
    t.cli("iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32")


def test_iscsi_tgt_sh_lines_build_the_same_config_on_every_reactor(start):
    t = start()
    port = free_port()
    setup_common(t, port)
    assert listening(port)
    assert t.cli("bdev_malloc_create", "64", "512") == "Malloc1"
    t.cli("iscsi_create_target_node", "disk1", "disk1_alias", "Malloc0:0", "1:2", "256", "-d")
    nodes = t.cli("iscsi_get_target_nodes")
    assert nodes == [{"name": f"{NB}:disk1", "alias_name": "disk1_alias",
                      "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                      "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
                      "queue_depth": 64,            # 256 > max_queue_depth: SPDK uses the maximum
                      "disable_chap": True, "require_chap": False, "mutual_chap": False,
                      "chap_group": 0, "header_digest": False, "data_digest": False}]
    assert t.cli("iscsi_get_portal_groups") == [
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}], "private": False}]
    assert t.cli("iscsi_get_initiator_groups") == [
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}]
    # chap_common.sh / chap_discovery.sh
    t.cli("iscsi_create_auth_group", "1", "-c", "user:root secret:tester")
    t.cli("iscsi_auth_group_add_secret", "-u", "chapo", "-s", "123456789123", "-m", "mchapo",
          "-r", "321978654321", "1")
    t.cli("iscsi_set_discovery_auth", "-r", "-m", "-g", "1")
    t.cli("iscsi_target_node_set_auth", "-g", "1", "-r", f"{NB}:disk1")
    assert t.cli("iscsi_get_auth_groups") == [{"tag": 1, "secrets": [
        {"user": "root", "secret": "tester"},
        {"user": "chapo", "secret": "123456789123", "muser": "mchapo", "msecret": "321978654321"}]}]
    opts = t.cli("iscsi_get_options")
    assert (opts["require_chap"], opts["mutual_chap"], opts["chap_group"]) == (True, True, 1)
    # LUNs and maps added later
    t.cli("iscsi_target_node_add_lun", f"{NB}:disk1", "Malloc1", "-i", "3")
    t.cli("iscsi_create_initiator_group", "3", "iqn.1994-05.com.redhat:a !ANY", "10.0.0.0/8")
    t.cli("iscsi_target_node_add_pg_ig_maps", f"{NB}:disk1", "1:3")
    t.cli("iscsi_initiator_group_add_initiators", "3", "-n", "iqn.x", "-m", "[fe80::]/10")
    assert t.cli("scsi_get_devices") == [{"id": 0, "device_name": f"{NB}:disk1"}]
    rep = t.replicas()
    node = rep["target_nodes"][0]
    assert node["luns"] == [{"bdev_name": "Malloc0", "lun_id": 0}, {"bdev_name": "Malloc1", "lun_id": 3}]
    assert node["pg_ig_maps"] == [{"pg_tag": 1, "ig_tag": 2}, {"pg_tag": 1, "ig_tag": 3}]
    assert (node["require_chap"], node["chap_group"], node["disable_chap"]) == (True, 1, False)
    assert rep["initiator_groups"][1]["netmasks"] == ["10.0.0.0/8", "[fe80::]/10"]
    t.cli("iscsi_target_node_remove_pg_ig_maps", f"{NB}:disk1", "1:3")
    t.cli("iscsi_initiator_group_remove_initiators", "3", "-n", "iqn.x")
    t.cli("iscsi_delete_initiator_group", "3")
    t.cli("iscsi_delete_target_node", f"{NB}:disk1")
    t.cli("iscsi_delete_portal_group", "1")
    assert not listening(port)
    rep = t.replicas()
    assert rep["target_nodes"] == [] and rep["portal_groups"] == [] and rep["devices"] == []
    assert t.cli("scsi_get_devices") == []
    assert t.cli("iscsi_get_connections") == []
    assert t.cli("iscsi_get_stats") == {"invalid": 0, "running": 0, "exiting": 0, "exited": 0}


def test_refusals_answer_spdks_error_and_change_nothing(start):
    t = start()
    port, port2 = free_port(), free_port()
    setup_common(t, port)
    t.cli("iscsi_create_target_node", "disk1", "disk1_alias", "Malloc0:0", "1:2", "64", "-d")
    t.cli("iscsi_create_auth_group", "1")
    before = t.replicas()

    def refused(argv, code, text):
        got = t.cli_fails(*argv)
        assert got[0] == code and text in got[1], (argv, got)
        assert t.replicas() == before, f"{argv} changed a replica"
        assert not listening(port2), f"{argv} left a portal listening"
        assert listening(port)

    # portal groups: duplicate tag; a portal another group has; a portal that cannot listen
    # (the first portal of the request must not stay open)
    refused(("iscsi_create_portal_group", "1", f"127.0.0.1:{port2}"), -32602, "portal group 1 already exists")
    refused(("iscsi_create_portal_group", "5", f"127.0.0.1:{port}"), -32602, "already exists")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        refused(("iscsi_create_portal_group", "5", f"127.0.0.1:{port2} 127.0.0.1:{busy}"), -32602,
                "cannot listen")
    finally:
        blocker.close()
    refused(("iscsi_create_portal_group", "5", "127.0.0.1:0"), -32602, "invalid port")
    # target nodes: duplicate (another spelling), missing bdev, bad name, unknown groups, no LUN 0
    refused(("iscsi_create_target_node", f"{NB}:DISK1", "a", "Malloc0:0", "1:2", "64", "-d"), -32602,
            "already exists")
    refused(("iscsi_create_target_node", "disk2", "a", "Nope0:0", "1:2", "64", "-d"), -32602,
            "bdev Nope0 does not exist")
    refused(("iscsi_create_target_node", "disk_2", "a", "Malloc0:0", "1:2", "64", "-d"), -32602,
            "invalid character")
    refused(("iscsi_create_target_node", "disk2", "a", "Malloc0:0", "7:2", "64", "-d"), -32602,
            "portal group 7 not found")
    refused(("iscsi_create_target_node", "disk2", "a", "Malloc0:1", "1:2", "64", "-d"), -32602,
            "no LUN 0")
    refused(("iscsi_create_target_node", "disk2", "a", "Malloc0:0", "1:2", "64", "-d", "-m"),
            -32602, "CHAP")
    refused(("iscsi_target_node_add_lun", f"{NB}:disk1", "Malloc0", "-i", "0"), -32602, "duplicated")
    refused(("iscsi_target_node_add_lun", f"{NB}:nope", "Malloc0"), -32602, "not found")
    refused(("iscsi_target_node_add_pg_ig_maps", f"{NB}:disk1", "1:2"), -32602, "already exists")
    refused(("iscsi_target_node_remove_pg_ig_maps", f"{NB}:disk1", "1:9"), -32602, "not found")
    refused(("iscsi_delete_target_node", f"{NB}:nope"), -errno.ENOENT, "No such file or directory")
    refused(("iscsi_target_node_set_auth", f"{NB}:nope", "-r"), -32602, f"Could not find target {NB}:nope")
    refused(("iscsi_target_node_set_auth", f"{NB}:disk1", "-g", "-1"), -32602,
            "Invalid combination of auth params")
    # initiator groups
    refused(("iscsi_create_initiator_group", "2", "ANY", "ANY"), -32602, "initiator group 2 already exists")
    refused(("iscsi_initiator_group_add_initiators", "2", "-n", "iqn.new", "-m", "127.0.0.1/32"),
            -32602, "already in the group")
    refused(("iscsi_initiator_group_remove_initiators", "9", "-n", "ANY"), -32602, "not found")
    refused(("iscsi_delete_initiator_group", "9"), -32602, "not found")
    refused(("iscsi_delete_portal_group", "9"), -32602, "not found")
    # auth groups: SPDK's own messages
    refused(("iscsi_create_auth_group", "1"), -32602, "Could not add auth group (1), File exists")
    refused(("iscsi_create_auth_group", "2", "-c", "user:a secret:b,user:a secret:c"), -32602,
            "Could not add secret to auth group (2), File exists")
    refused(("iscsi_delete_auth_group", "4"), -32602, "Could not find auth group (4)")
    refused(("iscsi_auth_group_add_secret", "-u", "a", "-s", "b", "-m", "c", "1"), -32602,
            "Could not add secret to auth group (1), Invalid argument")
    refused(("iscsi_auth_group_remove_secret", "-u", "zz", "1"), -32602,
            "Could not delete secret from CHAP group (1), No such device")
    refused(("iscsi_set_discovery_auth", "-m"), -32602, "Invalid combination of CHAP params")
    # malformed nested objects, straight JSON
    for method, params in [("iscsi_create_portal_group", {"tag": 5, "portals": [{"host": "x"}]}),
                           ("iscsi_create_target_node", {"name": "d3", "alias_name": "", "luns": [
                               {"bdev_name": "Malloc0", "lun_id": "0"}], "pg_ig_maps": [
                               {"pg_tag": 1, "ig_tag": 2}], "queue_depth": 1}),
                           ("iscsi_create_auth_group", {"tag": 5, "secrets": [{"user": "a"}]})]:
        with pytest.raises(RpcError) as ei:
            t.call(method, **params)
        assert ei.value.code == -32602
        assert t.replicas() == before
    # iscsi_set_options is a startup method (SPDK_RPC_STARTUP)
    with pytest.raises(RpcError):
        t.call("iscsi_set_options", nop_timeout=30)
    assert t.replicas() == before


def test_a_hot_removed_bdev_takes_its_lun_away_on_every_reactor(start):
    t = start()
    port = free_port()
    setup_common(t, port)
    t.cli("bdev_malloc_create", "64", "512", "-b", "Malloc1")
    t.cli("iscsi_create_target_node", "Target3", "Target3_alias", "Malloc0:0 Malloc1:1", "1:2", "64", "-d")
    t.cli("bdev_malloc_delete", "Malloc1")
    deadline = time.monotonic() + 20
    while True:
        rep = t.replicas()
        luns = rep["target_nodes"][0]["luns"]
        if len(luns) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert luns == [{"bdev_name": "Malloc0", "lun_id": 0}]
    assert [d[2] for d in rep["devices"]] == [[[0, "Malloc0"]]]
    assert t.cli("iscsi_get_target_nodes")[0]["name"] == f"{NB}:Target3"    # the node stays
    # Malloc0 goes too: the node stays, with no LUN
    t.cli("bdev_malloc_delete", "Malloc0")
    deadline = time.monotonic() + 20
    while t.replicas()["target_nodes"][0]["luns"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert t.replicas()["target_nodes"][0]["luns"] == []


def test_startup_options_then_save_config_and_load_it_into_a_fresh_target(start, tmp_path):
    t = start("--wait-for-rpc", name="a")
    # iscsi_tgt.sh family: `iscsi_set_options -o 30 -a 16` before framework_start_init
    t.cli("iscsi_set_options", "-o", "30", "-a", "16", "-q", "32")
    assert t.cli_fails("iscsi_set_options", "-o", "10") == (-32603, "Must not call more than once")
    t.cli("framework_start_init")
    assert t.call("framework_wait_init") is True
    opts = t.cli("iscsi_get_options")
    assert (opts["nop_timeout"], opts["max_sessions"], opts["max_queue_depth"]) == (30, 16, 32)
    port = free_port()
    setup_common(t, port)
    t.cli("bdev_malloc_create", "64", "512", "-b", "Malloc9")
    t.cli("iscsi_create_target_node", "disk1", "", "Malloc0:0 Malloc9:5", "1:2", "0", "-r", "-m", "-g", "1",
          "-H", "-D")
    t.cli("iscsi_create_auth_group", "1", "-c", "user:u secret:s muser:m msecret:ms")
    t.cli("iscsi_create_portal_group", "4", f"127.0.0.1:{free_port()}", "-p", "-w")
    cfg = t.call("save_config")
    iscsi = next(s for s in cfg["subsystems"] if s["subsystem"] == "iscsi")["config"]
    assert [e["method"] for e in iscsi] == [          # SPDK's spdk_iscsi_config_json order
        "iscsi_set_options", "iscsi_create_portal_group", "iscsi_create_portal_group",
        "iscsi_create_initiator_group", "iscsi_create_target_node", "iscsi_create_auth_group"]
    node = iscsi[4]["params"]
    assert "alias_name" not in node and node["queue_depth"] == 32 and node["data_digest"] is True
    first = t.replicas()
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(cfg))
    t.call("spdk_kill_instance", sig_name="SIGTERM")
    t.proc.wait(timeout=30)
    t2 = start("-c", str(path), name="b")
    again = t2.replicas()
    assert again == first
    assert listening(port)
    assert t2.call("save_config")["subsystems"] == cfg["subsystems"]


def test_spdks_own_iscsi_config(start):
    # test/iscsi_tgt/calsoft/calsoft.sh: `--wait-for-rpc`, `rpc.py load_subsystem_config <
    # iscsi.json` (tests/data/spdk/), framework_start_init.  It asks for ErrorRecoveryLevel
    # 2, which this target (ERL 0) refuses by name, leaving the options as they were;
    # the same config at ERL 0 loads, every other option applied on both reactors.
    text = open(os.path.join(DATA, "iscsi_tgt_calsoft_iscsi.json")).read()
    body = json.loads(text[text.index("{"):])
    t = start("--wait-for-rpc")

    def load(cfg):
        return subprocess.run([SPDK_RPC, "-s", t.sock, "load_subsystem_config"], input=json.dumps(cfg),
                              capture_output=True, text=True, timeout=60)
    p = load(body)
    assert p.returncode != 0 and "'error_recovery_level'" in p.stdout + p.stderr
    body["config"][0]["params"]["error_recovery_level"] = 0
    p = load(body)
    assert p.returncode == 0, p.stdout + p.stderr
    t.cli("framework_start_init")
    assert t.call("framework_wait_init") is True
    opts = t.cli("iscsi_get_options")
    assert (opts["allow_duplicated_isid"], opts["nop_timeout"], opts["nop_in_interval"],
            opts["max_sessions"], opts["error_recovery_level"]) == (True, 30, 10, 256, 0)
    assert t.replicas()["options"] == opts


def test_start_iscsi_exports_every_bdev_now_and_later(start, tmp_path):
    port = free_port()
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 128,
                                                    "block_size": 512}}]}]}))
    t = start("-c", str(cfg), "--iscsi", str(port))
    deadline = time.monotonic() + 20
    while not t.call("iscsi_get_target_nodes") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [n["name"] for n in t.call("iscsi_get_target_nodes")] == [f"{NB}:Malloc0"]
    assert t.call("iscsi_get_portal_groups")[0]["portals"] == [{"host": "127.0.0.1", "port": str(port)}]
    assert listening(port)
    t.cli("bdev_malloc_create", "64", "512", "-b", "Base_1")
    deadline = time.monotonic() + 20
    while len(t.call("iscsi_get_target_nodes")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    names = [n["name"] for n in t.replicas()["target_nodes"]]
    assert names == [f"{NB}:Malloc0", f"{NB}:Base-1"]     # "_" cannot be in an iSCSI name
    t.cli("bdev_malloc_delete", "Base_1")
    deadline = time.monotonic() + 20
    while len(t.call("iscsi_get_target_nodes")) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [n["name"] for n in t.replicas()["target_nodes"]] == [f"{NB}:Malloc0"]
