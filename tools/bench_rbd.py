"""Ceph RBD benchmark: ringstack's NBD export of an rbd bdev against qemu-nbd over QEMU's
rbd driver, and bdevperf on the rbd bdev against Ceph's own ``rbd bench``.

One run, one image, 4 KiB random reads and writes at depth 32 on four paths:

- ``ringstack-nbd``: ``ringstack start`` with bdev_rbd_register_cluster + bdev_rbd_create
  and an NBD export of the bdev on a Unix socket, driven by fio's nbd engine (one job);
- ``qemu-nbd``: ``qemu-nbd -f raw --cache=none`` serving the same image through QEMU's
  rbd driver (Debian qemu-block-extra), the same fio command against its socket;
- ``bdevperf``: ``ringstack bdevperf -q 32 -o 4096`` on an rbd bdev made by its --json
  config (no NBD, no fio: the bdev layer and librbd alone);
- ``rbd-bench``: ``rbd bench --io-threads 32 --io-size 4K --io-pattern rand``, librbd
  driven by Ceph's own tool: the ceiling of librbd and this cluster on this machine.

Ratios: ringstack-nbd / qemu-nbd (the two NBD servers over librbd, same client) and
bdevperf / rbd-bench (ringstack's bdev layer against librbd's own load generator).

Fairness.  Every client runs without librbd's cache (``rbd_cache=false``): QEMU's
``--cache=none`` sets exactly that, ringstack and bdevperf get it as a config_param of
bdev_rbd_register_cluster, rbd bench as ``--rbd-cache=false``; every I/O then reaches the
OSD, and the clients that have the image open at once cannot read each other's stale
cache.  The image is ``--image-feature layering`` only: ringstack, qemu-nbd and bdevperf
keep it open together (and each ringstack reactor is a client of its own), and with
exclusive-lock every change of writer would pass the lock over (docs/drivers.md measured
2.3x lost to that).  It is filled with 4 MiB sequential writes first, so reads hit real
objects, not holes, and filled again before every measurement, so each starts from the
same state whichever path runs first (``Bench.fill``: the memstore OSD slows down as
random writes fragment its objects).  qemu-nbd's NBD server takes at most 16 requests of
one client at a time (MAX_NBD_REQUESTS in QEMU's nbd/server.c): fio offers 32 to both
servers.  Nothing is pinned: the monitor and OSD share the cores with the clients and
servers.  Each workload
runs on the four paths in turn (every other repeat in reverse order), repeat after repeat,
so drifts of a shared machine hit all alike; best of the repeats is reported, every repeat
is in the JSON.

By default the bench starts its own dev cluster (tools/ceph-dev-cluster.sh: one ceph-mon,
one memstore ceph-osd) in a temporary directory and stops it by pid at the end, whatever
happens; ``--conf`` uses an existing cluster instead, where it creates and removes only
its own image.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tools.bdevperf import UsageError, parse_size
from tools.ceph_dev import CephCluster, CephError
from tools.machine import cpu_model
from tools.nbd_harness import parse_fio_json, unix_uri, wait_for_unix_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "ringstack bench rbd"

# (name, fio/bdevperf rw, rbd bench --io-type)
WORKLOADS = [("randread 4k qd32", "randread", "read"),
             ("randwrite 4k qd32", "randwrite", "write")]
PATHS = ("ringstack-nbd", "qemu-nbd", "bdevperf", "rbd-bench")
RATIOS = (("ringstack-nbd", "qemu-nbd"), ("bdevperf", "rbd-bench"))
DEPTH = 32
IO_SIZE = 4096
FIO_RAMP_S = 0.5
# What every librbd client of the run is told (see the module docstring).
CLIENT_CONFIG = {"rbd_cache": "false"}
BDEV = "Rbd0"
CLUSTER = "bench"
# The dev cluster's OSD keeps data in memory, in a 1 GiB memstore (tools/ceph-dev-cluster.sh).
DEV_CLUSTER_MAX_SIZE = 768 << 20

# binary -> the Debian package that brings it
TOOLS = {"fio": "fio", "qemu-nbd": "qemu-utils", "qemu-img": "qemu-utils", "rbd": "ceph-common"}
CLUSTER_TOOLS = {"ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "ceph": "ceph-common",
                 "ceph-authtool": "ceph-common", "monmaptool": "ceph-base"}

_RBD_BENCH = re.compile(r"elapsed:\s*\d+\s+ops:\s*(\d+)\s+ops/sec:\s*([0-9.]+)")


class BenchError(Exception):
    """A failure that ends the run: printed as one line, exit status 1."""


def add_arguments(p) -> None:
    p.description = ("4 KiB random read/write at depth 32: ringstack's NBD export of an rbd "
                     "bdev vs qemu-nbd (QEMU's rbd driver), both under fio's nbd engine; "
                     "bdevperf on the rbd bdev vs Ceph's rbd bench.  The image is created "
                     "--image-feature layering only: ringstack's reactors, qemu-nbd and "
                     "bdevperf have it open at once, and with exclusive-lock every change of "
                     "writer would pass the lock back and forth (docs/drivers.md).")
    p.add_argument("--size", default="256M",
                   help="image size, a multiple of 4M (default 256M; at most 768M on the dev "
                        "cluster, whose OSD keeps data in a 1 GiB memstore)")
    p.add_argument("-t", "--runtime", "--time", dest="runtime", type=int, default=5, metavar="SECONDS",
                   help="seconds per workload and path (default 5; fio adds a 0.5 s ramp)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every workload on every path this many times; best of each")
    p.add_argument("-m", "--cpumask", default="0x1",
                   help="reactor mask of ringstack's target and of bdevperf (default 0x1: one "
                        "fio job is one NBD connection, served by one reactor; the monitor "
                        "and OSD need the other core)")
    p.add_argument("--mode", choices=("adaptive", "poll"), default="adaptive",
                   help="ringstack reactor mode, target and bdevperf (default adaptive: "
                        "sleeps when idle, bdevperf --interrupt-mode)")
    p.add_argument("--conf", metavar="CEPH_CONF",
                   help="use the existing cluster of this ceph.conf instead of starting a dev "
                        "cluster (the bench then creates and removes only its own image)")
    p.add_argument("--pool", help="pool of the image, with --conf (default rbd)")
    p.add_argument("--user-id", metavar="NAME",
                   help="Ceph client name without 'client.', with --conf (default: Ceph's, admin)")


# ---------------------------------------------------------------------------- checks

def missing_tool(own_cluster: bool) -> str | None:
    """Why the bench cannot run here (one line naming the Debian package), or None."""
    need = dict(TOOLS)
    if own_cluster:
        need.update(CLUSTER_TOOLS)
    for binary, package in need.items():
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian package {package}; tools/install-sysdeps.sh)"
    if not _qemu_has_rbd():
        return ("qemu-nbd has no rbd block driver (Debian package qemu-block-extra; "
                "tools/install-sysdeps.sh)")
    from drivers import rbd_lib
    why = rbd_lib.available()
    if why:
        return f"{why} (Debian packages librbd1, librados2)"
    return None


def _qemu_has_rbd() -> bool:
    """Whether QEMU opens rbd: images: a probe with no cluster at all (conf=/dev/null) fails
    at once, saying "error connecting" with the driver and "Unknown protocol" without."""
    try:
        p = subprocess.run(["qemu-img", "info", "rbd:probe/probe:conf=/dev/null"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return True         # it tried to connect: the driver is there
    out = p.stdout + p.stderr
    return "Unknown protocol" not in out and "Unknown driver" not in out


def check_options(args) -> int:
    """The image size in bytes; BenchError (one line) for a bad option."""
    try:
        size = parse_size(args.size, "--size")
    except UsageError as exc:
        raise BenchError(str(exc)) from None
    if size < 4 << 20 or size % (4 << 20):
        raise BenchError(f"--size {args.size}: must be a positive multiple of 4M (the object size)")
    if not args.conf and size > DEV_CLUSTER_MAX_SIZE:
        raise BenchError(f"--size {args.size}: the dev cluster holds at most 768M (a 1 GiB "
                         "memstore); use --conf for a real cluster")
    if args.runtime < 1:
        raise BenchError(f"-t {args.runtime}: must be at least 1 second")
    if args.repeat < 1:
        raise BenchError(f"--repeat {args.repeat}: must be at least 1")
    from reactor.app import parse_cpumask
    try:
        cores = parse_cpumask(args.cpumask)
    except ValueError as exc:
        raise BenchError(f"-m {args.cpumask}: {exc}") from None
    if not cores or max(cores) >= (os.cpu_count() or 1):
        raise BenchError(f"-m {args.cpumask}: this machine has cores 0-{(os.cpu_count() or 1) - 1}")
    if args.conf and not os.path.isfile(args.conf):
        raise BenchError(f"--conf {args.conf}: no such file")
    for opt, value in (("--pool", args.pool), ("--user-id", args.user_id)):
        if value is not None and not args.conf:
            raise BenchError(f"{opt} needs --conf (the dev cluster has pool rbd and no users)")
    return size


# ------------------------------------------------------------------------ processes

def _terminate(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop one process this bench started, by its pid: SIGTERM, SIGKILL after ``grace``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run(cmd: list, timeout: float, cwd: str | None = None) -> tuple:
    """(status, stdout, stderr) of one client run.  Its own session, so a Ctrl-C at the
    terminal reaches only the bench, which then stops it with SIGTERM (bdevperf unlinks its
    shared memory on SIGTERM; SIGKILL would leave it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _terminate(proc)
        proc.communicate()
        return None, "", f"no result within {timeout:.0f} s"
    except BaseException:
        _terminate(proc)
        proc.communicate()
        raise
    return proc.returncode, out, err


def _last_words(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[-limit:]


class Server:
    """A long-running server of the bench (ringstack start, qemu-nbd): its own session,
    stderr kept in a file for the error line, stopped by pid."""

    name = "server"

    def __init__(self, cmd: list, nbd_sock: str, export: str, errfile: str):
        self.cmd, self.nbd_sock, self.export = cmd, nbd_sock, export
        self.errfile = errfile
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return unix_uri(self.nbd_sock, self.export)

    def start(self, timeout: float = 60.0):
        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        from reactor.rpc import RpcError
        try:
            wait_for_unix_socket(self.nbd_sock, timeout, self.proc)
            self.ready(timeout)
        except (RuntimeError, TimeoutError, OSError, RpcError) as exc:
            self.stop()
            raise BenchError(f"{self.name} did not start: {self.why(exc)}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self, timeout: float) -> None:
        pass

    def why(self, exc: Exception) -> str:
        return _last_words(self.stderr()) if self.proc.poll() is not None else str(exc)

    def stderr(self) -> str:
        try:
            with open(self.errfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, 30.0)


class RingstackTarget(Server):
    name = "ringstack start"

    def __init__(self, tmp: str, cluster_params: dict, bdev_params: dict, mask: str, mode: str):
        self.rpc_sock = os.path.join(tmp, "rs-rpc.sock")
        nbd_sock = os.path.join(tmp, "rs-nbd.sock")
        self.config = {"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_rbd_register_cluster", "params": cluster_params},
                {"method": "bdev_rbd_create", "params": bdev_params},
                {"method": "bdev_wait_for_examine"}]},
            {"subsystem": "nbd", "config": [
                {"method": "nbd_server_start", "params": {"listen": nbd_sock}},
                {"method": "nbd_export_add", "params": {"bdev_name": BDEV}}]}]}
        cfg = os.path.join(tmp, "ringstack.json")
        with open(cfg, "w") as f:
            json.dump(self.config, f, indent=1)
        cmd = [sys.executable, "-m", "tools.cli", "start", "-m", mask, "--mode", mode,
               "-r", self.rpc_sock, "-c", cfg]
        super().__init__(cmd, nbd_sock, BDEV, os.path.join(tmp, "ringstack.err"))

    def ready(self, timeout: float) -> None:
        # the config (hence the NBD socket) may be up before the RPC server binds
        wait_for_unix_socket(self.rpc_sock, timeout, self.proc)
        from reactor.rpc import RpcClient
        rpc = RpcClient(self.rpc_sock, timeout=30)
        deadline = time.monotonic() + timeout
        while not rpc.call("nbd_get_exports"):
            if time.monotonic() > deadline:
                raise TimeoutError("the NBD export never appeared")
            time.sleep(0.05)


