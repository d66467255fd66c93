"""The iSCSI compliance/benchmark harness itself: the CUnit report parser (on tgtd's real
reports, tests/data/iscsi/) and the private tgtd's start/stop (nothing left behind)."""
import json
import os
import subprocess
import sys

import pytest

from iscsi_util import (CunitParseError, parse_cunit, ringstack_iscsi, ringstack_iscsi_available,
                        run_family, tgtd_iscsi)
from tools.ringstack_iscsi import RingstackIscsi
from tools.tgtd import DEFAULT_IQN, Tgtd, TgtdError, parse_portals

DATA = os.path.join(os.path.dirname(__file__), "data", "iscsi")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


# -- parser ------------------------------------------------------------------------------

def test_scsi_family_report_of_tgtd():
    """tgtd 1.0.85, SCSI family: the issue's reference figures, 146 / 7 / 62 of 215."""
    r = parse_cunit(_sample("tgtd-SCSI.txt"))
    assert r.counts() == {"tests": 215, "passed": 146, "failed": 7, "skipped": 62}
    assert r.summary["tests"] == {"total": 215, "ran": 215, "passed": 208, "failed": 7, "inactive": 0}
    assert r.failed_names == ["GetLBAStatus.BeyondEol", "PrinServiceactionRange.Range",
                              "ProutReserve.OwnershipEA", "ProutReserve.OwnershipWE",
                              "ProutReserve.OwnershipEARO", "ProutReserve.OwnershipWERO",
                              "Reserve6.2Initiators"]
    assert "CompareAndWrite.Simple" in r.skipped_names and "Sanitize.BlockErase" in r.skipped_names
    by_name = {t.full_name: t for t in r.tests}
    # A failed test keeps its message and CUnit's assert line.
    beyond = by_name["GetLBAStatus.BeyondEol"]
    assert beyond.asserts == ["1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)"]
    assert any("LBA_OUT_OF_RANGE" in m for m in beyond.messages)
    # "...passed    [FAILED] PRIN ...": the verdict comes first, the rest is teardown output.
    lun_reset = by_name["Reserve6.LUNReset"]
    assert lun_reset.status == "passed" and lun_reset.trailing and not lun_reset.messages
    # Multi-line output before the verdict (messages, then "passed" at column 0).
    assert by_name["Reserve6.Logout"].status == "passed"
    assert len(by_name["Reserve6.Logout"].messages) == 4


def test_verdict_at_column_0_followed_by_teardown_output():
    """From a work-in-progress ringstack (captured): the test printed [FAILED] without
    asserting, CUnit passed it, and the teardown's message follows "passed" on its line."""
    r = parse_cunit(_sample("ringstack-wip-SCSI.Reserve6.txt"))
    t = {t.name: t for t in r.tests}["LUNReset"]
    assert t.status == "passed" and t.trailing and "PRIN command" in t.trailing[0]
    assert "Reserve6.LUNReset" in r.passed_with_failure_messages
    assert r.counts()["tests"] == r.summary["tests"]["ran"]


def test_iscsi_family_report_of_tgtd():
    r = parse_cunit(_sample("tgtd-iSCSI.txt"))
    assert r.counts() == {"tests": 15, "passed": 14, "failed": 1, "skipped": 0}
    assert r.failed_names == ["iSCSIdatasn.iSCSIDataSnInvalid"]
    assert len(r.tests[2].asserts) == 4


def test_truncated_report_is_an_error_not_a_pass():
    text = _sample("tgtd-SCSI.txt")
    cut = text.index("  Test: Simple ...passed\n  Test: BeyondEol")   # mid-run crash
    with pytest.raises(CunitParseError, match="no CUnit Run Summary"):
        parse_cunit(text[:cut])
    # The verdict of the last test missing.
    head = text[:text.index("  Test: BeyondEol ...") + len("  Test: BeyondEol ...    [FAILED] x\n")]
    with pytest.raises(CunitParseError, match="BeyondEol has no verdict"):
        parse_cunit(head)


