"""Every bdev and module RPC with good and bad parameters (missing, wrong type, unknown
bdev, duplicate name), checking the error (SPDK's codes and messages) and that the state
is unchanged after it; the bdev-layer RPCs (iostat, QoS, histograms, examine, config)
against a real two-reactor target."""
import base64
import errno
import os
import struct

import pytest

from reactor.rpc import RpcError
from test_drivers_process import BS, Target, pattern


@pytest.fixture
def clean(tmp_path):
    """A fresh two-reactor target per test (the leak guard reaps children between tests);
    each test must leave it empty and it must stop cleanly."""
    t = Target(tmp_path)
    try:
        yield t
        assert t.call("bdev_get_bdevs") == [], "test left bdevs behind"
    finally:
        rc, err = t.stop()
    assert rc == 0, err
    assert "Traceback" not in err, err


def err(t, method, **params):
    with pytest.raises(RpcError) as ei:
        t.call(method, **params)
    return ei.value.code, ei.value.message


def state(t):
    return sorted((b["name"], b["claimed"], b["num_blocks"]) for b in t.call("bdev_get_bdevs"))


def test_malloc_and_null_good_and_bad(clean):
    t = clean
    assert t.call("bdev_malloc_create", num_blocks=16, block_size=BS) == "Malloc0"   # default name
    assert t.call("bdev_malloc_create", name="M1", num_blocks=16, block_size=4096,
                  uuid="0b0fa0c2-0000-4000-8000-000000000001") == "M1"
    assert t.call("bdev_get_bdevs", name="M1")[0]["uuid"] == "0b0fa0c2-0000-4000-8000-000000000001"
    before = state(t)
    assert err(t, "bdev_malloc_create", name="M1", num_blocks=16, block_size=BS) == (-17, "File exists")
    code, msg = err(t, "bdev_malloc_create", name="M2", block_size=BS)
    assert code == -32602 and "num_blocks" in msg
    code, msg = err(t, "bdev_malloc_create", name="M2", num_blocks="16", block_size=BS)
    assert code == -32602 and "num_blocks" in msg
    assert err(t, "bdev_malloc_create", name="M2", num_blocks=16, block_size=1000)[0] == -errno.EINVAL
    assert err(t, "bdev_malloc_delete", name="nope") == (-19, "No such device")
    assert state(t) == before
    assert t.call("bdev_null_create", name="N0", num_blocks=2048, block_size=BS) == "N0"
    assert err(t, "bdev_null_create", name="N0", num_blocks=8, block_size=BS) == (-17, "File exists")
    assert err(t, "bdev_null_create", num_blocks=8, block_size=BS)[0] == -32602
    assert t.call("bdev_null_resize", name="N0", new_size=2) is True
    assert t.call("bdev_get_bdevs", name="N0")[0]["num_blocks"] == 2 * 2048
    assert err(t, "bdev_null_resize", name="M1", new_size=2) == (-19, "No such device")
    assert err(t, "bdev_null_delete", name="M1") == (-19, "No such device")   # not a null bdev
    for name, m in (("N0", "bdev_null_delete"), ("M1", "bdev_malloc_delete"), ("Malloc0", "bdev_malloc_delete")):
        assert t.call(m, name=name) is True


