"""Reactor benchmark: send_msg across and within reactors, ping-pong, for_each_channel, poller cost, idle CPU.

Everything runs in real reactor processes (``App``), poll mode for the timing figures
(spinning is what a loaded reactor does) and the default adaptive mode for the idle
figure.  The raw ring's one-way throughput is measured in the same run (two pinned
processes, the ipc benchmark's code path) so the ratio "send_msg / raw ring" is honest
on a shared, noisy machine.
"""
from __future__ import annotations

import json
import os
import time

import psutil

import reactor as rx
from reactor.app import App, app_stop, running_app
from tools.machine import cpu_model

N_CROSS = 300_000
N_LOCAL = 300_000
N_PINGS = 20_000
N_WALKS = 2_000
POLLER_SECONDS = 0.5
IDLE_SECONDS = 3

_st: dict = {}


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    p.add_argument("-m", "--cpumask", default="0x3", help="reactor mask (default 0x3)")


# ------------------------------------------------------------------ handlers
@rx.remote("bench.reactor.sink")
def _sink(n, reply_tid):
    _st["got"] = _st.get("got", 0) + 1
    if n == _st["n"] - 1:
        rx.send_msg(reply_tid, _cross_done, _st["got"])


@rx.remote("bench.reactor.set_n")
def _set_n(n):
    _st["n"] = n
    _st["got"] = 0


@rx.remote("bench.reactor.cross_done")
def _cross_done(got):
    _st["t_end"] = time.perf_counter()
    _st["cross_got"] = got
    _next()


@rx.remote("bench.reactor.ping")
def _ping(reply_tid, t0):
    rx.send_msg(reply_tid, _pong, t0)


@rx.remote("bench.reactor.pong")
def _pong(t0):
    _st["rtts"].append(time.perf_counter_ns() - t0)
    if len(_st["rtts"]) < _st["pings"]:
        rx.send_msg(rx.current_reactor().default_tid(1), _ping, rx.get_thread().id, time.perf_counter_ns())
    else:
        _next()


@rx.remote("bench.reactor.dev_create")
def _dev_create(dev):
    return None


@rx.remote("bench.reactor.dev_destroy")
def _dev_destroy(dev, ctx):
    pass


@rx.remote("bench.reactor.visit")
def _visit(it):
    rx.for_each_channel_continue(it, 0)


@rx.remote("bench.reactor.hold_channel")
def _hold_channel(reply_tid):
    _st["remote_ch"] = rx.get_io_channel("bench.reactor.dev")
    rx.send_msg(reply_tid, _held)


@rx.remote("bench.reactor.held")
def _held():
    _next()


@rx.remote("bench.reactor.release_channel")
def _release_channel(reply_tid):
    rx.put_io_channel(_st.pop("remote_ch"))
    rx.send_msg(reply_tid, _held)


# ------------------------------------------------------------------ the sequence
def _next():
    step = _st["steps"].pop(0)
    rx.send_msg(rx.get_thread(), step)


def _cross_start():
    n = _st["n_cross"]
    me = rx.get_thread().id
    target = rx.current_reactor().default_tid(1)
    rx.send_msg(target, _set_n, n)
    sent = [0]
    _st["t_start"] = time.perf_counter()

    def pump(_):
        i = sent[0]
        if i >= n:
            rx.poller_unregister(box[0])
            return 0
        end = min(n, i + 4096)
        send = rx.send_msg
        for k in range(i, end):
            send(target, _sink, k, me)
        sent[0] = end
        return 1
    box = [rx.poller_register(pump, None, 0, "bench_pump")]


def _cross_record():
    dt = _st["t_end"] - _st["t_start"]
    _st["results"]["cross_reactor_send_msg"] = {"messages": _st["cross_got"], "seconds": dt,
                                                "msgs_per_s": _st["cross_got"] / dt}
    _next()


def _local_run():
    n = _st["n_local"]
    me = rx.get_thread()
    count = [0]

    def sink():
        count[0] += 1
        if count[0] == n:
            dt = time.perf_counter() - t0
            _st["results"]["same_reactor_send_msg"] = {"messages": n, "seconds": dt, "msgs_per_s": n / dt}
            _next()
    t0 = time.perf_counter()
    send = rx.send_msg
    for _ in range(n):
        send(me, sink)


def _pingpong_start():
    _st["rtts"] = []
    _st["pings"] = _st["n_pings"]
    rx.send_msg(rx.current_reactor().default_tid(1), _ping, rx.get_thread().id, time.perf_counter_ns())


def _pingpong_record():
    rtts = sorted(_st["rtts"])
    pick = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] / 1000  # noqa: E731
    _st["results"]["cross_reactor_ping_pong_us"] = {"n": len(rtts), "p50": pick(0.5), "p99": pick(0.99),
                                                    "mean": sum(rtts) / len(rtts) / 1000}
    _next()


def _walk_setup():
    rx.io_device_register("bench.reactor.dev", _dev_create, _dev_destroy, cb=_walk_setup2)


def _walk_setup2():
    _st["main_ch"] = rx.get_io_channel("bench.reactor.dev")
    rx.send_msg(rx.current_reactor().default_tid(1), _hold_channel, rx.get_thread().id)


def _walk_run():
    n = _st["n_walks"]
    done = [0]
    t0 = time.perf_counter()

    def cpl(it, status):
        done[0] += 1
        if done[0] < n:
            rx.for_each_channel("bench.reactor.dev", _visit, None, cpl)
        else:
            dt = time.perf_counter() - t0
            _st["results"]["for_each_channel_2_reactors_us"] = {"walks": n, "mean": dt / n * 1e6}
            _next()
    rx.for_each_channel("bench.reactor.dev", _visit, None, cpl)


