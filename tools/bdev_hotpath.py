"""Micro-benchmark of the bdev hot path: read_blocks on the null bdev, submit -> module ->
complete -> callback, on one thread, at a fixed queue depth, driven the way a reactor
process drives it (``Reactor.poll_once(now)`` in a loop, the real ``time.monotonic_ns``
clock, stats on).  What bdevperf adds on top (its own bookkeeping) is not in here.  It
lives in tools/ because it drives a module (drivers/null.py): the bdev layer itself never
imports drivers/ or tools/ (tests/test_faces.py).

    python -m tools.bdev_hotpath [-n 1000000] [-q 128] [--profile] [--histogram]

Prints ns per I/O (wall time / completed I/O); ``--profile`` runs a shorter pass under
cProfile and prints the top functions.
"""
from __future__ import annotations

import argparse
import time


def run(n_ios: int, qd: int, histogram: bool = False, profile: bool = False) -> float:
    from reactor.testing import Harness

    import bdev as B
    from drivers import null

    with Harness(1) as h:
        r = h.reactors[0]
        r.now = time.monotonic_ns        # the real clock, as in process mode
        h.set_thread(0)
        out = []
        B.initialize(lambda arg, rc: out.append(rc))
        h.poll_threads()
        null.create("bench", 1 << 20, 512, cb=lambda rc, name: out.append(rc))
        h.poll_threads()
        assert out == [0, 0], out
        bdev = B.get_by_name("bench")
        rc, desc = B.open(bdev, False)
        ch = B.get_io_channel(desc)
        if histogram:
            B.histogram_enable(bdev, lambda a, rc: None)
            h.poll_threads()
        bufs = [bytearray(4096) for _ in range(qd)]
        state = {"left": n_ios, "done": 0}
        read_blocks = B.read_blocks
        free_io = B.free_io
        nblocks = 4096 // 512
        span = (1 << 20) - nblocks

        def cb(io, success, slot):
            free_io(io)
            state["done"] += 1
            if state["left"] > 0:
                state["left"] -= 1
                read_blocks(desc, ch, bufs[slot], (state["done"] * 7919 * nblocks) % span, nblocks, cb, slot)

        t = h.threads[0]
        thread_poll = t.poll
        now = r.now

        def loop():
            for slot in range(qd):
                state["left"] -= 1
                assert read_blocks(desc, ch, bufs[slot], slot * nblocks, nblocks, cb, slot) == 0
            while state["done"] < n_ios:
                thread_poll(now())

        t0 = time.perf_counter()
        if profile:
            import cProfile
            import pstats
            pr = cProfile.Profile()
            pr.runcall(loop)
            pstats.Stats(pr).sort_stats("tottime").print_stats(15)
        else:
            loop()
        dt = time.perf_counter() - t0
        B.put_io_channel(ch)
        B.close(desc)
        h.poll_threads()
        B.finish(lambda arg: out.append("fini"))
        h.poll_threads()
        return dt * 1e9 / state["done"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("-q", type=int, default=128)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--histogram", action="store_true")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.profile:
        run(min(a.n, 200_000), a.q, a.histogram, profile=True)
        return
    best = min(run(a.n, a.q, a.histogram) for _ in range(a.repeat))
    print(f"read_blocks null 4KiB qd={a.q}: {best:.0f} ns/IO ({1e9 / best:,.0f} IO/s), best of {a.repeat}")


if __name__ == "__main__":
    main()
