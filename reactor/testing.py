"""Deterministic mode: every logical thread in this process, in-process transport between
reactors, a mock clock, and the test stepping threads explicitly -- SPDK's
``test/common/lib/ut_multithread.c`` for ringstack.

    with Harness(n_threads=3) as h:
        h.set_thread(0)
        send_msg(h.threads[1], fn)
        h.poll_threads()          # poll until no thread has anything left to do
        h.advance_time_us(1000)   # timed pollers due now run at the next poll

The code under test is the production code: Reactor, Thread, pollers, channels and
walks are the same objects process mode uses; only the transport (a deque per reactor,
records still encoded so values cross by value) and the clock differ.
"""
from __future__ import annotations

from . import reactor as _r
from . import thread as _t
from .reactor import LocalTransport, Reactor


class Harness:
    """``n_threads`` threads spread over ``n_reactors`` reactors: thread i lives on reactor
    ``i % n_reactors``; thread j < n_reactors is reactor j's default thread."""

    def __init__(self, n_threads: int = 1, n_reactors: int = 1, start_us: int = 1_000_000):
        if n_threads < n_reactors:
            n_threads = n_reactors
        self._now_ns = start_us * 1000
        transports = LocalTransport.mesh(n_reactors)
        self.reactors = [Reactor(i, i, n_reactors, transports[i], self.now_ns)
                         for i in range(n_reactors)]
        self.threads = [self.reactors[i % n_reactors].create_thread(f"ut_thread{i}")
                        for i in range(n_threads)]
        self._prev_current = _t._current
        self._prev_process = _r._process_reactor
        self.set_thread(0)

    # -- clock
    def now_ns(self) -> int:
        return self._now_ns

    def advance_time_us(self, us: int) -> None:
        self._now_ns += int(us) * 1000

    # -- stepping
    def set_thread(self, i: int | None):
        """Make thread ``i`` current (code run from the test body runs 'on' it)."""
        t = None if i is None else self.threads[i]
        _t._set_current(t)
        _r._process_reactor = t.reactor if t is not None else self.reactors[0]
        return t

    def poll_thread(self, i: int, max_msgs: int = _t.MSG_BATCH_SIZE) -> int:
        """Deliver what has reached thread i's reactor, then poll thread i once."""
        t = self.threads[i]
        r = t.reactor
        if t.state == _t.EXITED:
            return 0
        busy = 0
        for rec in r.transport.drain(1 << 30):
            r._deliver(rec)
            busy += 1
        busy += t.poll(self._now_ns, max_msgs)      # restores the current thread itself
        r.finish_exited_threads()
        return busy

    def poll_threads(self, max_rounds: int = 100_000) -> int:
        """Poll every thread in turn until a whole round does nothing.  Active (period 0)
        pollers that always report busy would make that never happen; like SPDK's
        helper, this stops when no thread reports work."""
        total = 0
        for _ in range(max_rounds):
            busy = sum(self.poll_thread(i) for i in range(len(self.threads)))
            total += busy
            if not busy:
                return total
        raise RuntimeError("poll_threads: threads still busy after %d rounds" % max_rounds)

    # -- lifetime
    def close(self) -> None:
        _t._set_current(self._prev_current)
        _r._process_reactor = self._prev_process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
