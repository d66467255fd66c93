"""Deterministic tests of the bdev layer on one thread: the scenarios of SPDK's
test/unit/lib/bdev/bdev.c/bdev_ut.c (written for ringstack), plus later-SPDK features."""
from collections import deque

import pytest

import reactor as rx
from reactor.testing import Harness

import bdev as B
from bdev import _manager
from bdev import module as bm
import bdev_stub as S

EINVAL, EBADF, ENOMEM, EPERM, EEXIST, ENOENT, EBUSY, ENOTSUP, ENODEV = 22, 9, 12, 1, 17, 2, 16, 95, 19


@pytest.fixture
def h():
    with Harness(1) as h:
        S.init_layer(h)
        yield h
        h.set_thread(0)
        for b in list(B.bdevs()):
            for d in list(b.open_descs):
                B.close(d)
        h.poll_threads()
        S.fini_layer(h)


def open_rw(b, write=True, remove_cb=None, ctx=None):
    rc, desc = B.open(b, write, remove_cb, ctx)
    assert rc == 0
    return desc


# ------------------------------------------------------------------ validation
def test_bytes_to_blocks(h):
    b = S.create("b", blockcnt=100, blocklen=512)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    assert B.read(desc, ch, bytearray(512), 512, 512, cpl) == 0
    assert B.read(desc, ch, bytearray(512), 1, 512, cpl) == -EINVAL      # offset not aligned
    assert B.read(desc, ch, bytearray(512), 0, 500, cpl) == -EINVAL      # length not aligned
    assert B.write(desc, ch, bytearray(512), 512, 511, cpl) == -EINVAL
    assert len(S.disk("b").log) == 1                                      # nothing else reached it
    S.complete("b")
    B.put_io_channel(ch)
    B.close(desc)


def test_num_blocks_change(h):
    b = S.create("b", blockcnt=100)
    assert bm.notify_blockcnt_change(b, 50) == 0        # shrink, no desc
    assert B.get_num_blocks(b) == 50
    assert bm.notify_blockcnt_change(b, 70) == 0        # grow
    desc = open_rw(b)
    assert bm.notify_blockcnt_change(b, 80) == 0        # grow with desc
    assert bm.notify_blockcnt_change(b, 60) == -EBUSY   # shrink with desc
    assert B.get_num_blocks(b) == 80
    B.close(desc)


def test_io_valid_and_overflow(h):
    b = S.create("b", blockcnt=100)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    U64 = 1 << 64
    for off, n in [(100, 1), (99, 2), (U64 - 1, 1), (U64 - 1, U64 - 1), (1, U64 - 1), (-1, 1)]:
        assert B.read_blocks(desc, ch, bytearray(512), off, n, cpl) == -EINVAL
        assert B.write_blocks(desc, ch, bytearray(512), off, n, cpl) == -EINVAL
    assert B.read_blocks(desc, ch, bytearray(512), 99, 1, cpl) == 0
    assert B.read_blocks(desc, ch, bytearray(0), 100, 0, cpl) == 0   # empty at the end is valid
    assert len(S.disk("b").log) == 2
    S.complete("b")
    h.poll_threads()
    B.put_io_channel(ch)
    B.close(desc)


def test_readonly_desc_rejects_writes_ebadf(h):
    b = S.create("b", blockcnt=100)
    desc = open_rw(b, write=False)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    buf = bytearray(512)
    assert B.write_blocks(desc, ch, buf, 0, 1, cpl) == -EBADF
    assert B.writev_blocks(desc, ch, [buf], 0, 1, cpl) == -EBADF
    assert B.write_zeroes_blocks(desc, ch, 0, 1, cpl) == -EBADF
    assert B.unmap_blocks(desc, ch, 0, 1, cpl) == -EBADF
    assert B.flush_blocks(desc, ch, 0, 1, cpl) == -EBADF
    assert B.nvme_io_passthru(desc, ch, object(), None, 0, cpl) == -EBADF
    assert B.nvme_admin_passthru(desc, ch, object(), None, 0, cpl) == -EBADF
    assert S.disk("b").log == []
    assert B.read_blocks(desc, ch, buf, 0, 1, cpl) == 0
    S.complete("b")
    B.put_io_channel(ch)
    B.close(desc)


def test_unmap_zero_blocks_einval(h):
    b = S.create("b", blockcnt=100)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    assert B.unmap_blocks(desc, ch, 0, 0, cpl) == -EINVAL
    assert B.unmap_blocks(desc, ch, 0, 8, cpl) == 0
    assert B.flush_blocks(desc, ch, 0, 100, cpl) == 0
    assert [e[0] for e in S.disk("b").log] == [B.IO_TYPE_UNMAP, B.IO_TYPE_FLUSH]
    S.complete("b")
    assert cpl.statuses() == [True, True]
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ descs and claims
def test_open_write_and_claims(h):
    mod = bm.BdevModule("claimer")
    b = S.create("b")
    ro = open_rw(b, write=False)
    assert bm.module_claim_bdev(b, ro, mod) == 0
    assert ro.write is True                                   # claim upgrades the desc
    assert B.open(b, True) == (-EPERM, None)                  # write open of a claimed bdev
    rc, ro2 = B.open(b, False)
    assert rc == 0
    assert bm.module_claim_bdev(b, None, bm.BdevModule("other")) == -EPERM
    assert b.claim_module is mod                              # unchanged
    bm.module_release_bdev(b)
    rc, rw = B.open(b, True)
    assert rc == 0
    for d in (ro, ro2, rw):
        B.close(d)


