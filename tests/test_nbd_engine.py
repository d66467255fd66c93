"""The protocol engine in one process, stepped explicitly: the test polls the server
(`Rig.pump`) while its client waits, so every interleaving here is deterministic.
Covers completion order, synchronous completion, backpressure, slow readers, partial
sends, hot-remove, backend errors, fd passing, the listener and the standalone loop."""
import errno
import logging
import os
import socket
import stat
import tempfile
import threading
import time

import pytest

from nbd_client import NbdClient, NbdError, OptionError
from nbd_memory import MemoryExport
from nbd_standalone import EVENT_READ, EVENT_WRITE, NbdLoop, NbdTarget, listener_uri
from targets.nbd import EVENT_REMOVED, Export, ExportHandle, nbd_error
from targets.nbd import _proto as P
from targets.serve.listener import Listener, parse_address, recv_fd, send_fd, socket_from_fd

MiB = 1 << 20


class Rig:
    def __init__(self, size=4 * MiB, conn_opts=None, exports=None, **kw):
        self.exports = exports or [MemoryExport("d", size, **kw)]
        self.export = self.exports[0]
        self.target = NbdTarget(self.exports, **(conn_opts or {}))

    def pump(self):
        for e in self.exports:
            if isinstance(e, MemoryExport):
                e.poll()
        return self.target.poll()

    def client(self, structured=True, export="d", handshake=True):
        a, b = socket.socketpair()
        self.target.add_connection(a)
        c = NbdClient(b, pump=self.pump, timeout=10)
        if handshake:
            c.connect_export(export, structured=structured)
        return c

    @property
    def conn(self):
        return self.target.connections[-1]


def pattern(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize("structured", [True, False])
def test_out_of_order_completion(structured):
    rig = Rig(async_completion=True, reorder=True)
    rig.export.data[:32 * 4096] = b"".join(pattern(4096, i) for i in range(32))
    c = rig.client(structured=structured)
    cookies = [c.request(P.CMD_READ, i * 4096, 4096) for i in range(32)]
    replies = [c.reply() for _ in cookies]
    order = [r[0] for r in replies]
    assert sorted(order) == sorted(cookies) and order != cookies      # out of order
    for ck, err, data in replies:
        assert err == 0 and data == pattern(4096, cookies.index(ck))


@pytest.mark.parametrize("structured", [True, False])
def test_synchronous_completion_many_pipelined(structured):
    rig = Rig()                    # completes inside the submit call
    c = rig.client(structured=structured)
    blob = b""
    expect = {}
    for i in range(200):
        blob += P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 2 * i, i * 512, 512) + pattern(512, i)
        blob += P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 2 * i + 1, i * 512, 512)
        c._pending[2 * i] = (P.CMD_WRITE, 512)
        c._pending[2 * i + 1] = (P.CMD_READ, 512)
        expect[2 * i + 1] = pattern(512, i)
    c.send(blob)                   # one send; the server parses it in batches
    for _ in range(400):
        ck, err, data = c.reply()
        assert err == 0
        if ck in expect:
            assert data == expect.pop(ck)
    assert not expect


def test_pipelined_write_buffers_are_reused_bounded_and_returned_at_close():
    """The connection keeps the buffers of its common WRITE length between requests
    (no alloc/free pair each): never more than were in flight at once, never one still
    in use (the data of every write lands intact), all back to the handle at close."""
    rig = Rig(async_completion=True)
    c = rig.client()
    depth = 16
    for batch in range(4):
        blob = b""
        for i in range(depth):
            ck = batch * depth + i
            blob += P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, ck, ck * 4096, 4096) + pattern(4096, ck)
            c._pending[ck] = (P.CMD_WRITE, 4096)
        c.send(blob)
        for _ in range(depth):
            ck, err, data = c.reply()
            assert err == 0
        # what the connection still holds: at most one batch's buffers
        assert rig.export.buffers_in_use <= depth * 4096
    c.write(1 << 20, pattern(512, 99))          # another length: the handle's own path
    for ck in range(4 * depth):
        assert bytes(rig.export.data[ck * 4096:(ck + 1) * 4096]) == pattern(4096, ck)
    assert bytes(rig.export.data[1 << 20:(1 << 20) + 512]) == pattern(512, 99)
    c.close()
    for _ in range(3):
        rig.pump()
    assert not rig.target.connections
    assert rig.export.handles == [] and rig.export.buffers_in_use == 0


