"""Codec/registry: stable names, msgpack arguments, bad records logged and dropped."""
import logging
import pickle

import msgpack
import pytest

from ipc import codec
from ipc.codec import CodecError, decode, dispatch, dispatch_many, encode, encoder, handler, handler_id
from ipc.ring import Ring
from ipc.shm import Instance

received = []


@handler("test.codec.add")
def add(a, b):
    received.append(("add", a, b))


@handler("test.codec.note")
def note(text, blob=b""):
    received.append(("note", text, blob))


@handler("test.codec.buggy")
def buggy(x):
    return len(x)  # TypeError from inside the handler when x is an int


@pytest.fixture(autouse=True)
def clear_received():
    received.clear()


def test_ids_are_stable_functions_of_the_name():
    assert handler_id("test.codec.add") == 0x0 + __import__("zlib").crc32(b"test.codec.add")
    assert decode(encode("test.codec.add", 1, 2)) == (add, (1, 2))
    assert decode(encode(add, 1, 2)) == (add, (1, 2))
    assert encoder(add)(3, 4) == encode(add, 3, 4)


def test_round_trip_of_msgpack_types_and_dispatch():
    assert dispatch(encode(note, "héllo", b"\x00\x01"))
    assert dispatch(encode(add, -1, 2**62))
    assert received == [("note", "héllo", b"\x00\x01"), ("add", -1, 2**62)]


def test_registration_refuses_collisions_and_rebinding():
    # "plumless" and "buckeroo" have the same crc32.
    codec.register_handler("plumless", lambda: None)
    try:
        with pytest.raises(ValueError, match="collides with 'plumless'"):
            codec.register_handler("buckeroo", lambda: None)
        with pytest.raises(ValueError, match="already registered"):
            codec.register_handler("test.codec.add", note)
        codec.register_handler("test.codec.add", add)  # same function again: fine
    finally:
        codec.unregister_handler("plumless")
    with pytest.raises(CodecError, match="no handler registered"):
        encode("never.registered", 1)


def test_unknown_handler_truncated_msgpack_and_wrong_argcount_are_dropped(caplog):
    good = encode(add, 1, 2)
    records = [
        msgpack.packb([0xDEADBEEF, 1, 2]),          # unknown handler id
        good[:-1],                                  # truncated msgpack
        b"\xc1",                                    # never-used msgpack byte
        encode(add, 1),                             # wrong argument count
        encode(add, 1, 2, 3),                       # wrong argument count
        msgpack.packb({"a": 1}),                    # wrong shape
        msgpack.packb(b"\x01\x02"),                 # wrong shape (bytes indexable like a tuple)
        pickle.dumps(("test.codec.add", 1, 2)),     # a pickle is just undecodable bytes here
        msgpack.packb([]),                          # empty
        encode(add, 5, 6),                          # still delivered
    ]
    with caplog.at_level(logging.ERROR, logger="ipc.codec"):
        assert dispatch_many(records) == 1
    assert received == [("add", 5, 6)]
    text = caplog.text
    assert "unknown handler" in text and "undecodable" in text and "dropping message for test.codec.add" in text
    assert len(caplog.records) == 9


def test_decode_raises_a_specific_error():
    for bad in (b"", b"\x93\x01", msgpack.packb(["name", 1]), msgpack.packb([0xDEAD])):
        with pytest.raises(CodecError):
            decode(bad)


def test_a_typeerror_inside_a_handler_is_the_handlers_bug_and_propagates():
    with pytest.raises(TypeError):
        dispatch(encode(buggy, 5))


def test_messages_through_a_ring_with_a_bad_one_in_the_middle(caplog):
    with Instance() as inst:
        seg = inst.create_segment("codec", Ring.region_size(4096))
        ring = Ring(seg.buf, 4096, init=True)
        ring.put_many([encode(add, i, i) for i in range(3)] + [b"\xff\xff"] + [encode(add, 9, 9)])
        with caplog.at_level(logging.ERROR, logger="ipc.codec"):
            assert dispatch_many(ring.drain(64)) == 4
        assert received == [("add", 0, 0), ("add", 1, 1), ("add", 2, 2), ("add", 9, 9)]
        ring.release()
        seg.close()


def test_sender_batches_calls_into_one_record_and_bad_messages_in_a_batch_are_skipped(caplog):
    from ipc.codec import Sender, encode_batch, message
    from ipc.ring import Producer
    with Instance() as inst:
        seg = inst.create_segment("batch", Ring.region_size(4096))
        ring = Ring(seg.buf, 4096, init=True)
        sender = Sender(Producer(ring))
        for i in range(5):
            sender.call(add, i, -i)
        sender.call("test.codec.note", "x")
        assert sender.pending == 6
        assert sender.flush() and sender.pending == 0
        records = ring.drain(64)
        assert len(records) == 1  # one record for the whole batch
        assert dispatch_many(records) == 6
        assert received == [("add", i, -i) for i in range(5)] + [("note", "x", b"")]
        received.clear()
        # A batch too large for one ring record is split, order kept.
        for i in range(400):
            sender.call(note, "y" * 20, i.to_bytes(2, "little"))
        sender.flush()  # more than the 4 KiB ring holds: the rest stays queued
        got = 0
        deadline = 100
        while got < 400 and deadline:
            got += dispatch_many(ring.drain(64))
            sender.flush()
            deadline -= 1
        assert [r[2] for r in received] == [i.to_bytes(2, "little") for i in range(400)]
        received.clear()
        bad = encode_batch([message(add, 1, 1), (0xDEAD, 1), 7, message(add, 1), message(add, 2, 2)])
        with caplog.at_level(logging.ERROR, logger="ipc.codec"):
            assert dispatch_many([bad]) == 2
            assert dispatch(bad) is True
        assert received == [("add", 1, 1), ("add", 2, 2)] * 2
        assert "dropping message of a batch" in caplog.text and "dropping message for test.codec.add" in caplog.text
        ring.release()
        seg.close()
