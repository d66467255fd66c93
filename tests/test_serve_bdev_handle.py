"""targets/serve BdevHandle (docs/targets.md Contract 2) in deterministic mode (one reactor,
mock clock): the bdev test stub that holds I/O until the test completes it, and malloc
under the error bdev for real failures.  Geometry, cb(err, scsi) with the SCSI status
read before free_io, ENOMEM -> queue_io_wait -> resubmit in order, a refused submit
answered outside the call, FUA, reset, hot-remove with ops outstanding, close after the
last op, buffers."""
import errno
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bdev_stub  # noqa: E402
from drivers_util import mk_malloc, rm, run_until  # noqa: E402

import bdev as B  # noqa: E402
from bdev import module as bm  # noqa: E402
from drivers import error  # noqa: E402
from reactor.testing import Harness  # noqa: E402
from targets.serve.bdev_handle import BdevHandle  # noqa: E402

GOOD = None
#: what a plain failure (IO_STATUS_FAILED) reads as: CHECK CONDITION, ABORTED COMMAND
ABORTED = (0x02, 0x0B, 0x00, 0x00)


@pytest.fixture
def h():
    with Harness(n_threads=1, n_reactors=1) as hh:
        # a tiny bdev_io pool: 8 per reactor, 2 cached per thread
        bdev_stub.init_layer(hh, conf={"BdevIoPoolSize": 8, "BdevIoCacheSize": 2})
        yield hh
        hh.set_thread(0)
        for name in reversed([b.name for b in B.bdevs()]):
            x = B.get_by_name(name)
            if x is None:
                continue
            if x.module.name in ("malloc", "error"):
                rm(hh, name)
            else:
                B.bdev_unregister(x)
                hh.poll_threads()
        bdev_stub.fini_layer(hh)


class Done:
    def __init__(self):
        self.got = []

    def cb(self, tag):
        return lambda err, scsi: self.got.append((tag, err, scsi))


def _stub(h, name="s0", **kw):
    h.set_thread(0)
    bdev_stub.create(name, **kw)
    h.poll_threads()


def test_geometry_capabilities_and_open_errors(h):
    _stub(h, blockcnt=256, blocklen=4096, write_cache=True)
    hd = BdevHandle("s0", write=True)
    assert (hd.name, hd.block_size, hd.num_blocks, hd.has_write_cache) == ("s0", 4096, 256, True)
    assert hd.supports(B.IO_TYPE_READ) and hd.supports(B.IO_TYPE_FLUSH)
    assert hd.fua_needs_flush and hd.fua_supported and hd.bdev is B.get_by_name("s0")
    bdev_stub.disk("s0").supported -= {B.IO_TYPE_FLUSH}
    ro = BdevHandle("s0", write=False)
    assert not ro.supports(B.IO_TYPE_FLUSH) and not ro.fua_needs_flush and not ro.fua_supported
    with pytest.raises(OSError) as exc:
        BdevHandle("nope")
    assert exc.value.errno == errno.ENODEV
    hd.close()
    ro.close()
    with pytest.raises(RuntimeError):
        hd.close()


def test_a_failed_io_carries_the_scsi_status_the_module_set(h):
    _stub(h, blockcnt=64, blocklen=512)
    hd = BdevHandle("s0")
    d = Done()
    buf = hd.alloc(512)
    for tag in ("ok", "scsi", "plain"):
        hd.read(0, 512, buf, d.cb(tag))
    h.poll_threads()
    q = bdev_stub.outstanding("s0")
    assert len(q) == 3 and d.got == []                  # nothing answered inside the calls
    q.popleft().complete(B.IO_STATUS_SUCCESS)
    bm.bdev_io_complete_scsi_status(q.popleft(), 0x02, 0x03, 0x11, 0x00)   # MEDIUM ERROR
    q.popleft().complete(B.IO_STATUS_FAILED)
    h.poll_threads()
    assert d.got == [("ok", 0, GOOD), ("scsi", -errno.EIO, (0x02, 0x03, 0x11, 0x00)),
                     ("plain", -errno.EIO, ABORTED)]
    assert hd.outstanding == 0
    hd.free(buf)
    hd.close()


