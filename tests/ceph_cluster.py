"""A real Ceph cluster for the rbd tests: tools/ceph-dev-cluster.sh (one ceph-mon, one
ceph-osd on memstore, bound to 127.0.0.1, all state in a temporary directory), started once
per session by the ``ceph_cluster`` fixture (registered in tests/conftest.py) and always
stopped, by pid, at the end.  Tests that use it skip, saying why, where ceph-mon is not
installed."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "ceph-dev-cluster.sh")
_names = itertools.count()


class CephCluster:
    def __init__(self, path):
        self.dir = path
        self.conf = os.path.join(path, "ceph.conf")

    def start(self):
        subprocess.run(["sh", SCRIPT, "start", self.dir], check=True, timeout=90)

    def stop(self):
        subprocess.run(["sh", SCRIPT, "stop", self.dir], check=True, timeout=60)

    def mon_host(self) -> str:
        """The monitor's address, as ceph.conf's ``mon host`` says it."""
        with open(self.conf) as f:
            for line in f:
                k, _, v = line.partition("=")
                if k.strip() == "mon host":
                    return v.strip()
        raise RuntimeError(f"{self.conf} has no mon host")

    def rbd(self, *args, timeout=30) -> str:
        """Run Ceph's ``rbd`` CLI against this cluster; its stdout."""
        r = subprocess.run(["rbd", "-c", self.conf, *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"rbd {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def new_image(self, size="16M", features="layering") -> str:
        """A fresh image in pool rbd (a name no other test uses); only ``layering`` by
        default, so several ringstack reactors writing it do not pass the exclusive lock
        back and forth."""
        name = f"img{os.getpid()}_{next(_names)}"
        self.rbd("create", "--size", size, "--image-feature", features, f"rbd/{name}")
        return name


def skip_reason() -> str | None:
    if shutil.which("ceph-mon") is None or shutil.which("ceph-osd") is None:
        return "ceph-mon/ceph-osd are not installed (tools/install-sysdeps.sh installs them)"
    from drivers import rbd_lib
    why = rbd_lib.available()
    return f"{why} (Debian librbd1/librados2)" if why else None


def started_cluster():
    """A context manager: a fresh cluster in a temporary directory, stopped on exit."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        why = skip_reason()
        if why:
            pytest.skip(why)
        path = tempfile.mkdtemp(prefix="ringstack-ceph-")
        c = CephCluster(path)
        try:
            c.start()
            yield c
        finally:
            try:
                c.stop()
            finally:
                shutil.rmtree(path, ignore_errors=True)
    return cm()


@pytest.fixture(scope="session")
def ceph_cluster():
    with started_cluster() as c:
        yield c
