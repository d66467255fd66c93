"""`ringstack start` as a child process serving one malloc bdev over iSCSI (and optionally
NBD), for `ringstack bench iscsi` and the compliance tests.

Two ways to configure the export, both what an SPDK user would write:
- ``how="option"``: ``ringstack start --iscsi PORT``, which exports every bdev as
  ``iqn.2016-06.io.spdk:<bdev>`` LUN 0 on 127.0.0.1:PORT;
- ``how="rpc"``: an ``iscsi`` subsystem section in the JSON config (SPDK's
  iscsi_create_portal_group / iscsi_create_initiator_group / iscsi_create_target_node).

``available()`` says whether this ringstack has an iSCSI target at all, and why not.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from tools.tgtd import free_tcp_port, wait_for_tcp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_BASE = "iqn.2016-06.io.spdk"
BDEV = "Malloc0"


def available() -> tuple:
    """``(True, "")`` when ``ringstack start`` accepts ``--iscsi`` and the iSCSI package
    is importable, else ``(False, reason)``."""
    try:
        from tools import start
    except Exception as exc:  # a broken tree is a reason too, not a traceback
        return False, f"tools.start does not import: {exc}"
    import argparse
    parser = argparse.ArgumentParser()
    start.add_parser(parser.add_subparsers())
    # An unknown option lands in the leftovers instead of exiting.
    ns, unknown = parser.parse_known_args(["start", "--iscsi", "3260"])
    if unknown or getattr(ns, "iscsi", None) is None:
        return False, "`ringstack start` has no --iscsi option yet (the iSCSI target is not merged)"
    try:
        import targets.iscsi  # noqa: F401
    except Exception as exc:
        return False, f"targets.iscsi does not import: {exc}"
    return True, ""


class RingstackIscsi:
    """One `ringstack start -m MASK` with a malloc bdev ``Malloc0`` of ``size`` bytes.

        with RingstackIscsi(size=64 << 20) as rs:
            rs.url        # iscsi://127.0.0.1:PORT/iqn.2016-06.io.spdk:Malloc0/0
            rs.nbd_url    # when nbd=True: nbd://127.0.0.1:PORT2/Malloc0
    """

    def __init__(self, size: int = 64 << 20, block_size: int = 512, mask: str = "0x3",
                 mode: str = "adaptive", port: Optional[int] = None, how: str = "option",
                 nbd: bool = False, host: str = "127.0.0.1", extra_config: Optional[list] = None,
                 iscsi: bool = True):
        """``iscsi=False`` (with ``nbd=True``): the same process and bdev, NBD only, for
        when this tree has no iSCSI target."""
        if not (iscsi or nbd):
            raise ValueError("serve the bdev over iSCSI, NBD or both")
        if how not in ("option", "rpc"):
            raise ValueError(f"how must be 'option' or 'rpc', not {how!r}")
        self.size, self.block_size, self.mask, self.mode = size, block_size, mask, mode
        self.port, self.how, self.nbd, self.host = port, how, nbd, host
        self.extra_config = extra_config or []
        self.iscsi = iscsi
        self.nbd_port: Optional[int] = None
        self.iqn = f"{NODE_BASE}:{BDEV}"
        self.proc: Optional[subprocess.Popen] = None
        self.tmp: Optional[str] = None
        self.children: list = []
        self._err = None

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.iqn}/0"

    @property
    def rpc_sock(self) -> str:
        return os.path.join(self.tmp, "rpc.sock")

    @property
    def nbd_url(self) -> str:
        """NBD over TCP loopback, the transport the iSCSI side uses too."""
        return f"nbd://{self.host}:{self.nbd_port}/{BDEV}"

    def _config(self) -> dict:
        subsystems = [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {
            "name": BDEV, "num_blocks": self.size // self.block_size, "block_size": self.block_size}}]}]
        if self.iscsi and self.how == "rpc":
            subsystems.append({"subsystem": "iscsi", "config": [
                {"method": "iscsi_create_portal_group", "params": {
                    "tag": 1, "portals": [{"host": self.host, "port": str(self.port)}]}},
                {"method": "iscsi_create_initiator_group", "params": {
                    "tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}},
                {"method": "iscsi_create_target_node", "params": {
                    "name": BDEV, "alias_name": BDEV, "queue_depth": 64,
                    "luns": [{"bdev_name": BDEV, "lun_id": 0}],
                    "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "disable_chap": True}}]})
        if self.nbd:
            subsystems.append({"subsystem": "nbd", "config": [
                {"method": "nbd_server_start", "params": {"listen": f"{self.host}:{self.nbd_port}"}},
                {"method": "nbd_export_add", "params": {"bdev_name": BDEV}}]})
        subsystems.extend(self.extra_config)
        return {"subsystems": subsystems}

    def start(self, timeout: float = 60.0) -> "RingstackIscsi":
        if self.iscsi:
            ok, why = available()
            if not ok:
                raise RuntimeError(why)
        self.tmp = tempfile.mkdtemp(prefix="ringstack-iscsi.")
        try:
            if self.iscsi and self.port is None:
                self.port = free_tcp_port(self.host)
            if self.nbd and self.nbd_port is None:
                self.nbd_port = free_tcp_port(self.host)
            cfg = os.path.join(self.tmp, "config.json")
            with open(cfg, "w") as f:
                json.dump(self._config(), f)
            cmd = [sys.executable, "-m", "tools.cli", "start", "-m", self.mask, "-r", self.rpc_sock,
                   "-c", cfg, "--mode", self.mode]
            if self.iscsi and self.how == "option":
                cmd += ["--iscsi", str(self.port)]
            self._err = open(os.path.join(self.tmp, "stderr.log"), "w+")
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self._err)
            if self.iscsi:
                wait_for_tcp(self.host, self.port, timeout, self.proc, "ringstack start")
            if self.nbd:
                self._wait_for_nbd(timeout)
            self._note_children()
        except BaseException as exc:
            text = self.stop()
            if isinstance(exc, (RuntimeError, TimeoutError)) and text:
                raise RuntimeError(f"{exc}; ringstack stderr:\n{text[-3000:]}") from exc
            raise
        return self

    def _wait_for_nbd(self, timeout: float) -> None:
        wait_for_tcp(self.host, self.nbd_port, timeout, self.proc, "ringstack start")
        # The config (and with it the NBD listener) can be up before the RPC server.
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.rpc_sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"the RPC socket {self.rpc_sock} never appeared")
            time.sleep(0.05)
        while not self.rpc("nbd_get_exports"):
            if time.monotonic() > deadline:
                raise TimeoutError("the NBD export never appeared")
            time.sleep(0.05)

    def _note_children(self) -> None:
        """The reactor processes, so leftovers() can tell an orphan from a clean stop."""
        try:
            import psutil
            self.children = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:
            self.children = []

    def rpc(self, method: str, params: Optional[dict] = None):
        from reactor.rpc import RpcClient
        return RpcClient(self.rpc_sock, timeout=30).call(method, params)

    def stderr(self) -> str:
        if self._err is None or self._err.closed:
            return ""
        self._err.flush()
        self._err.seek(0)
        return self._err.read()

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait, SIGKILL as the fallback; removes the temp dir.  Returns stderr."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.stderr()
        if self._err is not None:
            self._err.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return text

    def leftovers(self) -> list:
        """What of this instance is still there after stop(): empty when clean."""
        found = []
        if self.proc is not None and self.proc.poll() is None:
            found.append(f"ringstack pid {self.proc.pid} still running")
        for pid in self.children:
            if _alive(pid):
                found.append(f"reactor pid {pid} still running")
        if self.tmp is not None and os.path.exists(self.tmp):
            found.append(self.tmp)
        if self.proc is not None:
            from ipc.shm import list_instance_objects
            for owner, entries in list_instance_objects().items():
                if owner == self.proc.pid or owner in self.children:
                    found.extend("/dev/shm/" + e for e in entries)
        for port in (self.port, self.nbd_port):
            if port is not None and _listening(self.host, port):
                found.append(f"something still listens on {self.host}:{port}")
        return found

    def __enter__(self) -> "RingstackIscsi":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        import psutil
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _listening(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
