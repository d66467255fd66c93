"""Listening sockets and fd passing.

`Listener` accepts without blocking and hands every new socket to a *placement
callback*; the reactor layer uses that to spread connections over reactors, passing the
fd to another process with `send_fd` / `recv_fd` over a Unix SOCK_SEQPACKET (or
SOCK_DGRAM) socket pair.

Address forms (`parse_address`):
  "/path/sock", "./sock", "unix:/path"  -> Unix stream socket, created 0600
  "host:port", "[v6]:port"              -> TCP on that address
  ":port", "port"                       -> TCP on 127.0.0.1 (loopback unless told otherwise)
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import tempfile
from typing import Callable, Optional

log = logging.getLogger("ringstack.serve")

PlacementCallback = Callable[[socket.socket, object], None]


UNIX_PATH_MAX = 108     # sockaddr_un.sun_path, NUL included: a path holds at most 107 bytes


def _unix(path: str) -> tuple:
    """A Unix socket path clients can connect to: the bind goes through a short temporary
    name, so the kernel's limit must be checked here, on the absolute path."""
    if not path or "\0" in path:
        raise ValueError(f"bad socket path {path!r}: empty or with a NUL byte")
    n = len(os.fsencode(os.path.abspath(path)))
    if n >= UNIX_PATH_MAX:
        raise ValueError(f"socket path too long ({n} bytes, max {UNIX_PATH_MAX - 1}): {path}")
    return ("unix", path)


def parse_address(address: str) -> tuple:
    """("unix", path) or ("tcp", host, port)."""
    if address.startswith("unix:"):
        return _unix(address[5:])
    if "/" in address:
        return _unix(address)
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    host = host.strip("[]") or "127.0.0.1"
    try:
        portn = int(port)
    except ValueError:
        raise ValueError(f"bad listen address {address!r}: expected a socket path or host:port") from None
    if not 0 <= portn <= 65535:
        raise ValueError(f"bad port in {address!r}")
    return ("tcp", host, portn)


def _claim_unix_path(path: str) -> None:
    """Remove a stale socket file at `path`; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)       # stale: nobody listens
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise FileExistsError(errno.EADDRINUSE, "a server is already listening there", path)


class Listener:
    """A non-blocking listening socket.  `poll()` accepts up to `accepts_per_poll` clients
    and calls `on_accept(sock, peer)` for each (the socket is non-blocking).  `meta` is
    the protocol's dict for this listener (e.g. iSCSI's portal group tag), handed to every
    connection it accepts; `display` is "host:port" (IPv6 in brackets) or the path."""

    def __init__(self, address: str, on_accept: PlacementCallback, *, backlog: int = 128,
                 accepts_per_poll: int = 16, meta: Optional[dict] = None):
        self.address = address
        self.meta = dict(meta or {})
        self.on_accept = on_accept
        self._accepts_per_poll = accepts_per_poll
        self._unlink: Optional[tuple] = None
        kind = parse_address(address)
        if kind[0] == "unix":
            self.path = os.path.abspath(kind[1])
            self.host, self.port = None, None
            _claim_unix_path(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Bind inside a private 0700 directory, chmod 0600, then rename into place:
            # nobody can connect before the mode is right, and no process-wide umask games.
            tmpdir = tempfile.mkdtemp(prefix=".serve-", dir=os.path.dirname(self.path))
            tmp = os.path.join(tmpdir, "s")
            try:
                sock.bind(tmp)
                os.chmod(tmp, 0o600)
                sock.listen(backlog)   # before the rename: a client that sees the path can connect
                os.rename(tmp, self.path)
            except BaseException:
                sock.close()
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            finally:
                os.rmdir(tmpdir)
            st = os.lstat(self.path)
            self._unlink = (self.path, st.st_dev, st.st_ino)
            self.display = self.path
        else:
            _, host, port = kind
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
            self.path = None
            self.host, self.port = sock.getsockname()[:2]
            h = f"[{self.host}]" if fam == socket.AF_INET6 else self.host
            self.display = f"{h}:{self.port}"
            sock.listen(backlog)
        sock.setblocking(False)
        self._sock: Optional[socket.socket] = sock
        self.accepted = 0

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def poll(self) -> int:
        """Accept what is pending; returns the number of connections accepted."""
        sock = self._sock
        if sock is None:
            return 0
        n = 0
        while n < self._accepts_per_poll:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EMFILE/ENFILE/ECONNABORTED: log, keep listening, try again next poll.
                log.warning("listener %s: accept failed: %s", self.address, exc)
                break
            conn.setblocking(False)
            n += 1
            self.accepted += 1
            try:
                self.on_accept(conn, peer)
            except Exception:
                log.exception("listener %s: placement callback failed; dropping client", self.address)
                conn.close()
        return n

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._unlink is not None:
            path, dev, ino = self._unlink
            self._unlink = None
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):   # still ours: remove it
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ fd passing

def send_fd(unix_sock: socket.socket, fd: int, meta: bytes = b"") -> None:
    """Send one fd plus a small metadata message over a Unix socket (SCM_RIGHTS).
    The receiver gets its own duplicate; the caller still owns (and should close) `fd`.
    Use SOCK_SEQPACKET or SOCK_DGRAM so each fd travels with its own message."""
    socket.send_fds(unix_sock, [meta or b"\0"], [fd])


def recv_fd(unix_sock: socket.socket, maxmeta: int = 4096) -> Optional[tuple]:
    """Receive one (fd, meta) sent by `send_fd`.  Returns None if nothing is pending on a
    non-blocking socket; raises EOFError when the peer closed."""
    try:
        msg, fds, flags, _ = socket.recv_fds(unix_sock, maxmeta, 4)
    except (BlockingIOError, InterruptedError):
        return None
    if not msg and not fds:
        raise EOFError("fd-passing socket closed")
    if flags & getattr(socket, "MSG_CTRUNC", 0) or len(fds) != 1:
        for f in fds:
            os.close(f)
        raise OSError(errno.EPROTO, f"expected exactly one fd, got {len(fds)} (flags {flags:#x})")
    return fds[0], (b"" if msg == b"\0" else msg)


def socket_from_fd(fd: int) -> socket.socket:
    """Wrap a received fd as a non-blocking socket object (family/type auto-detected)."""
    s = socket.socket(fileno=fd)
    s.setblocking(False)
    return s
