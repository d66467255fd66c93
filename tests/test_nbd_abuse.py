"""Protocol abuse over raw sockets against the server in a child process.  Each case is
answered as the spec says, and a second, well-behaved connection opened beforehand keeps
working afterwards (same process, same loop)."""
import os
import shutil
import socket
import tempfile

import pytest

from targets.nbd import _proto as P
from nbd_client import NbdClient, NbdError, OptionError
from nbd_standalone import ServerProcess

MiB = 1 << 20


@pytest.fixture
def srv():
    d = tempfile.mkdtemp(prefix="nbda-", dir="/tmp")
    s = ServerProcess(os.path.join(d, "s.sock"), ["disk0:8M", "ro:1M:ro"], extra=["--async"])
    try:
        s.start()
        yield s
        err = s.stop()
        assert "Traceback" not in err and "ERROR" not in err, err
        assert not os.listdir(d), "socket file left behind"
    finally:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bystander(srv):
    """A good connection opened before the abuse; checked after it."""
    c = NbdClient.connect(srv.listen, timeout=10).connect_export("disk0")
    c.write(0, b"bystander" * 100)
    yield c
    assert c.read(0, 900) == b"bystander" * 100, "the other connection stopped working"
    c.write(4096, b"x" * 4096)
    assert c.read(4096, 4096) == b"x" * 4096
    c.disconnect()
    assert c.at_eof()
    c.close()


def raw(srv, structured=True, export="disk0"):
    c = NbdClient.connect(srv.listen, timeout=10)
    if export is not None:
        c.connect_export(export, structured=structured)
    return c


def test_bad_request_magic_closes_only_that_connection(srv, bystander):
    c = raw(srv)
    c.send(b"\xde\xad\xbe\xef" + bytes(24))
    assert c.at_eof()
    c.close()


def test_bad_option_magic_closes(srv, bystander):
    c = raw(srv, export=None)
    c.handshake()
    c.send(b"NOTAMAGC" + bytes(8))
    assert c.at_eof()
    c.close()


def test_unknown_client_flags_close(srv, bystander):
    c = raw(srv, export=None)
    c.handshake(cflags=0x80)
    assert c.at_eof()
    c.close()


def test_unknown_option_is_err_unsup_and_negotiation_continues(srv, bystander):
    c = raw(srv, export=None)
    c.handshake()
    assert c.option(99, b"some data")[-1][0] == P.REP_ERR_UNSUP
    assert c.option(P.OPT_STARTTLS)[-1][0] == P.REP_ERR_UNSUP
    assert c.option(P.OPT_SET_META_CONTEXT, bytes(8))[-1][0] == P.REP_ERR_UNSUP
    assert c.option(P.OPT_LIST, b"junk")[-1][0] == P.REP_ERR_INVALID
    assert c.option(P.OPT_GO, b"\x00")[-1][0] == P.REP_ERR_INVALID
    with pytest.raises(OptionError) as ei:
        c.go("nope")
    assert ei.value.rtype == P.REP_ERR_UNKNOWN
    assert c.structured_reply()
    assert c.option(P.OPT_STRUCTURED_REPLY)[-1][0] == P.REP_ERR_INVALID   # twice
    assert sorted(c.list_exports()) == ["disk0", "ro"]
    info = c.info("disk0", requests=(P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE))
    go = c.go("disk0", requests=(P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE))
    assert info == go and go["size"] == 8 * MiB
    assert go["infos"][P.INFO_NAME] == b"disk0"
    assert go["flags"] & P.TF_HAS_FLAGS and go["flags"] & P.TF_SEND_FLUSH
    c.write(200000, b"abc")
    assert c.read(200000, 3) == b"abc"
    c.close()


def test_oversized_option_drained_then_err_too_big(srv, bystander):
    c = raw(srv, export=None)
    c.handshake()
    assert c.option(77, bytes(P.MAX_OPTION_DATA + 1000))[-1][0] == P.REP_ERR_TOO_BIG
    c.go("disk0")
    assert c.read(MiB, 16) == bytes(16)
    c.close()


