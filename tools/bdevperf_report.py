"""bdevperf's numbers: the latency histogram, per-job stats, SPDK's table and JSON shapes.

Pure functions over plain values (what jobs send to the main reactor), so the printed table
and the JSON come from the same computation and tests can check one against the other.

Latency histogram (SPDK's spdk_histogram_data, log-linear): a latency of ``lat`` ns with
``b = lat.bit_length()`` goes to bucket ``lat`` when ``b <= 7``, else to
``((b - 7) << 6) + (lat >> (b - 7))``: 64 sub-buckets per power of two, so every bucket
is within 1/64 (1.6%) of its value.  The job's completion path does that with one
``bit_length`` and two shifts; everything else here runs once per report.
"""
from __future__ import annotations

HIST_SIZE = 64 * 60          # covers latencies up to 2**59 ns

#: SPDK's g_latency_cutoffs (printed with -l).
LATENCY_CUTOFFS = (0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.98, 0.99, 0.995, 0.999,
                   0.9999, 0.99999, 0.999999, 0.9999999)
#: The percentiles the JSON always carries.
JSON_PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))

WORKLOADS = ("read", "write", "randread", "randwrite", "rw", "randrw", "verify", "reset",
             "unmap", "flush", "write_zeroes")


def bucket_index(lat: int) -> int:
    b = lat.bit_length()
    if b > 7:
        return ((b - 7) << 6) + (lat >> (b - 7))
    return lat


def bucket_range(idx: int) -> tuple[int, int]:
    """``[lo, hi)`` in ns of bucket ``idx``."""
    if idx < 64:
        return idx, idx + 1
    e = (idx >> 6) - 1
    m = (idx & 63) + 64
    return m << e, (m + 1) << e


def sparse(hist) -> list[list[int]]:
    """``[[index, count], ...]`` of the non-empty buckets (what crosses reactors)."""
    return [[i, c] for i, c in enumerate(hist) if c]


def merge(into: dict, pairs) -> None:
    for i, c in pairs:
        into[i] = into.get(i, 0) + c


def hist_min_max(pairs) -> tuple[float, float]:
    """SPDK's min/max: start of the first non-empty bucket, end of the last (µs)."""
    if not pairs:
        return 0.0, 0.0
    idxs = sorted(i for i, c in pairs if c)
    return bucket_range(idxs[0])[0] / 1000, bucket_range(idxs[-1])[1] / 1000


def percentiles(pairs, cutoffs) -> list[tuple[float, float]]:
    """``[(cutoff, latency_us)]``: for each cutoff the end of the bucket where the cumulative
    share first reaches it (SPDK's check_cutoff)."""
    items = sorted((i, c) for i, c in pairs if c)
    total = sum(c for _, c in items)
    out = []
    if not total:
        return out
    k = 0
    so_far = 0
    for i, c in items:
        so_far += c
        while k < len(cutoffs) and so_far / total >= cutoffs[k]:
            out.append((cutoffs[k], bucket_range(i)[1] / 1000))
            k += 1
    return out


def job_stats(r: dict) -> dict:
    """SPDK's bdevperf_job_get_stats for one finished job result ``r``."""
    us = max(1, r["run_time_us"])
    iops = r["io_completed"] * 1e6 / us
    total_io = r["io_completed"] + r["io_failed"]
    mn, mx = hist_min_max(r["hist"])
    return {
        "runtime": us / 1e6,
        "iops": iops,
        "mibps": iops * r["io_size"] / (1024 * 1024),
        "fail_per_s": r["io_failed"] * 1e6 / us,
        "timeout_per_s": r["io_timeout"] * 1e6 / us,
        "avg_latency_us": (r["lat_sum_ns"] / total_io / 1000) if total_io else 0.0,
        "min_latency_us": mn,
        "max_latency_us": mx,
        "total_io": total_io,
        "lat_sum_ns": r["lat_sum_ns"],
    }