def test_write_payload_split_across_receives():
    rig = Rig()
    c = rig.client()
    payload = os.urandom(300000)
    msg = P.REQUEST.pack(P.REQUEST_MAGIC, P.CMD_FLAG_FUA, P.CMD_WRITE, 7, 1000, len(payload)) + payload
    c._pending[7] = (P.CMD_WRITE, len(payload))
    for i in range(0, len(msg), 9973):
        c.send(msg[i:i + 9973])
        rig.pump()
    assert c.reply() == (7, 0, b"")
    assert bytes(rig.export.data[1000:1000 + len(payload)]) == payload
    assert rig.export.stats["fua"] == 1


def test_large_transfers_partial_sends():
    rig = Rig(size=16 * MiB, async_completion=True)
    c = rig.client()
    blobs = [os.urandom(MiB) for _ in range(8)]
    for i, b in enumerate(blobs):
        c.request(P.CMD_WRITE, i * MiB, MiB, payload=b)
    assert all(c.reply()[1] == 0 for _ in blobs)
    cks = {c.request(P.CMD_READ, i * MiB, MiB): i for i in range(8)}
    for _ in range(8):
        ck, err, data = c.reply()
        assert err == 0 and data == blobs[cks[ck]]
    assert rig.export.buffers_in_use == 0


def test_backpressure_when_buffers_run_out():
    rig = Rig(async_completion=True, buffer_budget=16384)
    rig.export.data[:64 * 4096] = b"".join(pattern(4096, i) for i in range(64))
    c = rig.client()
    cookies = [c.request(P.CMD_READ, i * 4096, 4096) for i in range(64)]
    rig.target.poll()
    conn = rig.conn
    assert conn.inflight == 4 and not conn.wants_read()          # stopped reading: no buffers
    assert rig.export.buffers_in_use <= 16384
    for _ in cookies:
        ck, err, data = c.reply()
        assert err == 0 and data == pattern(4096, cookies.index(ck))
        assert rig.export.buffers_in_use <= 16384
    assert rig.export.buffers_in_use == 0 and conn.wants_read()


def test_max_inflight_caps_submission():
    rig = Rig(async_completion=True, conn_opts={"max_inflight": 4})
    c = rig.client()
    cookies = [c.request(P.CMD_READ, i * 512, 512) for i in range(50)]
    rig.target.poll()
    assert rig.conn.inflight == 4 and rig.export.pending == 4
    assert sorted(c.reply()[0] for _ in cookies) == sorted(cookies)


def test_slow_reader_never_blocks_the_loop():
    rig = Rig(size=16 * MiB, conn_opts={"max_outbound": MiB})
    c = rig.client()
    other = rig.client()
    cookies = [c.request(P.CMD_READ, (i % 256) * 65536, 65536) for i in range(200)]   # 12.5 MiB of replies
    slowest = 0.0
    for _ in range(50):
        t = time.perf_counter()
        rig.pump()
        slowest = max(slowest, time.perf_counter() - t)
    slow = rig.target.connections[0]
    assert slow.inflight == 0 and slow.wants_write() and not slow.wants_read()
    assert slowest < 0.5
    other.write(0, b"meanwhile")                                   # others are served
    assert other.read(0, 9) == b"meanwhile"
    interest = {fd: ev for fd, ev, _ in rig.target.interest()}
    assert interest[slow.fileno()] == EVENT_WRITE
    assert interest[rig.target.connections[1].fileno()] == EVENT_READ
    assert sorted(c.reply()[0] for _ in cookies) == sorted(cookies)


def test_export_removed_fails_inflight_and_closes():
    rig = Rig(async_completion=True)
    c = rig.client()
    cookies = [c.request(P.CMD_READ, i * 4096, 4096) for i in range(10)]
    cookies += [c.request(P.CMD_WRITE, i * 4096, 4096, payload=bytes(4096)) for i in range(10)]
    rig.target.poll()
    assert rig.export.pending == 20
    rig.export.remove()
    errs = {}
    for _ in cookies:
        ck, err, _ = c.reply()
        errs[ck] = err
    assert set(errs) == set(cookies) and set(errs.values()) == {P.NBD_ESHUTDOWN}
    assert c.at_eof()
    for _ in range(3):
        rig.pump()
    assert not rig.target.connections                     # reaped once the backend returned
    assert rig.export.handles == [] and rig.export.buffers_in_use == 0
    c2 = rig.client(handshake=False)
    c2.handshake()
    with pytest.raises(OptionError) as ei:
        c2.go("d")
    assert ei.value.rtype == P.REP_ERR_UNKNOWN


def test_target_remove_export_closes_its_connections_only():
    rig = Rig(exports=[MemoryExport("a", MiB), MemoryExport("b", MiB)])
    ca, cb = rig.client(export="a"), rig.client(export="b")
    rig.target.remove_export("a")
    assert ca.at_eof()
    cb.write(0, b"still here")
    assert cb.read(0, 10) == b"still here"
    c = rig.client(handshake=False)
    c.handshake()
    assert c.list_exports() == ["b"]


