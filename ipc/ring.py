"""Single-producer/single-consumer byte rings in shared memory.

Layout of one ring (all offsets from the start of its region, which must be 64-byte
aligned; ``Ring.region_size(capacity)`` gives the size)::

    0    tail   u64  written only by the producer      (cache line 0)
    64   head   u64  written only by the consumer      (cache line 1)
    128  magic  u64, capacity u64   written once at init (cache line 2)
    192  data   capacity bytes, capacity a power of two

``head`` and ``tail`` are free-running byte counters (they never wrap in practice:
2**64 bytes); the position in ``data`` is ``counter & (capacity - 1)``, so the ring
is full when ``tail - head == capacity`` and empty when they are equal, and every byte
is usable.  The producer keeps its own ``tail`` and a cached copy of ``head`` in
process-local variables and re-reads the shared ``head`` only when the cache says
the ring is too full; the consumer likewise owns ``head``.

Record framing: variable-length records travel in *frames*, one frame per
``put_many`` call::

    u32 frame_len | u16 count | u16 FRAME_MAGIC | count x u32 record_len | payloads

Why frames of length-prefixed records rather than fixed slots: the messages are
msgpack'd handler calls whose size varies from a few bytes to a few hundred, so
fixed slots either waste most of each slot or need an escape path for large records;
and in Python the cost that matters is interpreter work per record, not bytes.  With
a length table per frame the producer builds a whole batch with C-level calls
(``map(len)``, ``array.tobytes``, ``bytes.join``) and one or two ``memcpy`` into the
ring, the consumer splits it with ``itertools.accumulate`` and slicing, and the
per-frame header (8 bytes + 4 per record) is amortised over the batch.  A frame may
straddle the end of ``data`` (it is written in two pieces); the consumer copies the
published bytes out in one or two slices first, so it never parses shared memory in
place and publishes ``head`` immediately.  The magic and the exact agreement of
``frame_len`` with the length table detect a corrupt header; the consumer then
logs, drops everything it copied from that frame on, and keeps running.

Memory ordering (why this is correct without locks on x86-64)
-------------------------------------------------------------
1. ``head`` and ``tail`` are read and written through ``memoryview.cast('Q')``
   elements.  In CPython 3.11 that is one aligned 8-byte ``mov`` (the region is
   page-aligned + a multiple of 64), which x86-64 performs atomically: the other side
   never sees a torn index.  (``struct.pack_into`` is *not* used: it stores byte by
   byte.)
2. x86-64 is TSO: stores become visible to other cores in program order, and loads
   are not reordered with older loads, nor stores with older loads.
3. Producer: copies the frame into ``data`` (stores), *then* stores ``tail``.  By (2)
   a consumer that observes the new ``tail`` also observes every payload byte before
   it.  Consumer: loads ``tail``, *then* loads the payload (loads are not reordered
   with older loads, so it reads bytes at least as new as that ``tail``), *then*
   stores ``head``.  Stores are not reordered with older loads, so a producer that
   observes the new ``head`` knows the consumer finished reading that space, and may
   overwrite it.
4. Compiler reordering: each step above is a separate bytecode that calls into C
   through an opaque buffer pointer (slice assignment, item store), and the
   interpreter executes bytecodes strictly in order; no C compiler can move one
   call's memory effects across another's.
5. Only one process ever stores each index (single producer, single consumer), so no
   read-modify-write atomicity (CAS) is needed.

Architectures with weaker ordering (arm64, ppc64, ...) would need barriers that pure
Python cannot issue, so :class:`Ring` refuses to run there (``UnsupportedPlatform``).

Backpressure: ``put_many`` accepts the longest prefix that fits and returns how many
records it took; :class:`Producer` keeps the rest in a local list and ``flush()``
retries later.  Nothing is dropped, and no call waits for space.
"""
from __future__ import annotations

import logging
import platform
from array import array
from itertools import accumulate, islice
from struct import Struct

log = logging.getLogger(__name__)

CACHE_LINE = 64
HEADER_SIZE = 3 * CACHE_LINE
RING_MAGIC = 0x31474E4952534B52  # "RKSRING1" little-endian-ish; identifies an initialised ring
FRAME_MAGIC = 0x5253  # "RS"
FRAME_HEADER = 8
MAX_FRAME_RECORDS = 0xFFFF

_TAIL_WORD = 0                 # hot paths below use the literals 0 and 8 (no global lookup)
_HEAD_WORD = CACHE_LINE // 8   # = 8
_MAGIC_WORD = 2 * CACHE_LINE // 8
_CAPACITY_WORD = _MAGIC_WORD + 1

