"""Lightweight threads, messages and pollers (SPDK's ``lib/thread``, the per-thread half).

A :class:`Thread` is SPDK's ``spdk_thread``: a unit of execution with its own message
queue, pollers and io_channels.  It owns no OS thread.  A :class:`~reactor.reactor.Reactor`
(one per process/core) calls :meth:`Thread.poll` from its loop, passing the time in, so
the same code runs under a real clock in process mode and under a mock clock in
deterministic tests.

Rules that hold everywhere (and that callers rely on):

* ``send_msg(thread, fn, *args)`` never runs ``fn`` before it returns; messages from one
  sender to one receiver run in the order sent.
* A poller returns a truthy value when it did work (``POLLER_BUSY``) and a falsy one when
  idle; that feeds the busy/idle statistics and the reactor's decision to sleep.
* Unregistering, pausing or resuming a poller takes effect between poller runs, so it is
  safe from inside any poller (including the poller itself).
"""
from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque

log = logging.getLogger("ringstack.thread")

POLLER_IDLE = 0
POLLER_BUSY = 1

#: SPDK's SPDK_MSG_BATCH_SIZE: messages run per poll, so pollers are never starved.
MSG_BATCH_SIZE = 8

# Thread states (SPDK's spdk_thread_state).
RUNNING, EXITING, EXITED = "running", "exiting", "exited"

# Poller states.
_WAITING, _RUNNING, _UNREGISTERED, _PAUSING, _PAUSED = range(5)


class ThreadError(RuntimeError):
    """A thread-API call made from the wrong context (no current thread, wrong owner)."""


# The thread whose code is running now in this process.  Set by Thread.poll (and by the
# deterministic harness's set_thread); None outside any thread.
_current: "Thread | None" = None


def get_thread() -> "Thread | None":
    """The thread running the caller (SPDK's spdk_get_thread), or None outside one."""
    return _current


def _set_current(thread: "Thread | None") -> "Thread | None":
    global _current
    prev, _current = _current, thread
    return prev


def _require_thread(what: str) -> "Thread":
    t = _current
    if t is None:
        raise ThreadError(f"{what} must be called from a ringstack thread")
    return t


class Poller:
    """A registered poller.  Create with :func:`poller_register`."""

    __slots__ = ("fn", "arg", "name", "period_ns", "next_run", "state", "thread",
                 "run_count", "busy_count", "_seq", "fd")

    def __init__(self, thread, fn, arg, period_ns, name, seq, fd=None):
        self.fd = fd          # fd-driven: the loop wakes (and runs it) when fd is readable
        self.fn = fn
        self.arg = arg
        self.name = name
        self.period_ns = period_ns
        self.next_run = 0
        self.state = _WAITING
        self.thread = thread
        self.run_count = 0
        self.busy_count = 0
        self._seq = seq

    @property
    def is_timed(self) -> bool:
        return self.period_ns > 0

    def __lt__(self, other):  # heap order: deadline, then registration order
        return (self.next_run, self._seq) < (other.next_run, other._seq)

    def __repr__(self):
        return f"<Poller {self.name} period={self.period_ns // 1000}us on {self.thread.name}>"


