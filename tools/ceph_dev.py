"""A throw-away Ceph cluster (tools/ceph-dev-cluster.sh: one ceph-mon, one memstore ceph-osd
on 127.0.0.1, every file under one directory) and Ceph's ``rbd`` CLI against a cluster's
config: shared by the rbd tests (tests/ceph_cluster.py, the session fixture) and
``ringstack bench rbd``.  The daemons detach into their own sessions, so a Ctrl-C at the
terminal does not reach them: whoever starts a cluster stops it (by the pids the script
recorded) on every way out."""
from __future__ import annotations

import itertools
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "ceph-dev-cluster.sh")
_names = itertools.count()


class CephError(RuntimeError):
    """A Ceph command failed; the message is one line (the command and its last words)."""


class CephCluster:
    """A cluster reached through ``conf``; ``start``/``stop`` only for a dev cluster in
    ``path`` (``conf`` is then path/ceph.conf)."""

    def __init__(self, path: str | None = None, conf: str | None = None):
        self.dir = path
        self.conf = conf or os.path.join(path, "ceph.conf")

    def start(self, timeout: float = 90) -> None:
        """Start the dev cluster in DIR; CephError naming the failed step's last log line
        (the script has stopped whatever it started by then).  A Ctrl-C meanwhile lets the
        script finish first (its steps are bounded): killed half-way it could leave a
        daemon that has not written its pid file yet; then the interrupt goes on."""
        os.makedirs(self.dir, exist_ok=True)
        out_path = os.path.join(self.dir, "start.out")
        with open(out_path, "w") as out:
            proc = subprocess.Popen(["sh", SCRIPT, "start", self.dir], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        interrupted = None
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.stop()
                raise CephError(f"the dev cluster did not start within {timeout:g} s") from None
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted
        if proc.returncode:
            why = _last_line(os.path.join(self.dir, "log", "setup.log")) or _last_line(out_path)
            raise CephError(f"the dev cluster did not start: {why}")

    def stop(self, timeout: float = 60) -> None:
        subprocess.run(["sh", SCRIPT, "stop", self.dir], check=True, timeout=timeout)

    def pids(self) -> list[int]:
        """The daemons' pids, from the pid files the script keeps under DIR/run."""
        run = os.path.join(self.dir, "run")
        out = []
        for name in sorted(os.listdir(run)) if os.path.isdir(run) else ():
            if name.endswith(".pid"):
                with open(os.path.join(run, name)) as f:
                    out.append(int(f.read().strip()))
        return out

    def mon_host(self) -> str:
        """The monitor's address, as ceph.conf's ``mon host`` says it."""
        with open(self.conf) as f:
            for line in f:
                k, _, v = line.partition("=")
                if k.strip() == "mon host":
                    return v.strip()
        raise RuntimeError(f"{self.conf} has no mon host")

    def rbd(self, *args, timeout: float = 30, user_id: str | None = None) -> str:
        """Run Ceph's ``rbd`` CLI against this cluster; its stdout."""
        cmd = ["rbd", "-c", self.conf] + (["--id", user_id] if user_id else []) + list(args)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CephError(f"rbd {' '.join(args)}: no answer within {timeout:g} s") from None
        if r.returncode:
            last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise CephError(f"rbd {' '.join(args)}: {last}")
        return r.stdout

    def new_image(self, size="16M", features="layering", pool="rbd", prefix="img",
                  user_id: str | None = None) -> str:
        """A fresh image in ``pool`` (a name no other caller uses); only ``layering`` by
        default, so several clients writing it do not pass the exclusive lock back and
        forth."""
        name = f"{prefix}{os.getpid()}_{next(_names)}"
        self.rbd("create", "--size", size, "--image-feature", features, f"{pool}/{name}",
                 user_id=user_id)
        return name


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
