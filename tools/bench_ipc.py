"""ring vs multiprocessing Queue/Pipe, faster-fifo and pyzmq: one-way throughput and ping-pong latency

Every case runs between two spawned processes pinned to different cores (when there
are two).  A message is a handler id plus two ints; the receiver looks the handler up
and calls it, so every transport does the same useful work.  Each peer also runs in
its best form (one reused msgpack Packer; 32 messages per frame for Pipe and zmq;
put_many/get_many for faster-fifo) so the ratios are honest.

One-way: the producer stamps the clock, sends N messages, the consumer stamps the
clock when the last one has been handled; both use CLOCK_MONOTONIC, shared by all
processes.  Ping-pong: one message each way, K round trips, p50/p99.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

import msgpack

from tools.machine import cpu_model

BATCH = 32
SPAWN = multiprocessing.get_context("spawn")

_count = 0


def _noop(a, b):
    global _count
    _count += 1


HANDLER_NAME = "bench.ipc.noop"
_HANDLERS = {}


def _setup_handlers():
    from ipc import codec
    codec.register_handler(HANDLER_NAME, _noop)
    hid = codec.handler_id(HANDLER_NAME)
    _HANDLERS[hid] = _noop
    return hid


def _pin(index: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


# ---------------------------------------------------------------------------------------
# Transports: each has producer/consumer (one-way) and client/server (ping-pong) bodies.
# A body receives the endpoint objects built by the parent, and a control connection.
# ---------------------------------------------------------------------------------------

def ring_producer(ep, n, batched):
    from ipc import codec
    from ipc.mesh import Mesh
    mesh = Mesh.attach(ep)
    producer = mesh.producer(0, 1)
    ring = producer.ring
    enc = codec.encoder(_noop)
    t0 = time.perf_counter()
    if batched == "frame":
        # The same form as the batched peers: 32 messages packed in one msgpack record.
        send, flush, encode_batch = producer.send, producer.flush, codec.encode_batch
        hid = _HID
        for start in range(0, n, BATCH):
            send(encode_batch([(hid, i, i) for i in range(start, min(start + BATCH, n))]))
            while not flush():
                pass
    elif batched == "sender":
        sender = codec.Sender(producer)
        call, flush = sender.call, sender.flush
        for start in range(0, n, BATCH):
            for i in range(start, min(start + BATCH, n)):
                call(_noop, i, i)
            while not flush():
                pass
    elif batched == "records":
        send, flush = producer.send, producer.flush
        for start in range(0, n, BATCH):
            for i in range(start, min(start + BATCH, n)):
                send(enc(i, i))
            while not flush():
                pass
    else:
        try_put = ring.try_put
        for i in range(n):
            rec = enc(i, i)
            while not try_put(rec):
                pass
    return t0, mesh


def ring_consumer(ep, n, batched):
    from ipc import codec
    from ipc.mesh import Mesh
    mesh = Mesh.attach(ep)
    ring = mesh.ring(0, 1)
    drain, dispatch_many = ring.drain, codec.dispatch_many
    got = 0
    while got < n:
        got += dispatch_many(drain(256))
    return time.perf_counter(), mesh


def ring_client(ep, k):
    from ipc import codec
    from ipc.mesh import Mesh
    mesh = Mesh.attach(ep)
    out, back = mesh.ring(0, 1), mesh.ring(1, 0)
    enc = codec.encoder(_noop)
    unpackb = msgpack.unpackb
    lat = []
    for i in range(k):
        t0 = time.perf_counter()
        out.try_put(enc(i, i))
        while True:
            recs = back.drain(1)
            if recs:
                break
        msg = unpackb(recs[0], use_list=False)
        _HANDLERS[msg[0]](*msg[1:])
        lat.append(time.perf_counter() - t0)
    return lat, mesh


def ring_server(ep, k):
    from ipc.mesh import Mesh
    mesh = Mesh.attach(ep)
    inbound, reply = mesh.ring(0, 1), mesh.ring(1, 0)
    unpackb = msgpack.unpackb
    pack = msgpack.Packer().pack
    for _ in range(k):
        while True:
            recs = inbound.drain(1)
            if recs:
                break
        msg = unpackb(recs[0], use_list=False)
        _HANDLERS[msg[0]](*msg[1:])
        reply.try_put(pack(msg))
    return None, mesh


def queue_producer(ep, n, batched):
    q = ep[0]
    t0 = time.perf_counter()
    put = q.put
    hid = _HID
    for i in range(n):
        put((hid, i, i))
    return t0, None


def queue_consumer(ep, n, batched):
    q = ep[0]
    get = q.get
    h = _HANDLERS
    for _ in range(n):
        m = get(timeout=60)
        h[m[0]](m[1], m[2])
    return time.perf_counter(), None


def pipe_producer(conn, n, mode):
    t0 = time.perf_counter()
    hid = _HID
    if mode == "pickle":
        send = conn.send
        for i in range(n):
            send((hid, i, i))
    elif mode == "msgpack":
        send, pack = conn.send_bytes, msgpack.Packer().pack
        for i in range(n):
            send(pack((hid, i, i)))
    else:
        send, pack = conn.send_bytes, msgpack.Packer().pack
        for start in range(0, n, BATCH):
            send(pack([(hid, i, i) for i in range(start, min(start + BATCH, n))]))
    return t0, None


def pipe_consumer(conn, n, mode):
    h = _HANDLERS
    got = 0
    if mode == "pickle":
        recv = conn.recv
        while got < n:
            m = recv()
            h[m[0]](m[1], m[2])
            got += 1
    else:
        # msgpack frames get exactly the ring consumer's decode and checked dispatch
        # (codec.dispatch_many), so the comparison is of transports, not of dispatchers.
        from ipc import codec
        recv, dispatch_many = conn.recv_bytes, codec.dispatch_many
        while got < n:
            got += dispatch_many((recv(),))
    return time.perf_counter(), None


def ff_producer(ep, n, batched):
    q = ep[0]
    t0 = time.perf_counter()
    hid = _HID
    if batched:
        put_many = q.put_many
        for start in range(0, n, BATCH):
            put_many([(hid, i, i) for i in range(start, min(start + BATCH, n))], timeout=60)
    else:
        put = q.put
        for i in range(n):
            put((hid, i, i), timeout=60)
    return t0, None


def ff_consumer(ep, n, batched):
    q = ep[0]
    h = _HANDLERS
    got = 0
    get_many = q.get_many
    while got < n:
        for m in get_many(timeout=60, max_messages_to_get=1000):
            h[m[0]](m[1], m[2])
            got += 1
    return time.perf_counter(), None


def zmq_producer(addr, n, batched):
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(addr)
    time.sleep(0.2)  # let the connection settle before the clock starts
    hid = _HID
    pack = msgpack.Packer().pack
    t0 = time.perf_counter()
    send = sock.send
    if batched:
        for start in range(0, n, BATCH):
            send(pack([(hid, i, i) for i in range(start, min(start + BATCH, n))]))
    else:
        for i in range(n):
            send(pack((hid, i, i)))
    return t0, (sock, ctx)


def zmq_consumer(addr, n, batched):
    import zmq

    from ipc import codec
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100000)
    sock.bind(addr)
    # the ring consumer's decode and checked dispatch (see pipe_consumer)
    recv, dispatch_many = sock.recv, codec.dispatch_many
    got = 0
    while got < n:
        got += dispatch_many((recv(),))
    return time.perf_counter(), (sock, ctx)


# -- ping-pong bodies for the peers -----------------------------------------------------

def _pp_loop(k, send, recv):
    lat = []
    hid = _HID
    h = _HANDLERS
    for i in range(k):
        t0 = time.perf_counter()
        send((hid, i, i))
        m = recv()
        h[m[0]](m[1], m[2])
        lat.append(time.perf_counter() - t0)
    return lat


def _serve_loop(k, send, recv):
    h = _HANDLERS
    for _ in range(k):
        m = recv()
        h[m[0]](m[1], m[2])
        send(m)


def queue_client(ep, k):
    q_out, q_back = ep
    return _pp_loop(k, q_out.put, lambda: q_back.get(timeout=60)), None


def queue_server(ep, k):
    q_in, q_reply = ep
    _serve_loop(k, q_reply.put, lambda: q_in.get(timeout=60))
    return None, None


def pipe_client(conn, k):
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    return _pp_loop(k, lambda m: conn.send_bytes(pack(m)), lambda: unpackb(conn.recv_bytes(), use_list=False)), None


def pipe_server(conn, k):
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    _serve_loop(k, lambda m: conn.send_bytes(pack(m)), lambda: unpackb(conn.recv_bytes(), use_list=False))
    return None, None


def ff_client(ep, k):
    q_out, q_back = ep
    return _pp_loop(k, lambda m: q_out.put(m, timeout=60), lambda: q_back.get(timeout=60)), None


def ff_server(ep, k):
    q_in, q_reply = ep
    _serve_loop(k, lambda m: q_reply.put(m, timeout=60), lambda: q_in.get(timeout=60))
    return None, None


def zmq_client(addr, k):
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.connect(addr)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    lat = _pp_loop(k, lambda m: sock.send(pack(m)), lambda: unpackb(sock.recv(), use_list=False))
    return lat, (sock, ctx)


def zmq_server(addr, k):
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.bind(addr)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    _serve_loop(k, lambda m: sock.send(pack(m)), lambda: unpackb(sock.recv(), use_list=False))
    return None, (sock, ctx)


# ---------------------------------------------------------------------------------------

_HID = None


def _child(role_fn_name, core, endpoint, arg1, arg2, ctl):
    """Runs in a spawned child: pin, report ready, wait for go, run, report result."""
    global _HID
    _pin(core)
    _HID = _setup_handlers()
    fn = globals()[role_fn_name]
    ctl.send("ready")
    if not ctl.poll(120) or ctl.recv() != "go":
        return
    result, keep = fn(endpoint, arg1, arg2) if arg2 is not None else fn(endpoint, arg1)
    ctl.send(result)
    ctl.recv()  # wait for "bye" so a queue/socket is not torn down under the peer
    if keep is not None:
        if hasattr(keep, "close"):
            keep.close()
        elif isinstance(keep, tuple):
            keep[0].close(linger=0)
            keep[1].term()


def _run_pair(first, second, endpoints, arg1, arg2, timeout):
    """Start ``first`` on core 0 and ``second`` on core 1; returns their results."""
    ctls, procs = [], []
    for core, (name, ep) in enumerate(zip((first, second), endpoints)):
        parent, child = SPAWN.Pipe()
        p = SPAWN.Process(target=_child, args=(name, core, ep, arg1, arg2, child), daemon=True)
        p.start()
        ctls.append(parent)
        procs.append(p)
    try:
        for c in ctls:
            if not c.poll(60) or c.recv() != "ready":
                raise RuntimeError(f"{first}/{second}: child did not start")
        # the receiving side first, so it is waiting when the sender starts
        for c in reversed(ctls):
            c.send("go")
        results = []
        for c in ctls:
            if not c.poll(timeout):
                raise RuntimeError(f"{first}/{second}: no result within {timeout} s")
            results.append(c.recv())
        for c in ctls:
            c.send("bye")
        return results
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _endpoints(kind, instance, tmpdir, tag):
    """Build the endpoint each side needs; returns (ep_for_first, ep_for_second, cleanup)."""
    if kind == "ring":
        from ipc.mesh import Mesh
        mesh = Mesh.create(instance, 2, capacity=1 << 20, what=f"bench{tag}")
        return mesh.name, mesh.name, mesh.close
    if kind == "queue":
        q1, q2 = SPAWN.Queue(), SPAWN.Queue()
        return (q1, q2), (q1, q2), lambda: (q1.close(), q2.close(), q1.join_thread(), q2.join_thread())
    if kind == "pipe":
        a, b = SPAWN.Pipe()
        return a, b, lambda: (a.close(), b.close())
    if kind == "ff":
        from faster_fifo import Queue
        q1, q2 = Queue(1 << 24), Queue(1 << 24)
        return (q1, q2), (q1, q2), lambda: None
    if kind == "zmq":
        addr = f"ipc://{tmpdir}/zmq{tag}"
        return addr, addr, lambda: None
    raise ValueError(kind)


def _oneway_cases(quick):
    fast, slow = (200_000, 30_000) if quick else (2_000_000, 200_000)
    cases = [
        ("ring", "batched: 32 msgs per msgpack record", "ring", "ring_producer", "ring_consumer", fast, "frame"),
        ("ring", "Sender.call x32, flush", "ring", "ring_producer", "ring_consumer", fast, "sender"),
        ("ring", "1 record/msg, 32 records per frame", "ring", "ring_producer", "ring_consumer", fast, "records"),
        ("ring", "1 record/msg, try_put each", "ring", "ring_producer", "ring_consumer", fast // 2, "single"),
        ("multiprocessing.Queue", "put/get (pickle)", "queue", "queue_producer", "queue_consumer", slow, False),
        ("multiprocessing.Pipe", "send/recv (pickle)", "pipe", "pipe_producer", "pipe_consumer", slow, "pickle"),
        ("multiprocessing.Pipe", "send_bytes, reused Packer", "pipe", "pipe_producer", "pipe_consumer", slow, "msgpack"),
        ("multiprocessing.Pipe", "batched: 32 msgs per msgpack frame", "pipe", "pipe_producer", "pipe_consumer", fast, "batch"),
    ]
    if _have("faster_fifo"):
        cases += [
            ("faster-fifo", "put / get_many", "ff", "ff_producer", "ff_consumer", slow, False),
            ("faster-fifo", "batched: put_many(32) / get_many", "ff", "ff_producer", "ff_consumer", fast // 2, True),
        ]
    if _have("zmq"):
        cases += [
            ("pyzmq ipc://", "PUSH/PULL, reused Packer", "zmq", "zmq_producer", "zmq_consumer", slow, False),
            ("pyzmq ipc://", "batched: 32 msgs per frame", "zmq", "zmq_producer", "zmq_consumer", fast, True),
        ]
    return cases


def _pingpong_cases(quick):
    k = 2_000 if quick else 20_000
    cases = [
        ("ring", "poll mode (both sides spin)", "ring", "ring_client", "ring_server", k * 5),
        ("multiprocessing.Queue", "two queues", "queue", "queue_client", "queue_server", k),
        ("multiprocessing.Pipe", "duplex, send_bytes + msgpack", "pipe", "pipe_client", "pipe_server", k),
    ]
    if _have("faster_fifo"):
        cases.append(("faster-fifo", "two queues", "ff", "ff_client", "ff_server", k))
    if _have("zmq"):
        cases.append(("pyzmq ipc://", "PAIR, msgpack", "zmq", "zmq_client", "zmq_server", k))
    return cases


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer messages (a ~30 s smoke run)")


def _machine():
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(),
            "python": platform.python_version(), "machine": platform.machine()}


def run(args) -> int:
    from ipc.shm import Instance
    quick = getattr(args, "quick", False)
    machine = _machine()
    print(f"ringstack bench ipc{' --quick' if quick else ''}: nproc={machine['nproc']} "
          f"cpu={machine['cpu_model']!r} python={machine['python']}")
    if machine["affinity"] < 2:
        print("warning: fewer than 2 CPUs available: both sides share one core, spinning cases collapse")
    oneway, pingpong = [], []
    with Instance() as instance, tempfile.TemporaryDirectory(prefix="ringstack-bench-") as tmpdir:
        for tag, (name, form, kind, prod, cons, n, mode) in enumerate(_oneway_cases(quick)):
            ep1, ep2, cleanup = _endpoints(kind, instance, tmpdir, tag)
            try:
                (t0, t1) = _run_pair(prod, cons, (ep1, ep2), n, mode, timeout=300)
            finally:
                cleanup()
            rate = n / (t1 - t0)
            oneway.append({"transport": name, "form": form, "messages": n, "seconds": t1 - t0, "msg_per_s": rate})
            print(f"  one-way  {name:<22} {form:<42} {rate / 1e6:8.3f} M msg/s", flush=True)
        for tag, (name, form, kind, client, server, k) in enumerate(_pingpong_cases(quick), start=100):
            ep1, ep2, cleanup = _endpoints(kind, instance, tmpdir, tag)
            try:
                lat, _ = _run_pair(client, server, (ep1, ep2), k, None, timeout=300)
            finally:
                cleanup()
            lat.sort()
            p50 = lat[len(lat) // 2] * 1e6
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
            pingpong.append({"transport": name, "form": form, "round_trips": k, "p50_us": p50, "p99_us": p99,
                             "mean_us": statistics.fmean(lat) * 1e6})
            print(f"  pingpong {name:<22} {form:<42} p50 {p50:9.1f} us  p99 {p99:9.1f} us", flush=True)

    ring_rate = max(r["msg_per_s"] for r in oneway if r["transport"] == "ring")
    ring_p50 = next(r["p50_us"] for r in pingpong if r["transport"] == "ring")
    for r in oneway:
        r["ring_ratio"] = ring_rate / r["msg_per_s"]
    for r in pingpong:
        r["ring_ratio"] = r["p50_us"] / ring_p50

    print()
    print("One-way throughput (ring = best ring form; 'ring x' = ring rate / this rate)")
    print(f"| {'transport':<22} | {'form':<42} | {'msgs':>9} | {'M msg/s':>8} | {'ring x':>7} |")
    print(f"|{'-' * 24}|{'-' * 44}|{'-' * 11}|{'-' * 10}|{'-' * 9}|")
    for r in oneway:
        print(f"| {r['transport']:<22} | {r['form']:<42} | {r['messages']:>9} | {r['msg_per_s'] / 1e6:>8.3f} "
              f"| {r['ring_ratio']:>6.2f}x |")
    print()
    print("Ping-pong round trip ('ring x' = this p50 / ring p50)")
    print(f"| {'transport':<22} | {'form':<32} | {'trips':>7} | {'p50 us':>8} | {'p99 us':>8} | {'ring x':>7} |")
    print(f"|{'-' * 24}|{'-' * 34}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for r in pingpong:
        print(f"| {r['transport']:<22} | {r['form']:<32} | {r['round_trips']:>7} | {r['p50_us']:>8.1f} "
              f"| {r['p99_us']:>8.1f} | {r['ring_ratio']:>6.1f}x |")

    queue_rate = next(r["msg_per_s"] for r in oneway if r["transport"] == "multiprocessing.Queue")
    batched_peers = [r for r in oneway if r["transport"] != "ring" and "batched" in r["form"]]
    best_peer = max(batched_peers, key=lambda r: r["msg_per_s"])
    pipe_p50 = next(r["p50_us"] for r in pingpong if r["transport"] == "multiprocessing.Pipe")
    targets = {
        "ring_vs_queue_throughput": {"value": ring_rate / queue_rate, "target": ">= 10", "met": ring_rate / queue_rate >= 10},
        "ring_vs_best_batched_peer": {"value": ring_rate / best_peer["msg_per_s"], "target": ">= 1.0",
                                      "peer": f"{best_peer['transport']} {best_peer['form']}",
                                      "met": ring_rate >= best_peer["msg_per_s"]},
        "ring_p50_vs_pipe_p50": {"value": ring_p50 / pipe_p50, "target": "<= 0.1", "met": ring_p50 <= pipe_p50 / 10},
    }
    print()
    for key, t in targets.items():
        print(f"target {key}: {t['value']:.3f} (want {t['target']}) {'MET' if t['met'] else 'MISSED'}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "ipc", "command": " ".join(["ringstack", "bench", "ipc"] + sys.argv[3:]),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine,
                       "oneway": oneway, "pingpong": pingpong, "targets": targets}, f, indent=2)
    return 0