def test_first_next_leaf_with_claims(h):
    mod = bm.BdevModule("vbdev")
    b1, b2, b3 = S.create("b1"), S.create("b2"), S.create("b3")
    assert B.first() is b1 and B.next(b1) is b2 and B.next(b2) is b3 and B.next(b3) is None
    assert bm.module_claim_bdev(b1, None, mod) == 0
    assert bm.module_claim_bdev(b3, None, mod) == 0
    assert B.first_leaf() is b2
    assert B.next_leaf(b2) is None
    bm.module_release_bdev(b1)
    bm.module_release_bdev(b3)


def test_register_name_clash_eexist(h):
    S.create("b")
    assert B.alias_add(B.get_by_name("b"), "alias0") == 0
    for name in ("b", "alias0"):
        nb = S._build(name, 8, 512)
        assert bm.bdev_register(nb) == -EEXIST
    assert [x.name for x in B.bdevs()] == ["b"]
    assert bm.bdev_register(bm.Bdev(None, module=S.stub_module, fn_table=S.StubDisk("x"))) == -EINVAL


def test_alias_add_del(h):
    b1, b2 = S.create("b1"), S.create("b2")
    assert B.alias_add(b1, None) == -EINVAL
    assert B.alias_add(b1, "b1") == -EEXIST
    assert B.alias_add(b1, "proper alias 0") == 0
    assert B.alias_add(b1, "proper alias 1") == 0
    assert B.alias_add(b2, "proper alias 0") == -EEXIST     # taken by b1
    assert B.alias_add(b2, "proper alias 2") == 0
    assert B.get_by_name("proper alias 1") is b1
    assert B.alias_del(b1, "not existing") == -ENOENT
    assert B.alias_del(b1, "b1") == -ENOENT                   # a name is not an alias
    assert B.alias_del(b1, "proper alias 0") == 0
    assert B.get_by_name("proper alias 0") is None
    assert B.get_aliases(b1) == ["proper alias 1"]
    B.alias_del_all(b2)
    assert B.get_aliases(b2) == [] and B.get_by_name("proper alias 2") is None


def test_getters(h):
    b = S.create("b", blockcnt=77, blocklen=4096, optimal_io_boundary=8, uuid="u-1", write_cache=True,
                 need_aligned_buffer=True)
    assert (B.get_name(b), B.get_block_size(b), B.get_num_blocks(b), B.get_optimal_io_boundary(b)) == \
        ("b", 4096, 77, 8)
    assert B.get_uuid(b) == "u-1" and B.has_write_cache(b) and B.get_buf_align(b) == 4096
    assert B.get_product_name(b) == "stub"
    S.disk("b").supported.discard(B.IO_TYPE_WRITE_ZEROES)
    assert B.io_type_supported(b, B.IO_TYPE_WRITE_ZEROES)     # emulated through write
    S.disk("b").supported.discard(B.IO_TYPE_WRITE)
    assert not B.io_type_supported(b, B.IO_TYPE_WRITE_ZEROES)


# ------------------------------------------------------------------ unregister / hot remove
def test_unregister_and_close(h):
    b = S.create("b")
    removed = []
    desc = open_rw(b, remove_cb=removed.append, ctx="ctx")
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append((arg, rc)), "u")
    assert removed == [] and done == []          # remove_cb is deferred to a message
    assert B.get_by_name("b") is b               # still listed while a desc is open
    h.poll_threads()
    assert removed == ["ctx"] and done == []
    assert B.open(b, False) == (-ENODEV, None)
    B.close(desc)
    h.poll_threads()
    assert done == [("u", 0)]
    assert B.get_by_name("b") is None and S.disk("b").destructed


def test_unregister_without_descs_destructs(h):
    b = S.create("b")
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append(rc))
    assert B.get_by_name("b") is None
    h.poll_threads()
    assert done == [0] and S.disk("b").destructed


def test_hot_remove_close_inside_callback(h):
    b = S.create("b")
    box = {}

    def on_remove(ctx):
        B.close(box["desc"])
    box["desc"] = open_rw(b, remove_cb=on_remove)
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert done == [0]


def test_open_ext_events(h):
    b = S.create("b", blockcnt=10)
    events = []
    assert B.open_ext("b", True, None) == (-EINVAL, None)
    assert B.open_ext("nope", True, lambda *a: None) == (-ENODEV, None)
    rc, desc = B.open_ext("b", True, lambda ev, bd, ctx: events.append((ev, bd.name, ctx)), "c")
    assert rc == 0
    assert bm.notify_blockcnt_change(b, 20) == 0
    h.poll_threads()
    assert events == [(B.EVENT_RESIZE, "b", "c")]
    B.bdev_unregister(b)
    h.poll_threads()
    assert events[-1] == (B.EVENT_REMOVE, "b", "c")
    B.close(desc)
    h.poll_threads()
    assert B.get_by_name("b") is None


