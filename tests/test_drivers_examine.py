"""Deferred creation by examine (SPDK's passthru, split and raid): a create over a base
that is not registered yet is recorded, the vbdev appears when the base registers (on
every reactor), bdev_wait_for_examine waits for it, delete works in either state, and
save_config writes what is waiting.  Raid: configuring until every base is there, then
online; its size follows its bases.  Deterministic mode, two reactors."""
import errno

import pytest

import bdev_stub
import reactor as rx
from bdev import api
from drivers import malloc, passthru, raid, split
from drivers_util import Io, mk_malloc, pattern, rm, run_until
from reactor.testing import Harness

BS = 512


@pytest.fixture
def h():
    with Harness(n_threads=2, n_reactors=2) as hh:
        bdev_stub.init_layer(hh)
        yield hh
        hh.set_thread(0)
        for name in ("PT0", "PT1"):
            out = []
            passthru.delete(name, out.append)
            run_until(hh, lambda: out)
        for b in reversed([b.name for b in api.bdevs()]):
            if api.get_by_name(b) is not None:
                rm(hh, b)
        for r in list(raid.get_bdevs("configuring")):
            out = []
            raid.delete(r["name"], out.append)
            run_until(hh, lambda: out)
        bdev_stub.fini_layer(hh)


def _rc(h, fn, *args, **kw):
    """Run ``fn(*args, cb)`` on the main thread to its first callback argument."""
    out = []
    h.set_thread(0)
    fn(*args, lambda *a: out.append(a), **kw)
    assert run_until(h, lambda: out)
    return out[0][0] if len(out[0]) == 1 else out[0]


def _on(h, thread, fn):
    h.set_thread(thread)
    try:
        return fn()
    finally:
        h.set_thread(0)


def _names(h, thread):
    return _on(h, thread, lambda: sorted(b.name for b in api.bdevs()))


def _claim(h, thread, name):
    b = _on(h, thread, lambda: api.get_by_name(name))
    return b.claim_module.name if b is not None and b.claim_module is not None else None


def _config(h):
    h.set_thread(0)
    """The saved bdev config between its fixed head (bdev_set_options) and tail
    (bdev_wait_for_examine, which must stay last)."""
    cfg = api.subsystem_config_json()
    assert cfg[0]["method"] == "bdev_set_options" and cfg[-1] == {"method": "bdev_wait_for_examine"}
    return cfg[1:-1]


def _create_base_and_wait(h, name, blocks=256, bare=False):
    """Create a malloc bdev and call wait_for_examine at once, while the examine it
    started is still in progress; returns the bdevs of both reactors when the wait ends
    (``bare``: when nothing examines the base, the wait ends at once, before the base's
    own create reached reactor 1: then the bdevs once the create answered)."""
    h.set_thread(0)
    created, waited = [], []
    malloc.create(name, blocks, BS, None, 0, cb=lambda rc, n: created.append(rc))
    seen = []

    def after(_arg):
        waited.append(1)
        seen.extend([_names(h, 0), _names(h, 1)])
    api.wait_for_examine(after)
    assert run_until(h, lambda: created and waited)
    assert created == [0]
    return [_names(h, 0), _names(h, 1)] if bare else seen


def test_passthru_before_its_base_appears_on_every_reactor_when_the_base_registers(h):
    assert _rc(h, passthru.create, "PT0", "M0") == 0
    assert _names(h, 0) == [] and _names(h, 1) == []
    assert _rc(h, passthru.create, "PT0", "M9") == -errno.EEXIST        # recorded already
    assert _config(h) == [{"method": "bdev_passthru_create",
                           "params": {"name": "PT0", "base_bdev_name": "M0"}}]
    # bdev_wait_for_examine asked while examine is building PT0 answers once it is built
    seen = _create_base_and_wait(h, "M0")
    assert seen == [["M0", "PT0"], ["M0", "PT0"]]
    assert _claim(h, 0, "M0") == "passthru" and _claim(h, 1, "M0") == "passthru"
    # data through reactor 1's replica reaches the base
    io = Io(h, "PT0", 1)
    data = pattern(4 * BS, 3)
    assert io.write(8, data) == (0, True)
    io.close()
    base = Io(h, "M0", 0, write=False)
    assert base.read(8, 4)[1:] == (True, data)
    base.close()
    # built: written once, by the bdev itself, after its base
    assert [e["method"] for e in _config(h)] == ["bdev_malloc_create", "bdev_passthru_create"]