def test_error_bdev_failure_reaches_cb_as_err_and_scsi(h):
    assert mk_malloc(h, "M0", blocks=64, bs=512) == 0
    out = []
    error.create("M0", lambda rc, *a: out.append(rc))
    assert run_until(h, lambda: out) and out == [0]
    out.clear()
    error.inject("EE_M0", "write", "failure", 1, lambda rc, *a: out.append(rc))
    assert run_until(h, lambda: out) and out == [0]
    h.set_thread(0)
    hd = BdevHandle("EE_M0")
    d = Done()
    data = hd.alloc(1024)
    data[:] = b"x" * 1024
    hd.write(1024, data, d.cb("bad"))
    hd.write(1024, data, d.cb("good"))
    assert run_until(h, lambda: len(d.got) == 2)
    assert d.got == [("bad", -errno.EIO, ABORTED), ("good", 0, GOOD)]
    back = hd.alloc(1024)
    hd.read(1024, 1024, back, d.cb("r"))
    assert run_until(h, lambda: len(d.got) == 3)
    assert d.got[2] == ("r", 0, GOOD) and bytes(back) == b"x" * 1024
    # reset: an I/O the error bdev holds ("pending") is failed by it; reset answers 0
    out.clear()
    error.inject("EE_M0", "read", "pending", 1, lambda rc, *a: out.append(rc))
    assert run_until(h, lambda: out) and out == [0]
    h.set_thread(0)
    hd.read(0, 512, back[:512], d.cb("held"))
    h.advance_time_us(10_000)
    h.poll_threads()
    assert len(d.got) == 3 and hd.outstanding == 1
    hd.reset(d.cb("reset"))
    assert run_until(h, lambda: len(d.got) == 5)
    assert sorted(d.got[3:]) == [("held", -errno.EIO, ABORTED), ("reset", 0, GOOD)]
    for v in (data, back):
        hd.free(v)
    hd.close()


def test_enomem_waits_and_resubmits_in_order(h):
    _stub(h, blockcnt=1024, blocklen=512)
    events = []
    hd = BdevHandle("s0", event_cb=events.append)
    d = Done()
    bufs = [hd.alloc(512) for _ in range(20)]
    for i in range(20):
        if i % 2:
            hd.read(i * 512, 512, bufs[i], d.cb(i))
        else:
            hd.write(i * 512, bufs[i], d.cb(i))
    h.poll_threads()
    out = bdev_stub.outstanding("s0")
    assert 0 < len(out) < 20 and len(hd._waiting) == 20 - len(out)   # the pool ran dry
    assert hd.outstanding == 20                            # waiting ones count as outstanding
    order = []
    while len(d.got) < 20:
        order += [io.offset_blocks for io in list(bdev_stub.outstanding("s0"))]
        assert bdev_stub.complete("s0") > 0
        h.poll_threads()
    assert order == list(range(20))                      # submitted in request order
    assert [t for t, _, _ in d.got] == list(range(20)) and all(e == 0 for _, e, _ in d.got)
    assert not hd._waiting and not events and hd.outstanding == 0
    for b in bufs:
        hd.free(b)
    hd.close()


def test_a_refused_submit_is_answered_after_the_call_not_inside_it(h):
    _stub(h, blockcnt=8, blocklen=512)
    hd = BdevHandle("s0")
    d = Done()
    buf = hd.alloc(512)
    hd.read(64 * 512, 512, buf, d.cb("beyond"))           # the layer refuses: -EINVAL
    assert d.got == [] and hd.outstanding == 1
    hd.close()                                            # deferred: the answer is owed
    assert not hd.released
    h.poll_threads()
    assert d.got == [("beyond", -errno.EINVAL, None)] and hd.released


def test_fua_write_on_a_write_cache_bdev_is_followed_by_a_flush_of_its_range(h):
    _stub(h, blockcnt=64, blocklen=512, write_cache=True)
    hd = BdevHandle("s0")
    d = Done()
    buf = hd.alloc(1024)
    buf[:] = b"a" * 1024
    hd.write(2048, buf, d.cb("fua"), fua=True)
    h.poll_threads()
    bdev_stub.complete("s0")
    h.poll_threads()
    assert d.got == []                                   # answered only after the flush
    flush = bdev_stub.outstanding("s0")[0]
    assert (flush.type, flush.offset_blocks, flush.num_blocks) == (B.IO_TYPE_FLUSH, 4, 2)
    bdev_stub.complete("s0")
    h.poll_threads()
    assert d.got == [("fua", 0, None)]
    assert [t for t, *_ in bdev_stub.disk("s0").log] == [B.IO_TYPE_WRITE, B.IO_TYPE_FLUSH]
    hd.write(512, buf, d.cb("failed fua"), fua=True)      # a failed write is not flushed
    h.poll_threads()
    bdev_stub.complete("s0", status=B.IO_STATUS_FAILED)
    h.poll_threads()
    assert d.got[-1] == ("failed fua", -errno.EIO, ABORTED) and not bdev_stub.outstanding("s0")
    hd.free(buf)
    hd.close()


