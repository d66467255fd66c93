"""Process mode (mask 0x3): a real target with two reactor processes, driven over JSON-RPC.

* every module: data written through one reactor process reads back through the other;
* the file (aio) bdev: data written and flushed survives a restart of the target;
* SPDK's own client (spdk.rpc.client.JSONRPCClient) creating, listing and deleting bdevs.
"""
import os
import signal
import subprocess
import sys

import pytest

from proc_util import started_targets, wait_for_socket
from reactor.rpc import RpcClient, RpcError

APP = os.path.join(os.path.dirname(__file__), "apps", "drivers_target.py")
BS = 512


class Target:
    def __init__(self, tmp_path, tag="t", config=None):
        self.sock = str(tmp_path / f"{tag}.sock")
        args = [sys.executable, APP, "0x3", self.sock] + ([config] if config else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.sock, self.proc)
        self.rpc = RpcClient(self.sock, timeout=30)
        assert self.rpc.call("framework_wait_init") is True

    def call(self, method, **params):
        return self.rpc.call(method, params or None)

    def io(self, name, reactor, op, off=0, num=1, data=b""):
        r = self.call("test_bdev_io", name=name, reactor=reactor, op=op, offset_blocks=off,
                      num_blocks=num, data=data.hex())
        assert r["reactor"] == reactor
        return r

    def stop(self):
        if getattr(self, "_stopped", None) is not None:
            return self._stopped
        self._stopped = self._stop()
        return self._stopped

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            return self.proc.returncode, err
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture
def target(tmp_path):
    yield from started_targets(Target, tmp_path)


def pattern(n, seed):
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


def test_every_module_writes_on_one_reactor_and_reads_on_the_other(target, tmp_path):
    t = target()
    img = tmp_path / "a.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    for i in range(8):
        assert t.call("bdev_malloc_create", name=f"M{i}", num_blocks=512, block_size=BS) == f"M{i}"
    assert t.call("bdev_null_create", name="N0", num_blocks=512, block_size=BS) == "N0"
    assert t.call("bdev_aio_create", name="A0", filename=str(img), block_size=BS) == "A0"
    assert t.call("bdev_passthru_create", name="P0", base_bdev_name="M0") == "P0"
    assert t.call("bdev_split_create", base_bdev="M1", split_count=2) == ["M1p0", "M1p1"]
    assert t.call("bdev_error_create", base_name="M2") is True
    assert t.call("bdev_delay_create", name="D0", base_bdev_name="M3", avg_read_latency=10,
                  p99_read_latency=20, avg_write_latency=10, p99_write_latency=20) == "D0"
    assert t.call("bdev_raid_create", name="R0", raid_level="raid0", base_bdevs=["M4", "M5"],
                  strip_size_kb=4) is True
    assert t.call("bdev_raid_create", name="R1", raid_level="raid1", base_bdevs=["M6", "M7"]) is True
    targets = ["N0", "A0", "P0", "M1p1", "EE_M2", "D0", "R0", "R1"]
    for k, name in enumerate(targets):
        for src, dst in ((0, 1), (1, 0)):
            data = pattern(12 * BS, seed=k * 2 + src)
            w = t.io(name, src, "write", off=3, data=data)
            assert (w["rc"], w["success"]) == (0, True), (name, w)
            r = t.io(name, dst, "read", off=3, num=12)
            assert (r["rc"], r["success"]) == (0, True), (name, r)
            if name != "N0":
                assert bytes.fromhex(r["data"]) == data, f"{name}: reactor {src} -> {dst}"
    names = {b["name"] for b in t.call("bdev_get_bdevs")}
    assert set(targets) <= names
    # tear the stacks down through the RPCs; nothing is left
    for m, p in [("bdev_passthru_delete", {"name": "P0"}), ("bdev_split_delete", {"base_bdev": "M1"}),
                 ("bdev_error_delete", {"name": "EE_M2"}), ("bdev_delay_delete", {"name": "D0"}),
                 ("bdev_raid_delete", {"name": "R0"}), ("bdev_raid_delete", {"name": "R1"}),
                 ("bdev_aio_delete", {"name": "A0"}), ("bdev_null_delete", {"name": "N0"})]:
        assert t.call(m, **p) is True, m
    for i in range(8):
        assert t.call("bdev_malloc_delete", name=f"M{i}") is True
    assert t.call("bdev_get_bdevs") == []
    rc, err = t.stop()
    assert rc == 0, err
    assert "Traceback" not in err, err


def test_aio_data_flushed_survives_a_restart_of_the_target(target, tmp_path):
    img = tmp_path / "persist.img"
    with open(img, "wb") as f:
        f.truncate(256 * BS)
    t = target(tag="one")
    assert t.call("bdev_aio_create", name="A0", filename=str(img)) == "A0"
    data = pattern(16 * BS, seed=42)
    assert t.io("A0", 1, "write", off=10, data=data)["success"]
    assert t.io("A0", 1, "flush", off=0, num=256)["success"]
    config = {"subsystems": [{"subsystem": "bdev", "config": t.call("framework_get_config", name="bdev")}]}
    rc, err = t.stop()
    assert rc == 0, err
    assert any(e["method"] == "bdev_aio_create" for e in config["subsystems"][0]["config"])
    # the bytes are in the file, and a new target loading the saved config reads them back
    with open(img, "rb") as f:
        f.seek(10 * BS)
        assert f.read(16 * BS) == data
    cfg = tmp_path / "saved.json"
    import json
    cfg.write_text(json.dumps(config))
    t2 = target(tag="two", config=str(cfg))
    r = t2.io("A0", 0, "read", off=10, num=16)
    assert r["success"] and bytes.fromhex(r["data"]) == data
    r = t2.io("A0", 1, "read", off=10, num=16)
    assert r["success"] and bytes.fromhex(r["data"]) == data


def test_spdk_client_creates_lists_and_deletes(target):
    client_mod = pytest.importorskip("spdk.rpc.client")
    t = target()
    c = client_mod.JSONRPCClient(t.sock, timeout=30.0)
    try:
        assert c.call("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 64, "block_size": 4096}) == "Malloc0"
        assert c.call("bdev_passthru_create", {"name": "PT0", "base_bdev_name": "Malloc0"}) == "PT0"
        bdevs = c.call("bdev_get_bdevs")
        by = {b["name"]: b for b in bdevs}
        assert by["Malloc0"]["claimed"] is True and by["PT0"]["claimed"] is False
        assert by["PT0"]["block_size"] == 4096 and by["PT0"]["num_blocks"] == 64
        assert by["PT0"]["driver_specific"]["passthru"]["base_bdev_name"] == "Malloc0"
        assert {"read", "write", "unmap", "flush", "reset", "write_zeroes"} <= set(by["Malloc0"]["supported_io_types"])
        assert c.call("bdev_get_bdevs", {"name": "PT0"})[0]["name"] == "PT0"
        with pytest.raises(client_mod.JSONRPCException) as ei:
            c.call("bdev_passthru_create", {"name": "PT1", "base_bdev_name": "Malloc0"})
        assert '"code": -1' in ei.value.message    # -EPERM: the base is claimed
        assert c.call("bdev_passthru_delete", {"name": "PT0"}) is True
        assert c.call("bdev_malloc_delete", {"name": "Malloc0"}) is True
        assert c.call("bdev_get_bdevs") == []
    finally:
        c.close()
