"""`ringstack bdevperf`: flag errors, verify across reactors, corruption detection, results vs table.

Runs bdevperf as a subprocess (it starts reactor processes); every run is short (1 s)."""
import json
import os
import re
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_CORES = len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


def bdevperf(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tools.cli", "bdevperf", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ flag errors
@pytest.mark.parametrize("args, needle", [
    (["-q", "8", "-o", "4096", "-w", "randomread", "-t", "1"], "unknown workload 'randomread'"),
    (["-q", "8", "-o", "4096", "-w", "randrw", "-t", "1"], "-M must be specified"),
    (["-q", "8", "-o", "4096", "-w", "rw", "-t", "1", "-M", "101"], "-M must be specified"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-m", "0xZZ"], "bad -m"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-m", "0x0"], "selects no core"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-m", "0x10000"], "not available"),
    (["-q", "8", "-o", "4q", "-w", "read", "-t", "1"], "invalid IO size '4q'"),
    (["-q", "8", "-o", "0", "-w", "read", "-t", "1"], "must be greater than 0"),
    (["-o", "4096", "-w", "read", "-t", "1"], "-q (queue depth) is required"),
    (["-q", "8", "-w", "read", "-t", "1"], "-o (IO size) is required"),
    (["-q", "8", "-o", "4096", "-t", "1"], "-w (workload) is required"),
    (["-q", "8", "-o", "4096", "-w", "read"], "-t (run time in seconds) is required"),
    (["-q", "x", "-o", "4096", "-w", "read", "-t", "1"], "-q expects an integer"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-Y"], "unrecognized arguments: -Y"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-P", "3"], "-P option must be specified with -S option"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-D"], "Please use -D option only when using randread"),
    (["-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-F", "-1"], "Illegal zipf theta value -1"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-p", "1"], "the main core must be the lowest core"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-L", "nope"], "unknown -L flag 'nope'"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-s", "lots"], "invalid memory size 'lots'"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-J", "/nonexistent/x.log"], "Failed to open /nonexistent/x.log"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t"], "expected one argument"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "--results", "/nonexistent/r.json"], "cannot write --results"),
    (["-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-c", "/nonexistent.json"], "cannot read config"),
])
def test_bad_flags_one_line(args, needle):
    p = bdevperf(*args)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_bad_config_json(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"subsystems": [{"subsystem": "bdev", "config": [{"method": 3}]}]}')
    p = bdevperf("-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-c", str(cfg))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1
    assert "config[0]" in p.stderr


def test_bad_config_params_one_line(tmp_path):
    for entry, needle in (
            ({"method": "bdev_set_options", "params": {"bdev_io_pool_size": -5}}, "bdev_io_pool_size"),
            ({"method": "bdev_malloc_create", "params": {"block_size": 512}}, "num_blocks"),
            ({"method": "bdev_nope_create", "params": {}}, "unknown method 'bdev_nope_create'")):
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [entry]}]}))
        p = bdevperf("-q", "8", "-o", "4096", "-w", "read", "-t", "1", "-c", str(cfg))
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and needle in lines[0] and "config[0]" in lines[0], p.stderr


