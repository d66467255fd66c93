"""Real initiators (libiscsi's tools and compliance suite, QEMU) against the engine over
the test fakes.  Skipped when a tool is not installed."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest_iscsi import DISK1, target  # noqa: F401  (fixture)


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def _run(args, timeout=60):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def test_iscsi_ls_inq_readcapacity(target):
    _need("iscsi-ls")
    srv, reg, dev = target
    rc, out = _run(["iscsi-ls", "-s", f"iscsi://127.0.0.1:{srv.port}"])
    assert rc == 0 and f"Target:{DISK1} Portal:127.0.0.1:{srv.port},1" in out, out
    assert "Lun:0" in out and "DIRECT_ACCESS" in out
    rc, out = _run(["iscsi-inq", f"iscsi://127.0.0.1:{srv.port}/{DISK1}/0"])
    assert rc == 0 and "Vendor:RINGSTCK" in out, out
    rc, out = _run(["iscsi-readcapacity16", f"iscsi://127.0.0.1:{srv.port}/{DISK1}/0"])
    assert rc == 0 and "Total size:1048576" in out, out


def test_chap_url_and_header_digest(target):
    _need("iscsi-inq")
    srv, reg, dev = target
    node = reg.nodes[DISK1]
    node.require_chap, node.chap_group, node.header_digest = True, 1, True
    reg.chap[1] = {"user": ("secret12345678", "muser", "msecret12345678")}
    url = f"iscsi://127.0.0.1:{srv.port}/{DISK1}/0"
    rc, out = _run(["iscsi-inq", url])
    assert rc != 0 and "Authentication failure" in out, out
    rc, out = _run(["iscsi-inq", url.replace("//", "//user%wrong@")])
    assert rc != 0, out
    rc, out = _run(["iscsi-inq", url.replace("//", "//user%secret12345678@")])
    assert rc == 0 and "Vendor:RINGSTCK" in out, out
    murl = url.replace("//", "//user%secret12345678@") + \
        "?target_user=muser&target_password=msecret12345678"
    rc, out = _run(["iscsi-inq", murl])
    assert rc == 0, out
    rc, out = _run(["iscsi-inq", murl.replace("=msecret12345678", "=bogus")])
    assert rc != 0, out
    assert any(c.name for c in srv.finished)   # connections came and went


def _compliance(srv, tests):
    rc, out = _run(["iscsi-test-cu", "--dataloss", f"--test={tests}",
                    f"iscsi://127.0.0.1:{srv.port}/{DISK1}/0"], timeout=120)
    line = [ln for ln in out.splitlines() if ln.strip().startswith("tests")]
    assert line, out[-3000:]
    total, ran, passed, failed = (int(x) for x in line[0].split()[1:5])
    assert failed == 0 and passed == ran == total, out[-3000:]


def test_libiscsi_compliance_cmdsn_datasn_tmf(target):
    _need("iscsi-test-cu")
    srv, reg, dev = target
    _compliance(srv, "iSCSI.iSCSIcmdsn,iSCSI.iSCSIdatasn,iSCSI.iSCSITMF")


def test_libiscsi_compliance_residuals(target):
    _need("iscsi-test-cu")
    srv, reg, dev = target
    _compliance(srv, "iSCSI.iSCSIResiduals")


def test_qemu_img_info_and_convert(target, tmp_path):
    _need("qemu-img")
    srv, reg, dev = target
    url = f"iscsi://127.0.0.1:{srv.port}/{DISK1}/0"
    rc, out = _run(["qemu-img", "info", url])
    assert rc == 0 and "virtual size: 1 MiB" in out, out
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(1024 * 1024))
    rc, out = _run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url])
    assert rc == 0, out
    assert bytes(dev.luns[0].data) == src.read_bytes()
    back = tmp_path / "back.raw"
    rc, out = _run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back)])
    assert rc == 0 and back.read_bytes() == src.read_bytes(), out
