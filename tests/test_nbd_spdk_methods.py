"""SPDK's NBD methods and the default export, against a real target.

* ``nbd_export_add`` with ``export_name: ""``: the export a client gets when its URI
  names none (nbdkit's and qemu-nbd's default export), from a config at start-up and over
  RPC, read with nbdinfo over a Unix socket and over TCP.
* SPDK's kernel-device methods through SPDK's CLI: ``nbd_get_disks`` is ``[]``;
  ``nbd_start_disk`` answers SPDK's errors.  This host has no nbd module (no /dev/nbdN):
  the branch where a free /dev/nbdN exists is checked only when one does."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_nbd_target import MIB, Target, need, uri

SPDK_RPC = shutil.which("spdk-rpc", path=os.path.dirname(sys.executable))


def _config(nbd_sock):
    return {"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 1024, "block_size": 4096}},
        ]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_server_start", "params": {"listen": nbd_sock}},
            {"method": "nbd_export_add", "params": {"bdev_name": "Malloc1", "export_name": "named"}},
            {"method": "nbd_export_add", "params": {"bdev_name": "Malloc0", "export_name": ""}},
        ]},
    ]}


@pytest.fixture
def target(tmp_path):
    t = Target(tmp_path, config=_config(str(tmp_path / "nbd.sock")))
    yield t
    assert t.stop() == 0, t.stderr()
    assert "Traceback" not in t.stderr()


def _wait_exports(t, n):
    import time
    deadline = time.monotonic() + 20
    while len(t.call("nbd_get_exports")) < n:
        assert time.monotonic() < deadline, t.stderr()
        time.sleep(0.05)


def nbdinfo(u):
    p = subprocess.run(["nbdinfo", "--json", u], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["exports"][0]


def test_default_export_from_a_config_and_over_rpc(target):
    need("nbdinfo")
    t = target
    _wait_exports(t, 2)
    assert sorted(e["export_name"] for e in t.call("nbd_get_exports")) == ["", "named"]
    # a URI without an export name gets the "" export (Malloc0), not the first one added
    e = nbdinfo(uri(t.nbd_sock))
    assert (e["export-name"], e["export-size"]) == ("", 8192 * 512)
    assert nbdinfo(uri(t.nbd_sock, "named"))["export-size"] == 4 * MIB
    # it is saved as it was given
    saved = t.call("save_config")
    nbd = [s for s in saved["subsystems"] if s["subsystem"] == "nbd"][0]["config"]
    assert {"method": "nbd_export_add",
            "params": {"bdev_name": "Malloc0", "export_name": "", "readonly": False}} in nbd
    # over RPC, on TCP: removed, then added again as "" and read with nbd://host:port
    assert t.call("nbd_server_stop") is True
    assert t.call("nbd_server_start", {"listen": "127.0.0.1:0"}) is True
    assert t.call("nbd_export_add", {"bdev_name": "Malloc1", "export_name": ""}) == ""
    with pytest.raises(Exception) as exc:
        t.call("nbd_export_add", {"bdev_name": "Malloc0", "export_name": ""})
    assert exc.value.code == -17
    u = t.call("nbd_get_stats")["uri"].rstrip("/")
    assert u.startswith("nbd://127.0.0.1:")
    e = nbdinfo(u)
    assert (e["export-name"], e["export-size"]) == ("", 4 * MIB)
    assert t.call("nbd_server_stop") is True


@pytest.mark.skipif(SPDK_RPC is None, reason="SPDK's CLI (spdk-rpc) is not installed")
def test_spdk_kernel_nbd_methods_without_a_free_device(target):
    t = target

    def rpc_py(*argv):
        return subprocess.run([SPDK_RPC, "-s", t.rpc_sock, *argv], capture_output=True, text=True,
                              timeout=30)

    def error(p):
        assert p.returncode != 0
        out = p.stdout + p.stderr              # rpc.py prints the error response on stdout
        return json.loads(out[out.index("response:") + len("response:"):])

    p = rpc_py("nbd_get_disks")
    assert p.returncode == 0 and json.loads(p.stdout) == []
    assert error(rpc_py("nbd_get_disks", "-n", "/dev/nbd0")) == {"code": -19, "message": "No such device"}
    assert error(rpc_py("nbd_stop_disk", "/dev/nbd0")) == {"code": -19, "message": "No such device"}
    assert error(rpc_py("nbd_start_disk", "Malloc0", "/dev/sda")) == \
        {"code": -19, "message": "illegal nbd device /dev/sda"}
    assert error(rpc_py("nbd_start_disk", "Malloc0", "/dev/nbd0p1")) == \
        {"code": -19, "message": "illegal nbd device /dev/nbd0p1"}
    if not glob.glob("/dev/nbd[0-9]*"):
        # SPDK's answer when no /dev/nbdN exists (no nbd module), and, for a named one,
        # the open of the device node that is not there
        assert error(rpc_py("nbd_start_disk", "Malloc0")) == {"code": -19, "message": "nbd device not found"}
        big = 1 << 20
        assert error(rpc_py("nbd_start_disk", "Malloc0", f"/dev/nbd{big}")) == \
            {"code": -2, "message": "No such file or directory"}
    else:
        # a host with the nbd module: the bdev is checked first, then the device; the
        # hand-over to the kernel is not implemented (-EOPNOTSUPP)
        assert error(rpc_py("nbd_start_disk", "NoSuchBdev"))["code"] == -19
        assert error(rpc_py("nbd_start_disk", "Malloc0"))["code"] in (-19, -95)
    assert json.loads(rpc_py("nbd_get_disks").stdout) == []
