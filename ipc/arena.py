"""DMA-style shared arenas: I/O buffers addressable from every reactor process.

An :class:`Arena` is one shared-memory segment ``/ringstack.<pid>.arena<id>``.  A buffer
is named by a :class:`BufferHandle` ``(arena_id, offset, length)``: plain integers, so
it travels in a msgpack'd message, and ``view(handle)`` turns it back into a memoryview
in any process that attached the arena.

Pools (the seed's small/large buffer pools, SPDK's ``iobuf``): the arena is cut into
one *slice per owner* (reactor); each slice holds ``large_count`` 64 KiB buffers and
``small_count`` 8 KiB buffers, all 512-byte aligned (the slice starts on a page).
The free lists are ordinary Python lists in the owning process - SPDK's per-core
caches taken all the way: no shared allocator state, so no locks and no atomics.

Ownership rule: only the owner reactor calls ``get()``/``put()`` on its
:class:`BufferPool`.  A buffer lent to another reactor (for a forwarded I/O, QoS
funnelling, NBD) is given back by a message to its owner, who puts it; ``owner_of``
tells whose it is.  ``put()`` of a foreign or already-free buffer raises ValueError:
that is a bug in the caller, caught at the edge.

Exhaustion is a status, not an exception: ``get()`` returns None and the caller
queues a waiter (the bdev layer's ``-ENOMEM`` / io_wait path).
"""
from __future__ import annotations

from typing import NamedTuple

from .shm import Instance, Segment

SMALL_BUFFER = 8 * 1024
LARGE_BUFFER = 64 * 1024
ALIGNMENT = 512
_HEADER = 4096  # keeps every slice page-aligned
_MAGIC = 0x314E454E52414B52

# arena_id -> Arena attached in this process
_arenas: dict[int, "Arena"] = {}


class BufferHandle(NamedTuple):
    arena_id: int
    offset: int
    length: int


class Arena:
    """One shared segment of buffers, cut into per-owner slices."""

    def __init__(self, segment: Segment, arena_id: int, owners: int, small_count: int, large_count: int,
                 *, init: bool):
        self.segment = segment
        self.arena_id = arena_id
        self.owners = owners
        self.small_count = small_count
        self.large_count = large_count
        self.slice_size = self.slice_bytes(small_count, large_count)
        self._buf = segment.buf
        if init:
            header = segment.buf[:64].cast("Q")
            header[1], header[2], header[3], header[4] = arena_id, owners, small_count, large_count
            header[0] = _MAGIC
            header.release()
        self._pools: dict[int, BufferPool] = {}
        if arena_id in _arenas and _arenas[arena_id] is not self:
            raise ValueError(f"arena {arena_id} is already attached in this process")
        _arenas[arena_id] = self

    @staticmethod
    def slice_bytes(small_count: int, large_count: int) -> int:
        return large_count * LARGE_BUFFER + small_count * SMALL_BUFFER

    @classmethod
    def segment_size(cls, owners: int, small_count: int, large_count: int) -> int:
        return _HEADER + owners * cls.slice_bytes(small_count, large_count)

    @classmethod
    def create(cls, instance: Instance, arena_id: int, owners: int, small_count: int = 1024,
               large_count: int = 64) -> "Arena":
        """Create arena ``arena_id`` with ``owners`` slices of ``small_count`` 8 KiB and
        ``large_count`` 64 KiB buffers each."""
        if owners < 1 or small_count < 0 or large_count < 0 or small_count + large_count == 0:
            raise ValueError(f"bad arena shape: owners={owners} small={small_count} large={large_count}")
        if arena_id in _arenas:
            raise ValueError(f"arena {arena_id} is already attached in this process")
        seg = Segment.create(instance, f"arena{arena_id}", cls.segment_size(owners, small_count, large_count))
        return cls(seg, arena_id, owners, small_count, large_count, init=True)

    @classmethod
    def attach(cls, name: str) -> "Arena":
        """Attach an arena created by another process (``/ringstack.<pid>.arena<id>``)."""
        seg = Segment.attach(name)
        header = seg.buf[:64].cast("Q")
        try:
            if header[0] != _MAGIC:
                raise ValueError(f"{name} does not hold an initialised arena")
            arena_id, owners, small_count, large_count = header[1], header[2], header[3], header[4]
        except BaseException:
            header.release()
            seg.close()
            raise
        header.release()
        return cls(seg, arena_id, owners, small_count, large_count, init=False)

    @property
    def name(self) -> str:
        return self.segment.name

    def pool(self, owner: int) -> "BufferPool":
        """Owner ``owner``'s pool (use it only in that owner's process/reactor)."""
        pool = self._pools.get(owner)
        if pool is None:
            if not 0 <= owner < self.owners:
                raise ValueError(f"arena {self.arena_id} has owners 0..{self.owners - 1}, not {owner}")
            pool = self._pools[owner] = BufferPool(self, owner)
        return pool

    def owner_of(self, handle: BufferHandle) -> int:
        """The owner whose pool ``handle`` must be returned to."""
        owner, _ = divmod(handle.offset - _HEADER, self.slice_size)
        if handle.arena_id != self.arena_id or not 0 <= owner < self.owners or handle.offset < _HEADER:
            raise ValueError(f"{handle} is not a buffer of arena {self.arena_id}")
        return owner

    def view(self, handle: BufferHandle) -> memoryview:
        """A writable memoryview of the buffer (release it before closing the arena)."""
        offset, length = handle.offset, handle.length
        if offset < _HEADER or offset + length > self.segment.size or length < 0:
            raise ValueError(f"{handle} lies outside arena {self.arena_id}")
        return self._buf[offset:offset + length]

    def release(self) -> None:
        if _arenas.get(self.arena_id) is self:
            del _arenas[self.arena_id]
        self._pools.clear()

    def close(self) -> None:
        """Forget the arena in this process and unmap it (the owner Instance unlinks)."""
        self.release()
        self._buf = None
        self.segment.close()


