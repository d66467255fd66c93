"""Tests that pin behaviours of the bdev layer no other test caught a break of, and the
seed unit-test scenarios (SPDK test/unit/lib/bdev/bdev.c/bdev_ut.c and
test/unit/lib/bdev/mt/bdev.c/bdev_ut.c, late 2018) not mirrored elsewhere.

Every test is deterministic (Harness, poll_threads), checks status, callback and thread
of every I/O exactly, and ends with nothing outstanding on any channel or shared
resource and every completion callback run exactly once."""
import pytest

import reactor as rx
from reactor.testing import Harness

import bdev as B
from bdev import module as bm
import bdev_stub as S

EINVAL, ENOMEM, EAGAIN = 22, 12, 11
U64 = 1 << 64
NOT = B.QOS_LIMIT_NOT_DEFINED


# ------------------------------------------------------------------ fixtures
def _close_all(h):
    h.set_thread(0)
    h.poll_threads()
    for b in list(B.bdevs()):
        for d in list(b.open_descs):
            h.set_thread(h.threads.index(d.thread))
            B.close(d)
    h.set_thread(0)
    h.poll_threads()


@pytest.fixture
def h():
    """One thread (bdev_ut.c)."""
    with Harness(1) as h:
        S.init_layer(h)
        yield h
        _close_all(h)
        S.fini_layer(h)


@pytest.fixture
def h3():
    """Three threads on one reactor (mt/bdev_ut.c), bdev "ut" registered."""
    with Harness(3) as h:
        S.init_layer(h)
        h.b = S.create("ut", blockcnt=1 << 20, blocklen=512)
        yield h
        _close_all(h)
        S.fini_layer(h)


def open_rw(b, remove_cb=None, ctx=None):
    rc, desc = B.open(b, True, remove_cb, ctx)
    assert rc == 0
    return desc


def threads_setup(h, n):
    """A desc and a channel on each of threads 0..n-1 (opened on that thread)."""
    out = []
    for i in range(n):
        h.set_thread(i)
        d = open_rw(h.b)
        out.append((d, B.get_io_channel(d)))
    return out


def threads_teardown(h, ctxs):
    for i, (d, c) in enumerate(ctxs):
        h.set_thread(i)
        S.assert_idle(c)
        B.put_io_channel(c)
    h.poll_threads()
    for i, (d, c) in enumerate(ctxs):
        h.set_thread(i)
        B.close(d)
    h.set_thread(0)
    h.poll_threads()


def set_qos(h, limits, thread=0):
    """set_qos_rate_limits from ``thread``; returns the list its callback appends to."""
    h.set_thread(thread)
    out = []
    B.set_qos_rate_limits(h.b, limits, lambda arg, rc: out.append(rc))
    return out


def qos_on(ch):
    return bool(ch.ctx.flags & 2)     # BDEV_CH_QOS_ENABLED, as test_bdev_mt reads it


def with_pool(pool, cache):
    saved = B.get_opts()
    assert B.set_opts({"bdev_io_pool_size": pool, "bdev_io_cache_size": cache}) == 0
    return saved


# ------------------------------------------------------------------ 1. io_wait order
def test_io_wait_waiters_are_served_before_new_submitters():
    """A bdev_io back in the pool (freed on another thread whose cache is full) does not
    go to a new submitter while this thread has io_wait waiters: it gets -ENOMEM, and
    the waiter gets the next bdev_io freed here (the seed's spdk_bdev_get_io)."""
    with Harness(2) as h:
        saved = with_pool(6, 2)             # 2 cached per thread (x2), 2 left in the pool
        try:
            S.init_layer(h)
            b = S.create("b")
            cpl = S.Cpl()
            ctx = {}
            for i in (0, 1):
                h.set_thread(i)
                d = open_rw(b)
                ctx[i] = (d, B.get_io_channel(d))
            d0, c0 = ctx[0]
            d1, c1 = ctx[1]
            h.set_thread(1)
            for i in range(3):              # 2 from thread 1's cache, 1 from the pool
                assert B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, f"t1-{i}") == 0
            h.set_thread(0)
            for i in range(3):              # 2 from thread 0's cache, the last of the pool
                assert B.read_blocks(d0, c0, bytearray(512), i, 1, cpl, f"t0-{i}") == 0
            assert B.read_blocks(d0, c0, bytearray(512), 9, 1, cpl, "refused") == -ENOMEM
            waited = []

            def on_wait(arg):
                waited.append((arg, rx.get_thread().name))
                waited.append(B.read_blocks(d0, c0, bytearray(512), 5, 1, cpl, "waiter"))
            assert B.queue_io_wait(b, c0, B.IoWaitEntry(b, on_wait, "w")) == 0
            # thread 1 completes its 3: two refill its cache, the third goes to the pool
            h.set_thread(1)
            assert S.complete("b") == 3
            assert waited == []             # a free on thread 1 does not wake thread 0
            h.set_thread(0)
            # a new submitter on thread 0 must not take that pool bdev_io from the waiter
            assert B.read_blocks(d0, c0, bytearray(512), 6, 1, cpl, "jumper") == -ENOMEM
            assert B.write_blocks(d0, c0, bytearray(512), 6, 1, cpl, "jumper-w") == -ENOMEM
            assert B.readv_blocks(d0, c0, [bytearray(512)], 6, 1, cpl, "jumper-v") == -ENOMEM
            assert waited == []
            assert S.complete("b", 1) == 1  # t0-0 freed into thread 0's cache: the waiter
            assert waited == [("w", "ut_thread0"), 0]
            # the waiter's I/O went out; with no waiter left a new submitter gets one
            assert B.read_blocks(d0, c0, bytearray(512), 7, 1, cpl, "after") == 0
            assert S.complete("b") == 4
            h.poll_threads()
            assert cpl.by_arg() == {
                "t1-0": (True, "ut_thread1"), "t1-1": (True, "ut_thread1"),
                "t1-2": (True, "ut_thread1"), "t0-0": (True, "ut_thread0"),
                "t0-1": (True, "ut_thread0"), "t0-2": (True, "ut_thread0"),
                "waiter": (True, "ut_thread0"), "after": (True, "ut_thread0")}
            assert [e[1] for e in S.disk("b").log] == [0, 1, 2, 0, 1, 2, 5, 7]
            for i in (0, 1):
                h.set_thread(i)
                S.assert_idle(ctx[i][1])
                B.put_io_channel(ctx[i][1])
                B.close(ctx[i][0])
            h.set_thread(0)
            h.poll_threads()
            S.fini_layer(h)
        finally:
            assert B.set_opts(saved) == 0


