"""bdevperf's jobs: one per (bdev, thread[, LBA slice]), built and run on their reactor.

A job (SPDK's ``bdevperf_job``) opens its bdev, gets a channel on its thread, preallocates its
tasks and buffers, then keeps ``queue_depth`` I/Os in flight: each completion submits the next
I/O from the completion callback, ``-ENOMEM`` waits with ``queue_io_wait``, and at ``-t`` the job
drains (no new I/O, wait for the in-flight ones) and reports to the app thread.

The I/O path (one completion = one call of the job's ``done`` closure) is written for speed:
no allocation, one clock read per I/O (the completion time is also the next submit time),
random offsets from a precomputed table (uniform, or SPDK's zipf for ``-F``), counters in
closure cells, the latency histogram bucket from one ``bit_length``.  Options that need work
per I/O (``-D`` random map, ``-U`` unique writes, ``-k`` timeouts) take the general path.

Threads (``-E``): as SPDK, a job runs on a thread of its own (created on its reactor, named
after the job config, exiting with the job); with ``-E`` every job of a reactor shares the
reactor's default thread.  A ``-j`` job config's jobs (one per filename) share that config's
thread.  Everything bdev-related goes through :mod:`tools.bdevperf_bdev`.
"""
from __future__ import annotations

import errno
import logging
import random
import struct
import time

import reactor as rx
from tools import bdevperf_bdev as B
from tools import bdevperf_report as R
from tools.bdevperf_jobfile import zipf_table

log = logging.getLogger("ringstack.bdevperf")

RAND_TABLE = 1 << 16          # precomputed random offsets per job
TIMEOUT_POLL_US = 1_000_000   # SPDK's bdev timeout poller period (1 s)

#: The app side's hooks (tools.bdevperf sets them): ``constructed(job_id, rc, msg, info)``
#: and ``ended(result)``, run on the app thread.
APP = {"constructed": None, "ended": None}


def _jobs() -> dict:
    # Jobs are kept per reactor (several in-process reactors share this module in the
    # threads baseline of bench scaling).
    return rx.current_reactor().locals.setdefault("bdevperf.jobs", {})


