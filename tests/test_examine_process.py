"""Deferred creation and raid resize against a real two-reactor target, driven by SPDK's
own CLI (``spdk-rpc``, the PyPI ``spdk`` package: scripts/rpc.py) with the command lines
SPDK's test scripts write (test/bdev/bdev_raid.sh raid_state_function_test and
raid_resize_test, test/json_config/json_config.sh create_bdev_subsystem_config), and a
JSON config whose vbdevs come before their bases.

The base bdevs are made with ringstack's client: SPDK's CLI sends its default values of
the metadata parameters with every bdev_malloc_create / bdev_null_create, which are the
parameter table's business, not examine's."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_drivers_process import BS, Target, pattern

SPDK_RPC = shutil.which("spdk-rpc", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(SPDK_RPC is None, reason="SPDK's CLI (spdk-rpc) is not installed")


@pytest.fixture
def target(tmp_path):
    made = []

    def start(**kw):
        t = Target(tmp_path, tag=f"t{len(made)}", **kw)
        made.append(t)
        return t
    yield start
    for t in made:
        rc, err = t.stop()
        assert rc == 0, err
        assert "Traceback" not in err, err


def rpc_py(t, *argv):
    """``rpc.py -s SOCK argv...``: the parsed JSON result (None for an empty answer)."""
    p = subprocess.run([SPDK_RPC, "-s", t.sock, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (argv, p.stdout, p.stderr)
    out = p.stdout.strip()
    return json.loads(out) if out.startswith(("[", "{", '"')) or out in ("true", "false") else out


def names(t):
    return sorted(b["name"] for b in t.call("bdev_get_bdevs"))


def raid_state(t, name):
    (r,) = [r for r in rpc_py(t, "bdev_raid_get_bdevs", "all") if r["name"] == name]
    return r


def test_bdev_raid_sh_state_function_steps(target):
    """bdev_raid.sh raid_state_function_test, steps 1-3, raid0 -z 64 over two bases."""
    t = target()
    create = ["bdev_raid_create", "-z", "64", "-r", "raid0", "-b", "Existed_Raid_1 Existed_Raid_2",
              "-n", "Existed_Raid"]
    # Step1: no base bdevs: configuring; delete works there
    rpc_py(t, *create)
    r = raid_state(t, "Existed_Raid")
    assert (r["state"], r["num_base_bdevs"], r["num_base_bdevs_discovered"], r["strip_size_kb"]) == \
        ("configuring", 2, 0, 64)
    assert "Existed_Raid" not in names(t)
    rpc_py(t, "bdev_raid_delete", "Existed_Raid")
    assert rpc_py(t, "bdev_raid_get_bdevs", "all") == []
    # Step2: one base: still configuring, the base claimed by raid; delete releases it
    rpc_py(t, *create)
    t.call("bdev_malloc_create", name="Existed_Raid_1", num_blocks=32 * 2048, block_size=BS)
    r = raid_state(t, "Existed_Raid")
    assert (r["state"], r["num_base_bdevs_discovered"]) == ("configuring", 1)
    assert [b["is_configured"] for b in r["base_bdevs_list"]] == [True, False]
    assert t.call("bdev_get_bdevs", name="Existed_Raid_1")[0]["claimed"] is True
    rpc_py(t, "bdev_raid_delete", "Existed_Raid")
    assert t.call("bdev_get_bdevs", name="Existed_Raid_1")[0]["claimed"] is False
    # Step3: the remaining base: online, on both reactors
    rpc_py(t, *create)
    assert raid_state(t, "Existed_Raid")["state"] == "configuring"
    t.call("bdev_malloc_create", name="Existed_Raid_2", num_blocks=32 * 2048, block_size=BS)
    rpc_py(t, "bdev_wait_for_examine")           # (rpc.py prints nothing for it)
    r = raid_state(t, "Existed_Raid")
    assert (r["state"], r["num_base_bdevs_discovered"]) == ("online", 2)
    assert t.call("bdev_get_bdevs", name="Existed_Raid")[0]["num_blocks"] == 2 * 32 * 2048
    data = pattern(256 * BS, 4)                 # crosses the 64 KiB strip onto the second base
    assert t.io("Existed_Raid", 1, "write", off=64, num=256, data=data)["success"] is True
    assert bytes.fromhex(t.io("Existed_Raid", 0, "read", off=64, num=256)["data"]) == data
    # Step4: a raid0 base goes: the raid goes offline and away
    t.call("bdev_malloc_delete", name="Existed_Raid_1")
    assert "Existed_Raid" not in names(t)
    t.call("bdev_malloc_delete", name="Existed_Raid_2")
    assert rpc_py(t, "bdev_raid_get_bdevs", "all") == [] and names(t) == []


def test_json_config_sh_splits_and_passthru_before_their_bases(target):
    """json_config.sh create_bdev_subsystem_config: splits and a passthru created before
    the mallocs they sit on; then SPDK's save_config output loads into a new target."""
    t = target()
    assert rpc_py(t, "bdev_split_create", "Malloc0", "3") == ""          # [] printed empty
    assert rpc_py(t, "bdev_passthru_create", "-b", "Malloc3", "-p", "PTBdevFromMalloc3") == \
        "PTBdevFromMalloc3"
    t.call("bdev_malloc_create", name="Malloc3", num_blocks=8 * 256, block_size=4096)
    t.call("bdev_null_create", name="Null0", num_blocks=32 * 2048, block_size=BS)
    t.call("bdev_malloc_create", name="Malloc0", num_blocks=32 * 2048, block_size=BS)
    t.call("bdev_malloc_create", name="Malloc1", num_blocks=16 * 256, block_size=4096)
    rpc_py(t, "bdev_wait_for_examine")           # (rpc.py prints nothing for it)
    want = ["Malloc0", "Malloc0p0", "Malloc0p1", "Malloc0p2", "Malloc1", "Malloc3", "Null0",
            "PTBdevFromMalloc3"]
    assert names(t) == want
    assert t.io("Malloc0p2", 1, "write", off=0, num=1, data=pattern(BS, 2))["success"] is True
    # a record still waiting is saved too, and the saved config loads (in its order) again
    assert rpc_py(t, "bdev_passthru_create", "-b", "Later0", "-p", "PTLater0") == "PTLater0"
    saved = subprocess.run([SPDK_RPC, "-s", t.sock, "save_config"], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    bdev = [s for s in json.loads(saved)["subsystems"] if s["subsystem"] == "bdev"][0]["config"]
    assert {"method": "bdev_passthru_create",
            "params": {"name": "PTLater0", "base_bdev_name": "Later0"}} in bdev
    t2 = target()
    p = subprocess.run([SPDK_RPC, "-s", t2.sock, "load_config"], input=saved, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert names(t2) == want
    t2.call("bdev_malloc_create", name="Later0", num_blocks=64, block_size=BS)
    rpc_py(t2, "bdev_wait_for_examine")
    assert "PTLater0" in names(t2)
    for tt in (t, t2):
        for b in ("PTLater0", "PTBdevFromMalloc3"):
            rpc_py(tt, "bdev_passthru_delete", b)
        rpc_py(tt, "bdev_split_delete", "Malloc0")
        for b in ("Malloc0", "Malloc1", "Malloc3"):
            tt.call("bdev_malloc_delete", name=b)
        tt.call("bdev_null_delete", name="Null0")
        if tt is t2:
            tt.call("bdev_malloc_delete", name="Later0")
        assert names(tt) == []


def test_a_config_with_vbdevs_before_their_bases_starts(target, tmp_path):
    """ringstack start -c: a passthru over a split part of a raid1, each listed before what
    it sits on, then the mallocs, then bdev_wait_for_examine."""
    cfg = {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_passthru_create", "params": {"name": "PT0", "base_bdev_name": "R1p1"}},
        {"method": "bdev_split_create", "params": {"base_bdev": "R1", "split_count": 2}},
        {"method": "bdev_raid_create", "params": {"name": "R1", "raid_level": "raid1",
                                                  "base_bdevs": ["M0", "M1"]}},
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": BS}},
        {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 2048, "block_size": BS}},
        {"method": "bdev_wait_for_examine"}]}]}
    path = tmp_path / "vbdevs_first.json"
    path.write_text(json.dumps(cfg))
    t = target(config=str(path))
    assert names(t) == ["M0", "M1", "PT0", "R1", "R1p0", "R1p1"]
    assert raid_state(t, "R1")["state"] == "online"
    data = pattern(8 * BS, 6)
    assert t.io("PT0", 1, "write", off=3, num=8, data=data)["success"] is True
    assert bytes.fromhex(t.io("PT0", 0, "read", off=3, num=8)["data"]) == data
    # raid1 wrote both mirrors: the second half of M1 holds PT0's blocks
    assert bytes.fromhex(t.io("M1", 1, "read", off=1024 + 3, num=8)["data"]) == data
    rpc_py(t, "bdev_passthru_delete", "PT0")
    rpc_py(t, "bdev_split_delete", "R1")
    rpc_py(t, "bdev_raid_delete", "R1")
    for b in ("M0", "M1"):
        t.call("bdev_malloc_delete", name=b)
    assert names(t) == []


