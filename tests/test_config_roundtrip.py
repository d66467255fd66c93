"""save_config of a target with every module stacked loads back into the same state."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reactor.rpc import RpcClient, RpcError

ROOT = os.path.join(os.path.dirname(__file__), "..")
RINGSTACK = [sys.executable, "-m", "tools.cli"]


def start(sock, *extra):
    p = subprocess.Popen(RINGSTACK + ["start", "-m", "0x3", "-r", str(sock), *extra], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"target did not start: {p.communicate()[1]}")
        time.sleep(0.05)
    c = RpcClient(str(sock), timeout=30)
    assert c.call("framework_wait_init") is True
    return p, c


def stop(p, c):
    c.call("spdk_kill_instance", {"sig_name": "SIGTERM"})
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err


def state(c):
    keep = ("name", "aliases", "product_name", "block_size", "num_blocks", "uuid", "claimed",
            "supported_io_types")
    return sorted(({k: b.get(k) for k in keep} for b in c.call("bdev_get_bdevs")),
                  key=lambda b: b["name"])


def test_save_config_loads_back_to_the_same_state(tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(b"\0" * (4 << 20))
    sock = tmp_path / "a.sock"
    p, c = start(sock)
    try:
        for i in range(4):
            c.call("bdev_malloc_create", {"name": f"M{i}", "num_blocks": 2048, "block_size": 512})
        c.call("bdev_null_create", {"name": "N0", "num_blocks": 1024, "block_size": 4096})
        c.call("bdev_aio_create", {"name": "F0", "filename": str(img), "block_size": 512})
        c.call("bdev_passthru_create", {"name": "PT0", "base_bdev_name": "M0"})
        c.call("bdev_split_create", {"base_bdev": "M1", "split_count": 2})
        c.call("bdev_error_create", {"base_name": "F0"})
        c.call("bdev_delay_create", {"name": "D0", "base_bdev_name": "N0", "avg_read_latency": 10,
                                     "p99_read_latency": 20, "avg_write_latency": 10,
                                     "p99_write_latency": 20})
        c.call("bdev_raid_create", {"name": "R1", "raid_level": "raid1", "base_bdevs": ["M2", "M3"]})
        c.call("bdev_set_qos_limit", {"name": "PT0", "rw_ios_per_sec": 20000})
        before = state(c)
        saved = c.call("save_config")
    finally:
        stop(p, c)
    names = {b["name"] for b in before}
    assert {"M0", "N0", "F0", "PT0", "M1p0", "M1p1", "EE_F0", "D0", "R1"} <= names
    cfg = tmp_path / "saved.json"
    cfg.write_text(json.dumps(saved))

    sock2 = tmp_path / "b.sock"
    p, c = start(sock2, "-c", str(cfg))
    try:
        after = state(c)
        qos = {b["name"]: b["assigned_rate_limits"] for b in c.call("bdev_get_bdevs", {"name": "PT0"})}
        resaved = c.call("save_config")
    finally:
        stop(p, c)
    assert after == before
    assert qos["PT0"]["rw_ios_per_sec"] == 20000
    bdev_cfg = lambda cfg: next(s["config"] for s in cfg["subsystems"] if s["subsystem"] == "bdev")  # noqa: E731
    assert bdev_cfg(resaved) == bdev_cfg(saved)


def test_main_runs_after_every_config_entry_is_applied(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(f'''
import sys
sys.path.insert(0, {ROOT!r})
from reactor.app import App, app_stop
import bdev

def main():
    print(sorted(b.name for b in bdev.bdevs()), flush=True)
    app_stop(0)

if __name__ == "__main__":
    cfg = {{"subsystems": [{{"subsystem": "bdev", "config": [
        {{"method": "bdev_malloc_create", "params": {{"name": f"M{{i}}", "num_blocks": 256, "block_size": 512}}}}
        for i in range(3)] + [{{"method": "bdev_passthru_create", "params": {{"name": "P0", "base_bdev_name": "M0"}}}}]}}]}}
    sys.exit(App("0x3", rpc_socket={str(tmp_path / "s.sock")!r}, config=cfg).run(main))
''')
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['M0', 'M1', 'M2', 'P0']"