# ------------------------------------------------------------------ 2. reset vs nomem queue
def test_reset_aborts_the_nomem_queue(h):
    """I/O parked after NOMEM fails when a reset freezes the channel -- before the reset
    reaches the module, and without being submitted to the module again."""
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    sr = ch.ctx.shared_resource
    cpl = S.Cpl()
    S.set_avail("b", 1)
    for i, name in enumerate(("held", "nomem1", "nomem2")):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cpl, name) == 0
    assert len(sr.nomem_io) == 2 and sr.io_outstanding == 1
    log = S.disk("b").log
    assert [(t, o) for t, o, n, _ in log] == [(B.IO_TYPE_READ, 0), (B.IO_TYPE_READ, 1)]
    assert B.reset(desc, ch, cpl, "reset") == 0
    h.poll_threads()
    # the freeze failed the parked two first; then the module's reset failed "held"
    assert cpl.done == [("nomem1", False), ("nomem2", False), ("held", False)]
    assert len(sr.nomem_io) == 0
    assert [(t, o) for t, o, n, _ in log] == [(B.IO_TYPE_READ, 0), (B.IO_TYPE_READ, 1),
                                              (B.IO_TYPE_RESET, 0)]
    assert S.complete("b") == 1              # the reset
    h.poll_threads()
    assert cpl.by_arg() == {"nomem1": (False, "ut_thread0"), "nomem2": (False, "ut_thread0"),
                            "held": (False, "ut_thread0"), "reset": (True, "ut_thread0")}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ 3. QoS disable resubmits
def test_qos_disable_resubmits_queued_io_on_each_submitting_thread(h3):
    ctxs = threads_setup(h3, 3)
    out = set_qos(h3, [10000, NOT, NOT, NOT])      # 10 I/O per 1 ms timeslice
    h3.poll_threads()
    assert out == [0] and h3.b.qos.thread is h3.threads[0]
    cpl = S.Cpl()
    h3.set_thread(0)
    d0, c0 = ctxs[0]
    for i in range(10):                            # the slice's whole quota
        assert B.read_blocks(d0, c0, bytearray(512), i, 1, cpl, f"fill{i}") == 0
    for t in (0, 1, 2):
        h3.set_thread(t)
        d, c = ctxs[t]
        for k in range(2):
            assert B.read_blocks(d, c, bytearray(512), 100 + 10 * t + k, 1, cpl, f"q{t}.{k}") == 0
    h3.poll_threads()
    assert len(h3.b.qos.queued) == 6
    h3.set_thread(0)
    assert S.complete("ut") == 10
    out = set_qos(h3, [0, NOT, NOT, NOT])
    h3.poll_threads()
    assert out == [0] and h3.b.qos is None
    assert not any(qos_on(c) for _, c in ctxs)
    # each queued I/O was resubmitted on its own thread's channel, none aborted
    for t in (0, 1, 2):
        h3.set_thread(t)
        offsets = sorted(io.offset_blocks for io in S.outstanding("ut"))
        assert offsets == [100 + 10 * t, 101 + 10 * t]
    for t in (0, 1, 2):
        h3.set_thread(t)
        assert S.complete("ut") == 2
    h3.poll_threads()
    got = cpl.by_arg()
    assert got == {**{f"fill{i}": (True, "ut_thread0") for i in range(10)},
                   **{f"q{t}.{k}": (True, f"ut_thread{t}") for t in (0, 1, 2) for k in (0, 1)}}
    threads_teardown(h3, ctxs)


# ------------------------------------------------------------------ 4. quota leftover
def test_qos_leftover_quota_is_not_carried_into_the_next_timeslice(h3):
    ctxs = threads_setup(h3, 1)
    d, c = ctxs[0]
    out = set_qos(h3, [10000, NOT, NOT, NOT])
    h3.poll_threads()
    assert out == [0]
    cpl = S.Cpl()
    h3.set_thread(0)
    for i in range(3):                         # 7 of the slice's 10 left unused
        assert B.read_blocks(d, c, bytearray(512), i, 1, cpl, f"a{i}") == 0
    assert len(S.outstanding("ut")) == 3
    assert S.complete("ut") == 3
    h3.advance_time_us(1000)                   # exactly one timeslice later
    h3.poll_threads()
    for i in range(15):
        assert B.read_blocks(d, c, bytearray(512), i, 1, cpl, f"b{i}") == 0
    h3.poll_threads()
    assert len(S.outstanding("ut")) == 10      # 10, not 10 + 7 left over
    assert len(h3.b.qos.queued) == 5
    assert S.complete("ut") == 10
    h3.advance_time_us(1000)
    h3.poll_threads()
    assert len(S.outstanding("ut")) == 5
    assert S.complete("ut") == 5
    h3.poll_threads()
    assert cpl.by_arg() == {**{f"a{i}": (True, "ut_thread0") for i in range(3)},
                            **{f"b{i}": (True, "ut_thread0") for i in range(15)}}
    threads_teardown(h3, ctxs)


