"""`ringstack bench nbd` smoke run: one short workload against both servers, JSON written,
nothing left behind (the leak guard checks segments and processes)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not (shutil.which("fio") and shutil.which("nbdkit")), reason="fio/nbdkit not installed")
def test_bench_nbd_quick_json(tmp_path):
    out = tmp_path / "nbd.json"
    p = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "nbd", "--quick", "--size", "32M",
                        "--workloads", "randread 4k qd32", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "randread 4k qd32" in p.stdout and "ratio IOPS" in p.stdout
    d = json.loads(out.read_text())
    row = d["results"][0]
    assert row["ringstack"]["iops"] > 0 and row["nbdkit"]["iops"] > 0 and row["ratio_iops"] > 0
    assert row["ringstack"]["errors"] == 0
    assert len(row["ringstack_reactors"]) == 1               # one connection, one reactor
    assert d["meta"]["nproc"] == os.cpu_count() and d["meta"]["size"] == 32 << 20