def test_summary_disagreeing_with_tests_is_an_error():
    text = _sample("tgtd-iSCSI.txt").replace("  Test: Read10Invalid ...passed\n", "")
    with pytest.raises(CunitParseError, match="summary says 15 ran"):
        parse_cunit(text)
    text = _sample("tgtd-iSCSI.txt").replace("tests     15     15     14      1",
                                               "tests     15     15     15      0")
    with pytest.raises(CunitParseError, match="0 failed"):
        parse_cunit(text)


def test_skip_is_told_from_pass_by_the_skipped_marker():
    text = ("Suite: S\n"
            "  Test: A ...passed\n"
            "  Test: B ...    [SKIPPED] not implemented.\npassed\n"
            "  Test: C ...    [SKIPPED] half\n    [FAILED] then broke\nFAILED\n"
            "    1. t.c:1  - CU_ASSERT(x)\n"
            "Run Summary:    Type  Total    Ran Passed Failed Inactive\n"
            "              suites      1      1    n/a      0        0\n"
            "               tests      3      3      2      1        0\n")
    r = parse_cunit(text)
    assert [(t.name, t.status) for t in r.tests] == [("A", "passed"), ("B", "skipped"), ("C", "failed")]
    assert r.tests[2].asserts == ["1. t.c:1  - CU_ASSERT(x)"]


# -- tgtd --------------------------------------------------------------------------------

needs_tgt = pytest.mark.skipif(
    not all(os.path.exists(p) for p in ("/usr/sbin/tgtd", "/usr/sbin/tgtadm", "/usr/bin/iscsi-test-cu")),
    reason="tgt and libiscsi-bin are not installed (tools/install-sysdeps.sh)")