# ------------------------------------------------------------------ 12. flush and QoS
def test_qos_flush_is_not_counted_against_the_iops_limit(h3):
    ctxs = threads_setup(h3, 2)
    out = set_qos(h3, [10000, NOT, NOT, NOT])
    h3.poll_threads()
    assert out == [0]
    cpl = S.Cpl()
    d1, c1 = ctxs[1]
    h3.set_thread(1)                           # funnelled to the QoS thread (0)
    for i in range(5):
        assert B.flush_blocks(d1, c1, i, 1, cpl, f"f{i}") == 0
    for i in range(10):
        assert B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, f"r{i}") == 0
    assert B.read_blocks(d1, c1, bytearray(512), 50, 1, cpl, "over") == 0
    h3.poll_threads()
    h3.set_thread(0)
    types = [io.type for io in S.outstanding("ut")]
    assert types == [B.IO_TYPE_FLUSH] * 5 + [B.IO_TYPE_READ] * 10   # the 10 reads used it up
    assert len(h3.b.qos.queued) == 1
    assert S.complete("ut") == 15
    h3.advance_time_us(1000)
    h3.poll_threads()
    assert [io.offset_blocks for io in S.outstanding("ut")] == [50]
    assert S.complete("ut") == 1
    h3.poll_threads()
    assert cpl.by_arg() == {**{f"f{i}": (True, "ut_thread1") for i in range(5)},
                            **{f"r{i}": (True, "ut_thread1") for i in range(10)},
                            "over": (True, "ut_thread1")}
    threads_teardown(h3, ctxs)


# ------------------------------------------------------------------ 5. examine
def test_examine_disk_is_skipped_when_examine_config_claimed_the_bdev():
    events = []

    def claim_config(bdev):
        events.append(("config", bdev.name))
        if bdev.name.startswith("claimed"):
            assert bm.module_claim_bdev(bdev, None, claimer) == 0
        bm.module_examine_done(claimer)

    def claimer_disk(bdev):
        events.append(("claimer disk", bdev.name))
        bm.module_examine_done(claimer)

    def other_disk(bdev):
        events.append(("other disk", bdev.name))
        bm.module_examine_done(other)

    claimer = bm.BdevModule("pin_claimer", examine_config=claim_config, examine_disk=claimer_disk)
    other = bm.BdevModule("pin_other_examiner", examine_disk=other_disk)
    for m in (claimer, other):
        bm.register_module(m)
    try:
        with Harness(1) as h:
            S.init_layer(h)
            S.create("claimed0")
            assert events == [("config", "claimed0")]      # no examine_disk at all
            waited = []
            B.wait_for_examine(lambda arg: waited.append(arg), "w0")
            h.poll_threads()
            assert waited == ["w0"]                         # nothing left in progress
            S.create("free0")
            assert sorted(events[1:]) == [("claimer disk", "free0"), ("config", "free0"),
                                          ("other disk", "free0")]
            assert events[1] == ("config", "free0")
            B.wait_for_examine(lambda arg: waited.append(arg), "w1")
            h.poll_threads()
            assert waited == ["w0", "w1"]
            b = B.get_by_name("claimed0")
            assert b.claim_module is claimer
            bm.module_release_bdev(b)
            S.fini_layer(h)
            assert len(events) == 4
    finally:
        for m in (claimer, other):
            bm.module_list_remove(m)


# ------------------------------------------------------------------ 6. qd sampling
def test_close_stops_queue_depth_sampling(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    t0 = h.threads[0]
    base = t0.poller_counts()
    B.set_qd_sampling_period(b, 10)
    assert t0.poller_counts()[1] == base[1] + 1        # the sampling poller
    cpl = S.Cpl()
    for i in range(2):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cpl, i) == 0
    h.advance_time_us(10)
    h.poll_threads()
    assert (B.get_qd(b), B.get_io_time(b), B.get_weighted_io_time(b)) == (2, 10, 20)
    assert S.complete("b") == 2
    S.assert_idle(ch)
    B.put_io_channel(ch)
    h.poll_threads()
    B.close(desc)                                      # the last close
    assert B.get_qd_sampling_period(b) == 0
    assert B.get_qd(b) == U64 - 1                      # "not measured"
    assert t0.poller_counts() == base                  # the poller is gone
    h.advance_time_us(50)
    h.poll_threads()
    assert (B.get_qd(b), B.get_io_time(b), B.get_weighted_io_time(b)) == (U64 - 1, 10, 20)
    assert cpl.by_arg() == {0: (True, "ut_thread0"), 1: (True, "ut_thread0")}


# ------------------------------------------------------------------ 7 / 13 / 14. split
def _one_submission_each(h, desc, ch, name, calls):
    """Each call must reach the module as one I/O -- the caller's own bdev_io, no child --
    with its whole range; the callback runs once, when that I/O completes."""
    log = S.disk(name).log
    for arg, (fn, t, off, n) in calls.items():
        seen = []

        def cb(io, ok, a, seen=seen):
            seen.append((io, ok, a, rx.get_thread().name))
            B.free_io(io)
        before = len(log)
        assert fn(desc, ch, off, n, cb, arg) == 0
        assert log[before:] == [(t, off, n, [])], arg
        q = S.outstanding(name)
        assert len(q) == 1
        io = q[0]
        assert seen == []
        assert S.complete(name) == 1
        h.poll_threads()
        assert seen == [(io, True, arg, "ut_thread0")], arg
        assert len(log) == before + 1