def view(handle: BufferHandle) -> memoryview:
    """The memoryview of ``handle`` in this process (its arena must be attached)."""
    arena = _arenas.get(handle[0])
    if arena is None:
        raise ValueError(f"arena {handle[0]} is not attached in process {__import__('os').getpid()}")
    return arena.view(BufferHandle(*handle))


def attached_arena(arena_id: int) -> Arena | None:
    return _arenas.get(arena_id)


class BufferPool:
    """One owner's 8 KiB and 64 KiB buffers.  Not shared: used by one reactor only."""

    __slots__ = ("arena", "owner", "arena_id", "_free_small", "_free_large", "_in_use", "_base",
                 "_small_base", "_end")

    def __init__(self, arena: Arena, owner: int):
        self.arena = arena
        self.owner = owner
        self.arena_id = arena.arena_id
        base = _HEADER + owner * arena.slice_size
        small_base = base + arena.large_count * LARGE_BUFFER
        self._base = base
        self._small_base = small_base
        self._end = base + arena.slice_size
        # LIFO free lists: the most recently freed (cache-warm) buffer goes out first.
        self._free_large = [base + i * LARGE_BUFFER for i in reversed(range(arena.large_count))]
        self._free_small = [small_base + i * SMALL_BUFFER for i in reversed(range(arena.small_count))]
        self._in_use: set[int] = set()

    def get(self, length: int = SMALL_BUFFER) -> BufferHandle | None:
        """A buffer of at least ``length`` bytes (8 KiB class up to 8 KiB, else 64 KiB
        class), or None when that class is exhausted.  ValueError above 64 KiB."""
        if length <= SMALL_BUFFER:
            free = self._free_small
        elif length <= LARGE_BUFFER:
            free = self._free_large
        else:
            raise ValueError(f"buffer of {length} bytes exceeds the largest pool class ({LARGE_BUFFER} bytes)")
        if length < 0:
            raise ValueError(f"negative buffer length {length}")
        if not free:
            return None
        offset = free.pop()
        self._in_use.add(offset)
        return BufferHandle(self.arena_id, offset, length)

    def put(self, handle: BufferHandle) -> None:
        """Give back a buffer this pool handed out."""
        arena_id, offset, _ = handle
        if arena_id != self.arena_id or not self._base <= offset < self._end:
            raise ValueError(f"{handle} does not belong to pool {self.owner} of arena {self.arena_id}; "
                             f"return it to its owner (reactor {self._guess_owner(handle)})")
        try:
            self._in_use.remove(offset)
        except KeyError:
            raise ValueError(f"{handle} is not allocated (double put?)") from None
        (self._free_small if offset >= self._small_base else self._free_large).append(offset)

    def _guess_owner(self, handle) -> object:
        try:
            return self.arena.owner_of(BufferHandle(*handle))
        except ValueError:
            return "none"

    def view(self, handle: BufferHandle) -> memoryview:
        return self.arena.view(handle)

    def available(self, length: int = SMALL_BUFFER) -> int:
        return len(self._free_small if length <= SMALL_BUFFER else self._free_large)

    @property
    def in_use(self) -> int:
        return len(self._in_use)
