"""One conformance suite, run against every module and stack (STYLE.md 14): data written
on one reactor reads back on the other, out-of-range I/O is -EINVAL, every io type a bdev
claims works, reset works, and hot-removing the bottom of the stack reaches an open
descriptor and tears the stack down.  Deterministic mode: two reactors in one process,
mock clock (aio I/O is real kernel I/O, waited for with a bound)."""
import errno

import pytest

import bdev_stub
from bdev import api
from reactor.testing import Harness
from drivers import aio, delay, error, passthru, raid, rbd, split
from drivers_util import Io, mk_malloc, mk_null, pattern, rm, run_until

BS = 512


def _cb(out):
    return lambda *a: out.append(a[0])


def _wait(h, out):
    assert run_until(h, lambda: out)
    return out[0]


# Each stack: build(h, tmp_path) -> (target name, bottom bdev names, checks data?)
def s_malloc(h, tmp):
    assert mk_malloc(h, "M0") == 0
    return "M0", ["M0"], True


def s_null(h, tmp):
    assert mk_null(h, "N0") == 0
    return "N0", ["N0"], False


def s_aio(h, tmp):
    path = tmp / "aio.img"
    with open(path, "wb") as f:
        f.truncate(256 * BS)
    out = []
    h.set_thread(0)
    aio.create("A0", str(path), _cb(out), block_size=BS)
    assert _wait(h, out) == 0
    return "A0", ["A0"], True


def s_rbd(h, cluster):
    """A 128 KiB image of the session's Ceph cluster (tests/ceph_cluster.py); each reactor
    opens it with its own librados client."""
    img = cluster.new_image(size="128K")
    out = []
    h.set_thread(0)
    rbd.create("Rbd0", "rbd", img, BS, _cb(out), config={"mon_host": cluster.mon_host(),
                                                          "auth_client_required": "none"})
    assert _wait(h, out) == 0
    return "Rbd0", ["Rbd0"], True


def _over_malloc(create):
    def build(h, tmp):
        assert mk_malloc(h, "M0") == 0
        out = []
        h.set_thread(0)
        name = create(out)
        rc = _wait(h, out)
        assert rc == 0, rc
        return name, ["M0"], True
    return build


s_passthru = _over_malloc(lambda out: (passthru.create("P0", "M0", _cb(out)), "P0")[1])
s_error = _over_malloc(lambda out: (error.create("M0", _cb(out)), "EE_M0")[1])
s_delay = _over_malloc(lambda out: (delay.create("D0", "M0", 10, 50, 20, 80, _cb(out)), "D0")[1])


def s_split(h, tmp):
    assert mk_malloc(h, "M0") == 0
    out = []
    h.set_thread(0)
    split.create("M0", 2, lambda rc, names: out.append(rc))
    assert _wait(h, out) == 0
    return "M0p1", ["M0"], True


def _raid(level, strip):
    def build(h, tmp):
        assert mk_malloc(h, "M0") == 0
        assert mk_malloc(h, "M1", blocks=192) == 0
        out = []
        h.set_thread(0)
        raid.create("R0", level, ["M0", "M1"], _cb(out), strip_size_kb=strip)
        assert _wait(h, out) == 0
        return "R0", ["M0", "M1"], True
    return build


STACKS = {"malloc": s_malloc, "null": s_null, "aio": s_aio, "passthru": s_passthru,
          "split": s_split, "error": s_error, "delay": s_delay,
          "raid0": _raid("raid0", 4), "raid1": _raid("raid1", 0), "concat": _raid("concat", 4),
          "rbd": s_rbd}


@pytest.fixture(params=sorted(STACKS))
def stack(request, tmp_path):
    with Harness(n_threads=2, n_reactors=2) as h:
        bdev_stub.init_layer(h)
        where = request.getfixturevalue("ceph_cluster") if request.param == "rbd" else tmp_path
        name, bottom, data = STACKS[request.param](h, where)
        h.kind = request.param
        yield h, name, bottom, data
        h.set_thread(0)
        for b in reversed([b.name for b in api.bdevs()]):
            if api.get_by_name(b) is not None and api.get_by_name(b).claim_module is None:
                rm(h, b)
        for b in [b.name for b in api.bdevs()]:
            if api.get_by_name(b) is not None:
                rm(h, b)
        for i in (0, 1):
            h.set_thread(i)
            assert [b.name for b in api.bdevs()] == []
        bdev_stub.fini_layer(h)


def test_registered_on_both_reactors_with_same_geometry(stack):
    h, name, bottom, data = stack
    geo = []
    for t in (0, 1):
        h.set_thread(t)
        b = api.get_by_name(name)
        assert b is not None
        geo.append((b.blocklen, b.blockcnt))
    assert geo[0] == geo[1] and geo[0][1] > 0


