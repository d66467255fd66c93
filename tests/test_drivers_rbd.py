"""The rbd bdev against a real Ceph cluster (tests/ceph_cluster.py: one mon, one memstore
OSD, started once per session): SPDK's bdev_rbd_* RPCs with their result shapes and errors,
I/O through both reactor processes, bdevperf -w verify on two reactors, and a cluster that
stops answering (I/O errors in bounded time, no hung reactor, no hung shutdown).  The
conformance suite (tests/test_drivers_conformance.py) runs on an rbd image too."""
import json
import os
import subprocess
import sys
import time

import pytest

from ceph_cluster import ROOT, rbd_bdev_config, started_cluster
from reactor.rpc import RpcError
from proc_util import running, started_targets
from test_drivers_process import Target, pattern

BS = 512
ENOENT, EEXIST, EPERM, EINVAL, ENODEV = 2, 17, 1, 22, 19


@pytest.fixture
def target(tmp_path):
    yield from started_targets(Target, tmp_path)


def _err(t, method, **params):
    with pytest.raises(RpcError) as ei:
        t.call(method, **params)
    return ei.value.code, ei.value.message


def _bdevs(t):
    return sorted(b["name"] for b in t.call("bdev_get_bdevs"))


def test_rpcs_shapes_io_on_both_reactors_and_errors(ceph_cluster, target, tmp_path):
    c = ceph_cluster
    img = c.new_image(size="4M")
    t = target()
    # no cluster registered yet: SPDK answers ENOENT
    assert _err(t, "bdev_rbd_get_clusters_info")[0] == -ENOENT
    # a configuration librados cannot read or connect with is an error now, not at create;
    # SPDK's bare -1, the reason in the error's data
    assert _err(t, "bdev_rbd_register_cluster", name="bad",
                config_file=str(tmp_path / "missing.conf"))[0] == -EPERM
    assert _err(t, "bdev_rbd_register_cluster", name="bad", config_file=c.conf,
                config_param={"no_such_option": "1"})[0] == -EPERM
    assert _err(t, "bdev_rbd_get_clusters_info")[0] == -ENOENT
    assert t.call("bdev_rbd_register_cluster", name="ceph0", config_file=c.conf,
                  config_param={"rados_osd_op_timeout": "20"}) == "ceph0"
    assert _err(t, "bdev_rbd_register_cluster", name="ceph0", config_file=c.conf)[0] == -EPERM
    info = {"cluster_name": "ceph0", "config_param": {"rados_osd_op_timeout": "20"},
            "config_file": c.conf}
    assert t.call("bdev_rbd_get_clusters_info") == [info]
    assert t.call("bdev_rbd_get_clusters_info", name="ceph0") == info
    assert _err(t, "bdev_rbd_get_clusters_info", name="nope")[0] == -ENOENT

    # errors change nothing
    before = _bdevs(t)
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="nopool", rbd_name=img,
                block_size=BS, cluster_name="ceph0") == (-EPERM, "Operation not permitted")
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="rbd", rbd_name="noimage",
                block_size=BS, cluster_name="ceph0") == (-EPERM, "Operation not permitted")
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img,
                block_size=BS, cluster_name="nocluster")[0] == -EPERM
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img,
                block_size=1000, cluster_name="ceph0")[0] == -EINVAL
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img,
                block_size=BS, config="mon_host=x")[0] == -32602
    assert _bdevs(t) == before

    # through the registered cluster, and with its own client (config)
    assert t.call("bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img, block_size=BS,
                  cluster_name="ceph0") == "R0"
    own = {"mon_host": c.mon_host(), "auth_client_required": "none"}
    img2 = c.new_image(size="1M")
    assert t.call("bdev_rbd_create", pool_name="rbd", rbd_name=img2, block_size=4096,
                  config=own) == "Ceph0"
    assert _err(t, "bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img2,
                block_size=BS, config=own)[0] == -EEXIST
    b = t.call("bdev_get_bdevs", name="R0")[0]
    assert (b["block_size"], b["num_blocks"]) == (BS, 4 << 20 >> 9)
    assert b["product_name"] == "Ceph Rbd Disk"
    assert b["driver_specific"]["rbd"] == {"pool_name": "rbd", "rbd_name": img,
                                           "config_param": {"rados_osd_op_timeout": "20"},
                                           "config_file": c.conf}
    b = t.call("bdev_get_bdevs", name="Ceph0")[0]
    assert (b["block_size"], b["num_blocks"]) == (4096, 256)
    assert b["driver_specific"]["rbd"] == {"pool_name": "rbd", "rbd_name": img2, "config": own}

    # a cluster in use cannot go (SPDK's bare -1)
    assert _err(t, "bdev_rbd_unregister_cluster", name="ceph0")[0] == -EPERM
    assert t.call("bdev_rbd_get_clusters_info", name="ceph0") == info

    # data written through one reactor process reads back through the other
    for i, (w, r) in enumerate(((0, 1), (1, 0))):
        buf = pattern(8 * BS, i + 5)
        assert t.io("R0", w, "write", off=100 + i * 8, num=8, data=buf)["success"]
        assert t.io("R0", w, "flush", off=0, num=8)["success"]
        got = t.io("R0", r, "read", off=100 + i * 8, num=8)
        assert got["success"] and bytes.fromhex(got["data"]) == buf
    # and Ceph's own tool sees the bytes (the image is the real thing)
    c.rbd("export", f"rbd/{img}", str(tmp_path / "x.img"))
    exported = (tmp_path / "x.img").read_bytes()
    assert exported[100 * BS:116 * BS] == pattern(8 * BS, 5) + pattern(8 * BS, 6)

    # save_config: the cluster first, then the bdevs, with SPDK's parameters
    cfg = t.call("framework_get_config", name="bdev")
    methods = [e["method"] for e in cfg]
    assert methods.index("bdev_rbd_register_cluster") < methods.index("bdev_rbd_create")
    reg = next(e for e in cfg if e["method"] == "bdev_rbd_register_cluster")
    assert reg["params"] == {"name": "ceph0", "config_param": {"rados_osd_op_timeout": "20"},
                             "config_file": c.conf}
    r0 = next(e for e in cfg if e["method"] == "bdev_rbd_create" and e["params"]["name"] == "R0")
    assert set(r0["params"]) == {"name", "pool_name", "rbd_name", "block_size", "cluster_name",
                                 "uuid"}

    # resize: grow only, seen by every reactor
    assert _err(t, "bdev_rbd_resize", name="R0", new_size=2)[0] == -EINVAL
    assert _err(t, "bdev_rbd_resize", name="nope", new_size=8)[0] == -ENODEV
    assert t.call("bdev_rbd_resize", name="R0", new_size=8) is True
    assert t.call("bdev_get_bdevs", name="R0")[0]["num_blocks"] == 8 << 20 >> 9
    assert "size 8 MiB" in c.rbd("info", f"rbd/{img}")
    last = (8 << 20 >> 9) - 1
    assert t.io("R0", 1, "write", off=last, num=1, data=pattern(BS, 3))["success"]

    # delete closes the images; then the cluster can go
    assert _err(t, "bdev_rbd_delete", name="nope")[0] == -ENODEV
    assert t.call("bdev_rbd_delete", name="R0") is True
    assert t.call("bdev_rbd_delete", name="Ceph0") is True
    assert t.call("bdev_rbd_unregister_cluster", name="ceph0") is True
    assert _err(t, "bdev_rbd_unregister_cluster", name="ceph0")[0] == -EPERM
    assert _err(t, "bdev_rbd_get_clusters_info")[0] == -ENOENT
    # no watcher is left on the image: every client closed it
    assert "Watchers: none" in c.rbd("status", f"rbd/{img}")
    rc, err = t.stop()
    assert rc == 0, err


