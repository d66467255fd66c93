"""Blocking calls off the reactor: run one blocking C call (or a short function made of
such calls) on a worker thread of this process, and get its outcome back on the calling
ringstack thread.  SPDK's ``spdk_call_unaffinitized`` runs a function on a fresh pthread
and *joins* it, so the app thread waits; this is the same hand-off without the wait.

    job = offload.run(fn, *args, cb=cb, cleanup=None, cpus=None, lane=None, name=None)

* ``fn(*args)`` runs on a worker, an OS thread of this process; ``run`` returns at once.
  A ctypes call releases the GIL while it is in C, so the reactor keeps polling (its
  pollers, its rings, its I/O) while the worker waits, e.g. in librados for a monitor.
* ``cb(error, value)`` runs later on the calling thread, as a poller: ``error`` is None
  and ``value`` what ``fn`` returned, or ``error`` is the exception ``fn`` raised.  Never
  inside ``run``, never on the worker.  The worker signals an eventfd that an fd-driven
  poller of the calling thread watches, so a reactor with nothing else to do sleeps in
  its ``select`` meanwhile and wakes when the result is in.  The poller exists only while
  the thread has jobs in flight.
* ``job.cancel()`` (on the calling thread): ``cb`` will not run.  A job that has not
  started never runs; one that runs or ran hands its value to ``cleanup(value)`` on a
  worker, to release what it made (a client, an image handle).  A call already in C is
  never interrupted: it ends when the library gives up (its own timeouts bound it).
* **A thread that exits abandons its jobs** the same way (the poller sees it exiting,
  cancels them and goes), so a reactor's shutdown never waits for a blocked call.
* ``lane``: the jobs of one :class:`Lane` run one at a time, in the order submitted
  (every control call on one handle: a resize, then the close that must follow it).
* ``cpus``: the worker runs ``fn`` with that CPU affinity and restores its own afterwards
  (``sched_setaffinity`` acts on the calling OS thread only), so the threads ``fn``
  starts -- librados's -- inherit it.  A set the kernel refuses fails the job with the
  OSError, ``fn`` not run.
* Workers are **daemon** threads, at most :data:`MAX_WORKERS` at once per process (more
  jobs wait, in order): a worker blocked in C never keeps the process from exiting, and
  a process that exits takes its workers with it (the reactor processes end with
  ``os._exit``; the launcher's interpreter does not wait for daemon threads).

``fn`` must not touch reactor state (threads, pollers, channels, bdevs): it gets its
inputs as arguments and hands back a value, which ``cb`` applies on the reactor thread.
Nothing here runs in deterministic mode's mock time: a job takes the real time it takes
(tests poll until it is done, as they do for the kernel's aio completions).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque

from . import thread as _t
from .reactor import current_reactor

log = logging.getLogger("ringstack.offload")

__all__ = ["MAX_WORKERS", "Job", "Lane", "run", "pending", "workers"]

#: Worker threads alive at once per process; further jobs wait for one, in order.
MAX_WORKERS = 16

_QUEUED, _RUNNING, _FINISHED, _DELIVERED, _CANCELLED = range(5)
_KEY = "reactor.offload"

# One lock for the hand-off between workers and reactor threads: it guards the backlog,
# the lanes, a job's state and an inbox's finished list and eventfd.  Held for a few
# operations at a time, never across a job.
_lock = threading.Lock()
_backlog: deque = deque()
_workers = 0


class Lane:
    """Jobs that must not overlap: they run one at a time in submission order."""

    __slots__ = ("name", "_queue", "_busy")

    def __init__(self, name: str = ""):
        self.name = name
        self._queue: deque = deque()
        self._busy = False

    def idle(self) -> bool:
        with _lock:
            return not self._busy and not self._queue

    def __repr__(self):
        return f"<Lane {self.name} busy={self._busy} queued={len(self._queue)}>"


class Job:
    """One offloaded call.  Made by :func:`run`; ``cancel`` from the calling thread."""

    __slots__ = ("fn", "args", "cb", "cleanup", "cpus", "lane", "name", "state", "error",
                 "value", "_inbox")

    def __init__(self, fn, args, cb, cleanup, cpus, lane, name, inbox):
        self.fn = fn
        self.args = args
        self.cb = cb
        self.cleanup = cleanup
        self.cpus = cpus
        self.lane = lane
        self.name = name
        self.state = _QUEUED
        self.error = None
        self.value = None
        self._inbox = inbox

    @property
    def done(self) -> bool:
        """Delivered or cancelled: nothing more will reach the calling thread."""
        return self.state in (_DELIVERED, _CANCELLED)

    def cancel(self) -> bool:
        """Drop the job (on the thread that ran ``run``): ``cb`` never runs; a value it
        produced, or produces later, goes to ``cleanup``.  False if it had been delivered
        or cancelled already."""
        inbox = self._inbox
        if inbox is None or _t._current is not inbox.thread:
            raise _t.ThreadError(f"offload job {self.name}: cancel from the wrong thread")
        dispose = False
        with _lock:
            if self.state in (_QUEUED, _RUNNING):
                self.state = _CANCELLED          # the worker disposes of what it makes
            elif self.state == _FINISHED:
                self.state = _CANCELLED
                if self in inbox.finished:       # else taken by the poller's current batch
                    inbox.finished.remove(self)
                dispose = True
            else:
                return False
        inbox.jobs.discard(self)
        if dispose:
            _dispose(self)
        inbox.close_if_idle()
        return True

    def __repr__(self):
        return f"<offload.Job {self.name} state={self.state}>"


class _Inbox:
    """The calling thread's side: its jobs in flight, the finished ones waiting for its
    poller, the eventfd the workers signal.  Exists while the thread has jobs."""

    __slots__ = ("thread", "jobs", "finished", "efd", "poller")

    def __init__(self, thread):
        self.thread = thread
        self.jobs: set = set()
        self.finished: deque = deque()
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # fd-driven: the reactor's sleep watches efd, so no pass is spent on an idle wait.
        self.poller = _t.poller_register(self._poll, None, 0, "offload", fd=self.efd)

    def _poll(self, _arg) -> int:
        if self.thread.state != _t.RUNNING:
            self._abandon()
            return _t.POLLER_BUSY
        if not self.finished:
            return _t.POLLER_IDLE
        with _lock:
            batch = list(self.finished)
            self.finished.clear()
            try:
                os.eventfd_read(self.efd)
            except BlockingIOError:
                pass
        for job in batch:
            if job.state != _FINISHED:
                continue                # cancelled by an earlier callback of this batch
            job.state = _DELIVERED
            self.jobs.discard(job)
            try:
                job.cb(job.error, job.value)
            except Exception:
                log.exception("offload job %s: its callback raised", job.name)
        self.close_if_idle()
        return _t.POLLER_BUSY

    def _abandon(self) -> None:
        jobs = list(self.jobs)
        if jobs:
            log.warning("thread %s exits with %d offloaded call(s) in flight (%s): their "
                        "results are released, not delivered", self.thread.name, len(jobs),
                        ", ".join(sorted(j.name for j in jobs)))
        for job in jobs:
            job.cancel()
        self.close_if_idle()

    def close_if_idle(self) -> None:
        if self.jobs or self.efd < 0:
            return
        _t.poller_unregister(self.poller)
        with _lock:      # no worker writes to efd now: every job of this inbox is done
            os.close(self.efd)
            self.efd = -1
        inboxes = _inboxes(self.thread.reactor)
        if inboxes.get(self.thread.id) is self:
            del inboxes[self.thread.id]


def _inboxes(r) -> dict:
    return r.locals.setdefault(_KEY, {})


def run(fn, *args, cb=None, cleanup=None, cpus=None, lane: Lane | None = None,
        name: str | None = None) -> Job:
    """Run ``fn(*args)`` on a worker; ``cb(error, value)`` later on this thread (see the
    module docstring).  Must be called from a running ringstack thread."""
    t = _t._require_thread("offload.run")
    if t.state != _t.RUNNING:
        raise _t.ThreadError(f"offload.run on thread {t.name} in state {t.state}")
    inboxes = _inboxes(t.reactor)
    inbox = inboxes.get(t.id)
    if inbox is None:
        inbox = inboxes[t.id] = _Inbox(t)
    name = str(name or getattr(fn, "__qualname__", None) or repr(fn))[:120]   # for logs
    job = Job(fn, args, cb or _ignore, cleanup, frozenset(cpus) if cpus else None, lane,
              name, inbox)
    inbox.jobs.add(job)
    _submit(job)
    return job


def _ignore(_error, _value) -> None:
    pass


def pending(reactor=None) -> int:
    """Jobs in flight (not yet delivered or cancelled) of this reactor's threads."""
    r = reactor or current_reactor()
    return sum(len(ib.jobs) for ib in r.locals.get(_KEY, {}).values())


