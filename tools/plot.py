"""`ringstack plot RESULTS.json -o out.png`: plot a bdevperf ``--results`` file.

Two panels: the latency histogram of every job (from the log-linear histogram bdevperf
records) and the per-second IOPS timeline.  matplotlib is an optional extra
(``pip install 'ringstack[plot]'``); without it the command says so and exits 1."""
from __future__ import annotations

import json
import sys


class PlotError(Exception):
    pass


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot a bdevperf --results file (latency histogram, IOPS timeline)")
    p.add_argument("results", metavar="RESULTS.json", help="file written by ringstack bdevperf --results")
    p.add_argument("-o", "--output", default="bdevperf.png", metavar="OUT.png", help="image to write")

    p.set_defaults(func=run)


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PlotError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise PlotError(f"{path} is not a bdevperf --results file (no \"results\" array)")
    return data


def plot(data: dict, output: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install 'ringstack[plot]' "
                        "(or pip install matplotlib)") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    drawn = False
    for j in data["results"]:
        hist = j.get("latency_histogram") or []
        if not hist:
            continue
        total = sum(c for _, _, c in hist)
        xs = [(lo + hi) / 2 for lo, hi, _ in hist]
        ys = [c * 100 / total for _, _, c in hist]
        ax1.plot(xs, ys, marker=".", linewidth=1, label=f"{j['job']} ({j['core_mask']})")
        drawn = True
    ax1.set_xscale("log")
    ax1.set_xlabel("latency (µs, log scale)")
    ax1.set_ylabel("I/Os (%)")
    ax1.set_title("latency histogram")
    if drawn:
        ax1.legend(fontsize="small")
    tl = data.get("timeline") or []
    if tl:
        ax2.plot([p["time_s"] for p in tl], [p["iops"] for p in tl], marker="o")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("IOPS (per interval)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("IOPS timeline")
    first = data["results"][0] if data["results"] else {}
    total = data.get("total", {})
    fig.suptitle(f"bdevperf {first.get('workload', '')} qd={first.get('queue_depth', '')} "
                 f"io={first.get('io_size', '')}B: {total.get('iops', 0):,.0f} IOPS total")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def run(args) -> int:
    try:
        plot(load(args.results), args.output)
    except PlotError as exc:
        print(f"ringstack plot: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0
