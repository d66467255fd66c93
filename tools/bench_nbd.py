"""NBD benchmark: fio's nbd engine against `ringstack start` (malloc bdev) and `nbdkit memory`.

One run starts both servers side by side (same export size, Unix sockets), prefills both
(nbdkit's memory plugin is sparse: reads of holes would cost it nothing), then runs each
workload against ringstack and nbdkit in turn, so slow drifts of a shared machine hit both
alike.  Workloads: 4 KiB randread and randwrite at depth 1 and 32, 128 KiB sequential read at
depth 8; one fio job (one connection) each.  Reported: IOPS, mean latency (fio's lat_ns:
submission to completion), and ringstack/nbdkit ratios.

Placement: by default fio runs on one core and the server's serving side on the other.
ringstack: each fio run opens two connections (size probe, then the job), so round-robin
puts every job on the same reactor; the bench finds it from the prefill run (nbd_get_stats),
pins fio to the other core, and records per workload which reactor served it.  nbdkit: all
its threads pinned to the core of that reactor.  ``--no-pin`` leaves fio and nbdkit to the scheduler (then depth-1 figures are
bimodal on 2 cores).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tools.nbd_harness import NbdkitMemory, parse_fio_json, unix_uri, wait_for_unix_socket
from tools.bdevperf import UsageError, parse_size
from tools.machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = [
    # (name, rw, bs, iodepth)
    ("randread 4k qd1", "randread", "4k", 1),
    ("randread 4k qd32", "randread", "4k", 32),
    ("randwrite 4k qd1", "randwrite", "4k", 1),
    ("randwrite 4k qd32", "randwrite", "4k", 32),
    ("read 128k qd8", "read", "128k", 8),
]


def add_arguments(p) -> None:
    p.add_argument("--size", default="256M", help="export size (default 256M)")
    p.add_argument("-t", "--runtime", type=float, default=5.0, help="seconds per workload and server (default 5)")
    p.add_argument("-m", "--cpumask", default="0x3", help="ringstack reactor mask (default 0x3)")
    p.add_argument("--mode", choices=("adaptive", "poll"), default="adaptive",
                   help="ringstack reactor mode (default adaptive: sleeps when idle)")
    p.add_argument("--no-pin", action="store_true", help="do not pin fio and nbdkit")
    p.add_argument("--repeat", type=int, default=1, help="run the workload list this many times; best of each")
    p.add_argument("--only", choices=("ringstack", "nbdkit"), help="run one server only")
    p.add_argument("--workloads", help="comma-separated subset, e.g. 'randread 4k qd32'")
    p.add_argument("--quick", action="store_true", help="1 s per workload (smoke run)")
    p.add_argument("--compare", metavar="TREE",
                   help="also run ringstack from another checkout (e.g. the code before a change) "
                        "as server 'baseline', alternating with the others in the same run")


def _cores(mask: str) -> list:
    from reactor.app import parse_cpumask
    return parse_cpumask(mask)


class Ringstack:
    """`ringstack start` with one malloc bdev exported on a Unix socket."""

    def __init__(self, tmp: str, size: int, mask: str, mode: str, tree: str | None = None,
                 tag: str = "ringstack"):
        self.tree = os.path.abspath(tree) if tree else ROOT
        self.rpc_sock = os.path.join(tmp, f"{tag}-rpc.sock")
        self.nbd_sock = os.path.join(tmp, f"{tag}-nbd.sock")
        cfg = {"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {
                "name": "Malloc0", "num_blocks": size // 512, "block_size": 512}}]},
            {"subsystem": "nbd", "config": [
                {"method": "nbd_server_start", "params": {"listen": self.nbd_sock}},
                {"method": "nbd_export_add", "params": {"bdev_name": "Malloc0"}}]}]}
        self.cfg = os.path.join(tmp, f"{tag}.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f)
        self.cmd = [sys.executable, "-m", "tools.cli", "start", "-m", mask, "-r", self.rpc_sock,
                    "-c", self.cfg, "--mode", mode]
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = None

    @property
    def uri(self) -> str:
        return unix_uri(self.nbd_sock, "Malloc0")

    def start(self) -> "Ringstack":
        env = dict(os.environ)
        if self.tree != ROOT:       # that checkout's code wins over this one's
            env["PYTHONPATH"] = self.tree + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(self.cmd, cwd=self.tree, stdout=subprocess.DEVNULL,
                                     stderr=self.err, env=env)
        try:
            wait_for_unix_socket(self.nbd_sock, 60, self.proc)
            # the config (hence the NBD socket) may be up before the RPC server binds
            wait_for_unix_socket(self.rpc_sock, 30, self.proc)
            from reactor.rpc import RpcClient
            self.rpc = RpcClient(self.rpc_sock, timeout=30)
            deadline = time.monotonic() + 30
            while not self.rpc.call("nbd_get_exports"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the export never appeared")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stats(self) -> dict:
        return {r["reactor"]: r for r in self.rpc.call("nbd_get_stats")["reactors"]}

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.seek(0)
        text = self.err.read()
        self.err.close()
        return text


def _fio(uri: str, rw: str, bs: str, depth: int, runtime: float, size: int, cpu) -> dict:
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={depth}", f"--size={size}", "--output-format=json", "--group_reporting"]
    if runtime:
        cmd += [f"--runtime={runtime}", "--time_based", "--ramp_time=0.5"]
    if cpu is not None:
        cmd.append(f"--cpus_allowed={cpu}")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(120, 10 * (runtime or 10)))
    if p.returncode != 0:
        raise RuntimeError(f"fio {rw} {bs} qd{depth} failed: {p.stderr.strip()[-1000:]}")
    data = parse_fio_json(p.stdout)
    job = data["jobs"][0]
    side = job["read"] if rw in ("read", "randread") else job["write"]
    return {"iops": side["iops"], "lat_us": side["lat_ns"]["mean"] / 1000.0,
            "bw_mib": side["bw_bytes"] / (1 << 20), "errors": job.get("error", 0)}


def run(args) -> int:
    for binary in ("fio", "nbdkit"):
        if shutil.which(binary) is None:
            print(f"ringstack bench nbd: {binary} is not installed (tools/install-sysdeps.sh)", file=sys.stderr)
            return 1
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    try:
        size = parse_size(args.size, "--size")
    except UsageError as exc:
        print(f"ringstack bench: {exc}", file=sys.stderr)
        return 2
    runtime = 1.0 if args.quick else args.runtime
    cores = _cores(args.cpumask)
    pin = not args.no_pin and len(cores) >= 2
    fio_cpu = cores[0] if pin else None
    serve_core = cores[1] if pin else None
    workloads = WORKLOADS
    if args.workloads:
        want = [w.strip() for w in args.workloads.split(",")]
        workloads = [w for w in WORKLOADS if w[0] in want]
        if not workloads:
            print(f"ringstack bench nbd: no workload matches {args.workloads!r}", file=sys.stderr)
            return 1
    servers = ("ringstack", "nbdkit") if args.only is None else (args.only,)
    if args.compare:
        servers = ("baseline",) + servers
    tmp = tempfile.mkdtemp(prefix="ringstack-bench-nbd.")
    rs = nk = base = None
    results: dict = {s: {} for s in servers}
    placement = {}
    try:
        uris = {}
        if "ringstack" in servers:
            rs = Ringstack(tmp, size, args.cpumask, args.mode).start()
            uris["ringstack"] = rs.uri
            # Prefill (every byte written once).  Each fio run opens two connections (a size
            # probe, then the job), so round-robin puts every job on the reactor that served
            # the prefill job: find it, and give fio the other core.
            before = rs.stats()
            _fio(uris["ringstack"], "write", "1M", 8, 0, size, None)
            after = rs.stats()
            busy = max(after, key=lambda i: after[i]["requests"] - before[i]["requests"])
            placement["prefill"] = busy
            if pin:
                serve_core = after[busy]["lcore"]
                fio_cpu = next(c for c in cores if c != serve_core)
        if "baseline" in servers:
            base = Ringstack(tmp, size, args.cpumask, args.mode, args.compare, "baseline").start()
            uris["baseline"] = base.uri
            before = base.stats()
            _fio(uris["baseline"], "write", "1M", 8, 0, size, None)
            after = base.stats()
            placement["baseline prefill"] = max(after, key=lambda i: after[i]["requests"] - before[i]["requests"])
        if "nbdkit" in servers:
            nk = NbdkitMemory(os.path.join(tmp, "nbdkit.sock"), size=str(size))
            if serve_core is not None:
                nk.cmd = ["taskset", "-c", str(serve_core)] + nk.cmd
            nk.start()
            uris["nbdkit"] = nk.uri
            # nbdkit's memory plugin is sparse: fill it, or reads of holes cost it nothing.
            _fio(uris["nbdkit"], "write", "1M", 8, 0, size, fio_cpu)
        for rep in range(args.repeat):
            for name, rw, bs, depth in workloads:
                for s in servers:
                    target = {"ringstack": rs, "baseline": base}.get(s)
                    before = target.stats() if target is not None else None
                    r = _fio(uris[s], rw, bs, depth, runtime, size, fio_cpu)
                    if before is not None:
                        after = target.stats()
                        placement[name if s == "ringstack" else f"{s} {name}"] = [
                            i for i in after if after[i]["requests"] - before[i]["requests"] > 100]
                    best = results[s].get(name)
                    if best is None or r["iops"] > best["iops"]:
                        results[s][name] = r
                    print(f"  {s:9s} {name:18s} {r['iops']:10.0f} IOPS  {r['lat_us']:8.1f} us",
                          file=sys.stderr, flush=True)
    finally:
        rs_err = rs.stop() if rs is not None else ""
        if base is not None:
            base.stop()
        if nk is not None:
            nk.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if "Traceback" in rs_err:
        print("ringstack target stderr:\n" + rs_err[-3000:], file=sys.stderr)

    rows = []
    for name, rw, bs, depth in workloads:
        row = {"workload": name, "rw": rw, "bs": bs, "iodepth": depth}
        for s in servers:
            r = results[s].get(name, {})
            row[s] = r
        if "ringstack" in servers and results.get("nbdkit", {}).get(name, {}).get("iops"):
            row["ratio_iops"] = results["ringstack"][name]["iops"] / results["nbdkit"][name]["iops"]
            row["ratio_lat"] = results["ringstack"][name]["lat_us"] / results["nbdkit"][name]["lat_us"]
            if "baseline" in servers:
                row["baseline_ratio_iops"] = (results["baseline"][name]["iops"]
                                              / results["nbdkit"][name]["iops"])
        if name in placement:
            row["ringstack_reactors"] = placement[name]
        if f"baseline {name}" in placement:
            row["baseline_reactors"] = placement[f"baseline {name}"]
        rows.append(row)

    meta = {"date": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(), "cpu": cpu_model(),
            "cpumask": args.cpumask, "mode": args.mode, "pinned": pin, "fio_core": fio_cpu,
            "server_core": serve_core, "size": size, "runtime_s": runtime, "repeat": args.repeat,
            "baseline_tree": os.path.abspath(args.compare) if args.compare else None,
            "command": "ringstack bench nbd " + " ".join(sys.argv[sys.argv.index("nbd") + 1:])
            if "nbd" in sys.argv else "ringstack bench nbd"}
    _print_table(rows, servers, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    return 0


def _print_table(rows, servers, meta) -> None:
    print(f"# {meta['date']} .. {meta['ended']}  nproc={meta['nproc']}  {meta['cpu']}  "
          f"load {meta['loadavg_before'][0]:.2f} -> {meta['loadavg_after'][0]:.2f}")
    print(f"# ringstack -m {meta['cpumask']} --mode {meta['mode']}; size {meta['size'] >> 20} MiB; "
          f"{meta['runtime_s']:g} s per run; "
          + (f"fio on core {meta['fio_core']}, server on core {meta['server_core']}" if meta["pinned"]
             else "unpinned"))
    if meta.get("baseline_tree"):
        print(f"# baseline: ringstack from {meta['baseline_tree']}")
    head = f"{'workload':18s}"
    for s in servers:
        head += f" | {s + ' IOPS':>15s} {'lat us':>8s}"
    if "ringstack" in servers and "nbdkit" in servers:
        head += f" | {'ratio IOPS':>10s}"
    if "baseline" in servers and "nbdkit" in servers:
        head += f" | {'baseline ratio':>14s}"
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['workload']:18s}"
        for s in servers:
            r = row.get(s) or {}
            line += f" | {r.get('iops', 0):15.0f} {r.get('lat_us', 0):8.1f}"
        if "ratio_iops" in row:
            line += f" | {row['ratio_iops']:9.2f}x"
        if "baseline_ratio_iops" in row:
            line += f" | {row['baseline_ratio_iops']:13.2f}x"
        print(line)