# ------------------------------------------------------------------ completion rules
def test_completion_inside_submit_is_deferred(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    S.disk("b").fail_inline = B.IO_STATUS_SUCCESS
    cpl = S.Cpl()
    for i in range(5):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cpl, i) == 0
    assert cpl.done == []                         # never inside the submit call
    h.poll_thread(0)
    assert cpl.args() == [0, 1, 2, 3, 4]          # in order, one batch
    B.put_io_channel(ch)
    B.close(desc)


def test_nvme_and_scsi_status(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    got = []

    def cb(io, ok, arg):
        got.append((ok, io.get_nvme_status(), io.get_scsi_status()))
        B.free_io(io)
    for _ in range(4):
        assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cb) == 0
    q = S.outstanding("b")
    q.popleft().complete_nvme_status(0, 0)
    q.popleft().complete_nvme_status(0, 0x80)            # LBA out of range
    q.popleft().complete_scsi_status(0x02, 0x03, 0x11, 0x00)
    q.popleft().complete(B.IO_STATUS_FAILED)
    assert got[0] == (True, (0, 0), (0, 0, 0, 0))
    assert got[1] == (False, (0, 0x80), (0x02, 0x05, 0x21, 0x00))
    assert got[2] == (False, (0, 0x06), (0x02, 0x03, 0x11, 0x00))
    assert got[3] == (False, (0, 0x06), (0x02, 0x0B, 0x00, 0x00))
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ io_wait
def _small_pool(h, pool, cache):
    S.fini_layer(h)
    assert B.set_opts({"bdev_io_pool_size": pool, "bdev_io_cache_size": cache}) == 0
    S.init_layer(h)


@pytest.fixture
def restore_opts():
    saved = dict(_manager._default_opts)
    yield
    _manager._default_opts.update(saved)


def test_set_opts_validation(h, restore_opts):
    before = B.get_opts()
    assert B.set_opts({"bdev_io_pool_size": 3, "bdev_io_cache_size": 2}) == -1   # < 2 * (1 + 1)
    assert B.set_opts({"bogus": 1}) == -EINVAL
    assert B.set_opts({"small_buf_pool_size": 0}) == -EINVAL
    assert B.get_opts() == before
    assert B.set_opts({"bdev_io_pool_size": 4, "bdev_io_cache_size": 2}) == 0


def test_io_wait_order(h, restore_opts):
    _small_pool(h, 4, 2)
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    for i in range(4):
        assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, i) == 0
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl) == -ENOMEM
    order = []
    e1 = B.IoWaitEntry(b, lambda arg: order.append(arg) or
                       B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "w1"), "e1")
    e2 = B.IoWaitEntry(b, lambda arg: order.append(arg) or
                       B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "w2"), "e2")
    assert B.queue_io_wait(S.create("other"), ch, e1) == -EINVAL  # wrong bdev
    e_bad = B.IoWaitEntry(B.get_by_name("other"), None, None)
    assert B.queue_io_wait(b, ch, e_bad) == -EINVAL
    assert B.queue_io_wait(b, ch, e1) == 0
    assert B.queue_io_wait(b, ch, e2) == 0
    S.complete("b", 1)
    assert order == ["e1"]
    S.complete("b", 1)
    assert order == ["e1", "e2"]
    S.complete("b")
    assert sorted(map(str, cpl.args())) == sorted(map(str, [0, 1, 2, 3, "w1", "w2"]))
    B.put_io_channel(ch)
    B.close(desc)


