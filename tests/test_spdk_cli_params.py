"""SPDK's CLI (`spdk-rpc`, the PyPI `spdk` package: scripts/rpc.py's code) against a real
two-reactor target, with command lines as SPDK's own test scripts write them.  The CLI always
sends its defaults (md_interleave, dif_is_head_of_md, clear_sb, ...), so these pass only if
every parameter of today's SPDK is declared; values ringstack cannot honour are refused with
-32602 naming the parameter, and the state is unchanged after every refusal."""
import base64
import json
import os
import subprocess
import sys

import pytest

from test_drivers_process import Target

SPDK_RPC = os.path.join(os.path.dirname(sys.executable), "spdk-rpc")
pytestmark = pytest.mark.skipif(not os.path.exists(SPDK_RPC), reason="spdk-rpc not installed")


@pytest.fixture
def target(tmp_path):
    """A fresh two-reactor target per test (the leak guard reaps children between tests)."""
    t = Target(tmp_path)
    try:
        yield t
    finally:
        rc, err = t.stop()
    assert rc == 0, err
    assert "Traceback" not in err, err


def rpc(t, *argv):
    """``spdk-rpc -s SOCK argv...``: the parsed JSON output (None when it prints nothing)."""
    p = subprocess.run([SPDK_RPC, "-s", t.sock, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{argv}: {p.stderr}"
    out = p.stdout.strip()
    return json.loads(out) if out.startswith(("[", "{", '"')) or out in ("true", "false") \
        else (out or None)


def rpc_fails(t, *argv):
    """The JSON-RPC error ``(code, message)`` the CLI prints for a refused call."""
    p = subprocess.run([SPDK_RPC, "-s", t.sock, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, f"{argv} unexpectedly passed: {p.stdout}"
    text = p.stdout + p.stderr          # the CLI prints the error response on stdout
    assert "response:" in text, f"{argv}: {text}"
    text = text[text.index("response:"):]
    err = json.loads(text[text.index("{"):])
    return err["code"], err["message"]


def state(t):
    return sorted((b["name"], b["claimed"], b["num_blocks"]) for b in t.call("bdev_get_bdevs"))


def test_rpc_sh_rpc_integrity(target):
    # test/rpc/rpc.sh rpc_integrity, line by line
    t = target
    assert rpc(t, "bdev_get_bdevs") == []
    malloc = rpc(t, "bdev_malloc_create", "8", "512")
    assert malloc == "Malloc0"
    bdevs = rpc(t, "bdev_get_bdevs")
    assert len(bdevs) == 1
    assert bdevs[0]["numa_id"] == -1 and bdevs[0]["num_blocks"] == 8 * 2048   # SPDK's malloc field
    rpc(t, "bdev_passthru_create", "-b", malloc, "-p", "Passthru0")
    assert len(rpc(t, "bdev_get_bdevs")) == 2
    rpc(t, "bdev_passthru_delete", "Passthru0")
    rpc(t, "bdev_malloc_delete", malloc)
    assert rpc(t, "bdev_get_bdevs") == []


def test_out_of_scope_values_are_refused_with_nothing_created(target):
    t = target
    before = state(t)
    for argv, param in [(("bdev_malloc_create", "8", "512", "-m", "8"), "md_size"),
                        (("bdev_malloc_create", "8", "512", "-i"), "md_interleave"),
                        (("bdev_malloc_create", "8", "512", "-t", "1"), "dif_type"),
                        (("bdev_malloc_create", "8", "512", "-d"), "dif_is_head_of_md"),
                        (("bdev_malloc_create", "8", "512", "-f", "1"), "dif_pi_format"),
                        (("bdev_null_create", "Null9", "8", "512", "-m", "16"), "md_size"),
                        (("bdev_null_create", "Null9", "8", "512", "-d"), "dif_is_head_of_md")]:
        code, msg = rpc_fails(t, *argv)
        assert code == -32602 and f"'{param}'" in msg, (argv, msg)
    # a NUMA node the machine lacks: SPDK's malloc answers EINVAL
    assert rpc_fails(t, "bdev_malloc_create", "8", "512", "-n", "4096") == (-22, "Invalid argument")
    assert rpc_fails(t, "bdev_malloc_create", "8", "512", "-p", "520") == (-22, "Invalid argument")
    assert state(t) == before


def test_malloc_and_null_geometry_parameters(target):
    t = target
    rpc(t, "bdev_malloc_create", "8", "512", "-b", "M4k", "-p", "4096", "-n", "0", "-o", "8")
    rpc(t, "bdev_null_create", "N1", "8", "512", "-a", "8", "-g", "16", "-s", "32", "-c", "4",
        "-r", "2")
    m, = rpc(t, "bdev_get_bdevs", "-b", "M4k")
    assert m["numa_id"] == 0 and m["optimal_io_boundary"] == 8
    n, = rpc(t, "bdev_get_bdevs", "-b", "N1")
    assert "numa_id" not in n       # SPDK's null sets none
    assert (n["preferred_write_alignment"], n["preferred_write_granularity"], n["optimal_write_size"],
            n["preferred_unmap_alignment"], n["preferred_unmap_granularity"]) == (8, 16, 32, 4, 2)
    cfg = {e["method"]: e.get("params") for e in t.call("framework_get_config", name="bdev")}
    assert cfg["bdev_malloc_create"]["physical_block_size"] == 4096
    assert cfg["bdev_malloc_create"]["numa_id"] == 0
    assert cfg["bdev_null_create"]["optimal_write_size"] == 32
    rpc(t, "bdev_null_delete", "N1")
    rpc(t, "bdev_malloc_delete", "M4k")
    assert state(t) == []


def test_bdev_raid_sh_create_get_delete(target, tmp_path):
    # test/bdev/bdev_raid.sh raid_function_test / raid_state_function_test command lines
    t = target
    rpc(t, "bdev_malloc_create", "32", "512", "-b", "Base_1")
    rpc(t, "bdev_malloc_create", "32", "512", "-b", "Base_2")
    rpc(t, "bdev_raid_create", "-z", "64", "-r", "raid0", "-b", "Base_1 Base_2", "-n", "raid")
    raids = rpc(t, "bdev_raid_get_bdevs", "online")
    assert [r["name"] for r in raids] == ["raid"]
    before = state(t)
    # SPDK's module text for a duplicate
    assert rpc_fails(t, "bdev_raid_create", "-z", "64", "-r", "raid0", "-b", "Base_1 Base_2",
                     "-n", "raid") == (-17, "Failed to create RAID bdev raid: File exists")
    code, msg = rpc_fails(t, "bdev_raid_create", "-s", "-r", "raid1", "-b", "Base_1 Base_2",
                          "-n", "raid_sb")
    assert code == -32602 and "'superblock'" in msg
    assert state(t) == before
    rpc(t, "bdev_raid_delete", "raid")              # the CLI sends clear_sb: false
    assert rpc_fails(t, "bdev_raid_delete", "raid") == (-19, "raid bdev raid not found")
    rpc(t, "bdev_raid_create", "-r", "raid1", "-b", "Base_1 Base_2", "-n", "raid")
    rpc(t, "bdev_raid_delete", "-c", "raid")        # clear_sb: no superblock, nothing to clear
    # aio (bdev_raid.sh's raid1 over aio bases): --no-wait is out of scope
    f = tmp_path / "aio1.bdev"
    f.write_bytes(bytes(1 << 20))
    code, msg = rpc_fails(t, "bdev_aio_create", str(f), "Base_3", "4096", "--no-wait")
    assert code == -32602 and "'nowait'" in msg
    assert rpc(t, "bdev_aio_create", str(f), "Base_3", "4096", "--fallocate") == "Base_3"
    for name in ("Base_3",):
        rpc(t, "bdev_aio_delete", name)
    for name in ("Base_1", "Base_2"):
        rpc(t, "bdev_malloc_delete", name)
    assert state(t) == []


def test_blockdev_sh_qos_iostat_histogram_error(target):
    # test/bdev/blockdev.sh qos_test_suite / stat_test_suite / error_test_suite lines
    t = target
    rpc(t, "bdev_malloc_create", "-b", "Malloc_0", "128", "512")
    rpc(t, "bdev_null_create", "Null_1", "128", "512")
    rpc(t, "bdev_set_qos_limit", "--rw-ios-per-sec", "1500", "Malloc_0")
    rpc(t, "bdev_set_qos_limit", "--rw-mbytes-per-sec", "3", "Null_1")
    lim = rpc(t, "bdev_get_bdevs", "-b", "Malloc_0")[0]["assigned_rate_limits"]
    assert lim["rw_ios_per_sec"] == 2000            # today's step: 1000 IO/s (the seed's: 10000)
    assert rpc(t, "bdev_get_bdevs", "-b", "Null_1")[0]["assigned_rate_limits"]["rw_mbytes_per_sec"] == 3
    rpc(t, "bdev_set_qos_limit", "--rw-ios-per-sec", "0", "Malloc_0")
    rpc(t, "bdev_set_qos_limit", "--rw-mbytes-per-sec", "0", "Null_1")
    # stat_test_suite: names, per channel, and the reset mode
    rpc(t, "bdev_enable_histogram", "Malloc_0", "--histogram")
    for r in (0, 1, 1):
        assert t.io("Malloc_0", r, "read", off=0, num=1)["success"] is True
    st = rpc(t, "bdev_get_iostat", "--names", "Malloc_0")
    assert [b["name"] for b in st["bdevs"]] == ["Malloc_0"] and st["bdevs"][0]["num_read_ops"] == 3
    both = rpc(t, "bdev_get_iostat", "--names", "Malloc_0,Null_1")
    assert [b["name"] for b in both["bdevs"]] == ["Malloc_0", "Null_1"]
    per = rpc(t, "bdev_get_iostat", "--names", "Malloc_0", "-c")
    assert per["name"] == "Malloc_0" and isinstance(per["channels"], list)  # live channels only
    assert rpc_fails(t, "bdev_get_iostat", "--names", "Malloc_0,Null_1", "-c") == (-22, "Invalid argument")
    assert rpc_fails(t, "bdev_get_iostat", "--names", "Malloc_0,nope") == (-19, "No such device")
    got = rpc(t, "bdev_get_iostat", "--names", "Malloc_0", "--reset-mode", "all")
    assert got["bdevs"][0]["num_read_ops"] == 3
    assert rpc(t, "bdev_get_iostat", "--names", "Malloc_0")["bdevs"][0]["num_read_ops"] == 0
    # the histogram in SPDK's layout, as scripts/histogram.py reads it
    h = rpc(t, "bdev_get_histogram", "Malloc_0")
    assert (h["granularity"], h["min_range"], h["max_range"], h["tsc_rate"]) == (0, 0, 64, 10 ** 9)
    blob = base64.b64decode(h["histogram"])
    n_buckets = (h["max_range"] - h["min_range"] + 1) << h["granularity"]
    assert len(blob) == 8 * n_buckets
    counts = [int.from_bytes(blob[i * 8:i * 8 + 8], "little") for i in range(n_buckets)]
    assert sum(counts) == 3
    code, msg = rpc_fails(t, "bdev_enable_histogram", "Malloc_0", "--histogram", "--granularity", "7")
    assert code == -32602 and "'granularity'" in msg
    code, msg = rpc_fails(t, "bdev_enable_histogram", "Malloc_0", "--histogram", "-o", "read")
    assert code == -32602 and "'opc'" in msg
    assert rpc(t, "bdev_get_histogram", "Malloc_0")["histogram"] == h["histogram"]  # unchanged
    # error_test_suite
    rpc(t, "bdev_error_create", "Malloc_0")
    rpc(t, "bdev_error_inject_error", "EE_Malloc_0", "all", "failure", "-n", "5")
    assert t.io("EE_Malloc_0", 0, "read", off=0, num=1)["success"] is False
    code, msg = rpc_fails(t, "bdev_error_inject_error", "EE_Malloc_0", "all", "failure", "-q", "4")
    assert code == -32602 and "'queue_depth'" in msg
    rpc(t, "bdev_error_delete", "EE_Malloc_0")
    rpc(t, "bdev_malloc_delete", "Malloc_0")
    rpc(t, "bdev_null_delete", "Null_1")
    assert state(t) == []


def test_bdev_raid_set_options_takes_spdks_defaults(target):
    """A config SPDK saved carries bdev_raid_set_options; its defaults are accepted, a
    tuned rebuild window (which ringstack raids do not have) is refused by name."""
    t = target
    assert rpc(t, "bdev_raid_set_options", "-w", "1024", "-b", "0") is None   # success prints nothing
    code, msg = rpc_fails(t, "bdev_raid_set_options", "-w", "2048")
    assert code == -32602 and "'process_window_size_kb'" in msg
    code, msg = rpc_fails(t, "bdev_raid_set_options", "-b", "100")
    assert code == -32602 and "'process_max_bandwidth_mb_sec'" in msg
