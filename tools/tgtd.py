"""A private tgtd (Linux SCSI target framework) as the reference iSCSI target that
`ringstack bench iscsi` and the compliance tests compare ringstack against.

What "private" means here, and why each step is needed:

- tgtd runs in the foreground (``-f``) as our child, so it is stopped by its pid.
- Its management socket and lock file go into our own temp dir via ``TGT_IPC_SOCKET``
  (tgtd and tgtadm both read it): by default tgtd creates /var/run/tgtd/socket.N and
  socket.N.lock and never removes them.  ``-C N`` (control port: only a suffix of those
  file names) is unique as well, so even a tgtd that ignored the variable could not meet
  a system instance's socket.
- tgtd ignores SIGTERM (its handler is empty).  The clean stop is tgtadm's: delete the
  target (``--force``: sessions may linger), then ``--mode system --op delete``, which
  makes tgtd leave its event loop; tgtadm waits until the socket refuses.  SIGKILL only
  when that fails.
- The LUN is an ``rdwr`` backing store on a tmpfs (/dev/shm) file, so reads and writes
  cost memory copies, as ringstack's malloc bdev does.  The file is unlinked as soon as
  tgtd has opened it: the open fd keeps the memory alive and nothing can be left in
  /dev/shm, even if tgtd is killed.
- tgtd's own LUN 0 is its controller (type 0xc); the disk is LUN 1 (ringstack's is 0).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional, Sequence

DEFAULT_IQN = "iqn.2016-06.io.spdk:Malloc0"
DISK_LUN = 1
SHM_DIR = "/dev/shm"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_tcp(host: str, port: int, timeout: float, proc: Optional[subprocess.Popen] = None,
                 what: str = "target") -> None:
    """Wait until ``host:port`` accepts a connection (bounded); RuntimeError if ``proc``
    exits first, TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class TgtdError(RuntimeError):
    pass