def test_startup_entries_applied(tmp_path):
    """A save_config-style file: bdev_set_options (STARTUP only) is applied before the bdev
    layer starts, not skipped."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 4096, "bdev_io_cache_size": 64}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc7", "num_blocks": 8192, "block_size": 512}},
        {"method": "bdev_wait_for_examine"}]}]}))
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-c", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "skipped" not in p.stderr and "Job: Malloc7" in p.stdout


def test_size_suffixes():
    from tools.bdevperf import UsageError, parse_size
    assert parse_size("4096") == 4096
    assert parse_size("4k") == parse_size("4K") == parse_size("4KiB") == parse_size("4KB") == 4096
    assert parse_size("1M") == 1 << 20
    with pytest.raises(UsageError):
        parse_size("-4")


def test_histogram_buckets_cover_and_bound():
    from tools.bdevperf_report import bucket_index, bucket_range
    for lat in list(range(0, 300)) + [1000, 4095, 4096, 12345, 10**6, 10**9 + 7, 2**40]:
        lo, hi = bucket_range(bucket_index(lat))
        assert lo <= lat < hi
        assert hi - lo <= max(1, lo // 64 + 1)


# ------------------------------------------------------------------------------ runs
def _table(stdout):
    """Job rows and the Total row of the final table: name -> [floats]."""
    rows = []
    for ln in stdout.splitlines():
        m = re.match(r"^\s*\t? (\S.*?)\s*:\s+(.*)$", ln.replace("\r", ""))
        if m and not ln.lstrip().startswith(("Job:", "Device", "Verification")):
            nums = m.group(2).split()
            try:
                rows.append((m.group(1).strip(), [float(x) for x in nums]))
            except ValueError:
                continue
    return rows


@pytest.mark.skipif(not TWO_CORES, reason="needs cores 0 and 1")
def test_verify_two_reactors_no_mismatch(tmp_path):
    out = tmp_path / "r.json"
    p = bdevperf("-q", "8", "-o", "4096", "-w", "verify", "-t", "1", "-m", "0x3", "-C", "--results", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Running I/O for 1 seconds..." in p.stdout
    assert "mismatch" not in p.stdout.lower()
    res = json.loads(out.read_text())
    assert res["core_count"] == 2
    jobs = res["results"]
    assert [j["core_mask"] for j in jobs] == ["0x1", "0x2"]
    for j in jobs:
        assert j["status"] == "finished" and j["io_failed"] == 0 and j["iops"] > 0
        assert "mismatch" not in j
    # -C: each core its own, disjoint LBA slice
    a, b = (j["verify_range"] for j in jobs)
    assert a["start"] + a["length"] <= b["start"]


def test_json_matches_table(tmp_path):
    out = tmp_path / "r.json"
    p = bdevperf("-q", "16", "-o", "4k", "-w", "randread", "-t", "1", "-l", "--results", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    rows = _table(p.stdout)
    names = [n for n, _ in rows]
    assert names == [j["job"] for j in res["results"]] + ["Total"], rows
    for (name, nums), j in zip(rows, res["results"]):
        runtime, iops, mibps, fail, to, avg, mn, mx = nums
        assert runtime == pytest.approx(j["runtime"], abs=0.006)
        assert iops == pytest.approx(j["iops"], abs=0.006)
        assert mibps == pytest.approx(j["mibps"], abs=0.006)
        assert fail == pytest.approx(j["io_failed"] / j["runtime"], abs=0.006)
        assert (avg, mn, mx) == pytest.approx(
            (j["avg_latency_us"], j["min_latency_us"], j["max_latency_us"]), abs=0.006)
        for key in ("queue_depth", "io_size", "workload", "status", "io_timeout"):
            assert key in j
        assert j["queue_depth"] == 16 and j["io_size"] == 4096 and j["workload"] == "randread"
        assert j["latency_percentiles_us"]["p50"] <= j["latency_percentiles_us"]["p99.9"]
    total = rows[-1][1]
    assert total[0] == pytest.approx(res["total"]["iops"], abs=0.006)
    # -l: SPDK's percentile lines
    assert "\n Latency summary\n" in p.stdout and re.search(r"\n 99\.90000% :\s+[\d.]+us\n", p.stdout)
    assert res["timeline"] and res["timeline"][0]["iops"] > 0


@pytest.mark.parametrize("workload", ["rw", "unmap", "flush", "write_zeroes", "reset"])
def test_other_workloads_run(workload, tmp_path):
    extra = ["-M", "50"] if workload == "rw" else []
    out = tmp_path / "r.json"
    p = bdevperf("-q", "8", "-o", "4096", "-w", workload, "-t", "1", "--results", str(out), *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"workload: {workload}" in p.stdout
    total = _table(p.stdout)[-1]
    assert total[0] == "Total" and total[1][0] > 0
    j = json.loads(out.read_text())["results"][0]
    assert j["status"] == "finished"
    if workload == "reset":      # -t 1: one reset at 0.5 s, I/O verified around it
        assert j["resets"] >= 1 and "mismatch" not in j


def test_error_bdev_corruption_names_offset(tmp_path):
    """verify over an error bdev (drivers/error.py) whose next read is corrupted at byte 700:
    the run fails and names the target and the offset."""
    img = tmp_path / "base.img"
    img.write_bytes(bytes(4 << 20))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_aio_create", "params": {"name": "Base0", "filename": str(img), "block_size": 512}},
        {"method": "bdev_error_create", "params": {"base_name": "Base0"}},
        {"method": "bdev_error_inject_error",
         "params": {"name": "EE_Base0", "io_type": "read", "error_type": "corrupt_data", "num": 1,
                    "corrupt_offset": 700}},
    ]}]}))
    out = tmp_path / "r.json"
    p = bdevperf("-q", "4", "-o", "4096", "-w", "verify", "-t", "1", "-c", str(cfg), "--results", str(out))
    assert p.returncode != 0
    m = re.search(r"Buffer mismatch! Target: EE_Base0 Disk Offset: (\d+) \(first bad block (\d+), "
                  r"byte offset (\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    offset, block, byte = map(int, m.groups())
    assert byte == offset * 512 + 700 and block == offset + 1
    j = json.loads(out.read_text())["results"][0]
    assert j["status"] == "failed"
    assert j["mismatch"] == {"target": "EE_Base0", "offset_blocks": offset, "block": block, "byte_offset": byte}


def test_show_period_prints_tables():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randwrite", "-t", "2", "-S", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    # one Total row per period, plus the final one
    assert sum(1 for ln in p.stdout.splitlines() if ln.lstrip("\r ").startswith("Total")) >= 2


def test_sigint_drains_and_reports_terminated(tmp_path):
    import signal
    import time
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "bdevperf", "-q", "8", "-o", "4096",
                             "-w", "randread", "-t", "30", "--results", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        line = ""
        while "IOPS" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()          # the first progress line: jobs are running
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert "Received shutdown signal, test time was about" in stdout
    assert "Traceback" not in stderr
    j = json.loads(out.read_text())
    assert j["results"][0]["status"] == "terminated" and j["results"][0]["runtime"] < 25


def _write_result(tmp_path):
    res = tmp_path / "r.json"
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "--results", str(res))
    assert p.returncode == 0, p.stderr
    return res


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    res = _write_result(tmp_path)
    png = tmp_path / "out.png"
    p = subprocess.run([sys.executable, "-m", "tools.cli", "plot", str(res), "-o", str(png)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    p = subprocess.run([sys.executable, "-m", "tools.cli", "plot", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "results" in p.stderr
    # without matplotlib: a clear message, not a traceback
    res = _write_result(tmp_path)
    code = ("import sys; sys.modules['matplotlib'] = None; from tools.cli import main; "
            f"sys.exit(main(['plot', {str(res)!r}, '-o', {str(tmp_path / 'x.png')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "matplotlib is not installed" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("workload", ["randread", "verify"])
def test_enomem_waits_and_resubmits(tmp_path, workload):
    """Depth above the bdev_io pool: submits get -ENOMEM, bdevperf queue_io_waits and carries
    on.  The bdev layer gets a 256-entry pool through bdev_set_options (a STARTUP entry)."""
    out = tmp_path / "r.json"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 256, "bdev_io_cache_size": 16}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 16384,
                                                    "block_size": 512}}]}]}))
    p = bdevperf("-q", "512", "-o", "4096", "-w", workload, "-t", "1", "--results", str(out),
                 "-c", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    j = json.loads(out.read_text())["results"][0]
    assert j["nomem_waits"] > 0 and j["io_failed"] == 0 and j["iops"] > 0 and j["status"] == "finished"


# ------------------------------------------------------------- SPDK's output, byte for byte
# The formats of SPDK's examples/bdev/bdevperf/bdevperf.c (performance_dump_job_stdout,
# bdevperf_test_done, _performance_dump_done), as regular expressions over the raw bytes.
_NUM = r" +\d+\.\d\d"
SPDK_LINES = {
    "latency_head": r"\n {96}Latency\(us\)\n",
    "device_head": (r"\r Device Information          : runtime\(s\)       IOPS      MiB/s     Fail/s"
                    r"     TO/s    Average        min        max\n"),
    "job": r"\nJob: Malloc0 \(Core Mask 0x1, workload: randread, depth: 16, IO size: 4096\)\n",
    "row": r"\n\t Malloc0             :" + _NUM * 5 + r" +\d+\.\d\d" * 3 + r"\n",
    "rule": r"\r =={57}=+\n",
    "total": r"\r Total                       :            " + _NUM * 7 + r"\n",
    "progress": r"\n *\d+\.\d\d IOPS, +\d+\.\d\d MiB/s\r",   # right-aligned: fewer IOPS digits, more spaces
}


def test_output_is_spdks_byte_for_byte():
    p = subprocess.run([sys.executable, "-m", "tools.cli", "bdevperf", "-q", "16", "-o", "4096",
                        "-w", "randread", "-t", "3"], cwd=ROOT, capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    for name, rx_ in SPDK_LINES.items():
        assert re.search(rx_, out), (name, out)
    assert "\n Job:" not in out                      # SPDK's Job: lines have no leading space
    assert re.search(r"\r\n {96}Latency\(us\)\n", out)  # the \r line is ended by the table's \n
    assert "\r =" + "=" * 114 + "\n" in out and "=" * 116 not in out


def test_M_with_randread_warns_and_runs():
    """SPDK: "Ignoring -M option..." on stderr, and the test runs as randread."""
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-M", "50")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Ignoring -M option... Please use -M option only when using rw or randrw." in p.stderr
    assert "workload: randread, depth: 8" in p.stdout and "percentage" not in p.stdout


def _two_malloc_config(tmp_path, name="conf.json"):
    cfg = tmp_path / name
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": n, "num_blocks": 16384, "block_size": 512}}
        for n in ("Malloc0", "Malloc1")]}]}, indent=1))
    return cfg


@pytest.mark.parametrize("flag", ["--json", "-c", "--config"])
def test_json_flag_is_the_config_and_is_never_written(tmp_path, flag):
    cfg = _two_malloc_config(tmp_path)
    before, mtime = cfg.read_bytes(), cfg.stat().st_mtime_ns
    out = tmp_path / "r.json"
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", flag, str(cfg), "--results", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Job: Malloc0 " in p.stdout and "Job: Malloc1 " in p.stdout     # the config's bdevs
    assert cfg.read_bytes() == before and cfg.stat().st_mtime_ns == mtime
    assert [j["job"] for j in json.loads(out.read_text())["results"]] == ["Malloc0", "Malloc1"]


def test_results_file(tmp_path):
    out = tmp_path / "r.json"
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "--results", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["results"][0]["job"] == "Malloc0" and res["core_count"] == 1 and res["timeline"]


def _delay_config(tmp_path, latency_us):
    cfg = tmp_path / "delay.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512}},
        {"method": "bdev_delay_create", "params": {
            "name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": latency_us,
            "p99_read_latency": latency_us, "avg_write_latency": latency_us,
            "p99_write_latency": latency_us}}]}]}))
    return cfg


@pytest.mark.parametrize("extra", [[], ["-k", "1"], ["-k", "1", "-X"]])
def test_k_counts_timeouts_in_TO_per_s(tmp_path, extra):
    """I/O that takes 2.5 s: with -k 1 the once-a-second check finds every in-flight I/O
    outstanding at 2 s (and the drain's at 4 s); without -k nothing is counted.  -X would
    abort them where the bdev has SPDK's ABORT type (none has): they still complete."""
    out = tmp_path / "r.json"
    p = bdevperf("-q", "4", "-o", "4096", "-w", "randread", "-t", "4", "-c",
                 str(_delay_config(tmp_path, 2_500_000)), "--results", str(out), *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    j = json.loads(out.read_text())["results"][0]
    row = _table(p.stdout)[0][1]             # runtime IOPS MiB/s Fail/s TO/s ...
    if extra:
        assert j["io_timeout"] >= 4 and row[4] > 0
        assert j["io_failed"] == 0 and j["iops"] > 0
    else:
        assert j["io_timeout"] == 0 and row[4] == 0
    assert "Ignoring g_abort" not in p.stdout


def test_X_without_k_is_ignored_as_spdk_says():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-X")
    assert p.returncode == 0 and "Timeout must be set for abort option, Ignoring g_abort" in p.stdout


def test_Z_fails_as_spdk_on_a_bdev_without_zcopy():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-Z")
    assert p.returncode == 1
    assert "Test requires ZCOPY but bdev module does not support ZCOPY" in p.stderr


def _aio_config(tmp_path, size):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(size))
    cfg = tmp_path / "aio.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_aio_create", "params": {"name": "Aio0", "filename": str(img), "block_size": 512}}]}]}))
    return img, cfg


