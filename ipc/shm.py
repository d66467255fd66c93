"""Shared-memory segments and semaphores owned by one ringstack instance.

Naming: every object an instance creates is called ``/ringstack.<ownerpid>.<what>``.
POSIX shared memory shows up as ``/dev/shm/ringstack.<pid>.<what>`` and a named
semaphore as ``/dev/shm/sem.ringstack.<pid>.<what>``, so one directory listing tells
which instance owns what, and :func:`reap_dead_instances` can remove the objects of
owners that are gone (a SIGKILLed launcher cannot clean up after itself).

Why posix_ipc + mmap and not ``multiprocessing.shared_memory``: on 3.11 the latter
registers even *attached* segments with the resource tracker, which unlinks them when
the attaching process exits (gh-82300) and warns about "leaks" it does not own.
posix_ipc does no tracking; the :class:`Instance` does ours explicitly.

Ownership rule: only the process that created an object unlinks it.  Attaching
processes (reactors started with spawn) only map and unmap.

Unmapping: ``mmap.close()`` raises ``BufferError`` while any memoryview derived from
the mapping is alive, so objects built over ``Segment.buf`` (rings, doorbells, arenas)
have a ``release()`` that drops their views; call it before ``Segment.close()``.
Unlinking never needs the mapping closed, which is why exit paths unlink first.
"""
from __future__ import annotations

import atexit
import logging
import mmap
import os
import re
import signal
import weakref

import posix_ipc

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
PREFIX = "ringstack"
MODE = 0o600
_WHAT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENTRY_RE = re.compile(r"^(?:sem\.)?" + PREFIX + r"\.(\d+)\.")


def segment_name(owner_pid: int, what: str) -> str:
    """The POSIX name of object ``what`` of the instance owned by ``owner_pid``."""
    if not _WHAT_RE.match(what):
        raise ValueError(f"shared-memory object name part {what!r} must match {_WHAT_RE.pattern}")
    return f"/{PREFIX}.{owner_pid}.{what}"


class Segment:
    """One mapped POSIX shared-memory segment; ``buf`` is a writable memoryview of it."""

    __slots__ = ("name", "size", "_mmap", "buf", "owned")

    def __init__(self, name: str, size: int, mapping: mmap.mmap, owned: bool):
        self.name = name
        self.size = size
        self._mmap = mapping
        self.buf = memoryview(mapping)
        self.owned = owned

    @classmethod
    def create(cls, instance: "Instance", what: str, size: int) -> "Segment":
        """Create ``/ringstack.<instance.pid>.<what>`` (0600, zero-filled) and register it
        with ``instance`` so that every exit path of the owner unlinks it."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        name = segment_name(instance.pid, what)
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=size)
        try:
            mapping = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        shm.close_fd()
        seg = cls(name, size, mapping, owned=True)
        instance._track_segment(seg)
        return seg

    @classmethod
    def attach(cls, name: str) -> "Segment":
        """Map an existing segment (created by another process) read-write."""
        shm = posix_ipc.SharedMemory(name)
        try:
            size = shm.size
            mapping = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        return cls(name, size, mapping, owned=False)

    def close(self) -> None:
        """Unmap.  Raises BufferError naming the segment if views into it are still alive."""
        if self._mmap is None:
            return
        self.buf.release()
        try:
            self._mmap.close()
        except BufferError:
            self.buf = memoryview(self._mmap)
            raise BufferError(
                f"cannot unmap {self.name}: memoryviews into it are still alive "
                "(call release() on the rings/arenas built over it first)") from None
        self._mmap = None

    def unlink(self) -> None:
        """Remove the name; the memory lives on until every process unmaps it."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def __repr__(self) -> str:
        return f"<Segment {self.name} size={self.size}{' owned' if self.owned else ''}>"


class Semaphore:
    """A named POSIX semaphore ``/ringstack.<pid>.<what>`` (the doorbell's wake primitive)."""

    __slots__ = ("name", "sem", "owned")

    def __init__(self, name: str, sem: posix_ipc.Semaphore, owned: bool):
        self.name = name
        self.sem = sem
        self.owned = owned

    @classmethod
    def create(cls, instance: "Instance", what: str) -> "Semaphore":
        name = segment_name(instance.pid, what)
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=MODE, initial_value=0)
        obj = cls(name, sem, owned=True)
        instance._track_semaphore(obj)
        return obj

    @classmethod
    def attach(cls, name: str) -> "Semaphore":
        return cls(name, posix_ipc.Semaphore(name), owned=False)

    def close(self) -> None:
        if self.sem is not None:
            self.sem.close()
            self.sem = None

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_semaphore(self.name)
        except posix_ipc.ExistentialError:
            pass