@pytest.mark.parametrize("level", ["0", "1"])
def test_bdev_raid_sh_resize(target, level):
    """bdev_raid.sh raid_resize_test: two 32 MiB null bases; growing one leaves the raid as
    it is, growing both grows it (raid0: 2 x, raid1: 1 x the smallest)."""
    t = target()
    for b in ("Base_1", "Base_2"):
        t.call("bdev_null_create", name=b, num_blocks=32 * 2048, block_size=BS)
    rpc_py(t, "bdev_raid_create", *(["-z", "64"] if level == "0" else []), "-r", level,
           "-b", "Base_1 Base_2", "-n", "Raid")
    mult = 2 if level == "0" else 1

    def size_mb():
        (b,) = rpc_py(t, "bdev_get_bdevs", "-b", "Raid")
        return b["num_blocks"] * BS // (1 << 20)
    rpc_py(t, "bdev_null_resize", "Base_1", "64")
    assert size_mb() == 32 * mult
    rpc_py(t, "bdev_null_resize", "Base_2", "64")
    assert size_mb() == 64 * mult
    # reactor 1's replica follows too: the last block of the grown raid takes I/O there
    last = 64 * mult * 2048 - 1
    assert t.io("Raid", 1, "write", off=last, num=1, data=pattern(BS, 1))["success"] is True
    assert raid_state(t, "Raid")["base_bdevs_list"][0]["data_size"] == 64 * 2048
    rpc_py(t, "bdev_raid_delete", "Raid")
    for b in ("Base_1", "Base_2"):
        rpc_py(t, "bdev_null_delete", b)
