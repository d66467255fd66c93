"""Fixtures shared by the test_iscsi_proto* modules (imported by them, not a conftest)."""
from __future__ import annotations

import pytest

import iscsi_fakes as F
from targets.iscsi import session as S


@pytest.fixture
def target(monkeypatch):
    """(server, registry, dev): one node iqn.2016-06.io.spdk:disk1 with LUN 0 (2048 x 512)
    served by a selectors loop on 127.0.0.1."""
    F.install_fake_scsi(monkeypatch)
    reg = F.FakeRegistry()
    dev = F.MemDev("disk1")
    reg.add_node("disk1", dev, alias="Disk One", queue_depth=8)
    srv = F.Server(reg, [dev])
    with srv:
        yield srv, reg, dev
    assert not S.SESSIONS.by_tsih, "sessions leaked"


DISK1 = F.BASE + ":disk1"
