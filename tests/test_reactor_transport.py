"""RingTransport in one process: batching, order, backpressure and bad messages in a batch."""
import msgpack
import pytest

import reactor as rx
from ipc import codec
from ipc.mesh import Mesh
from ipc.shm import Instance
from reactor import wire
from reactor.app import RingTransport


class Bell:
    def ring_if_sleeping(self):
        return False


@rx.remote("test.transport.collect")
def collect(*args):
    pass


@pytest.fixture
def pair():
    with Instance() as inst:
        mesh = Mesh.create(inst, 2, capacity=1 << 12)
        a = RingTransport(mesh, 0, [Bell(), Bell()])
        b = RingTransport(mesh, 1, [Bell(), Bell()])
        yield a, b
        mesh.close()


def drain_all(tr):
    out = []
    for rec in tr.drain(1 << 20):
        out.extend(wire.decode_record(rec))
    return out


def test_batched_messages_arrive_in_order_across_full_ring(pair):
    a, b = pair
    n = 5000
    for i in range(n):
        a.send(1, wire.encode_msg(65537, collect, (i, "x" * (i % 7))))
    got = []
    for _ in range(1000):
        a.flush()                       # publishes what fits; the rest stays queued
        got.extend(args[0] for tid, fn, args in drain_all(b))
        if len(got) == n and not a.dirty:
            break
    assert got == list(range(n))


def test_bad_message_inside_a_batch_is_skipped(pair, caplog):
    a, b = pair
    good = wire.encode_msg(65537, collect, (1,))
    bad = msgpack.packb([0xDEADBEEF, 65537, 2])          # unknown handler id
    not_tid = msgpack.packb([codec.handler_id("test.transport.collect"), "x"])
    a.queued[1] = [good, bad, not_tid, good]
    a.dirty.add(1)
    a.flush()
    msgs = drain_all(b)
    assert [(tid, args) for tid, fn, args in msgs] == [(65537, (1,)), (65537, (1,))]
    assert "dropping message" in caplog.text


def test_oversized_message_refused_at_send(pair):
    a, b = pair
    with pytest.raises(ValueError, match="larger than a ring record"):
        a.send(1, wire.encode_msg(65537, collect, (b"x" * 8192,)))
    assert not a.dirty


def test_unencodable_argument_fails_at_send(pair):
    a, b = pair
    with pytest.raises(wire.WireError):
        a.send(1, wire.encode_msg(65537, collect, (object(),)))
    assert not a.dirty