def test_queue_io_wait_refused_while_cache_has_io(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    assert B.queue_io_wait(b, ch, B.IoWaitEntry(b, print, None)) == -EINVAL
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ split
def _split_bdev(h, **kw):
    b = S.create("s", blockcnt=4096, blocklen=512, **kw)
    desc = open_rw(b)
    return b, desc, B.get_io_channel(desc)


def test_split_on_boundary_sequential_children(h):
    b, desc, ch = _split_bdev(h, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    log = S.disk("s").log
    cpl = S.Cpl()
    buf = bytearray(4 * 512)
    assert B.write_blocks(desc, ch, buf, 14, 4, cpl, "p") == 0
    assert log == [(B.IO_TYPE_WRITE, 14, 2, [1024])]
    S.complete("s")
    assert log[-1] == (B.IO_TYPE_WRITE, 16, 2, [1024]) and cpl.done == []
    S.complete("s")
    assert cpl.done == [("p", True)]
    # not crossing: not split
    assert B.read_blocks(desc, ch, bytearray(8 * 512), 16, 8, cpl, "q") == 0
    assert log[-1] == (B.IO_TYPE_READ, 16, 8, [4096])
    S.complete("s")
    # split disabled: crossing I/O goes whole
    b.split_on_optimal_io_boundary = False
    assert B.read_blocks(desc, ch, bytearray(4 * 512), 14, 4, cpl, "r") == 0
    assert log[-1] == (B.IO_TYPE_READ, 14, 4, [2048])
    S.complete("s")
    B.put_io_channel(ch)
    B.close(desc)


def test_split_iovec_edges(h):
    b, desc, ch = _split_bdev(h, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    log = S.disk("s").log
    cpl = S.Cpl()
    # 3 iovs of 1.5, 1, 1.5 blocks; boundary at block 16 falls inside the second iov
    iovs = [bytearray(768), bytearray(512), bytearray(768)]
    assert B.writev_blocks(desc, ch, iovs, 14, 4, cpl, "p") == 0
    assert log[-1] == (B.IO_TYPE_WRITE, 14, 2, [768, 256])
    S.complete("s")
    assert log[-1] == (B.IO_TYPE_WRITE, 16, 2, [256, 768])
    S.complete("s")
    assert cpl.done == [("p", True)]
    # the child iovs point into the parent's buffers
    iovs = [bytearray(1024), bytearray(1024)]
    assert B.readv_blocks(desc, ch, iovs, 15, 2, cpl, "q") == 0
    first = S.outstanding("s")[0]
    first.iovs[0][:2] = b"ab"
    assert iovs[0][0:2] == b"ab" and S.outstanding("s")[0].num_blocks == 1
    S.complete("s")
    S.complete("s")
    B.put_io_channel(ch)
    B.close(desc)


def test_split_more_than_32_child_iovs(h):
    b, desc, ch = _split_bdev(h, optimal_io_boundary=64, split_on_optimal_io_boundary=True)
    log = S.disk("s").log
    cpl = S.Cpl()
    iovs = [bytearray(512) for _ in range(64)]
    assert B.readv_blocks(desc, ch, iovs, 32, 64, cpl, "p") == 0
    # the child to the boundary (32 blocks) fits the 32 child iovs exactly
    assert log[-1][1:3] == (32, 32) and len(log[-1][3]) == 32
    S.complete("s")
    assert log[-1][1:3] == (64, 32)
    S.complete("s")
    assert cpl.done == [("p", True)]
    # 33 iovs of 512 bytes except two of 256: the child runs out of iov slots mid-block
    iovs = [bytearray(512) for _ in range(31)] + [bytearray(256), bytearray(256)] + \
           [bytearray(512) for _ in range(32)]
    assert B.readv_blocks(desc, ch, iovs, 32, 64, cpl, "bad") == 0
    assert cpl.done[-1] == ("p", True)             # not inside the call: later, on this thread
    h.poll_threads()
    assert cpl.done[-1] == ("bad", False)
    # quarter-block iovs: 32 slots hold 8 blocks, so children are cut back to that
    iovs = [bytearray(128) for _ in range(64)] + [bytearray(512) for _ in range(16)]
    assert B.readv_blocks(desc, ch, iovs, 48, 32, cpl, "cut") == 0
    assert log[-1][1:3] == (48, 8) and len(log[-1][3]) == 32
    S.complete("s")
    assert log[-1][1:3] == (56, 8)
    S.complete("s")
    assert log[-1][1:3] == (64, 16) and log[-1][3] == [512] * 16
    S.complete("s")
    assert cpl.done[-1] == ("cut", True)
    B.put_io_channel(ch)
    B.close(desc)


def test_split_with_io_wait(h, restore_opts):
    _small_pool(h, 4, 2)
    b, desc, ch = _split_bdev(h, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    log = S.disk("s").log
    cpl = S.Cpl()
    for i in range(3):
        assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, i) == 0
    # the parent takes the last bdev_io, its child gets ENOMEM and waits
    assert B.read_blocks(desc, ch, bytearray(4 * 512), 14, 4, cpl, "p") == 0
    assert len(log) == 3
    S.complete("s", 1)                   # frees one: the waiting child is submitted
    assert log[-1] == (B.IO_TYPE_READ, 14, 2, [1024])
    S.complete("s")
    assert log[-1] == (B.IO_TYPE_READ, 16, 2, [1024])
    S.complete("s")
    assert ("p", True) in cpl.done
    B.put_io_channel(ch)
    B.close(desc)


def test_split_child_failure_fails_parent(h):
    b, desc, ch = _split_bdev(h, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    cpl = S.Cpl()
    assert B.write_blocks(desc, ch, bytearray(4 * 512), 14, 4, cpl, "p") == 0
    S.complete("s", status=B.IO_STATUS_FAILED)
    assert cpl.done == [("p", False)]
    assert len(S.disk("s").log) == 1
    B.put_io_channel(ch)
    B.close(desc)


def test_split_read_without_buffer_gets_one(h):
    b, desc, ch = _split_bdev(h, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    got = []

    def cb(io, ok, arg):
        got.append((ok, len(io.iovs[0])))
        B.free_io(io)
    assert B.read_blocks(desc, ch, None, 14, 4, cb) == 0
    assert S.disk("s").log[-1] == (B.IO_TYPE_READ, 14, 2, [1024])
    S.complete("s")
    S.complete("s")
    assert got == [(True, 2048)]
    assert b.mgr.buf_pool.in_use == 0
    B.put_io_channel(ch)
    B.close(desc)


def test_split_on_max_size_and_segments(h):
    b, desc, ch = _split_bdev(h, max_rw_size=4, max_num_segments=2, max_segment_size=1024)
    log = S.disk("s").log
    cpl = S.Cpl()
    assert B.writev_blocks(desc, ch, [bytearray(3072), bytearray(2048)], 0, 10, cpl, "p") == 0
    for _ in range(10):
        if not S.outstanding("s"):
            break
        S.complete("s")
    assert cpl.done == [("p", True)]
    # 4 blocks max per child, 2 segments of at most 1 KiB each
    assert [e[1:] for e in log] == [(0, 4, [1024, 1024]), (4, 4, [1024, 1024]), (8, 2, [1024])]
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ buffers
def test_get_buf_pools_alignment_and_waiters(h, restore_opts):
    S.fini_layer(h)
    assert B.set_opts({"small_buf_pool_size": 2, "large_buf_pool_size": 1}) == 0
    S.init_layer(h)
    b = S.create("b", blockcnt=1024)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    got = []
    cpl = S.Cpl()
    ios = []
    for n in (8, 8, 8, 64, 64):
        assert B.read_blocks(desc, ch, None, 0, n, cpl, n) == 0
        io = S.outstanding("b")[-1]
        ios.append(io)
        io.get_buf(lambda mch, io: got.append(io), n * 512)
    assert len(got) == 3                               # 2 small + 1 large; two wait
    for io in got:
        assert io.buf.offset % 512 == 0 and len(io.iovs[0]) == io.num_blocks * 512
    S.complete("b", 1)                                 # frees a small buffer: next small waiter
    assert len(got) == 4 and got[-1].num_blocks == 8
    S.complete("b")
    assert len(got) == 5
    assert b.mgr.buf_pool.in_use == 0
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ write zeroes
def test_write_zeroes_emulated(h):
    b = S.create("b", blockcnt=8192, blocklen=512)
    S.disk("b").supported.discard(B.IO_TYPE_WRITE_ZEROES)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    assert B.write_zeroes_blocks(desc, ch, 0, 4096 + 100, cpl, "z") == 0
    log = S.disk("b").log
    for _ in range(3):
        io = S.outstanding("b")[0]
        assert bytes(io.iovs[0][:16]) == bytes(16)
        S.complete("b")
    assert [e[:3] for e in log] == [(B.IO_TYPE_WRITE, 0, 2048), (B.IO_TYPE_WRITE, 2048, 2048),
                                    (B.IO_TYPE_WRITE, 4096, 100)]
    assert cpl.done == [("z", True)]
    S.disk("b").supported.discard(B.IO_TYPE_WRITE)
    assert B.write_zeroes_blocks(desc, ch, 0, 1, cpl) == -ENOTSUP
    S.disk("b").supported.add(B.IO_TYPE_WRITE_ZEROES)
    assert B.write_zeroes_blocks(desc, ch, 0, 1, cpl) == 0
    assert log[-1][:3] == (B.IO_TYPE_WRITE_ZEROES, 0, 1)
    S.complete("b")
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ nomem
def test_enomem_retry_threshold(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    S.set_avail("b", 20)
    cpl = S.Cpl()
    for i in range(25):
        assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, i) == 0
    sr = ch.ctx.shared_resource
    assert len(S.outstanding("b")) == 20 and len(sr.nomem_io) == 5
    assert sr.io_outstanding == 20
    assert sr.nomem_threshold == max(20 // 2, 20 - 8)       # 12
    S.complete("b", 7)                                      # 13 outstanding > 12: no retry
    assert len(sr.nomem_io) == 5
    S.complete("b", 1)                                      # 12: retry until NOMEM again
    assert len(sr.nomem_io) == 0 or sr.io_outstanding == 20
    S.complete("b")
    h.poll_threads()
    S.complete("b")
    assert sorted(cpl.args()) == list(range(25))
    B.put_io_channel(ch)
    B.close(desc)


def test_enomem_multi_bdev_shares_nomem_queue(h):
    disk = S.StubDisk("shared")
    rx.io_device_register(disk, S._ch_create, S._ch_destroy)
    rx.current_reactor().locals.setdefault("stub", {})["shared"] = disk
    b1 = bm.Bdev("m1", blockcnt=64, module=S.stub_module, fn_table=disk, ctxt=disk)
    b2 = bm.Bdev("m2", blockcnt=64, module=S.stub_module, fn_table=disk, ctxt=disk)
    assert bm.bdev_register(b1) == 0 and bm.bdev_register(b2) == 0
    d1, d2 = open_rw(b1), open_rw(b2)
    c1, c2 = B.get_io_channel(d1), B.get_io_channel(d2)
    assert c1.ctx.shared_resource is c2.ctx.shared_resource       # same module channel
    S.set_avail("shared", 4)
    cpl = S.Cpl()
    for i in range(5):
        assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, i) == 0
    sr = c1.ctx.shared_resource
    assert len(sr.nomem_io) == 1
    assert B.read_blocks(d2, c2, bytearray(512), 0, 1, cpl, "b2") == 0
    assert len(sr.nomem_io) == 2                                  # b2 queues behind b1's nomem
    S.complete("shared")
    S.complete("shared")
    assert len(cpl.done) == 6
    for c, d in ((c1, d1), (c2, d2)):
        B.put_io_channel(c)
        B.close(d)
    h.poll_threads()
    B.bdev_unregister(b1)
    B.bdev_unregister(b2)
    h.poll_threads()
    assert disk.destructed and not rx.io_device_is_registered(disk)


def test_enomem_multi_io_target_independent(h):
    b1, b2 = S.create("t1"), S.create("t2")
    d1, d2 = open_rw(b1), open_rw(b2)
    c1, c2 = B.get_io_channel(d1), B.get_io_channel(d2)
    assert c1.ctx.shared_resource is not c2.ctx.shared_resource
    S.set_avail("t1", 1)
    cpl = S.Cpl()
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, 1) == 0
    assert B.read_blocks(d1, c1, bytearray(512), 0, 1, cpl, 2) == 0
    assert len(c1.ctx.shared_resource.nomem_io) == 1
    assert B.read_blocks(d2, c2, bytearray(512), 0, 1, cpl, 3) == 0
    assert len(S.outstanding("t2")) == 1                         # not held up by t1
    S.complete("t2")
    S.complete("t1")
    S.complete("t1")
    assert sorted(cpl.args()) == [1, 2, 3]
    for c, d in ((c1, d1), (c2, d2)):
        B.put_io_channel(c)
        B.close(d)


# ------------------------------------------------------------------ stats
def test_device_stat_includes_closed_channels(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    B.read_blocks(desc, ch, bytearray(1024), 0, 2, cpl)
    B.write_blocks(desc, ch, bytearray(512), 0, 1, cpl)
    h.advance_time_us(5)
    S.complete("b")
    st = B.get_io_stat(b, ch)
    assert (st.num_read_ops, st.bytes_read, st.num_write_ops, st.bytes_written) == (1, 1024, 1, 512)
    assert st.read_latency_ticks == 5000
    B.put_io_channel(ch)
    h.poll_threads()
    ch = B.get_io_channel(desc)
    B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl)
    S.complete("b")
    out = []
    B.get_device_stat(b, lambda bd, s, arg, rc: out.append((s, rc)))
    h.poll_threads()
    s, rc = out[0]
    assert rc == 0 and s.num_read_ops == 2 and s.bytes_read == 1536 and s.num_write_ops == 1
    done = []
    B.reset_device_stat(b, lambda bd, arg, rc: done.append(rc))
    h.poll_threads()
    B.get_device_stat(b, lambda bd, s, arg, rc: out.append((s, rc)))
    h.poll_threads()
    assert done == [0] and out[-1][0].num_read_ops == 0
    B.put_io_channel(ch)
    B.close(desc)


def test_qd_sampling_io_time(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    B.set_qd_sampling_period(b, 10)
    for _ in range(3):
        B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl)
    h.advance_time_us(10)
    h.poll_threads()
    assert B.get_qd(b) == 3 and B.get_io_time(b) == 10 and B.get_weighted_io_time(b) == 30
    S.complete("b")
    h.advance_time_us(10)
    h.poll_threads()
    assert B.get_qd(b) == 0 and B.get_io_time(b) == 10
    B.set_qd_sampling_period(b, 0)
    assert B.get_qd_sampling_period(b) == 0
    B.put_io_channel(ch)
    B.close(desc)


def test_histogram(h):
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    got = []
    B.histogram_get(b, lambda arg, rc, bk: got.append(rc))
    h.poll_threads()
    assert got == [-14]
    B.histogram_enable(b, lambda arg, rc: got.append(rc))
    h.poll_threads()
    cpl = S.Cpl()
    B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl)
    h.advance_time_us(3)                     # 3000 ns -> bit length 12
    S.complete("b")
    B.histogram_get(b, lambda arg, rc, bk: got.append((rc, bk)))
    h.poll_threads()
    rc, buckets = got[-1]
    assert rc == 0 and buckets[(3000).bit_length()] == 1 and sum(buckets) == 1
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ modules, init, finish
def test_module_order_async_init_examine_and_finish(restore_opts):
    events = []
    box = {}
    plain = bm.BdevModule("plain", module_init=lambda: events.append("init plain") or 0,
                          module_fini=lambda: events.append("fini plain"))
    asyncm = bm.BdevModule("asyncm", async_init=True, async_fini=True,
                           module_init=lambda: events.append("init asyncm") or 0,
                           module_fini=lambda: (events.append("fini asyncm"),
                                                rx.send_msg(rx.get_thread(), bm.module_finish_done)))

    def examine_config(bdev):
        events.append(f"examine_config {bdev.name}")
        bm.module_examine_done(examiner)

    def examine_disk(bdev):
        events.append(f"examine_disk {bdev.name}")
        box["pending"] = bdev
    examiner = bm.BdevModule("examiner", examine_config=examine_config, examine_disk=examine_disk,
                             module_init=lambda: events.append("init examiner") or 0)
    for m in (plain, asyncm, examiner):
        bm.register_module(m)
    try:
        with Harness(1) as h:
            bm.register_module(S.stub_module)
            done = []
            B.initialize(lambda arg, rc: done.append(rc))
            h.poll_threads()
            assert events[:3] == ["init examiner", "init plain", "init asyncm"]   # examiners first
            assert done == []                           # asyncm not done yet
            bm.module_init_done(asyncm)
            assert done == [0]
            b1 = S.create("x1")
            assert events[-2:] == ["examine_config x1", "examine_disk x1"]
            waited = []
            B.wait_for_examine(lambda arg: waited.append(arg), "w")
            h.poll_threads()
            assert waited == []
            bm.module_examine_done(examiner)
            h.poll_threads()
            assert waited == ["w"]
            S.create("x2")
            bm.module_examine_done(examiner)
            del events[:]
            fin = []
            B.finish(lambda arg: fin.append(arg), "f")
            h.poll_threads()
            assert [b.name for b in B.bdevs()] == []
            assert fin == ["f"]
            # modules finish in reverse list order; async_fini pauses the walk
            assert events == ["fini asyncm", "fini plain"]
            assert b1.mgr is not None and S.disk  # (objects survive)
    finally:
        for m in (plain, asyncm, examiner, S.stub_module):
            bm.module_list_remove(m)


def test_module_init_failure_reports_minus_one():
    bad = bm.BdevModule("bad", module_init=lambda: -5)
    bm.register_module(bad)
    try:
        with Harness(1) as h:
            done = []
            B.initialize(lambda arg, rc: done.append(rc))
            h.poll_threads()
            assert done == [-1]
            assert _manager.get_manager() is None
    finally:
        bm.module_list_remove(bad)


def test_config_json_and_qos_config(h):
    S.fini_layer(h)
    S.init_layer(h, conf={"Limit_IOPS": ["q1 20000", "q2 12345"], "Limit_BPS": ["q1 100"]})
    q1, q2 = S.create("q1"), S.create("q2")
    assert B.get_qos_rate_limits(q1)[:2] == [20000, 100 * 1024 * 1024]
    assert B.get_qos_rate_limits(q2) == [0, 0, 0, 0]              # not a multiple of 10000
    cfg = B.subsystem_config_json()
    assert cfg[0]["method"] == "bdev_set_options"
    assert {"method": "bdev_set_qos_limit",
            "params": {"name": "q1", "rw_ios_per_sec": 20000, "rw_mbytes_per_sec": 100}} in cfg


def test_enomem_with_nothing_outstanding_is_retried_by_a_poller(h):
    """Later SPDK's nomem poller: a NOMEM with nothing else outstanding on the shared
    resource has no completion to retry it; a 1 ms timed poller does, and goes away."""
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    sr = ch.ctx.shared_resource
    cpl = S.Cpl()
    S.set_avail("b", 0)                                     # the module is out of resources
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "a") == 0
    assert len(sr.nomem_io) == 1 and sr.io_outstanding == 0
    assert sr.nomem_poller is not None
    assert B.read_blocks(desc, ch, bytearray(512), 1, 1, cpl, "b") == 0   # queues behind it
    assert len(sr.nomem_io) == 2
    h.poll_threads()
    h.advance_time_us(500)
    h.poll_threads()
    assert len(sr.nomem_io) == 2 and S.outstanding("b") == deque()        # not due yet
    h.advance_time_us(500)                                   # due: retried, NOMEM again
    h.poll_threads()
    assert len(sr.nomem_io) == 2 and sr.nomem_poller is not None       # re-armed
    n_submits = len(S.disk("b").log)
    S.set_avail("b", -1)                                     # resources are back
    h.advance_time_us(1000)
    h.poll_threads()
    assert len(sr.nomem_io) == 0 and sr.nomem_poller is None
    assert len(S.outstanding("b")) == 2 and len(S.disk("b").log) == n_submits + 2
    S.complete("b")
    h.poll_threads()
    assert cpl.done == [("a", True), ("b", True)]
    # with I/O outstanding the seed's rule applies: no poller, a completion retries
    S.set_avail("b", 1)
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "c") == 0
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "d") == 0
    assert len(sr.nomem_io) == 1 and sr.io_outstanding == 1 and sr.nomem_poller is None
    S.complete("b", 1)                                       # "c" done: "d" retried
    assert len(sr.nomem_io) == 0 and len(S.outstanding("b")) == 1
    S.complete("b")
    h.poll_threads()
    assert cpl.args()[-2:] == ["c", "d"]
    # a parked queue whose channel goes away takes its poller with it
    S.set_avail("b", 0)
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cpl, "e") == 0
    p = sr.nomem_poller
    assert p is not None
    B.put_io_channel(ch)
    h.poll_threads()
    assert cpl.done[-1] == ("e", False) and sr.nomem_poller is None
    h.advance_time_us(2000)
    h.poll_threads()
    # a, b retried; c; d (NOMEM, then retried); e (NOMEM): nothing retried e after the put
    assert len(S.disk("b").log) == n_submits + 6
    B.close(desc)


