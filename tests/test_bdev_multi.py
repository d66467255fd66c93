"""Deterministic tests with two reactors in one process: every cross-reactor message is
encoded exactly as in process mode.  Replication of creates and deletes, reset freezing
channels on both reactors, QoS funnelling with shared-memory buffers, hot-remove reaching
descs on both reactors, device stats summing both; and the malloc/null drivers."""
import pytest

import reactor as rx
from reactor.testing import Harness

import bdev as B
from bdev import module as bm
import bdev_stub as S
from drivers import malloc, null

NOT = B.QOS_LIMIT_NOT_DEFINED


@pytest.fixture
def h():
    # threads 0, 2 on reactor 0; threads 1, 3 on reactor 1
    with Harness(4, n_reactors=2) as h:
        S.init_layer(h)
        yield h
        h.set_thread(0)
        h.poll_threads()
        S.fini_layer(h)


def on(h, i):
    h.set_thread(i)
    return rx.current_reactor()


def test_layer_replicated_on_both_reactors(h):
    for i in (0, 1):
        assert on(h, i).locals.get("bdev") is not None


def test_malloc_create_replicated_and_shared_data(h):
    h.set_thread(0)
    out = []
    malloc.create("m0", 128, 512, cb=lambda rc, name: out.append((rc, name)))
    assert out == []
    h.poll_threads()
    assert out == [(0, "m0")]
    for i in (0, 1):
        h.set_thread(i)
        b = B.get_by_name("m0")
        assert b is not None and b.blockcnt == 128
    # write through reactor 1, read back through reactor 0: one segment
    h.set_thread(1)
    rc, d1 = B.open(B.get_by_name("m0"), True)
    c1 = B.get_io_channel(d1)
    cpl = S.Cpl()
    data = bytearray(b"x" * 512 + b"y" * 512)
    assert B.write_blocks(d1, c1, data, 10, 2, cpl, "w") == 0
    h.poll_threads()
    h.set_thread(0)
    rc, d0 = B.open(B.get_by_name("m0"), False)
    c0 = B.get_io_channel(d0)
    back = bytearray(1024)
    assert B.read_blocks(d0, c0, back, 10, 2, cpl, "r") == 0
    h.poll_threads()
    assert cpl.done == [("w", True), ("r", True)] and back == data
    # read without a buffer: the layer's pool provides one
    got = []
    B.read_blocks(d0, c0, None, 10, 1, lambda io, ok, a: (got.append(bytes(io.iovs[0])), B.free_io(io)))
    h.poll_threads()
    assert got == [b"x" * 512]
    # duplicate name
    malloc.create("m0", 8, 512, cb=lambda rc, name: out.append(rc))
    malloc.create("bad", 8, 100, cb=lambda rc, name: out.append(rc))
    h.poll_threads()
    assert out[-2:] == [-17, -22]
    for i, c, d in ((0, c0, d0), (1, c1, d1)):
        h.set_thread(i)
        B.put_io_channel(c)
        B.close(d)
    h.set_thread(0)
    deleted = []
    malloc.delete("m0", deleted.append)
    malloc.delete("m0", deleted.append)
    h.poll_threads()
    assert sorted(deleted) == [-19, 0]
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("m0") is None


def test_hot_remove_reaches_descs_on_both_reactors(h):
    h.set_thread(0)
    S.create("hr")
    h.poll_threads()
    seen = []
    descs = {}
    for i in (0, 1, 3):
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("hr"), False,
                       lambda ctx: seen.append((ctx, rx.get_thread().name)), i)
        assert rc == 0
        descs[i] = d
    h.set_thread(0)
    done = []
    B.bdev_unregister(B.get_by_name("hr"), lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert sorted(seen) == [(0, "ut_thread0"), (1, "ut_thread1"), (3, "ut_thread3")]
    for i in (0, 1):
        h.set_thread(i)
        B.close(descs[i])
    h.poll_threads()
    assert done == []                         # thread 3 still has it open
    h.set_thread(3)
    B.close(descs[3])
    h.poll_threads()
    assert done == [0]
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("hr") is None and S.disk("hr").destructed


def test_reset_freezes_channels_on_both_reactors(h):
    h.set_thread(0)
    S.create("r")
    h.poll_threads()
    ctx = {}
    for i in (0, 1):
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("r"), True)
        ctx[i] = (d, B.get_io_channel(d))
    cpl = S.Cpl()
    h.set_thread(1)
    d1, c1 = ctx[1]
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, "held") == 0
    h.set_thread(0)
    d0, c0 = ctx[0]
    assert B.reset(d0, c0, cpl, "reset") == 0
    h.poll_threads()
    assert c1.ctx.flags & 1                       # frozen on reactor 1 too
    h.set_thread(1)
    assert B.write_blocks(d1, c1, bytearray(512), 0, 1, cpl, "during") == 0
    h.poll_threads()
    assert ("during", False) in cpl.done
    S.complete("r")                               # the held I/O finishes normally
    h.set_thread(0)
    S.complete("r")                               # the reset
    h.poll_threads()
    assert ("reset", True) in cpl.done and not (c1.ctx.flags & 1)
    # a reset from reactor 1 while one from reactor 0 is in progress waits for it
    assert B.reset(d0, c0, cpl, "r0") == 0
    h.poll_threads()
    h.set_thread(1)
    assert B.reset(d1, c1, cpl, "r1") == 0
    h.poll_threads()
    assert [io.type for io in S.outstanding("r")] == []          # r1 queued
    h.set_thread(0)
    S.complete("r")
    h.poll_threads()
    h.set_thread(1)
    assert [io.type for io in S.outstanding("r")] == [B.IO_TYPE_RESET]
    S.complete("r")
    h.poll_threads()
    assert cpl.args()[-2:] == ["r0", "r1"]
    for i in (0, 1):
        h.set_thread(i)
        B.put_io_channel(ctx[i][1])
        B.close(ctx[i][0])