def test_unmap_flush_write_zeroes_are_not_split_on_the_optimal_io_boundary(h):
    b = S.create("s", blockcnt=4096, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    _one_submission_each(h, desc, ch, "s", {
        "unmap": (B.unmap_blocks, B.IO_TYPE_UNMAP, 14, 4),
        "flush": (B.flush_blocks, B.IO_TYPE_FLUSH, 14, 4),
        "wz": (B.write_zeroes_blocks, B.IO_TYPE_WRITE_ZEROES, 14, 4),
        "unmap-wide": (B.unmap_blocks, B.IO_TYPE_UNMAP, 0, 4096),     # 256 boundaries
        "flush-wide": (B.flush_blocks, B.IO_TYPE_FLUSH, 1, 4095),
        "wz-wide": (B.write_zeroes_blocks, B.IO_TYPE_WRITE_ZEROES, 15, 100),
    })
    # the boundary is in force: a write over the same range is split in two
    cpl = S.Cpl()
    assert B.write_blocks(desc, ch, bytearray(4 * 512), 14, 4, cpl, "w") == 0
    assert S.disk("s").log[-1] == (B.IO_TYPE_WRITE, 14, 2, [1024])
    S.complete("s")
    assert S.disk("s").log[-1] == (B.IO_TYPE_WRITE, 16, 2, [1024])
    S.complete("s")
    assert cpl.by_arg() == {"w": (True, "ut_thread0")}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    B.close(desc)


def test_bdev_io_split_write_zeroes_unmap_flush_seed(h):
    """bdev_ut.c bdev_io_split, its last part: WRITE_ZEROES 9+36 with boundary 15, UNMAP
    and FLUSH 15+2 with boundary 16 -- each one submission, not split."""
    b = S.create("s", blockcnt=4096, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    b.optimal_io_boundary = 15
    _one_submission_each(h, desc, ch, "s", {
        "wz": (B.write_zeroes_blocks, B.IO_TYPE_WRITE_ZEROES, 9, 36)})
    b.optimal_io_boundary = 16
    _one_submission_each(h, desc, ch, "s", {
        "unmap": (B.unmap_blocks, B.IO_TYPE_UNMAP, 15, 2),
        "flush": (B.flush_blocks, B.IO_TYPE_FLUSH, 15, 2)})
    assert len(S.disk("s").log) == 3
    S.assert_idle(ch)
    B.put_io_channel(ch)
    B.close(desc)


def test_bdev_io_spans_boundary_zero_boundary_never_splits(h):
    """bdev_ut.c bdev_io_spans_boundary: no optimal_io_boundary -> never split, even with
    split_on_optimal_io_boundary set (and with another split rule active, so the
    boundary test itself is reached)."""
    cpl = S.Cpl()
    for name, kw in (("z", {}), ("zm", {"max_rw_size": 1 << 20})):
        b = S.create(name, blockcnt=4096, optimal_io_boundary=0, split_on_optimal_io_boundary=True,
                     **kw)
        desc = open_rw(b)
        ch = B.get_io_channel(desc)
        assert B.read_blocks(desc, ch, bytearray(64 * 512), 0, 64, cpl, f"{name}-r") == 0
        assert B.writev_blocks(desc, ch, [bytearray(100 * 512)], 10, 100, cpl, f"{name}-w") == 0
        assert S.disk(name).log == [(B.IO_TYPE_READ, 0, 64, [64 * 512]),
                                    (B.IO_TYPE_WRITE, 10, 100, [100 * 512])]
        assert S.complete(name) == 2
        h.poll_threads()
        S.assert_idle(ch)
        B.put_io_channel(ch)
        B.close(desc)
    assert cpl.by_arg() == {a: (True, "ut_thread0") for a in ("z-r", "z-w", "zm-r", "zm-w")}


def test_bdev_io_spans_boundary_reset_and_edges(h):
    """bdev_ut.c bdev_io_spans_boundary with boundary 32: a RESET is not LBA based (one
    submission); 0+32 runs up to the boundary (not split); 0+33 crosses it (32 + 1)."""
    b = S.create("r", blockcnt=4096, optimal_io_boundary=32, split_on_optimal_io_boundary=True)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    log = S.disk("r").log
    cpl = S.Cpl()
    assert B.reset(desc, ch, cpl, "reset") == 0
    h.poll_threads()
    assert log == [(B.IO_TYPE_RESET, 0, 0, [])]
    assert S.complete("r") == 1
    h.poll_threads()
    assert B.read_blocks(desc, ch, bytearray(32 * 512), 0, 32, cpl, "r32") == 0
    assert log[-1] == (B.IO_TYPE_READ, 0, 32, [32 * 512])
    assert S.complete("r") == 1
    assert B.read_blocks(desc, ch, bytearray(33 * 512), 0, 33, cpl, "r33") == 0
    assert log[-1] == (B.IO_TYPE_READ, 0, 32, [32 * 512])
    assert S.complete("r") == 1
    assert log[-1] == (B.IO_TYPE_READ, 32, 1, [512])
    assert S.complete("r") == 1
    h.poll_threads()
    assert len(log) == 4
    assert cpl.by_arg() == {"reset": (True, "ut_thread0"), "r32": (True, "ut_thread0"),
                            "r33": (True, "ut_thread0")}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ 8. finish order
def test_finish_unregisters_the_last_registered_bdev_first():
    with Harness(1) as h:
        S.init_layer(h)
        order = []
        names = ["b1", "b2", "b3", "b4"]
        B.watch_registry(lambda ev, name: order.append((ev, name)))
        for n in names:
            S.create(n)
            disk = S.disk(n)
            disk.destruct = (lambda ctxt, n=n, f=disk.destruct: (order.append(n), f(ctxt))[1])
        h.poll_threads()
        registered = list(order)
        del order[:]
        S.fini_layer(h)
        assert registered == [("register", n) for n in names]
        assert order == [x for n in reversed(names) for x in (("unregister", n), n)]
        assert all(S.disk(n).destructed for n in names)


# ------------------------------------------------------------------ 9. range check
@pytest.mark.parametrize("kind", ["readv", "writev", "unmap", "flush", "write_zeroes"])
def test_io_range_check_at_its_exact_boundary(h, kind):
    b = S.create("b", blockcnt=100)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    t = {"readv": B.IO_TYPE_READ, "writev": B.IO_TYPE_WRITE, "unmap": B.IO_TYPE_UNMAP,
         "flush": B.IO_TYPE_FLUSH, "write_zeroes": B.IO_TYPE_WRITE_ZEROES}[kind]

    def submit(off, n, arg):
        if kind == "readv":
            return B.readv_blocks(desc, ch, [bytearray(512 * min(n, 100))], off, n, cpl, arg)
        if kind == "writev":
            return B.writev_blocks(desc, ch, [bytearray(512 * min(n, 100))], off, n, cpl, arg)
        fn = {"unmap": B.unmap_blocks, "flush": B.flush_blocks,
              "write_zeroes": B.write_zeroes_blocks}[kind]
        return fn(desc, ch, off, n, cpl, arg)

    accepted = [(99, 1), (0, 100), (50, 50)]           # offset + num == blockcnt
    refused = [(99, 2), (0, 101), (100, 1), (50, 51),   # == blockcnt + 1
               (U64 - 1, 1), (U64 - 1, 2), (1, U64 - 1), (2, U64 - 1), (U64 - 1, U64 - 1),
               (U64 - 50, 100)]                         # offset + num wraps a u64
    for off, n in refused:
        assert submit(off, n, (off, n)) == -EINVAL, (off, n)
    assert S.disk("b").log == []
    for off, n in accepted:
        assert submit(off, n, (off, n)) == 0, (off, n)
    assert [e[:3] for e in S.disk("b").log] == [(t, off, n) for off, n in accepted]
    assert S.complete("b") == len(accepted)
    h.poll_threads()
    assert cpl.by_arg() == {(off, n): (True, "ut_thread0") for off, n in accepted}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ 10. module callbacks
def _run_with_module(mod, body):
    bm.register_module(mod)
    try:
        with Harness(1) as h:
            body(h)
    finally:
        bm.module_list_remove(mod)


def test_module_init_complete_is_called_once_after_init():
    events = []
    mod = bm.BdevModule("pin_cbs", module_init=lambda: events.append("module_init") or 0,
                        init_complete=lambda: events.append("init_complete"))

    def body(h):
        bm.register_module(S.stub_module)
        B.initialize(lambda arg, rc: events.append(("init_cb", rc)))
        h.poll_threads()
        assert events == ["module_init", "init_complete", ("init_cb", 0)]
        S.fini_layer(h)
        assert events == ["module_init", "init_complete", ("init_cb", 0)]
    _run_with_module(mod, body)


def test_module_fini_start_is_called_once_before_bdevs_go():
    events = []
    mod = bm.BdevModule("pin_cbs", fini_start=lambda: events.append("fini_start"),
                        module_fini=lambda: events.append("module_fini"))

    def body(h):
        S.init_layer(h)
        S.create("b")
        disk = S.disk("b")
        disk.destruct = lambda ctxt, f=disk.destruct: (events.append("destruct b"), f(ctxt))[1]
        h.poll_threads()
        assert events == []
        S.fini_layer(h)
        assert events == ["fini_start", "destruct b", "module_fini"]
    _run_with_module(mod, body)


# ------------------------------------------------------------------ 11 / 15. no channel
def test_module_without_a_channel_fails_get_io_channel(h, caplog):
    b = S.create("b")
    desc = open_rw(b)
    disk = S.disk("b")
    t0 = h.threads[0]
    before = dict(t0.io_channels)
    disk.no_channel = True
    assert B.get_io_channel(desc) is None
    assert B.get_io_channel(desc) is None               # again: nothing half-made was kept
    assert disk.channels == [] and dict(t0.io_channels) == before
    h.poll_threads()
    disk.no_channel = False                             # the module has channels again
    ch = B.get_io_channel(desc)
    assert ch is not None and len(disk.channels) == 1
    cpl = S.Cpl()
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "r") == 0
    assert S.complete("b") == 1
    assert cpl.by_arg() == {"r": (True, "ut_thread0")}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    h.poll_threads()
    assert disk.channels == []
    B.close(desc)
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append(rc))
    h.poll_threads()                                    # no channel left to wait for
    assert done == [0] and disk.destructed
    S.fini_layer(h)                                     # no mgmt channel left either
    assert "pool count" not in caplog.text
    S.init_layer(h)                                     # (the fixture finishes again)


