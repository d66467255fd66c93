"""DMA arenas: per-owner 8 KiB/64 KiB pools, 512-byte alignment, exhaustion as a status,
buffers addressable from another process."""
import multiprocessing

import pytest

from ipc import arena as arena_mod
from ipc.arena import ALIGNMENT, LARGE_BUFFER, SMALL_BUFFER, Arena, BufferHandle, view
from ipc.shm import Instance

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def stop_resource_tracker():
    """spawn starts multiprocessing's resource tracker, a child that outlives the test."""
    yield
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._stop()


@pytest.fixture
def arena():
    with Instance() as inst:
        a = Arena.create(inst, arena_id=7, owners=2, small_count=4, large_count=2)
        yield a
        a.close()


def test_pools_hand_out_aligned_buffers_of_both_classes(arena):
    pool = arena.pool(0)
    small = [pool.get(SMALL_BUFFER) for _ in range(4)]
    large = [pool.get(LARGE_BUFFER) for _ in range(2)]
    for h in small + large:
        assert h.offset % ALIGNMENT == 0 and h.arena_id == 7
    assert {h.length for h in small} == {SMALL_BUFFER} and {h.length for h in large} == {LARGE_BUFFER}
    spans = sorted((h.offset, h.offset + (SMALL_BUFFER if h in small else LARGE_BUFFER)) for h in small + large)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "buffers overlap"
    assert pool.get(100) is None        # exhaustion is a status, not an exception
    assert pool.get(20000) is None
    pool.put(small[0])
    again = pool.get(512)
    assert again.offset == small[0].offset and again.length == 512
    with pytest.raises(ValueError, match="exceeds the largest pool class"):
        pool.get(LARGE_BUFFER + 1)


def test_owners_have_disjoint_slices_and_buffers_return_to_their_owner(arena):
    p0, p1 = arena.pool(0), arena.pool(1)
    h0, h1 = p0.get(), p1.get()
    assert arena.owner_of(h0) == 0 and arena.owner_of(h1) == 1
    with pytest.raises(ValueError, match="return it to its owner \\(reactor 1\\)"):
        p0.put(h1)
    p1.put(h1)
    with pytest.raises(ValueError, match="double put"):
        p1.put(h1)
    assert p0.in_use == 1 and p1.in_use == 0
    with pytest.raises(ValueError, match="owners 0..1"):
        arena.pool(2)


def test_view_by_handle_and_bounds(arena):
    h = arena.pool(1).get(1000)
    v = view(h)
    assert len(v) == 1000
    v[:3] = b"abc"
    assert bytes(arena.view(h)[:3]) == b"abc"
    v.release()
    with pytest.raises(ValueError, match="outside arena"):
        arena.view(BufferHandle(7, arena.segment.size - 10, 100))
    with pytest.raises(ValueError, match="not attached"):
        view(BufferHandle(99, 4096, 10))


def _fill_in_child(name, handle, conn):
    a = Arena.attach(name)
    v = view(BufferHandle(*handle))
    v[:] = bytes([0x5A]) * len(v)
    v.release()
    conn.send(a.arena_id)
    a.close()


@pytest.mark.timeout(60)
def test_handles_are_valid_in_another_process(arena):
    h = arena.pool(0).get(LARGE_BUFFER)
    parent, child_end = SPAWN.Pipe()
    child = SPAWN.Process(target=_fill_in_child, args=(arena.name, tuple(h), child_end))
    child.start()
    try:
        assert parent.poll(30), "child did not report"
        assert parent.recv() == 7
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    v = arena.view(h)
    assert bytes(v) == b"\x5a" * LARGE_BUFFER
    v.release()
    assert child.exitcode == 0


def test_arena_registry_is_per_process(arena):
    assert arena_mod.attached_arena(7) is arena
    with pytest.raises(ValueError, match="already attached"):
        with Instance() as other:
            Arena.create(other, arena_id=7, owners=1, small_count=1, large_count=0)