def test_qos_funnels_across_reactors_with_shared_buffers(h):
    h.set_thread(0)
    out = []
    malloc.create("q", 256, 512, cb=lambda rc, n: out.append(rc))
    h.poll_threads()
    ctx = {}
    for i in (0, 1):
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("q"), True)
        ctx[i] = (d, B.get_io_channel(d))
    h.set_thread(0)
    res = []
    B.set_qos_rate_limits(B.get_by_name("q"), [10000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res == [0]
    h.set_thread(1)
    b1 = B.get_by_name("q")
    assert b1.qos is not None and b1.qos.thread_id == h.threads[0].id   # replicated choice
    assert B.get_qos_rate_limits(b1)[0] == 10000
    d1, c1 = ctx[1]
    cpl = S.Cpl()
    for i in range(15):
        data = bytearray(bytes([i]) * 512)
        assert B.write_blocks(d1, c1, data, i, 1, cpl, i) == 0
    h.poll_threads()
    assert len(cpl.done) == 10                     # one timeslice worth
    h.set_thread(0)
    assert len(B.get_by_name("q").qos.queued) == 5  # proxies wait on the QoS thread
    h.advance_time_us(1000)
    h.poll_threads()
    assert sorted(cpl.args()) == list(range(15))
    # read back through the QoS path into a private buffer (bounced)
    h.set_thread(1)
    back = bytearray(15 * 512)
    assert B.read_blocks(d1, c1, back, 0, 15, cpl, "r") == 0
    h.advance_time_us(1000)
    h.poll_threads()
    assert cpl.done[-1] == ("r", True)
    assert back == b"".join(bytes([i]) * 512 for i in range(15))
    st = B.get_io_stat(b1, c1)
    assert st.num_write_ops == 15 and st.num_read_ops == 1
    assert on(h, 1).locals["bdev"].buf_pool.in_use == 0
    # disable while I/O waits: the proxies come back to reactor 1 and go straight through
    h.set_thread(1)
    for i in range(20):
        B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, f"d{i}")
    h.advance_time_us(1000)
    h.poll_threads()
    h.set_thread(0)
    B.set_qos_rate_limits(B.get_by_name("q"), [0, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res[-1] == 0
    assert sum(1 for a in cpl.args() if str(a).startswith("d")) == 20
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("q").qos is None
        B.put_io_channel(ctx[i][1])
        B.close(ctx[i][0])


def test_qos_thread_chosen_by_main_when_first_channel_is_remote(h):
    h.set_thread(0)
    S.create("qq")
    h.poll_threads()
    res = []
    B.set_qos_rate_limits(B.get_by_name("qq"), [10000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res == [0]
    h.set_thread(3)
    rc, d = B.open(B.get_by_name("qq"), True)
    c = B.get_io_channel(d)
    cpl = S.Cpl()
    assert B.read_blocks(d, c, bytearray(512), 0, 1, cpl, "x") == 0   # waits for the choice
    h.poll_threads()
    h.set_thread(0)
    assert B.get_by_name("qq").qos.thread_id == h.threads[3].id
    h.set_thread(3)
    assert len(S.outstanding("qq")) == 1
    S.complete("qq")
    h.poll_threads()
    assert cpl.done == [("x", True)]
    B.put_io_channel(c)
    B.close(d)


def test_device_stat_sums_both_reactors(h):
    h.set_thread(0)
    null.create("n0", 1024, 512, cb=lambda rc, n: None)
    h.poll_threads()
    cpl = S.Cpl()
    ctx = {}
    for i in (0, 1, 3):
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("n0"), True)
        c = B.get_io_channel(d)
        ctx[i] = (d, c)
        for k in range(i + 1):
            assert B.read_blocks(d, c, None, k, 1, cpl) == 0
        assert B.write_blocks(d, c, bytearray(1024), 0, 2, cpl) == 0
    h.poll_threads()
    assert len(cpl.done) == 1 + 2 + 4 + 3
    # close reactor 1's thread-3 channel: its history must stay in the device stats
    h.set_thread(3)
    B.put_io_channel(ctx[3][1])
    B.close(ctx[3][0])
    h.poll_threads()
    h.set_thread(0)
    out = []
    B.get_device_stat(B.get_by_name("n0"), lambda b, s, a, rc: out.append(s))
    h.poll_threads()
    s = out[0]
    assert s.num_read_ops == 7 and s.bytes_read == 7 * 512
    assert s.num_write_ops == 3 and s.bytes_written == 3 * 1024
    chans = []
    B.get_channels_stat(B.get_by_name("n0"), lambda b, lst, a, rc: chans.append(lst))
    h.poll_threads()
    assert sorted(e["num_read_ops"] for e in chans[0]) == [1, 2]
    B.set_qd_sampling_period(B.get_by_name("n0"), 10)
    h.advance_time_us(10)
    h.poll_threads()
    assert B.get_qd(B.get_by_name("n0")) == 0
    for i in (0, 1):
        h.set_thread(i)
        B.put_io_channel(ctx[i][1])
        B.close(ctx[i][0])


def test_finish_unregisters_everything_everywhere(h):
    h.set_thread(0)
    for n in ("a", "b"):
        malloc.create(n, 16, 512)
        null.create("n" + n, 16, 512)
    h.poll_threads()
    h.set_thread(1)
    assert [b.name for b in B.bdevs()] == ["a", "na", "b", "nb"]
    # the fixture's finish must unregister all of them on both reactors and unlink segments


# ------------------------------------------------------------------ arena ids, pool split
@pytest.fixture
def restore_opts():
    from bdev import _manager
    saved = dict(_manager._default_opts)
    yield
    _manager._default_opts.update(saved)


def test_arena_id_cannot_collide_with_other_arenas():
    """The bdev arena id is allocated, not fixed: an arena another user attached under the
    old fixed id (0xBD) stays untouched, and two initialisations get different ids."""
    from ipc import arena as A
    from ipc.shm import Instance
    inst = Instance()
    other = A.Arena.create(inst, 0xBD, 1, 1, 1)
    try:
        ids = []
        for _ in range(2):
            with Harness(2, n_reactors=2) as h2:
                S.init_layer(h2)
                for i in (0, 1):
                    m = on(h2, i).locals["bdev"]
                    assert m.arena.arena_id >> 48 == 0xBD and m.arena.arena_id != 0xBD
                ids.append(on(h2, 0).locals["bdev"].arena.arena_id)
                S.fini_layer(h2)
        assert ids[0] != ids[1]
        assert A.attached_arena(0xBD) is other           # never released behind its back
        h = other.pool(0).get(512)
        assert h is not None
        other.pool(0).put(h)
    finally:
        other.close()
        inst.close()


def test_buffer_pools_are_global_counts_split_over_reactors(restore_opts):
    assert B.get_opts()["small_buf_pool_size"] == 8192          # the seed's global pools
    assert B.get_opts()["large_buf_pool_size"] == 1024
    with Harness(2, n_reactors=2) as h2:
        before = B.get_opts()
        assert B.set_opts({"small_buf_pool_size": 1}) == -22     # fewer than the reactors
        assert B.set_opts({"large_buf_pool_size": 1}) == -22
        assert B.get_opts() == before
        assert B.set_opts({"small_buf_pool_size": 5, "large_buf_pool_size": 3}) == 0
        S.init_layer(h2)
        shares = [(on(h2, i).locals["bdev"].small_count, on(h2, i).locals["bdev"].large_count)
                  for i in (0, 1)]
        assert shares == [(3, 2), (2, 1)]                        # sums are the options
        # reactor 1 really hands out only its share
        h2.set_thread(1)
        m1 = rx.current_reactor().locals["bdev"]
        assert m1.small_avail == 2 and m1.large_avail == 1
        from bdev import iobuf
        cfg = iobuf.config_json()        # SPDK keeps the pools in its iobuf subsystem
        assert cfg[0]["method"] == "iobuf_set_options"
        assert (cfg[0]["params"]["small_pool_count"], cfg[0]["params"]["large_pool_count"]) == (5, 3)
        assert "small_buf_pool_size" not in B.subsystem_config_json()[0]["params"]
        S.fini_layer(h2)


# ------------------------------------------------------------------ passthru and status under QoS
def _qos_on_thread0(h, name, limits, blockcnt=1024):
    """Stub ``name`` with a channel on thread 0 (so the QoS thread is thread 0) and one on
    thread 1 (reactor 1); QoS ``limits`` set.  Returns {thread: (desc, ch)}."""
    h.set_thread(0)
    S.create(name, blockcnt=blockcnt)
    h.poll_threads()
    ctx = S.open_on(h, (0, 1), name)
    h.set_thread(0)
    res = []
    B.set_qos_rate_limits(B.get_by_name(name), limits, lambda a, rc: res.append(rc))
    h.poll_threads()
    assert res == [0]
    return ctx


_close_all = S.close_on


def test_nvme_io_passthru_from_another_reactor_counts_against_qos(h):
    ctx = _qos_on_thread0(h, "np", [10000, NOT, NOT, NOT])      # 10 I/O per 1 ms timeslice
    d1, c1 = ctx[1]
    h.set_thread(1)
    cmds = [object() for _ in range(15)]
    got = []

    def cb(io, ok, arg):
        got.append((arg, ok, io.get_nvme_status()))
        B.free_io(io)
    for i, cmd in enumerate(cmds):
        assert B.nvme_io_passthru(d1, c1, cmd, None, 4096, cb, i) == 0
    h.poll_threads()
    h.set_thread(1)
    q = S.outstanding("np")
    assert len(q) == 10                                # the quota held the other 5
    assert [io.nvme_cmd for io in q] == cmds[:10]      # the commands never left reactor 1
    h.set_thread(0)
    assert len(S.outstanding("np")) == 0
    h.advance_time_us(1000)
    h.poll_threads()
    h.set_thread(1)
    assert len(S.outstanding("np")) == 15
    S.outstanding("np").popleft().complete_nvme_status(0, 0x06)
    S.complete("np")
    h.poll_threads()
    assert sorted(a for a, _, _ in got) == list(range(15))
    assert got[0] == (0, False, (0, 0x06)) and all(ok for _, ok, _ in got[1:])
    _close_all(h, ctx)


def test_scsi_and_nvme_status_travel_back_on_forwarded_io(h):
    ctx = _qos_on_thread0(h, "st", [10000, NOT, NOT, NOT])
    d1, c1 = ctx[1]
    h.set_thread(1)
    got = {}

    def cb(io, ok, arg):
        got[arg] = (ok, io.get_scsi_status(), io.get_nvme_status())
        B.free_io(io)
    for k in ("scsi", "nvme"):
        assert B.write_blocks(d1, c1, bytearray(512), 0, 1, cb, k) == 0
    h.poll_threads()
    h.set_thread(0)                                    # the proxies sit on the QoS thread
    q = S.outstanding("st")
    assert len(q) == 2
    q.popleft().complete_scsi_status(0x02, 0x03, 0x11, 0x00)
    q.popleft().complete_nvme_status(2, 0x81)
    h.poll_threads()
    assert got["scsi"] == (False, (0x02, 0x03, 0x11, 0x00), (0, 0x06))
    assert got["nvme"] == (False, (0x02, 0x03, 0x11, 0x00), (2, 0x81))   # translated
    _close_all(h, ctx)


# ------------------------------------------------------------------ QoS teardown on the last close
def test_last_close_over_all_reactors_destroys_qos_and_next_io_recreates_it(h):
    ctx = _qos_on_thread0(h, "qt", [10000, NOT, NOT, NOT])
    tid0 = h.threads[0].id
    old = on(h, 0).locals["bdev"].names["qt"].qos
    # reactor 0 closes: reactor 1 still has a desc, QoS stays where it is
    h.set_thread(0)
    B.put_io_channel(ctx[0][1])
    B.close(ctx[0][0])
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("qt").qos.thread_id == tid0
    # reactor 1 closes the last desc of the bdev: QoS is torn down everywhere
    h.set_thread(1)
    B.put_io_channel(ctx[1][1])
    B.close(ctx[1][0])
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        b = B.get_by_name("qt")
        assert b.qos is not old and b.qos.thread_id is None and b.qos.ch is None
        assert B.get_qos_rate_limits(b) == [10000, 0, 0, 0]        # limits kept
    assert old.poller is None and old.io_ch is None                 # poller and channel gone
    # the next channel (on reactor 1, thread 3) re-creates it there, quota and all
    h.set_thread(3)
    rc, d = B.open(B.get_by_name("qt"), True)
    c = B.get_io_channel(d)
    cpl = S.Cpl()
    for i in range(15):
        assert B.read_blocks(d, c, bytearray(512), i, 1, cpl, i) == 0
    h.poll_threads()
    h.set_thread(0)
    assert B.get_by_name("qt").qos.thread_id == h.threads[3].id
    h.set_thread(3)
    assert len(S.outstanding("qt")) == 10
    h.advance_time_us(1000)
    h.poll_threads()
    h.set_thread(3)
    assert len(S.outstanding("qt")) == 15
    S.complete("qt")
    h.poll_threads()
    assert sorted(cpl.args()) == list(range(15))
    B.put_io_channel(c)
    B.close(d)
    h.poll_threads()


def test_io_of_an_open_channel_waits_for_the_new_qos_thread(h):
    """A channel that outlives the last close keeps QoS on (as in the seed); its next I/O
    asks for a QoS thread instead of bypassing the limit."""
    ctx = _qos_on_thread0(h, "qw", [10000, NOT, NOT, NOT])
    d1, c1 = ctx[1]
    h.set_thread(1)
    B.close(d1)                      # reactor 1 closes its desc but keeps the channel
    h.set_thread(0)
    B.close(ctx[0][0])
    h.poll_threads()
    h.set_thread(1)
    assert B.get_by_name("qw").qos.thread_id is None
    cpl = S.Cpl()
    for i in range(12):
        assert B.read_blocks(d1, c1, bytearray(512), i, 1, cpl, i) == 0
    h.poll_threads()
    h.set_thread(1)
    assert B.get_by_name("qw").qos.thread is h.threads[1]
    assert len(S.outstanding("qw")) == 10
    h.advance_time_us(1000)
    h.poll_threads()
    h.set_thread(1)
    S.complete("qw")
    h.poll_threads()
    assert sorted(cpl.args()) == list(range(12))
    for i in (0, 1):
        h.set_thread(i)
        B.put_io_channel(ctx[i][1])
    h.poll_threads()


# ------------------------------------------------------------------ registry changes hop to main
def test_registry_changes_from_another_reactor_hop_to_the_main_thread(h):
    # a create requested on reactor 1 is made by the main thread, answered on reactor 1
    h.set_thread(3)
    out = []
    null.create("hop", 64, 512, cb=lambda rc, name: out.append((rc, name, rx.get_thread().name)))
    assert B.get_by_name("hop") is None              # nothing applied before the main thread
    h.poll_threads()
    assert out == [(0, "hop", "ut_thread3")]
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("hop") is not None
    # an alias requested on reactor 1 races a create of the same name on the main thread:
    # the main thread orders them, so both replicas agree (the create wins)
    h.set_thread(1)
    assert B.alias_add(B.get_by_name("hop"), "dup") == 0
    assert B.get_by_name("dup") is None              # not applied locally first
    h.set_thread(0)
    null.create("dup", 64, 512, cb=lambda rc, name: out.append((rc, name)))
    h.poll_threads()
    assert out[-1] == (0, "dup")
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("dup").name == "dup"    # a bdev, not an alias, everywhere
        assert B.get_aliases(B.get_by_name("hop")) == []
    # an alias from reactor 1 that does not clash reaches every replica
    h.set_thread(1)
    assert B.alias_add(B.get_by_name("hop"), "hop-alias") == 0
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("hop-alias") is B.get_by_name("hop")
    h.set_thread(1)
    assert B.alias_del(B.get_by_name("hop"), "hop-alias") == 0
    h.poll_threads()
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("hop-alias") is None
    # an unregister requested on reactor 1 (thread 3) is made by the main thread
    h.set_thread(3)
    done = []
    B.bdev_unregister(B.get_by_name("hop"), lambda arg, rc: done.append((arg, rc, rx.get_thread().name)), "a")
    assert B.get_by_name("hop").status == bm.STATUS_READY    # not applied locally first
    h.poll_threads()
    assert done == [("a", 0, "ut_thread3")]
    for i in (0, 1):
        h.set_thread(i)
        assert B.get_by_name("hop") is None


# ------------------------------------------------------------------ untested paths
def test_bounce_buffer_exhaustion_queues_forwarded_io(h, restore_opts):
    S.fini_layer(h)
    assert B.set_opts({"small_buf_pool_size": 2, "large_buf_pool_size": 2}) == 0   # 1 + 1 each
    S.init_layer(h)
    ctx = _qos_on_thread0(h, "bb", [10000, NOT, NOT, NOT])
    d1, c1 = ctx[1]
    h.set_thread(1)
    m1 = rx.current_reactor().locals["bdev"]
    mgmt1 = c1.ctx.mgmt
    cpl = S.Cpl()
    for i in range(3):               # private buffers: each needs reactor 1's one small bounce
        assert B.write_blocks(d1, c1, bytearray(bytes([i + 1]) * 512), i, 1, cpl, i) == 0
    h.poll_threads()
    assert len(mgmt1.fwd_wait) == 2 and m1.small_avail == 0
    for i in range(3):
        h.set_thread(0)
        q = S.outstanding("bb")
        assert len(q) == 1 and bytes(q[0].iovs[0]) == bytes([i + 1]) * 512   # copied in order
        S.complete("bb")
        h.poll_threads()
    assert cpl.args() == [0, 1, 2] and all(cpl.statuses())
    h.set_thread(1)
    assert not mgmt1.fwd_wait and m1.small_avail == 1 and m1.buf_pool.in_use == 0
    _close_all(h, ctx)


def test_write_zeroes_emulation_through_cross_reactor_qos(h):
    ctx = _qos_on_thread0(h, "wz", [10000, NOT, NOT, NOT], blockcnt=8192)
    h.set_thread(0)
    S.disk("wz").supported.discard(B.IO_TYPE_WRITE_ZEROES)
    h.set_thread(1)
    S.disk("wz").supported.discard(B.IO_TYPE_WRITE_ZEROES)
    d1, c1 = ctx[1]
    cpl = S.Cpl()
    assert B.write_zeroes_blocks(d1, c1, 100, 3000, cpl, "wz") == 0   # > the 1 MiB zero buffer
    seen = []
    for _ in range(2):
        h.poll_threads()
        h.set_thread(0)                      # each child write is funnelled to thread 0
        q = S.outstanding("wz")
        assert len(q) == 1
        io = q[0]
        seen.append((io.type, io.offset_blocks, io.num_blocks))
        assert not any(bytes(io.iovs[0])) if len(io.iovs) == 1 else all(not any(bytes(v)) for v in io.iovs)
        S.complete("wz")
        h.set_thread(1)
    h.poll_threads()
    assert seen == [(B.IO_TYPE_WRITE, 100, 2048), (B.IO_TYPE_WRITE, 2148, 952)]
    assert cpl.done == [("wz", True)]
    assert rx.current_reactor().locals["bdev"].buf_pool.in_use == 0
    _close_all(h, ctx)


def test_histograms_iostat_reset_and_per_channel_stats_across_reactors(h):
    h.set_thread(0)
    null.create("hs", 1024, 512)
    h.poll_threads()
    b0 = B.get_by_name("hs")
    out = []
    B.histogram_enable(b0, lambda a, rc: out.append(rc))
    h.poll_threads()
    assert out == [0]
    ctx = {}
    cpl = S.Cpl()
    for i in (0, 1, 3):                      # thread 0 on reactor 0; 1 and 3 on reactor 1
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("hs"), True)
        c = B.get_io_channel(d)
        ctx[i] = (d, c)
        for k in range(i + 1):
            assert B.read_blocks(d, c, None, k, 1, cpl) == 0
        assert B.write_blocks(d, c, bytearray(512), 0, 1, cpl) == 0
        h.advance_time_us(3)                 # a latency for the histogram
    h.poll_threads()
    assert len(cpl.done) == 1 + 2 + 4 + 3
    h.set_thread(0)
    hist, chans, dev = [], [], []
    B.histogram_get(b0, lambda a, rc, buckets: hist.append((rc, buckets)))
    B.get_channels_stat(b0, lambda b, lst, a, rc: chans.append(lst))
    B.get_device_stat(b0, lambda b, s, a, rc: dev.append(s))
    h.poll_threads()
    assert hist[0][0] == 0 and sum(hist[0][1]) == 10         # every read and write, both reactors
    per = {e["thread"]: (e["num_read_ops"], e["num_write_ops"]) for e in chans[0]}
    assert per == {"ut_thread0": (1, 1), "ut_thread1": (2, 1), "ut_thread3": (4, 1)}
    assert dev[0].num_read_ops == 7 and dev[0].num_write_ops == 3
    # reset from the main thread zeroes every channel and replica (and the histograms)
    B.reset_device_stat(b0, lambda b, a, rc: out.append(("reset", rc)))
    h.poll_threads()
    assert out[-1] == ("reset", 0)
    B.get_channels_stat(b0, lambda b, lst, a, rc: chans.append(lst))
    B.get_device_stat(b0, lambda b, s, a, rc: dev.append(s))
    B.histogram_get(b0, lambda a, rc, buckets: hist.append((rc, buckets)))
    h.poll_threads()
    assert all(e["num_read_ops"] == 0 and e["num_write_ops"] == 0 for e in chans[1]) and len(chans[1]) == 3
    assert dev[1].num_read_ops == 0 and dev[1].bytes_written == 0
    assert sum(hist[1][1]) == 0
    # counting resumes on reactor 1 after the reset; disabling stops the histograms
    h.set_thread(3)
    assert B.read_blocks(ctx[3][0], ctx[3][1], None, 0, 1, cpl) == 0
    h.poll_threads()
    h.set_thread(0)
    B.histogram_get(b0, lambda a, rc, buckets: hist.append((rc, buckets)))
    h.poll_threads()
    assert sum(hist[2][1]) == 1
    B.histogram_enable(b0, lambda a, rc: out.append(rc), enable=False)
    h.poll_threads()
    B.histogram_get(b0, lambda a, rc, buckets: hist.append((rc, buckets)))
    h.poll_threads()
    assert hist[3] == (-14, None)
    # bdev_get_iostat's reset_mode "all" reads and zeroes in one walk, live channels too;
    # "maxmin" and "error" find nothing to reset (no min/max latencies, no error counters)
    got = []
    h.set_thread(1)
    assert B.read_blocks(ctx[1][0], ctx[1][1], None, 0, 1, cpl) == 0
    h.poll_threads()
    h.set_thread(0)
    for mode in ("maxmin", "error", "none"):
        B.reset_device_stat(b0, lambda b, a, rc: got.append(rc), mode=mode)
        h.poll_threads()
    B.get_device_stat(b0, lambda b, s, a, rc: got.append(s.num_read_ops), reset_mode="all")
    h.poll_threads()
    B.get_device_stat(b0, lambda b, s, a, rc: got.append(s.num_read_ops))
    h.poll_threads()
    assert got == [0, 0, 0, 2, 0]
    for i, (d, c) in ctx.items():
        h.set_thread(i)
        B.put_io_channel(c)
        B.close(d)
    h.poll_threads()


def test_malloc_and_null_config_json_has_spdk_shapes_and_replays(h):
    h.set_thread(0)
    malloc.create("cm", 64, 4096, uuid="6f2f3f5e-1d1b-4c3c-9a1a-0a0b0c0d0e0f")
    null.create("cn", 2048, 512, uuid="11111111-2222-3333-4444-555555555555")
    h.poll_threads()
    cfg = B.subsystem_config_json()
    ent = {e["method"]: e["params"] for e in cfg if e["method"] in ("bdev_malloc_create", "bdev_null_create")}
    assert ent["bdev_malloc_create"] == {"name": "cm", "num_blocks": 64, "block_size": 4096,
                                         "physical_block_size": 4096,
                                         "uuid": "6f2f3f5e-1d1b-4c3c-9a1a-0a0b0c0d0e0f",
                                         "optimal_io_boundary": 0, "numa_id": -1}
    assert ent["bdev_null_create"] == {"name": "cn", "num_blocks": 2048, "block_size": 512,
                                       "physical_block_size": 512,
                                       "uuid": "11111111-2222-3333-4444-555555555555",
                                       "preferred_write_granularity": 0,
                                       "preferred_write_alignment": 0, "optimal_write_size": 0,
                                       "preferred_unmap_granularity": 0,
                                       "preferred_unmap_alignment": 0}
    assert [e["method"] for e in cfg][0] == "bdev_set_options"
    # the entries recreate the same bdevs (what load_config does with them)
    out = []
    malloc.delete("cm", out.append)
    null.delete("cn", out.append)
    h.poll_threads()
    assert out == [0, 0]
    malloc.create(cb=lambda rc, n: out.append(rc), **ent["bdev_malloc_create"])
    null.create(cb=lambda rc, n: out.append(rc), **ent["bdev_null_create"])
    h.poll_threads()
    assert out[2:] == [0, 0]
    h.set_thread(1)
    assert B.get_uuid(B.get_by_name("cm")) == "6f2f3f5e-1d1b-4c3c-9a1a-0a0b0c0d0e0f"
    assert B.get_block_size(B.get_by_name("cm")) == 4096 and B.get_num_blocks(B.get_by_name("cn")) == 2048


def test_histogram_keeps_closed_channels_counts_across_reactors(h):
    """A channel's histogram is folded into its replica when the channel goes away (as its
    iostat is), so histogram_get sums closed and live channels on every reactor."""
    h.set_thread(0)
    null.create("hc", 1024, 512)
    h.poll_threads()
    out = []
    B.histogram_enable(B.get_by_name("hc"), lambda a, rc: out.append(rc))
    h.poll_threads()
    assert out == [0]
    cpl = S.Cpl()
    ctx = {}
    for i, n in ((0, 2), (1, 3), (3, 1)):      # reactor 0: thread 0; reactor 1: threads 1, 3
        h.set_thread(i)
        rc, d = B.open(B.get_by_name("hc"), True)
        c = B.get_io_channel(d)
        ctx[i] = (d, c)
        for k in range(n):
            assert B.read_blocks(d, c, bytearray(512), k, 1, cpl) == 0
        h.advance_time_us(3)
    h.poll_threads()
    assert len(cpl.done) == 6

    def total():
        got = []
        h.set_thread(0)
        B.histogram_get(B.get_by_name("hc"), lambda a, rc, bk: got.append((rc, bk)))
        h.poll_threads()
        assert got[0][0] == 0
        return sum(got[0][1])

    assert total() == 6
    # close the channels of thread 1 (reactor 1) and thread 0 (reactor 0): still counted
    for i in (1, 0):
        h.set_thread(i)
        B.put_io_channel(ctx[i][1])
        h.poll_threads()
    assert total() == 6
    # a new channel on reactor 0 adds to the history
    h.set_thread(0)
    c0 = B.get_io_channel(ctx[0][0])
    assert B.read_blocks(ctx[0][0], c0, bytearray(512), 0, 1, cpl) == 0
    h.poll_threads()
    assert total() == 7
    # a stats reset zeroes the history too; disable/enable starts from zero
    B.reset_device_stat(B.get_by_name("hc"), lambda b, a, rc: out.append(rc))
    h.poll_threads()
    assert total() == 0
    h.set_thread(3)
    assert B.read_blocks(ctx[3][0], ctx[3][1], bytearray(512), 0, 1, cpl) == 0
    h.poll_threads()
    h.set_thread(3)
    B.put_io_channel(ctx[3][1])
    h.poll_threads()
    assert total() == 1
    h.set_thread(0)
    B.histogram_enable(B.get_by_name("hc"), lambda a, rc: out.append(rc), enable=False)
    h.poll_threads()
    B.histogram_enable(B.get_by_name("hc"), lambda a, rc: out.append(rc))
    h.poll_threads()
    assert total() == 0
    B.put_io_channel(c0)
    for i, (d, c) in ctx.items():
        h.set_thread(i)
        B.close(d)
    h.poll_threads()


def test_dma_malloc_buffers_cross_reactors_without_bounce(h):
    """dma_malloc hands out a view in this reactor's arena slice; an I/O on it that is
    funnelled to the QoS thread on the other reactor travels as its arena handle: the
    module there works on the caller's own memory, no bounce buffer is taken."""
    import ctypes
    ctx = _qos_on_thread0(h, "dm", [10000, NOT, NOT, NOT])
    d1, c1 = ctx[1]
    h.set_thread(1)
    m1 = rx.current_reactor().locals["bdev"]
    small0, large0 = m1.small_avail, m1.large_avail
    wbuf = B.dma_zmalloc(4096, align=4096)
    rbufs = [B.dma_malloc(512), B.dma_malloc(512)]
    assert isinstance(wbuf, memoryview) and len(wbuf) == 4096 and bytes(wbuf) == bytes(4096)
    assert ctypes.addressof(ctypes.c_char.from_buffer(wbuf)) % 4096 == 0
    assert m1.small_avail == small0 - 3 and m1.buf_pool.in_use == 3
    wbuf[:] = b"\xab" * 4096
    cpl = S.Cpl()
    assert B.write_blocks(d1, c1, wbuf, 0, 8, cpl, "w") == 0
    assert B.readv_blocks(d1, c1, rbufs, 8, 2, cpl, "r") == 0
    h.poll_threads()
    assert m1.buf_pool.in_use == 3                   # nothing bounced
    h.set_thread(0)
    q = S.outstanding("dm")
    assert [io.type for io in q] == [B.IO_TYPE_WRITE, B.IO_TYPE_READ]
    assert bytes(q[0].iovs[0]) == b"\xab" * 4096
    q[1].iovs[0][:] = b"\x01" * 512                  # the module fills the read...
    q[1].iovs[1][:] = b"\x02" * 512
    assert bytes(rbufs[0]) == b"\x01" * 512          # ...straight into the caller's buffers
    assert bytes(rbufs[1]) == b"\x02" * 512
    S.complete("dm")
    h.poll_threads()
    assert sorted(cpl.done) == [("r", True), ("w", True)]
    # a private buffer still bounces (one small buffer while in flight)
    h.set_thread(1)
    assert B.write_blocks(d1, c1, bytearray(512), 0, 1, cpl, "p") == 0
    h.poll_threads()
    assert m1.buf_pool.in_use == 4
    h.set_thread(0)
    S.complete("dm")
    h.poll_threads()
    h.set_thread(1)
    assert m1.buf_pool.in_use == 3
    for v in [wbuf] + rbufs:
        assert B.dma_free(v) == 0
    assert m1.small_avail == small0 and m1.large_avail == large0 and m1.buf_pool.in_use == 0
    with pytest.raises(ValueError):
        bytes(wbuf)                                  # released: no use after free
    assert B.dma_free(wbuf) == -22                   # second free
    assert B.dma_free(bytearray(8)) == -22           # not a dma buffer
    _close_all(h, ctx)


def test_dma_malloc_exhaustion_and_arguments(h, restore_opts):
    S.fini_layer(h)
    assert B.set_opts({"small_buf_pool_size": 2, "large_buf_pool_size": 2}) == 0   # 1 + 1 each
    S.init_layer(h)
    h.set_thread(1)
    a = B.dma_malloc(8192)
    big = B.dma_malloc(65536)
    assert a is not None and big is not None and len(a) == 8192 and len(big) == 65536
    assert B.dma_malloc(512) is None and B.dma_malloc(8193) is None    # both classes empty
    assert B.dma_malloc(65537) is None                                 # above 64 KiB
    assert B.dma_malloc(0) is None
    h.set_thread(0)                      # reactor 0's share is its own
    b0 = B.dma_malloc(512)
    assert b0 is not None and B.dma_free(b0) == 0
    h.set_thread(1)
    assert B.dma_free(big) == 0
    assert B.dma_malloc(512, align=3) is None and B.dma_malloc(512, align=8192) is None
    # a freed buffer goes to a get_buf waiter of the freeing thread first
    S.create("dx")
    h.poll_threads()
    h.set_thread(1)
    rc, d = B.open(B.get_by_name("dx"), False)
    c = B.get_io_channel(d)
    got = []
    cpl = S.Cpl()
    assert B.read_blocks(d, c, None, 0, 1, cpl, "g") == 0
    S.outstanding("dx")[-1].get_buf(lambda mch, io: got.append(io), 512)
    assert got == []                                   # small class empty: waits
    assert B.dma_free(a) == 0
    assert len(got) == 1 and len(got[0].iovs[0]) == 512
    assert B.dma_malloc(512) is None                   # the waiter took it
    S.complete("dx")
    h.poll_threads()
    assert cpl.done == [("g", True)]
    m1 = rx.current_reactor().locals["bdev"]
    assert m1.small_avail == 1 and m1.large_avail == 1 and m1.buf_pool.in_use == 0
    B.put_io_channel(c)
    B.close(d)
    h.poll_threads()


def test_bdev_io_pool_is_a_global_count_split_over_reactors(restore_opts):
    """bdev_io_pool_size means what the seed's pool is (app-wide), split like the buffer
    pools; set_opts applies the seed's cache rule to the smallest share."""
    assert B.get_opts()["bdev_io_pool_size"] == 64 * 1024
    with Harness(4, n_reactors=2) as h2:         # reactor 0: threads 0, 2; reactor 1: 1, 3
        h2.set_thread(0)
        before = B.get_opts()
        assert B.set_opts({"bdev_io_pool_size": 1, "bdev_io_cache_size": 0}) == -22  # < reactors
        # cache 4, 2 threads here: each share needs 4 * (2 + 1) = 12, so the pool 24
        assert B.set_opts({"bdev_io_pool_size": 23, "bdev_io_cache_size": 4}) == -1
        assert B.get_opts() == before
        assert B.set_opts({"bdev_io_pool_size": 25, "bdev_io_cache_size": 4}) == 0
        S.init_layer(h2)
        assert [on(h2, i).locals["bdev"].io_pool_count for i in (0, 1)] == [13, 12]
        h2.set_thread(0)
        S.create("pl")
        h2.poll_threads()
        # reactor 1 hands out only its share: thread 1's cache (4) + the rest of the pool (8)
        h2.set_thread(1)
        rc, d = B.open(B.get_by_name("pl"), False)
        c = B.get_io_channel(d)
        cpl = S.Cpl()
        n = 0
        while B.read_blocks(d, c, bytearray(512), 0, 1, cpl, n) == 0:
            n += 1
            assert n < 100
        assert n == 12
        S.complete("pl")
        h2.poll_threads()
        assert len(cpl.done) == 12
        B.put_io_channel(c)
        B.close(d)
        h2.set_thread(0)
        assert B.subsystem_config_json()[0]["params"]["bdev_io_pool_size"] == 25
        h2.poll_threads()
        S.fini_layer(h2)


def test_bdev_set_options_help_says_global_counts():
    import bdev.rpc  # noqa: F401  registers the methods
    from reactor.rpc.registry import METHODS
    import bdev.iobuf  # noqa: F401
    helps = {p.name: p.help for name in ("bdev_set_options", "iobuf_set_options")
             for p in METHODS.get(name).schema.params}
    for k in ("bdev_io_pool_size", "small_pool_count", "large_pool_count"):
        assert "per reactor" not in helps[k] and "split over the reactors" in helps[k]


# ------------------------------------------------------------------ a reactor dies
def _poll_alive(h, alive=(0, 2)):
    """Poll only the threads of the surviving reactor (reactor 1 is 'dead': never polled)."""
    for _ in range(10_000):
        if not sum(h.poll_thread(i) for i in alive):
            return
    raise RuntimeError("still busy")


def test_reactor_death_fails_forwarded_io_and_waiting_control_plane_and_rechooses_qos():
    with Harness(4, n_reactors=2) as h:
        S.init_layer(h)
        h.set_thread(0)
        S.create("rd")
        h.poll_threads()
        # the QoS thread on reactor 1 (its channel is the first)
        h.set_thread(1)
        rc, d1 = B.open(B.get_by_name("rd"), True)
        c1 = B.get_io_channel(d1)
        h.set_thread(0)
        res = []
        B.set_qos_rate_limits(B.get_by_name("rd"), [10000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
        h.poll_threads()
        assert res == [0] and B.get_by_name("rd").qos.thread_id == h.threads[1].id
        rc, d0 = B.open(B.get_by_name("rd"), True)
        c0 = B.get_io_channel(d0)
        m0 = rx.current_reactor().locals["bdev"]
        got = []

        def cb(io, ok, arg):
            got.append((arg, ok))
            B.free_io(io)
        # funnelled to reactor 1: a read and a write (bounce-copied), a passthru ticket
        assert B.read_blocks(d0, c0, bytearray(512), 0, 1, cb, "r") == 0
        assert B.write_blocks(d0, c0, bytearray(512), 1, 1, cb, "w") == 0
        assert B.nvme_io_passthru(d0, c0, object(), None, 512, cb, "p") == 0
        _poll_alive(h)
        assert got == [] and len(m0.fwd) == 3 and m0.buf_pool.in_use == 2
        # control plane waiting for reactor 1: a broadcast and a walk
        B.set_qos_rate_limits(B.get_by_name("rd"), [20000, NOT, NOT, NOT], lambda a, rc: res.append(rc))
        stats = []
        B.get_device_stat(B.get_by_name("rd"), lambda b, st, arg, rc: stats.append(rc))
        _poll_alive(h)
        assert res == [0] and stats == []

        h.reactors[0].mark_dead(1)          # the supervisor found reactor 1 dead
        _poll_alive(h)
        assert sorted(got) == [("p", False), ("r", False), ("w", False)]
        assert not m0.fwd and m0.buf_pool.in_use == 0        # bounce buffers returned
        assert res == [0, -5] and stats == [-5]
        # the QoS thread is chosen again, on a survivor; the limit still holds
        b = B.get_by_name("rd")
        assert b.qos is not None and b.qos.thread_id is None
        assert B.read_blocks(d0, c0, bytearray(512), 2, 1, cb, "r2") == 0
        _poll_alive(h)
        assert b.qos.thread is h.threads[0]
        assert len(S.outstanding("rd")) == 1
        S.complete("rd")
        _poll_alive(h)
        assert got[-1] == ("r2", True)
        # later broadcasts and walks skip the dead reactor
        B.get_device_stat(b, lambda b, st, arg, rc: stats.append(rc))
        _poll_alive(h)
        assert stats == [-5, 0]
        B.put_io_channel(c0)
        B.close(d0)
        _poll_alive(h)
        # the survivor finishes the layer without waiting for the dead replica
        out = []
        B.finish(lambda arg: out.append(1))
        _poll_alive(h)
        assert out == [1]
        S.bm.module_list_remove(S.stub_module)