def test_mt_basic_channel_creation_failure(h3):
    """mt bdev_ut.c basic: the module gives no channel -> NULL; the module's own channel
    create fails -> NULL; then a channel, put back."""
    h3.set_thread(0)
    desc = open_rw(h3.b)
    disk = S.disk("ut")
    disk.no_channel = True
    assert B.get_io_channel(desc) is None
    disk.no_channel = False
    disk.fail_create_ch = True
    assert B.get_io_channel(desc) is None
    assert disk.channels == []
    disk.fail_create_ch = False
    ch = B.get_io_channel(desc)
    assert ch is not None and len(disk.channels) == 1
    S.assert_idle(ch)
    B.put_io_channel(ch)
    h3.poll_threads()
    assert disk.channels == []
    B.close(desc)
    done = []
    B.bdev_unregister(h3.b, lambda arg, rc: done.append(rc))
    h3.poll_threads()
    assert done == [0] and disk.destructed


# ------------------------------------------------------------------ 16. unregister, close
def test_unregister_and_close_before_the_first_poll(h3):
    """mt bdev_ut.c unregister_and_close: a desc closed before the unregister's messages
    ran never gets its remove callback, and the unregister completes."""
    h3.set_thread(0)
    removed = []
    desc = open_rw(h3.b, remove_cb=removed.append, ctx="ctx")
    done = []
    B.bdev_unregister(h3.b, lambda arg, rc: done.append((arg, rc, rx.get_thread().name)), "u")
    assert removed == [] and done == []            # no polling yet: neither ran
    B.close(desc)
    h3.poll_threads()
    assert removed == []                           # the desc was closed already
    assert done == [("u", 0, "ut_thread0")]
    assert B.get_by_name("ut") is None and S.disk("ut").destructed
    h3.advance_time_us(1000)
    h3.poll_threads()
    assert removed == [] and len(done) == 1