class Thread:
    """SPDK's spdk_thread.  Created by :meth:`Reactor.create_thread` (or the harness)."""

    def __init__(self, reactor, tid: int, name: str):
        self.reactor = reactor
        self.id = tid
        self.name = name
        self.state = RUNNING
        self._msgs: deque = deque()
        self._critical = None
        self._active: list[Poller] = []       # period 0, run every poll
        self._timed: list[Poller] = []        # heap by (next_run, seq)
        self._paused: list[Poller] = []
        self._pollers_changed = False         # deferred list maintenance pending
        self._poller_seq = itertools.count()
        self.io_channels: dict = {}           # io_device key -> IoChannel
        self.busy_ns = 0
        self.idle_ns = 0
        self.last_now = 0
        self.ctx = None                       # user context (spdk_thread_get_ctx)
        self.exit_cb = None

    def __repr__(self):
        return f"<Thread {self.name} id={self.id} {self.state}>"

    # ---------------------------------------------------------------- messages
    def _enqueue(self, fn, args) -> None:
        self._msgs.append((fn, args))
        self.reactor._notify_local(self)

    def send_critical_msg(self, fn) -> None:
        """One slot, run before anything else at the next poll (SPDK's critical message,
        meant for signal handlers).  A second call before it ran replaces nothing: -EIO."""
        if self._critical is not None:
            raise ThreadError("a critical message is already pending")
        self._critical = fn
        self.reactor._notify_local(self)

    def has_pending_work(self) -> bool:
        return bool(self._msgs) or self._critical is not None

    # ----------------------------------------------------------------- polling
    def poll(self, now: int, max_msgs: int = MSG_BATCH_SIZE) -> int:
        """Run one pass: critical message, up to ``max_msgs`` messages, active pollers,
        expired timed pollers.  Returns the number of things that did work (0 = idle).

        Only the messages present when the pass began run in it (a message that sends a
        message to its own thread runs on the next pass), as SPDK, asyncio and trio do.
        This is the innermost loop of every reactor: it is written flat on purpose (one
        function, locals, no per-pass allocation)."""
        global _current
        prev = _current
        _current = self
        self.last_now = now
        busy = 0
        try:
            if self._critical is not None:
                crit, self._critical = self._critical, None
                crit()
                busy += 1

            msgs = self._msgs
            if msgs:
                n = len(msgs)
                if n > max_msgs:
                    n = max_msgs
                popleft = msgs.popleft
                for _ in range(n):
                    fn, args = popleft()
                    try:
                        fn(*args)
                    except Exception:  # one bad message must not kill the thread
                        log.exception("message %s on thread %s raised",
                                      getattr(fn, "__name__", fn), self.name)
                busy += n

            if self._pollers_changed:
                self._apply_poller_changes(now)
            # _run_timed repeats this poller run on purpose (innermost loop: no call per poller)
            for p in self._active:
                if p.state != _WAITING:
                    continue
                p.state = _RUNNING
                try:
                    rc = p.fn(p.arg)
                except Exception:
                    log.exception("poller %s on thread %s raised", p.name, self.name)
                    rc = 0
                p.run_count += 1
                if rc:
                    p.busy_count += 1
                    busy += 1
                if p.state == _RUNNING:
                    p.state = _WAITING

            timed = self._timed
            if timed and timed[0].next_run <= now:
                busy += self._run_timed(now)

            if self._pollers_changed:
                self._apply_poller_changes(now)
            if self.state == EXITING:
                self._try_finish_exit()
        finally:
            _current = prev
        elapsed = self.reactor.now() - now
        if busy:
            self.busy_ns += elapsed
        else:
            self.idle_ns += elapsed
        return busy

    def _run_timed(self, now: int) -> int:
        # The poller run repeats poll()'s active loop on purpose (see there).
        busy = 0
        timed = self._timed
        while timed and timed[0].next_run <= now:
            p = heapq.heappop(timed)
            if p.state != _WAITING:
                # unregistered or paused while waiting; the deferred pass finishes it
                self._park(p)
                continue
            p.state = _RUNNING
            try:
                rc = p.fn(p.arg)
            except Exception:
                log.exception("timed poller %s on thread %s raised", p.name, self.name)
                rc = 0
            p.run_count += 1
            if rc:
                p.busy_count += 1
                busy += 1
            if p.state == _RUNNING:
                p.state = _WAITING
                p.next_run = now + p.period_ns
                heapq.heappush(timed, p)
            else:
                self._park(p)
        return busy

    def _park(self, p: Poller) -> None:
        """A timed poller that left the heap in a non-waiting state."""
        if p.state in (_PAUSING, _PAUSED):
            p.state = _PAUSED
            if p not in self._paused:
                self._paused.append(p)
        # _UNREGISTERED: simply dropped

    def _apply_poller_changes(self, now: int) -> None:
        """Deferred poller list maintenance, between poller runs."""
        self._pollers_changed = False
        keep = []
        for p in self._active:
            if p.state == _UNREGISTERED:
                continue
            if p.state == _PAUSING:
                p.state = _PAUSED
                self._paused.append(p)
                continue
            keep.append(p)
        self._active = keep
        if any(p.state in (_UNREGISTERED, _PAUSING) for p in self._timed):
            live = []
            for p in self._timed:
                if p.state == _UNREGISTERED:
                    continue
                if p.state == _PAUSING:
                    p.state = _PAUSED
                    self._paused.append(p)
                    continue
                live.append(p)
            heapq.heapify(live)
            self._timed = live
        resumed = [p for p in self._paused if p.state == _WAITING]
        if resumed:
            self._paused = [p for p in self._paused if p.state == _PAUSED]
            for p in resumed:
                self._insert_poller(p, now)
        self._paused = [p for p in self._paused if p.state == _PAUSED]

    def _insert_poller(self, p: Poller, now: int) -> None:
        if p.period_ns:
            p.next_run = now + p.period_ns
            heapq.heappush(self._timed, p)
        else:
            self._active.append(p)

    # ------------------------------------------------------------------- exit
    def exit(self, cb=None) -> None:
        """Begin exiting (SPDK's spdk_thread_exit).  The thread keeps running messages and
        pollers until it has no pollers, no io_channels and no messages, then becomes
        EXITED and ``cb()`` runs (on the reactor, outside any thread)."""
        if self.state != RUNNING:
            return
        self.state = EXITING
        self.exit_cb = cb
        self.reactor._notify_local(self)

    def _try_finish_exit(self) -> None:
        if self._msgs or self._critical is not None:
            return
        if any(p.state != _UNREGISTERED for p in self._active + self._timed + self._paused):
            return
        if self.io_channels:
            return
        self.state = EXITED
        self.reactor._thread_exited(self)

    # ------------------------------------------------------------------ stats
    def poller_counts(self) -> tuple[int, int, int]:
        live = lambda ps: sum(1 for p in ps if p.state != _UNREGISTERED)  # noqa: E731
        return live(self._active), live(self._timed), live(self._paused)

    def stats(self) -> dict:
        """One entry of SPDK's ``thread_get_stats`` result."""
        active, timed, paused = self.poller_counts()
        return {
            "name": self.name,
            "id": self.id,
            "cpumask": hex(1 << self.reactor.core) if self.reactor is not None else "0x0",
            "busy": self.busy_ns,
            "idle": self.idle_ns,
            "in_interrupt": False,
            "active_pollers_count": active,
            "timed_pollers_count": timed,
            "paused_pollers_count": paused,
        }

    def next_deadline(self) -> int | None:
        """Deadline (ns) of the earliest waiting timed poller that is not fd-driven, for the
        reactor's sleep (fd-driven pollers wake the loop through their fd instead)."""
        due = [p.next_run for p in self._timed if p.state == _WAITING and p.fd is None]
        return min(due) if due else None

    def has_active_pollers(self) -> bool:
        """Whether a period-0 poller that is not fd-driven exists (the loop may then sleep
        only briefly, since nothing would wake it for that poller's work)."""
        return any(p.state == _WAITING and p.fd is None for p in self._active)

    def watched_fds(self) -> list[int]:
        return [p.fd for p in (*self._active, *self._timed)
                if p.fd is not None and p.state == _WAITING]

    def fd_ready(self, fds, now: int) -> None:
        """The loop saw these fds readable: run their timed pollers at the next pass."""
        changed = False
        for p in self._timed:
            if p.fd in fds and p.state == _WAITING and p.next_run > now:
                p.next_run = now
                changed = True
        if changed:
            heapq.heapify(self._timed)


