"""iSCSI benchmark: ringstack's iSCSI target against tgtd, with ringstack's NBD for scale.

One run starts ringstack (`ringstack start -m MASK --iscsi PORT`, a malloc bdev, an NBD
export of the same bdev) and a private tgtd (tools/tgtd.py: rdwr LUN on a tmpfs file)
side by side, same size and block size, and prefills every byte of both, so neither
serves holes.  Each workload then runs against tgtd, ringstack iSCSI and ringstack NBD
in turn, so slow drifts of a shared machine hit all alike:

- ``iscsi-perf -r -b N -m DEPTH -t T``: 4 KiB random reads at depth 1 and 32 (libiscsi's
  own load generator, one session); the NBD column is fio's nbd engine, same pattern.
- ``qemu-img bench -f raw -t none -d 32 -s 4096 [-w] -c COUNT``: QEMU's block layer over
  its iscsi:// (libiscsi) or nbd:// driver, 4 KiB reads and writes at depth 32.
  qemu-img bench walks the device sequentially (offset += 4 KiB, wrapping), it has no
  random mode.

Placement: ringstack's reactors on the cores of MASK, tgtd (all its threads) under
``taskset`` on the same cores, and every client under ``taskset`` on ``--client-cpus``
(default: the same cores).  Until ringstack serves iSCSI, its column says why it is
missing; the tgtd and NBD columns are still measured.  Nothing is estimated: a run that
fails records its error instead of a figure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from tools.bdevperf import UsageError, parse_size
from tools.machine import cpu_model
from tools.ringstack_iscsi import RingstackIscsi, available
from tools.tgtd import Tgtd

SERVERS = ("tgtd", "ringstack", "ringstack-nbd")

# (name, tool, rw, depth)
WORKLOADS = [
    ("randread 4k qd1", "iscsi-perf", "randread", 1),
    ("randread 4k qd32", "iscsi-perf", "randread", 32),
    ("read 4k qd32", "qemu-img", "read", 32),
    ("write 4k qd32", "qemu-img", "write", 32),
]

_PERF_AVG = re.compile(r"^iops average (\d+)", re.M)
_QEMU_DONE = re.compile(r"Run completed in ([0-9.]+) seconds")


def add_arguments(p) -> None:
    p.add_argument("--size", default="256M", help="bdev/LUN size (default 256M)")
    p.add_argument("-t", "--runtime", type=int, default=5, help="seconds per iscsi-perf/fio run (default 5)")
    p.add_argument("-c", "--count", type=int, default=100000,
                   help="requests per qemu-img bench run (default 100000)")
    p.add_argument("-m", "--cpumask", default="0x3", help="ringstack reactor mask and tgtd's cores (default 0x3)")
    p.add_argument("--client-cpus", help="taskset CPU list for the clients (default: the cores of -m)")
    p.add_argument("--mode", choices=("adaptive", "poll"), default="adaptive",
                   help="ringstack reactor mode (default adaptive: sleeps when idle)")
    p.add_argument("--block-size", type=int, default=512, help="logical block size of both (default 512)")
    p.add_argument("--repeat", type=int, default=1, help="run the workload list this many times; best of each")
    p.add_argument("--only", choices=SERVERS, action="append", help="run this server only (repeatable)")
    p.add_argument("--workloads", help="comma-separated subset, e.g. 'randread 4k qd32'")
    p.add_argument("--quick", action="store_true", help="1 s / 20000 requests per run (smoke run)")


def _cpu_list(mask: str) -> str:
    from reactor.app import parse_cpumask
    return ",".join(str(c) for c in parse_cpumask(mask))


def client_command(tool: str, rw: str, depth: int, url: str, block_size: int, runtime: int,
                   count: int, size: int) -> list:
    """The exact client command line of one workload against one URL."""
    if tool == "iscsi-perf":
        if url.startswith("nbd"):
            return ["fio", "--name=bench", "--ioengine=nbd", f"--uri={url}", f"--rw={rw}", "--bs=4k",
                    f"--iodepth={depth}", f"--size={size}", "--output-format=json",
                    f"--runtime={runtime}", "--time_based", "--ramp_time=0.5"]
        return ["iscsi-perf", "-r", "-b", str(4096 // block_size), "-m", str(depth),
                "-t", str(runtime), url]
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count), "-d", str(depth), "-s", "4096"]
    if rw == "write":
        cmd.append("-w")
    return cmd + [url]


def _run_client(cmd: list, cpus: str, timeout: float) -> dict:
    """Run one client; {"iops": ..., "seconds": ...} or {"error": why}."""
    full = ["taskset", "-c", cpus] + cmd
    t0 = time.monotonic()
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.monotonic() - t0
    out = p.stdout
    if p.returncode != 0:
        return {"error": f"rc {p.returncode}: {(p.stderr or out).strip()[-500:]}"}
    if cmd[0] == "fio":
        try:
            job = _fio_json(out)["jobs"][0]
        except (ValueError, KeyError, IndexError) as exc:
            return {"error": f"fio report unreadable: {exc}"}
        if job.get("error"):
            return {"error": f"fio error {job['error']}"}
        return {"iops": job["read"]["iops"], "seconds": wall, "lat_us": job["read"]["lat_ns"]["mean"] / 1000.0}
    try:
        if cmd[0] == "iscsi-perf":
            return {"iops": parse_iscsi_perf(out), "seconds": wall}
        iops, secs = parse_qemu_img_bench(out, int(cmd[cmd.index("-c") + 1]))
        return {"iops": iops, "seconds": secs}
    except ValueError as exc:
        return {"error": str(exc)}


def _fio_json(out: str) -> dict:
    """fio's --output-format=json report (fio may print notes before the JSON)."""
    start = out.find("{")
    if start < 0:
        raise ValueError(f"no JSON in fio output: {out.strip()[-300:]}")
    return json.loads(out[start:])