# ------------------------------------------------------------------ 17. enomem + reset
def test_mt_enomem_then_reset(h3):
    """mt bdev_ut.c enomem: AVAIL I/O fill the module, the rest wait on nomem_io in
    order; the retry starts only at the threshold; a reset completes everything."""
    AVAIL, N = 20, 64
    TH = 8                                          # the seed's NOMEM_THRESHOLD_COUNT
    h3.set_thread(0)
    desc = open_rw(h3.b)
    ch = B.get_io_channel(desc)
    sr = ch.ctx.shared_resource
    S.set_avail("ut", AVAIL)
    cpl = S.Cpl()
    for i in range(AVAIL):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cpl, i) == 0
    assert len(sr.nomem_io) == 0
    assert B.read_blocks(desc, ch, bytearray(512), AVAIL, 1, cpl, AVAIL) == 0
    assert len(sr.nomem_io) == 1
    first = sr.nomem_io[0]
    for i in range(AVAIL + 1, N):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cpl, i) == 0
    assert sr.nomem_io[0] is first
    assert len(sr.nomem_io) == N - AVAIL
    assert sr.nomem_threshold == AVAIL - TH
    assert S.complete("ut", 1) == 1                 # below the threshold: no retry
    assert len(sr.nomem_io) == N - AVAIL
    assert S.complete("ut", TH - 1) == TH - 1       # reaches it: retried
    assert len(sr.nomem_io) == N - AVAIL - TH
    assert len(S.outstanding("ut")) == AVAIL
    assert S.complete("ut", 1) == 1                 # no retry again
    assert len(sr.nomem_io) == N - AVAIL - TH
    ok = TH + 1                                     # completed before the reset, in order
    parked = [io.offset_blocks for io in sr.nomem_io]
    held = [io.offset_blocks for io in S.outstanding("ut")]
    assert parked == list(range(AVAIL + TH, N)) and held == list(range(ok, AVAIL + TH))
    log = S.disk("ut").log
    assert len(log) == AVAIL + 1 + TH + 1           # AVAIL, the NOMEM one, TH retried + NOMEM
    assert cpl.done == [(i, True) for i in range(ok)]
    assert B.reset(desc, ch, cpl, "reset") == 0
    h3.poll_threads()
    # the freeze failed the parked I/O (never resubmitted), then the module's reset
    # failed what it held
    assert cpl.done[ok:] == [(i, False) for i in parked + held]
    assert len(log) == AVAIL + 1 + TH + 1 + 1 and log[-1][0] == B.IO_TYPE_RESET
    assert S.complete("ut") == 1                    # the reset
    h3.poll_threads()
    assert len(sr.nomem_io) == 0 and sr.io_outstanding == 0
    assert cpl.by_arg() == {**{i: (i < ok, "ut_thread0") for i in range(N)},
                            "reset": (True, "ut_thread0")}
    S.assert_idle(ch)
    B.put_io_channel(ch)
    h3.poll_threads()
    B.close(desc)


