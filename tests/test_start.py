"""`ringstack start`: the launcher with its RPC server and config, driven from outside."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from proc_util import stop_all, wait_for_socket
from reactor.rpc import RpcClient, RpcError
from reactor.rpc.dispatch import MSG_NEEDS_RUNTIME

RINGSTACK = [sys.executable, "-m", "tools.cli"]
ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture
def target(tmp_path):
    procs = []

    def start(*extra, mask="0x3"):
        sock = str(tmp_path / "rpc.sock")
        p = subprocess.Popen(RINGSTACK + ["start", "-m", mask, "-r", sock, *extra], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        wait_for_socket(sock, p)
        if "--wait-for-rpc" not in extra:
            assert RpcClient(sock, timeout=30).call("framework_wait_init") is True
        return p, sock
    yield start
    stop_all(procs)


def test_bad_mask_is_one_clear_line():
    p = subprocess.run(RINGSTACK + ["start", "-m", "0xZZ"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == ["ringstack start: error: invalid cpumask '0xZZ': expected hex like 0x3 or a list like [0,1]"]


def test_unavailable_core_is_one_clear_line():
    p = subprocess.run(RINGSTACK + ["start", "-m", "0x100"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0
    assert "core(s) [8] not available" in p.stderr and "Traceback" not in p.stderr


def test_config_error_names_entry_and_leaves_nothing(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "no_such_method", "params": {}}]}]}))
    sock = tmp_path / "rpc.sock"
    p = subprocess.run(RINGSTACK + ["start", "-m", "0x3", "-r", str(sock), "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "no_such_method" in p.stderr and "Traceback" not in p.stderr
    assert not sock.exists()


def test_unreadable_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "broken.json"
    cfg.write_text("{not json")
    p = subprocess.run(RINGSTACK + ["start", "-c", str(cfg), "-r", str(tmp_path / "s")], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "is not valid JSON" in p.stderr and "Traceback" not in p.stderr


def test_rpc_framework_methods_and_kill_instance(target):
    p, sock = target()
    c = RpcClient(sock, timeout=10)
    reactors = c.call("framework_get_reactors")
    assert [r["lcore"] for r in reactors["reactors"]] == [0, 1]
    threads = c.call("thread_get_stats")["threads"]
    assert {t["name"] for t in threads} == {"app_thread", "reactor_1"}
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    with pytest.raises(RpcError) as exc:
        c.call("spdk_kill_instance", {"sig_name": "SIGNOPE"})
    assert exc.value.code == -22
    assert p.poll() is None                       # the bad request changed nothing
    assert c.call("spdk_kill_instance", {"sig_name": "SIGTERM"}) is True
    p.communicate(timeout=20)
    assert p.returncode == 0
    assert not os.path.exists(sock)


def _connect_as_soon_as_it_exists(sock, p, timeout=60):
    """SPDK's test scripts' waitforlisten: poll for the path, connect at once (no retry)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, "RPC socket never appeared"
        time.sleep(0.001)
    return RpcClient(sock, timeout=30)


def test_socket_appears_only_once_init_and_config_are_done(tmp_path):
    """Without --wait-for-rpc the socket opens after subsystem init and the config (SPDK's
    order): a client that calls RUNTIME methods the moment the path exists succeeds."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "Malloc0", "num_blocks": 256, "block_size": 512}}]}]}))
    sock = str(tmp_path / "rpc.sock")
    p = subprocess.Popen(RINGSTACK + ["start", "-m", "0x3", "-r", sock, "-c", str(cfg)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = _connect_as_soon_as_it_exists(sock, p)
        assert c.call("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 256,
                                             "block_size": 512}) == "Malloc1"
        assert len(c.call("framework_get_reactors")["reactors"]) == 2
        assert {t["name"] for t in c.call("thread_get_stats")["threads"]} >= {"app_thread"}
        # the config was applied before anyone could connect
        assert [b["name"] for b in c.call("bdev_get_bdevs")] == ["Malloc0", "Malloc1"]
        c.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    assert p.returncode == 0 and not os.path.exists(sock)


def test_wait_for_rpc(target):
    p, sock = target("--wait-for-rpc")
    c = RpcClient(sock, timeout=10)
    for method, params in (("framework_get_reactors", None), ("thread_get_stats", None),
                           ("bdev_malloc_create", {"num_blocks": 8, "block_size": 512})):
        with pytest.raises(RpcError) as exc:
            c.call(method, params)
        assert exc.value.code == -1 and exc.value.message == MSG_NEEDS_RUNTIME
    assert c.call("framework_start_init") is True
    assert c.call("framework_wait_init") is True
    assert len(c.call("framework_get_reactors")["reactors"]) == 2


def test_spdk_python_client_unchanged(target):
    spdk_client = pytest.importorskip("spdk.rpc.client")
    p, sock = target()
    client = spdk_client.JSONRPCClient(sock)
    assert client.call("spdk_get_version")["version"]
    assert len(client.call("framework_get_reactors")["reactors"]) == 2
    methods = client.call("rpc_get_methods")
    assert "thread_get_stats" in methods and "spdk_kill_instance" in methods


def test_sigint_stops_cleanly(target):
    p, sock = target()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "SIGINT" in err
    assert not os.path.exists(sock)


@pytest.mark.parametrize("argv", [["start", "-m"], ["start", "--bogus"], ["bench", "nope"]])
def test_usage_errors_are_one_line(argv):
    p = subprocess.run(RINGSTACK + argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(f"ringstack {argv[0]}: error:")
