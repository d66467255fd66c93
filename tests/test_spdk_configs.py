"""Configs both ways: SPDK's JSON configs from its tree (tests/data/spdk/, copied unchanged
with a header comment naming the source) load into `ringstack start`; what ringstack saves
loads back into a fresh instance (same bdevs) and uses only methods and parameters SPDK's own
client sends (the spdk package's CLI calls, read with ast)."""
import ast
import json
import os
import subprocess
import sys

import pytest

from proc_util import stop_all, wait_for_socket
from reactor.rpc import RpcClient

RINGSTACK = [sys.executable, "-m", "tools.cli"]
ROOT = os.path.join(os.path.dirname(__file__), "..")
DATA = os.path.join(os.path.dirname(__file__), "data", "spdk")


@pytest.fixture
def start(tmp_path):
    procs = []

    def run(config=None, mask="0x1", name="t"):
        sock = str(tmp_path / f"{name}.sock")
        argv = RINGSTACK + ["start", "-m", mask, "-r", sock]
        if config is not None:
            argv += ["-c", str(config)]
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        procs.append(p)
        wait_for_socket(sock, p, timeout=60)
        return p, RpcClient(sock, timeout=30)
    yield run
    stop_all(procs)


def bdevs(c):
    return sorted((b["name"], b["num_blocks"], b["block_size"], b["uuid"])
                  for b in c.call("bdev_get_bdevs"))


def stop(p, c):
    c.call("spdk_kill_instance", {"sig_name": "SIGTERM"})
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return err


@pytest.mark.parametrize("name, expect", [
    ("bdevperf_conf.json", [("Malloc0", 102400, 512), ("Malloc1", 102400, 512)]),
    ("hello_world_bdev.json", [("Malloc0", 32768, 512)]),
    # accel, interface, net_framework, scsi: subsystems ringstack lacks (empty here); a
    # malloc without a name gets SPDK's MallocN
    ("json_config_alias_rpc_conf.json", [("Malloc0", 32, 4096), ("Malloc1", 32, 4096)]),
])
def test_spdk_tree_configs_load_and_round_trip(start, tmp_path, name, expect):
    p, c = start(os.path.join(DATA, name), name="a")
    first = bdevs(c)
    assert [b[:3] for b in first] == expect
    saved = c.call("save_config")
    stop(p, c)
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    p2, c2 = start(path, name="b")
    assert bdevs(c2) == first                   # same names, sizes and uuids
    assert c2.call("save_config") == saved      # and the same config again
    stop(p2, c2)


# ---------------------------------------------------------------- SPDK's decoding rules
def spdk_cli_params() -> dict:
    """{method: keyword names} from the spdk package's CLI (`args.client.METHOD(k=...)`):
    the parameters SPDK's own client sends, i.e. names SPDK's decoders know."""
    cli = pytest.importorskip("spdk.cli")
    out: dict = {}
    for fn in sorted(os.listdir(os.path.dirname(cli.__file__))):
        if not fn.endswith(".py"):
            continue
        with open(os.path.join(os.path.dirname(cli.__file__), fn), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "client"):
                names = out.setdefault(node.func.attr, set())
                names.update(k.arg for k in node.keywords if k.arg is not None)
    return out


def test_spdk_cli_table_is_read():
    known = spdk_cli_params()
    assert {"bdev_io_pool_size", "bdev_auto_examine"} <= known["bdev_set_options"]
    assert "small_buf_pool_size" not in known["bdev_set_options"]
    assert {"small_pool_count", "large_bufsize"} <= known["iobuf_set_options"]


def check_spdk_decodable(saved: dict) -> list:
    """Every entry's method is one SPDK's client sends and every parameter one it names."""
    known = spdk_cli_params()
    problems = []
    for sub in saved["subsystems"]:
        for e in sub["config"] or []:
            m = e["method"]
            if m not in known:
                problems.append(f"{sub['subsystem']}: method {m} unknown to SPDK")
                continue
            extra = set(e.get("params") or {}) - known[m]
            if extra:
                problems.append(f"{sub['subsystem']}: {m} parameters unknown to SPDK: "
                                f"{sorted(extra)}")
    return problems


def test_check_catches_ringstack_only_names():
    bad = {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_set_options", "params": {"small_buf_pool_size": 8192}},
        {"method": "ringstack_only"}]}]}
    assert len(check_spdk_decodable(bad)) == 2