# ------------------------------------------------------------------ 18. qos_dynamic_enable
def test_mt_qos_dynamic_enable_with_partial_disable(h3):
    ctxs = threads_setup(h3, 2)
    (d0, c0), (d1, c1) = ctxs
    assert not qos_on(c0) and not qos_on(c1)
    cpl = S.Cpl()
    # enable IOPS and bytes/s limits: 10 I/O per timeslice
    lim = [10000, 100, NOT, NOT]
    out = set_qos(h3, lim)
    h3.poll_threads()
    assert out == [0] and qos_on(c0) and qos_on(c1)
    h3.set_thread(0)
    for i in range(10):                              # fill this slice's allotment
        assert B.read_blocks(d0, c0, bytearray(512), i, 1, cpl, f"fill{i}") == 0
        h3.poll_thread(0)
        assert S.complete("ut") == 1
        assert cpl.done[-1] == (f"fill{i}", True)
    # two more, one per thread: queued; QoS disable must neither abort them nor run them
    # on the QoS thread
    assert B.read_blocks(d0, c0, bytearray(512), 100, 1, cpl, "q0") == 0
    h3.set_thread(1)
    assert B.read_blocks(d1, c1, bytearray(512), 101, 1, cpl, "q1") == 0
    h3.poll_threads()
    assert len(h3.b.qos.queued) == 2 and len(S.disk("ut").log) == 10
    # disable the IOPS limit only: the bytes limit stays, so QoS stays on -- as the seed
    # does it (the bytes value passed again) ...
    lim[0] = 0
    out = set_qos(h3, lim)
    h3.poll_threads()
    assert out == [0] and qos_on(c0) and qos_on(c1)
    assert B.get_qos_rate_limits(h3.b) == [0, 100 * 1024 * 1024, 0, 0]
    assert h3.b.qos is not None and len(h3.b.qos.queued) == 2
    assert len(S.disk("ut").log) == 10
    # ... and with the bytes limit left as it is (not defined in the call)
    out = set_qos(h3, [0, NOT, NOT, NOT])
    h3.poll_threads()
    assert out == [0] and qos_on(c0) and qos_on(c1)
    assert B.get_qos_rate_limits(h3.b) == [0, 100 * 1024 * 1024, 0, 0]
    assert h3.b.qos is not None and len(h3.b.qos.queued) == 2
    assert len(S.disk("ut").log) == 10
    # disable the bytes limit too: QoS off, the queued two go back to their threads
    lim[1] = 0
    out = set_qos(h3, lim)
    h3.poll_threads()
    assert out == [0] and not qos_on(c0) and not qos_on(c1)
    assert B.get_qos_rate_limits(h3.b) == [0, 0, 0, 0]
    h3.set_thread(0)
    assert S.complete("ut") == 1
    h3.poll_threads()
    assert cpl.by_arg().get("q0") == (True, "ut_thread0") and "q1" not in cpl.by_arg()
    h3.set_thread(1)
    assert S.complete("ut") == 1
    h3.poll_threads()
    assert cpl.by_arg().get("q1") == (True, "ut_thread1")
    # disable again: a no-op success
    out = set_qos(h3, lim)
    h3.poll_threads()
    assert out == [0] and not qos_on(c0) and not qos_on(c1)
    # enable from thread 0
    lim[0] = 10000
    out = set_qos(h3, lim)
    h3.poll_threads()
    assert out == [0] and qos_on(c0) and qos_on(c1)
    # disable from thread 1, not polled yet: still on; an enable meanwhile -> -EAGAIN
    lim[0] = 0
    out = set_qos(h3, lim, thread=1)
    assert out == [] and qos_on(c0) and qos_on(c1)
    lim[1] = 10
    second = set_qos(h3, lim, thread=1)
    h3.poll_threads()
    assert out == [0] and second == [-EAGAIN]
    assert not qos_on(c0) and not qos_on(c1)
    # enable from thread 1 now that the disable finished
    lim[0] = 10000
    out = set_qos(h3, lim, thread=1)
    h3.poll_threads()
    assert out == [0] and qos_on(c0) and qos_on(c1)
    # I/O under the re-enabled QoS completes on its own thread too
    h3.set_thread(1)
    assert B.read_blocks(d1, c1, bytearray(512), 7, 1, cpl, "late1") == 0
    h3.poll_threads()
    qt = h3.threads.index(h3.b.qos.thread)
    h3.set_thread(qt)
    assert S.complete("ut") == 1
    h3.poll_threads()
    assert cpl.by_arg() == {**{f"fill{i}": (True, "ut_thread0") for i in range(10)},
                            "q0": (True, "ut_thread0"), "q1": (True, "ut_thread1"),
                            "late1": (True, "ut_thread1")}
    threads_teardown(h3, ctxs)


# ------------------------------------------------------------------ 3 / 12 across reactors
@pytest.fixture
def h4():
    """Two reactors: threads 0, 2 on reactor 0; 1, 3 on reactor 1 (test_bdev_multi)."""
    with Harness(4, n_reactors=2) as h:
        S.init_layer(h)
        h.set_thread(0)
        S.create("ut", blockcnt=1 << 20, blocklen=512)
        h.poll_threads()
        yield h
        _close_all(h)
        S.fini_layer(h)


