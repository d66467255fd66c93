"""Statistics gathered from every reactor, in the shapes of SPDK's ``framework_get_reactors``
and ``thread_get_stats`` RPCs.  Gathering is a fanout (reactor/fanout.py ``gather``): every
live reactor reports its entries at once and the callback runs on the calling thread.  A
reactor that is dead, or dies before answering, is left out of the result (it has no
threads any more); the call never waits for it."""
from __future__ import annotations

from .fanout import gather
from .reactor import current_reactor
from .wire import remote

#: Our ticks are nanoseconds.
TICK_RATE = 1_000_000_000


@remote("reactor.stats.collect_reactor")
def _collect_reactor(done):
    done(0, current_reactor().stats())


@remote("reactor.stats.collect_threads")
def _collect_threads(done):
    done(0, [t.stats() for t in current_reactor().threads])


def _answered(results) -> list:
    return [value for _index, rc, value in results if rc == 0]


def framework_get_reactors(cb) -> None:
    """``cb({"tick_rate", "reactors": [...]})`` with one entry per live reactor, by lcore."""
    def done(rc, results):
        reactors = sorted((dict(e, lw_threads=list(e["lw_threads"])) for e in _answered(results)),
                          key=lambda r: r["lcore"])
        cb({"tick_rate": TICK_RATE, "reactors": reactors})
    gather(_collect_reactor, (), done)


def thread_get_stats(cb) -> None:
    """``cb({"tick_rate", "threads": [...]})`` with every thread of every live reactor."""
    def done(rc, results):
        threads = [t for entries in _answered(results) for t in entries]
        cb({"tick_rate": TICK_RATE, "threads": sorted(threads, key=lambda t: t["id"])})
    gather(_collect_threads, (), done)