def test_passthru_record_outlives_a_hot_removed_base_and_delete_forgets_it(h):
    assert mk_malloc(h, "M0") == 0
    assert _rc(h, passthru.create, "PT0", "M0") == 0                    # built at once
    assert rm(h, "M0") == 0                                             # base goes: PT0 too
    assert _names(h, 0) == [] and _names(h, 1) == []
    assert _config(h)[0]["method"] == "bdev_passthru_create"            # still recorded
    assert _create_base_and_wait(h, "M0") == [["M0", "PT0"], ["M0", "PT0"]]   # comes back
    assert _rc(h, passthru.delete, "PT0") == 0
    assert _config(h) == [_config(h)[0]] and _config(h)[0]["method"] == "bdev_malloc_create"
    # a waiting one is forgotten by delete, and the base that comes later stays bare
    assert _rc(h, passthru.create, "PT1", "M1") == 0
    assert _rc(h, passthru.delete, "PT1") == 0
    assert _rc(h, passthru.delete, "PT1") == -errno.ENODEV
    assert _create_base_and_wait(h, "M1", bare=True) == [["M0", "M1"], ["M0", "M1"]]
    assert _claim(h, 0, "M1") is None


def test_passthru_create_that_fails_leaves_no_record(h):
    assert mk_malloc(h, "M0") == 0
    assert _rc(h, split.create, "M0", 2) == (0, ["M0p0", "M0p1"])
    assert _rc(h, passthru.create, "PT0", "M0") == -errno.EPERM           # claimed by split
    assert _rc(h, passthru.delete, "PT0") == -errno.ENODEV
    assert [e["method"] for e in _config(h)] == ["bdev_malloc_create", "bdev_split_create"]


def test_deferred_create_failing_on_a_replica_is_undone_everywhere(h, monkeypatch):
    orig = passthru._build

    def build(name, base):
        if rx.current_reactor().index == 1:
            return -errno.ENOMEM
        return orig(name, base)
    monkeypatch.setattr(passthru, "_build", build)
    assert _rc(h, passthru.create, "PT0", "M0") == 0
    assert _create_base_and_wait(h, "M0", bare=True) == [["M0"], ["M0"]]
    assert _claim(h, 0, "M0") is None and _claim(h, 1, "M0") is None


def test_split_before_its_base(h):
    assert _rc(h, split.create, "M0", 2) == (0, [])                       # SPDK answers []
    assert _rc(h, split.create, "M0", 4) == (-errno.EEXIST, [])
    assert _config(h) == [{"method": "bdev_split_create",
                           "params": {"base_bdev": "M0", "split_count": 2}}]
    assert _create_base_and_wait(h, "M0") == [["M0", "M0p0", "M0p1"]] * 2
    assert _rc(h, split.delete, "M0") == 0
    assert _names(h, 0) == ["M0"] and _names(h, 1) == ["M0"]
    # a waiting split is forgotten by delete
    assert _rc(h, split.create, "M1", 2) == (0, [])
    assert _rc(h, split.delete, "M1") == 0
    assert _rc(h, split.delete, "M1") == -errno.ENODEV
    assert _create_base_and_wait(h, "M1", bare=True) == [["M0", "M1"]] * 2


