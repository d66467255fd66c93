"""`ringstack bdevperf`: SPDK's bdev benchmark (examples/bdev/bdevperf) on ringstack.

    ringstack bdevperf -q 128 -o 4096 -w randread -t 5 [-m 0x3] [-C] [--json config.json]

Every flag of SPDK's ``bdevperf`` usage and the SPDK app flags its command lines use are
accepted with SPDK's meaning (the table is in docs/bdevperf.md).  Flow, as SPDK's:

1. The app starts its reactors (``-m``) and creates the bdevs: the JSON config of
   ``-c``/``--json`` (read, never written), else the embedded default (one malloc bdev).
2. Without ``-z`` the test runs at once; with ``-z`` bdevperf waits for SPDK's
   ``perform_tests`` RPC on ``-r`` (SPDK's ``bdevperf.py perform_tests`` works unchanged).
3. Job placement (one job per leaf bdev or ``-T``, round-robin over the cores; ``-C`` one
   per bdev per core on its own LBA slice; ``-j`` the job file's configs), then the jobs run
   on their reactors (tools/bdevperf_job.py) and the app thread prints SPDK's per-second line
   (``-S N``: the table every N s), the final table, ``-l`` percentiles; ``--results FILE``
   writes the ``perform_tests`` result with ringstack's timeline and histograms.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys

from tools import bdevperf_bdev as B
from tools import bdevperf_report as R
from tools import bdevperf_run as RUN
from tools.bdevperf_jobfile import JobFileError, read_job_file

log = logging.getLogger("ringstack.bdevperf")

DEFAULT_RESET_PERIOD_S = 10   # SPDK's reset_job period
LARGE_BUF_MAX = 65536         # SPDK_BDEV_LARGE_BUF_MAX_SIZE (the zero-copy threshold)
#: -L flags: the loggers of ringstack's components (``all``: every one).
LOG_FLAGS = ("all", "app", "aio", "bdev", "bdevperf", "delay", "drivers", "error", "fanout",
             "io_channel", "malloc", "nbd", "null", "passthru", "raid", "reactor", "rpc", "split",
             "subsystem", "thread")


class UsageError(Exception):
    """A bad flag: printed as one line, exit status 1."""


# =========================================================================== option parsing
def parse_size(text: str, what: str = "IO size") -> int:
    """``4096``, ``4k``, ``4K``, ``4KiB``, ``64KB``, ``1M`` -> bytes (SPDK's parse_capacity);
    the one size parser of the tools (bdevperf's -o, the benches' --size, test servers)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:([kKmMgG])(?:i?[bB])?|[bB])?\s*", str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: expected bytes like 4096, 4k or 64KiB")
    n = int(m.group(1)) << {None: 0, "k": 10, "m": 20, "g": 30}[(m.group(2) or "").lower() or None]
    if n <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than 0")
    return n