def test_vbdev_rpcs_good_and_bad(clean, tmp_path):
    t = clean
    for i in range(4):
        t.call("bdev_malloc_create", name=f"B{i}", num_blocks=256, block_size=BS)
    base = state(t)
    # passthru
    # a base that does not exist yet: recorded (SPDK's deferred creation, examine builds
    # it when the base registers); a second create of the name is -EEXIST; delete forgets it
    assert t.call("bdev_passthru_create", name="P0", base_bdev_name="nope") == "P0"
    assert err(t, "bdev_passthru_create", name="P0", base_bdev_name="B0") == (-17, "File exists")
    assert t.call("bdev_passthru_delete", name="P0") is True
    assert err(t, "bdev_passthru_create", name="B1", base_bdev_name="B0") == (-17, "File exists")
    assert err(t, "bdev_passthru_create", name="P0")[0] == -32602
    assert err(t, "bdev_passthru_create", name=5, base_bdev_name="B0")[0] == -32602
    assert state(t) == base
    assert t.call("bdev_passthru_create", name="P0", base_bdev_name="B0") == "P0"
    assert err(t, "bdev_passthru_create", name="P1", base_bdev_name="B0") == (-1, "Operation not permitted")
    # split
    assert t.call("bdev_split_create", base_bdev="nope", split_count=2) == []    # waits for its base
    assert t.call("bdev_split_delete", base_bdev="nope") is True
    # (SPDK's vbdev_split_rpc.c: -32602 with the count, the base and strerror)
    assert err(t, "bdev_split_create", base_bdev="B0", split_count=2) == \
        (-32602, "Failed to create 2 split bdevs from 'B0': Operation not permitted")  # claimed
    assert err(t, "bdev_split_create", base_bdev="B1", split_count=2, split_size_mb=1) == \
        (-32602, "Failed to create 2 split bdevs from 'B1': Invalid argument")
    assert err(t, "bdev_split_create", base_bdev="B1", split_count=0)[0] == -32602
    assert err(t, "bdev_split_delete", base_bdev="B1") == (-32602, "No such device")
    # error
    assert err(t, "bdev_error_create", base_name="nope") == (-19, "No such device")
    assert t.call("bdev_error_create", base_name="B1") is True
    assert err(t, "bdev_error_create", base_name="B1")[0] in (-17, -1)
    assert err(t, "bdev_error_inject_error", name="EE_nope", io_type="read", error_type="failure") == (-19, "No such device")
    assert err(t, "bdev_error_inject_error", name="EE_B1", io_type="bogus", error_type="failure")[0] == -32602
    assert err(t, "bdev_error_inject_error", name="EE_B1", io_type="read", error_type="bogus")[0] == -32602
    assert t.call("bdev_error_inject_error", name="EE_B1", io_type="read", error_type="failure", num=1) is True
    r = t.io("EE_B1", 0, "read", off=0, num=1)
    assert (r["rc"], r["success"]) == (0, False)            # injected on reactor 0
    assert t.io("EE_B1", 0, "read", off=0, num=1)["success"] is True   # num=1 consumed
    assert t.call("bdev_error_inject_error", name="EE_B1", io_type="clear", error_type="failure") is True
    # delay
    kw = dict(avg_read_latency=10, p99_read_latency=20, avg_write_latency=10, p99_write_latency=20)
    assert err(t, "bdev_delay_create", name="D0", base_bdev_name="nope", **kw) == (-19, "No such device")
    assert err(t, "bdev_delay_create", name="D0", base_bdev_name="B2", avg_read_latency=30,
               p99_read_latency=20, avg_write_latency=1, p99_write_latency=2)[0] == -errno.EINVAL
    assert err(t, "bdev_delay_create", name="D0", base_bdev_name="B2")[0] == -32602
    assert t.call("bdev_delay_create", name="D0", base_bdev_name="B2", **kw) == "D0"
    assert t.call("bdev_delay_update_latency", delay_bdev_name="D0", latency_type="avg_read", latency_us=15) is True
    assert err(t, "bdev_delay_update_latency", delay_bdev_name="D0", latency_type="avg_read", latency_us=99)[0] == -errno.EINVAL
    assert err(t, "bdev_delay_update_latency", delay_bdev_name="nope", latency_type="avg_read",
               latency_us=1) == (-32602, "The requested bdev does not exist.")      # SPDK's texts
    assert err(t, "bdev_delay_update_latency", delay_bdev_name="B3", latency_type="avg_read",
               latency_us=1) == (-32600, "The requested bdev is not a delay bdev.")
    assert err(t, "bdev_delay_update_latency", delay_bdev_name="D0", latency_type="bogus", latency_us=1)[0] == -32602
    assert t.call("bdev_get_bdevs", name="D0")[0]["driver_specific"]["delay"]["avg_read_latency"] == 15
    # raid
    mid = state(t)
    assert t.call("bdev_raid_create", name="R0", raid_level="raid0", base_bdevs=["B3", "nope"], strip_size_kb=4) is True
    (r,) = t.call("bdev_raid_get_bdevs", category="configuring")
    assert r["name"] == "R0" and [b["is_configured"] for b in r["base_bdevs_list"]] == [True, False]
    assert t.call("bdev_raid_delete", name="R0") is True
    assert t.call("bdev_raid_get_bdevs") == []
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid0", base_bdevs=["B3", "B0"], strip_size_kb=4)[0] == -1
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid0", base_bdevs=["B3"], strip_size_kb=3)[0] == -errno.EINVAL
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid5", base_bdevs=["B3"], strip_size_kb=4)[0] == -32602
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid1", base_bdevs=["B3"])[0] == -errno.EINVAL
    assert err(t, "bdev_raid_create", name="B3", raid_level="concat", base_bdevs=["B3"], strip_size_kb=4) == \
        (-17, "Failed to create RAID bdev B3: File exists")
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid0", base_bdevs=["B3", ""], strip_size_kb=4) == \
        (-22, "The base bdev name cannot be empty: Invalid argument")
    assert err(t, "bdev_raid_create", name="R0", raid_level="raid0", base_bdevs="B3", strip_size_kb=4)[0] == -32602
    assert state(t) == mid
    assert t.call("bdev_raid_create", name="R0", raid_level="concat", base_bdevs=["B3"], strip_size_kb=4) is True
    info = t.call("bdev_raid_get_bdevs", category="online")
    assert [r["name"] for r in info] == ["R0"] and info[0]["raid_level"] == "concat"
    assert info[0]["base_bdevs_list"][0]["name"] == "B3" and info[0]["num_base_bdevs"] == 1
    assert t.call("bdev_raid_get_bdevs", category="offline") == []
    assert err(t, "bdev_raid_get_bdevs", category="bogus")[0] == -32602
    assert err(t, "bdev_raid_delete", name="B3") == (-19, "raid bdev B3 not found")
    # save_config writes every vbdev, bases first
    cfg = t.call("framework_get_config", name="bdev")
    methods = [e["method"] for e in cfg]
    assert methods.index("bdev_malloc_create") < methods.index("bdev_passthru_create")
    for m in ("bdev_passthru_create", "bdev_error_create", "bdev_delay_create", "bdev_raid_create"):
        assert m in methods
    # tear down, deleting each vbdev by its own RPC
    for m, p in [("bdev_raid_delete", {"name": "R0"}), ("bdev_delay_delete", {"name": "D0"}),
                 ("bdev_error_delete", {"name": "EE_B1"}), ("bdev_passthru_delete", {"name": "P0"})]:
        assert t.call(m, **p) is True
        assert err(t, m, **p) == (-19, "raid bdev R0 not found" if m == "bdev_raid_delete"
                                  else "No such device")
    assert state(t) == base
    for i in range(4):
        t.call("bdev_malloc_delete", name=f"B{i}")


