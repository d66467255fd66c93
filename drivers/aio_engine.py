"""File I/O off the reactor loop, for the aio bdev (drivers/aio.py).

Why io_uring, driven through ctypes (measured here, 4 KiB random reads of a 64 MiB file
from a spinning poll loop pinned to one core; method in docs/drivers.md):

=========================================  ===========  =================  ==================
backend                                     QD1 IOPS     QD32 IOPS          loop CPU per I/O
=========================================  ===========  =================  ==================
inline ``os.preadv`` (blocks the loop)      489 k        323 k              1.7-2.0 us
worker threads + ``os.preadv`` (1, 2, 4)    193          4.4-6.0 k          125-5000 us
Linux AIO (ctypes), O_DIRECT                21.9 k       84 k               11-44 us
Linux AIO (ctypes), buffered                192 k        279 k              3.3-4.9 us
io_uring (ctypes, this file), buffered      83 k         199 k              5-12 us
io_uring (ctypes, this file), O_DIRECT      11.9 k       30 k               24-60 us
=========================================  ===========  =================  ==================

* **Worker threads lose**, by three orders of magnitude: ``preadv`` releases the GIL, but a
  reactor never does (it spins), so every hand-off waits for CPython's 5 ms switch interval.
  A thread pool only works beside a loop that sleeps, and ours must not sleep under load.
* **Linux AIO** is asynchronous only with O_DIRECT; buffered, ``io_submit`` copies inside
  the syscall (it is a synchronous read with extra steps).
* With a hot page cache the synchronous paths post the best raw numbers (nothing ever
  blocks); that is the case the table measures, not the case that matters: a cache miss,
  a buffered write-back or an ``fsync`` blocks the whole reactor for milliseconds there.
  Our io_uring path costs 5-12 us of loop CPU per I/O, mostly ctypes (pinning each buffer
  and building the iovec array), which is the price of never blocking.  The O_DIRECT rows
  were taken minutes apart on a shared 2-core VM; treat them as the same order.
* **io_uring** is asynchronous for buffered files too (the kernel punts a read that would
  block to its own workers) and reaping is a memory read of the completion ring, no syscall.
  The PyPI bindings we looked at (``liburing``: a Zig wrapper whose docs mark functions
  "not tested" and "most likely segfault") are not what a storage target should rest on;
  the part we need is four syscalls and three mmaps, so it is written here.

The engine belongs to one ringstack thread (SPDK's aio "group channel": one per thread,
shared by every aio bdev the thread does I/O to).  Submissions are queued into the SQ
during a pass and published with one ``io_uring_enter`` when the group's poller runs;
the poller also reaps the CQ and runs each I/O's callback, on the submitting thread.

Memory ordering (the same x86-64 total-store-order argument as ipc/ring.py): we write the
SQE and the SQ array slot, then store the SQ tail (a 4-byte aligned store via
``memoryview.cast('I')``); TSO keeps those stores in order, and the kernel reads the tail
with acquire semantics.  On the CQ side we load the tail, then the CQEs (loads are not
reordered with older loads on x86), then store the head.  Other architectures are refused
(:func:`available` is False) and the synchronous fallback is used.

A sleeping reactor is woken by an eventfd registered with the ring
(``IORING_REGISTER_EVENTFD``): the group's poller is fd-driven on it.

:class:`SyncEngine` is the fallback where io_uring is unavailable (kernel too old,
``io_uring_disabled``, seccomp): ``preadv``/``pwritev`` inline in submit (so it blocks the
loop for the duration of the syscall), completions still deferred to the poller so the
bdev layer sees the same never-complete-inside-submit contract.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
from collections import deque

log = logging.getLogger("ringstack.aio")

_SYS_io_uring_setup = 425
_SYS_io_uring_enter = 426
_SYS_io_uring_register = 427
_IORING_OFF_SQ_RING = 0
_IORING_OFF_CQ_RING = 0x8000000
_IORING_OFF_SQES = 0x10000000
_IORING_FEAT_SINGLE_MMAP = 1
_IORING_ENTER_GETEVENTS = 1
_IORING_REGISTER_EVENTFD = 4
_IORING_OP_READV = 1
_IORING_OP_WRITEV = 2
_IORING_OP_FSYNC = 3
_IORING_FSYNC_DATASYNC = 1

#: O_DIRECT needs buffer addresses, lengths and offsets aligned to the device's logical
#: block; 4096 covers every device we meet (and 512-byte ones).
DIRECT_ALIGN = 4096

_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


class _SqOff(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint32), ("tail", ctypes.c_uint32),
                ("ring_mask", ctypes.c_uint32), ("ring_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("dropped", ctypes.c_uint32),
                ("array", ctypes.c_uint32), ("resv1", ctypes.c_uint32),
                ("user_addr", ctypes.c_uint64)]


class _CqOff(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint32), ("tail", ctypes.c_uint32),
                ("ring_mask", ctypes.c_uint32), ("ring_entries", ctypes.c_uint32),
                ("overflow", ctypes.c_uint32), ("cqes", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("resv1", ctypes.c_uint32),
                ("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", _SqOff), ("cq_off", _CqOff)]


class _Sqe(ctypes.Structure):
    # struct io_uring_sqe, 64 bytes; only the fields we use are named
    _fields_ = [("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("ioprio", ctypes.c_uint16), ("fd", ctypes.c_int32),
                ("off", ctypes.c_uint64), ("addr", ctypes.c_uint64),
                ("len", ctypes.c_uint32), ("rw_flags", ctypes.c_uint32),
                ("user_data", ctypes.c_uint64), ("buf_index", ctypes.c_uint16),
                ("personality", ctypes.c_uint16), ("splice_fd_in", ctypes.c_int32),
                ("pad", ctypes.c_uint64 * 2)]


assert ctypes.sizeof(_Params) == 120 and ctypes.sizeof(_Sqe) == 64


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_probe_result: bool | None = None


def available() -> bool:
    """Whether io_uring can be used here (x86-64 Linux, syscall allowed); probed once."""
    global _probe_result
    if _probe_result is None:
        _probe_result = False
        if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
            try:
                UringEngine(4).close()
                _probe_result = True
            except OSError as exc:
                log.info("io_uring unavailable (%s): aio bdevs use the synchronous engine", exc)
    return _probe_result


class _Op:
    """One submitted operation: what keeps its buffers alive until the kernel is done."""

    __slots__ = ("cb", "expect", "keep", "bounce", "iovs")

    def __init__(self, cb, expect, keep, bounce, iovs):
        self.cb = cb
        self.expect = expect      # bytes a read/write must move (None: fsync)
        self.keep = keep          # ctypes objects pinning buffer exports and the iovec array
        self.bounce = bounce      # O_DIRECT bounce buffer of a read: copied out on completion
        self.iovs = iovs


def _addr_of(mv):
    """(address, pin) of a writable buffer; pin keeps the export alive."""
    c = (ctypes.c_char * len(mv)).from_buffer(mv)
    return ctypes.addressof(c), c


class UringEngine:
    """One io_uring.  Not thread-safe: owned by one ringstack thread."""

    name = "io_uring"

    def __init__(self, entries: int = 128):
        sc = _syscall()
        p = _Params()
        fd = sc(_SYS_io_uring_setup, ctypes.c_uint32(entries), ctypes.byref(p))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_uring_setup: {os.strerror(e)}")
        self.ring_fd = fd
        self._maps = []
        self.efd = -1
        try:
            self._setup(p)
        except BaseException:
            self.close()
            raise

    def _setup(self, p: _Params) -> None:
        fd = self.ring_fd
        so, co = p.sq_off, p.cq_off
        sq_size = so.array + p.sq_entries * 4
        cq_size = co.cqes + p.cq_entries * 16
        if p.features & _IORING_FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        sq_map = mmap.mmap(fd, sq_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                           offset=_IORING_OFF_SQ_RING)
        self._maps.append(sq_map)
        if p.features & _IORING_FEAT_SINGLE_MMAP:
            cq_map = sq_map
        else:
            cq_map = mmap.mmap(fd, cq_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=_IORING_OFF_CQ_RING)
            self._maps.append(cq_map)
        sqe_map = mmap.mmap(fd, p.sq_entries * 64, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=_IORING_OFF_SQES)
        self._maps.append(sqe_map)
        sq_words = memoryview(sq_map).cast("I")
        cq_words = memoryview(cq_map).cast("I") if cq_map is not sq_map else sq_words
        self._views = [sq_words, cq_words]
        self._sq_head = so.head // 4
        self._sq_tail = so.tail // 4
        self._sq_mask = sq_words[so.ring_mask // 4]
        self._sq_array = so.array // 4
        self._cq_head = co.head // 4
        self._cq_tail = co.tail // 4
        self._cq_mask = cq_words[co.ring_mask // 4]
        self._sqw = sq_words
        self._cqw = cq_words
        self._cqes = co.cqes // 4           # CQE i = words [cqes + 4i .. +4]: u64 data, s32 res
        self._cq_map = cq_map
        self.entries = p.sq_entries
        self._sqes = (_Sqe * p.sq_entries).from_buffer(sqe_map)
        self._pending = 0                   # SQEs written, tail not yet published
        self._ops: dict[int, _Op] = {}
        self._ids = 0
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        arg = ctypes.c_int32(self.efd)
        if _syscall()(_SYS_io_uring_register, self.ring_fd, _IORING_REGISTER_EVENTFD,
                      ctypes.byref(arg), 1) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_uring_register(EVENTFD): {os.strerror(e)}")
        self._efd_dirty = False

    def fileno(self) -> int:
        return self.efd

    @property
    def inflight(self) -> int:
        """Operations queued or in the kernel, not yet completed."""
        return len(self._ops)

    # -- submission
    def _sqe(self):
        if len(self._ops) >= self.entries:
            return None, None
        w = self._sqw
        tail = w[self._sq_tail] + self._pending
        idx = tail & self._sq_mask
        w[self._sq_array + idx] = idx
        self._ids += 1
        return self._sqes[idx], self._ids

    def submit_rw(self, fd: int, write: bool, iovs, offset: int, cb, direct: bool = False) -> int:
        """Queue a readv/writev of ``iovs`` (memoryviews) at byte ``offset``; ``cb(res)``
        later on this thread (res: 0 or a negative errno).  Returns 0, or -ENOMEM when the
        ring is full (retry later)."""
        sqe, uid = self._sqe()
        if sqe is None:
            return -errno.ENOMEM
        iovs = _views(iovs)
        total = sum(v.nbytes for v in iovs)
        keep = []
        bounce = None
        if direct and not _aligned(iovs):
            # O_DIRECT refuses unaligned memory: go through one aligned private buffer
            bounce = mmap.mmap(-1, max(total, 1))
            if write:
                pos = 0
                for v in iovs:
                    bounce[pos:pos + len(v)] = v
                    pos += len(v)
            use = [memoryview(bounce)]
        else:
            use = iovs
        arr = (_Iovec * len(use))()
        for i, v in enumerate(use):
            if v.readonly:
                c = ctypes.create_string_buffer(bytes(v), len(v))
                a = ctypes.addressof(c)
            else:
                a, c = _addr_of(v)
            keep.append(c)
            arr[i].base = a
            arr[i].len = len(v)
        keep.append(arr)
        sqe.opcode = _IORING_OP_WRITEV if write else _IORING_OP_READV
        sqe.flags = 0
        sqe.ioprio = 0
        sqe.fd = fd
        sqe.off = offset
        sqe.addr = ctypes.addressof(arr)
        sqe.len = len(use)
        sqe.rw_flags = 0
        sqe.user_data = uid
        sqe.buf_index = 0
        sqe.personality = 0
        sqe.splice_fd_in = 0
        self._ops[uid] = _Op(cb, total, keep, None if write else bounce,
                             None if (write or bounce is None) else iovs)
        self._pending += 1
        return 0

    def submit_fsync(self, fd: int, cb, datasync: bool = True) -> int:
        sqe, uid = self._sqe()
        if sqe is None:
            return -errno.ENOMEM
        sqe.opcode = _IORING_OP_FSYNC
        sqe.flags = 0
        sqe.ioprio = 0
        sqe.fd = fd
        sqe.off = 0
        sqe.addr = 0
        sqe.len = 0
        sqe.rw_flags = _IORING_FSYNC_DATASYNC if datasync else 0
        sqe.user_data = uid
        sqe.buf_index = 0
        sqe.personality = 0
        sqe.splice_fd_in = 0
        self._ops[uid] = _Op(cb, None, (), None, None)
        self._pending += 1
        return 0

    def flush(self) -> int:
        """Publish queued SQEs with one store of the tail, then one io_uring_enter for
        everything the kernel has not consumed yet (a failed enter leaves the SQEs in the
        ring; the next flush enters them again)."""
        w = self._sqw
        n = self._pending
        if n:
            w[self._sq_tail] = (w[self._sq_tail] + n) & 0xFFFFFFFF
            self._pending = 0
        unconsumed = (w[self._sq_tail] - w[self._sq_head]) & 0xFFFFFFFF
        if not unconsumed:
            return 0
        rc = _syscall()(_SYS_io_uring_enter, self.ring_fd, unconsumed, 0, 0, None, 0)
        if rc < 0:
            e = ctypes.get_errno()
            if e not in (errno.EAGAIN, errno.EBUSY, errno.EINTR):
                log.error("io_uring_enter failed: %s", os.strerror(e))
            return 0
        return rc

    def poll(self) -> int:
        """Submit what is queued, reap what completed, run callbacks.  Returns work done."""
        work = 0
        if self._pending or self._sqw[self._sq_tail] != self._sqw[self._sq_head]:
            work += self.flush()
        cw = self._cqw
        head = cw[self._cq_head]
        tail = cw[self._cq_tail]
        if head == tail:
            if self._efd_dirty and not self._ops:
                self._drain_efd()
            return work
        done = []
        mask = self._cq_mask
        base = self._cqes
        ops = self._ops
        while head != tail:
            i = base + (head & mask) * 4
            uid = cw[i] | (cw[i + 1] << 32)
            res = cw[i + 2]
            if res & 0x80000000:
                res -= 1 << 32
            head = (head + 1) & 0xFFFFFFFF
            op = ops.pop(uid, None)
            if op is not None:
                done.append((op, res))
        cw[self._cq_head] = head
        # Drain the eventfd now, and once more when idle: the kernel signals it just after
        # posting a CQE, so a signal for a CQE reaped above can land after this drain and
        # would otherwise keep a sleeping loop's select() returning at once.
        self._drain_efd()
        self._efd_dirty = True
        for op, res in done:
            if res < 0:
                status = res
            elif op.expect is not None and res != op.expect:
                status = -errno.EIO      # short transfer: past the end of the file
            else:
                status = 0
                if op.bounce is not None and op.iovs is not None:
                    pos = 0
                    for v in op.iovs:
                        v[:] = op.bounce[pos:pos + len(v)]
                        pos += len(v)
            op.keep = None
            if op.bounce is not None:
                op.bounce.close()
            try:
                op.cb(status)
            except Exception:
                log.exception("aio completion callback raised")
        return work + len(done)

    def _drain_efd(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        self._efd_dirty = False

    def close(self) -> None:
        """Close the ring.  Call only when nothing is in flight (the aio channel waits)."""
        for v in getattr(self, "_views", ()):
            v.release()
        self._views = []
        self._sqes = None
        self._sqw = self._cqw = None
        self._cq_map = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                log.error("io_uring map still exported at close")
        self._maps = []
        for fd in (self.efd, self.ring_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.efd = self.ring_fd = -1


def _views(iovs):
    """Any buffer-protocol objects as flat byte memoryviews."""
    out = []
    for v in iovs:
        if not isinstance(v, memoryview):
            v = memoryview(v)
        if v.format != "B" or v.ndim != 1:
            v = v.cast("B")
        out.append(v)
    return out


def _aligned(iovs) -> bool:
    for v in iovs:
        if len(v) % DIRECT_ALIGN:
            return False
        if v.readonly:
            return False
        a, c = _addr_of(v)
        del c
        if a % DIRECT_ALIGN:
            return False
    return True


class SyncEngine:
    """The fallback: the syscall runs inline (blocking the loop), the completion is
    deferred to the poller.  Same interface as :class:`UringEngine`."""

    name = "sync"

    def __init__(self, entries: int = 128):
        self.entries = entries
        self._done: deque = deque()
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        return self.efd

    @property
    def inflight(self) -> int:
        return len(self._done)

    def submit_rw(self, fd, write, iovs, offset, cb, direct=False) -> int:
        iovs = _views(iovs)
        total = sum(v.nbytes for v in iovs)
        try:
            if direct and not _aligned(iovs):
                bounce = mmap.mmap(-1, max(total, 1))
                try:
                    if write:
                        pos = 0
                        for v in iovs:
                            bounce[pos:pos + len(v)] = v
                            pos += len(v)
                        n = os.pwritev(fd, [bounce], offset)
                    else:
                        n = os.preadv(fd, [bounce], offset)
                        pos = 0
                        for v in iovs:
                            v[:] = bounce[pos:pos + len(v)]
                            pos += len(v)
                finally:
                    bounce.close()
            else:
                n = os.pwritev(fd, iovs, offset) if write else os.preadv(fd, iovs, offset)
            status = 0 if n == total else -errno.EIO
        except OSError as exc:
            status = -(exc.errno or errno.EIO)
        self._queue(cb, status)
        return 0

    def submit_fsync(self, fd, cb, datasync=True) -> int:
        try:
            (os.fdatasync if datasync else os.fsync)(fd)
            status = 0
        except OSError as exc:
            status = -(exc.errno or errno.EIO)
        self._queue(cb, status)
        return 0

    def _queue(self, cb, status) -> None:
        if not self._done:
            os.eventfd_write(self.efd, 1)     # wake a sleeping loop for the completion
        self._done.append((cb, status))

    def poll(self) -> int:
        if not self._done:
            return 0
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        n = len(self._done)
        for _ in range(n):
            cb, status = self._done.popleft()
            try:
                cb(status)
            except Exception:
                log.exception("aio completion callback raised")
        return n

    def close(self) -> None:
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1


def make_engine(kind: str = "auto", entries: int = 128):
    """``auto``: io_uring when available, else the synchronous engine."""
    if kind == "uring" or (kind == "auto" and available()):
        return UringEngine(entries)
    return SyncEngine(entries)