def totals(stats: list[dict]) -> dict:
    t = {"iops": 0.0, "mibps": 0.0, "fail_per_s": 0.0, "timeout_per_s": 0.0,
         "min_latency_us": None, "max_latency_us": 0.0, "total_io": 0, "lat_sum_ns": 0}
    for s in stats:
        for k in ("iops", "mibps", "fail_per_s", "timeout_per_s", "total_io", "lat_sum_ns"):
            t[k] += s[k]
        if s["total_io"]:
            t["min_latency_us"] = s["min_latency_us"] if t["min_latency_us"] is None else \
                min(t["min_latency_us"], s["min_latency_us"])
            t["max_latency_us"] = max(t["max_latency_us"], s["max_latency_us"])
    t["min_latency_us"] = t["min_latency_us"] or 0.0
    t["avg_latency_us"] = t["lat_sum_ns"] / t["total_io"] / 1000 if t["total_io"] else 0.0
    return t


def ema_next(ema: float, iops: float, n: int) -> float:
    """-P n: SPDK's exponential moving average of the per-period IO/s, M = 2 / (n + 1)."""
    return ema + (iops - ema) * 2 / (n + 1)


def job_failed(r: dict) -> bool:
    """SPDK's rule (failed I/O without reset/-f), and also a job that ended on an error of
    its own (a verify mismatch, a submit error): SPDK fails the run then, we say which job."""
    return bool(r.get("rc")) or (r["io_failed"] > 0 and not r["reset"] and not r["continue_on_failure"])


# ------------------------------------------------------------------------------- printing
HEADER = ("\r {:<28s}: {:>10s} {:>10s} {:>10s} {:>10s} {:>8s} {:>10s} {:>10s} {:>10s}".format(
    "Device Information", "runtime(s)", "IOPS", "MiB/s", "Fail/s", "TO/s", "Average", "min", "max"))
RULE = "\r " + "=" * 115


def job_lines(r: dict, s: dict) -> list[str]:
    if r["workload"] in ("rw", "randrw"):
        head = (f"Job: {r['name']} (Core Mask {r['core_mask']}, workload: {r['workload']}, "
                f"percentage: {r['rw_percentage']}, depth: {r['queue_depth']}, IO size: {r['io_size']})")
    else:
        head = (f"Job: {r['name']} (Core Mask {r['core_mask']}, workload: {r['workload']}, "
                f"depth: {r['queue_depth']}, IO size: {r['io_size']})")
    lines = [head]
    if job_failed(r):
        lines.append(f"Job: {r['name']} ended in about {s['runtime']:.2f} seconds with error")
    if r["verify"]:
        lines.append(f"\t Verification LBA range: start 0x{r['ios_base']:x} length 0x{r['size_in_ios']:x}")
    lines.append("\t {:<20s}: {:10.2f} {:10.2f} {:10.2f} {:10.2f} {:8.2f} {:10.2f} {:10.2f} {:10.2f}".format(
        r["name"], s["runtime"], s["iops"], s["mibps"], s["fail_per_s"], s["timeout_per_s"],
        s["avg_latency_us"], s["min_latency_us"], s["max_latency_us"]))
    return lines


def total_line(t: dict) -> str:
    return "\r {:<28s}: {:>10s} {:10.2f} {:10.2f} {:10.2f} {:8.2f} {:10.2f} {:10.2f} {:10.2f}".format(
        "Total", "", t["iops"], t["mibps"], t["fail_per_s"], t["timeout_per_s"],
        t["avg_latency_us"], t["min_latency_us"], t["max_latency_us"])