def test_dma_malloc_local_io_and_unfreed_buffers_at_finish(h):
    """dma buffers work as I/O buffers on one reactor too; one still held at finish is
    released with a warning (the arena unmaps, no segment is left)."""
    b = S.create("b")
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    buf = B.dma_zmalloc(1024)
    kept = B.dma_malloc(512)                  # never freed
    assert buf is not None and kept is not None
    cpl = S.Cpl()
    assert B.read_blocks(desc, ch, buf, 0, 2, cpl) == 0
    io = S.outstanding("b")[0]
    assert io.iovs[0] is buf                  # the caller's view itself reaches the module
    S.complete("b")
    h.poll_threads()
    assert cpl.statuses() == [True] and B.dma_free(buf) == 0
    B.put_io_channel(ch)
    B.close(desc)


def test_completed_io_exposes_its_submit_timestamp(h):
    """io_get_submit_tsc: the clock reading the layer takes at submission (ns of the
    reactor clock), for plain, split, emulated write-zeroes and reset I/O."""
    b = S.create("b", blockcnt=4096, optimal_io_boundary=16, split_on_optimal_io_boundary=True)
    S.disk("b").supported.discard(B.IO_TYPE_WRITE_ZEROES)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    seen = {}

    def cb(io, ok, name):
        seen[name] = (ok, B.io_get_submit_tsc(io), io.get_submit_tsc(), rx.now_ns())
        B.free_io(io)

    t_read = rx.now_ns()
    assert B.read_blocks(desc, ch, bytearray(512), 0, 1, cb, "read") == 0
    h.advance_time_us(7)
    t_split = rx.now_ns()
    assert B.readv_blocks(desc, ch, [bytearray(32 * 512)], 8, 32, cb, "split") == 0
    h.advance_time_us(5)
    t_wz = rx.now_ns()
    assert B.write_zeroes_blocks(desc, ch, 100, 4, cb, "wz") == 0
    h.advance_time_us(3)
    for _ in range(4):                       # children of the split come one at a time
        S.complete("b")
        h.advance_time_us(1)
        h.poll_threads()
    t_reset = rx.now_ns()
    assert B.reset(desc, ch, cb, "reset") == 0
    h.poll_threads()
    S.complete("b")
    h.advance_time_us(2)
    h.poll_threads()
    assert set(seen) == {"read", "split", "wz", "reset"}
    for name, t in (("read", t_read), ("split", t_split), ("wz", t_wz), ("reset", t_reset)):
        ok, tsc, tsc2, done_at = seen[name]
        assert ok and tsc == tsc2 == t, (name, tsc, t)
        assert done_at - tsc > 0
    assert seen["read"][3] - seen["read"][1] == 15_000          # latency from one clock read
    assert bm.bdev_io_get_submit_tsc is B.io_get_submit_tsc
    B.put_io_channel(ch)
    B.close(desc)