class QemuNbd(Server):
    name = "qemu-nbd"

    def __init__(self, tmp: str, conf: str, pool: str, image: str, user_id: str | None):
        # json: spells the rbd options without rbd:'s escaping rules (a conf path with ':');
        # -f raw is the format over that rbd protocol node.
        rbd = {"driver": "rbd", "pool": pool, "image": image, "conf": conf}
        if user_id:
            rbd["user"] = user_id
        spec = {"file": rbd}
        nbd_sock = os.path.join(tmp, "qemu-nbd.sock")
        # -t: stay up between fio's connections; -e 2: fio's size probe and its job may
        # overlap; --cache=none: rbd_cache=false (QEMU's block/rbd.c), as on every path.
        cmd = ["qemu-nbd", "-f", "raw", "--cache=none", "-t", "-e", "2", "-x", image,
               "-k", nbd_sock, "json:" + json.dumps(spec, separators=(",", ":"))]
        super().__init__(cmd, nbd_sock, image, os.path.join(tmp, "qemu-nbd.err"))

    def why(self, exc: Exception) -> str:
        text = super().why(exc)
        if "Unknown protocol" in text or "Unknown driver" in text:
            return f"{text} (Debian package qemu-block-extra)"
        return text


# -------------------------------------------------------------------------- clients