def workers() -> int:
    """Worker threads alive in this process."""
    with _lock:
        return _workers


# ---------------------------------------------------------------------------- workers
def _submit(job: Job) -> None:
    global _workers
    with _lock:
        lane = job.lane
        if lane is not None:
            if lane._busy:
                lane._queue.append(job)
                return
            lane._busy = True
        if _workers >= MAX_WORKERS:
            _backlog.append(job)
            return
        _workers += 1
    threading.Thread(target=_worker, args=(job,), name=f"offload:{job.name}"[:60],
                     daemon=True).start()


def _next(prev: Job):
    """What this worker runs after ``prev``: the next job of its lane (the lane stays
    with this worker), else the backlog's first, else nothing (the worker ends)."""
    global _workers
    with _lock:
        lane = prev.lane
        if lane is not None:
            if lane._queue:
                return lane._queue.popleft()
            lane._busy = False
        if _backlog:
            return _backlog.popleft()     # a lane's job here is that lane's running one
        _workers -= 1
        return None


def _worker(job: Job) -> None:
    while job is not None:
        _execute(job)
        job = _next(job)


def _execute(job: Job) -> None:
    with _lock:
        if job.state == _CANCELLED:
            return                      # cancelled before it started: never runs
        job.state = _RUNNING
    error = value = None
    try:
        if job.cpus is not None:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, job.cpus)
            try:
                value = job.fn(*job.args)
            finally:
                os.sched_setaffinity(0, saved)
        else:
            value = job.fn(*job.args)
    except Exception as exc:
        error = exc
    inbox = job._inbox
    with _lock:
        job.error, job.value = error, value
        orphan = inbox is None or job.state == _CANCELLED
        if not orphan:
            job.state = _FINISHED
            inbox.finished.append(job)
            os.eventfd_write(inbox.efd, 1)
    if not orphan:
        return
    if error is not None:
        if inbox is None:           # a cleanup (fire and forget): nobody else will see it
            log.error("offload job %s failed: %s", job.name, error)
        return
    _release(job, value)


def _release(job: Job, value) -> None:
    """A cancelled job's value, on a worker: its ``cleanup``."""
    if job.cleanup is None:
        return
    try:
        job.cleanup(value)
    except Exception:
        log.exception("offload job %s: its cleanup raised", job.name)


def _dispose(job: Job) -> None:
    """A job cancelled after it finished: its cleanup runs on a worker, never here (it
    may block as the call did)."""
    if job.error is None and job.cleanup is not None:
        _submit(Job(_release, (job, job.value), None, None, None, None,
                    f"cleanup of {job.name}", None))
