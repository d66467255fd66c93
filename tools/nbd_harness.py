"""Launch helpers shared by `ringstack bench nbd` and the real-client tests: fio against
an NBD URI (with JSON parsing) and `nbdkit memory` on a Unix socket (the standalone test
server is tests/nbd_standalone.py).  Every wait is bounded; every process started here
is stopped by the context manager that started it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def which(binary: str) -> Optional[str]:
    return shutil.which(binary)


def unix_uri(path: str, export: str = "") -> str:
    return f"nbd+unix:///{export}?socket={path}"


def wait_for_unix_socket(path: str, timeout: float = 10.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Wait until something accepts connections on `path` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {path}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {path} after {timeout}s")
            time.sleep(0.02)
        finally:
            s.close()


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            f.close()


class NbdkitMemory:
    """`nbdkit memory SIZE` serving one export on a Unix socket (the benchmark's peer).
    nbdkit's memory plugin is sparse: prefill before timing reads."""

    def __init__(self, socket_path: str, size: str = "256M", threads: Optional[int] = None,
                 extra: Sequence[str] = (), timeout: float = 10.0):
        self.socket_path = socket_path
        self.cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--unix", socket_path]
        if threads:
            self.cmd += ["--threads", str(threads)]
        self.cmd += list(extra) + ["memory", size]
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        return unix_uri(self.socket_path)

    def start(self) -> "NbdkitMemory":
        if which("nbdkit") is None:
            raise FileNotFoundError("nbdkit is not installed")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_unix_socket(self.socket_path, self.timeout, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------ fio

def parse_fio_json(text: str) -> dict:
    """fio's --output-format=json output; tolerates the lines the nbd engine prints first
    ("fio: connected to NBD server")."""
    i = text.find("\n{")
    start = 0 if text.startswith("{") else (i + 1 if i >= 0 else -1)
    if start < 0:
        raise ValueError(f"no JSON object in fio output: {text[:500]!r}")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def summarize_fio(data: dict) -> dict:
    """Aggregate all jobs: IOPS, bandwidth, mean completion latency (µs), errors."""
    out = {"jobs": len(data.get("jobs", [])), "errors": 0}
    for d in ("read", "write"):
        iops = bw = n = lat_sum = 0.0
        for j in data.get("jobs", []):
            s = j.get(d, {})
            iops += s.get("iops", 0.0)
            bw += s.get("bw_bytes", 0.0)
            c = s.get("clat_ns", {})
            n += c.get("N", 0)
            lat_sum += c.get("mean", 0.0) * c.get("N", 0)
        out[d] = {"iops": iops, "bw_bytes": bw, "clat_mean_us": (lat_sum / n / 1000.0) if n else 0.0}
    for j in data.get("jobs", []):
        out["errors"] += int(j.get("error", 0))
    return out


def run_fio(uri: str, *, rw: str, bs: str = "4k", iodepth: int = 1, numjobs: int = 1,
            size: Optional[str] = None, runtime: Optional[float] = None,
            verify: Optional[str] = None, name: str = "job", extra: Sequence[str] = (),
            timeout: float = 300.0) -> dict:
    """Run fio's nbd engine against `uri`; returns the parsed JSON plus "summary".
    Raises RuntimeError (with fio's stderr) on a non-zero exit."""
    if which("fio") is None:
        raise FileNotFoundError("fio is not installed")
    cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
           f"--bs={bs}", f"--iodepth={iodepth}", f"--numjobs={numjobs}", "--output-format=json"]
    if size:
        cmd.append(f"--size={size}")
    if runtime:
        cmd += [f"--runtime={runtime}", "--time_based"]
    if verify:
        cmd += [f"--verify={verify}", "--verify_fatal=1"]
    cmd += list(extra)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"fio failed ({p.returncode}): {p.stderr.strip()[-2000:]}\n{p.stdout[-2000:]}")
    data = parse_fio_json(p.stdout)
    data["summary"] = summarize_fio(data)
    data["log"] = p.stderr + p.stdout[:max(p.stdout.find("{"), 0)]   # fio's non-JSON chatter
    return data
