"""BdevExport in deterministic mode (one reactor, the bdev test stub): geometry and NBD
flags come from the bdev, and each connection's handle is a targets/serve BdevHandle
(tested on its own in test_serve_bdev_handle.py), opened read-only for a read-only export."""
import errno
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bdev_stub  # noqa: E402

import bdev as B  # noqa: E402
from reactor.testing import Harness  # noqa: E402
from targets.nbd import _proto as P  # noqa: E402
from targets.nbd.bdev_export import BdevExport  # noqa: E402
from targets.serve.bdev_handle import BdevHandle  # noqa: E402


@pytest.fixture
def h():
    with Harness(n_threads=1, n_reactors=1) as hh:
        bdev_stub.init_layer(hh)
        yield hh
        hh.set_thread(0)
        for b in [b.name for b in B.bdevs()]:
            x = B.get_by_name(b)
            if x is not None:
                B.bdev_unregister(x)
                hh.poll_threads()
        bdev_stub.fini_layer(hh)


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


def test_open_gives_a_serve_bdev_handle_read_only_for_a_read_only_export(h):
    h.set_thread(0)
    bdev_stub.create("s0", blockcnt=64, blocklen=512)
    h.poll_threads()
    events = []
    rw = BdevExport("s0").open(events.append)
    ro = BdevExport("s0", "ro", readonly=True).open(events.append)
    assert isinstance(rw, BdevHandle) and rw.writable and not ro.writable
    B.bdev_unregister(B.get_by_name("s0"))
    h.poll_threads()
    assert events == ["removed", "removed"]
    rw.close()
    ro.close()
    h.poll_threads()
    assert B.get_by_name("s0") is None
