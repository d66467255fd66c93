"""Handlers for the process-mode bdev tests: imported by every reactor process (App
``imports``), so the @remote workers exist on reactor 1 too.  Results come back to the
launcher (reactor 0, the pytest process) by message and land in ``RESULTS``."""
from __future__ import annotations

import time

import reactor as rx
from reactor import wire

import bdev as B

RESULTS: dict = {}


@wire.remote("test.bdev_proc.report")
def report(key, value):
    RESULTS.setdefault(key, []).append(value)


def _send_report(origin, key, value):
    rx.current_reactor().send(origin, report, (key, value))


class Worker:
    """Submits I/O at a fixed queue depth on the current thread until told to stop or
    ``total`` I/O completed; verifies data for malloc (each worker owns a region)."""

    def __init__(self, origin, name, region, qd, total, mode, duration, window=None):
        self.origin = origin
        self.name = name
        self.region = region
        self.qd = qd
        self.total = total
        self.mode = mode
        self.duration = duration
        self.index = rx.current_reactor().index
        self.ok = self.failed = self.submitted = self.inflight = 0
        self.window = 0
        # completions counted between these two absolute time.monotonic() values
        # (CLOCK_MONOTONIC is one clock for every process of the machine)
        self.win = tuple(window) if window else None
        self.stopping = False
        self.removed = False
        rc, self.desc = B.open(B.get_by_name(name), True, self.on_remove, None)
        assert rc == 0, rc
        self.ch = B.get_io_channel(self.desc)
        self.t0 = time.monotonic()
        self.bs = B.get_block_size(self.desc.bdev)
        self.bad = 0
        self.written = set()      # blocks a write of this worker has succeeded on

    def on_remove(self, _ctx):
        self.removed = True
        self.finish_channel()
        B.close(self.desc)
        _send_report(self.origin, "removed", self.index)

    def finish_channel(self):
        if self.ch is not None:
            B.put_io_channel(self.ch)
            self.ch = None

    def kick(self):
        while not self.stopping and self.inflight < self.qd and self.submitted < self.total:
            if self.duration and time.monotonic() - self.t0 > self.duration:
                self.stopping = True
                break
            k = self.submitted
            lba = self.region * 64 + (k % 64)
            if self.mode == "rw":
                if k % 2 == 0:
                    buf = bytearray(bytes([(self.index * 16 + lba) & 0xFF]) * self.bs)
                    rc = B.write_blocks(self.desc, self.ch, buf, lba, 1, self.done, ("w", lba))
                else:
                    lba = self.region * 64 + ((k - 1) % 64)
                    rc = B.read_blocks(self.desc, self.ch, bytearray(self.bs), lba, 1, self.done, ("r", lba))
            else:
                rc = B.read_blocks(self.desc, self.ch, None, lba, 1, self.done, ("n", lba))
            if rc == -12:
                rx.send_msg(rx.get_thread(), self.kick)   # no bdev_io: retry next pass
                return
            assert rc == 0, rc
            self.submitted += 1
            self.inflight += 1
        if self.inflight == 0 and (self.stopping or self.submitted >= self.total):
            self.report()

    def done(self, io, success, arg):
        self.inflight -= 1
        if success:
            self.ok += 1
            if self.win is not None:
                now = time.monotonic()
                if self.win[0] <= now < self.win[1]:
                    self.window += 1
            else:
                now = time.monotonic() - self.t0
                if 0.3 <= now < 1.3:
                    self.window += 1
            kind, lba = arg
            if kind == "w":
                self.written.add(lba)
            elif kind == "r" and lba in self.written:
                # (a block whose every write so far failed -- a reset froze it -- still
                # holds zeroes: only what was written is checked)
                want = bytes([(self.index * 16 + lba) & 0xFF]) * self.bs
                if bytes(io.iovs[0]) != want:
                    self.bad += 1
        else:
            self.failed += 1
        B.free_io(io)
        self.kick()

    def report(self):
        if getattr(self, "_reported", False):
            return
        self._reported = True
        _send_report(self.origin, "worker", {"reactor": self.index, "ok": self.ok, "failed": self.failed,
                                             "bad": self.bad, "window": self.window})


def _workers():
    return rx.current_reactor().locals.setdefault("test.workers", [])


@wire.remote("test.bdev_proc.start")
def start(origin, name, region, qd, total, mode, duration, window=None):
    w = Worker(origin, name, region, qd, total, mode, duration, window)
    _workers().append(w)
    w.kick()


@wire.remote("test.bdev_proc.close_all")
def close_all(origin):
    for w in _workers():
        w.finish_channel()
        if not w.removed:
            B.close(w.desc)
    del _workers()[:]
    _send_report(origin, "closed", rx.current_reactor().index)


def start_everywhere(name, qd, total, mode="rw", duration=0.0, window=None):
    """From the app thread: one worker on reactor 0's app thread, one on reactor 1.
    ``window``: (start, end) in absolute time.monotonic() seconds to count completions."""
    r = rx.current_reactor()
    me = rx.get_thread().id
    for i in range(r.n_reactors):
        r.send(r.default_tid(i), start, (me, name, i, qd, total, mode, duration,
                                         list(window) if window else None))


def close_everywhere():
    r = rx.current_reactor()
    me = rx.get_thread().id
    for i in range(r.n_reactors):
        r.send(r.default_tid(i), close_all, (me,))


def wait_for(key, n, then, deadline_s=20.0):
    """Poll (on the app thread) until RESULTS[key] has n entries, then ``then()``."""
    t_end = time.monotonic() + deadline_s
    box = {}

    def check(_arg):
        if len(RESULTS.get(key, ())) >= n:
            rx.poller_unregister(box["p"])
            then()
            return 1
        if time.monotonic() > t_end:
            rx.poller_unregister(box["p"])
            RESULTS.setdefault("errors", []).append(f"timeout waiting for {key}")
            from reactor.app import app_stop
            app_stop(1)
        return 0
    box["p"] = rx.poller_register(check, None, 2000, name=f"wait_{key}")