def test_abort_acks_then_closes(srv, bystander):
    c = raw(srv, export=None)
    c.handshake()
    assert c.option(P.OPT_ABORT) == [(P.REP_ACK, b"")]
    assert c.at_eof()
    c.close()


def test_export_name_unknown_closes_known_works(srv, bystander):
    c = raw(srv, export=None)
    c.handshake()
    c.send_option(P.OPT_EXPORT_NAME, b"missing")
    assert c.at_eof()
    c.close()
    c = raw(srv, export=None)
    c.handshake(cflags=P.FLAG_C_FIXED_NEWSTYLE)       # no NO_ZEROES: 124 zero bytes follow
    c.export_name("")                                  # default export
    assert c.size == 8 * MiB
    assert c.read(0, 9) == b"bystander"
    c.close()


@pytest.mark.parametrize("structured", [True, False])
def test_unknown_command_einval_connection_continues(srv, bystander, structured):
    c = raw(srv, structured=structured)
    for typ in (42, P.CMD_CACHE, P.CMD_BLOCK_STATUS):
        ck = c.request(typ, 0, 512)
        assert c.reply()[:2] == (ck, P.NBD_EINVAL)
    ck = c.request(P.CMD_READ, 0, 512, flags=0x80)      # unknown flag
    assert c.reply()[:2] == (ck, P.NBD_EINVAL)
    assert c.read(0, 9) == b"bystander"
    c.close()


def test_out_of_range_and_oversized_requests(srv, bystander):
    c = raw(srv)
    with pytest.raises(NbdError) as ei:
        c.read(8 * MiB - 100, 200)
    assert ei.value.errno == P.NBD_EINVAL
    with pytest.raises(NbdError) as ei:
        c.write(8 * MiB - 100, bytes(200))              # refused, payload drained
    assert ei.value.errno == P.NBD_ENOSPC
    with pytest.raises(NbdError) as ei:
        c.write_zeroes(8 * MiB, 4096)
    assert ei.value.errno == P.NBD_ENOSPC
    with pytest.raises(NbdError) as ei:
        c.trim(2 ** 63, 4096)
    assert ei.value.errno == P.NBD_EINVAL
    with pytest.raises(NbdError) as ei:
        c.read(0, 64 * MiB)                             # beyond the max payload
    assert ei.value.errno == P.NBD_EINVAL
    assert c.read(0, 0) == b""                          # zero-length: success, no data
    assert c.read(0, 9) == b"bystander"                 # the stream is still in sync
    c.write(300000, b"fine")
    assert c.read(300000, 4) == b"fine"
    # A WRITE whose payload is too large to drain ends this connection only.
    c.request(P.CMD_WRITE, 0, 0xFFFFFFFF)
    assert c.at_eof()
    c.close()


def test_readonly_write_eperm_payload_drained(srv, bystander):
    c = raw(srv, export="ro")
    assert c.tflags & P.TF_READ_ONLY
    for _ in range(3):
        with pytest.raises(NbdError) as ei:
            c.write(0, os.urandom(100000))
        assert ei.value.errno == P.NBD_EPERM
    assert c.read(0, 16) == bytes(16)
    c.close()


def test_half_sent_request_then_disconnect(srv, bystander):
    c = raw(srv)
    c.send(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 1, 0, 512)[:13])
    c.close()
    c = raw(srv)
    c.send(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 65536) + bytes(1000))
    c.close()
    c = raw(srv, export=None)
    c.handshake()
    c.send(P.OPT_HDR.pack(P.IHAVEOPT, P.OPT_GO, 100) + bytes(10))
    c.close()
    # and a client that vanishes with requests in flight
    c = raw(srv)
    for i in range(64):
        c.request(P.CMD_READ, i * 4096, 4096)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()


def test_disc_finishes_inflight_then_closes(srv, bystander):
    c = raw(srv)
    cookies = [c.request(P.CMD_WRITE, 8192 + i * 512, 512, payload=bytes([i]) * 512) for i in range(20)]
    c.disconnect()
    got = sorted(c.reply()[0] for _ in cookies)
    assert got == sorted(cookies)
    assert c.at_eof()
    c.close()
    c = raw(srv)
    assert c.read(8192 + 19 * 512, 512) == bytes([19]) * 512
    c.close()