def parse_iscsi_perf(out: str) -> float:
    """The whole run's IOPS from iscsi-perf's output; ValueError if the run did not finish.

    Progress lines end in a carriage return; the last one is "iops average N (M MB/s)"
    at the start of the line.  A run cut short (connection lost) ends in a progress line
    instead, or says ABORTED!, and never prints "finished."."""
    found = _PERF_AVG.findall(out.replace("\r", "\n"))
    if not found or "finished." not in out:
        raise ValueError(f"iscsi-perf did not finish: {out.strip()[-300:]}")
    return float(found[-1])


def parse_qemu_img_bench(out: str, count: int) -> tuple:
    """``(IOPS, seconds)`` from qemu-img bench's "Run completed in S seconds."."""
    m = _QEMU_DONE.search(out)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"no 'Run completed' in qemu-img output: {out.strip()[-300:]}")
    secs = float(m.group(1))
    return count / secs, secs


def _prefill(url: str, size: int, cpus: str) -> dict:
    """Write every byte once (64 KiB sequential writes), so reads never meet holes."""
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-c", str(size // 65536),
           "-d", "8", "-s", "65536", url]
    r = _run_client(cmd, cpus, timeout=300)
    if "error" in r:
        raise RuntimeError(f"prefill of {url} failed: {r['error']}")
    return r