def _write_counts(img, io_size=4096, bs=512):
    """-U's data: per I/O slot, the write count (high halves), after checking the low halves
    are SPDK's (block index in the I/O + byte offset in the block)."""
    data = img.read_bytes()
    want_low = [k // (bs // 8) + (k % (bs // 8)) * 8 for k in range(io_size // 8)]
    counts = []
    for off in range(0, len(data), io_size):
        words = struct.unpack(f"<{io_size // 8}Q", data[off:off + io_size])
        assert [w & 0xFFFFFFFF for w in words] == want_low
        assert len({w >> 32 for w in words}) == 1
        counts.append(words[0] >> 32)
    return counts


def test_U_unique_writes_and_D_random_map(tmp_path):
    """-U: every write carries its count; -D: each pass writes every slot once, so the last
    write of every slot is within the last two passes (uniform offsets leave some slot far
    behind: with 64 slots the chance they do not is about 1e-4)."""
    img, cfg = _aio_config(tmp_path, 64 * 4096)
    p = bdevperf("-q", "1", "-o", "4096", "-w", "randwrite", "-t", "1", "-U", "-D", "-c", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    counts = _write_counts(img)
    assert max(counts) > 4 * 64                  # several passes ran
    assert max(counts) - min(counts) < 2 * 64
    # without -U the data is the buffer's zeros
    (tmp_path / "b").mkdir()
    img2, cfg2 = _aio_config(tmp_path / "b", 16 * 4096)
    p = bdevperf("-q", "1", "-o", "4096", "-w", "write", "-t", "1", "-c", str(cfg2))
    assert p.returncode == 0 and img2.read_bytes() == bytes(16 * 4096)


def test_F_zipf_draws_follow_spdks_generator():
    import random as _random
    from tools.bdevperf_jobfile import zipf_table
    n, theta = 1000, 1.2
    draws = zipf_table(n, theta, 200_000, _random.Random(7))
    zetan = sum((1.0 / (i + 1)) ** theta for i in range(n))
    assert min(draws) == 0 and max(draws) < n
    for v in (0, 1, 9):                          # P(v) = (v+1)^-theta / zeta(n)
        assert draws.count(v) / len(draws) == pytest.approx((v + 1) ** -theta / zetan, rel=0.1)


def test_F_zipf_run():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-F", "1.2")
    assert p.returncode == 0 and "workload: randread" in p.stdout, p.stderr


def test_P_moving_average_with_S():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "3", "-S", "1", "-P", "2")
    assert p.returncode == 0, p.stderr
    assert sum(1 for ln in p.stdout.split("\n") if ln.startswith(" Total")) >= 3
    from tools.bdevperf_report import ema_next
    assert ema_next(0.0, 100.0, 1) == 100.0              # n = 1: the last period alone
    assert ema_next(100.0, 400.0, 3) == 250.0            # M = 2 / (3 + 1)


def test_environment_flags_accepted_as_documented_noops():
    p = bdevperf("-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-i", "0", "-g", "-R",
                 "-e", "0x0", "--no-huge", "-u", "-n", "4", "-d", "-H", "-N", "-p", "0",
                 "--silence-noticelog", "--interrupt-mode", "-L", "bdevperf")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Job: Malloc0 " in p.stdout
