"""End to end: real initiators -> the iSCSI engine -> the real SCSI layer (targets/scsi) ->
a malloc bdev (tests/iscsi_e2e_server.py in a subprocess).  Skipped until targets/scsi
is present, or when the tools are missing."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DISK1 = "iqn.2016-06.io.spdk:disk1"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture
def e2e():
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE,
                                         env.get("PYTHONPATH", "")])
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "iscsi_e2e_server.py"),
                          str(port), "8192"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError(f"e2e server failed: {line}{p.stderr.read()}")
        yield port
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def _run(args, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def test_e2e_libiscsi_iscsi_family_and_sbc_basics(e2e):
    _need("iscsi-test-cu")
    for tests in ("iSCSI.iSCSIcmdsn,iSCSI.iSCSIdatasn,iSCSI.iSCSITMF",
                  "iSCSI.iSCSIResiduals",
                  "SCSI.TestUnitReady,SCSI.Inquiry,SCSI.ReadCapacity10,SCSI.ReadCapacity16,"
                  "SCSI.Read10,SCSI.Write10,SCSI.Read16,SCSI.Write16"):
        rc, out = _run(["iscsi-test-cu", "--dataloss", f"--test={tests}",
                        f"iscsi://127.0.0.1:{e2e}/{DISK1}/0"])
        line = [ln for ln in out.splitlines() if ln.strip().startswith("tests")]
        assert line, out[-3000:]
        total, ran, passed, failed = (int(x) for x in line[0].split()[1:5])
        assert failed == 0 and passed == ran == total, out[-4000:]


def test_e2e_qemu_img_round_trip(e2e, tmp_path):
    _need("qemu-img")
    url = f"iscsi://127.0.0.1:{e2e}/{DISK1}/0"
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    rc, out = _run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url])
    assert rc == 0, out
    back = tmp_path / "back.raw"
    rc, out = _run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back)])
    assert rc == 0, out
    assert back.read_bytes()[:4 * 1024 * 1024] == src.read_bytes()