def run(args) -> int:
    for binary in ("iscsi-perf", "qemu-img", "tgtd", "tgtadm", "taskset"):
        if shutil.which(binary) is None:
            print(f"ringstack bench iscsi: {binary} is not installed (tools/install-sysdeps.sh)", file=sys.stderr)
            return 1
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    try:
        size = parse_size(args.size, "--size")
    except UsageError as exc:
        print(f"ringstack bench: {exc}", file=sys.stderr)
        return 2
    if size <= 0 or size % 65536:
        print(f"ringstack bench iscsi: --size {args.size} must be a positive multiple of 64 KiB", file=sys.stderr)
        return 1
    runtime = 1 if args.quick else args.runtime
    count = 20000 if args.quick else args.count
    server_cpus = _cpu_list(args.cpumask)
    client_cpus = args.client_cpus or server_cpus
    workloads = WORKLOADS
    if args.workloads:
        want = [w.strip() for w in args.workloads.split(",")]
        workloads = [w for w in WORKLOADS if w[0] in want]
        if not workloads:
            print(f"ringstack bench iscsi: no workload matches {args.workloads!r}", file=sys.stderr)
            return 1
    servers = tuple(s for s in SERVERS if not args.only or s in args.only)
    iscsi_ok, iscsi_why = available()
    unavailable = {}
    if "ringstack" in servers and not iscsi_ok:
        unavailable["ringstack"] = iscsi_why
    want_ringstack = any(s.startswith("ringstack") for s in servers)

    tgt = rs = None
    urls: dict = {}
    results: dict = {s: {} for s in servers}
    commands: dict = {}
    rounds: dict = {}     # server -> workload -> IOPS of every round (None: that round failed)
    prefill: dict = {}
    rs_err = ""
    try:
        if "tgtd" in servers:
            tgt = Tgtd(size=size, block_size=args.block_size, cpus=server_cpus).start()
            urls["tgtd"] = tgt.url
        if want_ringstack:
            rs = RingstackIscsi(size=size, block_size=args.block_size, mask=args.cpumask, mode=args.mode,
                                nbd=True, iscsi=iscsi_ok).start()
            if iscsi_ok and "ringstack" in servers:
                urls["ringstack"] = rs.url
            if "ringstack-nbd" in servers:
                urls["ringstack-nbd"] = rs.nbd_url
        # ringstack's NBD export is the same bdev as its iSCSI LUN: one prefill serves both.
        for s in ("tgtd", "ringstack", "ringstack-nbd"):
            if s in urls and not (s == "ringstack-nbd" and "ringstack" in urls):
                prefill[s] = _prefill(urls[s], size, client_cpus)
        for _ in range(args.repeat):
            for name, tool, rw, depth in workloads:
                for s in servers:
                    if s not in urls:
                        continue
                    cmd = client_command(tool, rw, depth, urls[s], args.block_size, runtime, count, size)
                    commands.setdefault(name, {})[s] = " ".join(["taskset", "-c", client_cpus] + cmd)
                    r = _run_client(cmd, client_cpus, timeout=max(120.0, 20.0 * runtime))
                    rounds.setdefault(s, {}).setdefault(name, []).append(
                        round(r["iops"]) if "iops" in r else None)
                    best = results[s].get(name)
                    if best is None or "error" in best or r.get("iops", -1) > best.get("iops", -1):
                        results[s][name] = r
                    shown = f"{r['iops']:10.0f} IOPS" if "iops" in r else f"ERROR {r['error']}"
                    print(f"  {s:13s} {name:17s} {shown}", file=sys.stderr, flush=True)
    finally:
        if rs is not None:
            rs_err = rs.stop()
        if tgt is not None:
            tgt.stop()
    if "Traceback" in rs_err:
        print("ringstack target stderr:\n" + rs_err[-3000:], file=sys.stderr)

    rows = []
    for name, tool, rw, depth in workloads:
        row = {"workload": name, "tool": tool, "rw": rw, "bs": 4096, "iodepth": depth,
               "commands": commands.get(name, {})}
        for s in servers:
            if s in unavailable:
                row[s] = {"unavailable": unavailable[s]}
            else:
                row[s] = dict(results[s].get(name) or {"error": "not run"})
                row[s]["rounds"] = rounds.get(s, {}).get(name, [])
        t, r = row.get("tgtd", {}), row.get("ringstack", {})
        if t.get("iops") and r.get("iops"):
            row["ratio_ringstack_tgtd"] = r["iops"] / t["iops"]
        rows.append(row)

    meta = {"date": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "cpu": cpu_model(), "cpumask": args.cpumask, "server_cpus": server_cpus,
            "client_cpus": client_cpus, "mode": args.mode, "size": size, "block_size": args.block_size,
            "runtime_s": runtime, "qemu_img_count": count, "repeat": args.repeat,
            "ringstack_iscsi": {"available": iscsi_ok, "reason": iscsi_why},
            "prefill": prefill,
            "command": "ringstack bench iscsi " + " ".join(sys.argv[sys.argv.index("iscsi") + 1:])
            if "iscsi" in sys.argv else "ringstack bench iscsi"}
    _print_table(rows, servers, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    failed = [(row["workload"], s) for row in rows for s in servers
              if "error" in row[s]]
    return 1 if failed else 0


def _print_table(rows, servers, meta) -> None:
    print(f"# {meta['date']} .. {meta['ended']}  nproc={meta['nproc']}  {meta['cpu']}  "
          f"load {meta['loadavg_before'][0]:.2f} -> {meta['loadavg_after'][0]:.2f}")
    print(f"# servers on cores {meta['server_cpus']} (ringstack -m {meta['cpumask']} --mode {meta['mode']}, "
          f"tgtd under taskset), clients on {meta['client_cpus']}; {meta['size'] >> 20} MiB, "
          f"{meta['block_size']}-byte blocks; {meta['runtime_s']} s per iscsi-perf/fio run, "
          f"{meta['qemu_img_count']} requests per qemu-img run")
    head = f"{'workload':17s} {'client':10s}"
    for s in servers:
        head += f" | {s + ' IOPS':>18s}"
    if "ringstack" in servers and "tgtd" in servers:
        head += f" | {'ringstack/tgtd':>14s}"
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['workload']:17s} {row['tool']:10s}"
        for s in servers:
            r = row[s]
            line += f" | {r['iops']:18.0f}" if "iops" in r else f" | {'n/a':>18s}"
        if "ringstack" in servers and "tgtd" in servers:
            line += f" | {row['ratio_ringstack_tgtd']:13.2f}x" if "ratio_ringstack_tgtd" in row else f" | {'n/a':>14s}"
        print(line)
    print("# ringstack-nbd: the same bdev over NBD; iscsi-perf rows use fio's nbd engine there "
          "(same pattern), qemu-img rows qemu-img over nbd://, both TCP loopback")
    if not meta["ringstack_iscsi"]["available"]:
        print(f"# ringstack iSCSI: unavailable: {meta['ringstack_iscsi']['reason']}")
    for row in rows:
        for s in servers:
            err = row[s].get("error")
            if err:
                print(f"# {row['workload']} on {s}: {err}")