@needs_tgt
def test_tgtd_serves_and_leaves_nothing():
    var_run_before = os.path.exists("/var/run/tgtd")
    t = Tgtd(size=8 << 20)
    t.start()
    try:
        assert t.proc.poll() is None and all(os.path.exists(p) for p in t.ipc_files)
        assert not os.path.exists(t.backing), "the tmpfs backing file is unlinked once tgtd holds it"
        p = subprocess.run(["iscsi-readcapacity16", t.url], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "Total size:8388608" in p.stdout, p.stdout + p.stderr
        p = subprocess.run(["iscsi-ls", "-s", f"iscsi://127.0.0.1:{t.port}"], capture_output=True,
                           text=True, timeout=30)
        assert DEFAULT_IQN in p.stdout and "Lun:1" in p.stdout
    finally:
        t.stop()
    assert t.proc.returncode == 0, "tgtd did not leave by tgtadm's shutdown (killed?)"
    assert t.leftovers() == []
    assert os.path.exists("/var/run/tgtd") == var_run_before, "tgtd touched /var/run/tgtd"
    t.stop()   # twice is harmless


@needs_tgt
def test_tgtd_start_failure_cleans_up():
    """A portal that is taken: a clear error before tgtd starts, nothing left."""
    with tgtd_iscsi(size=1 << 20) as first:
        t = Tgtd(port=first.port, size=1 << 20)
        with pytest.raises(TgtdError, match="is in use"):
            t.start(timeout=5)
        assert t.proc is None and t.leftovers() == []
        assert first.proc.poll() is None
    with pytest.raises(ValueError):
        Tgtd(size=1000)


def test_portal_check_sees_tgtd_fallback():
    """tgtd that could not bind its portal serves its default ones instead (captured from
    tgtd 1.0.85): the start check must see that as not ours."""
    fallback = "Portal: [::]:3260,1\nPortal: 0.0.0.0:3260,1\n"
    assert parse_portals(fallback) == ["[::]:3260", "0.0.0.0:3260"]
    assert parse_portals("Portal: 127.0.0.1:43941,1\n") == ["127.0.0.1:43941"]


@needs_tgt
def test_run_family_against_tgtd():
    """One small suite end to end (iscsi-test-cu exits 1 on a failure; rc is not the verdict)."""
    with tgtd_iscsi(size=8 << 20) as t:
        run = run_family(t.url, "SCSI.Read10", timeout=120)
    r = run.report
    assert r.counts()["tests"] == r.summary["tests"]["ran"] > 0
    assert r.failed == 0, r.failed_names
    assert run.seconds < 60


# -- ringstack ---------------------------------------------------------------------------

def test_ringstack_helper_nbd_only_leaves_nothing():
    """The same launcher the compliance test and the bench use, without iSCSI (works on
    every tree): serves, stops on SIGTERM, leaves no process, shm segment or socket."""
    rs = RingstackIscsi(size=8 << 20, iscsi=False, nbd=True)
    rs.start()
    try:
        assert rs.children, "the reactor processes were not seen"
        p = subprocess.run(["qemu-img", "info", "--output=json", rs.nbd_url], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0 and '"virtual-size": 8388608' in p.stdout, p.stdout + p.stderr
    finally:
        err = rs.stop()
    assert rs.proc.returncode == 0, err[-2000:]
    assert rs.leftovers() == [] and "Traceback" not in err


def test_ringstack_iscsi_helper():
    """Until the iSCSI target is merged: a clear reason, nothing started.  After: LUN 0 of
    iqn.2016-06.io.spdk:Malloc0 on a free port, checked for leftovers on the way out."""
    ok, why = ringstack_iscsi_available()
    if not ok:
        assert why
        rs = RingstackIscsi(size=8 << 20)
        with pytest.raises(RuntimeError, match="iSCSI|iscsi"):
            rs.start()
        assert rs.proc is None and rs.leftovers() == []
        return
    with ringstack_iscsi(size=8 << 20) as rs:
        assert rs.url.endswith("/iqn.2016-06.io.spdk:Malloc0/0")
        p = subprocess.run(["iscsi-readcapacity16", rs.url], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "Total size:8388608" in p.stdout, p.stdout + p.stderr


# -- the bench's client parsers -----------------------------------------------------------

def test_iscsi_perf_output():
    from tools.bench_iscsi import parse_iscsi_perf
    text = _sample("iscsi-perf.txt")
    assert parse_iscsi_perf(text) == 35163.0                   # the final average, not a progress line
    assert parse_iscsi_perf(text.replace("\n", "\r")) == 35163.0
    cut_short = text[:text.index("iops average 35163")] + "\nABORTED!\n"
    with pytest.raises(ValueError, match="did not finish"):
        parse_iscsi_perf(cut_short)


def test_qemu_img_bench_output():
    from tools.bench_iscsi import parse_qemu_img_bench
    iops, secs = parse_qemu_img_bench(_sample("qemu-img-bench.txt"), 5000)
    assert secs == 0.115 and round(iops) == round(5000 / 0.115)
    with pytest.raises(ValueError):
        parse_qemu_img_bench("Sending 5000 write requests\n", 5000)


# -- the bench, end to end ----------------------------------------------------------------

@needs_tgt
def test_bench_iscsi_quick_json(tmp_path):
    """`ringstack bench iscsi` smoke run: one workload, JSON written; ringstack's iSCSI
    column is a figure or says why not (never a made-up number); nothing left behind."""
    out = tmp_path / "iscsi.json"
    shm_before = set(os.listdir("/dev/shm"))
    p = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "iscsi", "--quick", "--size", "16M",
                        "--workloads", "randread 4k qd32", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "randread 4k qd32" in p.stdout and "ringstack/tgtd" in p.stdout
    d = json.loads(out.read_text())
    row = d["results"][0]
    assert row["tgtd"]["iops"] > 0 and row["ringstack-nbd"]["iops"] > 0
    assert "iscsi-perf -r -b 8 -m 32" in row["commands"]["tgtd"]
    ok, why = ringstack_iscsi_available()
    assert d["meta"]["ringstack_iscsi"] == {"available": ok, "reason": why}
    if ok:
        assert row["ringstack"]["iops"] > 0 and row["ratio_ringstack_tgtd"] > 0
    else:
        assert row["ringstack"] == {"unavailable": why} and "ratio_ringstack_tgtd" not in row
        assert f"ringstack iSCSI: unavailable: {why}" in p.stdout
    assert d["meta"]["nproc"] == os.cpu_count() and d["meta"]["size"] == 16 << 20
    # Other jobs' live instances may come and go meanwhile: a leak is a new entry whose
    # owner is dead.
    from ipc.shm import list_instance_objects
    leaked = [e for pid, entries in list_instance_objects().items() if not _alive(pid)
              for e in entries if e not in shm_before]
    assert not leaked
    assert not [e for e in set(os.listdir("/dev/shm")) - shm_before if e.startswith("ringstack-tgtd.")]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