def test_hot_remove_with_ops_outstanding_then_close_after_the_last_op(h):
    _stub(h, blockcnt=64, blocklen=512)
    events = []
    hd = BdevHandle("s0", event_cb=events.append)
    d = Done()
    bufs = [hd.alloc(4096), hd.alloc(4096)]
    hd.read(0, 4096, bufs[0], d.cb("r0"))
    hd.read(4096, 4096, bufs[1], d.cb("r1"))
    h.poll_threads()
    unregistered = []
    B.bdev_unregister(B.get_by_name("s0"), lambda arg, rc: unregistered.append(rc))
    h.poll_threads()
    assert events == ["removed"]
    hd.close()                                           # two ops still outstanding
    h.poll_threads()
    assert not hd.released and not unregistered          # our desc is still open
    bdev_stub.complete("s0", n=1)
    h.poll_threads()
    assert d.got == [("r0", 0, None)] and not hd.released and not unregistered
    bdev_stub.complete("s0", status=B.IO_STATUS_FAILED)
    h.poll_threads()
    assert d.got[1] == ("r1", -errno.EIO, ABORTED)
    assert hd.released and unregistered == [0] and events == ["removed"]   # once
    with pytest.raises(OSError):
        BdevHandle("s0")


def test_buffers_are_arena_views_cached_per_length_and_returned_at_close(h):
    _stub(h, blockcnt=64, blocklen=512)
    from bdev import _manager
    m = _manager.get_manager()
    small0, large0 = m.small_avail, m.large_avail
    hd = BdevHandle("s0")
    a = hd.alloc(4096)
    b = hd.alloc(65536)
    big = hd.alloc(1 << 20)                              # > 64 KiB: private memory
    assert (m.small_avail, m.large_avail) == (small0 - 1, large0 - 1)
    assert len(a) == 4096 and len(b) == 65536 and len(big) == 1 << 20
    assert a.format == "B" and a.contiguous
    hd.free(a)
    assert hd.alloc(4096) is a                          # reused, no new arena buffer
    hd.free(a)
    hd.free(b)
    hd.free(big)
    hd.close()
    assert (m.small_avail, m.large_avail) == (small0, large0)


@pytest.fixture
def small_pools():
    """One reactor whose bdev layer has 8 small (8 KiB) and 4 large (64 KiB) buffers."""
    from bdev import _manager
    saved = dict(_manager._default_opts)
    with Harness(n_threads=1, n_reactors=1) as hh:
        hh.set_thread(0)
        assert B.set_opts({"small_buf_pool_size": 8, "large_buf_pool_size": 4}) == 0
        bdev_stub.init_layer(hh)
        yield hh
        hh.set_thread(0)
        for name in [b.name for b in B.bdevs()]:
            B.bdev_unregister(B.get_by_name(name))
            hh.poll_threads()
        bdev_stub.fini_layer(hh)
    _manager._default_opts.update(saved)


def _drain_dma(size=512):
    """dma_malloc until the pool answers None; the buffers taken."""
    got = []
    while (v := B.dma_malloc(size)) is not None:
        got.append(v)
    return got


def test_buffers_come_from_the_dma_pool_and_freed_ones_are_handed_on(small_pools):
    h = small_pools
    _stub(h, blockcnt=64, blocklen=512)
    hd = BdevHandle("s0")
    held = [hd.alloc(4096), hd.alloc(512), hd.alloc(1024)]     # a quarter of 8: two from the pool
    big = hd.alloc(65536)                                      # a quarter of 4: one large
    # the handle's buffers are accounted in the pool dma_malloc draws from
    others = _drain_dma()
    assert len(others) == 8 - 2
    others_large = _drain_dma(65536)
    assert len(others_large) == 4 - 1
    # pool exhausted: a handle still serves, from private memory, with no stall
    hd2 = BdevHandle("s0")
    buf = hd2.alloc(4096)
    assert buf is not None and len(buf) == 4096
    d = Done()
    hd2.read(0, 4096, buf, d.cb("r"))
    h.poll_threads()
    assert bdev_stub.complete("s0") == 1
    h.poll_threads()
    assert d.got == [("r", 0, None)]
    hd2.free(buf)
    hd2.close()
    # a get_buf waiter of this thread (the small pool is empty) ...
    rc, desc = B.open(B.get_by_name("s0"), False)
    ch = B.get_io_channel(desc)
    cpl = bdev_stub.Cpl()
    assert B.read_blocks(desc, ch, None, 0, 1, cpl, "g") == 0
    h.poll_threads()
    waited = []
    bdev_stub.outstanding("s0")[-1].get_buf(lambda mch, io: waited.append(io), 512)
    assert waited == []
    # ... gets the first buffer the handle gives back when it closes
    for v in held:
        hd.free(v)
    hd.free(big)
    hd.close()
    assert len(waited) == 1 and len(waited[0].iovs[0]) == 512
    back = _drain_dma()
    assert len(back) == 1                                      # the other one went to the pool
    back_large = _drain_dma(65536)
    assert len(back_large) == 1                                # and so did the large one
    bdev_stub.complete("s0")
    h.poll_threads()
    assert cpl.done == [("g", True)]
    for v in others + others_large + back + back_large:
        assert B.dma_free(v) == 0
    m = h.reactors[0].locals["bdev"]
    assert m.buf_pool.in_use == 0 and (m.small_avail, m.large_avail) == (8, 4)
    B.put_io_channel(ch)
    B.close(desc)
    h.poll_threads()
