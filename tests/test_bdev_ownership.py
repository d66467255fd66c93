"""One owner for every bdev-wide fact (docs/architecture.md, Ownership): the scenarios a
replica used to decide on its own -- claims, the reset in progress, the QoS queue after
the last close, a failed split, close after unregister, the split flag -- each driven
deterministically on the reactors it involves and checked on every replica."""
import pytest

import reactor as rx
from reactor.testing import Harness

import bdev as B
import bdev_stub as S
from bdev import module as bm

EPERM = 1
NOT = B.QOS_LIMIT_NOT_DEFINED


@pytest.fixture
def h2():
    """Two reactors: threads 0, 2 on reactor 0 (0 is the main thread), 1, 3 on reactor 1."""
    with Harness(4, n_reactors=2) as h:
        S.init_layer(h)
        yield h
        S.fini_layer(h)


@pytest.fixture
def h1():
    """One reactor, two threads."""
    with Harness(2) as h:
        S.init_layer(h)
        yield h
        S.fini_layer(h)


def _leaf_names():
    out = []
    b = B.first_leaf()
    while b is not None:
        out.append(b.name)
        b = B.next_leaf(b)
    return out


# ------------------------------------------------------------------ 1. claims
claimer = bm.BdevModule("ut_claimer")


@pytest.fixture
def with_claimer():
    bm.register_module(claimer)
    yield claimer
    bm.module_list_remove(claimer)


def test_claim_on_the_main_thread_holds_on_every_replica(h2, with_claimer):
    h = h2
    h.set_thread(0)
    S.create("c1")
    S.create("c2")
    h.poll_threads()
    rc, d0 = B.open(B.get_by_name("c1"), False)
    assert bm.module_claim_bdev(B.get_by_name("c1"), d0, claimer) == 0
    h.poll_threads()
    for i in (1, 3):                          # both threads of reactor 1
        h.set_thread(i)
        assert B.get_by_name("c1").claim_module is claimer
        assert B.open(B.get_by_name("c1"), True) == (-EPERM, None)
        assert _leaf_names() == ["c2"]
        rc, ro = B.open(B.get_by_name("c1"), False)   # read-only opens still work
        assert rc == 0
        B.close(ro)
    # a second claim is refused by the owner, and changes nothing anywhere
    h.set_thread(0)
    assert bm.module_claim_bdev(B.get_by_name("c1"), None, bm.BdevModule("other")) == -EPERM
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("c1").claim_module is claimer
    # the release reaches every replica too
    h.set_thread(0)
    bm.module_release_bdev(B.get_by_name("c1"))
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("c1").claim_module is None
        assert _leaf_names() == ["c1", "c2"]
    h.set_thread(1)
    rc, w = B.open(B.get_by_name("c1"), True)
    assert rc == 0
    B.close(w)
    h.set_thread(0)
    B.close(d0)
    h.poll_threads()


def test_claim_off_the_main_reactor_is_refused_and_changes_nothing(h2, with_claimer):
    h = h2
    h.set_thread(0)
    S.create("c3")
    h.poll_threads()
    h.set_thread(1)
    assert bm.module_claim_bdev(B.get_by_name("c3"), None, claimer) == -EPERM
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("c3").claim_module is None
    # once the owner claimed it, a replica's builder attaches its desc to that claim
    h.set_thread(0)
    assert bm.module_claim_bdev(B.get_by_name("c3"), None, claimer) == 0
    h.poll_threads()
    h.set_thread(1)
    rc, ro = B.open(B.get_by_name("c3"), False)
    assert bm.module_claim_bdev(B.get_by_name("c3"), ro, claimer) == 0 and ro.write
    assert bm.module_claim_bdev(B.get_by_name("c3"), None, bm.BdevModule("x")) == -EPERM
    bm.module_release_bdev(B.get_by_name("c3"))     # a replica's release decides nothing
    h.poll_threads()
    assert B.get_by_name("c3").claim_module is claimer
    B.close(ro)
    h.set_thread(0)
    bm.module_release_bdev(B.get_by_name("c3"))
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("c3").claim_module is None


# ------------------------------------------------------------------ 2. resets
def _resets_at_module(h, name):
    """RESETs the stub holds, per reactor's channel (threads 0 and 1)."""
    out = []
    for i in (0, 1):
        h.set_thread(i)
        out += [(i, io.caller_ctx) for io in S.outstanding(name) if io.type == B.IO_TYPE_RESET]
    return out