def test_data_written_on_one_reactor_reads_back_on_the_other(stack):
    h, name, bottom, data = stack
    w = Io(h, name, 0)
    r = Io(h, name, 1, write=False)
    n = w.desc.bdev.blockcnt
    # a run that crosses raid strips (8 blocks) and the split/concat boundaries, the first
    # and the last blocks
    cases = [(0, 1), (5, 16), (n - 3, 3), (n // 2 - 4, 8)]
    for i, (off, cnt) in enumerate(cases):
        buf = pattern(cnt * BS, seed=i + 3)
        assert w.write(off, buf) == (0, True)
        rc, ok, got = r.read(off, cnt)
        assert (rc, ok) == (0, True)
        if data:
            assert got == buf, f"{h.kind}: mismatch at {off}+{cnt}"
    w.close()
    r.close()


def test_out_of_range_is_einval_and_nothing_is_submitted(stack):
    h, name, bottom, data = stack
    io = Io(h, name, 0)
    n = io.desc.bdev.blockcnt
    assert io.write(n, bytes(BS))[0] == -errno.EINVAL
    assert io.read(n - 1, 2)[0] == -errno.EINVAL
    assert io.run(api.unmap_blocks, n, 1)[0] == -errno.EINVAL
    assert io.run(api.read_blocks, bytearray(BS), (1 << 64) - 1, 2)[0] == -errno.EINVAL
    io.close()


def test_every_supported_io_type_completes(stack):
    h, name, bottom, data = stack
    io = Io(h, name, 0)
    b = io.desc.bdev
    n = b.blockcnt
    assert api.io_type_supported(b, api.IO_TYPE_READ) and api.io_type_supported(b, api.IO_TYPE_WRITE)
    if api.io_type_supported(b, api.IO_TYPE_FLUSH):
        assert io.run(api.flush_blocks, 0, n) == (0, True)
    if api.io_type_supported(b, api.IO_TYPE_UNMAP):
        assert io.run(api.unmap_blocks, 2, 20) == (0, True)
    assert io.write(1, pattern(30 * BS)) == (0, True)
    assert io.run(api.write_zeroes_blocks, 4, 20) == (0, True)
    if data:
        rc, ok, got = io.read(1, 30)
        want = pattern(30 * BS)
        assert got[:3 * BS] == want[:3 * BS]
        assert got[3 * BS:23 * BS] == bytes(20 * BS)
        assert got[23 * BS:] == want[23 * BS:]
    if api.io_type_supported(b, api.IO_TYPE_RESET):
        assert io.run(api.reset) == (0, True)
        assert io.write(0, pattern(BS)) == (0, True)     # usable after the reset
    io.close()


def test_hot_remove_of_the_bottom_reaches_open_descs_and_tears_down(stack):
    h, name, bottom, data = stack
    ev0, ev1 = [], []
    a = Io(h, name, 0, events=ev0)
    b = Io(h, name, 1, write=False, events=ev1)
    if h.kind == "raid1":
        # one base gone: the mirror keeps serving, data intact
        assert rm_async(h, bottom[0])
        assert run_until(h, lambda: api.get_by_name(bottom[0]) is None)
        buf = pattern(8 * BS, seed=9)
        assert a.write(3, buf) == (0, True)
        assert b.read(3, 8)[2] == buf
        h.set_thread(0)
        info = raid.get_bdevs("all")[0]
        assert info["num_base_bdevs_discovered"] == 1 and info["state"] == "online"
        bottom = bottom[1:]
    done = [rm_async(h, x) for x in bottom]
    assert run_until(h, lambda: ev0 and ev1), f"{h.kind}: no remove event"
    assert ev0 == [api.EVENT_REMOVE] and ev1 == [api.EVENT_REMOVE]
    a.close()
    b.close()
    assert run_until(h, lambda: all(d[0] for d in done))
    assert all(d[0] == [0] for d in done), done
    for t in (0, 1):
        h.set_thread(t)
        assert api.get_by_name(name) is None
        assert all(api.get_by_name(x) is None for x in bottom)


def rm_async(h, name):
    """Start deleting ``name``; returns a [results] box filled when done."""
    from drivers import malloc, null
    h.set_thread(0)
    box = [[]]
    b = api.get_by_name(name)
    fn = {"malloc": malloc.delete, "null": null.delete, "aio": aio.delete,
          "rbd": rbd.delete}[b.module.name]
    fn(name, lambda rc: box[0].append(rc))
    return box