def _nonneg_int(flag):
    def conv(text):
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, not {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{flag} must not be negative ({v})")
        if v >= 2**31 - 1:
            raise argparse.ArgumentTypeError(f"{flag} value {v} is too large")
        return v
    return conv


def _theta(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"Illegal zipf theta value {text}")
    return v


def add_arguments(p) -> None:
    a = p.add_argument
    # -- SPDK's bdevperf_usage(), in its order
    a("-q", dest="queue_depth", type=_nonneg_int("-q"), metavar="DEPTH", help="io depth")
    a("-o", dest="io_size", metavar="SIZE", help="io size in bytes (4096, 4k, 64KiB)")
    a("-w", dest="workload", metavar="TYPE", help="io pattern type, one of (" + ", ".join(R.WORKLOADS) + ")")
    a("-t", dest="time", type=_nonneg_int("-t"), metavar="SECONDS", help="time in seconds")
    a("-k", dest="timeout_s", type=_nonneg_int("-k"), default=0, metavar="TIMEOUT",
      help="timeout in seconds to detect starved I/O, counted in TO/s (default 0: disabled)")
    a("-M", dest="rw_percentage", type=_nonneg_int("-M"), metavar="PERCENT",
      help="rwmixread (100 for reads, 0 for writes); rw and randrw only")
    a("-P", dest="ema_period", type=_nonneg_int("-P"), default=0, metavar="NUM",
      help="with -S: show the moving average of the previous NUM periods' IO/s")
    a("-S", dest="show_period", type=_nonneg_int("-S"), metavar="SECONDS",
      help="print the full table every SECONDS (default: a summary line each second)")
    a("-T", dest="bdev", metavar="BDEV", help="bdev to run against (default: all leaf bdevs)")
    a("-f", dest="continue_on_failure", action="store_true", help="continue processing I/O after failures")
    a("-F", dest="zipf_theta", type=_theta, default=0.0, metavar="THETA",
      help="zipf distribution (theta) for random I/O offsets")
    a("-Z", dest="zcopy", action="store_true", help="use the zcopy bdev API (no ringstack bdev has it)")
    a("-z", dest="wait_for_tests", action="store_true",
      help="wait for the perform_tests RPC (SPDK's bdevperf.py perform_tests) to start tests")
    a("-X", dest="abort", action="store_true", help="abort timed out I/O (with -k)")
    a("-C", dest="multithread", action="store_true",
      help="every core drives every bdev (each on its own LBA slice)")
    a("-j", dest="jobfile", metavar="FILE", help="job config file (SPDK's format, doc/bdevperf.md)")
    a("-l", dest="latency", action="count", default=0, help="latency percentiles (-ll: also the histogram)")
    a("-D", dest="random_map", action="store_true",
      help="random offsets not previously used until all are (randread/randwrite/randrw)")
    a("-E", dest="one_thread_per_lcore", action="store_true",
      help="jobs of one core share one thread (default: a thread per job)")
    a("-J", dest="rpc_log", metavar="FILE", help="append every JSON-RPC request and response to FILE")
    a("-U", dest="unique_writes", action="store_true", help="unique data in every write")
    a("-N", dest="hide_metadata", action="store_true", help="hide metadata (no ringstack bdev has any)")
    a("-H", dest="nohuge_alloc", action="store_true",
      help="non-huge data buffers (ringstack's always are: a no-op)")
    # -- SPDK's app options (spdk_app_parse_args) that bdevperf command lines use
    a("-m", "--cpumask", dest="cpumask", default="0x1", metavar="MASK",
      help="reactor core mask (0x3, [0,1]); default 0x1")
    a("-c", "--config", "--json", dest="config", metavar="CONFIG.json",
      help="SPDK JSON config creating the bdevs (read only)")
    a("-r", "--rpc-socket", dest="rpc_socket", metavar="SOCK",
      help="RPC listen address (default /var/tmp/spdk.sock with -z or --wait-for-rpc)")
    a("--wait-for-rpc", dest="wait_for_rpc", action="store_true",
      help="wait for framework_start_init before initialising subsystems")
    a("--interrupt-mode", dest="interrupt_mode", action="store_true",
      help="idle reactors sleep (ringstack's adaptive mode) instead of polling")
    a("-s", "--mem-size", dest="mem_size", metavar="SIZE",
      help="MB (or 512M, 1G) of shared-memory buffer arena: half 8 KiB, half 64 KiB buffers")
    a("-p", "--main-core", dest="main_core", type=_nonneg_int("-p"), metavar="CORE",
      help="main core: must be the lowest core of -m (ringstack's main reactor)")
    a("-L", "--logflag", dest="logflags", action="append", default=[], metavar="FLAG",
      help="debug logging of a component (" + ", ".join(LOG_FLAGS) + ")")
    for flags, dest, kind, what in (
            (("-i", "--shm-id"), "shm_id", int, "shared memory ID"),
            (("-n", "--mem-channels"), "mem_channels", int, "memory channels"),
            (("-e", "--tpoint-group"), "tpoint_group", str, "tracepoint group mask"),
            (("-g", "--single-file-segments"), "single_file_segments", None, "one hugetlbfs file"),
            (("-R", "--huge-unlink"), "huge_unlink", None, "unlink huge files"),
            (("--no-huge",), "no_huge", None, "run without hugepages"),
            (("-u", "--no-pci"), "no_pci", None, "disable PCI access"),
            (("-d", "--limit-coredump"), "limit_coredump", None, "keep the coredump size limit"),
            (("--silence-noticelog",), "silence_noticelog", None, "no notice logs on stderr")):
        if kind is None:
            a(*flags, dest=dest, action="store_true", help=f"{what} (no-op, docs/bdevperf.md)")
        else:
            a(*flags, dest=dest, type=kind, metavar="VALUE", help=f"{what} (no-op, docs/bdevperf.md)")
    # -- ringstack's own
    a("--results", dest="results", metavar="FILE",
      help="write the perform_tests result (+ timeline, histograms) as JSON to FILE")
    a("--reset-period", dest="reset_period", type=float, metavar="SECONDS",
      help="reset workload: seconds between resets (default: 10, or half of -t when -t is shorter)")
    a("--mode", choices=("adaptive", "poll"), default=None,
      help="reactor mode (default poll, as SPDK; --interrupt-mode is adaptive)")
    a("--seed", type=int, help="seed of the offset generators (default: random)")


def add_parser(sub) -> None:
    p = sub.add_parser("bdevperf", help="SPDK's bdevperf on ringstack",
                       description="SPDK's bdev benchmark on ringstack reactors.")
    add_arguments(p)
    p.set_defaults(func=run)


def derive(o: dict) -> tuple[str | None, dict]:
    """SPDK's verify_test_params over the test parameters ``o``: ``(problem, opts)``.  It
    prints SPDK's warnings and returns the first problem as one line (None if none)."""
    o = dict(o)
    jobfile = o["jobfile_configs"] is not None
    if not jobfile:
        if not o["queue_depth"]:
            return "-q (queue depth) is required and must be greater than 0", o
        if not o["io_size"]:
            return "-o (IO size) is required", o
        if not o["workload"]:
            return "-w (workload) is required: one of " + ", ".join(R.WORKLOADS), o
    if jobfile and o["one_thread_per_lcore"]:
        print("If bdevperf's config file is used, per lcore thread cannot be used", flush=True)
        return "-E cannot be used with -j", o
    if not o["time"] or o["time"] <= 0:
        return "-t (run time in seconds) is required and must be greater than 0", o
    if o["abort"] and not o["timeout_s"]:
        print("Timeout must be set for abort option, Ignoring g_abort", flush=True)
        o["abort"] = False
    if o["ema_period"] > 0 and not o["show_period"]:
        return "-P option must be specified with -S option", o
    if (o["io_size"] or 0) > LARGE_BUF_MAX:
        print(f"I/O size of {o['io_size']} is greater than zero copy threshold ({LARGE_BUF_MAX}).", flush=True)
        print("Zero copy mechanism will not be used.", flush=True)
        o["zcopy"] = False
    reset_period = o["reset_period"] or min(DEFAULT_RESET_PERIOD_S, max((o["time"] or 1) / 2, 0.5))
    o["reset_period_us"] = int(reset_period * 1e6)
    if jobfile:
        return None, o
    w = o["workload"]
    if w not in R.WORKLOADS:
        return f"unknown workload {w!r}: -w must be one of " + ", ".join(R.WORKLOADS), o
    if w not in ("rw", "randrw") and o["mix_specified"]:
        print("Ignoring -M option... Please use -M option only when using rw or randrw.",
              file=sys.stderr, flush=True)
    if w in ("rw", "randrw") and not 0 <= o["rw_percentage"] <= 100:
        return "-M must be specified to value from 0 to 100 for rw or randrw.", o
    if w not in ("randread", "randwrite", "randrw") and o["random_map"]:
        return ("Ignoring -D option... Please use -D option only when using randread, randwrite "
                "or randrw."), o
    return None, o


def _mem_size_mb(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    if not m:
        raise UsageError(f"invalid memory size {text!r} for -s (MB, or 512M, 1G)")
    n, unit = int(m.group(1)), m.group(2).lower()
    return n if not unit else (n << {"k": 10, "m": 20, "g": 30}[unit]) >> 20


def check_options(a) -> dict:
    """The command line as options: SPDK's checks, ringstack's one-line errors."""
    from reactor.app import check_cores_available, parse_cpumask
    io_size = parse_size(a.io_size) if a.io_size is not None else 0
    try:
        cores = parse_cpumask(a.cpumask)
        check_cores_available(cores)
    except ValueError as exc:
        raise UsageError(f"bad -m: {exc}") from None
    if a.main_core is not None and a.main_core != cores[0]:
        raise UsageError(f"-p {a.main_core}: the main core must be the lowest core of -m "
                         f"({cores[0]}): ringstack's main reactor runs on the mask's first core")
    for flag in a.logflags:
        if flag not in LOG_FLAGS:
            raise UsageError(f"unknown -L flag {flag!r}: one of " + ", ".join(LOG_FLAGS))
    if a.show_period is not None and a.show_period <= 0:
        raise UsageError("-S must be greater than 0")
    if a.reset_period is not None and a.reset_period <= 0:
        raise UsageError("--reset-period must be greater than 0")
    config = None
    if a.config is not None:
        from reactor.rpc.config import ConfigError, read_config
        try:
            config = read_config(a.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        problem = B.check_config(config)
        if problem:
            raise UsageError(f"{a.config}: {problem}")
    pools = None
    if a.mem_size is not None:
        mb = _mem_size_mb(a.mem_size)
        pools = {"small_pool_count": (mb << 20) // 2 // 8192,
                 "large_pool_count": (mb << 20) // 2 // 65536}
        if pools["large_pool_count"] < len(cores):
            raise UsageError(f"-s {a.mem_size}: {mb} MB leaves fewer than one 64 KiB buffer per reactor")
    if a.results:
        d = os.path.dirname(os.path.abspath(a.results))
        if os.path.isdir(a.results):
            raise UsageError(f"--results {a.results} is a directory")
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            raise UsageError(f"cannot write --results {a.results}: no writable directory {d}")
    rw_pct = a.rw_percentage if a.rw_percentage is not None else -1
    jobs = None
    if a.jobfile is not None:
        try:
            jobs = read_job_file(a.jobfile, {"bdev": a.bdev, "io_size": io_size, "queue_depth": a.queue_depth,
                                             "rw_percentage": rw_pct, "workload": a.workload})
        except JobFileError as exc:
            raise UsageError(str(exc)) from None
    if a.rpc_log is not None:
        try:
            open(a.rpc_log, "a").close()
        except OSError as exc:
            raise UsageError(f"Failed to open {a.rpc_log}: {exc.strerror}") from None
    if jobs is not None:
        print(f"Using job config with {len(jobs)} jobs", flush=True)
    rpc_socket = a.rpc_socket
    if rpc_socket is None and (a.wait_for_tests or a.wait_for_rpc):
        from reactor.rpc import DEFAULT_SOCKET
        rpc_socket = DEFAULT_SOCKET
    o = {
        "queue_depth": a.queue_depth or 0, "io_size": io_size, "workload": a.workload, "time": a.time or 0,
        "rw_percentage": rw_pct, "mix_specified": a.rw_percentage is not None, "cores": cores,
        "cpumask": a.cpumask, "config": a.config, "config_dict": config, "bdev": a.bdev,
        "multithread": bool(a.multithread), "show_period": a.show_period, "latency": a.latency,
        "continue_on_failure": bool(a.continue_on_failure), "timeout_s": a.timeout_s,
        "abort": bool(a.abort), "ema_period": a.ema_period, "zipf_theta": a.zipf_theta,
        "zcopy": bool(a.zcopy), "random_map": bool(a.random_map), "unique_writes": bool(a.unique_writes),
        "one_thread_per_lcore": bool(a.one_thread_per_lcore), "jobfile_configs": jobs,
        "wait_for_tests": bool(a.wait_for_tests), "rpc_socket": rpc_socket,
        "wait_for_rpc": bool(a.wait_for_rpc), "rpc_log": a.rpc_log, "pools": pools,
        "logflags": list(a.logflags), "reset_period": a.reset_period,
        "mode": a.mode or ("adaptive" if a.interrupt_mode else "poll"),
        "seed": a.seed if a.seed is not None else random.randrange(1 << 30),
        "quiet": False,
    }
    problem, derived = derive(o)
    if problem is not None and not o["wait_for_tests"]:
        raise UsageError(problem)
    return o if problem is not None else derived


# ============================================================================ start-up
def _app_main(sess):
    RUN.session = sess
    sess.begin()


def _on_app_shutdown():
    if RUN.session is not None:
        RUN.session.on_shutdown()


def _perform_tests(request, params):
    """Run one bdevperf test (SPDK's perform_tests): time_in_sec, workload_type, queue_depth,
    io_size, rw_percentage, each optional, override the command line's."""
    sess = RUN.session
    if sess is None:
        request.error(-32603, "bdevperf is not running")
        return
    sess.perform_tests(request, params)


def run_app(opts: dict) -> int:
    """Run bdevperf in reactor processes (one per core of ``opts['cores']``); returns the
    exit code.  The last test's outcome is left in ``tools.bdevperf_run.last_result``."""
    import shutil
    import tempfile
    from reactor import rpc
    from reactor.app import App, app_stop
    RUN.last_result = None
    extra = B.prepare_real()
    imports = ["tools.bdevperf"] + [m for m in extra if m != "tools.bdevperf"]
    for flag in opts["logflags"]:
        logging.basicConfig(format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
        logging.getLogger("ringstack" if flag == "all" else f"ringstack.{flag}").setLevel(logging.DEBUG)
    startup, rest = B.split_startup(opts["config_dict"]) if opts["config_dict"] is not None else (None, None)
    if opts["pools"] is not None:
        # -s: the arena's two pools (SPDK's iobuf), before the config's own entries
        first = {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options",
                                                   "params": dict(opts["pools"])}]}
        startup = {"subsystems": [first] + (startup["subsystems"] if startup else [])}
    opts = dict(opts, config_dict=rest)
    socket_path, tmpdir = opts["rpc_socket"], None
    if socket_path is None and startup is not None:
        # STARTUP-only entries go through the app, which replays them before it initialises
        # the bdev layer; that needs its RPC server, here on a private socket for the run.
        tmpdir = tempfile.mkdtemp(prefix="bdevperf.")
        socket_path = os.path.join(tmpdir, "rpc.sock")
    registered = False
    if socket_path is not None and "perform_tests" not in rpc.METHODS:
        rpc.METHODS.register("perform_tests", _perform_tests, params=rpc.RAW)
        registered = True
    log_handle = None
    if opts["rpc_log"] is not None:
        from tools.bdevperf_rpclog import RpcLog
        log_handle = RpcLog(opts["rpc_log"], rpc.METHODS)
    sess = RUN.Session(opts, len(opts["cores"]), app_stop)
    try:
        rc = App(opts["cores"], mode=opts["mode"], imports=imports, name="bdevperf",
                 shutdown_cb=_on_app_shutdown, rpc_socket=socket_path, config=startup,
                 wait_for_rpc=opts["wait_for_rpc"]).run(_app_main, sess)
    finally:
        RUN.session = None
        if registered:
            rpc.METHODS.unregister("perform_tests")
        if log_handle is not None:
            log_handle.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return rc


def run(args) -> int:
    try:
        opts = check_options(args)
    except UsageError as exc:
        print(f"ringstack bdevperf: error: {exc}", file=sys.stderr)
        return 1
    rc = run_app(opts)
    res = RUN.last_result
    if args.results and res is not None:
        try:
            with open(args.results, "w") as f:
                json.dump(res["json"], f, indent=2)
        except OSError as exc:
            print(f"ringstack bdevperf: error: cannot write {args.results}: {exc.strerror}", file=sys.stderr)
            return 1
    if res is None and not rc and not opts["wait_for_tests"]:
        # the app stopped (a signal during start-up or bdev set-up) before any job reported
        print("ringstack bdevperf: stopped before the test ran", file=sys.stderr)
        rc = 1
    return rc
