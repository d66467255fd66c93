"""The N x N ring mesh of an instance: one SPSC ring per ordered pair of reactors
(i -> j, i != j) and one doorbell per reactor, all in one shared-memory segment.

Segment layout (every block 64-byte aligned)::

    0                 header line: magic, n, capacity, owner pid
    64                n doorbell lines (reactor j's "sleeping" word at 64 + 64*j)
    64 + 64*n         n*(n-1) rings, ring (src, dst) at index src*(n-1) + dst - (dst > src)

The launcher creates it (``Mesh.create``); each reactor process attaches by name
(``Mesh.attach``) and uses only its own row as producer and its own column as consumer.
Doorbell semaphores are ``/ringstack.<pid>.<what>.db<j>``.
"""
from __future__ import annotations

from .doorbell import DOORBELL_REGION, Doorbell
from .ring import CACHE_LINE, Producer, Ring
from .shm import Instance, Segment, Semaphore, segment_name

MESH_MAGIC = 0x314853454D534B52


class Mesh:
    __slots__ = ("segment", "n", "capacity", "owner_pid", "what", "_ring_size", "_rings",
                 "_doorbells", "_header")

    @staticmethod
    def segment_size(n: int, capacity: int) -> int:
        """Bytes needed for ``n`` reactors with rings of ``capacity`` data bytes."""
        if n < 1:
            raise ValueError(f"a mesh needs at least one reactor, got {n}")
        return CACHE_LINE + DOORBELL_REGION * n + n * (n - 1) * Ring.region_size(capacity)

    def __init__(self, segment: Segment, n: int, capacity: int, owner_pid: int, what: str, *, init: bool):
        self.segment = segment
        self.n = n
        self.capacity = capacity
        self.owner_pid = owner_pid
        self.what = what
        self._ring_size = Ring.region_size(capacity)
        self._rings: dict[tuple[int, int], Ring] = {}
        self._doorbells: dict[int, Doorbell] = {}
        self._header = segment.buf[:CACHE_LINE].cast("Q")
        if init:
            for src in range(n):
                for dst in range(n):
                    if src != dst:
                        self._rings[src, dst] = Ring(self._ring_region(src, dst), capacity, init=True)
            self._header[1] = n
            self._header[2] = capacity
            self._header[3] = owner_pid
            self._header[0] = MESH_MAGIC

    @classmethod
    def create(cls, instance: Instance, n: int, capacity: int = 1 << 20, what: str = "rings") -> "Mesh":
        seg = Segment.create(instance, what, cls.segment_size(n, capacity))
        mesh = cls(seg, n, capacity, instance.pid, what, init=True)
        for j in range(n):
            mesh._doorbells[j] = Doorbell.create(instance, f"{what}.db{j}", mesh._doorbell_region(j))
        return mesh

    @classmethod
    def attach(cls, name: str) -> "Mesh":
        """Attach the mesh segment ``name`` (``/ringstack.<pid>.<what>``) in another process."""
        seg = Segment.attach(name)
        header = seg.buf[:CACHE_LINE].cast("Q")
        try:
            if header[0] != MESH_MAGIC:
                raise ValueError(f"{name} does not hold an initialised ring mesh")
            n, capacity, owner_pid = header[1], header[2], header[3]
        finally:
            header.release()
        what = name.split(".", 2)[2]
        return cls(seg, n, capacity, owner_pid, what, init=False)

    @property
    def name(self) -> str:
        return self.segment.name

    def _ring_region(self, src: int, dst: int) -> memoryview:
        if not (0 <= src < self.n and 0 <= dst < self.n) or src == dst:
            raise ValueError(f"no ring {src} -> {dst} in a mesh of {self.n} reactors")
        index = src * (self.n - 1) + dst - (dst > src)
        start = CACHE_LINE + DOORBELL_REGION * self.n + index * self._ring_size
        return self.segment.buf[start:start + self._ring_size]

    def _doorbell_region(self, j: int) -> memoryview:
        start = CACHE_LINE + DOORBELL_REGION * j
        return self.segment.buf[start:start + DOORBELL_REGION]

    def ring(self, src: int, dst: int) -> Ring:
        """The ring carrying messages from reactor ``src`` to reactor ``dst``."""
        ring = self._rings.get((src, dst))
        if ring is None:
            ring = self._rings[src, dst] = Ring(self._ring_region(src, dst), self.capacity)
        return ring

    def doorbell(self, j: int) -> Doorbell:
        """Reactor ``j``'s doorbell (consumer side in j, producer side elsewhere)."""
        bell = self._doorbells.get(j)
        if bell is None:
            if not 0 <= j < self.n:
                raise ValueError(f"no reactor {j} in a mesh of {self.n} reactors")
            sem = Semaphore.attach(segment_name(self.owner_pid, f"{self.what}.db{j}"))
            bell = self._doorbells[j] = Doorbell(self._doorbell_region(j), sem)
        return bell

    def producer(self, src: int, dst: int) -> Producer:
        """A sending end for src -> dst that rings dst's doorbell when it sleeps."""
        return Producer(self.ring(src, dst), self.doorbell(dst))

    def inbound(self, dst: int) -> list[tuple[int, Ring]]:
        """``[(src, ring)]`` for every ring reactor ``dst`` consumes."""
        return [(src, self.ring(src, dst)) for src in range(self.n) if src != dst]

    def release(self) -> None:
        """Drop every view into the segment (before ``segment.close()``)."""
        for ring in self._rings.values():
            ring.release()
        for bell in self._doorbells.values():
            bell.close()
        self._header.release()
        self._rings.clear()
        self._doorbells.clear()

    def close(self) -> None:
        """Release views and unmap; the owner's Instance unlinks."""
        self.release()
        self.segment.close()