def test_resets_from_two_reactors_at_once_reach_the_module_one_at_a_time(h2):
    h = h2
    h.set_thread(0)
    S.create("rr")
    h.poll_threads()
    ctx = S.open_on(h, (0, 1), "rr")
    cpl = S.Cpl()
    for i in (0, 1):                          # both resets issued before anything polls
        h.set_thread(i)
        assert B.reset(*ctx[i], cpl, f"reset{i}") == 0
    h.poll_threads()
    first = _resets_at_module(h, "rr")
    assert len(first) == 1                    # one reset at the module, the other queued
    for i in (0, 1):                          # every channel frozen everywhere
        h.set_thread(i)
        assert ctx[i][1].ctx.flags & 1
    h.set_thread(1)                           # I/O during the reset fails (frozen)
    assert B.read_blocks(*ctx[1], bytearray(512), 0, 1, cpl, "io1") == 0
    h.poll_threads()
    assert cpl.done == [("io1", False)]
    owner, _ = first[0]
    h.set_thread(owner)
    S.complete("rr")
    h.poll_threads()
    second = _resets_at_module(h, "rr")
    assert len(second) == 1 and second[0][0] != owner   # the queued one runs after
    assert [a for a, _ in cpl.done] == ["io1", first[0][1]]
    h.set_thread(second[0][0])
    S.complete("rr")
    h.poll_threads()
    assert sorted(cpl.done) == [("io1", False), ("reset0", True), ("reset1", True)]
    for i in (0, 1):                          # unfrozen everywhere, nothing outstanding
        h.set_thread(i)
        c = ctx[i][1].ctx
        assert c.flags & 1 == 0 and c.io_outstanding == 0
    # the owner forgot both: a later reset runs at once
    h.set_thread(1)
    assert B.reset(*ctx[1], cpl, "later") == 0
    h.poll_threads()
    assert len(_resets_at_module(h, "rr")) == 1
    h.set_thread(1)
    S.complete("rr")
    h.poll_threads()
    assert cpl.done[-1] == ("later", True)
    S.close_on(h, ctx)


def test_a_queued_reset_whose_channel_goes_away_is_failed_and_the_next_one_runs(h2):
    h = h2
    h.set_thread(0)
    S.create("ra")
    h.poll_threads()
    ctx = S.open_on(h, (0, 1, 3), "ra")
    cpl = S.Cpl()
    for i in (0, 1, 3):
        h.set_thread(i)
        assert B.reset(*ctx[i], cpl, f"reset{i}") == 0
    h.poll_threads()
    running = _resets_at_module(h, "ra")
    assert [t for t, _ in running] == [0]      # the main thread's request reached the owner first
    h.set_thread(1)                           # reactor 1's thread 1 drops its channel
    B.put_io_channel(ctx[1][1])
    B.close(ctx[1][0])
    del ctx[1]
    h.poll_threads()
    assert ("reset1", False) in cpl.done
    h.set_thread(0)
    S.complete("ra")
    h.poll_threads()
    h.set_thread(3)
    assert [io.caller_ctx for io in S.outstanding("ra")] == ["reset3"]
    S.complete("ra")
    h.poll_threads()
    assert sorted(cpl.done) == [("reset0", True), ("reset1", False), ("reset3", True)]
    S.close_on(h, ctx)