def test_config_file_round_trip_starts_the_same_bdev(ceph_cluster, target, tmp_path):
    c = ceph_cluster
    img = c.new_image(size="1M")
    t = target(tag="a")
    t.call("bdev_rbd_register_cluster", name="cl", config_file=c.conf)
    t.call("bdev_rbd_create", name="R1", pool_name="rbd", rbd_name=img, block_size=BS,
           cluster_name="cl")
    buf = pattern(BS, 11)
    assert t.io("R1", 0, "write", off=7, num=1, data=buf)["success"]
    uuid = t.call("bdev_get_bdevs", name="R1")[0]["uuid"]
    cfg = {"subsystems": [{"subsystem": "bdev", "config": t.call("framework_get_config", name="bdev")}]}
    assert t.stop()[0] == 0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    t2 = target(tag="b", config=str(path))
    b = t2.call("bdev_get_bdevs", name="R1")[0]
    assert b["uuid"] == uuid and b["num_blocks"] == 2048
    assert bytes.fromhex(t2.io("R1", 1, "read", off=7, num=1)["data"]) == buf
    assert t2.stop()[0] == 0


def test_bdevperf_verify_on_two_reactors(ceph_cluster, tmp_path):
    c = ceph_cluster
    img = c.new_image(size="8M")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(rbd_bdev_config(c, img)))
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "tools.cli", "bdevperf", "-q", "16", "-o", "4096",
                        "-w", "verify", "-t", "1", "-m", "0x3", "-C", "-c", str(cfg),
                        "--results", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    jobs = res["results"]
    assert [j["core_mask"] for j in jobs] == ["0x1", "0x2"]
    for j in jobs:
        assert j["status"] == "finished" and j["io_failed"] == 0 and j["iops"] > 0
        assert "mismatch" not in j


