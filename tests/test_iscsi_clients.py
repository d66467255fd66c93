"""QEMU over iscsi:// against `ringstack start -m 0x3 --iscsi`: qemu-img info / convert /
compare, qemu-io pattern checks, and two initiators whose sessions the round-robin placement
puts on different reactors, each reading what the other wrote."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from iscsi_util import ringstack_iscsi

MiB = 1 << 20
PROMPT = "qemu-io> "
SPDK_RPC = os.path.join(os.path.dirname(sys.executable), "spdk-rpc")


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian qemu-utils + qemu-block-extra; `make sysdeps`)")


@pytest.fixture(scope="module")
def target():
    need("qemu-img")
    with ringstack_iscsi(size=64 * MiB, mask="0x3") as rs:
        yield rs


def run(argv, timeout=120):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{argv} -> {p.returncode}:\n{p.stdout}{p.stderr}"
    return p.stdout


def rpc(target, method):
    return json.loads(run([SPDK_RPC, "-s", target.rpc_sock, method]))


class QemuIo:
    """An interactive qemu-io session on one URL: one iSCSI session held open between
    commands, so two of them are two initiators at once."""

    def __init__(self, url):
        self.p = subprocess.Popen(["qemu-io", "-f", "raw", url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=0)
        self._until_prompt()

    def _until_prompt(self) -> str:
        out = ""
        while not out.endswith(PROMPT):
            ch = self.p.stdout.read(1)
            if not ch:
                raise AssertionError(f"qemu-io ended: {out}")
            out += ch
        return out[:-len(PROMPT)]

    def __call__(self, command: str) -> str:
        self.p.stdin.write(command + "\n")
        out = self._until_prompt()
        assert "failed" not in out.lower() and "error" not in out.lower(), f"{command}: {out}"
        return out

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
            self.p.wait(timeout=30)
        self.p.stdout.close()


def test_qemu_img_info_convert_compare(target, tmp_path):
    need("qemu-io")
    info = json.loads(run(["qemu-img", "info", "--output=json", target.url]))
    assert info["virtual-size"] == 64 * MiB and info["format"] == "raw"
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(8 * MiB))
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), target.url])
    # the first 8 MiB of the LUN now equal the file; compare reads them back over iSCSI
    back = tmp_path / "back.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", target.url, str(back)])
    assert back.read_bytes()[:8 * MiB] == src.read_bytes()
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(back), target.url])
    # a changed byte is a difference qemu-img sees through the target
    run(["qemu-io", "-f", "raw", "-c", "write -P 0xee 4096 512", target.url])
    p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(back), target.url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Content mismatch at offset 4096" in p.stdout, p.stdout + p.stderr


def test_qemu_io_pattern_zeroes_and_read_back(target):
    need("qemu-io")
    out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "read -P 0x5a 1M 256k",
               "-c", "write -z 1M 4k", "-c", "read -P 0 1M 4k", "-c", "read -P 0x5a 1028k 252k",
               target.url])
    assert out.count("wrote") == 2 and out.count("read ") == 3 and "verification failed" not in out


def test_two_initiators_on_two_reactors_read_each_others_writes(target):
    need("qemu-io")
    a = QemuIo(target.url)
    b = QemuIo(target.url)
    try:
        conns = rpc(target, "iscsi_get_connections")
        assert len(conns) == 2, conns
        assert sorted(c["lcore_id"] for c in conns) == [0, 1], conns   # one per reactor
        a("write -P 0x11 0 1M")
        assert "read 1048576/1048576" in b("read -P 0x11 0 1M")
        b("write -P 0x22 1M 1M")
        assert "read 1048576/1048576" in a("read -P 0x22 1M 1M")
        # interleaved small writes, each checked from the other side at once
        for i in range(16):
            w, r = (a, b) if i % 2 else (b, a)
            w(f"write -P {0x30 + i} {2 * MiB + i * 4096} 4096")
            r(f"read -P {0x30 + i} {2 * MiB + i * 4096} 4096")
    finally:
        a.close()
        b.close()
