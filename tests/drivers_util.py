"""Helpers for the driver tests: bring the bdev layer up in deterministic mode, build
module stacks, run I/O to completion on a chosen thread."""
from __future__ import annotations

import os
import time

import bdev_stub

from bdev import api
from drivers import aio, delay, error, malloc, null, passthru, raid, rbd, split


def run_until(h, pred, timeout=10.0):
    """Poll every thread (advancing the mock clock, for timed pollers and the delay bdev)
    until ``pred()``; aio completions come from the kernel, so this is bounded in real
    time too."""
    end = time.monotonic() + timeout
    while True:
        h.poll_threads()
        if pred():
            return True
        if time.monotonic() > end:
            return False
        h.advance_time_us(100)


def mk_malloc(h, name, blocks=256, bs=512, boundary=0):
    out = []
    h.set_thread(0)
    malloc.create(name, blocks, bs, None, boundary, cb=lambda rc, n: out.append(rc))
    assert run_until(h, lambda: out)
    return out[0]


def mk_null(h, name, blocks=256, bs=512):
    out = []
    h.set_thread(0)
    null.create(name, blocks, bs, cb=lambda rc, n: out.append(rc))
    assert run_until(h, lambda: out)
    return out[0]


def rm(h, name):
    """Delete any bdev by its module's delete."""
    h.set_thread(0)
    b = api.get_by_name(name)
    assert b is not None, name
    mod = {"malloc": malloc.delete, "null": null.delete, "aio": aio.delete,
           "passthru": passthru.delete, "error": error.delete, "delay": delay.delete,
           "raid": raid.delete, "rbd": rbd.delete}
    out = []
    if b.module.name == "split":
        split.delete(b.ctxt.base.base_name, lambda rc: out.append(rc))
    else:
        mod[b.module.name](name, lambda rc: out.append(rc))
    assert run_until(h, lambda: out)
    return out[0]


class Io:
    """Open a bdev on a thread and run I/O on it to completion."""

    def __init__(self, h, name, thread, write=True, events=None):
        self.h = h
        self.thread = thread
        self.events = events if events is not None else []
        h.set_thread(thread)
        rc, self.desc = api.open_ext(name, write, self._event)
        assert rc == 0, rc
        self.ch = api.get_io_channel(self.desc)
        assert self.ch is not None

    def _event(self, ev, bdev, ctx):
        self.events.append(ev)

    def run(self, fn, *args):
        """``fn(desc, ch, *args, cb, arg)``; returns (rc, success)."""
        self.h.set_thread(self.thread)
        done = []

        def cb(bio, success, arg):
            done.append(success)
            api.free_io(bio)
        rc = fn(self.desc, self.ch, *args, cb, None)
        if rc:
            return rc, None
        assert run_until(self.h, lambda: done), f"{fn.__name__} never completed"
        return 0, done[0]

    def write(self, off, data):
        bs = self.desc.bdev.blocklen
        return self.run(api.write_blocks, bytearray(data), off, len(data) // bs)

    def read(self, off, n):
        bs = self.desc.bdev.blocklen
        buf = bytearray(n * bs)
        rc, ok = self.run(api.read_blocks, buf, off, n)
        return rc, ok, bytes(buf)

    def close(self):
        self.h.set_thread(self.thread)
        api.put_io_channel(self.ch)
        api.close(self.desc)
        self.h.poll_threads()


def pattern(n_bytes, seed=1):
    return bytes((i * 7 + seed) & 0xFF for i in range(n_bytes)) if seed else os.urandom(n_bytes)