def test_raid_configuring_until_its_last_base_then_online(h):
    assert mk_malloc(h, "M0") == 0
    assert _rc(h, raid.create, "R0", "raid0", ["M0", "M1"], strip_size_kb=4,
               uuid="0b0fa0c2-0000-4000-8000-0000000000aa") == 0
    assert _rc(h, raid.create, "R0", "raid1", ["M2", "M3"]) == -errno.EEXIST
    h.set_thread(0)
    (info,) = raid.get_bdevs("all")
    assert raid.get_bdevs("online") == [] and raid.get_bdevs("configuring") == [info]
    assert info["state"] == "configuring" and info["num_base_bdevs_discovered"] == 1
    assert info["num_base_bdevs_operational"] == 2
    m0, m1 = info["base_bdevs_list"]
    assert m0["is_configured"] and m0["data_size"] == 256 and m0["uuid"] != raid.NULL_UUID
    assert m1 == {"name": "M1", "uuid": raid.NULL_UUID, "is_configured": False,
                  "data_offset": 0, "data_size": 0}
    # a configuring raid holds the bases it has: claimed on both reactors
    assert _claim(h, 0, "M0") == "raid" and _claim(h, 1, "M0") == "raid"
    assert _names(h, 0) == ["M0"]
    entry = {"method": "bdev_raid_create",
             "params": {"name": "R0", "raid_level": "raid0", "base_bdevs": ["M0", "M1"],
                        "strip_size_kb": 4, "uuid": "0b0fa0c2-0000-4000-8000-0000000000aa"}}
    assert entry in _config(h)
    assert _create_base_and_wait(h, "M1") == [["M0", "M1", "R0"]] * 2
    h.set_thread(0)
    (info,) = raid.get_bdevs("online")
    assert info["num_base_bdevs_discovered"] == 2 and api.get_by_name("R0").blockcnt == 512
    assert _claim(h, 1, "M1") == "raid"
    io = Io(h, "R0", 1)
    data = pattern(16 * BS, 5)
    assert io.write(0, data) == (0, True)
    assert io.read(0, 16)[1:] == (True, data)
    io.close()
    assert [e["method"] for e in _config(h)] == ["bdev_malloc_create", "bdev_malloc_create",
                                                  "bdev_raid_create"]


def test_raid_delete_while_configuring_releases_its_bases(h):
    assert mk_malloc(h, "M0") == 0
    assert _rc(h, raid.create, "R0", "raid1", ["M0", "M1"]) == 0
    assert _claim(h, 1, "M0") == "raid"
    assert _rc(h, raid.delete, "R0") == 0
    h.set_thread(0)
    assert raid.get_bdevs("all") == []
    run_until(h, lambda: _claim(h, 1, "M0") is None)
    assert _claim(h, 0, "M0") is None and _claim(h, 1, "M0") is None
    assert _rc(h, raid.delete, "R0") == -errno.ENODEV
    assert _create_base_and_wait(h, "M1", bare=True) == [["M0", "M1"]] * 2


def test_raid_configuring_refuses_a_claimed_or_mismatched_base(h):
    assert mk_malloc(h, "M0") == 0
    assert _rc(h, passthru.create, "PT0", "M0") == 0
    assert _rc(h, raid.create, "R0", "raid0", ["M0", "M1"], strip_size_kb=4) == -errno.EPERM
    h.set_thread(0)
    assert raid.get_bdevs("all") == []
    # a base that arrives with another block size is not taken: the raid keeps waiting
    assert mk_malloc(h, "M2", bs=512) == 0
    assert _rc(h, raid.create, "R1", "raid1", ["M2", "M3"]) == 0
    assert mk_malloc(h, "M3", blocks=64, bs=4096) == 0
    assert run_until(h, lambda: True)
    h.set_thread(0)
    (info,) = raid.get_bdevs("configuring")
    assert [b["is_configured"] for b in info["base_bdevs_list"]] == [True, False]
    assert _claim(h, 0, "M3") is None


def test_a_stack_created_top_down_builds_bottom_up(h):
    """passthru over a split part over a raid over two mallocs, each created before what
    it sits on: all of it appears, on both reactors, once the mallocs do."""
    assert _rc(h, passthru.create, "PT0", "R0p1") == 0
    assert _rc(h, split.create, "R0", 2) == (0, [])
    assert _rc(h, raid.create, "R0", "concat", ["M0", "M1"], strip_size_kb=4) == 0
    assert mk_malloc(h, "M0") == 0
    want = ["M0", "M1", "PT0", "R0", "R0p0", "R0p1"]
    assert _create_base_and_wait(h, "M1") == [want, want]
    io = Io(h, "PT0", 1)
    data = pattern(2 * BS, 9)
    assert io.write(0, data) == (0, True)
    assert io.read(0, 2)[1:] == (True, data)
    io.close()
