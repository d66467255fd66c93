"""Doorbells: let an idle consumer sleep and have producers wake it only when needed.

A doorbell is a "sleeping" word on its own cache line in shared memory plus a named
POSIX semaphore (``/ringstack.<pid>.<what>``; spawn-started reactors open it by name).

Protocol (seastar's ``try_enter_interrupt_mode``, SPDK's interrupt-mode notification)::

    consumer                                  producer
    --------                                  --------
    prepare_sleep():  sleeping = 1; FENCE     publish tail (ring.put_many)
    re-check every inbound ring               ring_if_sleeping(): FENCE; if sleeping:
      work found -> cancel_sleep()                sleeping = 0; sem_post
      none       -> sleep(timeout): sem_wait(timeout); sleeping = 0

Why the fences: this is Dekker's pattern (each side stores, then loads what the other
stored), and x86-64 TSO *does* let a store sit in the store buffer while a later load
completes.  Without a full fence on both sides the consumer could read the old tail
while the producer reads the old flag, and the consumer would sleep with a message
waiting.  Pure Python has no ``mfence``; ``_full_fence()`` gets a ``lock``-prefixed
instruction (a full barrier on x86) from a non-blocking acquire/release of a private
``threading.Lock``: in CPython 3.11 on Linux that is glibc ``sem_trywait``/``sem_post``,
each an atomic compare-exchange, and neither releases the GIL nor makes a syscall
(~60 ns).  As a second line of defence the consumer always sleeps with a timeout (the
reactor passes its next timer deadline), so even a missed wake-up costs latency, not
liveness.

Producers ring only when the flag is set, so a busy consumer costs them one shared
load and the fence per flush, never a syscall.  Several producers may post for one
sleep; the consumer swallows the surplus after waking so the next sleep is not cut
short.
"""
from __future__ import annotations

import threading

import posix_ipc

from .shm import Instance, Semaphore

DOORBELL_REGION = 64  # one cache line: the sleeping word and nothing else

_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def _full_fence() -> None:
    """A full memory barrier (see module notes): a locked cmpxchg and a locked add."""
    _fence_acquire(False)
    _fence_release()


class Doorbell:
    """One consumer's doorbell over a 64-byte shared region and a named semaphore."""

    __slots__ = ("_words", "semaphore", "_sem", "wakeups_sent")

    def __init__(self, region: memoryview, semaphore: Semaphore, *, init: bool = False):
        self._words = memoryview(region)[:DOORBELL_REGION].cast("Q")
        if init:
            self._words[0] = 0
        self.semaphore = semaphore
        self._sem = semaphore.sem
        self.wakeups_sent = 0

    @classmethod
    def create(cls, instance: Instance, what: str, region: memoryview) -> "Doorbell":
        return cls(region, Semaphore.create(instance, what), init=True)

    @classmethod
    def attach(cls, name: str, region: memoryview) -> "Doorbell":
        return cls(region, Semaphore.attach(name))

    # -- consumer ---------------------------------------------------------------------
    def prepare_sleep(self) -> None:
        """Announce the intent to sleep.  The caller must re-check its rings after this
        and call either ``cancel_sleep()`` (work found) or ``sleep()``."""
        self._words[0] = 1
        _full_fence()

    def cancel_sleep(self) -> None:
        self._words[0] = 0

    def sleep(self, timeout_s: float | None) -> bool:
        """Block until rung or ``timeout_s`` elapses (None: no timeout).  Returns True
        if woken by a producer.  Always leaves the flag clear."""
        try:
            self._sem.acquire(timeout_s)
            woken = True
        except posix_ipc.BusyError:
            woken = False
        self._words[0] = 0
        self._swallow_surplus()
        return woken

    def _swallow_surplus(self) -> None:
        acquire = self._sem.acquire
        while True:
            try:
                acquire(0)
            except posix_ipc.BusyError:
                return

    @property
    def sleeping(self) -> bool:
        return bool(self._words[0])

    # -- producer ---------------------------------------------------------------------
    def ring_if_sleeping(self) -> bool:
        """Call after publishing to the consumer's ring.  Posts the semaphore only if
        the consumer announced sleep; returns whether it did."""
        _full_fence()
        words = self._words
        if words[0]:
            words[0] = 0
            self._sem.release()
            self.wakeups_sent += 1
            return True
        return False

    def release(self) -> None:
        """Drop the view into shared memory (the semaphore is closed by its owner)."""
        self._words.release()

    def close(self) -> None:
        self.release()
        if not self.semaphore.owned:
            self.semaphore.close()