@pytest.mark.parametrize("op,err,expect", [
    ("read", errno.EIO, P.NBD_EIO), ("write", errno.ENOSPC, P.NBD_ENOSPC),
    ("flush", errno.ENODEV, P.NBD_ESHUTDOWN), ("trim", -errno.EROFS, P.NBD_EPERM),
    ("write_zeroes", 200, P.NBD_EIO), ("read", -errno.ENOMEM, P.NBD_ENOMEM)])
def test_backend_errors_mapped_once(op, err, expect, caplog):
    rig = Rig(async_completion=True)
    c = rig.client()
    rig.export.inject_error(op, err)
    call = {"read": lambda: c.read(0, 512), "write": lambda: c.write(0, b"x" * 512),
            "flush": c.flush, "trim": lambda: c.trim(0, 512), "write_zeroes": lambda: c.write_zeroes(0, 512)}[op]
    with caplog.at_level(logging.WARNING, logger="ringstack.nbd"):
        with pytest.raises(NbdError) as ei:
            call()
    assert ei.value.errno == expect
    assert any("failed" in r.getMessage() for r in caplog.records)    # real cause logged
    call()                                                            # connection still serving


def test_nbd_error_mapping_table():
    assert nbd_error(errno.EPERM) == nbd_error(-errno.EROFS) == P.NBD_EPERM
    assert nbd_error(errno.EDQUOT) == nbd_error(errno.EFBIG) == P.NBD_ENOSPC
    assert nbd_error(errno.EOPNOTSUPP) == P.NBD_ENOTSUP
    assert nbd_error(errno.ENODEV) == nbd_error(errno.ESHUTDOWN) == P.NBD_ESHUTDOWN
    assert nbd_error(9999) == P.NBD_EIO and nbd_error(errno.EINVAL) == P.NBD_EINVAL


class _BadHandle(ExportHandle):
    def __init__(self, mode):
        self.mode = mode
        self.closed = False

    def read(self, offset, length, buf, cb):
        if self.mode == "raise":
            raise RuntimeError("backend bug")
        cb(0)
        cb(0)                                   # double completion

    def write(self, offset, data, cb, fua=False):
        cb(0)

    def flush(self, offset, length, cb):
        cb(0)

    def close(self):
        self.closed = True


class _BadExport(Export):
    def __init__(self, mode):
        super().__init__("bad", MiB)
        self.mode = mode
        self.handle = None

    def open(self, event_cb):
        self.handle = _BadHandle(self.mode)
        return self.handle


@pytest.mark.parametrize("mode", ["raise", "double"])
def test_backend_bugs_do_not_kill_the_server(mode, caplog):
    exp = _BadExport(mode)
    rig = Rig(exports=[exp])
    c = rig.client(export="bad")
    with caplog.at_level(logging.ERROR, logger="ringstack.nbd"):
        if mode == "raise":
            with pytest.raises(NbdError) as ei:
                c.read(0, 512)
            assert ei.value.errno == P.NBD_EIO
        else:
            assert c.read(0, 512) == bytes(512)
    assert any(("twice" if mode == "double" else "raised") in r.getMessage() for r in caplog.records)
    c.write(0, b"ok")
    c.disconnect()
    assert c.at_eof()
    rig.pump()
    assert exp.handle.closed and not rig.target.connections


def test_client_vanishes_with_inflight_io():
    rig = Rig(async_completion=True)
    c = rig.client()
    for i in range(10):
        c.request(P.CMD_READ, i * 4096, 4096)
    rig.target.poll()
    c.close()
    rig.target.poll()
    conn = rig.target.connections[0]
    assert conn.state in ("closing", "dead") and not conn.done
    for _ in range(3):
        rig.pump()
    assert not rig.target.connections
    assert rig.export.handles == [] and rig.export.buffers_in_use == 0


def test_alignment_and_fua_rules():
    rig = Rig(exports=[MemoryExport("d", MiB, block_min=512, can_fua=False, can_trim=False)])
    c = rig.client()
    assert not c.tflags & P.TF_SEND_FUA and not c.tflags & P.TF_SEND_TRIM
    for call in (lambda: c.read(100, 512), lambda: c.read(512, 100), lambda: c.write(1, b"x" * 512),
                 lambda: c.write(0, b"x" * 512, fua=True), lambda: c.trim(0, 512)):
        with pytest.raises(NbdError) as ei:
            call()
        assert ei.value.errno == P.NBD_EINVAL
    c.write(512, b"y" * 512)
    assert c.read(512, 512) == b"y" * 512


