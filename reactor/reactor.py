"""The reactor: one per process (per core), hosting threads and moving messages between
reactors.  It spawns nothing and never sleeps by itself: :meth:`Reactor.poll_once` runs
one pass of the loop with the time passed in; process mode (reactor/app.py) and the
deterministic harness (reactor/testing.py) each drive it their own way.

The order of one pass, and why:

1. **Inbound transport, bounded batch.**  Remote messages arrive first so that work other
   cores handed us is not starved by local pollers (seastar orders its pollers the same
   way).  The batch is bounded so a flooding peer cannot starve local work.
2. **Each thread's poll**: critical message, up to MSG_BATCH_SIZE messages, active pollers,
   expired timed pollers (see reactor/thread.py).
3. **Outbound flush**: messages that found a peer's ring full are retried here, so a full
   ring is backpressure the loop absorbs, never loss and never a spin inside send_msg.

Addressing: a thread id carries its reactor's index in the high bits
(``tid >> TID_SHIFT``), so any reactor can route to any thread without a directory.
A message to a thread of this reactor is a plain (fn, args) append; a message to another
reactor is encoded (registered handler name + msgpack arguments) and travels through the
transport.  Only functions registered with :func:`reactor.remote` may cross.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque

from ipc.ring import Ring

from . import thread as _t
from . import wire
from .thread import Thread, ThreadError

log = logging.getLogger("ringstack.reactor")

TID_SHIFT = 16
#: Records taken from the inbound transport per pass (bounded, see above).
INBOUND_BATCH = 256

#: Data bytes of each ring between two reactors in process mode (``App(ring_capacity=)``).
DEFAULT_RING_CAPACITY = 1 << 20

_process_reactor: "Reactor | None" = None

#: ``fn(reactor, index)`` run by :meth:`Reactor.mark_dead` before the watchers: the reactor
#: layer's own bookkeeping (walks, fanout operations) that must never wait for a dead peer.
#: Modules of this package append to it when imported.
death_hooks: list = []


def current_reactor() -> "Reactor":
    """The reactor running the caller: the current thread's, else this process's."""
    t = _t._current
    if t is not None:
        return t.reactor
    if _process_reactor is None:
        raise ThreadError("no reactor in this context (call from a ringstack thread)")
    return _process_reactor


class ThreadRef:
    """A handle to a thread on another reactor: enough to send it messages."""

    __slots__ = ("id", "name")

    def __init__(self, tid: int, name: str = ""):
        self.id = tid
        self.name = name or f"thread{tid}"

    def __repr__(self):
        return f"<ThreadRef {self.name} id={self.id}>"

    def __eq__(self, other):
        return getattr(other, "id", None) == self.id

    def __hash__(self):
        return hash(self.id)


class Reactor:
    """Hosts threads of one process and routes messages.  ``transport`` delivers encoded
    records to other reactors (``send(dest_index, record) -> None`` and ``drain(max) ->
    list[record]``), ``clock`` returns monotonic nanoseconds."""

    def __init__(self, index: int, core: int, n_reactors: int, transport, clock):
        self.index = index
        self.core = core
        self.n_reactors = n_reactors
        self.transport = transport
        self.now = clock
        self.threads: list[Thread] = []
        self._poll_order: tuple = ()          # threads polled each pass (a stable copy)
        self.threads_by_id: dict[int, Thread] = {}
        self._tid_seq = itertools.count(1)
        self.io_devices: dict = {}        # io_device key -> IoDevice
        self.io_devices_by_name: dict = {}
        self.walks: dict = {}              # walk id -> origin-side state (None: failed by a death)
        self._walk_seq = itertools.count(1)
        self.locals: dict = {}             # per-reactor state of subsystems (bdev replica...)
        self.running = True
        self.dead: set[int] = set()        # reactors known to have died: sends to them fail
        self.death_watchers: list = []     # fn(index) run when a peer is found dead
        self.pending_local = False         # a local message was queued since the last pass
        self.exited_threads: deque = deque()
        self.on_thread_exited = None

    def __repr__(self):
        return f"<Reactor {self.index} core={self.core}>"

    def mark_dead(self, index: int) -> None:
        """Peer ``index`` died: from now on sends to it fail and walks skip it, and every
        watcher (``fn(index)``, e.g. a layer failing the I/O it forwarded there) runs once."""
        if index in self.dead or index == self.index:
            return
        self.dead.add(index)
        for fn in death_hooks:
            try:
                fn(self, index)
            except Exception:
                log.exception("reactor %d: death hook %r raised", self.index, fn)
        for fn in list(self.death_watchers):
            try:
                fn(index)
            except Exception:
                log.exception("reactor %d: peer-death watcher %r raised", self.index, fn)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    # ----------------------------------------------------------------- threads
    def create_thread(self, name: str | None = None) -> Thread:
        tid = (self.index << TID_SHIFT) | next(self._tid_seq)
        t = Thread(self, tid, name or f"thread{tid}")
        self.threads.append(t)
        self.threads_by_id[tid] = t
        self._poll_order = tuple(self.threads)
        return t

    @property
    def default_thread(self) -> Thread:
        """The reactor's first thread: control-plane messages to a reactor land here."""
        return self.threads[0]

    def _thread_exited(self, t: Thread) -> None:
        self.threads.remove(t)
        self.threads_by_id.pop(t.id, None)
        self._poll_order = tuple(self.threads)
        self.exited_threads.append(t)

    def _notify_local(self, thread: Thread) -> None:
        self.pending_local = True

    def default_tid(self, reactor_index: int) -> int:
        """Id of reactor ``reactor_index``'s default thread (always its first, seq 1)."""
        return (reactor_index << TID_SHIFT) | 1

    # ---------------------------------------------------------------- messages
    def send(self, target, fn, args) -> int:
        """Queue ``fn(*args)`` on ``target`` (Thread, ThreadRef or thread id).  Returns 0,
        or -EIO when the target thread has exited (SPDK's behaviour)."""
        if target.__class__ is Thread and target.reactor is self:
            if target.state == _t.EXITED:
                return -5
            target._msgs.append((fn, args))
            self.pending_local = True
            return 0
        tid = target if isinstance(target, int) else target.id
        dest = tid >> TID_SHIFT
        if dest == self.index:
            t = self.threads_by_id.get(tid)
            if t is None:
                return -5
            t._msgs.append((fn, args))
            self.pending_local = True
            return 0
        if not 0 <= dest < self.n_reactors:
            raise ThreadError(f"thread id {tid} names reactor {dest}, which does not exist")
        if dest in self.dead:
            log.debug("reactor %d: message %s to dead reactor %d dropped", self.index,
                      getattr(fn, "__name__", fn), dest)
            return -5
        self.transport.send(dest, wire.encode_msg(tid, fn, args))
        return 0

    def send_record(self, dest: int, record: bytes) -> int:
        """Hand an already encoded message (:func:`wire.encode_msg`) to reactor ``dest``:
        for callers that encode first, to check the record before sending anything.
        Returns 0, or -EIO when ``dest`` is dead."""
        if dest in self.dead:
            return -5
        self.transport.send(dest, record)
        return 0

    @property
    def max_record(self) -> int:
        """The largest encoded message the transport carries between two reactors."""
        return self.transport.max_record

    def _deliver(self, record) -> None:
        """Decode one inbound record (a message or a batch of them) and queue each on its
        thread; bad records and messages are logged and dropped (the reactor keeps
        running)."""
        try:
            msgs = wire.decode_record(record)
        except wire.WireError as exc:
            log.error("reactor %d: dropped malformed record: %s", self.index, exc)
            return
        threads = self.threads_by_id
        for tid, fn, args in msgs:
            t = threads.get(tid)
            if t is None or t.state == _t.EXITED:
                log.error("reactor %d: dropped message %s for unknown thread %d",
                          self.index, getattr(fn, "__name__", fn), tid)
                continue
            t._msgs.append((fn, args))

    # -------------------------------------------------------------------- loop
    def poll_once(self, now: int | None = None) -> int:
        """One pass of the loop (see the module docstring for the order).  Returns the
        amount of work done; 0 means the reactor was idle."""
        if now is None:
            now = self.now()
        busy = 0
        transport = self.transport
        records = transport.drain(INBOUND_BATCH)
        if records:
            busy += len(records)
            deliver = self._deliver
            for rec in records:
                deliver(rec)
        self.pending_local = False
        for t in self._poll_order:
            busy += t.poll(now)
        if transport.dirty:
            busy += transport.flush()
        if self.exited_threads:
            self.finish_exited_threads()
        return busy

    def finish_exited_threads(self) -> None:
        """Run the exit callbacks of threads that reached EXITED in the last pass (outside
        any thread, after the pass, so a callback may create or message other threads)."""
        while self.exited_threads:
            t = self.exited_threads.popleft()
            if t.exit_cb is not None:
                t.exit_cb()
            if self.on_thread_exited is not None:
                self.on_thread_exited(t)

    def has_queued_work(self) -> bool:
        """Whether a pass right now has messages to run: queued locally, waiting in an
        inbound ring, or waiting to be flushed out.  The loop re-checks this after
        announcing sleep (see reactor/app.py Loop._sleep)."""
        if self.pending_local or self.transport.pending():
            return True
        return any(t.has_pending_work() for t in self._poll_order)

    def next_deadline(self) -> int | None:
        """Earliest timed-poller deadline (ns) over all threads, or None."""
        best = None
        for t in self.threads:
            d = t.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    # ------------------------------------------------------------------- stats
    def stats(self) -> dict:
        """One entry of SPDK's ``framework_get_reactors`` result."""
        busy = sum(t.busy_ns for t in self.threads)
        idle = sum(t.idle_ns for t in self.threads)
        return {
            "lcore": self.core,
            "busy": busy,
            "idle": idle,
            "in_interrupt": False,
            "lw_threads": [{"name": t.name, "id": t.id, "cpumask": hex(1 << self.core),
                            "elapsed": t.busy_ns + t.idle_ns} for t in self.threads],
        }


class LocalTransport:
    """In-process transport between the reactors of one process (deterministic mode).
    Records are still encoded, so what crosses reactors here is exactly what would cross
    a shared-memory ring in process mode (ctx travels by value, handlers by name)."""

    dirty = False   # sends are delivered at once: nothing to flush
    #: What a process-mode ring of the default capacity carries (nothing here enforces
    #: it on send; the fanout checks it, so a too-large broadcast fails here as there).
    max_record = Ring.max_record_for(DEFAULT_RING_CAPACITY)

    def __init__(self):
        self.peers: list[deque] = []
        self.index = 0

    @classmethod
    def mesh(cls, n: int) -> list["LocalTransport"]:
        queues = [deque() for _ in range(n)]
        out = []
        for i in range(n):
            tr = cls()
            tr.peers = queues
            tr.index = i
            out.append(tr)
        return out

    def send(self, dest: int, record: bytes) -> None:
        self.peers[dest].append(record)

    def drain(self, max_records: int) -> list:
        q = self.peers[self.index]
        if not q:
            return ()
        n = min(len(q), max_records)
        return [q.popleft() for _ in range(n)]

    def pending(self) -> bool:
        return bool(self.peers[self.index])

    def flush(self) -> int:
        return 0
