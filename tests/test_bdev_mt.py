"""Deterministic multi-thread tests (one reactor, three threads): the scenarios of SPDK's
test/unit/lib/bdev/mt/bdev.c/bdev_ut.c -- reset, QoS, hot-remove -- written for ringstack."""
import pytest

from reactor.testing import Harness

import bdev as B
import bdev_stub as S

EAGAIN = 11
NOT = B.QOS_LIMIT_NOT_DEFINED


@pytest.fixture
def h():
    with Harness(3) as h:
        S.init_layer(h)
        h.b = S.create("ut", blockcnt=1 << 20, blocklen=512)
        h.descs = {}
        h.chs = {}
        yield h
        for i in list(h.chs):
            h.set_thread(i)
            B.put_io_channel(h.chs.pop(i))
        h.poll_threads()
        for i, d in list(h.descs.items()):
            h.set_thread(i)
            B.close(d)
        h.poll_threads()
        S.fini_layer(h)


def setup_thread(h, i, write=True):
    h.set_thread(i)
    rc, d = B.open(h.b, write)
    assert rc == 0
    h.descs[i] = d
    h.chs[i] = B.get_io_channel(d)
    return d, h.chs[i]


def put_thread(h, i):
    h.set_thread(i)
    B.put_io_channel(h.chs.pop(i))


def test_basic_io_on_two_threads(h):
    cpl = S.Cpl()
    for i in (0, 1):
        d, ch = setup_thread(h, i)
        assert B.read_blocks(d, ch, bytearray(512), i, 1, cpl, i) == 0
    for i in (0, 1):
        h.set_thread(i)
        assert len(S.outstanding("ut")) == 1
        S.complete("ut")
    assert sorted(cpl.args()) == [0, 1]


def test_put_channel_during_reset(h):
    d0, c0 = setup_thread(h, 0)
    cpl = S.Cpl()
    assert B.reset(d0, c0, cpl, "reset") == 0
    # drop the channel before the reset reaches the module: the reset holds its own
    # channel reference, so the walk still finds the device
    put_thread(h, 0)
    h.poll_threads()
    h.set_thread(0)
    S.complete("ut")
    h.poll_threads()
    assert cpl.done == [("reset", True)]


