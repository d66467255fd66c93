"""bdevperf's app side (SPDK's main thread): the session, its test runs, ``perform_tests``.

A :class:`Session` lives on the app thread for the whole process: it creates the bdevs (the
JSON config of ``-c``/``--json``, else the embedded default), then runs one test at once
(without ``-z``) or waits for SPDK's ``perform_tests`` RPC (``-z``: each call applies its
parameters over the command line's, runs one test and answers with the results; the session
then waits for the next call until the app is stopped).  A :class:`Run` is one test: job
placement (SPDK's three modes: one job per bdev, ``-C`` one per bdev per core on its own LBA
slice, ``-j`` the job file's configs), construction on the jobs' threads, the per-period
output, the final table and the ``perform_tests`` result.
"""
from __future__ import annotations

import os
import sys
import time

import reactor as rx
from tools import bdevperf_bdev as B
from tools import bdevperf_job as J
from tools import bdevperf_report as R

#: The live session (set by the app main; bench scaling's in-process case sets it too).
session: "Session | None" = None
#: The last test's outcome (read by tools.bdevperf.run() and bench scaling).
last_result: dict | None = None

#: SPDK's perform_tests parameters (examples/bdev/bdevperf/bdevperf.c, relaxed decoding:
#: unknown keys are ignored) -> (type check, option key).
PERFORM_TESTS_PARAMS = {
    "time_in_sec": (lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31, "time"),
    "workload_type": (lambda v: isinstance(v, str), "workload"),
    "queue_depth": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32, "queue_depth"),
    "io_size": (lambda v: isinstance(v, str), "io_size"),
    "rw_percentage": (lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31,
                      "rw_percentage"),
}


def _mask(cores) -> str:
    return hex(sum(1 << c for c in cores))


class Session:
    """The process's bdevperf (lives on the app thread)."""

    def __init__(self, opts: dict, n_reactors: int, stop):
        from tools.bdevperf import derive
        self.o = opts
        self.n = n_reactors
        self.stop = stop
        self.derive = derive
        self.ready = False
        self.run: Run | None = None
        self.queued = []                  # perform_tests requests that came before the bdevs
        self.next_core = -1               # SPDK's _get_next_core (static across tests)
        self.tests = 0
        self.stopping = False

    def next_reactor(self, allowed=None) -> int:
        """Round-robin over the app's reactors (restricted to ``allowed`` indexes)."""
        for _ in range(self.n):
            self.next_core = (self.next_core + 1) % self.n
            if allowed is None or self.next_core in allowed:
                return self.next_core
        return -1

    def begin(self) -> None:
        if self.o.get("config_dict") is not None:
            B.load_config_dict(self.o["config_dict"], self.bdevs_ready)
        else:
            B.create_default(self.bdevs_ready)

    def bdevs_ready(self, rc, message) -> None:
        if rc:
            print(f"bdevperf: {message or f'bdev set-up failed: {rc}'}", file=sys.stderr, flush=True)
            self.stop(1)
            return
        self.ready = True
        if not self.o["wait_for_tests"]:
            self.start_test(self.o, None)
            return
        queued, self.queued = self.queued, []
        for request, params in queued:
            self.perform_tests(request, params)

    def start_test(self, opts: dict, request) -> None:
        self.tests += 1
        self.run = Run(self, opts, request)
        self.run.place_jobs()

    def test_done(self, run: "Run", rc: int) -> None:
        """SPDK's bdevperf_test_done tail: answer the RPC, stop the app unless it waits."""
        self.run = None
        if run.request is not None and not run.shutdown:
            if rc:
                err = run.rc if run.rc < 0 else -1
                run.request.error(-32603, f"bdevperf failed with error {os.strerror(-err)}")
                self.stop(1)
            else:
                run.request.result(run.rpc_result)
            return
        if run.request is not None:
            run.request.result(run.rpc_result)
        self.stop(1 if rc else 0)

    # -- perform_tests (SPDK's rpc_perform_tests)
    def perform_tests(self, request, params) -> None:
        if not self.ready:
            self.queued.append((request, params))      # answered once the bdevs exist
            return
        if self.run is not None or self.stopping:
            print("Another test is already in progress.", file=sys.stderr, flush=True)
            request.error(-32603, os.strerror(115))      # spdk_strerror(EINPROGRESS)
            return
        opts = dict(self.o)
        if params is not None:
            if not isinstance(params, dict) or any(
                    k in params and not check(params[k]) for k, (check, _) in PERFORM_TESTS_PARAMS.items()):
                request.error(-32700, "spdk_json_decode_object failed")
                return
            if params.get("workload_type"):
                opts["workload"] = params["workload_type"]
            if params.get("queue_depth"):
                opts["queue_depth"] = params["queue_depth"]
            if params.get("io_size"):
                from tools.bdevperf import UsageError, parse_size
                try:
                    opts["io_size"] = parse_size(params["io_size"])
                except UsageError:
                    print(f"Invalid IO size: {params['io_size']}", file=sys.stderr, flush=True)
            if params.get("time_in_sec"):
                opts["time"] = params["time_in_sec"]
            if params.get("rw_percentage"):
                opts["rw_percentage"], opts["mix_specified"] = params["rw_percentage"], True
            else:
                opts["mix_specified"] = False
        problem, derived = self.derive(opts)
        if problem is not None:
            print(problem, file=sys.stderr, flush=True)
            request.error(-32700, "Invalid parameters provided")
            return
        self.o = opts                     # as SPDK: a call's parameters stay for the next ones
        self.start_test(derived, request)

    def on_shutdown(self) -> None:
        self.stopping = True
        if self.run is not None:
            self.run.on_shutdown()
            return
        for request, _ in self.queued:
            request.error(-32603, "bdevperf is shutting down")
        self.queued = []
        if self.ready and self.o["wait_for_tests"]:
            # SPDK's shutdown with no job running: bdevperf_test_done prints an empty table
            print(R.final_table([], 0), flush=True)
            self.stop(0)


