"""Process-mode scenarios for tests/test_reactor_process.py.  Run as a script:
``python tests/apps/xproc.py SCENARIO [MASK]``; prints one JSON line ``RESULT {...}`` and
exits with the app's exit code.  Handlers live here, so child reactors import this file
as __mp_main__ and know them."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import reactor as rx  # noqa: E402
from reactor.app import App, app_stop, running_app  # noqa: E402

N_MSGS = 200_000
state = {"expect": 0, "bad": 0}


def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


# ---------------------------------------------------------------- ordering under load
@rx.remote("xproc.seq")
def on_seq(n, reply_tid):
    if n != state["expect"]:
        state["bad"] += 1
    state["expect"] = n + 1
    if n == N_MSGS - 1:
        rx.send_msg(reply_tid, on_seq_done, state["expect"], state["bad"])


@rx.remote("xproc.seq_done")
def on_seq_done(received, bad):
    result(received=received, bad=bad)
    app_stop(0)


def main_order():
    me = rx.get_thread()
    target = rx.current_reactor().default_tid(1)
    sent = [0]

    # send in chunks from a poller so the loop keeps flushing (backpressure absorbed
    # by the transport's overflow queue, never a spin inside send_msg)
    def pump(_):
        if sent[0] >= N_MSGS:
            rx.poller_unregister(poller[0])
            return rx.POLLER_IDLE
        for _ in range(2000):
            rx.send_msg(target, on_seq, sent[0], me.id)
            sent[0] += 1
        return rx.POLLER_BUSY
    poller = [rx.poller_register(pump)]


# ------------------------------------------------------------ channels across reactors
@rx.remote("xproc.dev_create")
def dev_create(io_device):
    return {"reactor": rx.current_reactor().index}


@rx.remote("xproc.dev_destroy")
def dev_destroy(io_device, ctx):
    pass


@rx.remote("xproc.visit")
def visit(it):
    ch = it.get_channel()
    it.ctx["visits"].append([rx.current_reactor().index, rx.get_thread().name, ch.ctx["reactor"]])
    it.ctx["n"] += 1
    rx.for_each_channel_continue(it, 0)


held = {}


@rx.remote("xproc.register_here")
def register_here(reply_tid):
    # reactor 1 registers the (replicated) device; everyone has it before the callback
    rx.io_device_register("xproc.dev", dev_create, dev_destroy,
                          cb=lambda: rx.send_msg(reply_tid, registered, rx.current_reactor().index))


@rx.remote("xproc.registered")
def registered(by):
    ch = rx.get_io_channel("xproc.dev")
    held["main"] = ch
    rx.send_msg(rx.current_reactor().default_tid(1), take_channel, rx.get_thread().id)
    state["registered_by"] = by
    state["main_ctx"] = ch.ctx


@rx.remote("xproc.take_channel")
def take_channel(reply_tid):
    held["remote"] = rx.get_io_channel("xproc.dev")
    rx.send_msg(reply_tid, walk, )


@rx.remote("xproc.walk")
def walk():
    ctx = {"visits": [], "n": 0}

    def done(it, status):
        state["walk"] = {"status": status, "ctx": it.ctx, "caller_ctx_n": ctx["n"]}
        rx.put_io_channel(held.pop("main"))
        rx.send_msg(rx.current_reactor().default_tid(1), drop_channel, rx.get_thread().id)
    rx.for_each_channel("xproc.dev", visit, ctx, done)


@rx.remote("xproc.drop_channel")
def drop_channel(reply_tid):
    rx.put_io_channel(held.pop("remote"))
    rx.send_msg(reply_tid, unregister)


@rx.remote("xproc.unregister")
def unregister():
    def gone():
        result(registered_by=state["registered_by"], main_ctx=state["main_ctx"], walk=state["walk"],
               still_registered=rx.io_device_is_registered("xproc.dev"))
        app_stop(0)
    rx.io_device_unregister("xproc.dev", gone)


def main_channels():
    rx.send_msg(rx.current_reactor().default_tid(1), register_here, rx.get_thread().id)


# ------------------------------------------------------------------- idle / signals
def main_idle():
    app = running_app()
    result(launcher=os.getpid(), reactors=[p.pid for p in app.procs.values()])


def main_idle_bdev():
    """The bdev subsystem up with a malloc bdev open on both reactors' replicas: a reactor
    that dies now leaves the bdev layer's fini waiting for answers that never come."""
    import drivers.malloc as malloc

    def created(rc, name):
        app = running_app()
        result(launcher=os.getpid(), reactors=[p.pid for p in app.procs.values()], rc=rc)
    malloc.create("Malloc0", 2048, 512, cb=created)


def main_stats():
    def got(stats):
        result(**stats)
        app_stop(0)
    from reactor.stats import framework_get_reactors, thread_get_stats
    framework_get_reactors(lambda reactors: thread_get_stats(
        lambda threads: got({"reactors": reactors, "threads": threads})))


SCENARIOS = {"order": main_order, "channels": main_channels, "idle": main_idle, "stats": main_stats,
             "idle_bdev": main_idle_bdev}

if len(sys.argv) > 1 and sys.argv[1] == "idle_bdev":
    import bdev  # noqa: F401,E402  (registers the bdev subsystem before the app starts)
    import drivers.malloc  # noqa: F401,E402

if __name__ == "__main__":
    scenario = sys.argv[1]
    mask = sys.argv[2] if len(sys.argv) > 2 else "0x3"
    capacity = 1 << 14 if scenario == "order" else 1 << 20   # small rings: force backpressure
    imports = ["bdev", "drivers.malloc"] if scenario == "idle_bdev" else []
    sys.exit(App(mask, ring_capacity=capacity, imports=imports).run(SCENARIOS[scenario]))