def test_aborted_reset(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    cpl = S.Cpl()
    h.set_thread(0)
    assert B.reset(d0, c0, cpl, "r0") == 0
    h.poll_threads()
    assert h.b.reset_in_progress is not None
    h.set_thread(1)
    assert B.reset(d1, c1, cpl, "r1") == 0        # queued behind r0
    h.poll_threads()
    put_thread(h, 1)                             # destroying channel 1 aborts r1
    h.poll_threads()
    assert cpl.done == [("r1", False)]
    h.set_thread(0)
    S.complete("ut")
    h.poll_threads()
    assert cpl.done == [("r1", False), ("r0", True)]
    assert h.b.reset_in_progress is None


def test_queued_reset_runs_after_first(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    cpl = S.Cpl()
    h.set_thread(0)
    B.reset(d0, c0, cpl, "r0")
    h.poll_threads()
    h.set_thread(1)
    B.reset(d1, c1, cpl, "r1")
    h.poll_threads()
    h.set_thread(0)
    S.complete("ut")
    h.poll_threads()
    assert cpl.args() == ["r0"]
    h.set_thread(1)                # r1 was started by the unfreeze on thread 1
    assert [io.type for io in S.outstanding("ut")] == [B.IO_TYPE_RESET]
    S.complete("ut")
    h.poll_threads()
    assert cpl.args() == ["r0", "r1"]


def test_io_during_reset(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    cpl = S.Cpl()
    for i, (d, c) in enumerate(((d0, c0), (d1, c1))):
        h.set_thread(i)
        assert B.read_blocks(d, c, bytearray(512), 0, 1, cpl, f"io{i}") == 0
    h.set_thread(0)
    assert B.reset(d0, c0, cpl, "reset") == 0
    h.poll_threads()
    # frozen: new I/O fails on every channel
    h.set_thread(1)
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "during") == 0
    h.poll_threads()
    assert ("during", False) in cpl.done
    # the module's reset aborts what it holds on thread 0
    assert ("io0", False) in cpl.done
    S.complete("ut")                                  # io1 still with the module on thread 1
    h.set_thread(0)
    S.complete("ut")                                  # the reset
    h.poll_threads()
    assert ("reset", True) in cpl.done
    h.set_thread(1)
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "after") == 0
    S.complete("ut")
    assert cpl.done[-1] == ("after", True)


def _set_qos(h, limits, thread=0):
    h.set_thread(thread)
    out = []
    B.set_qos_rate_limits(h.b, limits, lambda arg, rc: out.append(rc))
    return out


def test_basic_qos_funnels_to_qos_thread(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    out = _set_qos(h, [20000, NOT, NOT, NOT])
    h.poll_threads()
    assert out == [0]
    assert h.b.qos.thread is h.threads[0]
    cpl = S.Cpl()
    h.set_thread(1)
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "t1") == 0
    h.poll_threads()
    assert len(S.outstanding("ut")) == 0              # not on thread 1's channel
    h.set_thread(0)
    assert len(S.outstanding("ut")) == 1              # funnelled to the QoS thread
    S.complete("ut")
    assert cpl.done == []                             # completion goes back to thread 1
    h.poll_threads()
    assert cpl.done == [("t1", True)]
    st = B.get_io_stat(h.b, c1)
    assert st.num_read_ops == 1                       # counted on the submitting channel
    # closing every desc destroys QoS; it comes back on the next channel
    put_thread(h, 0)
    put_thread(h, 1)
    for i in (0, 1):
        h.set_thread(i)
        B.close(h.descs.pop(i))
    h.poll_threads()
    assert h.b.qos is not None and h.b.qos.thread is None
    assert B.get_qos_rate_limits(h.b)[0] == 20000
    d1, c1 = setup_thread(h, 1)
    assert h.b.qos.thread is h.threads[1]


def test_io_during_qos_queue(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    _set_qos(h, [10000, 10, NOT, NOT])   # 10 IO and 10 MiB per ms-slice
    h.poll_threads()
    cpl = S.Cpl()
    for i in range(25):
        th = i % 2
        h.set_thread(th)
        d, c = (d0, c0) if th == 0 else (d1, c1)
        assert B.read_blocks(d, c, bytearray(512), 0, 1, cpl, i) == 0
    h.poll_threads()
    h.set_thread(0)
    assert len(S.outstanding("ut")) == 10             # one timeslice worth
    assert len(h.b.qos.queued) == 15
    h.advance_time_us(1000)
    h.poll_threads()
    assert len(S.outstanding("ut")) == 20
    h.advance_time_us(1000)
    h.poll_threads()
    assert len(S.outstanding("ut")) == 25
    S.complete("ut")
    h.poll_threads()
    assert sorted(cpl.args()) == list(range(25))


def test_qos_bytes_limit_and_overrun(h):
    d0, c0 = setup_thread(h, 0)
    _set_qos(h, [NOT, 10, NOT, NOT])    # 10 MiB/s -> 10485 bytes per ms
    h.poll_threads()
    cpl = S.Cpl()
    h.set_thread(0)
    for i in range(4):                  # 8 KiB each
        assert B.read_blocks(d0, c0, None, 0, 16, cpl, i) == 0
    # first fits; second overruns the slice (allowed, negative remaining); third waits
    assert len(S.outstanding("ut")) == 2
    assert h.b.qos.remaining[1] == 10485 - 2 * 8192
    h.advance_time_us(1000)
    h.poll_threads()
    # the overrun is deducted from the next slice
    assert len(S.outstanding("ut")) == 3
    assert h.b.qos.remaining[1] == 10485 - 2 * 8192 + 10485 - 8192
    h.advance_time_us(1000)
    h.poll_threads()
    assert len(S.outstanding("ut")) == 4
    S.complete("ut")
    h.advance_time_us(2000)
    h.poll_threads()
    S.complete("ut")
    assert len(cpl.done) == 4


def test_separate_read_write_bytes_limits(h):
    d0, c0 = setup_thread(h, 0)
    _set_qos(h, [NOT, NOT, 10, NOT])    # reads only
    h.poll_threads()
    cpl = S.Cpl()
    h.set_thread(0)
    for i in range(4):
        B.read_blocks(d0, c0, None, 0, 32, cpl, f"r{i}")   # 16 KiB: one per slice
    assert len(S.outstanding("ut")) == 1
    B.write_blocks(d0, c0, bytearray(16384), 0, 32, cpl, "w")
    # the write is behind reads in the queue (FIFO, as the seed)
    assert len(S.outstanding("ut")) == 1
    assert B.get_qos_rate_limits(h.b) == [0, 0, 10 * 1024 * 1024, 0]
    h.advance_time_us(10000)
    h.poll_threads()
    S.complete("ut")
    h.advance_time_us(10000)
    h.poll_threads()
    S.complete("ut")
    assert len(cpl.done) == 5


def test_io_during_qos_reset(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    _set_qos(h, [10000, NOT, NOT, NOT])
    h.poll_threads()
    cpl = S.Cpl()
    for i in range(15):
        h.set_thread(i % 2)
        d, c = (d0, c0) if i % 2 == 0 else (d1, c1)
        assert B.read_blocks(d, c, bytearray(512), 0, 1, cpl, i) == 0
    h.poll_threads()
    assert len(h.b.qos.queued) == 5
    h.set_thread(1)
    assert B.reset(d1, c1, cpl, "reset") == 0
    h.poll_threads()
    # the freeze aborted everything QoS still queued, from both threads (thread 0, the
    # QoS thread, submitted its own first; thread 1's arrived by message)
    failed = [a for a, ok in cpl.done if not ok]
    assert sorted(failed) == [5, 7, 9, 11, 13]
    h.set_thread(0)
    S.complete("ut")   # the 10 the module held on the QoS channel
    h.set_thread(1)
    S.complete("ut")   # the reset itself, on thread 1's channel (resets are not funnelled)
    h.poll_threads()
    assert ("reset", True) in cpl.done
    assert len(cpl.done) == 16


def test_qos_dynamic_enable_update_disable(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    cpl = S.Cpl()
    # I/O outstanding while enabling
    h.set_thread(1)
    B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "pre")
    out = _set_qos(h, [10000, NOT, NOT, NOT])
    again = _set_qos(h, [20000, NOT, NOT, NOT])
    assert again == [-EAGAIN]                        # a change is in progress
    h.poll_threads()
    assert out == [0]
    assert c0.ctx.flags & 2 and c1.ctx.flags & 2
    # update
    out = _set_qos(h, [30000, NOT, NOT, NOT])
    h.poll_threads()
    assert out == [0] and B.get_qos_rate_limits(h.b)[0] == 30000
    assert h.b.qos.max_per[0] == 30
    # queue more than a slice, then disable: queued I/O goes back to its threads
    for i in range(40):
        h.set_thread(i % 2)
        d, c = (d0, c0) if i % 2 == 0 else (d1, c1)
        B.read_blocks(d, c, bytearray(512), 0, 1, cpl, i)
    h.poll_threads()
    assert len(h.b.qos.queued) == 10
    out = _set_qos(h, [0, NOT, NOT, NOT])
    h.poll_threads()
    assert out == [0] and h.b.qos is None
    assert not (c0.ctx.flags & 2) and not (c1.ctx.flags & 2)
    for i in (0, 1):
        h.set_thread(i)
        S.complete("ut")
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        S.complete("ut")
    h.poll_threads()
    assert sorted(a for a in cpl.args() if a != "pre") == list(range(40)) and "pre" in cpl.args()
    # disabling when already disabled is a no-op success
    out = _set_qos(h, [0, NOT, NOT, NOT])
    h.poll_threads()
    assert out == [0]


def test_qos_rounding(h):
    # today's SPDK minimums: multiples of 1000 IO/s and 1 MiB/s (the seed's: 10000, 10 MiB);
    # a MiB/s limit from the RPC is always a whole multiple, so only IO/s rounds
    out = _set_qos(h, [12345, 15, NOT, NOT])
    h.poll_threads()
    assert out == [0]
    assert B.get_qos_rate_limits(h.b)[:2] == [13000, 15 * 1024 * 1024]


def test_hot_remove_notifies_each_desc_on_its_thread(h):
    seen = []
    descs = {}
    for i in (0, 1, 2):
        h.set_thread(i)
        rc, d = B.open(h.b, False, lambda ctx: seen.append((ctx, __import__("reactor").get_thread().name)), i)
        descs[i] = d
    h.set_thread(0)
    done = []
    B.bdev_unregister(h.b, lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert sorted(seen) == [(0, "ut_thread0"), (1, "ut_thread1"), (2, "ut_thread2")]
    for i in (2, 0):
        h.set_thread(i)
        B.close(descs[i])
    h.poll_threads()
    assert done == []
    h.set_thread(1)
    B.close(descs[1])
    h.poll_threads()
    assert done == [0]


def test_enomem_across_threads_independent(h):
    d0, c0 = setup_thread(h, 0)
    d1, c1 = setup_thread(h, 1)
    h.set_thread(0)
    S.set_avail("ut", 1)
    cpl = S.Cpl()
    B.read_blocks(d0, c0, bytearray(512), 0, 1, cpl, "a")
    B.read_blocks(d0, c0, bytearray(512), 0, 1, cpl, "b")
    assert len(c0.ctx.shared_resource.nomem_io) == 1
    h.set_thread(1)
    B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "c")
    assert len(S.outstanding("ut")) == 1
    S.complete("ut")
    h.set_thread(0)
    S.complete("ut")
    S.complete("ut")
    assert sorted(cpl.args()) == ["a", "b", "c"]


def test_unregister_from_another_thread_hops_to_the_main_thread(h):
    import reactor as rx
    S.create("other")
    h.set_thread(2)
    b = B.get_by_name("other")
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append((rc, rx.get_thread().name)))
    assert b.status != 2                 # STATUS_REMOVING: the main thread applies it, later
    h.poll_threads()
    assert done == [(0, "ut_thread2")] and B.get_by_name("other") is None
