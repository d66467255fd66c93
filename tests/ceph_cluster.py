"""A real Ceph cluster for the rbd tests: tools/ceph-dev-cluster.sh (one ceph-mon, one
ceph-osd on memstore, bound to 127.0.0.1, all state in a temporary directory), started once
per session by the ``ceph_cluster`` fixture (registered in tests/conftest.py) and always
stopped, by pid, at the end.  Tests that use it skip, saying why, where ceph-mon is not
installed.  The cluster handle itself (start/stop by pid, the rbd CLI, a fresh
image) is tools/ceph_dev.py, which `ringstack bench rbd` uses too."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tools.ceph_dev import CephCluster  # noqa: F401  (the tests' handle on a cluster)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rbd_bdev_config(c, img, name="Rbd0") -> dict:
    """A JSON config (SPDK's shape) making bdev ``name`` of image rbd/``img`` of cluster
    ``c``, registered as cluster c0: what bdevperf's -c reads in the tests."""
    return {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_rbd_register_cluster", "params": {"name": "c0", "config_file": c.conf}},
        {"method": "bdev_rbd_create", "params": {"name": name, "pool_name": "rbd",
                                                 "rbd_name": img, "block_size": 512,
                                                 "cluster_name": "c0"}},
        {"method": "bdev_wait_for_examine"}]}]}


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