def final_table(results: list[dict], latency_level: int = 0) -> str:
    """The table SPDK's bdevperf_test_done prints (plus -l / -ll sections)."""
    out = ["", "{:>107s}".format("Latency(us)"), HEADER]
    stats = [job_stats(r) for r in results]
    for r, s in zip(results, stats):
        out.extend(job_lines(r, s))
    t = totals(stats)
    out.append(RULE)
    out.append(total_line(t))
    if latency_level and t["total_io"]:
        out.append("")
        out.append(" Latency summary")
        for r in results:
            out.append("\r " + "=" * 45)
            out.append(f"\r Job: {r['name']} (Core Mask {r['core_mask']})")
            for cut, us in percentiles(r["hist"], LATENCY_CUTOFFS):
                out.append(f"{cut * 100:9.5f}% : {us:9.3f}us")
            out.append("")
        if latency_level > 1:
            out.append("\r Latency histogram")
            for r in results:
                out.append("\r " + "=" * 45)
                out.append(f"\r Job: {r['name']} (Core Mask {r['core_mask']})")
                total = sum(c for _, c in r["hist"])
                so_far = 0
                for i, c in sorted(r["hist"]):
                    so_far += c
                    lo, hi = bucket_range(i)
                    out.append(f"{lo / 1000:9.3f} - {hi / 1000:9.3f}: {so_far * 100 / total:9.4f}%  ({c:9d})")
                out.append("")
    return "\n".join(out)


def progress_line(iops: float, mibps: float) -> str:
    """SPDK's summarized per-period line (``%12.2f IOPS, %8.2f MiB/s``, printed with a
    ``\r`` and no newline, so each period overwrites the last on a terminal)."""
    return f"{iops:12.2f} IOPS, {mibps:8.2f} MiB/s"


# ---------------------------------------------------------------------------------- JSON
def job_json(r: dict, s: dict, terminated: bool = False, spdk_only: bool = False) -> dict:
    """One entry of SPDK's perform_tests ``results`` (same keys, same order), plus
    ringstack's extras (percentiles and the histogram) after them unless ``spdk_only``."""
    j = {"job": r["name"], "core_mask": r["core_mask"], "workload": r["workload"]}
    if r["workload"] in ("rw", "randrw"):
        j["percentage"] = r["rw_percentage"]
    j["status"] = "terminated" if terminated else ("failed" if job_failed(r) else "finished")
    if r["verify"]:
        j["verify_range"] = {"start": r["ios_base"], "length": r["size_in_ios"]}
    j.update({
        "queue_depth": r["queue_depth"],
        "io_size": r["io_size"],
        "runtime": s["runtime"],
        "iops": s["iops"],
        "mibps": s["mibps"],
        "io_failed": r["io_failed"],
        "io_timeout": r["io_timeout"],
        "avg_latency_us": s["avg_latency_us"],
        "min_latency_us": s["min_latency_us"],
        "max_latency_us": s["max_latency_us"],
    })
    if spdk_only:
        return j
    pct = dict(percentiles(r["hist"], [c for _, c in JSON_PERCENTILES]))
    j["latency_percentiles_us"] = {name: pct.get(c) for name, c in JSON_PERCENTILES}
    j["latency_histogram"] = [[bucket_range(i)[0] / 1000, bucket_range(i)[1] / 1000, c]
                              for i, c in sorted(r["hist"])]
    j["nomem_waits"] = r.get("nomem_waits", 0)
    if r["reset"]:
        j["resets"] = r.get("resets", 0)
    if r.get("mismatch"):
        j["mismatch"] = r["mismatch"]
    return j


def perform_tests_json(results: list[dict], core_count: int, timeline=None, extra=None,
                       terminated: bool = False, spdk_only: bool = False) -> dict:
    """SPDK's perform_tests result ({"results": [...], "core_count": N}); unless
    ``spdk_only``, with ringstack's totals, timeline and per-job extras (the --results file)."""
    stats = [job_stats(r) for r in results]
    out = {"results": [job_json(r, s, terminated, spdk_only) for r, s in zip(results, stats)],
           "core_count": core_count}
    if spdk_only:
        return out
    t = totals(stats)
    out["total"] = {k: t[k] for k in ("iops", "mibps", "fail_per_s", "timeout_per_s",
                                      "avg_latency_us", "min_latency_us", "max_latency_us")}
    if timeline is not None:
        out["timeline"] = timeline
    if extra:
        out.update(extra)
    return out