def test_a_cluster_that_stops_answering_fails_io_in_bounded_time(target):
    """Its own cluster (the session's stays up): op timeouts of 3 s; once the daemons are
    gone a read fails within a bound, the target still answers RPCs, delete and shutdown
    finish."""
    with started_cluster() as c:
        img = c.new_image(size="1M")
        t = target()
        cfg = {"mon_host": c.mon_host(), "auth_client_required": "none",
               "rados_osd_op_timeout": "3", "rados_mon_op_timeout": "3"}
        assert t.call("bdev_rbd_create", name="R0", pool_name="rbd", rbd_name=img,
                      block_size=BS, config=cfg) == "R0"
        assert t.io("R0", 1, "write", off=0, num=1, data=pattern(BS, 1))["success"]
        c.stop()
        start = time.monotonic()
        r = t.io("R0", 1, "read", off=0, num=1)
        took = time.monotonic() - start
        assert r["success"] is False
        assert took < 15, took
        # the reactors are alive: RPCs answer, the other reactor fails its I/O too
        assert _bdevs(t) == ["R0"]
        assert t.io("R0", 0, "write", off=1, num=1, data=pattern(BS, 2))["success"] is False
        start = time.monotonic()
        assert t.call("bdev_rbd_delete", name="R0") is True
        rc, err = t.stop()
        assert rc == 0, err
        assert time.monotonic() - start < 30


@pytest.mark.skipif(not os.path.exists("/usr/bin/ceph-mon"), reason="ceph-mon not installed")
def test_dev_cluster_script_stops_by_pid_and_leaves_nothing():
    """tools/ceph-dev-cluster.sh: start gives a usable cluster (rbd ls answers), stop kills
    the daemons it started, by pid, and waits for them."""
    with started_cluster() as c:
        pids = []
        for f in os.listdir(os.path.join(c.dir, "run")):
            if f.endswith(".pid"):
                with open(os.path.join(c.dir, "run", f)) as fh:
                    pids.append(int(fh.read()))
        assert len(pids) == 2
        assert c.rbd("ls", "rbd") == ""
        assert c.rbd("pool", "stats", "rbd")
    for p in pids:
        assert not running(p), p