class Run:
    """One test (SPDK's jobs of one bdevperf_test), on the app thread."""

    def __init__(self, sess: Session, opts: dict, request=None):
        self.sess = sess
        self.o = opts
        self.n = sess.n
        self.request = request
        self.rpc_result = None
        self.specs: dict[int, dict] = {}
        self.pending = 0
        self.failed_construct: list[str] = []
        self.results: dict[int, dict] = {}
        self.timeline = []
        self.perf_poller = None
        self.periods = 0
        self.last_sample = None
        self.ema: dict[int, list] = {}
        self.rc = 0
        self.start_ns = 0
        self.collecting = False
        self.done = False
        self.shutdown = False
        J.APP["constructed"] = self.constructed
        J.APP["ended"] = self.ended

    def out(self, text: str, end: str = "\n") -> None:
        if not self.o.get("quiet"):
            print(text, end=end, flush=True)

    def error(self, text: str) -> None:
        print(f"bdevperf: {text}", file=sys.stderr, flush=True)

    # -- placement
    def job_configs(self) -> list[dict] | None:
        """SPDK's job configs: name, filenames, reactor, core mask, bs, iodepth, rwmixread,
        rw, offset, length.  None (after printing why) when a bdev is missing."""
        o, sess, cores = self.o, self.sess, self.o["cores"]
        base = {"bs": o["io_size"], "iodepth": o["queue_depth"], "rwmixread": o["rw_percentage"],
                "rw": o["workload"]}
        out = []
        if o["jobfile_configs"] is not None:
            for c in o["jobfile_configs"]:
                want = c["cpumask"]
                allowed = None if want is None else {i for i, core in enumerate(cores) if core in want}
                if want is not None and not set(want) <= set(cores):
                    print(f"cpumask for '{c['name']}' is too big", file=sys.stderr, flush=True)
                idx = sess.next_reactor(allowed)
                if idx < 0:
                    self.error(f"Job '{c['name']}': cpumask {_mask(want)} selects none of the "
                               f"app's cores ({_mask(cores)})")
                    return None
                out.append({"name": c["name"], "filenames": c["filenames"], "reactor": idx,
                            "core_mask": _mask(want if want is not None else cores),
                            "bs": c["bs"], "iodepth": c["iodepth"], "rwmixread": c["rwmixread"],
                            "rw": c["rw"], "offset": c["offset"], "length": c["length"]})
            return out
        if o["bdev"]:
            if B.get_by_name(o["bdev"]) is None:
                self.error(f"Unable to find bdev '{o['bdev']}'")
                return None
            names = [o["bdev"]]
        else:
            names = B.leaf_names()
        for name in names:
            if o["multithread"]:
                per = B.get_num_blocks(B.get_by_name(name)) // self.n
                for i in range(self.n):
                    idx = sess.next_reactor()
                    out.append(dict(base, name=name, filenames=[name], reactor=idx,
                                    core_mask=_mask([cores[idx]]), offset=i * per, length=per))
            else:
                idx = sess.next_reactor()
                out.append(dict(base, name=name, filenames=[name], reactor=idx,
                                core_mask=_mask([cores[idx]]), offset=0, length=0))
        return out

    def place_jobs(self) -> None:
        o = self.o
        configs = self.job_configs()
        if configs is None:
            self.finish(1)
            return
        me = rx.get_thread().id
        jid = 0
        for k, c in enumerate(configs):
            if o["one_thread_per_lcore"]:
                key, tname = f"lcore_{o['cores'][c['reactor']]}", f"lcore_{o['cores'][c['reactor']]}"
            else:
                key, tname = f"bdevperf.{self.sess.tests}.{k}", c["name"]
            for name in c["filenames"]:
                if B.get_by_name(name) is None:
                    self.error(f"Unable to find bdev '{name}'")
                    self.finish(1)
                    return
                w = c["rw"]
                pct = {"read": 100, "randread": 100, "write": 0, "randwrite": 0, "verify": 0,
                       "reset": 0}.get(w, c["rwmixread"])
                spec = {"id": jid, "name": name, "reactor": c["reactor"], "core_mask": c["core_mask"],
                        "offset_blocks": c["offset"], "length_blocks": c["length"], "main_tid": me,
                        "workload": w, "io_size": c["bs"], "queue_depth": c["iodepth"],
                        "rw_percentage": pct, "random": w in ("randread", "randwrite", "randrw"),
                        "verify": w in ("verify", "reset"), "reset": w == "reset",
                        "thread_key": key, "thread_name": tname}
                for opt in ("time", "reset_period_us", "continue_on_failure", "seed", "zcopy",
                            "zipf_theta", "random_map", "unique_writes", "timeout_s"):
                    spec[opt] = o[opt]
                self.specs[jid] = spec
                jid += 1
        if not self.specs:
            self.error("No jobs defined or bdevs created")
            if self.request is not None:
                self.request.error(-32602, "No jobs defined or bdevs created")
                self.request = None
            self.finish(1)
            return
        self.pending = len(self.specs)
        r = rx.current_reactor()
        for spec in self.specs.values():
            rx.send_msg(r.default_tid(spec["reactor"]), J._job_construct, spec)

    def _to_jobs(self, fn, *args, failed=False) -> None:
        for spec in self.specs.values():
            if failed or not spec.get("failed"):
                rx.send_msg(spec["tid"], fn, spec["id"], *args)

    def constructed(self, job_id, rc, message, info) -> None:
        self.pending -= 1
        self.specs[job_id]["tid"] = info.pop("tid")
        if rc:
            self.failed_construct.append(message or f"job {job_id}: error {rc}")
            self.specs[job_id]["failed"] = True
        else:
            self.specs[job_id].update(info)
        if self.pending:
            return
        if self.shutdown:       # SIGINT while jobs were being built: they end unstarted
            self._to_jobs(J._job_drain, True)
            if all(spec.get("failed") for spec in self.specs.values()):
                self.finish(1 if self.failed_construct else 0)
            return
        if self.failed_construct:
            for m in self.failed_construct:
                self.error(m)
            self._to_jobs(J._job_destroy)
            self.finish(1)
            return
        self.start()

    # -- run
    def start(self) -> None:
        o = self.o
        self.out(f"Running I/O for {o['time']} seconds...")
        period = o["show_period"] or 1
        if o["show_period"]:
            self.out("{:>107s}".format("Latency(us)"))
            self.out(R.HEADER)
        self.start_ns = time.perf_counter_ns()
        self.last_sample = (self.start_ns, 0)
        self._to_jobs(J._job_start, self.start_ns)
        self.perf_poller = rx.poller_register(self.sample, None, period * 1_000_000, "bdevperf_stats")

    def sample(self, _):
        if self.collecting or self.done:
            return rx.POLLER_IDLE
        self.collecting = True
        self.periods += 1
        rx.for_each_reactor(J._collect, [bool(self.o["show_period"]), []], self.sampled)
        return rx.POLLER_BUSY

    def sampled(self, it, status) -> None:
        self.collecting = False
        if self.done:
            return
        now = time.perf_counter_ns()
        rows = {row[0]: row for row in it.ctx[1]}
        # jobs already finished count with their final figures
        for jid, res in self.results.items():
            rows[jid] = [jid, res["io_completed"], res["io_failed"], res["io_timeout"],
                         res["lat_sum_ns"], res["hist"]]
        completed = sum(row[1] for row in rows.values())
        t_prev, c_prev = self.last_sample
        interval_iops = (completed - c_prev) * 1e9 / max(1, now - t_prev)
        self.last_sample = (now, completed)
        io_size = self.o["io_size"]
        self.timeline.append({"time_s": round((now - self.start_ns) / 1e9, 3), "iops": interval_iops,
                              "mibps": interval_iops * io_size / 2**20, "io_completed": completed})
        period = self.o["show_period"] or 1
        period_s = period * self.periods
        ema_n = self.o["ema_period"]
        stats = []
        for jid, row in sorted(rows.items()):
            spec = self.specs[jid]
            r = {"name": spec["name"], "core_mask": spec["core_mask"], "workload": spec["workload"],
                 "rw_percentage": spec["rw_percentage"], "queue_depth": spec["queue_depth"],
                 "io_size": spec["io_size"], "verify": False, "reset": spec["reset"],
                 "continue_on_failure": spec["continue_on_failure"],
                 "run_time_us": int(period_s * 1e6), "io_completed": row[1], "io_failed": row[2],
                 "io_timeout": row[3], "lat_sum_ns": row[4], "hist": [list(p) for p in row[5]]}
            st = R.job_stats(r)
            if ema_n:
                # -P: SPDK's EMA of the per-period IO/s, M = 2 / (n + 1)
                prev, ema = self.ema.get(jid, (0, 0.0))
                ema = R.ema_next(ema, (row[1] - prev) / period, ema_n)
                self.ema[jid] = (row[1], ema)
                st["iops"], st["mibps"] = ema, ema * spec["io_size"] / 2**20
            stats.append(st)
            if self.o["show_period"]:
                for line in R.job_lines(r, st):
                    self.out(line)
        t = R.totals(stats)
        if self.o["show_period"]:
            # SPDK's non-summarised dump: every job's row (stats so far), then the Total
            self.out(R.RULE)
            self.out(R.total_line(t))
            self.out("")
        else:
            self.out(R.progress_line(t["iops"], t["mibps"]), end="\r")

    def ended(self, result) -> None:
        self.results[result["id"]] = result
        if result["rc"] and not self.rc:
            self.rc = result["rc"]
        if len(self.results) < sum(1 for sp in self.specs.values() if not sp.get("failed")):
            return
        self.done = True
        if self.perf_poller is not None:
            rx.poller_unregister(self.perf_poller)
            self.perf_poller = None
        results = [self.results[j] for j in sorted(self.results)]
        self.close_timeline(results)
        if self.shutdown and self.start_ns:
            self.out("Received shutdown signal, test time was about %.6f seconds"
                     % (min(self.o["time"] * 1e6, (time.perf_counter_ns() - self.start_ns) / 1e3) / 1e6))
        self.out(R.final_table(results, self.o["latency"]))
        core_count = bin(sum(int(s["core_mask"], 16) for s in {s["core_mask"]: s for s in
                                                                self.specs.values()}.values())).count("1")
        global last_result
        last_result = {
            "json": R.perform_tests_json(results, core_count, self.timeline, terminated=self.shutdown),
            "results": results,
            "rc": self.rc,
            "mismatches": [r["mismatch"] for r in results if r.get("mismatch")],
        }
        self.rpc_result = R.perform_tests_json(results, core_count, terminated=self.shutdown,
                                               spdk_only=True)
        self.finish(1 if self.rc else 0)

    def close_timeline(self, results) -> None:
        """The last interval, from the last sample to the jobs' end (a run of N seconds
        may end just before its N-th sample)."""
        t_prev, c_prev = self.last_sample
        end_ns = self.start_ns + max(r["run_time_us"] for r in results) * 1000
        completed = sum(r["io_completed"] for r in results)
        if end_ns - t_prev >= 50_000_000 and completed > c_prev:
            iops = (completed - c_prev) * 1e9 / (end_ns - t_prev)
            self.timeline.append({"time_s": round((end_ns - self.start_ns) / 1e9, 3), "iops": iops,
                                  "mibps": iops * self.o["io_size"] / 2**20, "io_completed": completed})

    def on_shutdown(self) -> None:
        """SIGINT/SIGTERM (SPDK's spdk_bdevperf_shutdown_cb): drain every job; their
        results still arrive and the table is printed with status "terminated"."""
        if self.done or self.shutdown:
            return
        self.shutdown = True
        if self.pending:
            return              # constructed() drains them once all are built
        self._to_jobs(J._job_drain, True)

    def finish(self, rc: int) -> None:
        self.done = True
        if self.perf_poller is not None:
            rx.poller_unregister(self.perf_poller)
            self.perf_poller = None
        J.APP["constructed"] = J.APP["ended"] = None
        if not self.shutdown and not self.pending:
            # at an app shutdown the reactors exit every thread themselves, after the
            # bdev layer's finish (which may still answer on a job's thread)
            r = rx.current_reactor()
            for reactor, key in sorted({(sp["reactor"], sp["thread_key"]) for sp in self.specs.values()}):
                rx.send_msg(r.default_tid(reactor), J._job_thread_exit, key)
        self.sess.test_done(self, rc)
