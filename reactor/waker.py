"""A doorbell a reactor can sleep on *together with sockets*.

ipc's Doorbell wakes a sleeper through a POSIX semaphore, which cannot be waited on
together with file descriptors.  A reactor that also serves sockets (the RPC server on
the main reactor, NBD connections) must wake for either, so its wake primitive is a
named FIFO in /dev/shm (``ringstack.<pid>.wake<j>``: same naming, same reaper, same leak
check as the segments): producers write one byte, the reactor ``select``s on the FIFO
plus its watched fds.  The sleeping-flag protocol (and its fence argument) is ipc's
Doorbell's, unchanged; only ``sleep``/``ring_if_sleeping`` differ.

Why a FIFO rather than an eventfd: reactors are spawned fresh (no fork), and a FIFO is
opened by name, so no descriptor has to be passed at spawn time.
"""
from __future__ import annotations

import errno
import os
import select

from ipc import doorbell as _db
from ipc.shm import SHM_DIR, segment_name


def fifo_path(owner_pid: int, index: int) -> str:
    return os.path.join(SHM_DIR, segment_name(owner_pid, f"wake{index}").lstrip("/"))


def create_fifo(owner_pid: int, index: int) -> str:
    path = fifo_path(owner_pid, index)
    os.mkfifo(path, 0o600)
    return path


class FifoDoorbell(_db.Doorbell):
    """Doorbell over the shared sleeping word and a FIFO.  The consumer opens the read
    end (and a write end of its own, so the FIFO never reports EOF); producers open the
    write end non-blocking."""

    __slots__ = ("path", "_rfd", "_wfd", "_is_consumer")

    def __init__(self, region: memoryview, path: str, consumer: bool, *, init: bool = False):
        self._words = memoryview(region)[:_db.DOORBELL_REGION].cast("Q")
        if init:
            self._words[0] = 0
        self.semaphore = None
        self._sem = None
        self.wakeups_sent = 0
        self.path = path
        self._is_consumer = consumer
        if consumer:
            self._rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            self._wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        else:
            self._rfd = -1
            self._wfd = -1   # opened lazily: the consumer may not have its read end yet

    def fileno(self) -> int:
        return self._rfd

    def sleep(self, timeout_s: float | None, fds=()) -> list:
        """Block until rung, one of ``fds`` is readable, or the timeout.  Returns the
        readable fds among ``fds``.  Always leaves the flag clear."""
        try:
            r, _, _ = select.select([self._rfd, *fds], [], [], timeout_s)
        except InterruptedError:
            r = []
        self._words[0] = 0
        self._swallow_surplus()
        return [fd for fd in r if fd != self._rfd]

    def _swallow_surplus(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def ring_if_sleeping(self) -> bool:
        _db._full_fence()
        words = self._words
        if words[0]:
            words[0] = 0
            self.wake()
            return True
        return False

    def wake(self) -> None:
        """Unconditionally wake the consumer (signal handlers, shutdown)."""
        if self._wfd < 0:
            try:
                self._wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    return  # consumer not there (yet / any more): nothing to wake
                raise
        try:
            os.write(self._wfd, b"\x01")
            self.wakeups_sent += 1
        except BlockingIOError:
            pass  # FIFO full of wake-ups already: the consumer will wake
        except BrokenPipeError:
            pass

    def release(self) -> None:
        self._words.release()

    def close(self) -> None:
        self.release()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1