def fio_command(uri: str, rw: str, size: int, runtime: int) -> list:
    """The one fio command of both NBD servers (only the URI differs)."""
    return ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
            f"--bs={IO_SIZE}", f"--iodepth={DEPTH}", "--numjobs=1", f"--size={size}",
            f"--runtime={runtime}", "--time_based", f"--ramp_time={FIO_RAMP_S}",
            "--output-format=json", "--group_reporting"]


def run_fio(cmd: list, rw: str, runtime: int) -> dict:
    rc, out, err = _run(cmd, timeout=60 + 10 * runtime)
    if rc != 0:
        return {"error": f"fio: {_last_words(err or out)}"}
    try:
        job = parse_fio_json(out)["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        return {"error": f"fio report unreadable: {exc}"}
    if job.get("error"):
        return {"error": f"fio job error {job['error']}"}
    side = job["read" if rw.endswith("read") else "write"]
    return {"iops": side["iops"], "lat_us": side["lat_ns"]["mean"] / 1000.0,
            "ios": side["total_ios"], "seconds": side["runtime"] / 1000.0}


def bdevperf_config(cluster_params: dict, bdev_params: dict) -> dict:
    return {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_rbd_register_cluster", "params": cluster_params},
        {"method": "bdev_rbd_create", "params": bdev_params},
        {"method": "bdev_wait_for_examine"}]}]}


