"""Invariants every deterministic bdev test must end with (issue 10, item 4):

* no bdev channel's ``io_outstanding``, nor its shared resource's, is ever seen negative,
  and none is left non-zero -- checked when each channel is destroyed and, for channels
  still alive, when the test ends;
* every I/O call the test made that returned 0 called its callback exactly once.

How: while a test runs, ``reactor.io_device_register`` is wrapped so the channels of
every io_device whose channel context looks like a bdev channel (``io_outstanding`` and
``shared_resource``) are tracked, and the user I/O calls of ``bdev`` (what the tests
call as ``B.read_blocks`` ...) are wrapped to count callbacks.  The layer itself is not
touched: its own calls (split children, vbdevs) go through ``bdev.api`` and its private
modules, unwrapped.  A test that leaves I/O on purpose (a reactor killed under it) says
so with ``@pytest.mark.bdev_io_may_be_lost("why")``.
"""
from __future__ import annotations

import functools

import reactor as rx

import bdev as B

# the user I/O calls: name -> position of (cb, cb_arg) in the arguments
IO_CALLS = {
    "read": 5, "read_blocks": 5, "readv": 5, "readv_blocks": 5,
    "write": 5, "write_blocks": 5, "writev": 5, "writev_blocks": 5,
    "write_zeroes": 4, "write_zeroes_blocks": 4, "unmap": 4, "unmap_blocks": 4,
    "flush": 4, "flush_blocks": 4, "reset": 2,
    "nvme_admin_passthru": 5, "nvme_io_passthru": 5, "nvme_io_passthru_md": 7,
}


def _is_bdev_channel(ctx) -> bool:
    return hasattr(ctx, "io_outstanding") and hasattr(ctx, "shared_resource")


class Tracker:
    def __init__(self):
        self.live = {}            # id(ctx) -> ctx
        self.problems = []
        self.calls = []           # [description, callbacks run]

    # ---------------------------------------------------------------- channels
    def check_channel(self, ctx, when) -> None:
        sr = ctx.shared_resource
        bdev = getattr(getattr(ctx, "bdev", None), "name", "?")
        if ctx.io_outstanding != 0:
            self.problems.append(f"{when}: channel of {bdev} on {ctx.thread.name} has "
                                 f"io_outstanding {ctx.io_outstanding}")
        if sr is not None and sr.io_outstanding < 0:
            self.problems.append(f"{when}: shared resource of {bdev} on {ctx.thread.name} has "
                                 f"io_outstanding {sr.io_outstanding}")
        last = when == "at test end" or getattr(sr, "ref", 1) == 0   # its last channel went
        if sr is not None and last and sr.io_outstanding != 0:
            self.problems.append(f"{when}: shared resource of {bdev} on {ctx.thread.name} left "
                                 f"io_outstanding {sr.io_outstanding}")

    def wrap_register(self, real):
        tracker = self

        @functools.wraps(real)
        def io_device_register(io_device, create_cb, destroy_cb, *args, **kw):
            if isinstance(io_device, str):      # replicated devices keep their handlers
                return real(io_device, create_cb, destroy_cb, *args, **kw)

            def create(dev):
                ctx = create_cb(dev)
                if _is_bdev_channel(ctx):
                    tracker.live[id(ctx)] = ctx
                return ctx

            def destroy(dev, ctx):
                if tracker.live.pop(id(ctx), None) is not None:
                    destroy_cb(dev, ctx)         # the layer aborts what it queued first
                    tracker.check_channel(ctx, "at channel destroy")
                    return
                destroy_cb(dev, ctx)
            return real(io_device, create, destroy, *args, **kw)
        return io_device_register

    # ---------------------------------------------------------------- callbacks
    def wrap_io(self, name, real, pos):
        tracker = self

        @functools.wraps(real)
        def call(*args, **kw):
            args = list(args)
            if len(args) <= pos:
                return real(*args, **kw)
            record = [f"{name}(cb_arg={args[pos + 1] if len(args) > pos + 1 else None!r})", 0]
            user_cb = args[pos]

            def cb(io, success, cb_arg):
                record[1] += 1
                if record[1] > 1:
                    tracker.problems.append(f"callback of {record[0]} ran {record[1]} times")
                return user_cb(io, success, cb_arg)
            args[pos] = cb
            rc = real(*args, **kw)
            if rc == 0:
                tracker.calls.append(record)
            return rc
        return call

    def finish(self, io_may_be_lost: bool) -> list:
        for ctx in list(self.live.values()):
            self.check_channel(ctx, "at test end")
        if not io_may_be_lost:
            for desc, n in self.calls:
                if n != 1:
                    self.problems.append(f"callback of {desc} ran {n} times")
        return self.problems


def install(monkeypatch) -> Tracker:
    t = Tracker()
    monkeypatch.setattr(rx, "io_device_register", t.wrap_register(rx.io_device_register))
    for name, pos in IO_CALLS.items():
        monkeypatch.setattr(B, name, t.wrap_io(name, getattr(B, name), pos))
    return t