# ------------------------------------------------------------------ 3. the QoS queue
@pytest.mark.parametrize("n_reactors,threads", [(1, (0, 1)), (2, (0, 2)), (2, (1, 3))])
def test_qos_queue_goes_home_when_the_last_desc_closes(n_reactors, threads):
    with Harness(4, n_reactors=n_reactors) as h:
        S.init_layer(h)
        h.set_thread(0)
        S.create("q3")
        h.poll_threads()
        ctx = S.open_on(h, threads, "q3")
        h.set_thread(0)
        res = []
        B.set_qos_rate_limits(B.get_by_name("q3"), [10000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
        h.poll_threads()
        assert res == [0]
        qos_t, other = threads
        seen = []

        def cb(io, ok, arg):
            seen.append((arg, ok, rx.get_thread().name))
            B.free_io(io)
        h.set_thread(other)                   # 10 per 1 ms timeslice: 5 wait in QoS
        for i in range(15):
            assert B.read_blocks(*ctx[other], bytearray(512), i, 1, cb, i) == 0
        h.poll_threads()
        for i, (d, c) in ctx.items():         # every desc closes; channels stay
            h.set_thread(i)
            B.close(d)
        h.poll_threads()
        h.set_thread(other)
        rc, d = B.open(B.get_by_name("q3"), True)
        assert rc == 0
        assert B.read_blocks(d, ctx[other][1], bytearray(512), 99, 1, cb, 99) == 0
        for _ in range(10):
            for i in threads:
                h.set_thread(i)
                S.complete("q3")
            h.advance_time_us(1000)
            h.poll_threads()
        name = h.threads[other].name
        assert sorted(seen) == sorted((a, True, name) for a in list(range(15)) + [99])
        for i, (_, c) in ctx.items():
            h.set_thread(i)
            assert c.ctx.io_outstanding == 0
            assert c.ctx.shared_resource.io_outstanding == 0
        h.set_thread(other)
        B.close(d)
        for i, (_, c) in ctx.items():
            h.set_thread(i)
            B.put_io_channel(c)
        h.poll_threads()
        S.fini_layer(h)


# ------------------------------------------------------------------ 4. a failed split
def _split_at_16(h, name):
    """A stub of 512-byte blocks split at 16, open read-write on thread 0: (desc, ch)."""
    h.set_thread(0)
    S.create(name, blockcnt=4096, blocklen=512, optimal_io_boundary=16,
             split_on_optimal_io_boundary=True)
    h.poll_threads()
    return S.open_on(h, (0,), name)[0]


def test_failed_split_read_completes_after_the_call_and_counts_nothing(h1):
    h = h1
    d, ch = _split_at_16(h, "sp")
    cpl = S.Cpl()
    # 256 blocks of 512 bytes: no layer buffer is that large, so the read cannot start
    assert B.read_blocks(d, ch, None, 0, 256, cpl, "big") == 0
    assert cpl.done == []                      # not inside the call
    assert ch.ctx.io_outstanding == 0 and ch.ctx.shared_resource.io_outstanding == 0
    h.poll_threads()
    assert cpl.done == [("big", False)]
    assert ch.ctx.io_outstanding == 0 and ch.ctx.shared_resource.io_outstanding == 0
    assert S.disk("sp").log == []              # nothing reached the module
    S.close_on(h, {0: (d, ch)})


def test_failed_split_child_fails_the_parent_after_the_call(h1):
    h = h1
    d, ch = _split_at_16(h, "sp2")
    cpl = S.Cpl()
    # the first child (blocks 8..15) would need more than 32 iovec entries of 100 bytes,
    # and 32 of them are not whole blocks: the child cannot be formed
    iovs = [bytearray(100) for _ in range(40)] + [bytearray(16 * 512 - 4000)]
    assert B.writev_blocks(d, ch, iovs, 8, 16, cpl, "odd") == 0
    assert cpl.done == []
    h.poll_threads()
    assert cpl.done == [("odd", False)]
    assert ch.ctx.io_outstanding == 0 and S.disk("sp2").log == []
    S.close_on(h, {0: (d, ch)})


# ------------------------------------------------------------------ 5. close after unregister
def test_close_after_unregister_of_a_desc_without_remove_cb(h1):
    h = h1
    h.set_thread(0)
    S.create("cu")
    h.poll_threads()
    rc, d = B.open(B.get_by_name("cu"), False)    # no remove_cb: nothing tells it
    done = []
    B.bdev_unregister(B.get_by_name("cu"), lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert done == [0] and S.disk("cu").destructed
    assert B.get_by_name("cu") is None
    B.close(d)                                   # must neither raise nor destruct twice
    h.poll_threads()
    assert done == [0]


def test_close_after_unregister_on_two_reactors(h2):
    h = h2
    h.set_thread(0)
    S.create("cu2")
    h.poll_threads()
    descs = {}
    for i in (0, 1):
        h.set_thread(i)
        rc, descs[i] = B.open(B.get_by_name("cu2"), False)
    h.set_thread(0)
    done = []
    B.bdev_unregister(B.get_by_name("cu2"), lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert done == [0]
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("cu2") is None
        B.close(descs[i])
    h.poll_threads()
    assert done == [0]


# ------------------------------------------------------------------ 6. the split flag
def test_split_flag_set_after_register_is_read_per_io(h1):
    h = h1
    h.set_thread(0)
    b = S.create("sf", blockcnt=4096, blocklen=512, optimal_io_boundary=16)
    h.poll_threads()
    rc, d = B.open(b, True)
    ch = B.get_io_channel(d)
    cpl = S.Cpl()
    disk = S.disk("sf")
    for flag, expect in ((True, [(8, 8), (16, 8)]), (False, [(8, 16)]), (True, [(8, 8), (16, 8)])):
        b.split_on_optimal_io_boundary = flag
        disk.log.clear()
        assert B.write_blocks(d, ch, bytearray(16 * 512), 8, 16, cpl, flag) == 0
        S.complete("sf")
        h.poll_threads()
        S.complete("sf")
        h.poll_threads()
        assert [(o, n) for _, o, n, _ in disk.log] == expect
    b.optimal_io_boundary = 4                    # the boundary too
    disk.log.clear()
    assert B.write_blocks(d, ch, bytearray(8 * 512), 2, 8, cpl, "b4") == 0
    for _ in range(3):
        S.complete("sf")
        h.poll_threads()
    assert [(o, n) for _, o, n, _ in disk.log] == [(2, 2), (4, 4), (8, 2)]
    assert all(ok for _, ok in cpl.done) and len(cpl.done) == 4
    B.put_io_channel(ch)
    B.close(d)
    h.poll_threads()


# ------------------------------------------------------------------ 7. all or nothing
from drivers import delay, malloc, null, passthru  # noqa: E402

BIG = 2 ** 64
HUGE_NAME = "n" * (1 << 20)          # larger than one ring record


def _everywhere(h, fn):
    out = []
    for i in (0, 1):
        h.set_thread(i)
        out.append(fn())
    return out


def _names():
    return sorted(b.name for b in B.bdevs())


def test_create_with_an_argument_another_reactor_cannot_receive_changes_nothing(h2):
    h = h2
    h.set_thread(0)
    before = _everywhere(h, _names)
    out = []
    malloc.create("mbig", 8, 512, optimal_io_boundary=BIG, cb=lambda rc, n: out.append(rc))
    null.create(HUGE_NAME, 8, 512, cb=lambda rc, n: out.append(rc))
    null.create("nbig", BIG, 512, cb=lambda rc, n: out.append(rc))
    h.poll_threads()
    assert out == [-22, -22, -22]
    assert _everywhere(h, _names) == before
    h.set_thread(1)          # requested on another reactor: refused before the hop to main
    malloc.create("mbig1", 8, 512, optimal_io_boundary=BIG, cb=lambda rc, n: out.append(rc))
    null.create(HUGE_NAME, 8, 512, cb=lambda rc, n: out.append(rc))
    h.poll_threads()
    assert out == [-22] * 5
    assert _everywhere(h, _names) == before


def test_vbdev_create_with_an_argument_another_reactor_cannot_receive_leaves_the_base_unclaimed(h2):
    h = h2
    h.set_thread(0)
    S.create("db")
    h.poll_threads()
    out = []
    delay.create("dbig", "db", BIG, BIG, 1, 2, out.append)
    h.poll_threads()
    assert out == [-22]
    assert _everywhere(h, _names) == [["db"], ["db"]]
    assert _everywhere(h, lambda: B.get_by_name("db").claim_module) == [None, None]
    h.set_thread(1)
    rc, w = B.open(B.get_by_name("db"), True)        # still writable everywhere
    assert rc == 0
    B.close(w)


def test_a_replica_that_cannot_build_the_bdev_undoes_the_create_everywhere(h2):
    h = h2
    h.set_thread(0)
    # a base only the main reactor has: the replica's passthru builder finds none
    assert bm.bdev_register(S._build("local0", 1024, 512)) == 0
    out = []
    passthru.create("pt", "local0", out.append)
    h.poll_threads()
    assert out == [-19]
    assert _everywhere(h, lambda: B.get_by_name("pt")) == [None, None]
    h.set_thread(0)
    assert B.get_by_name("local0").claim_module is None
    rc, w = B.open(B.get_by_name("local0"), True)
    assert rc == 0
    B.close(w)
    done = []
    B.bdev_unregister(B.get_by_name("local0"), lambda a, rc: done.append(rc))
    h.poll_threads()
    assert done == [0]


def test_qos_limit_another_reactor_cannot_receive_changes_nothing(h2):
    h = h2
    h.set_thread(0)
    S.create("ql")
    h.poll_threads()
    res = []
    B.set_qos_rate_limits(B.get_by_name("ql"), [20000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    for limits in ([BIG, NOT, NOT, NOT], [NOT, BIG, NOT, NOT], [NOT, NOT, 2 ** 63, NOT],
                   [NOT, NOT, NOT, BIG]):
        B.set_qos_rate_limits(B.get_by_name("ql"), limits, lambda a, rc: res.append(rc))
        h.poll_threads()
    assert res == [0, -22, -22, -22, -22]
    assert _everywhere(h, lambda: B.get_qos_rate_limits(B.get_by_name("ql"))) == \
        [[20000, 0, 0, 0], [20000, 0, 0, 0]]
    # and the bdev still takes a new limit afterwards (no change left "in progress")
    h.set_thread(0)
    B.set_qos_rate_limits(B.get_by_name("ql"), [0, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res[-1] == 0


def test_alias_another_reactor_cannot_receive_changes_nothing(h2):
    h = h2
    h.set_thread(0)
    S.create("al")
    h.poll_threads()
    assert B.alias_add(B.get_by_name("al"), HUGE_NAME) == -22
    h.poll_threads()
    assert _everywhere(h, lambda: B.get_aliases(B.get_by_name("al"))) == [[], []]
    assert _everywhere(h, lambda: B.get_by_name(HUGE_NAME)) == [None, None]