def _threads() -> dict:
    """This reactor's job threads: key -> [thread, number of jobs on it]."""
    return rx.current_reactor().locals.setdefault("bdevperf.threads", {})


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
        self.timeouts = 0             # -k: I/O found outstanding past the timeout, per check
        self.thread_key = None
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
        if s["zcopy"]:
            # SPDK's check (-Z): no ringstack module (nor the layer) has a ZCOPY I/O type
            return -errno.ENOTSUP, "Test requires ZCOPY but bdev module does not support ZCOPY"
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
        if s["random"] and s["zipf_theta"] > 0:
            self.rand_table = [base_blk + v * nb
                               for v in zipf_table(size, s["zipf_theta"], RAND_TABLE, rng)]
        else:
            self.rand_table = ([base_blk + int(rand() * size) * nb for _ in range(RAND_TABLE)]
                               if s["random"] else None)
        # -D: SPDK's random map, one byte per I/O slot of the job's range
        self.random_map = bytearray(size) if s["random"] and s["random_map"] else None
        if s["unique_writes"] and uses_buf and not s["verify"]:
            # -U: SPDK's generate_data(unique): every 8-byte word is (write count << 32) |
            # (block index in the I/O + byte offset in the block); the low halves are the
            # same for every write, so they are laid down once and each write sets the highs
            low = struct.pack(f"<{io_size // 8}Q", *((k // (bs // 8)) + (k % (bs // 8)) * 8
                                                     for k in range(io_size // 8)))
            for t in self.tasks:
                t.view[:len(low)] = low
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
        if self.thread_key is not None:
            entry = _threads().get(self.thread_key)
            self.thread_key = None
            if entry is not None:
                entry[1] -= 1          # the thread exits at the test's end (_job_thread_exit)

    # ------------------------------------------------------------------------- run
    def start(self, start_ns: int) -> None:
        if self.ended:          # drained (shutdown) before it started
            return
        s = self.spec
        self.start_ns = start_ns
        if s["timeout_s"]:
            self.timers.append(rx.poller_register(self._timeout_check, None, TIMEOUT_POLL_US,
                                                  "bdevperf_timeout"))
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

    def _timeout_check(self, _):
        """-k (SPDK's bdev timeout poller + bdevperf_timeout_cb): once a second, every I/O
        outstanding for at least the timeout counts one timeout (TO/s).  A task is
        outstanding while its ``t0`` is set.  -X would then abort it where the bdev supports
        SPDK's ABORT I/O type; ringstack's layer has none, so (as SPDK on such a bdev) the
        timeout is counted and the I/O left to complete."""
        limit = time.perf_counter_ns() - self.spec["timeout_s"] * 1_000_000_000
        for t in self.tasks:
            if t.t0 and t.t0 <= limit:
                self.timeouts += 1
        return rx.POLLER_BUSY

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
    rmap = job.random_map
    unique = s["unique_writes"] and nobuf is None and not s["verify"]
    extra = rmap is not None or unique       # per-I/O work: the general path, through submit()
    draw = rng.random
    writes = 0

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

    def end_one(task):
        nonlocal inflight
        task.t0 = 0                   # not outstanding any more (-k)
        inflight -= 1
        if not inflight:
            job.empty()

    def pick_mapped():
        """-D (SPDK's random map): a random slot, moved up to the next one not used yet in
        this pass (wrapping); when every slot is used, a new pass starts."""
        r = int(draw() * size)
        x = rmap.find(0, r)
        if x < 0:
            x = rmap.find(0)
            if x < 0:
                rmap[:] = bytes(size)
                x = r
        rmap[x] = 1
        return base_blk + x * nb

    def stamp(task):
        """-U: this write's count in the high half of every 8-byte word."""
        nonlocal writes
        c = writes & 0xFFFFFFFF
        writes += 1
        buf = task.buf
        n = len(buf) // 8
        for k in range(4):
            buf[4 + k::8] = bytes(((c >> (8 * k)) & 0xFF,)) * n

    def submit(task, now):
        # returns rc of the submit; the caller deals with it
        nonlocal ri, seq
        if rand:
            off = table[ri] if rmap is None else pick_mapped()
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
            if unique and fn is write_blocks:
                stamp(task)
            return fn(desc, ch, task.buf, off, nb, done, task)
        return fn(desc, ch, off, nb, done, task)

    def resubmit(task):       # io_wait callback: a bdev_io is free again
        if draining:
            end_one(task)
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
            task.t0 = 0               # waiting for a bdev_io is not outstanding (-k)
            task.wait.cb_fn = resubmit
            if queue_io_wait(bdev, ch, task.wait) == 0:
                job.nomem_waits += 1
                return
        job.fail(rc, f"Failed to submit bdev_io: {rc}")
        end_one(task)

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
            end_one(task)
            return
        if extra:
            rc = submit(task, now)
            if rc:
                submit_error(task, rc)
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

    if rand and not mixed and nobuf is None and not extra:
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
                end_one(task)
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
    job.counters = lambda: (completed, failed, job.timeouts)
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

    def end_one(task):
        nonlocal inflight
        task.t0 = 0                   # not outstanding any more (-k)
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
            end_one(task)
            return
        task.t0 = clock()
        rc = write_blocks(desc, ch, task.buf, task.offset, nb, write_done, task)
        if rc:
            submit_error(task, rc, write_retry)

    def read_back(task):
        if draining and job.rc:
            release(task)
            end_one(task)
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
        end_one(task)

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
            end_one(task)
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
    job.counters = lambda: (completed, failed, job.timeouts)
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
    """On the reactor's default thread: pick the job's thread (its own, or with -E this
    one) and build the job there."""
    spec = dict(spec)
    key = spec.get("thread_key")
    if key is None:
        _construct_here(spec, None)
        return
    threads = _threads()
    entry = threads.get(key)
    if entry is None:
        entry = threads[key] = [rx.current_reactor().create_thread(spec["thread_name"]), 0, key]
    entry[1] += 1
    rx.send_msg(entry[0], _construct_here, spec, key)


def _construct_here(spec, key):
    job = Job(spec)
    job.thread_key = key
    try:
        rc, msg = job.construct()
    except Exception as exc:          # a bug or an unexpected backend error: report, don't hang
        log.exception("job %s construct", spec["name"])
        rc, msg = -errno.EIO, f"job {spec['name']}: {exc}"
    if rc:
        job.destroy()
    else:
        _jobs()[job.id] = job
    info = dict(job.info, tid=rx.get_thread().id)
    rx.send_msg(spec["main_tid"], _job_constructed, job.id, rc, msg, info)


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


@rx.remote("bdevperf.job_thread_exit")
def _job_thread_exit(key):
    """The test is over (SPDK's bdevperf_test_done -> job_thread_exit): the thread of
    ``key`` exits.  Not at its last job's end: the bdev layer may still be completing that
    job's close on it (a removal in progress answers there)."""
    entry = _threads().get(key)
    if entry is not None and entry[1] == 0:
        del _threads()[key]
        rx.thread_exit(entry[0])


@rx.remote("bdevperf.collect")
def _collect(it):
    full = it.ctx[0]
    for job in list(_jobs().values()):
        c, f, t = job.counters()
        it.ctx[1].append([job.id, c, f, t, job.lat_sum(), R.sparse(job.hist) if full else []])
    rx.for_each_channel_continue(it, 0)



# -------------------------------------------------------------- app-side answers
@rx.remote("bdevperf.job_constructed")
def _job_constructed(job_id, rc, message, info):
    if APP["constructed"] is not None:
        APP["constructed"](job_id, rc, message, dict(info))


@rx.remote("bdevperf.job_ended")
def _job_ended(result):
    if APP["ended"] is not None:
        result = dict(result)
        result["hist"] = [list(p) for p in result["hist"]]
        result["errors"] = list(result["errors"])
        if result.get("mismatch") is not None:
            result["mismatch"] = dict(result["mismatch"])
        APP["ended"](result)