def parse_portals(shown: str) -> list:
    """``tgtadm --mode portal --op show`` ("Portal: 127.0.0.1:3260,1" lines) -> addresses."""
    return [line.split(":", 1)[1].strip().rsplit(",", 1)[0]
            for line in shown.splitlines() if line.startswith("Portal:")]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Tgtd:
    """One tgtd exporting one disk LUN of ``size`` bytes as ``iqn`` on 127.0.0.1:``port``.

        with Tgtd(size=64 << 20) as t:
            t.url            # iscsi://127.0.0.1:PORT/iqn.2016-06.io.spdk:Malloc0/1

    ``cpus``: a taskset CPU list ("0,1") the daemon and all its threads run on.
    """

    _instances = 0

    def __init__(self, port: Optional[int] = None, size: int = 64 << 20, block_size: int = 512,
                 iqn: str = DEFAULT_IQN, cpus: Optional[str] = None,
                 nr_iothreads: Optional[int] = None, host: str = "127.0.0.1"):
        if size <= 0 or size % block_size:
            raise ValueError(f"size {size} is not a positive multiple of the block size {block_size}")
        self.host = host
        self.port = port
        self.size = size
        self.block_size = block_size
        self.iqn = iqn
        self.cpus = cpus
        self.nr_iothreads = nr_iothreads
        self.tid = 1
        self.proc: Optional[subprocess.Popen] = None
        self.tmp: Optional[str] = None
        self.backing: Optional[str] = None
        self.control_port: Optional[int] = None
        self._log = None

    # -- paths -------------------------------------------------------------------------
    @property
    def ipc_prefix(self) -> str:
        return os.path.join(self.tmp, "ipc")

    @property
    def ipc_files(self) -> list:
        """The files tgtd creates for its management channel."""
        base = f"{self.ipc_prefix}.{self.control_port}"
        return [base, base + ".lock"]

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.iqn}/{DISK_LUN}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def _env(self) -> dict:
        env = dict(os.environ)
        env["TGT_IPC_SOCKET"] = self.ipc_prefix
        return env

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "Tgtd":
        for binary in ("tgtd", "tgtadm"):
            if shutil.which(binary) is None:
                raise TgtdError(f"{binary} is not installed (tools/install-sysdeps.sh installs tgt)")
        self.tmp = tempfile.mkdtemp(prefix="ringstack-tgtd.")
        try:
            if self.port is None:
                self.port = free_tcp_port(self.host)
            elif port_in_use(self.host, self.port):
                # Checked first: tgtd would fall back to 0.0.0.0:3260 (see _check_portal).
                raise TgtdError(f"{self.host}:{self.port} is in use")
            # Only names the IPC files (never a TCP port); unique per instance besides.
            Tgtd._instances += 1
            self.control_port = 1024 + (os.getpid() * 16 + Tgtd._instances) % 31000  # a short int
            cmd = ["tgtd", "-f", "-C", str(self.control_port),
                   "--iscsi", f"portal={self.host}:{self.port}"]
            if self.nr_iothreads:
                cmd[1:1] = ["-t", str(self.nr_iothreads)]
            if self.cpus is not None:
                cmd = ["taskset", "-c", self.cpus] + cmd
            self._log = open(os.path.join(self.tmp, "tgtd.log"), "w+")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=self._env())
            self._wait_for_ipc(timeout)
            self._check_portal()
            wait_for_tcp(self.host, self.port, timeout, self.proc, "tgtd")
            self._create_lun()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_ipc(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.ipc_files[0]):
            if self.proc.poll() is not None:
                raise TgtdError(f"tgtd exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tgtd's management socket never appeared: {self.log()[-2000:]}")
            time.sleep(0.05)

    def _check_portal(self) -> None:
        """Exactly our portal, or fail: when tgtd cannot bind the portal it was given
        (port taken) it falls back to its default, 0.0.0.0:3260 and [::]:3260, which
        would serve every interface and could meet another target on 3260."""
        portals = parse_portals(self.tgtadm("--lld", "iscsi", "--mode", "portal", "--op", "show"))
        if portals != [f"{self.host}:{self.port}"]:
            raise TgtdError(f"tgtd did not take portal {self.host}:{self.port} (it serves {portals}): "
                            f"{self.log()[-1000:]}")

    def _create_lun(self) -> None:
        fd, self.backing = tempfile.mkstemp(prefix="ringstack-tgtd.", suffix=".img", dir=SHM_DIR)
        try:
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        try:
            self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "new",
                        "--tid", str(self.tid), "--targetname", self.iqn)
            self.tgtadm("--lld", "iscsi", "--mode", "logicalunit", "--op", "new",
                        "--tid", str(self.tid), "--lun", str(DISK_LUN),
                        "--backing-store", self.backing, "--bstype", "rdwr",
                        "--blocksize", str(self.block_size))
            self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "bind",
                        "--tid", str(self.tid), "--initiator-address", "ALL")
        finally:
            # tgtd holds the file open from here on; the name is no longer needed.
            self._remove_backing()

    def tgtadm(self, *args: str, timeout: float = 20.0, check: bool = True) -> str:
        cmd = ["tgtadm", "-C", str(self.control_port)] + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), timeout=timeout)
        if check and p.returncode != 0:
            raise TgtdError(f"{' '.join(cmd)}: rc {p.returncode}: {(p.stderr or p.stdout).strip()}")
        return p.stdout

    def log(self) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 15.0) -> str:
        """Stop tgtd (tgtadm's shutdown, SIGKILL as the fallback), reap it, remove every
        file it made.  Returns its log.  Safe to call twice or after a failed start."""
        text = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                                "--tid", str(self.tid), check=False, timeout=timeout)
                    self.tgtadm("--mode", "system", "--op", "delete", check=False, timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            text = self.log()
        if self._log is not None:
            self._log.close()
        self._remove_backing()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return text

    def _remove_backing(self) -> None:
        if self.backing is not None:
            try:
                os.unlink(self.backing)
            except FileNotFoundError:
                pass

    def leftovers(self) -> list:
        """What of this instance is still there after stop(): empty when clean."""
        found = []
        if self.proc is not None and self.proc.poll() is None:
            found.append(f"tgtd pid {self.proc.pid} still running")
        for path in [self.tmp, self.backing] + (self.ipc_files if self.tmp else []):
            if path is not None and os.path.exists(path):
                found.append(path)
        for stray in (f"/var/run/tgtd/socket.{self.control_port}",
                      f"/var/run/tgtd/socket.{self.control_port}.lock"):
            if os.path.exists(stray):
                found.append(stray)
        return found

    def __enter__(self) -> "Tgtd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tools.tgtd [--port N] [--size BYTES]``: run one until Ctrl-C (by hand)."""
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int)
    p.add_argument("--size", type=int, default=64 << 20)
    p.add_argument("--cpus")
    args = p.parse_args(argv)
    with Tgtd(port=args.port, size=args.size, cpus=args.cpus) as t:
        print(t.url, flush=True)
        try:
            while t.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
