"""Statistics gathered from every reactor, in the shapes of SPDK's ``framework_get_reactors``
and ``thread_get_stats`` RPCs.  Gathering is a walk over the reactors whose ctx (by value)
accumulates each reactor's entries; the callback runs on the calling thread."""
from __future__ import annotations

from .io_channel import for_each_channel_continue, for_each_reactor
from .reactor import current_reactor
from .wire import remote

#: Our ticks are nanoseconds.
TICK_RATE = 1_000_000_000


@remote("reactor.stats.collect_reactor")
def _collect_reactor(it):
    it.ctx["reactors"].append(current_reactor().stats())
    for_each_channel_continue(it, 0)


@remote("reactor.stats.collect_threads")
def _collect_threads(it):
    it.ctx["threads"].extend(t.stats() for t in current_reactor().threads)
    for_each_channel_continue(it, 0)


def framework_get_reactors(cb) -> None:
    """``cb({"tick_rate", "reactors": [...]})`` with one entry per reactor, by lcore."""
    def done(it, status):
        reactors = sorted(it.ctx["reactors"], key=lambda r: r["lcore"])
        cb({"tick_rate": TICK_RATE, "reactors": reactors})
    for_each_reactor(_collect_reactor, {"reactors": []}, done)


def thread_get_stats(cb) -> None:
    """``cb({"tick_rate", "threads": [...]})`` with every thread of every reactor."""
    def done(it, status):
        cb({"tick_rate": TICK_RATE, "threads": sorted(it.ctx["threads"], key=lambda t: t["id"])})
    for_each_reactor(_collect_threads, {"threads": []}, done)