def test_trim_and_write_zeroes_content():
    rig = Rig()
    c = rig.client()
    c.write(0, b"\xff" * 8192)
    c.write_zeroes(1024, 1024)
    c.trim(4096, 4096)
    assert c.read(0, 8192) == b"\xff" * 1024 + bytes(1024) + b"\xff" * 2048 + bytes(4096)
    ck = c.request(P.CMD_WRITE_ZEROES, 0, 512, flags=P.CMD_FLAG_NO_HOLE)
    assert c.reply() == (ck, 0, b"")


def test_export_validation():
    with pytest.raises(ValueError):
        MemoryExport("x", MiB, block_min=3)
    with pytest.raises(ValueError):
        MemoryExport("x", MiB, block_min=4096, block_preferred=2048)
    with pytest.raises(ValueError):
        MemoryExport("x", 1000, block_min=512)
    with pytest.raises(ValueError):
        MemoryExport("x", MiB, block_max=1024)


# ------------------------------------------------------------------ listener, fd passing, loop

def test_parse_address():
    assert parse_address("/tmp/x.sock") == ("unix", "/tmp/x.sock")
    assert parse_address("unix:rel.sock") == ("unix", "rel.sock")
    assert parse_address("10809") == ("tcp", "127.0.0.1", 10809)
    assert parse_address(":0") == ("tcp", "127.0.0.1", 0)
    assert parse_address("0.0.0.0:99") == ("tcp", "0.0.0.0", 99)
    assert parse_address("[::1]:5") == ("tcp", "::1", 5)
    with pytest.raises(ValueError):
        parse_address("host:notaport")


def test_listener_unix_socket_mode_stale_and_cleanup():
    d = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(d, "l.sock")
    try:
        got = []
        lst = Listener(path, lambda s, peer: got.append(s))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.listdir(d) == ["l.sock"]
        with pytest.raises(FileExistsError):
            Listener(path, lambda s, p: None)             # live socket: refused
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        assert lst.poll() == 2 and len(got) == 2          # the liveness probe + this client
        for s in got:
            s.close()
        c.close()
        lst._unlink = None                                # simulate a crash: leave the file
        lst.close()
        assert os.path.exists(path)
        lst2 = Listener(path, lambda s, p: None)          # stale socket: replaced
        lst2.close()
        assert not os.path.exists(path)
        with open(path, "w"):
            pass
        with pytest.raises(FileExistsError):
            Listener(path, lambda s, p: None)             # not a socket: refused
    finally:
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)


def test_listener_tcp_binds_loopback_by_default():
    lst = Listener(":0", lambda s, p: s.close())
    try:
        assert lst.host == "127.0.0.1" and lst.port > 0
        assert listener_uri(lst) == f"nbd://127.0.0.1:{lst.port}/"
    finally:
        lst.close()


def test_fd_passing_places_connection_on_another_target():
    """The placement callback hands the socket to a second target through SCM_RIGHTS,
    as the reactor layer will do across processes."""
    exp = MemoryExport("d", MiB)
    home, remote = NbdTarget([exp]), NbdTarget([exp])
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rx.setblocking(False)
    d = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(d, "p.sock")

    def place(sock, peer):
        send_fd(tx, sock.fileno(), b"reactor=1")
        sock.close()                                      # the receiver owns its duplicate

    lst = Listener(path, place)
    try:
        assert recv_fd(rx) is None                        # nothing pending: no blocking
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        lst.poll()
        fd, meta = recv_fd(rx)
        assert meta == b"reactor=1"
        remote.add_connection(socket_from_fd(fd))

        def pump():
            home.poll()
            remote.poll()
        cl = NbdClient(c, pump=pump).connect_export("d")
        cl.write(0, b"placed")
        assert cl.read(0, 6) == b"placed"
        assert not home.connections and len(remote.connections) == 1
        cl.disconnect()
        assert cl.at_eof()
        cl.close()
        pump()
        assert not remote.connections
    finally:
        lst.close()
        tx.close()
        rx.close()
        os.rmdir(d)