def test_aio_rpc_good_and_bad(clean, tmp_path):
    t = clean
    img = tmp_path / "f.img"
    with open(img, "wb") as f:
        f.truncate(64 * 4096)
    assert err(t, "bdev_aio_create", name="A0", filename=str(tmp_path / "missing")) == (-2, "No such file or directory")
    assert err(t, "bdev_aio_create", name="A0", filename=str(img), block_size=1000)[0] == -errno.EINVAL
    assert err(t, "bdev_aio_create", name="A0")[0] == -32602
    assert t.call("bdev_get_bdevs") == []
    assert t.call("bdev_aio_create", name="A0", filename=str(img), block_size=4096) == "A0"
    assert err(t, "bdev_aio_create", name="A0", filename=str(img)) == (-17, "File exists")
    assert t.call("bdev_aio_create", name="A1", filename=str(img), readonly=True) == "A1"
    b = t.call("bdev_get_bdevs", name="A1")[0]
    assert b["num_blocks"] == 64 * 8 and b["supported_io_types"]["write"] is False
    assert b["driver_specific"]["aio"]["readonly"] is True
    assert t.call("bdev_aio_delete", name="A1") is True
    assert t.call("bdev_aio_delete", name="A0") is True
    assert err(t, "bdev_aio_delete", name="A0") == (-19, "No such device")