def test_saved_config_is_spdks(start, tmp_path):
    """A ringstack-saved config: an iobuf subsystem with the pools, bdev_set_options with
    SPDK's names only, modules' entries, bdev_wait_for_examine last; all SPDK-decodable."""
    p, c = start(mask="0x3")
    c.call("bdev_malloc_create", {"name": "M0", "num_blocks": 2048, "block_size": 512})
    c.call("bdev_malloc_create", {"name": "M1", "num_blocks": 2048, "block_size": 512})
    c.call("bdev_null_create", {"name": "N0", "num_blocks": 1024, "block_size": 512})
    c.call("bdev_split_create", {"base_bdev": "M0", "split_count": 2})
    c.call("bdev_passthru_create", {"base_bdev_name": "N0", "name": "P0"})
    c.call("bdev_set_qos_limit", {"name": "M1", "rw_ios_per_sec": 20000})
    saved = c.call("save_config")
    names = [s["subsystem"] for s in saved["subsystems"]]
    assert names.index("iobuf") < names.index("bdev")
    iobuf = next(s for s in saved["subsystems"] if s["subsystem"] == "iobuf")["config"]
    assert iobuf == [{"method": "iobuf_set_options", "params": {
        "small_pool_count": 8192, "large_pool_count": 1024, "small_bufsize": 8192,
        "large_bufsize": 65536, "enable_numa": False}}]
    cfg = next(s for s in saved["subsystems"] if s["subsystem"] == "bdev")["config"]
    assert cfg[0]["method"] == "bdev_set_options"
    assert cfg[0]["params"]["bdev_auto_examine"] is True
    assert cfg[-1] == {"method": "bdev_wait_for_examine"}
    assert check_spdk_decodable(saved) == []
    before = bdevs(c)
    stop(p, c)
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    p2, c2 = start(path, mask="0x3", name="b")
    assert bdevs(c2) == before
    assert c2.call("save_config") == saved
    stop(p2, c2)


def test_spdk_saved_shape_loads(start, tmp_path):
    """What SPDK's save_config writes for iobuf and bdev options (iobuf_set_options with SPDK's
    default sizes, bdev_set_options with its cache sizes), subsystems ringstack lacks (their
    entries skipped with a warning), bdev_wait_for_examine last."""
    config = {"subsystems": [
        {"subsystem": "keyring", "config": []},
        {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options", "params": {
            "small_pool_count": 4096, "large_pool_count": 512, "small_bufsize": 8192,
            "large_bufsize": 135168, "enable_numa": False}}]},
        {"subsystem": "sock", "config": [
            {"method": "sock_set_default_impl", "params": {"impl_name": "posix"}},
            {"method": "sock_impl_set_options", "params": {"impl_name": "posix",
                                                            "recv_buf_size": 2097152}}]},
        {"subsystem": "vmd", "config": []},
        {"subsystem": "accel", "config": [{"method": "accel_set_options", "params": {
            "small_cache_size": 128, "large_cache_size": 16, "task_count": 2048,
            "sequence_count": 2048, "buf_count": 2048}}]},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": {
                "bdev_io_pool_size": 65535, "bdev_io_cache_size": 256,
                "bdev_auto_examine": True, "iobuf_small_cache_size": 128,
                "iobuf_large_cache_size": 16}},
            {"method": "bdev_malloc_create", "params": {
                "name": "Malloc0", "num_blocks": 8192, "block_size": 512,
                "uuid": "7a1f3e1c-3c55-4a6e-9b1a-0d1f3c3e5a11"}},
            {"method": "bdev_wait_for_examine"}]},
        {"subsystem": "nvmf", "config": [{"method": "nvmf_set_config", "params": {
            "discovery_filter": "match_any"}}]},
        {"subsystem": "iscsi", "config": [{"method": "iscsi_set_options", "params": {
            "node_base": "iqn.2016-06.io.spdk"}}]}]}
    path = tmp_path / "spdk_saved.json"
    path.write_text(json.dumps(config))
    p, c = start(path)
    assert bdevs(c) == [("Malloc0", 8192, 512, "7a1f3e1c-3c55-4a6e-9b1a-0d1f3c3e5a11")]
    saved = c.call("save_config")
    iobuf = next(s for s in saved["subsystems"] if s["subsystem"] == "iobuf")["config"]
    assert iobuf[0]["params"]["small_pool_count"] == 4096
    assert iobuf[0]["params"]["large_pool_count"] == 512
    iscsi = next(s for s in saved["subsystems"] if s["subsystem"] == "iscsi")["config"]
    assert iscsi[0]["method"] == "iscsi_set_options"        # ringstack has iscsi now
    err = stop(p, c)
    for sub in ("sock", "accel", "nvmf"):
        assert f"skipping subsystem '{sub}'" in err
    assert "skipping subsystem 'iscsi'" not in err


@pytest.mark.parametrize("method, params, needle", [
    ("iobuf_set_options", {"large_bufsize": 4096}, "large_bufsize"),
    ("iobuf_set_options", {"enable_numa": True}, "enable_numa"),
    ("bdev_set_options", {"iobuf_small_cache_size": 1}, "iobuf_small_cache_size"),
    ("bdev_set_options", {"small_buf_pool_size": 8192}, "small_buf_pool_size"),
])
def test_out_of_scope_values_are_refused(method, params, needle):
    from reactor.rpc import Dispatcher, STARTUP, discover
    discover()
    d = Dispatcher(state=STARTUP)
    got = []
    d.call(method, params, lambda err, res: got.append((err, res)))
    err, _ = got[0]
    assert err["code"] == -32602 and needle in err["message"]