# --------------------------------------------------------------------- poller API
def poller_register(fn, arg=None, period_us: int = 0, name: str | None = None,
                    fd: int | None = None) -> Poller:
    """Register ``fn(arg)`` on the calling thread, every poll (``period_us == 0``) or every
    ``period_us`` microseconds.  The first timed run is one period from now.

    ``fd``: the poller serves a file descriptor (a listening or connected socket).  A
    sleeping reactor then wakes when ``fd`` is readable and runs the poller at once; its
    period only bounds how often it runs while the reactor is busy (spinning), so an
    fd-driven poller neither keeps an idle reactor awake nor costs a syscall per pass."""
    t = _require_thread("poller_register")
    if period_us < 0:
        raise ValueError("period_us must be >= 0")
    p = Poller(t, fn, arg, int(period_us) * 1000, name or getattr(fn, "__name__", repr(fn)),
               next(t._poller_seq), fd)
    if t.state != RUNNING:
        raise ThreadError(f"poller_register on thread {t.name} in state {t.state}")
    t._insert_poller(p, t.reactor.now())
    return p


def _owner_check(p: Poller, what: str) -> Thread:
    t = _current
    if t is not p.thread:
        raise ThreadError(f"{what}({p.name}) called on thread "
                          f"{t.name if t else None}, poller belongs to {p.thread.name}")
    return t


def poller_unregister(p: Poller | None) -> None:
    """Unregister ``p`` (deferred: it never runs again, and is freed between runs)."""
    if p is None or p.state == _UNREGISTERED:
        return
    t = _owner_check(p, "poller_unregister")
    p.state = _UNREGISTERED
    t._pollers_changed = True


def poller_pause(p: Poller) -> None:
    t = _owner_check(p, "poller_pause")
    if p.state in (_WAITING, _RUNNING):
        p.state = _PAUSING
        t._pollers_changed = True


def poller_resume(p: Poller) -> None:
    t = _owner_check(p, "poller_resume")
    if p.state == _PAUSING:        # paused and resumed before the pause took effect
        p.state = _WAITING
    elif p.state == _PAUSED:
        p.state = _WAITING
        t._pollers_changed = True
