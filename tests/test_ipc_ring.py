"""SPSC ring: framing, wrap-around, backpressure, oversize, corruption, and exactly-once
in-order delivery of millions of records between two real processes."""
import logging
import multiprocessing
import os
import time

import pytest

from ipc.mesh import Mesh
from ipc.ring import HEADER_SIZE, Producer, Ring, UnsupportedPlatform, check_platform
from ipc.shm import Instance

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def stop_resource_tracker():
    """spawn starts multiprocessing's resource tracker, a child that outlives the test;
    stop it so the suite's leak guard sees only children the test itself left behind."""
    yield
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._stop()


@pytest.fixture
def instance():
    with Instance() as inst:
        yield inst


def make_ring(instance, capacity, what="ring"):
    seg = instance.create_segment(what, Ring.region_size(capacity))
    return seg, Ring(seg.buf, capacity, init=True)


def close_ring(seg, *rings):
    for ring in rings:
        ring.release()
    seg.close()


def test_records_round_trip_in_order_with_variable_sizes(instance):
    seg, ring = make_ring(instance, 4096)
    records = [bytes([i % 251]) * (i % 97) for i in range(300)]
    got = []
    for start in range(0, 300, 30):
        assert ring.put_many(records[start:start + 30]) == 30
        got += ring.drain(1000)
    assert got == records
    assert ring.drain(10) == []
    close_ring(seg, ring)


def test_wrap_around_frames_straddling_the_end(instance):
    seg, ring = make_ring(instance, 256)
    seq = 0
    expected = 0
    for round_ in range(500):
        batch = [seq.to_bytes(4, "little") + b"w" * ((seq * 7) % 23) for seq in range(seq, seq + 1 + round_ % 5)]
        assert ring.put_many(batch) == len(batch)
        seq += len(batch)
        for rec in ring.drain(100):
            assert int.from_bytes(rec[:4], "little") == expected
            assert rec[4:] == b"w" * ((expected * 7) % 23)
            expected += 1
    assert expected == seq
    # Counters ran far past the capacity, so frames did straddle the end many times.
    assert ring._tail > 100 * ring.capacity
    close_ring(seg, ring)


def test_drain_respects_max_records_and_keeps_the_rest_in_order(instance):
    seg, ring = make_ring(instance, 1 << 14)
    records = [i.to_bytes(2, "little") for i in range(100)]
    assert ring.put_many(records[:60]) == 60
    assert ring.put_many(records[60:]) == 40
    got = []
    while True:
        chunk = ring.drain(7)
        assert len(chunk) <= 7
        if not chunk:
            break
        got += chunk
    assert got == records
    close_ring(seg, ring)


def test_second_handle_on_the_same_region_sees_the_published_records(instance):
    seg, producer_side = make_ring(instance, 1024)
    consumer_side = Ring(seg.buf)
    assert consumer_side.capacity == 1024
    assert producer_side.try_put(b"hello")
    assert consumer_side.drain(4) == [b"hello"]
    assert producer_side.free_space() == 1024
    close_ring(seg, producer_side, consumer_side)


def test_full_ring_is_backpressure_not_loss(instance):
    seg, ring = make_ring(instance, 1024)
    producer = Producer(ring)
    for i in range(500):
        producer.send(i.to_bytes(4, "little") * 4)
    assert producer.flush() is False  # ring full: the rest stays queued, nothing blocks
    assert 0 < producer.pending < 500
    assert ring.try_put(b"y" * 64) is False
    assert ring.put_many([b"y" * 64] * 3) == 0
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 500:
        assert time.monotonic() < deadline
        got += ring.drain(64)
        producer.flush()
    assert got == [i.to_bytes(4, "little") * 4 for i in range(500)]
    assert producer.pending == 0
    close_ring(seg, ring)


def test_put_many_takes_the_prefix_that_fits(instance):
    seg, ring = make_ring(instance, 256)
    taken = ring.put_many([b"a" * 50] * 10)
    assert 0 < taken < 10
    assert ring.drain(100) == [b"a" * 50] * taken
    close_ring(seg, ring)


def test_oversized_record_is_rejected_with_sizes(instance):
    seg, ring = make_ring(instance, 1024)
    with pytest.raises(ValueError, match=r"record of 2000 bytes .* capacity 1024 .*largest record: 1012"):
        ring.try_put(b"x" * 2000)
    with pytest.raises(ValueError, match="2000 bytes"):
        Producer(ring).send(b"x" * 2000)
    assert ring.try_put(b"x" * ring.max_record)  # the largest record does fit
    assert ring.drain(1) == [b"x" * ring.max_record]
    close_ring(seg, ring)


def _publish_raw(ring, raw: bytes):
    """Write ``raw`` at the producer position and publish it, as a buggy peer would."""
    pos = ring._tail & (ring.capacity - 1)
    ring._data[pos:pos + len(raw)] = raw
    ring._tail += len(raw)
    ring._words[0] = ring._tail


def test_corrupt_length_header_is_detected_logged_and_the_consumer_resyncs(instance, caplog):
    seg, ring = make_ring(instance, 4096)
    assert ring.put_many([b"before1", b"before2"]) == 2
    _publish_raw(ring, (999999).to_bytes(4, "little") + (1 | 0x5253 << 16).to_bytes(4, "little") + b"junk")
    with caplog.at_level(logging.ERROR, logger="ipc.ring"):
        assert ring.drain(64) == [b"before1", b"before2"]
    assert ring.corrupt_frames == 1
    assert "corrupt ring frame" in caplog.text
    # Garbage without a frame magic, and a length table that disagrees with the frame.
    _publish_raw(ring, b"\xff" * 24)
    assert ring.drain(64) == []
    _publish_raw(ring, (8 + 8 + 6).to_bytes(4, "little") + (2 | 0x5253 << 16).to_bytes(4, "little")
                 + (1).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"abcdef")
    assert ring.drain(64) == []
    assert ring.corrupt_frames == 3
    # The consumer keeps running: later records are delivered.
    assert ring.put_many([b"after"]) == 1
    assert ring.drain(64) == [b"after"]
    close_ring(seg, ring)