_frame_header = Struct("<II")
_pack_frame_header = _frame_header.pack
_unpack_frame_header = _frame_header.unpack_from
_join = b"".join
_single_header = Struct("<III")
_pack_single_header = _single_header.pack
_unpack_single_header = _single_header.unpack_from
_SINGLE = 1 | FRAME_MAGIC << 16

_X86_64 = ("x86_64", "amd64")


class UnsupportedPlatform(RuntimeError):
    """The lock-free ring's correctness argument needs x86-64 total store order."""


def check_platform(machine: str | None = None) -> None:
    machine = (machine or platform.machine()).lower()
    if machine not in _X86_64:
        raise UnsupportedPlatform(
            f"ringstack's lock-free shared-memory rings rely on x86-64 total store order; "
            f"this machine is {machine!r}, where pure Python cannot issue the memory "
            f"barriers a ring would need")


if array("I").itemsize != 4:  # pragma: no cover - every Linux/x86-64 build has 4
    raise ImportError("array('I') is not 4 bytes on this build")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Ring:
    """One SPSC ring over ``region`` (a writable memoryview, 64-byte aligned, at least
    ``Ring.region_size(capacity)`` bytes).  ``init=True`` formats it (creator only,
    before any peer uses it); otherwise the header is validated.

    One process uses the producer side (``try_put``, ``put_many``) and one process the
    consumer side (``drain``); both sides keep their index in process-local state.
    """

    __slots__ = ("capacity", "max_record", "_mask", "_words", "_data", "_tail", "_head_cache",
                 "_head", "_blob", "_blob_off", "_pending", "_pending_idx", "_local", "corrupt_frames")

    @staticmethod
    def max_record_for(capacity: int) -> int:
        """The largest record a ring of ``capacity`` data bytes carries in one frame."""
        return capacity - FRAME_HEADER - 4

    @staticmethod
    def region_size(capacity: int) -> int:
        """Bytes of shared memory one ring of ``capacity`` data bytes occupies."""
        if not _is_power_of_two(capacity) or capacity < 64:
            raise ValueError(f"ring capacity must be a power of two >= 64, got {capacity}")
        return HEADER_SIZE + capacity

    def __init__(self, region: memoryview, capacity: int | None = None, *, init: bool = False):
        check_platform()
        region = memoryview(region)
        if region.readonly:
            raise ValueError("ring region must be writable")
        words = region[:HEADER_SIZE].cast("Q")
        if init:
            if capacity is None:
                raise ValueError("init=True needs a capacity")
            size = Ring.region_size(capacity)
            if len(region) < size:
                raise ValueError(f"ring region of {len(region)} bytes is smaller than the {size} needed")
            words[_TAIL_WORD] = 0
            words[_HEAD_WORD] = 0
            words[_CAPACITY_WORD] = capacity
            words[_MAGIC_WORD] = RING_MAGIC
        else:
            if words[_MAGIC_WORD] != RING_MAGIC:
                words.release()
                raise ValueError("region does not hold an initialised ring (bad magic)")
            found = words[_CAPACITY_WORD]
            if capacity is not None and capacity != found:
                words.release()
                raise ValueError(f"ring capacity is {found}, expected {capacity}")
            capacity = found
            if not _is_power_of_two(capacity) or len(region) < HEADER_SIZE + capacity:
                words.release()
                raise ValueError(f"ring header claims capacity {capacity} that does not fit its region")
        self.capacity = capacity
        # The largest record a single frame can carry.
        self.max_record = Ring.max_record_for(capacity)
        self._mask = capacity - 1
        self._words = words
        self._data = region[HEADER_SIZE:HEADER_SIZE + capacity]
        # Producer-side state.
        self._tail = words[_TAIL_WORD]
        self._head_cache = words[_HEAD_WORD]
        # Consumer-side state: bytes copied out but not yet parsed, and records of a
        # frame that was split across drain() calls.
        self._head = words[_HEAD_WORD]
        self._blob = b""
        self._blob_off = 0
        self._pending: list = []
        self._pending_idx = 0
        self._local = False  # records or bytes held in this process, not yet returned
        self.corrupt_frames = 0

    def release(self) -> None:
        """Drop the views into shared memory (needed before the segment is unmapped)."""
        self._words.release()
        self._data.release()

    # -- producer side ----------------------------------------------------------------
    def free_space(self) -> int:
        """Bytes the producer could write now (reads the shared head)."""
        self._head_cache = self._words[_HEAD_WORD]
        return self.capacity - (self._tail - self._head_cache)

    def try_put(self, record) -> bool:
        """Publish one record as its own frame.  False if the ring is full (keep it and
        retry later); ValueError if it can never fit.  (Batch with ``put_many``: one
        frame and one tail store for many records is much cheaper per record.)"""
        length = len(record)
        frame_len = length + FRAME_HEADER + 4
        tail = self._tail
        capacity = self.capacity
        if frame_len > capacity - (tail - self._head_cache):
            self._head_cache = self._words[8]
            if frame_len > capacity - (tail - self._head_cache):
                if frame_len > capacity:
                    self._fitting_prefix([length], 0)  # raises the oversize error
                return False
        frame = _pack_single_header(frame_len, _SINGLE, length) + record
        pos = tail & self._mask
        end = pos + frame_len
        if end <= capacity:
            self._data[pos:end] = frame
        else:
            first = capacity - pos
            self._data[pos:] = frame[:first]
            self._data[:end - capacity] = frame[first:]
        self._tail = tail = tail + frame_len
        self._words[0] = tail  # publish after the payload (see TSO note)
        return True

    def put_many(self, records) -> int:
        """Publish the longest prefix of ``records`` (a sequence of bytes-like objects)
        that fits, as one frame, with a single tail store.  Returns how many were taken
        (0 when full).  Raises ValueError if the first record is larger than the ring
        can ever hold."""
        count = len(records)
        if not count:
            return 0
        lens = list(map(len, records))
        frame_len = FRAME_HEADER + 4 * count + sum(lens)
        tail = self._tail
        if frame_len > self.capacity - (tail - self._head_cache) or count > MAX_FRAME_RECORDS:
            self._head_cache = self._words[8]
            free = self.capacity - (tail - self._head_cache)
            if frame_len > free or count > MAX_FRAME_RECORDS:
                count = self._fitting_prefix(lens, free)
                if not count:
                    return 0
                records = records[:count]
                lens = lens[:count]
                frame_len = FRAME_HEADER + 4 * count + sum(lens)
        frame = _join((_pack_frame_header(frame_len, count | FRAME_MAGIC << 16),
                       array("I", lens).tobytes(), *records))
        pos = tail & self._mask
        end = pos + frame_len
        data = self._data
        if end <= self.capacity:
            data[pos:end] = frame
        else:  # straddles the end of the data area: two pieces
            first = self.capacity - pos
            data[pos:] = frame[:first]
            data[:end - self.capacity] = frame[first:]
        self._tail = tail = tail + frame_len
        self._words[0] = tail  # publish: after every payload store (see TSO note)
        return count

    def _fitting_prefix(self, lens: list, free: int) -> int:
        first = FRAME_HEADER + 4 + lens[0]
        if first > self.capacity:
            raise ValueError(
                f"record of {lens[0]} bytes cannot fit in a ring of capacity {self.capacity} "
                f"bytes (largest record: {self.max_record} bytes); pass large data through an arena")
        if first > free:
            return 0
        budget = free - FRAME_HEADER
        n = 0
        for n, used in enumerate(accumulate(length + 4 for length in lens), 1):
            if used > budget or n > MAX_FRAME_RECORDS:
                return n - 1
        return n

    # -- consumer side ----------------------------------------------------------------
    def readable(self) -> bool:
        """Whether ``drain`` would return something (cheap: one shared load)."""
        return self._local or self._words[0] != self._head

    def drain(self, max_records: int = 64) -> list:
        """Take up to ``max_records`` records, oldest first, as ``bytes``.

        Copies everything the producer has published out of shared memory and
        publishes ``head`` once; records beyond ``max_records`` stay in this process
        (in order) for the next call, so the producer regains the space at once."""
        if self._local:
            return self._drain_local(max_records)
        head = self._head
        tail = self._words[0]
        if tail == head:
            return []
        avail = tail - head
        capacity = self.capacity
        if avail > capacity or avail < 0:
            # A tail outside [head, head + capacity] was not written by a sane producer.
            self.corrupt_frames += 1
            log.error("ring tail %d is outside head %d + capacity %d: ignoring it", tail, head, capacity)
            return []
        pos = head & self._mask
        end = pos + avail
        if end <= capacity:
            blob = self._data[pos:end].tobytes()
        else:
            blob = self._data[pos:].tobytes() + self._data[:end - capacity].tobytes()
        self._head = tail
        self._words[8] = tail  # after the loads above: the space may be reused
        if avail > 12:
            # Fast path: exactly one single-record frame (the latency-bound case).
            frame_len, count_magic, length = _unpack_single_header(blob)
            if frame_len == avail and count_magic == _SINGLE and length == avail - 12 and max_records:
                return [blob[12:]]
        self._blob = blob
        self._blob_off = 0
        out: list = []
        self._parse(out, max_records)
        self._local = self._blob_off < len(self._blob) or self._pending_idx < len(self._pending)
        return out

    def _drain_local(self, max_records: int) -> list:
        out: list = []
        pending = self._pending
        idx = self._pending_idx
        if idx < len(pending):
            out = pending[idx:idx + max_records]
            self._pending_idx = idx + len(out)
        if len(out) < max_records and self._blob_off < len(self._blob):
            self._parse(out, max_records)
        self._local = self._blob_off < len(self._blob) or self._pending_idx < len(self._pending)
        if not self._local and len(out) < max_records:
            out += self.drain(max_records - len(out))
        return out

    def _parse(self, out: list, max_records: int) -> None:
        blob = self._blob
        off = self._blob_off
        size = len(blob)
        while off < size and len(out) < max_records:
            if size - off < FRAME_HEADER:
                self._corrupt(off, size, "truncated frame header")
                return
            frame_len, count_magic = _unpack_frame_header(blob, off)
            count = count_magic & 0xFFFF
            start = off + FRAME_HEADER + 4 * count
            end = off + frame_len
            if count_magic >> 16 != FRAME_MAGIC or not count or end > size or start > end:
                self._corrupt(off, size, f"bad frame header (length {frame_len}, count {count}, "
                                         f"magic {count_magic >> 16:#x})")
                return
            if count == 1:
                records = [blob[start:end]]
                if frame_len != FRAME_HEADER + 4 + int.from_bytes(blob[off + 8:off + 12], "little"):
                    self._corrupt(off, size, "record length disagrees with frame length")
                    return
            else:
                bounds = list(accumulate(memoryview(blob)[off + FRAME_HEADER:start].cast("I"), initial=start))
                if bounds[-1] != end:
                    self._corrupt(off, size, "record lengths disagree with frame length")
                    return
                records = list(map(blob.__getitem__, map(slice, bounds, islice(bounds, 1, None))))
            off = end
            room = max_records - len(out)
            if count <= room:
                out += records
            else:
                out += records[:room]
                self._pending = records
                self._pending_idx = room
        self._blob_off = off
        if off >= size:
            self._blob = b""
            self._blob_off = 0

    def _corrupt(self, off: int, size: int, why: str) -> None:
        self.corrupt_frames += 1
        log.error("corrupt ring frame at byte %d of %d copied: %s; dropping %d bytes and resynchronising",
                  off, size, why, size - off)
        self._blob = b""
        self._blob_off = 0


