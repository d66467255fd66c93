"""Real NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio, nbd-client) against the
standalone server (tests/nbd_standalone.py) in a child process.  A test is skipped only
when its client binary is missing, with the reason."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from nbd_standalone import ServerProcess
from tools.nbd_harness import NbdkitMemory, parse_fio_json, run_fio, summarize_fio

MiB = 1 << 20


def need(binary):
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (Debian package needed for this real-client test)")


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="nbdt-", dir="/tmp")
    yield d
    leftovers = [n for n in os.listdir(d) if n.endswith(".sock")]
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers, f"server left socket files behind: {leftovers}"


@pytest.fixture
def server(sockdir):
    srv = ServerProcess(os.path.join(sockdir, "s.sock"),
                        ["disk0:32M", "ro:1M:ro"], extra=["--reorder"])
    srv.start()
    try:
        yield srv
        err = srv.stop()
        assert "Traceback" not in err and "ERROR" not in err, err
    finally:
        srv.stop()


def run(cmd, timeout=120, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_nbdinfo_json_size_block_sizes_flags(server):
    need("nbdinfo")
    info = json.loads(run(["nbdinfo", "--json", server.uri("disk0")]))
    (e,) = info["exports"]
    assert info["protocol"] == "newstyle-fixed" and info["structured"] is True
    assert e["export-name"] == "disk0" and e["export-size"] == 32 * MiB
    assert (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]) == (1, 4096, 32 * MiB)
    assert e["is_read_only"] is False
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"):
        assert e[flag] is True, flag
    ro = json.loads(run(["nbdinfo", "--json", server.uri("ro")]))["exports"][0]
    assert ro["is_read_only"] is True and ro["can_trim"] is False and ro["can_zero"] is False
    assert ro["export-size"] == MiB


def test_nbdinfo_block_min_advertised(sockdir):
    need("nbdinfo")
    with ServerProcess(os.path.join(sockdir, "b.sock"), ["d:4M"], extra=["--block-min", "512"]) as srv:
        e = json.loads(run(["nbdinfo", "--json", srv.uri("d")]))["exports"][0]
        assert e["block_size_minimum"] == 512 and e["block_size_preferred"] == 4096


def test_nbdinfo_list(server):
    need("nbdinfo")
    info = json.loads(run(["nbdinfo", "--list", "--json", server.uri()]))
    assert sorted(x["export-name"] for x in info["exports"]) == ["disk0", "ro"]
    text = run(["nbdinfo", "--list", server.uri()])
    assert 'export="disk0"' in text and 'export="ro"' in text


def test_nbdcopy_random_file_in_and_out(server, sockdir):
    need("nbdcopy")
    src, dst = os.path.join(sockdir, "in.bin"), os.path.join(sockdir, "out.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(32 * MiB))
    run(["nbdcopy", "--flush", src, server.uri("disk0")])
    run(["nbdcopy", server.uri("disk0"), dst])
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()


def test_qemu_img_compare(server, sockdir):
    need("qemu-img")
    ref = os.path.join(sockdir, "ref.raw")
    data = bytearray(32 * MiB)
    data[5 * MiB:6 * MiB] = os.urandom(MiB)
    data[31 * MiB:] = os.urandom(MiB)
    with open(ref, "wb") as f:
        f.write(data)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", ref, server.uri("disk0")])
    out = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ref, server.uri("disk0")])
    assert "identical" in out
    # and it notices a difference
    with open(ref, "r+b") as f:
        f.seek(7 * MiB)
        f.write(b"\x01")
    p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ref, server.uri("disk0")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr


def test_qemu_io_pattern(server):
    need("qemu-io")
    out = run(["qemu-io", "-f", "raw",
               "-c", "write -P 0xab 1M 256k", "-c", "read -P 0xab 1M 256k",
               "-c", "read -P 0 0 4k", "-c", "write -z 1M 4k", "-c", "read -P 0 1M 4k",
               "-c", "discard 2M 64k", "-c", "flush", server.uri("disk0")])
    assert "Pattern verification failed" not in out, out
    assert out.count("read ") == 3 and "wrote" in out
    p = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4k", server.uri("ro")],
                       capture_output=True, text=True, timeout=60)
    assert "wrote" not in p.stdout, p.stdout


def test_fio_verify_two_jobs_two_connections(server):
    need("fio")
    res = run_fio(server.uri("disk0"), rw="randwrite", bs="4k", iodepth=16, numjobs=2,
                  size="8M", verify="crc32c", extra=["--offset_increment=16M"], timeout=120)
    s = res["summary"]
    assert s["jobs"] == 2 and s["errors"] == 0
    assert all(j["write"]["io_bytes"] == 8 * MiB for j in res["jobs"])
    assert all(j["read"]["io_bytes"] == 8 * MiB for j in res["jobs"])   # the verify pass
    # fio's nbd engine prints one "connected" line per job connection
    assert res["log"].count("connected to NBD server") >= 2, res["log"]


def test_fio_over_tcp_mixed(sockdir):
    need("fio")
    with ServerProcess("127.0.0.1:0", ["d:16M"], extra=["--async"]) as srv:
        assert srv.uri("d").startswith("nbd://127.0.0.1:")
        res = run_fio(srv.uri("d"), rw="randrw", bs="16k", iodepth=8, numjobs=2, size="4M",
                      verify="crc32c", extra=["--offset_increment=8M"], timeout=120)
        assert res["summary"]["errors"] == 0


def test_nbd_client_list(sockdir):
    need("nbd-client")
    with ServerProcess("127.0.0.1:0", ["alpha:1M", "beta:2M"]) as srv:
        port = srv.uris[0].rsplit(":", 1)[1].strip("/")
        p = subprocess.run(["nbd-client", "-l", "127.0.0.1", port], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "alpha" in p.stdout and "beta" in p.stdout, p.stdout


def test_fio_json_parser_tolerates_engine_chatter():
    text = 'fio: connected to NBD server\nfio: connected to NBD server\n{\n "jobs": [{"jobname": "a", "error": 0,' \
           ' "read": {"iops": 10.0, "bw_bytes": 40960, "clat_ns": {"mean": 2000.0, "N": 10}},' \
           ' "write": {"iops": 0, "bw_bytes": 0, "clat_ns": {"mean": 0, "N": 0}}}]\n}\n'
    s = summarize_fio(parse_fio_json(text))
    assert s["read"]["iops"] == 10.0 and s["read"]["clat_mean_us"] == 2.0 and s["errors"] == 0


def test_nbdkit_memory_helper(sockdir):
    need("nbdkit")
    need("nbdinfo")
    with NbdkitMemory(os.path.join(sockdir, "k.sock"), size="8M") as k:
        e = json.loads(run(["nbdinfo", "--json", k.uri]))["exports"][0]
        assert e["export-size"] == 8 * MiB
    assert not os.path.exists(os.path.join(sockdir, "k.sock"))
