"""BdevExport / BdevHandle in deterministic mode (one reactor, mock clock, the bdev test stub
that holds I/O until the test completes it): geometry and flags from the bdev, ENOMEM ->
queue_io_wait -> resubmit in order, FUA on a write-cache bdev, hot-remove, buffers."""
import errno
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bdev_stub  # noqa: E402

import bdev as B  # noqa: E402
from drivers.nbd import _proto as P  # noqa: E402
from drivers.nbd.bdev_export import BdevExport  # noqa: E402
from reactor.testing import Harness  # noqa: E402


@pytest.fixture
def h():
    with Harness(n_threads=1, n_reactors=1) as hh:
        # a tiny bdev_io pool: 8 per reactor, 2 cached per thread
        bdev_stub.init_layer(hh, conf={"BdevIoPoolSize": 8, "BdevIoCacheSize": 2})
        yield hh
        hh.set_thread(0)
        for b in [b.name for b in B.bdevs()]:
            x = B.get_by_name(b)
            if x is not None:
                B.bdev_unregister(x)
                hh.poll_threads()
        bdev_stub.fini_layer(hh)


class Done:
    def __init__(self):
        self.got = []

    def cb(self, tag):
        return lambda err: self.got.append((tag, err))


def test_geometry_and_flags_come_from_the_bdev(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=256, blocklen=4096, write_cache=True)
    h.poll_threads()
    e = BdevExport("s0")
    assert (e.name, e.size, e.block_min, e.block_preferred) == ("s0", 256 * 4096, 4096, 4096)
    f = e.transmission_flags()
    for bit in (P.TF_SEND_FLUSH, P.TF_SEND_FUA, P.TF_SEND_TRIM, P.TF_SEND_WRITE_ZEROES, P.TF_CAN_MULTI_CONN):
        assert f & bit
    assert not f & P.TF_READ_ONLY and e.fua_needs_flush
    bdev_stub.disk("s0").supported -= {B.IO_TYPE_FLUSH, B.IO_TYPE_UNMAP}
    e2 = BdevExport("s0", "other", readonly=True)
    f2 = e2.transmission_flags()
    assert f2 & P.TF_READ_ONLY and not f2 & (P.TF_SEND_FLUSH | P.TF_SEND_TRIM | P.TF_SEND_FUA)
    with pytest.raises(OSError) as exc:
        BdevExport("nope")
    assert exc.value.errno == errno.ENODEV


def test_enomem_waits_and_resubmits_in_order(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=1024, blocklen=512)
    h.poll_threads()
    e = BdevExport("s0")
    events = []
    hd = e.open(lambda ev, ex: events.append(ev))
    d = Done()
    bufs = [hd.alloc(512) for _ in range(20)]
    for i in range(20):
        hd.read(i * 512, 512, bufs[i], d.cb(i))
    h.poll_threads()
    out = bdev_stub.outstanding("s0")
    assert 0 < len(out) < 20 and len(hd._waiting) == 20 - len(out)   # the pool ran dry
    order = []
    while len(d.got) < 20:
        order += [io.offset_blocks for io in list(bdev_stub.outstanding("s0"))]
        assert bdev_stub.complete("s0") > 0
        h.poll_threads()
    assert order == list(range(20))                      # submitted in request order
    assert [t for t, _ in d.got] == list(range(20)) and all(err == 0 for _, err in d.got)
    assert not hd._waiting and not events
    for b in bufs:
        hd.free(b)
    hd.close()


def test_fua_write_on_a_write_cache_bdev_is_followed_by_a_flush(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=64, blocklen=512, write_cache=True)
    h.poll_threads()
    hd = BdevExport("s0").open(lambda *a: None)
    d = Done()
    buf = hd.alloc(512)
    buf[:] = b"a" * 512
    hd.write(0, buf, True, d.cb("fua"))
    h.poll_threads()
    bdev_stub.complete("s0")
    h.poll_threads()
    assert d.got == []                                   # answered only after the flush
    bdev_stub.complete("s0")
    h.poll_threads()
    assert d.got == [("fua", 0)]
    assert [t for t, *_ in bdev_stub.disk("s0").log] == [B.IO_TYPE_WRITE, B.IO_TYPE_FLUSH]
    hd.write(512, buf, False, d.cb("plain"))
    h.poll_threads()
    bdev_stub.complete("s0", status=B.IO_STATUS_FAILED)
    h.poll_threads()
    assert d.got[-1] == ("plain", errno.EIO)
    hd.free(buf)
    hd.close()


def test_hot_remove_notifies_and_outstanding_io_still_completes(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=64, blocklen=512)
    h.poll_threads()
    e = BdevExport("s0")
    events = []
    hd = e.open(lambda ev, ex: events.append((ev, ex.name)))
    d = Done()
    buf = hd.alloc(4096)
    hd.read(0, 4096, buf, d.cb("r"))
    h.poll_threads()
    unregistered = []
    B.bdev_unregister(B.get_by_name("s0"), lambda arg, rc: unregistered.append(rc))
    h.poll_threads()
    assert events == [("removed", "s0")]
    assert not unregistered                              # our desc is still open
    bdev_stub.complete("s0", status=B.IO_STATUS_FAILED)
    h.poll_threads()
    assert d.got == [("r", errno.EIO)]
    hd.free(buf)
    hd.close()
    h.poll_threads()
    assert unregistered == [0]
    with pytest.raises(OSError):
        e.open(lambda *a: None)


def test_buffers_are_arena_views_cached_per_length_and_returned_at_close(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=64, blocklen=512)
    h.poll_threads()
    from bdev import _manager
    m = _manager.get_manager()
    small0, large0 = m.small_avail, m.large_avail
    hd = BdevExport("s0").open(lambda *a: None)
    a = hd.alloc(4096)
    b = hd.alloc(65536)
    big = hd.alloc(1 << 20)                              # > 64 KiB: private memory
    assert (m.small_avail, m.large_avail) == (small0 - 1, large0 - 1)
    assert len(a) == 4096 and len(b) == 65536 and len(big) == 1 << 20
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


def test_export_buffers_come_from_the_dma_pool_and_freed_ones_are_handed_on(small_pools):
    h = small_pools
    bdev_stub.create("s0", blockcnt=64, blocklen=512)
    h.poll_threads()
    e = BdevExport("s0")
    hd = e.open(lambda *a: None)
    held = [hd.alloc(4096), hd.alloc(512), hd.alloc(1024)]     # a quarter of 8: two from the pool
    big = hd.alloc(65536)                                      # a quarter of 4: one large
    # the export's buffers are accounted in the pool dma_malloc draws from
    others = _drain_dma()
    assert len(others) == 8 - 2
    others_large = _drain_dma(65536)
    assert len(others_large) == 4 - 1
    # pool exhausted: the export still serves, from private memory, with no stall
    hd2 = e.open(lambda *a: None)
    buf = hd2.alloc(4096)
    assert buf is not None and len(buf) == 4096
    d = Done()
    hd2.read(0, 4096, buf, d.cb("r"))
    h.poll_threads()
    assert bdev_stub.complete("s0") == 1
    h.poll_threads()
    assert d.got == [("r", 0)]
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
    # ... gets the first buffer the export gives back when its connection ends
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