class Producer:
    """The sending end a reactor uses: ``send()`` queues locally (never blocks, never
    drops), ``flush()`` publishes as much as fits in one batch and keeps the rest.

    ``doorbell`` (optional) is rung after a flush that published something, if the
    consumer is asleep."""

    __slots__ = ("ring", "doorbell", "_out", "max_record")

    def __init__(self, ring: Ring, doorbell=None):
        self.ring = ring
        self.doorbell = doorbell
        self._out: list = []
        self.max_record = ring.max_record

    def send(self, record) -> None:
        if len(record) > self.max_record:
            raise ValueError(
                f"record of {len(record)} bytes cannot fit in a ring of capacity {self.ring.capacity} "
                f"bytes (largest record: {self.max_record} bytes); pass large data through an arena")
        self._out.append(record)

    def flush(self) -> bool:
        """Publish queued records; True when nothing is left queued."""
        out = self._out
        if not out:
            return True
        if len(out) == 1 and self.ring.try_put(out[0]):  # cheaper than building a frame table
            out.clear()
            if self.doorbell is not None:
                self.doorbell.ring_if_sleeping()
            return True
        put_many = self.ring.put_many
        published = 0
        while out:
            put = put_many(out)
            if not put:
                break
            published += put
            if put == len(out):
                out.clear()
                break
            del out[:put]
        if published and self.doorbell is not None:
            self.doorbell.ring_if_sleeping()
        return not out

    @property
    def pending(self) -> int:
        """Records queued locally because the ring was full (or not flushed yet)."""
        return len(self._out)