def _walk_teardown():
    rx.put_io_channel(_st.pop("main_ch"))
    rx.send_msg(rx.current_reactor().default_tid(1), _release_channel, rx.get_thread().id)


def _walk_teardown2():
    rx.io_device_unregister("bench.reactor.dev", _next)


def _poller_run():
    runs = [0]
    t0 = time.perf_counter()

    def empty(_):
        runs[0] += 1
        return 0

    p = rx.poller_register(empty, None, 0, "empty")

    def stop(_):
        dt = time.perf_counter() - t0
        rx.poller_unregister(p)
        rx.poller_unregister(box[0])
        _st["results"]["empty_poller_iteration_ns"] = {"iterations": runs[0], "ns": dt / runs[0] * 1e9}
        _next()
        return 1
    box = [rx.poller_register(stop, None, int(POLLER_SECONDS * 1e6), "stop")]


def _finish():
    app_stop(0)


def _main(quick):
    scale = 10 if quick else 1
    _st.update(n_cross=N_CROSS // scale, n_local=N_LOCAL // scale, n_pings=N_PINGS // scale,
               n_walks=N_WALKS // scale, results={})
    _st["steps"] = [_cross_record, _local_run, _pingpong_start, _pingpong_record, _walk_setup,
                    _walk_run, _walk_teardown, _walk_teardown2, _poller_run, _finish]
    # _cross_start's completion (_cross_done) calls _next -> _cross_record, etc.
    # _pingpong_start completes into _pingpong_record; _walk_setup2 -> _held -> _walk_run ...
    _st["steps"].insert(0, _cross_start)
    _next()


def _idle_main():
    app = running_app()
    pids = [os.getpid()] + [p.pid for p in app.procs.values()]
    procs = [psutil.Process(pid) for pid in pids]

    def measure(_):
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        t0 = time.monotonic()

        def finish(_):
            dt = time.monotonic() - t0
            cpu = [(sum(p.cpu_times()[:2]) - c) / dt * 100 for p, c in zip(procs, cpu0)]
            _st["idle"] = {"seconds": dt, "cpu_percent_per_reactor": cpu}
            app_stop(0)
            return 1
        rx.poller_unregister(box[0])
        box[0] = rx.poller_register(finish, None, IDLE_SECONDS * 1_000_000, "idle_finish")
        return 1
    box = [rx.poller_register(measure, None, 300_000, "idle_settle")]


def _raw_ring_throughput(quick) -> float | None:
    """One-way records/s of the bare ring between two pinned processes, one record per
    message flushed in batches (the form send_msg uses), measured with the ipc
    benchmark's own producer/consumer in this same run."""
    from ipc.shm import Instance
    from tools import bench_ipc
    n = 200_000 if quick else 1_000_000
    with Instance() as inst:
        ep1, ep2, cleanup = bench_ipc._endpoints("ring", inst, "/tmp", "reactor")
        try:
            t0, t1 = bench_ipc._run_pair("ring_producer", "ring_consumer", (ep1, ep2), n, "records", timeout=300)
        finally:
            cleanup()
    return n / (t1 - t0)


def run(args) -> int:
    mask = args.cpumask
    App(mask, mode="poll", imports=["tools.bench_reactor"]).run(_main, args.quick)
    results = dict(_st["results"])
    App(mask, imports=["tools.bench_reactor"]).run(_idle_main)
    results["idle_default_mode"] = _st["idle"]
    ring = _raw_ring_throughput(args.quick)
    cross = results["cross_reactor_send_msg"]["msgs_per_s"]
    results["raw_ring_msgs_per_s"] = ring
    results["ratios"] = {"cross_send_msg_vs_raw_ring": (cross / ring) if ring else None}
    results["machine"] = {"nproc": os.cpu_count(), "cpu": cpu_model(),
                          "date": time.strftime("%Y-%m-%d")}
    _print(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _print(r) -> None:
    c, l, pp = r["cross_reactor_send_msg"], r["same_reactor_send_msg"], r["cross_reactor_ping_pong_us"]
    print(f"{'benchmark':44} {'figure':>16}")
    print(f"{'cross-reactor send_msg (msgs/s)':44} {c['msgs_per_s']:16,.0f}")
    if r["raw_ring_msgs_per_s"]:
        print(f"{'raw ring one-way (msgs/s)':44} {r['raw_ring_msgs_per_s']:16,.0f}")
        print(f"{'  send_msg / raw ring':44} {r['ratios']['cross_send_msg_vs_raw_ring']:16.2f}x")
    print(f"{'same-reactor send_msg (msgs/s)':44} {l['msgs_per_s']:16,.0f}")
    print(f"{'cross-reactor ping-pong p50 (us)':44} {pp['p50']:16.1f}")
    print(f"{'cross-reactor ping-pong p99 (us)':44} {pp['p99']:16.1f}")
    print(f"{'for_each_channel, 2 reactors (us/walk)':44} {r['for_each_channel_2_reactors_us']['mean']:16.1f}")
    print(f"{'empty poller loop iteration (ns)':44} {r['empty_poller_iteration_ns']['ns']:16.0f}")
    for i, cpu in enumerate(r["idle_default_mode"]["cpu_percent_per_reactor"]):
        print(f"{f'idle reactor {i} CPU, default mode (%)':44} {cpu:16.2f}")