# ------------------------------------------------------------------ robustness follow-ups
def test_raising_callback_does_not_lose_the_rest_of_a_deferred_batch(h, caplog):
    b = S.create("b", blockcnt=100)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    S.disk("b").fail_inline = B.IO_STATUS_SUCCESS   # completes inside submit: deferred batch
    seen = []

    def cb(io, success, arg):
        seen.append(arg)
        B.free_io(io)
        if arg == 1:
            raise RuntimeError("user callback bug")

    for i in range(4):
        assert B.read_blocks(desc, ch, bytearray(512), i, 1, cb, i) == 0
    assert seen == []
    h.poll_threads()
    assert seen == [0, 1, 2, 3]                      # 2 and 3 ran after 1 raised
    assert "read I/O on bdev b raised" in caplog.text
    B.put_io_channel(ch)
    B.close(desc)


def test_free_io_drops_the_callers_iovec_and_buffers(h):
    import gc
    import weakref

    class Buf(bytearray):
        pass

    b = S.create("b", blockcnt=100)
    desc = open_rw(b)
    ch = B.get_io_channel(desc)
    cpl = S.Cpl()
    bufs = [Buf(512), Buf(512)]
    refs = [weakref.ref(x) for x in bufs]
    assert B.readv_blocks(desc, ch, bufs, 0, 2, cpl) == 0
    io = S.outstanding("b")[0]
    S.complete("b")
    h.poll_threads()
    assert cpl.statuses() == [True]
    assert io.iovs is io._iov and io.iovs[0] is None and io.fwd is None
    del bufs
    gc.collect()
    assert [r() for r in refs] == [None, None]     # the pooled bdev_io keeps nothing alive
    B.put_io_channel(ch)
    B.close(desc)


def test_watch_registry_notifies_register_and_unregister_on_the_main_thread(h):
    seen = []

    def watcher(event, name):
        seen.append((event, name, rx.get_thread() is h.threads[0]))

    def bad(event, name):
        raise RuntimeError("watcher bug")

    B.watch_registry(bad)
    B.watch_registry(watcher)
    b = S.create("wb", blockcnt=10)
    assert seen == []                          # a message, never inside the register call
    h.poll_threads()
    assert seen == [("register", "wb", True)]  # the raising watcher did not stop this one
    done = []
    B.bdev_unregister(b, lambda arg, rc: done.append(rc))
    h.poll_threads()
    assert done == [0] and seen[-1] == ("unregister", "wb", True)
    B.unwatch_registry(watcher)
    B.unwatch_registry(bad)
    S.create("wc", blockcnt=10)
    h.poll_threads()
    assert len(seen) == 2