def test_raid1_over_malloc_and_rbd_survives_losing_the_rbd_leg(ceph_cluster, tmp_path):
    """Deterministic mode, two reactors: a mirror of a malloc bdev and an rbd image keeps
    serving, data intact, when the rbd bdev goes (the remote leg lost)."""
    import bdev_stub
    from bdev import api
    from drivers import raid, rbd
    from drivers_util import Io, mk_malloc, run_until
    from reactor.testing import Harness
    c = ceph_cluster
    img = c.new_image(size="128K")
    with Harness(n_threads=2, n_reactors=2) as h:
        bdev_stub.init_layer(h)
        assert mk_malloc(h, "M0", blocks=256) == 0
        out = []
        h.set_thread(0)
        rbd.create("Rbd0", "rbd", img, BS, lambda rc, n: out.append(rc),
                   config={"mon_host": c.mon_host(), "auth_client_required": "none"})
        assert run_until(h, lambda: out) and out == [0]
        out.clear()
        raid.create("R1", "raid1", ["M0", "Rbd0"], lambda rc: out.append(rc), strip_size_kb=0)
        assert run_until(h, lambda: out) and out == [0]
        w, r = Io(h, "R1", 0), Io(h, "R1", 1, write=False)
        before = pattern(16 * BS, 4)
        assert w.write(10, before) == (0, True)
        out.clear()
        h.set_thread(0)
        rbd.delete("Rbd0", lambda rc: out.append(rc))
        assert run_until(h, lambda: out) and out == [0]
        for t in (0, 1):
            h.set_thread(t)
            assert api.get_by_name("Rbd0") is None
        h.set_thread(0)
        info = raid.get_bdevs("all")[0]
        assert info["state"] == "online" and info["num_base_bdevs_discovered"] == 1
        assert r.read(10, 16)[2] == before
        after = pattern(4 * BS, 8)
        assert w.write(40, after) == (0, True)
        assert r.read(40, 4)[2] == after
        w.close()
        r.close()
        for name, fn in (("R1", raid.delete), ("M0", None)):
            out.clear()
            h.set_thread(0)
            if fn is None:
                from drivers import malloc
                fn = malloc.delete
            fn(name, lambda rc: out.append(rc))
            assert run_until(h, lambda: out) and out == [0]
        bdev_stub.fini_layer(h)
    # the rbd leg really was a mirror: the image holds what was written before it went
    c.rbd("export", f"rbd/{img}", str(tmp_path / "leg.img"))
    assert (tmp_path / "leg.img").read_bytes()[10 * BS:26 * BS] == before


def test_nbd_export_of_an_rbd_bdev_passes_fio_verify(ceph_cluster, tmp_path):
    """ringstack start -m 0x3 with an rbd bdev exported over NBD; fio's nbd engine writes
    with crc32c and verifies, two jobs on two connections (so both reactors serve I/O)."""
    import shutil
    from tools.nbd_harness import parse_fio_json, summarize_fio
    from test_nbd_target import Target as NbdTarget, uri
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (tools/install-sysdeps.sh)")
    c = ceph_cluster
    img = c.new_image(size="16M")
    nbd_sock = str(tmp_path / "nbd.sock")
    t = NbdTarget(tmp_path, config={"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_rbd_register_cluster", "params": {"name": "c0",
                                                               "config_file": c.conf}},
            {"method": "bdev_rbd_create", "params": {"name": "Rbd0", "pool_name": "rbd",
                                                     "rbd_name": img, "block_size": 512,
                                                     "cluster_name": "c0"}}]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_server_start", "params": {"listen": nbd_sock}},
            {"method": "nbd_export_add", "params": {"bdev_name": "Rbd0"}}]}]})
    try:
        deadline = time.monotonic() + 20
        while not t.call("nbd_get_exports"):
            assert time.monotonic() < deadline, t.stderr()
            time.sleep(0.05)
        p = subprocess.run(["fio", "--name=v", "--ioengine=nbd", f"--uri={uri(nbd_sock, 'Rbd0')}",
                            "--rw=randwrite", "--bs=4k", "--size=4M", "--numjobs=2",
                            "--offset_increment=8M", "--iodepth=16", "--verify=crc32c",
                            "--do_verify=1", "--verify_fatal=1", "--output-format=json"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        res = parse_fio_json(p.stdout)
        assert [j["error"] for j in res["jobs"]] == [0, 0]
        assert summarize_fio(res)["errors"] == 0
        assert all(j["read"]["io_bytes"] == 4 << 20 for j in res["jobs"])   # the verify pass
    finally:
        rc = t.stop()
    assert rc == 0, t.stderr()
    assert "Traceback" not in t.stderr()