class Instance:
    """The owner of every segment and semaphore of one ringstack app instance.

    Created once, in the launcher.  ``close()`` unlinks (then unmaps) everything it
    created; it also runs at interpreter exit, and on SIGTERM/SIGINT once
    ``install_signal_handlers()`` was called (opt-in: an embedding program owns its
    signals).  A forked child inherits the object but never unlinks: only ``pid`` does.
    """

    def __init__(self, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        self._segments: list[Segment] = []
        self._semaphores: list[Semaphore] = []
        self._closed = False
        self._previous_handlers: dict[int, object] = {}
        # A weak reference: atexit must not keep a forgotten Instance alive, but an
        # Instance that is still alive at exit is cleaned up.
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda inst: inst and inst.close())(ref())
        atexit.register(self._atexit)

    # -- creation helpers -------------------------------------------------------------
    def create_segment(self, what: str, size: int) -> Segment:
        return Segment.create(self, what, size)

    def create_semaphore(self, what: str) -> Semaphore:
        return Semaphore.create(self, what)

    def name(self, what: str) -> str:
        return segment_name(self.pid, what)

    def _track_segment(self, seg: Segment) -> None:
        if self._closed:
            seg.unlink()
            raise RuntimeError(f"instance {self.pid} is closed")
        self._segments.append(seg)

    def _track_semaphore(self, sem: Semaphore) -> None:
        if self._closed:
            sem.unlink()
            raise RuntimeError(f"instance {self.pid} is closed")
        self._semaphores.append(sem)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    # -- teardown ---------------------------------------------------------------------
    def unlink_all(self) -> None:
        """Remove every name this instance created (safe in a signal handler: no unmapping)."""
        if os.getpid() != self.pid:
            return  # a forked child: the parent owns these names
        for seg in self._segments:
            seg.unlink()
        for sem in self._semaphores:
            sem.unlink()

    def close(self) -> None:
        """Unlink everything, then unmap what can be unmapped.  Idempotent."""
        if self._closed:
            return
        self.unlink_all()
        self._closed = True
        if os.getpid() == self.pid:
            for seg in self._segments:
                try:
                    seg.close()
                except BufferError as exc:
                    # Views still alive (e.g. at interpreter exit): the names are gone
                    # already, so nothing leaks; the mapping dies with the process.
                    log.debug("%s", exc)
            for sem in self._semaphores:
                sem.close()
        self._segments.clear()
        self._semaphores.clear()
        self.restore_signal_handlers()
        atexit.unregister(self._atexit)

    def __enter__(self) -> "Instance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- signals ----------------------------------------------------------------------
    def install_signal_handlers(self, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
        """On each signal: unlink everything, then behave as the previous handler would
        (SIGINT raises KeyboardInterrupt, SIGTERM with the default action terminates)."""
        for sig in signals:
            if signal.getsignal(sig) is signal.SIG_IGN:
                # The process was told to ignore it (e.g. started in the background by a
                # shell without job control): unlinking on it would leave a process that
                # keeps running without its segments.
                continue
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for sig, prev in self._previous_handlers.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, prev)
            except ValueError:
                pass  # not the main thread (e.g. atexit in an odd place)
        self._previous_handlers.clear()

    def _on_signal(self, signum, frame) -> None:
        prev = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.unlink_all()
        self.close()  # also restores the previous handlers
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:  # SIG_DFL: let the kernel apply the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __repr__(self) -> str:
        return f"<Instance pid={self.pid} segments={len(self._segments)} semaphores={len(self._semaphores)}>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        import psutil
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


def list_instance_objects(shm_dir: str = SHM_DIR) -> dict[int, list[str]]:
    """``{owner pid: [/dev/shm entry names]}`` for every ringstack object present."""
    found: dict[int, list[str]] = {}
    try:
        entries = os.listdir(shm_dir)
    except FileNotFoundError:
        return found
    for entry in entries:
        m = _ENTRY_RE.match(entry)
        if m:
            found.setdefault(int(m.group(1)), []).append(entry)
    return found


def reap_dead_instances(shm_dir: str = SHM_DIR) -> list[str]:
    """Remove segments and semaphores of instances whose owner pid is not alive (or is a
    zombie).  Returns the /dev/shm entry names removed.  Live owners are left alone."""
    removed = []
    for pid, entries in list_instance_objects(shm_dir).items():
        if _pid_alive(pid):
            continue
        for entry in entries:
            try:
                if entry.startswith("sem."):
                    posix_ipc.unlink_semaphore("/" + entry[4:])
                else:
                    posix_ipc.unlink_shared_memory("/" + entry)
            except posix_ipc.ExistentialError:
                continue
            except OSError as exc:
                log.warning("cannot reap %s of dead instance %d: %s", entry, pid, exc)
                continue
            log.info("reaped %s of dead instance %d", entry, pid)
            removed.append(entry)
    return removed
