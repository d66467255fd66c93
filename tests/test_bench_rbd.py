"""`ringstack bench rbd`: a short real run (its own dev cluster, every path measured, the
JSON's shape, nothing left behind: daemons, temp dirs, segments, children), an interrupt
mid-run against an existing cluster (everything stopped, the image removed), and the
one-line errors of a missing tool and of bad options (nothing started)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ceph_cluster import ROOT, skip_reason
from proc_util import running
from tools.bench_rbd import PATHS, PROG

BENCH = [sys.executable, "-m", "tools.cli", "bench", "rbd"]
WORKLOADS = ["randread 4k qd32", "randwrite 4k qd32"]


def _why_not() -> str | None:
    why = skip_reason()
    if why:
        return why
    for binary, package in (("fio", "fio"), ("qemu-nbd", "qemu-utils"), ("rbd", "ceph-common")):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian {package})"
    if not any(os.path.exists(os.path.join(d, "block-rbd.so"))
               for d in ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/aarch64-linux-gnu/qemu",
                         "/usr/lib/qemu", "/usr/lib64/qemu")):
        return "QEMU's rbd driver is not installed (Debian qemu-block-extra)"
    return None


needs_tools = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture
def scratch():
    """TMPDIR of the bench (where it makes its temp dirs and the dev cluster's), so a test
    sees what it leaves behind; short, as the sockets in it must be (108 bytes)."""
    d = tempfile.mkdtemp(prefix="rbdb.", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _env(scratch, path=None) -> dict:
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=ROOT)
    if path is not None:
        env["PATH"] = path
    return env


def _kill_leftovers(pids) -> list:
    """The pids of ``pids`` still running (a bench that broke its promise), each then
    killed, so a failing test does not leave them to the rest of the suite."""
    left = [pid for pid in pids if running(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROG}: error: "), stderr
    return lines[0]


@needs_tools
def test_a_short_run_measures_every_path_and_leaves_nothing(scratch, tmp_path):
    out = tmp_path / "rbd.json"
    p = subprocess.run(BENCH + ["-t", "1", "--size", "8M", "--json", str(out)], cwd=ROOT,
                       env=_env(scratch), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert set(d) == {"meta", "results", "ratios"}
    rows = d["results"]
    assert [r["workload"] for r in rows] == WORKLOADS
    for row in rows:
        assert (row["io_size"], row["iodepth"]) == (4096, 32)
        for path in PATHS:
            m = row[path]
            assert m["iops"] > 0 and m["seconds"] > 0, (path, m)
            assert [r["iops"] > 0 for r in m["rounds"]] == [True], (path, m)
            assert m["rounds"][0]["command"] == row["commands"][path]
            assert m["rounds"][0]["refill_s"] > 0          # the image rewritten before it
        for a, b in (("ringstack-nbd", "qemu-nbd"), ("bdevperf", "rbd-bench")):
            want = row[a]["iops"] / row[b]["iops"]
            assert row[f"ratio {a}/{b}"] == pytest.approx(want)
            assert d["ratios"][row["workload"]][f"{a}/{b}"] == pytest.approx(want)
        # one fio command for both servers: only the URI differs
        ours, theirs = (row["commands"][s].split() for s in ("ringstack-nbd", "qemu-nbd"))
        assert [a for a, b in zip(ours, theirs) if a != b] == [next(a for a in ours if a.startswith("--uri="))]
        assert {"--ioengine=nbd", "--bs=4096", "--iodepth=32", "--numjobs=1"} <= set(ours)
        rw = row["rw"]
        assert f"--rw={rw}" in ours
        assert f"-q 32 -o 4096 -w {rw}" in row["commands"]["bdevperf"]
        bench = row["commands"]["rbd-bench"]
        assert "--rbd-cache=false" in bench and "--io-threads 32 --io-pattern rand" in bench
        assert f"--io-type {rw[4:]}" in bench and "--io-size 4K" in bench
    meta = d["meta"]
    assert meta["machine"]["nproc"] == os.cpu_count()
    assert len(meta["machine"]["loadavg_before"]) == len(meta["machine"]["loadavg_after"]) == 3
    assert meta["versions"]["fio"].startswith("fio-")
    assert meta["versions"]["qemu-nbd"].startswith("qemu-nbd ")
    assert all(meta["versions"][k].startswith("ceph version") for k in ("ceph (rbd CLI, librbd)", "ceph-mon"))
    c = meta["cluster"]
    assert c["kind"].startswith("dev") and c["features"] == "layering" and c["size"] == 8 << 20
    assert "--io-type write" in c["prefill"]["command"] and "--io-total 8388608" in c["prefill"]["command"]
    # every client without librbd's cache: qemu-nbd's --cache=none, ringstack's config_param
    assert "--cache=none" in meta["servers"]["qemu-nbd"]["command"]
    reg = meta["servers"]["ringstack-nbd"]["config"]["subsystems"][0]["config"][0]
    assert reg["method"] == "bdev_rbd_register_cluster"
    assert reg["params"]["config_param"] == {"rbd_cache": "false"}
    assert meta["command"] == f"{PROG} -t 1 --size 8M --json {out}"
    # the table
    assert re.search(r"randread 4k qd32\s+\|\s+\d+\s+\d+\s+[0-9.]+x \|", p.stdout), p.stdout
    assert "ringstack-nbd" in p.stdout and "rbd-bench" in p.stdout
    # nothing left: the dev cluster's daemons (stopped by pid), temp dirs and sockets
    assert len(c["pids"]) == 2
    assert _kill_leftovers(c["pids"] + [s["pid"] for s in meta["servers"].values()]) == []
    assert os.listdir(scratch) == []


@needs_tools
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_mid_run_stops_everything_and_removes_the_image(ceph_cluster, scratch, sig):
    """With --conf (an existing cluster: the session's), interrupted while fio runs."""
    c = ceph_cluster
    before = set(c.rbd("ls", "rbd").split())
    p = subprocess.Popen(BENCH + ["-t", "60", "--size", "8M", "--conf", c.conf], cwd=ROOT,
                         env=_env(scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    servers = []
    try:
        lines = []
        while True:
            line = p.stderr.readline()
            assert line, "".join(lines) + p.stderr.read()
            lines.append(line)
            m = re.search(r"ringstack start pid (\d+), qemu-nbd pid (\d+); measuring", line)
            if m:
                servers = [int(m.group(1)), int(m.group(2))]
                break
        image = next(ln.split()[1] for ln in lines if ln.strip().startswith("filling"))
        assert image.split("/")[1] in c.rbd("ls", "rbd").split()
        time.sleep(1.5)              # fio is running against ringstack now
        p.send_signal(sig)
        rest = p.stderr.read()
        assert p.wait(60) == 130, rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        left = _kill_leftovers(servers)
    assert rest.strip().splitlines() == [f"{PROG}: interrupted; stopped everything it started"]
    assert left == []
    assert set(c.rbd("ls", "rbd").split()) == before          # its image is gone
    assert os.listdir(scratch) == []


def _processes_naming(path: str) -> list:
    """Pids of live processes whose command line names ``path`` (a directory only this
    test's bench uses)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if path in cmdline and running(int(pid)):
            found.append(int(pid))
    return found


@needs_tools
def test_ctrl_c_while_the_dev_cluster_starts_leaves_no_daemon(scratch):
    """The start script is let finish (a daemon half-started has no pid file yet), then
    every daemon is stopped by pid and the temp dir removed."""
    p = subprocess.Popen(BENCH + ["-t", "1", "--size", "8M"], cwd=ROOT, env=_env(scratch),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stderr.readline()
        assert "starting a dev cluster" in first, first + p.stderr.read()
        time.sleep(0.3)                  # ceph-mon is starting now
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        assert p.wait(90) == 130, rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        left = _kill_leftovers(_processes_naming(scratch))
    assert rest.strip().splitlines() == [f"{PROG}: interrupted; stopped everything it started"]
    assert left == []
    assert os.listdir(scratch) == []


def _path_without(tmp_path, missing: str, fakes: dict | None = None) -> str:
    """A PATH holding every tool the bench looks for except ``missing``, plus ``fakes``
    (name -> shell script)."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("fio", "qemu-nbd", "qemu-img", "rbd", "ceph-mon", "ceph-osd", "ceph",
                 "ceph-authtool", "monmaptool"):
        real = shutil.which(name)
        if name != missing and real:
            (d / name).symlink_to(real)
    for name, script in (fakes or {}).items():
        (d / name).write_text("#!/bin/sh\n" + script)
        (d / name).chmod(0o755)
    return str(d)


def _cli(argv, capsys, monkeypatch, scratch, path=None):
    """``ringstack bench rbd ARGV`` in this process (what the errors need; no cluster):
    (status, stdout, stderr)."""
    from tools.cli import main
    monkeypatch.setattr(tempfile, "tempdir", scratch)
    if path is not None:
        monkeypatch.setenv("PATH", path)
    try:
        rc = main(["bench", "rbd"] + argv)
    except SystemExit as exc:          # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("binary,package", [("fio", "fio"), ("qemu-nbd", "qemu-utils"),
                                            ("rbd", "ceph-common"), ("ceph-mon", "ceph-mon")])
def test_a_missing_tool_is_one_line_naming_its_package(tmp_path, scratch, capsys, monkeypatch,
                                                       binary, package):
    others = [b for b in ("fio", "qemu-nbd", "qemu-img", "rbd", "ceph-mon") if b != binary]
    if any(shutil.which(b) is None for b in others):
        pytest.skip("another tool the bench checks first is not installed either")
    rc, out, err = _cli(["-t", "1"], capsys, monkeypatch, scratch, _path_without(tmp_path, binary))
    assert rc == 1
    assert _one_error_line(err) == (f"{PROG}: error: {binary} is not installed (Debian "
                                    f"package {package}; tools/install-sysdeps.sh)")
    assert out == "" and os.listdir(scratch) == []


def test_qemu_without_its_rbd_driver_is_one_line_naming_qemu_block_extra(tmp_path, scratch, capsys,
                                                                        monkeypatch):
    # what qemu-img says for rbd: when block-rbd.so is not installed
    fake = {"qemu-img": "echo \"qemu-img: Could not open '$2': Unknown protocol 'rbd'\" >&2; exit 1\n"}
    if any(shutil.which(b) is None for b in ("fio", "qemu-nbd", "rbd", "ceph-mon", "ceph-osd")):
        pytest.skip("the tools checked before QEMU's rbd driver are not all installed")
    rc, out, err = _cli([], capsys, monkeypatch, scratch,
                        _path_without(tmp_path, "qemu-img", fake))
    assert rc == 1
    assert "qemu-block-extra" in _one_error_line(err)
    assert os.listdir(scratch) == []


@pytest.mark.parametrize("argv,says", [
    (["--size", "5M"], "multiple of 4M"),
    (["--size", "lots"], "--size"),
    (["--size", "1G"], "at most 768M"),
    (["-t", "0"], "at least 1 second"),
    (["--repeat", "0"], "at least 1"),
    (["-m", "0x0"], "-m 0x0"),
    (["-m", "zz"], "-m zz"),
    (["--pool", "p"], "--pool needs --conf"),
    (["--user-id", "u"], "--user-id needs --conf"),
    (["--conf", "/nonexistent/ceph.conf"], "no such file"),
    (["--mode", "spin"], "invalid choice"),
    (["-t", "soon"], "invalid int value"),
])
def test_a_bad_option_is_one_line_and_starts_nothing(scratch, capsys, monkeypatch, argv, says):
    rc, out, err = _cli(argv, capsys, monkeypatch, scratch)
    assert rc == 1
    assert says in _one_error_line(err)
    assert out == "" and os.listdir(scratch) == []


def test_the_command_line_errors_are_one_line_too(tmp_path, scratch):
    """Through the real ``ringstack`` entry point: an unknown option, a missing tool."""
    p = subprocess.run(BENCH + ["--bogus"], cwd=ROOT, env=_env(scratch), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1
    assert _one_error_line(p.stderr) == f"{PROG}: error: unrecognized arguments: --bogus"
    p = subprocess.run(BENCH, cwd=ROOT, env=_env(scratch, _path_without(tmp_path, "fio")),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "fio is not installed (Debian package fio" in _one_error_line(p.stderr)
    assert os.listdir(scratch) == []


def test_help_says_why_the_image_is_layering_only():
    p = subprocess.run(BENCH + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "--image-feature layering" in text and "exclusive-lock" in text
    for opt in ("--json", "--repeat", "-t", "--size", "--conf", "-m", "--mode"):
        assert opt in text


def test_rbd_bench_repeats_a_run_its_estimate_made_short(monkeypatch):
    """rbd bench runs a byte count: sized from bdevperf's rate (2000 IOPS) it would take 1 s
    of a 5 s -t at its real 10000 IOPS, so that run is a calibration, the image is filled
    again and the run repeated at 10000 IOPS x 5 s; both runs are kept."""
    from argparse import Namespace

    from tools import bench_rbd
    from tools.ceph_dev import CephCluster
    sizes, fills = [], []

    def run_rbd_bench(cmd, timeout):
        sizes.append(int(cmd[cmd.index("--io-total") + 1]))
        return {"iops": 10000.0, "seconds": sizes[-1] / 4096 / 10000.0}

    monkeypatch.setattr(bench_rbd, "run_rbd_bench", run_rbd_bench)
    b = bench_rbd.Bench(Namespace(runtime=5, pool=None, conf="c.conf", user_id=None), 16 << 20)
    b.cluster, b.image = CephCluster(conf="c.conf"), "img"
    b.fill = lambda: fills.append(1) or 0.25
    b.rounds["randread 4k qd32"]["bdevperf"].append({"iops": 2000.0})
    cmd, r = b.rbd_bench("randread 4k qd32", "read")
    assert sizes == [2000 * 5 * 4096, 10000 * 5 * 4096] and fills == [1]
    assert (r["seconds"], r["refill_s"]) == (5.0, 0.25)
    assert r["calibration"]["seconds"] == 1.0 and "--io-total 40960000" in r["calibration"]["command"]
    assert cmd[cmd.index("--io-total") + 1] == str(10000 * 5 * 4096)