def bdevperf_command(rw: str, runtime: int, mask: str, mode: str, config: str, results: str) -> list:
    cmd = [sys.executable, "-m", "tools.cli", "bdevperf", "-q", str(DEPTH), "-o", str(IO_SIZE),
           "-w", rw, "-t", str(runtime), "-m", mask, "-c", config, "--results", results]
    return cmd + (["--interrupt-mode"] if mode == "adaptive" else [])


def run_bdevperf(cmd: list, runtime: int) -> dict:
    results = cmd[cmd.index("--results") + 1]
    rc, out, err = _run(cmd, timeout=90 + 10 * runtime, cwd=ROOT)
    if rc != 0:
        return {"error": f"bdevperf: {_last_words(err or out)}"}
    try:
        with open(results) as f:
            res = json.load(f)
        os.unlink(results)
        total = res["total"]
        failed = sum(j["io_failed"] for j in res["results"])
    except (OSError, ValueError, KeyError) as exc:
        return {"error": f"bdevperf results unreadable: {exc}"}
    if failed:
        return {"error": f"bdevperf: {failed} I/O failed"}
    return {"iops": total["iops"], "lat_us": total["avg_latency_us"],
            "seconds": max(j["runtime"] for j in res["results"])}


def rbd_bench_command(conf: str, user_id: str | None, io_type: str, pattern: str, io_size: str,
                      threads: int, total: int, image_spec: str) -> list:
    cmd = ["rbd", "-c", conf] + (["--id", user_id] if user_id else [])
    cmd += [f"--rbd-cache={CLIENT_CONFIG['rbd_cache']}", "bench", "--io-type", io_type,
            "--io-size", io_size, "--io-threads", str(threads), "--io-pattern", pattern,
            "--io-total", str(total), image_spec]
    return cmd


def parse_rbd_bench(out: str) -> tuple:
    """(IOPS, seconds) from rbd bench's last line, "elapsed: S ops: N ops/sec: R
    bytes/sec: B" (S is whole seconds; N / R is the run's duration)."""
    found = _RBD_BENCH.findall(out)
    if not found:
        raise ValueError(f"no 'ops/sec' in rbd bench output: {_last_words(out)}")
    ops, rate = int(found[-1][0]), float(found[-1][1])
    if rate <= 0:
        raise ValueError(f"rbd bench measured no I/O: {_last_words(out)}")
    return rate, ops / rate


