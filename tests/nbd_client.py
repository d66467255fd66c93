"""A minimal synchronous NBD client for tests and debugging (not for production I/O).

It speaks the same wire format as the server, lets a test send arbitrary bytes (protocol
abuse), and can run against an in-process server: pass `pump`, a callable that polls the
server once, and the client calls it while it waits instead of blocking.
"""
from __future__ import annotations

import socket
import time
from typing import Callable, Optional

from targets.nbd import _proto as P


class NbdError(Exception):
    def __init__(self, err: int, message: str = ""):
        super().__init__(f"NBD error {err}{': ' + message if message else ''}")
        self.errno = err
        self.message = message


class OptionError(Exception):
    def __init__(self, rtype: int, data: bytes):
        super().__init__(f"option reply {rtype:#x}: {data[:200]!r}")
        self.rtype = rtype
        self.data = data


class NbdClient:
    def __init__(self, sock: socket.socket, pump: Optional[Callable[[], object]] = None,
                 timeout: float = 10.0):
        self.sock = sock
        self.pump = pump
        self.timeout = timeout
        sock.setblocking(pump is None)
        if pump is None:
            sock.settimeout(timeout)
        self.structured = False
        self.size = 0
        self.tflags = 0
        self._cookie = 0
        self._pending: dict = {}

    @classmethod
    def connect(cls, address: str, **kw) -> "NbdClient":
        if "/" in address:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(kw.get("timeout", 10.0))
            s.connect(address)
        else:
            host, _, port = address.rpartition(":")
            s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=kw.get("timeout", 10.0))
        return cls(s, **kw)

    def close(self) -> None:
        self.sock.close()

    # -- raw I/O --
    def send(self, data: bytes) -> None:
        if self.pump is None:
            self.sock.sendall(data)
            return
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                self._wait(deadline)

    def _wait(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("NBD client timed out")
        self.pump()

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except BlockingIOError:
                self._wait(deadline)
                continue
            if not chunk:
                raise EOFError(f"server closed the connection ({len(buf)}/{n} bytes)")
            buf += chunk
        return bytes(buf)

    def at_eof(self) -> bool:
        """True if the server has closed the connection (waits up to the timeout)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
            except BlockingIOError:
                self._wait(deadline)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True

    # -- handshake --
    def handshake(self, cflags: int = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES) -> int:
        magic, opt, hflags = P.GREETING.unpack(self.recv_exact(18))
        assert magic == P.NBDMAGIC and opt == P.IHAVEOPT, (hex(magic), hex(opt))
        self.send(P.CLIENT_FLAGS.pack(cflags))
        self._no_zeroes = bool(cflags & P.FLAG_C_NO_ZEROES)
        return hflags

    def send_option(self, opt: int, data: bytes = b"") -> None:
        self.send(P.OPT_HDR.pack(P.IHAVEOPT, opt, len(data)) + data)

    def option_reply(self) -> tuple:
        magic, opt, rtype, length = P.OPT_REPLY.unpack(self.recv_exact(20))
        assert magic == P.REPLY_MAGIC_OPT, hex(magic)
        return opt, rtype, self.recv_exact(length)

    def option(self, opt: int, data: bytes = b"") -> list:
        """Send an option; return [(rtype, data)] up to and including the final reply."""
        self.send_option(opt, data)
        out = []
        while True:
            o, rtype, payload = self.option_reply()
            assert o == opt
            out.append((rtype, payload))
            if rtype == P.REP_ACK or rtype & (1 << 31):
                return out

    def structured_reply(self) -> bool:
        rtype, _ = self.option(P.OPT_STRUCTURED_REPLY)[-1]
        self.structured = rtype == P.REP_ACK
        return self.structured

    def list_exports(self) -> list:
        names = []
        for rtype, data in self.option(P.OPT_LIST):
            if rtype == P.REP_SERVER:
                n = int.from_bytes(data[:4], "big")
                names.append(data[4:4 + n].decode())
            elif rtype != P.REP_ACK:
                raise OptionError(rtype, data)
        return names

    def info(self, name: str = "", requests=(P.INFO_BLOCK_SIZE,), go: bool = False) -> dict:
        nb = name.encode()
        data = len(nb).to_bytes(4, "big") + nb + len(requests).to_bytes(2, "big")
        data += b"".join(r.to_bytes(2, "big") for r in requests)
        infos = {}
        for rtype, payload in self.option(P.OPT_GO if go else P.OPT_INFO, data):
            if rtype == P.REP_INFO:
                infos[int.from_bytes(payload[:2], "big")] = payload[2:]
            elif rtype != P.REP_ACK:
                raise OptionError(rtype, payload)
        size = int.from_bytes(infos[P.INFO_EXPORT][:8], "big")
        tflags = int.from_bytes(infos[P.INFO_EXPORT][8:10], "big")
        if go:
            self.size, self.tflags = size, tflags
        return {"size": size, "flags": tflags, "infos": infos}

    def go(self, name: str = "", requests=(P.INFO_BLOCK_SIZE,)) -> dict:
        return self.info(name, requests, go=True)

    def export_name(self, name: str = "") -> None:
        self.send_option(P.OPT_EXPORT_NAME, name.encode())
        self.size, self.tflags = P.EXPORT_NAME_REPLY.unpack(self.recv_exact(10))
        if not self._no_zeroes:
            self.recv_exact(124)

    def connect_export(self, name: str = "", structured: bool = True) -> "NbdClient":
        self.handshake()
        if structured:
            self.structured_reply()
        self.go(name)
        return self

    # -- transmission --
    def request(self, typ: int, offset: int = 0, length: int = 0, flags: int = 0,
                payload: bytes = b"", cookie: Optional[int] = None) -> int:
        if cookie is None:
            self._cookie += 1
            cookie = self._cookie
        self._pending[cookie] = (typ, length)
        self.send(P.REQUEST.pack(P.REQUEST_MAGIC, flags, typ, cookie, offset, length) + payload)
        return cookie

    def reply(self) -> tuple:
        """(cookie, error, data) of the next complete reply."""
        magic = int.from_bytes(self.recv_exact(4), "big")
        if magic == P.SIMPLE_REPLY_MAGIC:
            err, cookie = P.SIMPLE_REPLY.unpack(magic.to_bytes(4, "big") + self.recv_exact(12))[1:]
            typ, length = self._pending.pop(cookie)
            data = self.recv_exact(length) if typ == P.CMD_READ and not err else b""
            return cookie, err, data
        if magic != P.STRUCTURED_REPLY_MAGIC:
            raise AssertionError(f"bad reply magic {magic:#x}")
        data = {}
        err = 0
        while True:
            _, flags, rtype, cookie, length = P.CHUNK_HDR.unpack(magic.to_bytes(4, "big") + self.recv_exact(16))
            payload = self.recv_exact(length)
            if rtype == P.REPLY_TYPE_OFFSET_DATA:
                data[int.from_bytes(payload[:8], "big")] = payload[8:]
            elif rtype in (P.REPLY_TYPE_ERROR, P.REPLY_TYPE_ERROR_OFFSET):
                err = int.from_bytes(payload[:4], "big")
            elif rtype != P.REPLY_TYPE_NONE:
                raise AssertionError(f"unexpected chunk type {rtype}")
            if flags & P.REPLY_FLAG_DONE:
                break
            magic = int.from_bytes(self.recv_exact(4), "big")
            assert magic == P.STRUCTURED_REPLY_MAGIC
        self._pending.pop(cookie)
        return cookie, err, b"".join(data[k] for k in sorted(data))

    def _one(self, *a, **kw) -> bytes:
        c = self.request(*a, **kw)
        cookie, err, data = self.reply()
        assert cookie == c, (cookie, c)
        if err:
            raise NbdError(err)
        return data

    def read(self, offset: int, length: int, flags: int = 0) -> bytes:
        return self._one(P.CMD_READ, offset, length, flags)

    def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self._one(P.CMD_WRITE, offset, len(data), P.CMD_FLAG_FUA if fua else 0, data)

    def flush(self) -> None:
        self._one(P.CMD_FLUSH)

    def trim(self, offset: int, length: int) -> None:
        self._one(P.CMD_TRIM, offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._one(P.CMD_WRITE_ZEROES, offset, length)

    def disconnect(self) -> None:
        self.send(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_DISC, 0, 0, 0))