def test_nbdloop_in_thread_serves_and_stops_cleanly():
    d = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(d, "loop.sock")
    exp = MemoryExport("d", MiB, async_completion=True)
    loop = NbdLoop([exp], path, pollers=[exp.poll])
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    try:
        clients = [NbdClient.connect(path, timeout=10).connect_export("d") for _ in range(3)]
        for i, c in enumerate(clients):
            c.write(i * 4096, bytes([i + 1]) * 4096)
        for i, c in enumerate(clients):
            assert c.read(((i + 1) % 3) * 4096, 4096) == bytes([(i + 1) % 3 + 1]) * 4096
        clients[0].disconnect()
        assert clients[0].at_eof()
        time.sleep(0.05)
        loop.stop()
        t.join(10)
        assert not t.is_alive()
        for c in clients[1:]:
            assert c.at_eof()                              # stop closes the others
        assert not os.path.exists(path)
        assert exp.handles == []
    finally:
        loop.stop()
        t.join(10)
        for c in clients:
            c.close()
        os.rmdir(d)


class _RemovingHandle(ExportHandle):
    """Fires the removed event from inside a submit call, then completes synchronously."""

    def __init__(self, export, event_cb):
        self.export, self.event_cb, self.closed = export, event_cb, False

    def read(self, offset, length, buf, cb):
        if offset == 4096:
            self.event_cb(EVENT_REMOVED)
        cb(errno.ENODEV if offset >= 4096 else 0)

    def close(self):
        self.closed = True


class _RemovingExport(Export):
    def open(self, event_cb):
        self.handle = _RemovingHandle(self, event_cb)
        return self.handle


def test_removed_event_inside_submit_stops_parsing():
    exp = _RemovingExport("r", MiB)
    rig = Rig(exports=[exp])
    c = rig.client(export="r")
    cookies = [c.request(P.CMD_READ, i * 4096, 512) for i in range(5)]   # one send batch each
    results = {}
    with pytest.raises(EOFError):
        while True:
            ck, err, _ = c.reply()
            results[ck] = err
    assert results[cookies[0]] == 0 and results[cookies[1]] == P.NBD_ESHUTDOWN
    assert set(results) <= set(cookies) and cookies[4] not in results      # not parsed after removal
    rig.pump()
    assert exp.handle.closed and not rig.target.connections


class _CacheHandle(ExportHandle):
    """Records every backend call; completions wait for `finish()` (a write-cache bdev's
    handle: FUA trim / write-zeroes must be followed by a flush of their range)."""

    def __init__(self):
        self.log, self.waiting, self.fail = [], [], set()

    def _op(self, what, cb):
        self.log.append(what)
        self.waiting.append((what, cb))

    def unmap(self, offset, length, cb):
        self._op(("unmap", offset, length), cb)

    def write_zeroes(self, offset, length, cb):
        self._op(("write_zeroes", offset, length), cb)

    def flush(self, offset, length, cb):
        self._op(("flush", offset, length), cb)

    def write(self, offset, data, cb, fua=False):
        self._op(("write", offset, len(data), fua), cb)

    def finish(self):
        w, self.waiting = self.waiting, []
        for what, cb in w:
            cb(-errno.EIO if what[0] in self.fail else 0, None)
        return len(w)

    def close(self):
        pass


class _CacheExport(Export):
    fua_needs_flush = True

    def open(self, event_cb):
        self.handle = _CacheHandle()
        return self.handle


def test_fua_trim_and_write_zeroes_on_a_write_cache_export_are_answered_after_a_flush():
    exp = _CacheExport("c", MiB)
    rig = Rig(exports=[exp])
    c = rig.client(export="c")
    hd = exp.handle
    ck = c.request(P.CMD_TRIM, 4096, 8192, flags=P.CMD_FLAG_FUA)
    rig.pump()
    assert hd.log == [("unmap", 4096, 8192)]
    hd.finish()
    rig.pump()
    assert hd.log[-1] == ("flush", 4096, 8192)          # no answer before the flush
    hd.finish()
    assert c.reply() == (ck, 0, b"")
    # without FUA: no flush; a FUA write passes fua to the handle (which flushes itself)
    ck = c.request(P.CMD_WRITE_ZEROES, 0, 512)
    ck2 = c.request(P.CMD_WRITE, 512, 512, flags=P.CMD_FLAG_FUA, payload=bytes(512))
    rig.pump()
    assert hd.log[-2:] == [("write_zeroes", 0, 512), ("write", 512, 512, True)]
    hd.finish()
    assert sorted([c.reply()[:2], c.reply()[:2]]) == sorted([(ck, 0), (ck2, 0)])
    # a failed FUA write-zeroes is answered with its error, and not flushed
    hd.fail.add("write_zeroes")
    ck = c.request(P.CMD_WRITE_ZEROES, 0, 512, flags=P.CMD_FLAG_FUA)
    rig.pump()
    n = len(hd.log)
    hd.finish()
    got = c.reply()
    assert got[0] == ck and got[1] == P.NBD_EIO and len(hd.log) == n
    c.disconnect()