def test_bdev_layer_rpcs(clean):
    t = clean
    t.call("bdev_malloc_create", name="Q0", num_blocks=256, block_size=BS)
    b = t.call("bdev_get_bdevs", name="Q0")[0]
    for k in ("name", "aliases", "product_name", "block_size", "num_blocks", "uuid",
              "assigned_rate_limits", "claimed", "zoned", "supported_io_types", "driver_specific"):
        assert k in b, k
    assert err(t, "bdev_get_bdevs", name="nope") == (-19, "No such device")
    assert err(t, "bdev_get_bdevs", name="nope", timeout=50) == (-19, "No such device")
    assert err(t, "bdev_get_bdevs", name=1)[0] == -32602
    assert t.call("bdev_wait_for_examine") is True
    # iostat: I/O on both reactors is summed
    t.io("Q0", 0, "write", off=0, data=pattern(BS, 1))
    t.io("Q0", 1, "read", off=0, num=2)
    st = t.call("bdev_get_iostat", name="Q0")
    assert st["tick_rate"] > 0 and len(st["bdevs"]) == 1
    s = st["bdevs"][0]
    assert (s["num_write_ops"], s["bytes_written"], s["num_read_ops"], s["bytes_read"]) == (1, BS, 1, 2 * BS)
    assert err(t, "bdev_get_iostat", name="nope") == (-19, "No such device")
    assert t.call("bdev_reset_iostat", name="Q0") is True
    assert t.call("bdev_get_iostat", name="Q0")["bdevs"][0]["num_write_ops"] == 0
    assert err(t, "bdev_reset_iostat", name="nope") == (-19, "No such device")
    # QoS
    assert t.call("bdev_set_qos_limit", name="Q0", rw_ios_per_sec=20000) is True
    assert t.call("bdev_get_bdevs", name="Q0")[0]["assigned_rate_limits"]["rw_ios_per_sec"] == 20000
    assert err(t, "bdev_set_qos_limit", name="nope", rw_ios_per_sec=20000) == (-19, "No such device")
    assert err(t, "bdev_set_qos_limit", name="Q0")[0] == -32602
    assert err(t, "bdev_set_qos_limit", name="Q0", rw_ios_per_sec=-1)[0] == -32602
    assert t.io("Q0", 1, "write", off=1, data=pattern(BS, 2))["success"]    # I/O flows under QoS
    assert t.call("bdev_set_qos_limit", name="Q0", rw_ios_per_sec=0) is True
    assert t.call("bdev_get_bdevs", name="Q0")[0]["assigned_rate_limits"]["rw_ios_per_sec"] == 0
    # histograms
    assert err(t, "bdev_get_histogram", name="Q0")[0] == -errno.EFAULT   # not enabled
    assert t.call("bdev_enable_histogram", name="Q0", enable=True) is True
    t.io("Q0", 0, "read", off=0, num=1)
    t.io("Q0", 1, "read", off=0, num=1)
    h = t.call("bdev_get_histogram", name="Q0")
    # test_bdev_io opens and closes a channel per I/O: closed channels' counts are kept
    assert len(h["buckets"]) == 65 and h["histogram"] and h["tsc_rate"] == 1_000_000_000
    assert sum(h["buckets"]) == 2
    blob = base64.b64decode(h["histogram"])
    assert list(struct.unpack(f"<{len(blob) // 8}Q", blob)) == h["buckets"]
    assert err(t, "bdev_enable_histogram", name="nope", enable=True) == (-19, "No such device")
    assert t.call("bdev_enable_histogram", name="Q0", enable=False) is True
    # options are STARTUP only
    code, msg = err(t, "bdev_set_options", bdev_io_pool_size=1024)
    assert code == -1      # SPDK: wrong state
    assert t.call("bdev_malloc_delete", name="Q0") is True


def _seen_on(t, name, reactor, block=0):
    """What reactor ``reactor``'s replica says of ``name``: 0 (a read at ``block``
    works), -19 (no such bdev there), -22 (``block`` is past its end)."""
    return t.io(name, reactor, "read", off=block, num=1)["rc"]


def test_a_failed_change_is_kept_by_no_reactor(clean):
    """docs/architecture.md, All or nothing: arguments another reactor could not receive
    are refused before the main reactor applies anything; checked on both reactors."""
    t = clean
    assert t.call("bdev_null_create", name="N0", num_blocks=2048, block_size=BS) == "N0"
    t.call("bdev_set_qos_limit", name="N0", rw_ios_per_sec=20000)
    before = state(t)
    for params in ({"name": "Nbig", "num_blocks": 2 ** 64, "block_size": BS},
                   {"name": "Nbig", "num_blocks": 2 ** 63, "block_size": 2 ** 20}):
        code, _ = err(t, "bdev_null_create", **params)
        assert code in (-32602, -errno.EINVAL)
    code, _ = err(t, "bdev_null_resize", name="N0", new_size=2 ** 44)    # 2**64 bytes
    assert code in (-32602, -errno.EINVAL)
    for limit in ({"rw_ios_per_sec": 2 ** 64}, {"rw_mbytes_per_sec": 2 ** 63},
                  {"r_mbytes_per_sec": 2 ** 63}, {"w_mbytes_per_sec": 2 ** 64}):
        code, _ = err(t, "bdev_set_qos_limit", name="N0", **limit)
        assert code in (-32602, -errno.EINVAL)
    code, _ = err(t, "bdev_delay_create", name="D0", base_bdev_name="N0", avg_read_latency=2 ** 64,
                  p99_read_latency=2 ** 64, avg_write_latency=1, p99_write_latency=2)
    assert code in (-32602, -errno.EINVAL)
    for bad in ("not-a-uuid", "u" * 100000):
        code, msg = err(t, "bdev_malloc_create", name="Mu", num_blocks=8, block_size=BS, uuid=bad)
        assert code == -32602 and "uuid" in msg
    assert state(t) == before                                   # listed, claimed, size: as before
    assert t.call("bdev_get_bdevs", name="N0")[0]["assigned_rate_limits"]["rw_ios_per_sec"] == 20000
    for r in (0, 1):
        assert _seen_on(t, "Nbig", r) == -19
        assert _seen_on(t, "D0", r) == -19
        assert _seen_on(t, "N0", r, block=2047) == 0 and _seen_on(t, "N0", r, block=2048) == -22
        assert t.io("N0", r, "write", off=0, num=1, data=b"\0" * BS)["rc"] == 0   # not claimed
    assert t.call("bdev_null_delete", name="N0") is True
