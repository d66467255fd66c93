"""Micro-benchmark of the NBD serving path in one process: a `targets.nbd` Connection over
a socketpair, its export a malloc bdev through `targets.serve.BdevHandle` (the production
objects), driven the way a serving reactor drives it (``Connection.poll()`` then the
thread's ``poll(now)`` for the deferred completions, the real clock, stats on).  The
client side is a non-blocking socket in the same thread that keeps QD requests of 4 KiB
in flight (all its requests of one pass sent with one ``send``).

    python -m tools.nbd_hotpath [-n 200000] [-q 32] [--rw write|read] [-r 3] [--profile]

Prints the server's time per request (wall time inside the server calls / requests:
recv, parse, bdev submit, malloc copy, completion, reply send), the whole loop's, and
the loop's CPU time per request (``time.thread_time``: client included, but not
inflated by other processes on a loaded machine).
It measures CPU per request, not throughput: fio, the kernel's scheduling and the
second core are not in it.  Lives in tools/ because it drives a module (drivers/malloc).
"""
from __future__ import annotations

import argparse
import socket
import struct
import time

_REQ = struct.Struct(">IHHQQI")
_REQUEST_MAGIC = 0x25609513


def _handshake(conn, cli, export: str) -> None:
    from targets.nbd import _proto as P
    cli.setblocking(False)

    def pump_until(n):
        got = b""
        for _ in range(10000):
            conn.poll()
            try:
                got += cli.recv(n - len(got))
            except BlockingIOError:
                pass
            if len(got) >= n:
                return got
        raise RuntimeError("handshake stalled")

    pump_until(P.GREETING.size)
    cli.sendall(struct.pack(">I", P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES))
    name = export.encode()
    cli.sendall(P.OPT_HDR.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, len(name)) + name)
    pump_until(P.EXPORT_NAME_REPLY.size)
    if conn.state != "transmission":
        raise RuntimeError(f"handshake ended in {conn.state}")


def run(n_req: int, qd: int, rw: str = "write", profile: bool = False) -> tuple:
    from reactor.testing import Harness

    import bdev as B
    from drivers import malloc
    from targets.nbd.backend import ExportTable
    from targets.nbd.bdev_export import BdevExport
    from targets.nbd.transmission import Connection

    with Harness(1) as h:
        r = h.reactors[0]
        r.now = time.monotonic_ns
        h.set_thread(0)
        out = []
        B.initialize(lambda arg, rc: out.append(rc))
        h.poll_threads()
        blocks = (64 << 20) // 512
        malloc.create("bench", blocks, 512, cb=lambda rc, name: out.append(rc))
        for _ in range(100):
            h.poll_threads()
            if len(out) == 2:
                break
        assert out == [0, 0], out
        # touch every page of the segment first (as the NBD bench's prefill does), so
        # first-touch page faults do not land in the timed copies
        disk_buf = B.get_by_name("bench").ctxt.buf
        disk_buf[:] = bytes(len(disk_buf))
        del disk_buf
        srv, cli = socket.socketpair()
        conn = Connection(srv, ExportTable([BdevExport("bench")]), name="bench")
        _handshake(conn, cli, "bench")
        thread_poll = h.threads[0].poll
        now = r.now
        payload = bytes(range(256)) * 16
        typ = 1 if rw == "write" else 0
        span = (blocks * 512) // 4096
        state = {"sent": 0, "done": 0, "srv": 0.0}
        perf = time.perf_counter

        def loop():
            inflight = 0
            sent = done = 0
            srv_t = 0.0
            pending = b""
            while done < n_req:
                if inflight < qd and sent < n_req:
                    chunks = []
                    while inflight < qd and sent < n_req:
                        off = ((sent * 7919) % span) * 4096
                        chunks.append(_REQ.pack(_REQUEST_MAGIC, 0, typ, sent, off, 4096))
                        if typ == 1:
                            chunks.append(payload)
                        inflight += 1
                        sent += 1
                    cli.sendall(b"".join(chunks))
                t0 = perf()
                conn.poll()
                thread_poll(now())
                conn.poll()
                srv_t += perf() - t0
                try:
                    pending += cli.recv(1 << 20)
                except BlockingIOError:
                    pass
                rl = 16 if typ == 1 else 16 + 4096
                k = len(pending) // rl
                if k:
                    pending = pending[k * rl:]
                    inflight -= k
                    done += k
            state["done"] = done
            state["srv"] = srv_t

        t0 = perf()
        c0 = time.thread_time()
        if profile:
            import cProfile
            import pstats
            pr = cProfile.Profile()
            pr.runcall(loop)
            pstats.Stats(pr).sort_stats("tottime").print_stats(20)
        else:
            loop()
        dt = perf() - t0
        cpu = time.thread_time() - c0
        conn.abort("bench done")
        cli.close()
        for _ in range(100):
            h.poll_threads()
            if conn.done:
                break
        B.finish(lambda arg: out.append("fini"))
        h.poll_threads()
        d = state["done"]
        return state["srv"] * 1e9 / d, dt * 1e9 / d, cpu * 1e9 / d


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("-q", type=int, default=32)
    ap.add_argument("--rw", choices=("write", "read"), default="write")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.profile:
        run(min(a.n, 100_000), a.q, a.rw, profile=True)
        return
    runs = [run(a.n, a.q, a.rw) for _ in range(a.repeat)]
    srv = min(x[0] for x in runs)
    tot = min(x[1] for x in runs)
    cpu = min(x[2] for x in runs)
    print(f"nbd {a.rw} 4KiB qd={a.q} malloc: server {srv:.0f} ns/req wall, whole loop {tot:.0f} ns/req "
          f"wall, {cpu:.0f} ns/req CPU (client included; best of {a.repeat}; CPU runs "
          f"{', '.join(f'{x[2]:.0f}' for x in runs)})")


if __name__ == "__main__":
    main()
