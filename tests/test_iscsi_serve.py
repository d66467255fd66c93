"""What an initiator sees of the iSCSI control plane: `ringstack start -m 0x3 --iscsi PORT`
exports every bdev (libiscsi's iscsi-ls / iscsi-inq / iscsi-readcapacity16), access rules
and SendTargets follow the initiator groups, and a refused change leaves the initiator's
view as it was."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from test_iscsi_rpc import NB, free_port, start  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(shutil.which("iscsi-ls") is None,
                                reason="libiscsi-bin not installed (`make sysdeps`)")

INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"


def tool(*argv, ok=True):
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if ok:
        assert p.returncode == 0, f"{argv}: {p.stdout}{p.stderr}"
    return p


def targets_seen(port, initiator=None):
    argv = ["iscsi-ls", "-s"] + (["-i", initiator] if initiator else []) + [f"iscsi://127.0.0.1:{port}"]
    out = tool(*argv).stdout
    return sorted(line.split()[0].split(":", 1)[1] + " " + line.split()[1]
                  for line in out.splitlines() if line.startswith("Target:"))


def malloc_config(tmp_path, names):
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": n, "num_blocks": 2048 * (i + 1),
                                                    "block_size": 512}}
        for i, n in enumerate(names)]}]}))
    return str(cfg)


def wait_nodes(t, n):
    deadline = time.monotonic() + 20
    while len(t.call("iscsi_get_target_nodes")) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(t.call("iscsi_get_target_nodes")) == n


def test_start_iscsi_serves_every_bdev_to_libiscsi(start, tmp_path):  # noqa: F811
    port = free_port()
    t = start("-c", malloc_config(tmp_path, ["Malloc0", "Malloc1"]), "--iscsi", str(port))
    wait_nodes(t, 2)
    assert targets_seen(port) == [f"{NB}:Malloc0 Portal:127.0.0.1:{port},1",
                                  f"{NB}:Malloc1 Portal:127.0.0.1:{port},1"]
    inq = tool("iscsi-inq", f"iscsi://127.0.0.1:{port}/{NB}:Malloc0/0").stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in inq
    cap = tool("iscsi-readcapacity16", f"iscsi://127.0.0.1:{port}/{NB}:Malloc1/0").stdout
    assert "RETURNED LOGICAL BLOCK ADDRESS:4095" in cap
    # a bdev created later is served too
    t.cli("bdev_malloc_create", "1", "512", "-b", "Later0")
    wait_nodes(t, 3)
    cap = tool("iscsi-readcapacity16", f"iscsi://127.0.0.1:{port}/{NB}:Later0/0").stdout
    assert "RETURNED LOGICAL BLOCK ADDRESS:2047" in cap


def test_initiator_groups_decide_what_an_initiator_sees_and_refusals_change_nothing(start, tmp_path):  # noqa: F811,E501
    port = free_port()
    t = start("-c", malloc_config(tmp_path, ["Malloc0", "Malloc1"]))
    t.cli("iscsi_create_portal_group", "1", f"127.0.0.1:{port}")
    t.cli("iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32")
    t.cli("iscsi_create_initiator_group", "3", f"!{INITIATOR} ANY", "ANY")
    t.cli("iscsi_create_target_node", "open", "", "Malloc0:0", "1:2", "64", "-d")
    t.cli("iscsi_create_target_node", "closed", "", "Malloc1:0", "1:3", "64", "-d")
    other = "iqn.2024-01.org.example:other"
    assert targets_seen(port, INITIATOR) == [f"{NB}:open Portal:127.0.0.1:{port},1"]
    assert targets_seen(port, other) == [f"{NB}:closed Portal:127.0.0.1:{port},1",
                                         f"{NB}:open Portal:127.0.0.1:{port},1"]
    denied = tool("iscsi-inq", "-i", INITIATOR, f"iscsi://127.0.0.1:{port}/{NB}:closed/0", ok=False)
    assert denied.returncode != 0 and "authoriz" in (denied.stdout + denied.stderr).lower()
    tool("iscsi-inq", "-i", other, f"iscsi://127.0.0.1:{port}/{NB}:closed/0")
    # refused changes: the initiator sees what it saw
    seen = targets_seen(port, other)
    before = t.replicas()
    for argv in [("iscsi_create_target_node", "open", "", "Malloc1:0", "1:2", "64", "-d"),
                 ("iscsi_create_target_node", "third", "", "Nope:0", "1:2", "64", "-d"),
                 ("iscsi_target_node_add_pg_ig_maps", f"{NB}:open", "1:9"),
                 ("iscsi_create_portal_group", "1", f"127.0.0.1:{free_port()}")]:
        t.cli_fails(*argv)
        assert t.replicas() == before
        assert targets_seen(port, other) == seen
    # an accepted change is seen at once, from either reactor's replica
    t.cli("iscsi_initiator_group_remove_initiators", "3", "-n", f"!{INITIATOR}")
    assert len(targets_seen(port, INITIATOR)) == 2


def test_sessions_block_add_lun_and_go_with_their_deleted_target(start, tmp_path):  # noqa: F811
    port = free_port()
    t = start("-c", malloc_config(tmp_path, ["Malloc0", "Malloc1"]), "--iscsi", str(port))
    wait_nodes(t, 2)
    perf = subprocess.Popen(["iscsi-perf", "-t", "30", f"iscsi://127.0.0.1:{port}/{NB}:Malloc0/0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not t.call("iscsi_get_connections") and time.monotonic() < deadline:
            time.sleep(0.05)
        conns = t.call("iscsi_get_connections")
        assert [c["target_node_name"] for c in conns] == [f"{NB}:Malloc0"]
        assert t.call("iscsi_get_stats") == {"invalid": 0, "running": 1, "exiting": 0, "exited": 0}
        before = t.replicas()
        code, msg = t.cli_fails("iscsi_target_node_add_lun", f"{NB}:Malloc0", "Malloc1")
        assert code == -32602 and "active connections (count=1)" in msg
        assert t.replicas() == before
        # SPDK's iscsi_tgt_node_destruct: the node's connections go first
        t.cli("iscsi_delete_target_node", f"{NB}:Malloc0")
        deadline = time.monotonic() + 20
        while any(c["target_node_name"] for c in t.call("iscsi_get_connections")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(c["target_node_name"] for c in t.call("iscsi_get_connections"))
    finally:
        perf.kill()
        perf.wait()


def test_a_wildcard_portal_is_reported_as_the_address_the_initiator_reached(start, tmp_path):  # noqa: F811,E501
    port = free_port()
    t = start("-c", malloc_config(tmp_path, ["Malloc0"]), "--iscsi", f"0.0.0.0:{port}")
    wait_nodes(t, 1)
    assert t.call("iscsi_get_portal_groups")[0]["portals"] == [{"host": "0.0.0.0", "port": str(port)}]
    assert targets_seen(port) == [f"{NB}:Malloc0 Portal:127.0.0.1:{port},1"]