def test_insane_tail_is_ignored_not_trusted(instance, caplog):
    seg, ring = make_ring(instance, 1024)
    ring._words[0] = ring.capacity * 5
    with caplog.at_level(logging.ERROR, logger="ipc.ring"):
        assert ring.drain(64) == []
    assert "outside head" in caplog.text
    ring._words[0] = ring._tail  # the producer's next publish restores it
    assert ring.try_put(b"ok")
    assert ring.drain(64) == [b"ok"]
    close_ring(seg, ring)


def test_head_and_tail_live_on_separate_cache_lines(instance):
    seg, ring = make_ring(instance, 1024)
    assert ring.try_put(b"abc")
    words = seg.buf[:HEADER_SIZE].cast("Q")
    assert words[0] == 8 + 4 + 3   # tail at byte 0
    assert words[8] == 0           # head at byte 64: untouched until drained
    ring.drain(1)
    assert words[8] == 15
    words.release()
    close_ring(seg, ring)


def test_uninitialised_region_is_refused(instance):
    seg = instance.create_segment("blank", Ring.region_size(1024))
    with pytest.raises(ValueError, match="bad magic"):
        Ring(seg.buf)
    with pytest.raises(ValueError, match="power of two"):
        Ring.region_size(1000)
    seg.close()


def test_weakly_ordered_architectures_are_refused():
    with pytest.raises(UnsupportedPlatform, match="total store order.*aarch64"):
        check_platform("aarch64")
    check_platform("x86_64")


def test_mesh_layout_gives_each_ordered_pair_its_own_ring(instance):
    mesh = Mesh.create(instance, 3, capacity=1024)
    other = Mesh.attach(mesh.name)
    assert (other.n, other.capacity) == (3, 1024)
    for src in range(3):
        for dst in range(3):
            if src != dst:
                assert mesh.ring(src, dst).try_put(f"{src}->{dst}".encode())
    for dst in range(3):
        for src, ring in other.inbound(dst):
            assert ring.drain(4) == [f"{src}->{dst}".encode()]
    with pytest.raises(ValueError, match="no ring 1 -> 1"):
        mesh.ring(1, 1)
    other.close()
    mesh.close()


# -- two real processes ---------------------------------------------------------------

TOTAL = 2_000_000


def _pin(cpu):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def _record(seq):
    # 8-byte sequence number plus 0..12 bytes of a seq-derived filler: variable sizes.
    return seq.to_bytes(8, "little") + bytes([seq & 0xFF]) * (seq % 13)


def _producer_main(mesh_name, total, conn):
    _pin(0)
    mesh = Mesh.attach(mesh_name)
    producer = mesh.producer(0, 1)
    send, flush = producer.send, producer.flush
    deadline = time.monotonic() + 50
    full = 0
    for start in range(0, total, 64):
        for seq in range(start, min(start + 64, total)):
            send(_record(seq))
        if not flush():
            full += 1
        while producer.pending > 4096:  # bound local memory; retry, never drop
            if time.monotonic() > deadline:
                conn.send(("timeout", start))
                return
            flush()
    while not flush():
        if time.monotonic() > deadline:
            conn.send(("timeout", total))
            return
    conn.send(("done", full))
    mesh.close()


def _consumer_main(mesh_name, total, conn):
    _pin(1)
    mesh = Mesh.attach(mesh_name)
    ring = mesh.ring(0, 1)
    drain = ring.drain
    expected = 0
    deadline = time.monotonic() + 50
    while expected < total:
        batch = drain(512)
        if not batch:
            if time.monotonic() > deadline:
                break
            continue
        for rec in batch:
            seq = int.from_bytes(rec[:8], "little")
            if seq != expected or rec != _record(seq):
                conn.send(("mismatch", expected, rec.hex()))
                return
            expected += 1
    extra = ring.drain(16)
    conn.send(("received", expected, len(extra), ring.corrupt_frames))
    mesh.close()


@pytest.mark.timeout(90)
def test_millions_of_records_exactly_once_in_order_between_two_processes(instance):
    # A small ring (64 KiB) so the run wraps thousands of times and hits backpressure.
    mesh = Mesh.create(instance, 2, capacity=1 << 16)
    prod_r, prod_w = SPAWN.Pipe(duplex=False)
    cons_r, cons_w = SPAWN.Pipe(duplex=False)
    consumer = SPAWN.Process(target=_consumer_main, args=(mesh.name, TOTAL, cons_w))
    producer = SPAWN.Process(target=_producer_main, args=(mesh.name, TOTAL, prod_w))
    consumer.start()
    producer.start()
    try:
        assert cons_r.poll(70), "consumer did not finish in time"
        result = cons_r.recv()
        assert prod_r.poll(10), "producer did not finish"
        prod_result = prod_r.recv()
    finally:
        for p in (producer, consumer):
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    assert prod_result[0] == "done", prod_result
    assert result == ("received", TOTAL, 0, 0)
    assert producer.exitcode == 0 and consumer.exitcode == 0
    mesh.close()