def _multi_setup(h):
    out = []
    for i in range(4):
        h.set_thread(i)
        d = open_rw(B.get_by_name("ut"))
        out.append((d, B.get_io_channel(d)))
    h.set_thread(0)
    res = []
    B.set_qos_rate_limits(B.get_by_name("ut"), [10000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res == [0] and B.get_by_name("ut").qos.thread is h.threads[0]
    return out


def test_qos_disable_resubmits_queued_io_on_each_submitting_thread_across_reactors(h4):
    ctxs = _multi_setup(h4)
    cpl = S.Cpl()
    h4.set_thread(0)
    d0, c0 = ctxs[0]
    for i in range(10):
        assert B.read_blocks(d0, c0, bytearray(512), i, 1, cpl, f"fill{i}") == 0
    for t in range(4):
        h4.set_thread(t)
        d, c = ctxs[t]
        for k in range(2):
            assert B.write_blocks(d, c, bytearray(bytes([t]) * 512), 100 + 10 * t + k, 1, cpl,
                                  f"q{t}.{k}") == 0
    h4.poll_threads()
    h4.set_thread(0)
    assert len(B.get_by_name("ut").qos.queued) == 8
    assert S.complete("ut") == 10
    res = []
    B.set_qos_rate_limits(B.get_by_name("ut"), [0, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h4.poll_threads()
    assert res == [0]
    for t in range(4):
        h4.set_thread(t)
        assert B.get_by_name("ut").qos is None and not qos_on(ctxs[t][1])
        q = S.outstanding("ut")
        assert sorted(io.offset_blocks for io in q) == [100 + 10 * t, 101 + 10 * t], t
        assert all(bytes(io.iovs[0]) == bytes([t]) * 512 for io in q)
    for t in range(4):
        h4.set_thread(t)
        assert S.complete("ut") == 2
    h4.poll_threads()
    assert cpl.by_arg() == {**{f"fill{i}": (True, "ut_thread0") for i in range(10)},
                            **{f"q{t}.{k}": (True, f"ut_thread{t}")
                               for t in range(4) for k in (0, 1)}}
    threads_teardown(h4, ctxs)


def test_qos_flush_is_not_counted_against_the_iops_limit_across_reactors(h4):
    ctxs = _multi_setup(h4)
    cpl = S.Cpl()
    h4.set_thread(1)                           # reactor 1: forwarded to the QoS thread
    d1, c1 = ctxs[1]
    for i in range(5):
        assert B.flush_blocks(d1, c1, i, 1, cpl, f"f{i}") == 0
    for i in range(10):
        assert B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, f"r{i}") == 0
    assert B.read_blocks(d1, c1, bytearray(512), 50, 1, cpl, "over") == 0
    h4.poll_threads()
    h4.set_thread(0)
    assert [io.type for io in S.outstanding("ut")] == [B.IO_TYPE_FLUSH] * 5 + [B.IO_TYPE_READ] * 10
    assert len(B.get_by_name("ut").qos.queued) == 1
    assert S.complete("ut") == 15
    h4.advance_time_us(1000)
    h4.poll_threads()
    h4.set_thread(0)
    assert [io.offset_blocks for io in S.outstanding("ut")] == [50]
    assert S.complete("ut") == 1
    h4.poll_threads()
    assert cpl.by_arg() == {**{f"f{i}": (True, "ut_thread1") for i in range(5)},
                            **{f"r{i}": (True, "ut_thread1") for i in range(10)},
                            "over": (True, "ut_thread1")}
    threads_teardown(h4, ctxs)


# ------------------------------------------------------------------ 2 / 6 / 16 across reactors
def test_reset_aborts_the_nomem_queue_on_another_reactor(h4):
    h4.set_thread(1)
    d1 = open_rw(B.get_by_name("ut"))
    c1 = B.get_io_channel(d1)
    sr = c1.ctx.shared_resource
    cpl = S.Cpl()
    S.set_avail("ut", 1)
    for i, name in enumerate(("held", "nomem1", "nomem2")):
        assert B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, name) == 0
    assert len(sr.nomem_io) == 2
    h4.set_thread(0)
    d0 = open_rw(B.get_by_name("ut"))
    c0 = B.get_io_channel(d0)
    assert B.reset(d0, c0, cpl, "reset") == 0
    h4.poll_threads()
    # reactor 1's freeze failed its parked two; the module's reset runs on thread 0's
    # channel, so "held" is still with the module on thread 1
    assert cpl.done == [("nomem1", False), ("nomem2", False)] and len(sr.nomem_io) == 0
    h4.set_thread(1)
    assert [(t, o) for t, o, n, _ in S.disk("ut").log] == [(B.IO_TYPE_READ, 0), (B.IO_TYPE_READ, 1)]
    assert S.complete("ut") == 1
    h4.set_thread(0)
    assert [io.type for io in S.outstanding("ut")] == [B.IO_TYPE_RESET]
    assert S.complete("ut") == 1
    h4.poll_threads()
    assert cpl.by_arg() == {"nomem1": (False, "ut_thread1"), "nomem2": (False, "ut_thread1"),
                            "held": (True, "ut_thread1"), "reset": (True, "ut_thread0")}
    threads_teardown(h4, [(d0, c0), (d1, c1)])


def test_close_stops_queue_depth_sampling_across_reactors(h4):
    """The last close of the bdev, on reactor 1, stops the sampling that the main thread
    started (the seed stops it on any close; close()'s docstring: "the last close over
    all reactors stops ... the queue depth poller")."""
    h4.set_thread(0)
    b0 = B.get_by_name("ut")
    t0 = h4.threads[0]
    base = t0.poller_counts()
    B.set_qd_sampling_period(b0, 10)
    h4.set_thread(1)
    d1 = open_rw(B.get_by_name("ut"))
    c1 = B.get_io_channel(d1)
    cpl = S.Cpl()
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "x") == 0
    h4.advance_time_us(10)
    h4.poll_threads()
    assert B.get_qd(b0) == 1 and B.get_io_time(b0) == 10
    h4.set_thread(1)
    assert S.complete("ut") == 1
    S.assert_idle(c1)
    B.put_io_channel(c1)
    h4.poll_threads()
    h4.set_thread(1)
    B.close(d1)                                        # the last (and only) close
    h4.poll_threads()
    h4.set_thread(0)
    assert B.get_qd_sampling_period(b0) == 0
    assert t0.poller_counts() == base
    h4.advance_time_us(50)
    h4.poll_threads()
    assert (B.get_qd(b0), B.get_io_time(b0)) == (U64 - 1, 10)
    assert cpl.by_arg() == {"x": (True, "ut_thread1")}


def test_unregister_and_close_before_the_first_poll_on_another_reactor(h4):
    """unregister_and_close on a replica: reactor 1 scheduled the remove notice for the
    desc of its thread 3, which closes the desc before running it."""
    h4.set_thread(3)                                   # reactor 1, not its default thread
    removed = []
    desc = open_rw(B.get_by_name("ut"), remove_cb=removed.append, ctx="ctx")
    h4.set_thread(0)
    done = []
    B.bdev_unregister(B.get_by_name("ut"), lambda arg, rc: done.append((arg, rc)), "u")
    h4.poll_thread(1)              # reactor 1 applies it: the remove notice is sent to thread 3
    h4.set_thread(3)
    assert B.get_by_name("ut").status == bm.STATUS_REMOVING and removed == [] and done == []
    B.close(desc)                  # before thread 3 ran the notice
    h4.poll_threads()
    assert removed == [] and done == [("u", 0)]
    for i in (0, 1):
        h4.set_thread(i)
        assert B.get_by_name("ut") is None and S.disk("ut").destructed
