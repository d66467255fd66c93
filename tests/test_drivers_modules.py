"""Module-specific behaviour beyond the conformance suite: the aio engines (io_uring and
the synchronous fallback) on their own, error injection of every kind, the delay bdev's
latencies on the mock clock, raid layouts."""
import errno
import mmap
import os

import pytest

import bdev_stub
from bdev import api
from drivers import aio, aio_engine, delay, error, passthru, raid
from drivers_util import Io, mk_malloc, pattern, rm, run_until
from reactor.testing import Harness

BS = 512

ENGINES = ["sync"] + (["uring"] if aio_engine.available() else [])


@pytest.fixture(params=ENGINES)
def engine(request):
    e = aio_engine.make_engine(request.param, 8)
    yield e
    e.close()


def _drive(e, box, n=1):
    for _ in range(200000):
        e.poll()
        if len(box) >= n:
            return
    raise AssertionError("engine never completed")


def test_engine_readv_writev_fsync_and_short_read(engine, tmp_path):
    path = tmp_path / "e.img"
    with open(path, "wb") as f:
        f.truncate(16 * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        box = []
        a, b = bytearray(pattern(1000, 3)), memoryview(bytearray(pattern(3096, 4)))
        assert engine.submit_rw(fd, True, [a, b], 4096, box.append) == 0
        assert box == []                      # never inside submit
        _drive(engine, box)
        assert engine.submit_fsync(fd, box.append) == 0
        _drive(engine, box, 2)
        out1, out2 = bytearray(2000), bytearray(2096)
        assert engine.submit_rw(fd, False, [out1, out2], 4096, box.append) == 0
        _drive(engine, box, 3)
        assert box == [0, 0, 0]
        assert bytes(out1 + out2) == bytes(a) + bytes(b)
        # past the end of the file: a short read is an error, not silent zeroes
        assert engine.submit_rw(fd, False, [bytearray(8192)], 15 * 4096, box.append) == 0
        _drive(engine, box, 4)
        assert box[3] == -errno.EIO
        # a bad fd reports the errno
        assert engine.submit_rw(-1, False, [bytearray(512)], 0, box.append) == 0
        _drive(engine, box, 5)
        assert box[4] == -errno.EBADF
        assert engine.inflight == 0
    finally:
        os.close(fd)


def test_engine_o_direct_bounces_unaligned_buffers(engine, tmp_path):
    path = tmp_path / "d.img"
    with open(path, "wb") as f:
        f.write(pattern(8 * 4096, 5))
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    except OSError:
        pytest.skip("filesystem without O_DIRECT")
    try:
        box = []
        unaligned = bytearray(4096)            # bytearray memory is not page aligned
        assert engine.submit_rw(fd, False, [unaligned], 4096, box.append, True) == 0
        _drive(engine, box)
        assert box == [0] and bytes(unaligned) == pattern(8 * 4096, 5)[4096:8192]
        m = mmap.mmap(-1, 4096)                # page aligned: no bounce
        m[:] = pattern(4096, 9)
        assert engine.submit_rw(fd, True, [memoryview(m)], 0, box.append, True) == 0
        _drive(engine, box, 2)
        assert box == [0, 0]
        with open(path, "rb") as f:
            assert f.read(4096) == pattern(4096, 9)
        m.close()
    finally:
        os.close(fd)


@pytest.mark.skipif("uring" not in ENGINES, reason="io_uring unavailable")
def test_uring_ring_full_is_enomem_not_an_exception(tmp_path):
    e = aio_engine.UringEngine(4)
    path = tmp_path / "q.img"
    with open(path, "wb") as f:
        f.truncate(64 * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        box = []
        bufs = [bytearray(4096) for _ in range(e.entries + 1)]
        rcs = [e.submit_rw(fd, False, [b], 0, box.append) for b in bufs]
        assert rcs[:e.entries] == [0] * e.entries and rcs[-1] == -errno.ENOMEM
        _drive(e, box, e.entries)
        assert e.submit_rw(fd, False, [bufs[-1]], 0, box.append) == 0   # room again
        _drive(e, box, e.entries + 1)
    finally:
        os.close(fd)
        e.close()


# ------------------------------------------------------------ deterministic modules
@pytest.fixture
def h():
    with Harness(n_threads=2, n_reactors=2) as hh:
        bdev_stub.init_layer(hh)
        yield hh
        hh.set_thread(0)
        for b in reversed([b.name for b in api.bdevs()]):
            if api.get_by_name(b) is not None:
                rm(hh, b)
        bdev_stub.fini_layer(hh)


def _ok(h, fn, *args, **kw):
    out = []
    h.set_thread(0)
    fn(*args, lambda *a: out.append(a[0]), **kw)
    assert run_until(h, lambda: out)
    return out[0]


def test_error_injection_failure_nomem_corrupt_and_pending(h):
    assert mk_malloc(h, "M0") == 0
    assert _ok(h, error.create, "M0") == 0
    io = Io(h, "EE_M0", 0)
    data = pattern(4 * BS, 7)
    assert io.write(0, data) == (0, True)
    # failure, twice, then healthy
    assert _ok(h, error.inject, "EE_M0", "read", "failure", 2) == 0
    assert io.read(0, 4)[:2] == (0, False)
    assert io.read(0, 4)[:2] == (0, False)
    assert io.read(0, 4)[1:] == (True, data)
    # corrupt_data on a read flips the chosen byte of what is returned, not what is stored
    assert _ok(h, error.inject, "EE_M0", "read", "corrupt_data", 1, corrupt_offset=5,
               corrupt_value=0x0F) == 0
    rc, ok, got = io.read(0, 4)
    assert ok and got[5] == data[5] ^ 0x0F and got[:5] == data[:5] and got[6:] == data[6:]
    assert io.read(0, 4)[2] == data
    # nomem: not a failure -- the layer parks the I/O on its nomem queue (to retry when
    # another I/O of the channel completes); with nothing else in flight, the layer's nomem
    # poller (later SPDK) retries it 1 ms later, and the retry goes through
    assert _ok(h, error.inject, "EE_M0", "write", "nomem", 1) == 0
    h.set_thread(0)
    done = []
    buf = bytearray(pattern(BS, 8))
    assert api.write_blocks(io.desc, io.ch, buf, 9, 1, lambda b, s, a: (done.append(s), api.free_io(b)), None) == 0
    h.poll_threads()
    assert done == []
    h.advance_time_us(1_000)
    h.poll_threads()
    assert done == [True]
    assert io.read(9, 1)[1:] == (True, bytes(buf))
    # pending: held until a reset fails it
    assert _ok(h, error.inject, "EE_M0", "read", "pending", 1) == 0
    held = []
    h.set_thread(0)
    assert api.read_blocks(io.desc, io.ch, bytearray(BS), 0, 1, lambda b, s, a: (held.append(s), api.free_io(b)), None) == 0
    h.advance_time_us(10_000)
    h.poll_threads()
    assert held == []
    assert io.run(api.reset) == (0, True)
    assert held == [False]
    # an unknown bdev or type changes nothing
    assert _ok(h, error.inject, "EE_nope", "read", "failure", 1) == -errno.ENODEV
    assert _ok(h, error.inject, "EE_M0", "bogus", "failure", 1) == -errno.EINVAL
    io.close()


def test_delay_holds_completions_for_the_configured_latency(h):
    assert mk_malloc(h, "M0") == 0
    assert _ok(h, delay.create, "D0", "M0", 1000, 1000, 3000, 3000) == 0
    io = Io(h, "D0", 0)
    done = []
    h.set_thread(0)
    t0 = h.now_ns()
    cb = lambda b, s, a: (done.append((a, h.now_ns() - t0)), api.free_io(b))  # noqa: E731
    assert api.read_blocks(io.desc, io.ch, bytearray(BS), 0, 1, cb, "r") == 0
    assert api.write_blocks(io.desc, io.ch, bytearray(BS), 0, 1, cb, "w") == 0
    h.poll_threads()
    assert done == []
    h.advance_time_us(999)
    h.poll_threads()
    assert done == []
    h.advance_time_us(1)
    h.poll_threads()
    assert [a for a, _ in done] == ["r"]
    h.advance_time_us(2000)
    h.poll_threads()
    assert [a for a, _ in done] == ["r", "w"]
    assert _ok(h, delay.update_latency, "D0", "avg_read", 0) == 0
    assert io.read(0, 1)[1] is True          # completes without waiting now
    assert _ok(h, delay.update_latency, "D0", "avg_write", 5000) == -errno.EINVAL  # > p99
    io.close()


def test_raid0_layout_puts_strips_round_robin(h):
    assert mk_malloc(h, "M0") == 0
    assert mk_malloc(h, "M1") == 0
    assert _ok(h, lambda cb: raid.create("R0", "raid0", ["M0", "M1"], cb, strip_size_kb=4)) == 0
    r = Io(h, "R0", 0)
    data = pattern(32 * BS, 11)             # 4 strips of 8 blocks
    assert r.write(0, data) == (0, True)
    r.close()
    m0, m1 = Io(h, "M0", 1, write=False), Io(h, "M1", 1, write=False)
    s = 8 * BS
    assert m0.read(0, 16)[2] == data[0:s] + data[2 * s:3 * s]
    assert m1.read(0, 16)[2] == data[s:2 * s] + data[3 * s:4 * s]
    m0.close()
    m1.close()
    h.set_thread(0)
    assert api.get_by_name("R0").blockcnt == 512 and api.get_by_name("R0").optimal_io_boundary == 8


# ------------------------------------------------------------ vbdevs out of bdev_ios
_OVER_ONE_BASE = {
    "passthru": (lambda base, cb: passthru.create("PT", base, cb), "PT"),
    "delay": (lambda base, cb: delay.create("DL", base, 0, 0, 0, 0, cb), "DL"),
    "error": (lambda base, cb: error.create(base, cb), "EE_M0"),
}


@pytest.mark.parametrize("kind", sorted(_OVER_ONE_BASE))
def test_vbdev_over_one_base_waits_for_a_bdev_io_and_resubmits(kind, monkeypatch):
    """passthru, delay and error forward the same way (drivers/_vbdev): a child submit to
    the base that finds no bdev_io (-ENOMEM) waits with queue_io_wait and is resubmitted
    when one is freed, so every I/O completes, with the right data, none failed."""
    waits = []
    real_wait = api.queue_io_wait

    def counting_wait(bdev, ch, entry):
        waits.append(bdev.name)
        return real_wait(bdev, ch, entry)
    monkeypatch.setattr(api, "queue_io_wait", counting_wait)
    with Harness(n_threads=1, n_reactors=1) as hh:
        # an odd number of bdev_ios: each read through the vbdev takes two (its own and
        # the child the vbdev submits to the base at once), so the child of the read that
        # takes the last one finds none
        bdev_stub.init_layer(hh, conf={"BdevIoPoolSize": 7, "BdevIoCacheSize": 2})
        try:
            assert mk_malloc(hh, "M0", blocks=64) == 0
            io = Io(hh, "M0", 0)
            data = pattern(64 * 512, 3)
            assert io.write(0, data) == (0, True)
            io.close()
            make, name = _OVER_ONE_BASE[kind]
            assert _ok(hh, make, "M0") == 0
            v = Io(hh, name, 0)
            bufs = []
            done = []

            def cb(bio, success, i):
                done.append((i, success))
                api.free_io(bio)
            while len(bufs) < 16:           # submit until the user's own submit is refused
                b = bytearray(512)
                rc = api.read_blocks(v.desc, v.ch, b, len(bufs) * 7, 1, cb, len(bufs))
                if rc:
                    assert rc == -errno.ENOMEM
                    break
                bufs.append(b)
            n = len(bufs)
            assert n >= 2 and waits == ["M0"]             # the last child waits on the base
            assert run_until(hh, lambda: len(done) == n)
            assert sorted(done) == [(i, True) for i in range(n)]
            assert [bytes(b) for b in bufs] == [data[i * 7 * 512:(i * 7 + 1) * 512] for i in range(n)]
            v.close()
        finally:
            hh.set_thread(0)
            for b in reversed([b.name for b in api.bdevs()]):
                if api.get_by_name(b) is not None:
                    rm(hh, b)
            bdev_stub.fini_layer(hh)
