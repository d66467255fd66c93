"""`ringstack bdevperf`: SPDK's bdev benchmark (examples/bdev/bdevperf) on ringstack.

    ringstack bdevperf -q 128 -o 4096 -w randread -t 5 [-m 0x3] [-C] [-c config.json]

Flow (SPDK's, across reactor processes):

1. The app thread (reactor 0) creates the bdevs: the JSON config of ``-c``, else the embedded
   default (one malloc bdev, :data:`tools.bdevperf_bdev.DEFAULT_BDEV`).
2. Job placement: one job per leaf bdev (or ``-T``), assigned round-robin over the reactors
   of ``-m``; with ``-C`` every reactor runs a job on every bdev, each on its own LBA slice
   (``num_blocks / reactors`` blocks), as SPDK's multithread mode.
3. Each job is built on its reactor (open, channel, tasks and buffers), then all start;
   a job resubmits from its completion callback, keeps ``-q`` I/Os in flight, handles
   ``-ENOMEM`` with ``queue_io_wait``, and drains at ``-t``: no new I/O, wait for the
   in-flight ones, then report to the app thread.
4. The app thread prints a progress line every second (``-S N``: the full table every N s),
   the final table per job and Total, ``-l`` percentiles, and ``--json`` writes SPDK's
   ``perform_tests`` result plus the per-second timeline and latency histograms.

The I/O path (one completion = one call of the job's ``done`` closure) is written for speed:
no allocation, one clock read per I/O (the completion time is also the next submit time),
random offsets from a precomputed table, counters in closure cells, the latency histogram
bucket from one ``bit_length``.  Everything bdev-related goes through
:mod:`tools.bdevperf_bdev`.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import re
import struct
import sys
import time

import reactor as rx
from tools import bdevperf_bdev as B
from tools import bdevperf_report as R

log = logging.getLogger("ringstack.bdevperf")

RAND_TABLE = 1 << 16          # precomputed random offsets per job
DEFAULT_RESET_PERIOD_S = 10   # SPDK's reset_job period


class UsageError(Exception):
    """A bad flag: printed as one line, exit status 1."""


# =========================================================================== option parsing
def parse_size(text: str) -> int:
    """``4096``, ``4k``, ``4K``, ``4KiB``, ``64KB``, ``1M`` -> bytes (SPDK's parse_capacity)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:([kKmMgG])(?:i?[bB])?|[bB])?\s*", str(text))
    if not m:
        raise UsageError(f"invalid IO size {text!r}: expected bytes like 4096, 4k or 64KiB")
    n = int(m.group(1)) << {None: 0, "k": 10, "m": 20, "g": 30}[(m.group(2) or "").lower() or None]
    if n <= 0:
        raise UsageError(f"invalid IO size {text!r}: must be greater than 0")
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


def add_arguments(p) -> None:
    p.add_argument("-q", dest="queue_depth", type=_nonneg_int("-q"), metavar="DEPTH", help="io depth")
    p.add_argument("-o", dest="io_size", metavar="SIZE", help="io size in bytes (4096, 4k, 64KiB)")
    p.add_argument("-w", dest="workload", metavar="TYPE",
                   help="io pattern type, one of (" + ", ".join(R.WORKLOADS) + ")")
    p.add_argument("-t", dest="time", type=_nonneg_int("-t"), metavar="SECONDS", help="time in seconds")
    p.add_argument("-M", dest="rw_percentage", type=_nonneg_int("-M"), metavar="PERCENT",
                   help="rwmixread (100 for reads, 0 for writes); rw and randrw only")
    p.add_argument("-m", dest="cpumask", default="0x1", metavar="MASK",
                   help="reactor core mask (0x3, [0,1]); default 0x1")
    p.add_argument("-c", dest="config", metavar="CONFIG.json", help="SPDK JSON config creating the bdevs")
    p.add_argument("-T", dest="bdev", metavar="BDEV", help="bdev to run against (default: all leaf bdevs)")
    p.add_argument("-C", dest="multithread", action="store_true",
                   help="every core drives every bdev (each on its own LBA slice)")
    p.add_argument("-S", dest="show_period", type=_nonneg_int("-S"), metavar="SECONDS",
                   help="print the full table every SECONDS (default: a summary line each second)")
    p.add_argument("-l", dest="latency", action="count", default=0,
                   help="latency percentiles (-ll: also the histogram)")
    p.add_argument("-f", dest="continue_on_failure", action="store_true",
                   help="continue processing I/O after failures")
    p.add_argument("--json", dest="json", metavar="FILE", help="write the perform_tests result as JSON")
    p.add_argument("--reset-period", dest="reset_period", type=float, metavar="SECONDS",
                   help="reset workload: seconds between resets (default: 10, or half of -t "
                        "when -t is shorter)")
    p.add_argument("--mode", choices=("adaptive", "poll"), default="adaptive",
                   help="reactor mode (default adaptive: reactors without jobs sleep)")
    p.add_argument("--seed", type=int, help="seed of the offset generators (default: random)")


def add_parser(sub) -> None:
    p = sub.add_parser("bdevperf", help="SPDK's bdevperf on ringstack",
                       description="SPDK's bdev benchmark on ringstack reactors.")
    add_arguments(p)

    p.set_defaults(func=run)


def check_options(a) -> dict:
    """SPDK's verify_test_params plus ours; returns the options as a msgpack-able dict."""
    from reactor.app import check_cores_available, parse_cpumask
    if not a.queue_depth:
        raise UsageError("-q (queue depth) is required and must be greater than 0")
    if a.io_size is None:
        raise UsageError("-o (IO size) is required")
    io_size = parse_size(a.io_size)
    if not a.workload:
        raise UsageError("-w (workload) is required: one of " + ", ".join(R.WORKLOADS))
    if a.workload not in R.WORKLOADS:
        raise UsageError(f"unknown workload {a.workload!r}: -w must be one of " + ", ".join(R.WORKLOADS))
    if not a.time:
        raise UsageError("-t (run time in seconds) is required and must be greater than 0")
    mixed = a.workload in ("rw", "randrw")
    if a.rw_percentage is not None and not mixed:
        raise UsageError(f"-M is only valid with -w rw or randrw (not {a.workload})")
    if mixed and (a.rw_percentage is None or not 0 <= a.rw_percentage <= 100):
        raise UsageError("-M must be specified to value from 0 to 100 for rw or randrw")
    if a.show_period is not None and a.show_period <= 0:
        raise UsageError("-S must be greater than 0")
    try:
        cores = parse_cpumask(a.cpumask)
        check_cores_available(cores)
    except ValueError as exc:
        raise UsageError(f"bad -m: {exc}") from None
    if a.config is not None:
        from reactor.rpc.config import ConfigError, read_config
        try:
            config = read_config(a.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        problem = B.check_config(config)
        if problem:
            raise UsageError(f"{a.config}: {problem}")
    if a.json:
        d = os.path.dirname(os.path.abspath(a.json))
        if not os.path.isdir(d) or not os.access(d, os.W_OK) or os.path.isdir(a.json):
            raise UsageError(f"cannot write --json {a.json}: no writable directory {d}"
                             if not os.path.isdir(a.json) else f"--json {a.json} is a directory")
    if a.reset_period is not None and a.reset_period <= 0:
        raise UsageError("--reset-period must be greater than 0")
    w = a.workload
    rw_pct = {"read": 100, "randread": 100, "write": 0, "randwrite": 0, "verify": 0, "reset": 0}.get(
        w, a.rw_percentage if mixed else 0)
    reset_period = a.reset_period or min(DEFAULT_RESET_PERIOD_S, max(a.time / 2, 0.5))
    return {
        "queue_depth": a.queue_depth, "io_size": io_size, "workload": w, "time": a.time,
        "rw_percentage": rw_pct, "cores": cores, "cpumask": a.cpumask, "config": a.config,
        "config_dict": None, "bdev": a.bdev, "multithread": bool(a.multithread),
        "show_period": a.show_period, "latency": a.latency,
        "continue_on_failure": bool(a.continue_on_failure),
        "random": w in ("randread", "randwrite", "randrw"),
        "verify": w in ("verify", "reset"), "reset": w == "reset",
        "reset_period_us": int(reset_period * 1e6), "mode": a.mode,
        "seed": a.seed if a.seed is not None else random.randrange(1 << 30),
        "quiet": False,
    }


# ================================================================================ the job
# One job per (bdev, reactor[, slice]); lives on its reactor's default thread.  Jobs are
# kept per reactor (several in-process reactors share this module in the threads baseline).
def _jobs() -> dict:
    return rx.current_reactor().locals.setdefault("bdevperf.jobs", {})


class Task:
    """SPDK's bdevperf_task, preallocated: never created on the I/O path."""

    __slots__ = ("t0", "offset", "buf", "view", "vbuf", "vview", "wait", "stamp")

    def __init__(self):
        self.t0 = 0
        self.offset = 0
        self.buf = self.view = self.vbuf = self.vview = None
        self.wait = None
        self.stamp = 0


class Job:
    def __init__(self, spec: dict):
        self.spec = spec
        self.id = spec["id"]
        self.name = spec["name"]
        self.desc = self.ch = self.bdev = None
        self.tasks: list[Task] = []
        self.spare: list[Task] = []
        self.hist = [0] * R.HIST_SIZE
        self.timers = []
        self.start_ns = 0
        self.run_time_us = 0
        self.rc = 0
        self.errors: list[str] = []
        self.mismatch = None
        self.ended = False
        self.shutting_down = False
        self.drain = self.empty       # before start: nothing in flight, end at once
        self.nomem_waits = 0
        self.resets = 0
        self.counters = lambda: (0, 0, 0)     # (completed, failed, timeout), replaced at start
        self.kick = lambda: None
        self.lat_sum = lambda: 0
        self.info = {}

    # ---------------------------------------------------------------- construction
    def construct(self) -> tuple[int, str | None]:
        s = self.spec
        rc, desc = B.open_bdev(self.name, True, _on_bdev_event, self.id)
        if rc:
            return rc, f"Could not open leaf bdev {self.name}, error={rc}"
        self.desc = desc
        bdev = self.bdev = B.desc_get_bdev(desc)
        bs = B.get_block_size(bdev)
        io_size = s["io_size"]
        if io_size % bs:
            return -errno.ENOTSUP, (f"IO size ({io_size}) is not a multiple of the block size of bdev "
                                    f"{self.name} ({bs})")
        w = s["workload"]
        needed = {"unmap": B.IO_TYPE_UNMAP, "flush": B.IO_TYPE_FLUSH,
                  "write_zeroes": B.IO_TYPE_WRITE_ZEROES, "reset": B.IO_TYPE_RESET}.get(w)
        if needed is not None and not B.io_type_supported(bdev, needed):
            return -errno.ENOTSUP, f"Skipping {self.name} because it does not support {w}"
        self.block_size = bs
        self.io_size_blocks = io_size // bs
        if s["length_blocks"]:
            self.size_in_ios = s["length_blocks"] // self.io_size_blocks
            self.ios_base = s["offset_blocks"] // self.io_size_blocks
        else:
            self.size_in_ios = B.get_num_blocks(bdev) // self.io_size_blocks
            self.ios_base = 0
        if self.size_in_ios == 0:
            return -errno.EINVAL, (f"bdev {self.name} ({B.get_num_blocks(bdev)} blocks) is too small "
                                   f"for {io_size}-byte I/O" + (" per core slice" if s["length_blocks"] else ""))
        qd = s["queue_depth"]
        if s["verify"] and qd > self.size_in_ios:
            log.warning("verify job %s: queue depth %d limited to %d (the number of distinct I/O "
                        "slots)", self.name, qd, self.size_in_ios)
            qd = self.size_in_ios
        self.queue_depth = qd
        ch = B.get_io_channel(desc)
        if ch is None:
            return -errno.ENOMEM, f"Could not get io_channel for device {self.name}"
        self.ch = ch
        buf_size = io_size
        uses_buf = w not in ("unmap", "flush", "write_zeroes")
        for _ in range(qd):
            t = Task()
            if uses_buf:
                t.buf, t.view = B.dma_malloc(buf_size)
                if s["verify"]:
                    t.vbuf, t.vview = B.dma_malloc(buf_size)
            t.wait = B.IoWaitEntry(bdev, None, t)
            self.tasks.append(t)
        if s["reset"]:
            t = Task()
            t.wait = B.IoWaitEntry(bdev, None, t)
            self.spare.append(t)
        # Offsets (and the read/write draw of a mix) come from tables made here, before the
        # clock starts: the I/O path then only indexes them.
        self.rng = rng = random.Random(s["seed"] ^ (self.id * 0x9E3779B1))
        nb = self.io_size_blocks
        base_blk = self.ios_base * nb
        size = self.size_in_ios
        rand = rng.random
        self.rand_table = ([base_blk + int(rand() * size) * nb for _ in range(RAND_TABLE)]
                           if s["random"] else None)
        pct = s["rw_percentage"]
        self.kinds = ([rand() * 100 < pct for _ in range(RAND_TABLE)]
                      if w in ("rw", "randrw") and 0 < pct < 100 else None)
        self.info = {"queue_depth": qd, "size_in_ios": self.size_in_ios, "ios_base": self.ios_base}
        return 0, None

    def destroy(self) -> None:
        for t in self.tasks:
            for b in (t.buf, t.vbuf):
                if b is not None:
                    B.dma_free(b)
            t.view = t.vview = None
        if self.ch is not None:
            B.put_io_channel(self.ch)
            self.ch = None
        if self.desc is not None:
            B.close(self.desc)
            self.desc = None

    # ------------------------------------------------------------------------- run
    def start(self, start_ns: int) -> None:
        if self.ended:          # drained (shutdown) before it started
            return
        s = self.spec
        self.start_ns = start_ns
        if s["verify"]:
            _build_verify(self)
        else:
            _build_rw(self)
        self.timers.append(rx.poller_register(self._drain_timer, None, s["time"] * 1_000_000,
                                              "bdevperf_job_drain"))
        if s["reset"]:
            self.timers.append(rx.poller_register(self._reset_timer, None, s["reset_period_us"],
                                                  "bdevperf_reset"))
        self.kick()

    def _drain_timer(self, _):
        self.drain()
        return rx.POLLER_BUSY

    def stop_timers(self) -> None:
        for p in self.timers:
            rx.poller_unregister(p)
        self.timers = []

    def fail(self, rc: int, message: str | None) -> None:
        """A run-ending error (SPDK: bdevperf_job_drain + g_run_rc)."""
        if message:
            print(message, flush=True)
            self.errors.append(message)
        if not self.rc:
            self.rc = rc
        self.drain()

    def _reset_timer(self, _):
        if not self.spare:
            return rx.POLLER_IDLE
        t = self.spare.pop()
        rc = B.reset(self.desc, self.ch, self._reset_done, t)
        if rc:
            self.spare.append(t)
            self.fail(-1, f"Reset failed: {rc}")
        return rx.POLLER_BUSY

    def _reset_done(self, bdev_io, success, task):
        B.free_io(bdev_io)
        self.spare.append(task)
        self.resets += 1
        if not success:
            self.fail(-1, f"Reset blockdev={self.name} failed")

    def empty(self) -> None:
        """Every I/O is back: report to the app thread (SPDK's bdevperf_job_empty)."""
        if self.ended:
            return
        self.ended = True
        self.stop_timers()
        self.run_time_us = (time.perf_counter_ns() - self.start_ns) // 1000 if self.start_ns else 0
        completed, failed, timeout = self.counters()
        s = self.spec
        result = {
            "id": self.id, "name": self.name, "core_mask": s["core_mask"], "workload": s["workload"],
            "rw_percentage": s["rw_percentage"], "queue_depth": self.queue_depth,
            "io_size": s["io_size"], "verify": s["verify"], "reset": s["reset"],
            "continue_on_failure": s["continue_on_failure"], "ios_base": self.ios_base,
            "size_in_ios": self.size_in_ios, "run_time_us": self.run_time_us,
            "io_completed": completed, "io_failed": failed, "io_timeout": timeout,
            "lat_sum_ns": self.lat_sum(), "hist": R.sparse(self.hist), "rc": self.rc,
            "errors": self.errors, "mismatch": self.mismatch, "reactor": rx.current_reactor().index,
            "nomem_waits": self.nomem_waits, "resets": self.resets,
        }
        self.destroy()
        _jobs().pop(self.id, None)
        rx.send_msg(s["main_tid"], _job_ended, result)


def _build_rw(job: Job) -> None:
    """The completion loop of every workload but verify/reset: reads, writes, their mix,
    unmap, flush, write_zeroes; random (table) or sequential offsets."""
    s = job.spec
    w = s["workload"]
    desc, ch, bdev = job.desc, job.ch, job.bdev
    nb = job.io_size_blocks
    hist = job.hist
    clock = time.perf_counter_ns
    free_io = B.free_io
    queue_io_wait = B.queue_io_wait
    read_blocks, write_blocks = B.read_blocks, B.write_blocks
    tasks = job.tasks
    continue_on_failure = s["continue_on_failure"]
    rng = job.rng
    base_blk = job.ios_base * nb
    size = job.size_in_ios
    rand = s["random"]
    table = job.rand_table
    pct = s["rw_percentage"]
    mixed = job.kinds is not None
    kinds = job.kinds
    nobuf = {"unmap": B.unmap_blocks, "flush": B.flush_blocks, "write_zeroes": B.write_zeroes_blocks}.get(w)
    if nobuf is None:
        fixed = read_blocks if pct == 100 else write_blocks
    else:
        fixed = nobuf
    ENOMEM = -errno.ENOMEM

    completed = failed = 0
    lat_sum = 0
    ri = 0
    seq = base_blk
    seq_end = base_blk + size * nb
    inflight = 0
    draining = False

    # drain/end_one are repeated in _build_verify on purpose: they share this builder's
    # inflight/draining cells, which the per-I/O completions read as plain closure variables.
    def drain():
        nonlocal draining
        if draining:
            return
        draining = True
        job.stop_timers()
        if not inflight:
            job.empty()

    def end_one():
        nonlocal inflight
        inflight -= 1
        if not inflight:
            job.empty()

    def submit(task, now):
        # returns rc of the submit; the caller deals with it
        nonlocal ri, seq
        if rand:
            off = table[ri]
        else:
            off = seq
            seq += nb
            if seq >= seq_end:
                seq = base_blk
        if mixed:
            fn = read_blocks if kinds[ri] else write_blocks
        else:
            fn = fixed
        ri += 1
        if ri == RAND_TABLE:
            ri = 0
        task.offset = off
        task.t0 = now
        if nobuf is None:
            return fn(desc, ch, task.buf, off, nb, done, task)
        return fn(desc, ch, off, nb, done, task)

    def resubmit(task):       # io_wait callback: a bdev_io is free again
        if draining:
            end_one()
            return
        rc = fn_retry(task)
        if rc:
            submit_error(task, rc)

    def fn_retry(task):
        task.t0 = clock()
        off = task.offset
        if nobuf is not None:
            return nobuf(desc, ch, off, nb, done, task)
        if mixed:
            # the kind drawn for this task is lost; draw again (rare path)
            return (read_blocks if rng.randrange(100) < pct else write_blocks)(
                desc, ch, task.buf, off, nb, done, task)
        return fixed(desc, ch, task.buf, off, nb, done, task)

    def submit_error(task, rc):
        if rc == ENOMEM:
            task.wait.cb_fn = resubmit
            if queue_io_wait(bdev, ch, task.wait) == 0:
                job.nomem_waits += 1
                return
        job.fail(rc, f"Failed to submit bdev_io: {rc}")
        end_one()

    def done(bdev_io, success, task):
        nonlocal completed, failed, lat_sum, ri, seq
        now = clock()
        lat = now - task.t0
        free_io(bdev_io)
        lat_sum += lat
        b = lat.bit_length()
        if b > 7:
            hist[((b - 7) << 6) + (lat >> (b - 7))] += 1
        else:
            hist[lat] += 1
        if success:
            completed += 1
        else:
            failed += 1
            if not continue_on_failure:
                job.fail(-1, f"task offset: {task.offset} on job bdev={job.name} fails")
        if draining:
            end_one()
            return
        # the next I/O (submit() inlined on purpose: per-I/O hot path)
        if rand:
            off = table[ri]
        else:
            off = seq
            seq += nb
            if seq >= seq_end:
                seq = base_blk
        if mixed:
            fn = read_blocks if kinds[ri] else write_blocks
        else:
            fn = fixed
        ri += 1
        if ri == RAND_TABLE:
            ri = 0
        task.offset = off
        task.t0 = now
        if nobuf is None:
            rc = fn(desc, ch, task.buf, off, nb, done, task)
        else:
            rc = fn(desc, ch, off, nb, done, task)
        if rc:
            submit_error(task, rc)

    if rand and not mixed and nobuf is None:
        # The benchmark case (randread/randwrite): the same loop without the branches.
        # Inlined on purpose (per-I/O hot path): keep it in step with the general done.
        mask = RAND_TABLE - 1

        def done(bdev_io, success, task):  # noqa: F811 - replaces the general one
            nonlocal completed, failed, lat_sum, ri
            now = clock()
            lat = now - task.t0
            free_io(bdev_io)
            lat_sum += lat
            b = lat.bit_length()
            if b > 7:
                hist[((b - 7) << 6) + (lat >> (b - 7))] += 1
            else:
                hist[lat] += 1
            if success:
                completed += 1
            else:
                failed += 1
                if not continue_on_failure:
                    job.fail(-1, f"task offset: {task.offset} on job bdev={job.name} fails")
            if draining:
                end_one()
                return
            off = table[ri]
            ri = (ri + 1) & mask
            task.offset = off
            task.t0 = now
            rc = fixed(desc, ch, task.buf, off, nb, done, task)
            if rc:
                submit_error(task, rc)

    def kick():
        nonlocal inflight
        now = clock()
        for t in tasks:
            inflight += 1
            rc = submit(t, now)
            if rc:
                submit_error(t, rc)
                if draining:
                    break

    job.kick = kick
    job.drain = drain
    job.counters = lambda: (completed, failed, 0)
    job.lat_sum = lambda: lat_sum


_PATTERN = struct.Struct("<QQ")


def _build_verify(job: Job) -> None:
    """verify and reset: write a pattern naming the block and the write, read it back,
    compare.  Offsets are sequential and never two in flight on one I/O slot (SPDK's
    ``outstanding`` bit array), so a read always sees its own write."""
    s = job.spec
    desc, ch, bdev = job.desc, job.ch, job.bdev
    nb = job.io_size_blocks
    bs = job.block_size
    reps = bs // 16
    tail = bs - reps * 16
    nbytes = nb * bs
    hist = job.hist
    clock = time.perf_counter_ns
    free_io = B.free_io
    queue_io_wait = B.queue_io_wait
    read_blocks, write_blocks = B.read_blocks, B.write_blocks
    tasks = job.tasks
    tolerate = s["continue_on_failure"] or s["reset"]
    base = job.ios_base
    size = job.size_in_ios
    outstanding = set()
    stamp0 = (s["seed"] & 0xFFFF) << 48 | (job.id & 0xFFFF) << 32
    ENOMEM = -errno.ENOMEM

    completed = failed = 0
    lat_sum = 0
    nxt = 0
    writes = 0
    inflight = 0
    draining = False

    # drain/end_one as in _build_rw, repeated on purpose (see there).
    def drain():
        nonlocal draining
        if draining:
            return
        draining = True
        job.stop_timers()
        if not inflight:
            job.empty()

    def end_one():
        nonlocal inflight
        inflight -= 1
        if not inflight:
            job.empty()

    def pattern(offset_blocks, stamp):
        pack = _PATTERN.pack
        pad = b"\xa5" * tail
        return b"".join(pack(offset_blocks + i, stamp) * reps + pad for i in range(nb))

    def write_next(task):
        nonlocal nxt, writes
        slot = nxt
        while slot in outstanding:
            slot += 1
            if slot == size:
                slot = 0
        nxt = slot + 1
        if nxt == size:
            nxt = 0
        outstanding.add(slot)
        off = (slot + base) * nb
        writes += 1
        task.stamp = stamp0 | (writes & 0xFFFFFFFF)
        task.offset = off
        task.view[:nbytes] = pattern(off, task.stamp)
        task.t0 = clock()
        rc = write_blocks(desc, ch, task.buf, off, nb, write_done, task)
        if rc:
            submit_error(task, rc, write_retry)

    def write_retry(task):
        if draining:
            release(task)
            end_one()
            return
        task.t0 = clock()
        rc = write_blocks(desc, ch, task.buf, task.offset, nb, write_done, task)
        if rc:
            submit_error(task, rc, write_retry)

    def read_back(task):
        if draining and job.rc:
            release(task)
            end_one()
            return
        rc = read_blocks(desc, ch, task.vbuf, task.offset, nb, read_done, task)
        if rc:
            submit_error(task, rc, read_back)

    def release(task):
        outstanding.discard(task.offset // nb - base)

    def submit_error(task, rc, retry):
        if rc == ENOMEM:
            task.wait.cb_fn = retry
            if queue_io_wait(bdev, ch, task.wait) == 0:
                job.nomem_waits += 1
                return
        release(task)
        job.fail(rc, f"Failed to submit bdev_io: {rc}")
        end_one()

    def account(task, success):
        nonlocal completed, failed, lat_sum
        lat = clock() - task.t0
        lat_sum += lat
        hist[R.bucket_index(lat)] += 1
        if success:
            completed += 1
        else:
            failed += 1
            if not tolerate:
                job.fail(-1, f"task offset: {task.offset} on job bdev={job.name} fails")

    def write_done(bdev_io, success, task):
        free_io(bdev_io)
        if success:
            read_back(task)
            return
        account(task, False)
        finish(task)

    def read_done(bdev_io, success, task):
        free_io(bdev_io)
        if success:
            want = pattern(task.offset, task.stamp)
            if task.vview[:nbytes] != want:
                report_mismatch(task, want)
        account(task, success)
        finish(task)

    def report_mismatch(task, want):
        got = task.vview[:nbytes]
        first = next(i for i in range(nb) if got[i * bs:(i + 1) * bs] != want[i * bs:(i + 1) * bs])
        blk = task.offset + first
        within = next(k for k in range(bs) if got[first * bs + k] != want[first * bs + k])
        msg = (f"Buffer mismatch! Target: {job.name} Disk Offset: {task.offset} "
               f"(first bad block {blk}, byte offset {blk * bs + within}: "
               f"read 0x{got[first * bs + within]:02x}, wrote 0x{want[first * bs + within]:02x})")
        if job.mismatch is None:
            job.mismatch = {"target": job.name, "offset_blocks": task.offset, "block": blk,
                            "byte_offset": blk * bs + within}
        job.fail(-1, msg)

    def finish(task):
        release(task)
        if draining:
            end_one()
            return
        write_next(task)

    def kick():
        nonlocal inflight
        for t in tasks:
            inflight += 1
            write_next(t)
            if draining:
                break

    job.kick = kick
    job.drain = drain
    job.counters = lambda: (completed, failed, 0)
    job.lat_sum = lambda: lat_sum


def _on_bdev_event(event_type, bdev, job_id):
    """Hot-remove: drain the job (SPDK's bdevperf_bdev_removed).  During an app shutdown the
    bdev layer removes every bdev; that is the end of the run, not an error."""
    job = _jobs().get(job_id)
    if job is not None and str(event_type).lower().endswith("remove"):
        if job.shutting_down:
            job.drain()
        else:
            job.fail(-errno.ENODEV, f"bdev {job.name} was removed")


# ------------------------------------------------------------------ job-side handlers
@rx.remote("bdevperf.job_construct")
def _job_construct(spec):
    spec = dict(spec)
    job = Job(spec)
    try:
        rc, msg = job.construct()
    except Exception as exc:          # a bug or an unexpected backend error: report, don't hang
        log.exception("job %s construct", spec["name"])
        rc, msg = -errno.EIO, f"job {spec['name']}: {exc}"
    if rc:
        job.destroy()
    else:
        _jobs()[job.id] = job
    rx.send_msg(spec["main_tid"], _job_constructed, job.id, rc, msg, job.info)


@rx.remote("bdevperf.job_start")
def _job_start(job_id, start_ns):
    job = _jobs().get(job_id)
    if job is not None:
        job.start(start_ns)


@rx.remote("bdevperf.job_drain")
def _job_drain(job_id, shutdown=False):
    job = _jobs().get(job_id)
    if job is not None:
        job.shutting_down = job.shutting_down or shutdown
        job.drain()


@rx.remote("bdevperf.job_destroy")
def _job_destroy(job_id):
    job = _jobs().pop(job_id, None)
    if job is not None:
        job.destroy()


@rx.remote("bdevperf.collect")
def _collect(it):
    full = it.ctx[0]
    for job in list(_jobs().values()):
        c, f, t = job.counters()
        it.ctx[1].append([job.id, c, f, t, job.lat_sum(), R.sparse(job.hist) if full else []])
    rx.for_each_channel_continue(it, 0)


# ============================================================================ the app side
_run: "Run | None" = None
#: The last run's outcome (read by run() / bench_scaling after App.run returns).
last_result: dict | None = None


class Run:
    """Lives on the app thread: builds the jobs, prints, gathers (SPDK's main thread)."""

    def __init__(self, opts: dict, n_reactors: int, finish):
        self.o = opts
        self.n = n_reactors
        self.finish_cb = finish
        self.specs: dict[int, dict] = {}
        self.pending = 0
        self.failed_construct: list[str] = []
        self.results: dict[int, dict] = {}
        self.timeline = []
        self.perf_poller = None
        self.periods = 0
        self.last_sample = None
        self.rc = 0
        self.start_ns = 0
        self.collecting = False
        self.done = False
        self.shutdown = False

    def out(self, text: str) -> None:
        if not self.o.get("quiet"):
            print(text, flush=True)

    def error(self, text: str) -> None:
        print(f"bdevperf: {text}", file=sys.stderr, flush=True)

    # -- 1. bdevs
    def begin(self) -> None:
        if self.o.get("config_dict") is not None:
            B.load_config_dict(self.o["config_dict"], self.bdevs_ready)
        elif self.o.get("config"):
            B.load_config(self.o["config"], self.bdevs_ready)
        else:
            B.create_default(self.bdevs_ready)

    def bdevs_ready(self, rc, message) -> None:
        if rc:
            self.error(message or f"bdev set-up failed: {rc}")
            self.finish(1)
            return
        self.place_jobs()

    # -- 2. placement
    def place_jobs(self) -> None:
        o = self.o
        if o["bdev"]:
            if B.get_by_name(o["bdev"]) is None:
                self.error(f"Unable to find bdev '{o['bdev']}'")
                self.finish(1)
                return
            names = [o["bdev"]]
        else:
            names = B.leaf_names()
        if not names:
            self.error("No jobs defined or bdevs created")
            self.finish(1)
            return
        r = rx.current_reactor()
        specs = []
        cores = o["cores"]
        if o["multithread"]:
            for name in names:
                per = B.get_num_blocks(B.get_by_name(name)) // self.n
                for i in range(self.n):
                    specs.append((name, i, i * per, per))
        else:
            for k, name in enumerate(names):
                specs.append((name, k % self.n, 0, 0))
        me = rx.get_thread().id
        for jid, (name, reactor_index, off, length) in enumerate(specs):
            spec = {"id": jid, "name": name, "reactor": reactor_index, "core_mask": hex(1 << cores[reactor_index]),
                    "offset_blocks": off, "length_blocks": length, "main_tid": me}
            for k in ("workload", "io_size", "queue_depth", "rw_percentage", "time", "random", "verify",
                      "reset", "reset_period_us", "continue_on_failure", "seed"):
                spec[k] = o[k]
            self.specs[jid] = spec
        self.pending = len(self.specs)
        for spec in self.specs.values():
            rx.send_msg(r.default_tid(spec["reactor"]), _job_construct, spec)

    def constructed(self, job_id, rc, message, info) -> None:
        self.pending -= 1
        if rc:
            self.failed_construct.append(message or f"job {job_id}: error {rc}")
            self.specs[job_id]["failed"] = True
        else:
            self.specs[job_id].update(info)
        if self.pending:
            return
        if self.shutdown:       # SIGINT while jobs were being built: they end unstarted
            r = rx.current_reactor()
            for spec in self.specs.values():
                if not spec.get("failed"):
                    rx.send_msg(r.default_tid(spec["reactor"]), _job_drain, spec["id"], True)
            if all(spec.get("failed") for spec in self.specs.values()):
                self.finish(1 if self.failed_construct else 0)
            return
        if self.failed_construct:
            for m in self.failed_construct:
                self.error(m)
            r = rx.current_reactor()
            for spec in self.specs.values():
                if not spec.get("failed"):
                    rx.send_msg(r.default_tid(spec["reactor"]), _job_destroy, spec["id"])
            self.finish(1)
            return
        self.start()

    # -- 3. run
    def start(self) -> None:
        o = self.o
        self.out(f"Running I/O for {o['time']} seconds...")
        period = o["show_period"] or 1
        if o["show_period"]:
            self.out("{:>107s}".format("Latency(us)"))
            self.out(R.HEADER)
        self.start_ns = time.perf_counter_ns()
        self.last_sample = (self.start_ns, 0)
        self.pending = len(self.specs)
        r = rx.current_reactor()
        for spec in self.specs.values():
            rx.send_msg(r.default_tid(spec["reactor"]), _job_start, spec["id"], self.start_ns)
        self.perf_poller = rx.poller_register(self.sample, None, period * 1_000_000, "bdevperf_stats")

    def sample(self, _):
        if self.collecting or self.done:
            return rx.POLLER_IDLE
        self.collecting = True
        self.periods += 1
        rx.for_each_reactor(_collect, [bool(self.o["show_period"]), []], self.sampled)
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
        interval = max(1, now - t_prev)
        interval_iops = (completed - c_prev) * 1e9 / interval
        self.last_sample = (now, completed)
        elapsed = (now - self.start_ns) / 1e9
        io_size = self.o["io_size"]
        self.timeline.append({"time_s": round(elapsed, 3), "iops": interval_iops,
                              "mibps": interval_iops * io_size / 2**20, "io_completed": completed})
        period_s = (self.o["show_period"] or 1) * self.periods
        cma = completed / period_s
        if self.o["show_period"]:
            # SPDK's non-summarised dump: every job's row (stats so far), then the Total
            stats = []
            for jid, row in sorted(rows.items()):
                spec = self.specs[jid]
                r = {"name": spec["name"], "core_mask": spec["core_mask"], "workload": spec["workload"],
                     "rw_percentage": spec["rw_percentage"], "queue_depth": spec["queue_depth"],
                     "io_size": io_size, "verify": False, "reset": spec["reset"],
                     "continue_on_failure": spec["continue_on_failure"],
                     "run_time_us": int(period_s * 1e6), "io_completed": row[1], "io_failed": row[2],
                     "io_timeout": row[3], "lat_sum_ns": row[4], "hist": [list(p) for p in row[5]]}
                st = R.job_stats(r)
                stats.append(st)
                for line in R.job_lines(r, st):
                    self.out(line)
            self.out(R.RULE)
            self.out(R.total_line(R.totals(stats)))
            self.out("")
        else:
            self.out(R.progress_line(cma, cma * io_size / 2**20))

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
        self.out(R.final_table(results, self.o["latency"]))
        mismatches = [r["mismatch"] for r in results if r.get("mismatch")]
        global last_result
        last_result = {
            "json": R.perform_tests_json(results, len({s["reactor"] for s in self.specs.values()}),
                                         self.timeline, terminated=self.shutdown),
            "results": results,
            "rc": self.rc,
            "mismatches": mismatches,
        }
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
        if self.start_ns:
            self.out("Received shutdown signal, test time was about %.6f seconds"
                     % ((time.perf_counter_ns() - self.start_ns) / 1e9))
        r = rx.current_reactor()
        for spec in self.specs.values():
            if not spec.get("failed"):
                rx.send_msg(r.default_tid(spec["reactor"]), _job_drain, spec["id"], True)

    def finish(self, rc: int) -> None:
        self.done = True
        if self.perf_poller is not None:
            rx.poller_unregister(self.perf_poller)
            self.perf_poller = None
        self.finish_cb(rc)


@rx.remote("bdevperf.job_constructed")
def _job_constructed(job_id, rc, message, info):
    if _run is not None:
        _run.constructed(job_id, rc, message, dict(info))


@rx.remote("bdevperf.job_ended")
def _job_ended(result):
    if _run is not None:
        result = dict(result)
        result["hist"] = [list(p) for p in result["hist"]]
        result["errors"] = list(result["errors"])
        if result.get("mismatch") is not None:
            result["mismatch"] = dict(result["mismatch"])
        _run.ended(result)


def _on_app_shutdown():
    if _run is not None:
        _run.on_shutdown()


def _app_main(opts):
    from reactor.app import app_stop
    global _run
    r = rx.current_reactor()
    _run = Run(opts, r.n_reactors, app_stop)
    _run.begin()


def run_app(opts: dict) -> int:
    """Run bdevperf in reactor processes (one per core of ``opts['cores']``); returns the
    exit code.  The outcome is left in :data:`last_result`."""
    from reactor.app import App
    global _run, last_result
    last_result = None
    extra = B.prepare_real()
    imports = ["tools.bdevperf"] + [m for m in extra if m != "tools.bdevperf"]
    app_kw = {}
    tmpdir = None
    if opts.get("config") or opts.get("config_dict"):
        from reactor.rpc.config import read_config
        config = opts["config_dict"] if opts.get("config_dict") is not None else read_config(opts["config"])
        startup, rest = B.split_startup(config)
        opts = dict(opts, config=None, config_dict=rest)
        if startup is not None:
            # STARTUP-only entries (bdev_set_options...) go through the app, which replays
            # them before it initialises the bdev layer; that needs its RPC server, here on
            # a private socket for the run.
            import tempfile
            tmpdir = tempfile.mkdtemp(prefix="bdevperf.")
            app_kw = {"config": startup, "rpc_socket": os.path.join(tmpdir, "rpc.sock")}
    try:
        rc = App(opts["cores"], mode=opts["mode"], imports=imports, name="bdevperf",
                 shutdown_cb=_on_app_shutdown, **app_kw).run(_app_main, opts)
    finally:
        _run = None
        if tmpdir is not None:
            import shutil
            shutil.rmtree(tmpdir, ignore_errors=True)
    return rc


def run(args) -> int:
    try:
        opts = check_options(args)
    except UsageError as exc:
        print(f"ringstack bdevperf: error: {exc}", file=sys.stderr)
        return 1
    rc = run_app(opts)
    if args.json and last_result is not None:
        try:
            with open(args.json, "w") as f:
                json.dump(last_result["json"], f, indent=2)
        except OSError as exc:
            print(f"ringstack bdevperf: error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    if last_result is None and not rc:
        # the app stopped (a signal during start-up or bdev set-up) before any job reported
        print("ringstack bdevperf: stopped before the test ran", file=sys.stderr)
        rc = 1
    return rc