def run_rbd_bench(cmd: list, timeout: float) -> dict:
    rc, out, err = _run(cmd, timeout=timeout)
    if rc != 0:
        return {"error": f"rbd bench: {_last_words(err or out)}"}
    try:
        iops, seconds = parse_rbd_bench(out)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"iops": iops, "seconds": seconds, "ios": int(cmd[cmd.index("--io-total") + 1]) // IO_SIZE}


def rbd_bench_total(estimate_iops: float | None, runtime: int) -> int:
    """rbd bench runs a byte count, not a time: the count that takes about ``runtime`` s at
    ``estimate_iops`` (the last rate measured of librbd on this workload)."""
    ops = int((estimate_iops or 2000.0) * runtime)
    return max(ops, 1024) * IO_SIZE


# ------------------------------------------------------------------------ the run

def _version(cmd: list) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (p.stdout.strip() or p.stderr.strip() or "unknown").splitlines()[0]


class _Interrupted(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):
    raise _Interrupted(f"signal {signum}")


def run(args) -> int:
    try:
        size = check_options(args)
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    why = missing_tool(own_cluster=not args.conf)
    if why:
        print(f"{PROG}: error: {why}", file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    bench = Bench(args, size)
    try:
        try:
            bench.setup()
            bench.measure()
        finally:
            # A second Ctrl-C must not cut the cleanup short: what was started is stopped.
            held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                problems = bench.teardown()
            finally:
                for s, h in held.items():
                    signal.signal(s, h)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; stopped everything it started{_also(bench)}", file=sys.stderr)
        return 130
    except (BenchError, CephError) as exc:
        print(f"{PROG}: error: {exc}{_also(bench)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = bench.report()
    for line in problems:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    print_table(report)
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as exc:
            print(f"{PROG}: error: --json {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    failed = [r for r in report["results"] for p in PATHS if "error" in r[p]]
    return 1 if failed or problems else 0


def _also(bench: "Bench") -> str:
    """What the teardown could not undo, appended to the run's one error line."""
    return "".join(f"; and {p}" for p in bench.problems)


class Bench:
    """One run: the cluster, the image, the two servers, the measurements, and a teardown
    that undoes every step that happened, in reverse."""

    def __init__(self, args, size: int):
        self.args, self.size = args, size
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.load_before = os.getloadavg()
        self.tmp = None          # made by setup(), removed by teardown()
        self.pool = args.pool or "rbd"
        self.cluster: CephCluster | None = None
        self.own_cluster = not args.conf
        self.cluster_pids: list = []
        self.cluster_start_s = None
        self.image = None
        self.prefill: dict = {}
        self.servers: list = []
        self.rs = self.qemu = None
        self.rounds: dict = {w[0]: {p: [] for p in PATHS} for w in WORKLOADS}
        self.commands: dict = {w[0]: {} for w in WORKLOADS}
        self.problems: list = []

    # the librbd client settings every ringstack-side client of the run gets
    def cluster_params(self) -> dict:
        p = {"name": CLUSTER, "config_file": self.cluster.conf, "config_param": dict(CLIENT_CONFIG)}
        if self.args.user_id:
            p["user_id"] = self.args.user_id
        return p

    def bdev_params(self) -> dict:
        return {"name": BDEV, "pool_name": self.pool, "rbd_name": self.image, "block_size": 512,
                "cluster_name": CLUSTER}

    def setup(self) -> None:
        args = self.args
        self.tmp = tempfile.mkdtemp(prefix="ringstack-bench-rbd.")
        if self.own_cluster:
            self.cluster = CephCluster(os.path.join(self.tmp, "ceph"))
            t0 = time.monotonic()
            _progress("starting a dev cluster (1 mon, 1 memstore OSD)")
            try:
                self.cluster.start()
            finally:
                self.cluster_pids = self.cluster.pids()
            self.cluster_start_s = round(time.monotonic() - t0, 2)
        else:
            self.cluster = CephCluster(conf=os.path.abspath(args.conf))
        # rbd create --size: a bare number means MiB (so say the unit)
        self.image = self.cluster.new_image(size=f"{self.size >> 20}M", features="layering",
                                            pool=self.pool, prefix="ringstack-bench-",
                                            user_id=args.user_id)
        _progress(f"filling {self.pool}/{self.image} ({self.size >> 20} MiB, layering)")
        self.prefill = {"command": " ".join(self.fill_command()), "seconds": self.fill()}
        self.rs = RingstackTarget(self.tmp, self.cluster_params(), self.bdev_params(),
                                  args.cpumask, args.mode)
        self.servers.append(self.rs)
        self.rs.start()
        self.qemu = QemuNbd(self.tmp, self.cluster.conf, self.pool, self.image, args.user_id)
        self.servers.append(self.qemu)
        self.qemu.start()
        self.bdevperf_cfg = os.path.join(self.tmp, "bdevperf.json")
        with open(self.bdevperf_cfg, "w") as f:
            json.dump(bdevperf_config(self.cluster_params(), self.bdev_params()), f, indent=1)
        _progress(f"serving: ringstack start pid {self.rs.proc.pid}, qemu-nbd pid "
                  f"{self.qemu.proc.pid}; measuring")

    def fill_command(self) -> list:
        return rbd_bench_command(self.cluster.conf, self.args.user_id, "write", "seq", "4M", 4,
                                 self.size, f"{self.pool}/{self.image}")

    def fill(self) -> float:
        """Write the whole image with 4 MiB sequential writes (whole objects); its seconds.
        Also before every measurement: the memstore OSD's objects fragment under random
        4 KiB overwrites and every later read and write gets slower (here: rbd bench reads
        15.7k -> 5.6k IOPS and writes 3.4k -> 1.3k over four rounds of 60 MiB of random
        writes), which would favour whichever path runs first; whole-object writes put
        each object back in one piece (with a refill before each round: reads 21.0k, 19.2k,
        12.3k, writes 3.1k, 2.9k, 2.6k, on a machine at load ~4.7)."""
        r = run_rbd_bench(self.fill_command(), timeout=120 + self.size / (1 << 20))
        if "error" in r:
            raise BenchError(f"filling the image failed: {r['error']}")
        return round(r["seconds"], 3)

    def measure(self) -> None:
        args, t = self.args, self.args.runtime
        for rep in range(args.repeat):
            for name, rw, io_type in WORKLOADS:
                cmds = {
                    "ringstack-nbd": fio_command(self.rs.uri, rw, self.size, t),
                    "qemu-nbd": fio_command(self.qemu.uri, rw, self.size, t),
                    "bdevperf": bdevperf_command(rw, t, args.cpumask, args.mode, self.bdevperf_cfg,
                                                 os.path.join(self.tmp, "bdevperf-results.json")),
                }
                # every other round in reverse, so a drift within a round favours neither
                # path of a ratio (with an even --repeat, exactly)
                for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
                    refill_s = self.fill()
                    if path == "rbd-bench":
                        cmds[path], r = self.rbd_bench(name, io_type)
                    elif path == "bdevperf":
                        r = run_bdevperf(cmds[path], t)
                    else:
                        r = run_fio(cmds[path], rw, t)
                    shown = _shown(cmds[path])
                    r["command"] = shown
                    r.setdefault("refill_s", refill_s)
                    self.commands[name].setdefault(path, shown)
                    self.rounds[name][path].append(r)
                    fig = f"{r['iops']:10.0f} IOPS" if "iops" in r else f"ERROR {r['error']}"
                    _progress(f"round {rep + 1}/{args.repeat} {name:18s} {path:13s} {fig}")

    def rbd_bench(self, name: str, io_type: str) -> tuple:
        """(command, measurement) of rbd bench on one workload, which runs a byte count, not
        a time: sized from librbd's last rate here (its own, else bdevperf's just before).
        A run shorter than 0.8 -t (the estimate was low) was a calibration: the image is
        filled again and the run repeated at the rate it measured; both are kept."""
        t = self.args.runtime
        last = [r["iops"] for p in ("rbd-bench", "bdevperf")
                for r in self.rounds[name][p][-1:] if "iops" in r]
        estimate = last[0] if last else None
        calibration = refill_s = None
        while True:
            cmd = rbd_bench_command(self.cluster.conf, self.args.user_id, io_type, "rand", "4K",
                                    DEPTH, rbd_bench_total(estimate, t), f"{self.pool}/{self.image}")
            r = run_rbd_bench(cmd, timeout=60 + 30 * t)
            if calibration is not None or "iops" not in r or r["seconds"] >= 0.8 * t:
                break
            calibration = dict(r, command=_shown(cmd))
            estimate = r["iops"]
            refill_s = self.fill()
        if calibration is not None:
            r.update(calibration=calibration, refill_s=refill_s)
        return cmd, r

    def teardown(self) -> list:
        """Stop the servers, remove the image (an existing cluster) or stop the cluster (by
        pid), remove the temp dir; what could not be undone, one line each."""
        problems = []
        for s in reversed(self.servers):
            s.stop()
        self.rs_stderr = self.rs.stderr() if self.rs is not None else ""
        if self.image is not None and not self.own_cluster:
            problems += self._remove_image()
        if self.cluster is not None and self.own_cluster:
            try:
                self.cluster.stop()
            except (subprocess.SubprocessError, OSError) as exc:
                problems.append(f"the dev cluster's stop failed: {exc}; daemons {self.cluster_pids}")
        self.load_after = os.getloadavg()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.problems = problems
        return problems

    def _remove_image(self) -> list:
        # A client that died without closing leaves a watch the OSD drops after ~30 s
        # (osd_client_watch_timeout); until then rbd rm refuses.
        deadline = time.monotonic() + 45
        while True:
            try:
                self.cluster.rbd("rm", "--no-progress", f"{self.pool}/{self.image}",
                                 user_id=self.args.user_id, timeout=60)
                return []
            except CephError as exc:
                if "still has watchers" not in str(exc) or time.monotonic() > deadline:
                    return [f"image {self.pool}/{self.image} left behind: {exc}"]
                time.sleep(1)

    def report(self) -> dict:
        rows = []
        for name, rw, io_type in WORKLOADS:
            row = {"workload": name, "rw": rw, "io_size": IO_SIZE, "iodepth": DEPTH,
                   "commands": self.commands[name]}
            for path in PATHS:
                rounds = self.rounds[name][path]
                ok = [r for r in rounds if "iops" in r]
                best = dict(max(ok, key=lambda r: r["iops"])) if ok else dict(
                    rounds[-1] if rounds else {"error": "not run"})
                best.pop("command", None)
                best["rounds"] = rounds
                row[path] = best
            for a, b in RATIOS:
                if row[a].get("iops") and row[b].get("iops"):
                    row[f"ratio {a}/{b}"] = row[a]["iops"] / row[b]["iops"]
            rows.append(row)
        args = self.args
        meta = {
            "date": self.started, "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": _command_line(),
            "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(),
                        "loadavg_before": [round(x, 2) for x in self.load_before],
                        "loadavg_after": [round(x, 2) for x in self.load_after]},
            "versions": {"fio": _version(["fio", "--version"]),
                         "qemu-nbd": _version(["qemu-nbd", "--version"]),
                         "ceph (rbd CLI, librbd)": _version(["rbd", "--version"])},
            "cluster": {"kind": "dev (tools/ceph-dev-cluster.sh: 1 mon, 1 memstore OSD)"
                        if self.own_cluster else "existing (--conf)",
                        "conf": self.cluster.conf if not self.own_cluster else None,
                        "pids": self.cluster_pids, "start_s": self.cluster_start_s,
                        "pool": self.pool, "image": self.image, "size": self.size,
                        "features": "layering", "prefill": self.prefill},
            "runtime_s": args.runtime, "fio_ramp_s": FIO_RAMP_S, "repeat": args.repeat,
            "cpumask": args.cpumask, "mode": args.mode, "client_config": CLIENT_CONFIG,
            "servers": {"ringstack-nbd": {"command": _shown(self.rs.cmd), "config": self.rs.config,
                                          "pid": self.rs.proc.pid},
                        "qemu-nbd": {"command": _shown(self.qemu.cmd), "pid": self.qemu.proc.pid}},
            "notes": ["qemu-nbd serves at most 16 requests of one client at a time "
                      "(MAX_NBD_REQUESTS, QEMU nbd/server.c); fio offers 32 to both servers",
                      "unpinned: the monitor and OSD share the cores"],
        }
        if self.own_cluster:
            meta["versions"]["ceph-mon"] = _version(["ceph-mon", "--version"])
        if "Traceback" in getattr(self, "rs_stderr", ""):
            meta["ringstack_stderr"] = self.rs_stderr[-3000:]
        ratios = {row["workload"]: {f"{a}/{b}": row.get(f"ratio {a}/{b}") for a, b in RATIOS}
                  for row in rows}
        return {"meta": meta, "results": rows, "ratios": ratios}


def _shown(cmd: list) -> str:
    """A command as a reader would type it (``ringstack`` for this interpreter's CLI)."""
    if cmd[:3] == [sys.executable, "-m", "tools.cli"]:
        cmd = ["ringstack"] + cmd[3:]
    return " ".join(cmd)


def _command_line() -> str:
    argv = sys.argv[1:]
    if "rbd" in argv:
        argv = argv[argv.index("rbd") + 1:]
    return " ".join([PROG] + argv)


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    meta, rows = report["meta"], report["results"]
    m, c = meta["machine"], meta["cluster"]
    print(f"# {meta['date']} .. {meta['ended']}  nproc={m['nproc']}  {m['cpu']}  "
          f"load {m['loadavg_before'][0]:.2f} -> {m['loadavg_after'][0]:.2f}")
    print(f"# cluster: {c['kind']}; image {c['pool']}/{c['image']} {c['size'] >> 20} MiB, "
          f"features {c['features']}, refilled before every run; {meta['runtime_s']} s per run, "
          f"best of {meta['repeat']}; every client rbd_cache=false")
    print(f"# ringstack -m {meta['cpumask']} --mode {meta['mode']}; {meta['notes'][1]}")
    head = (f"{'workload':18s} | {'ringstack-nbd':>13s} {'qemu-nbd':>9s} {'ratio':>6s} | "
            f"{'bdevperf':>9s} {'rbd-bench':>9s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for row in rows:
        def iops(p):
            return f"{row[p]['iops']:.0f}" if "iops" in row[p] else "n/a"

        def ratio(a, b):
            r = row.get(f"ratio {a}/{b}")
            return f"{r:.2f}x" if r is not None else "n/a"
        print(f"{row['workload']:18s} | {iops('ringstack-nbd'):>13s} {iops('qemu-nbd'):>9s} "
              f"{ratio('ringstack-nbd', 'qemu-nbd'):>6s} | {iops('bdevperf'):>9s} "
              f"{iops('rbd-bench'):>9s} {ratio('bdevperf', 'rbd-bench'):>6s}")
    print("# IOPS; ratio = ringstack-nbd/qemu-nbd and bdevperf/rbd-bench")
    lat = [f"{row['workload']}: " + ", ".join(
        f"{p} {row[p]['lat_us']:.0f}" for p in PATHS if "lat_us" in row[p]) for row in rows]
    print("# mean latency us (fio lat, bdevperf average): " + "; ".join(lat))
    for path, shape in command_shapes(rows).items():
        print(f"# {path}: {shape}")
    print(f"# qemu-nbd server: {meta['servers']['qemu-nbd']['command']}")
    print(f"# {meta['notes'][0]}")
    for row in rows:
        for p in PATHS:
            if "error" in row[p]:
                print(f"# {row['workload']} on {p}: {row[p]['error']}")


def command_shapes(rows: list) -> dict:
    """Each client's command with what differs between rows and servers folded in:
    ``--rw=randread|randwrite``, the fio URI as ``<server>``, rbd bench's byte count."""
    out = {}
    for label, path, subs in (
            ("fio (both NBD servers)", "ringstack-nbd", [(r"--uri=\S+", "--uri=<server>")]),
            ("bdevperf", "bdevperf", []),
            ("rbd bench", "rbd-bench", [(r"--io-total \d+", "--io-total <about -t s of I/O at "
                                         "librbd's last rate>")])):
        cmds = [row["commands"][path] for row in rows if path in row["commands"]]
        if not cmds:
            continue
        shape = cmds[0]
        for pattern, repl in subs:
            shape = re.sub(pattern, repl, shape)
        for (_, rw, io_type), row in zip(WORKLOADS[1:], rows[1:]):
            first_rw, first_type = WORKLOADS[0][1], WORKLOADS[0][2]
            shape = (shape.replace(f"--rw={first_rw}", f"--rw={first_rw}|{rw}")
                     .replace(f"-w {first_rw}", f"-w {first_rw}|{rw}")
                     .replace(f"--io-type {first_type}", f"--io-type {first_type}|{io_type}"))
        out[label] = shape
    return out
