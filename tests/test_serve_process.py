"""targets/serve in process mode (mask 0x3, two reactor processes): a second protocol
("echo", tests/apps/serve_echo.py, no NBD code) on the same reactors as NBD.  Connections
of every listener are spread over both reactors by fd passing, each listener's meta (and
the listen/peer/conn_name the framework adds) reaches the connection on whichever reactor
serves it, get_connections lists them with their stats, a listener added at runtime
works, a stop drains the echo connections (queued replies still arrive) while NBD keeps
serving."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from nbd_client import NbdClient
from proc_util import wait_for_socket
from reactor.rpc import RpcClient, RpcError

APP = os.path.join(os.path.dirname(__file__), "apps", "serve_echo.py")


@pytest.fixture
def app(tmp_path):
    sock = str(tmp_path / "rpc.sock")
    proc = subprocess.Popen([sys.executable, APP, "0x3", sock], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, proc)
        rpc = RpcClient(sock, timeout=30)
        assert rpc.call("framework_wait_init") is True
        yield rpc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0


def _ask(s, line):
    s.sendall(line.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        got = s.recv(65536)
        assert got, "connection closed"
        buf += got
    return json.loads(buf)


def _tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def test_two_protocols_share_the_reactors_and_meta_reaches_every_connection(app, tmp_path):
    upath = str(tmp_path / "echo.sock")
    assert app.call("nbd_server_start", {"listen": str(tmp_path / "nbd.sock")}) is True
    assert app.call("bdev_malloc_create", {"name": "M0", "num_blocks": 256, "block_size": 512})
    assert app.call("nbd_export_add", {"bdev_name": "M0"}) == "M0"
    assert app.call("test_echo_start", {"listen": [
        {"address": upath, "meta": {"pg_tag": 1}},
        {"address": "127.0.0.1:0", "meta": {"pg_tag": 2, "portal": "lo"}}]}) is True
    with pytest.raises(RpcError):                               # one server per protocol
        app.call("test_echo_start", {"listen": []})
    infos = app.call("test_echo_connections")
    tcp = next(x for x in infos[0]["listeners"] if x["meta"]["pg_tag"] == 2)
    port = int(tcp["display"].rsplit(":", 1)[1])
    socks = []
    try:
        seen = []
        for i in range(4):
            if i % 2:
                s = _tcp(port)
            else:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(upath)
            socks.append(s)
            seen.append(_ask(s, f"hello {i}"))
        assert sorted({r["reactor"] for r in seen}) == [0, 1]    # round-robin placement
        for i, r in enumerate(seen):
            m = r["meta"]
            assert r["line"] == f"hello {i}"
            if i % 2:
                assert m["pg_tag"] == 2 and m["portal"] == "lo"
                assert m["listen"] == f"127.0.0.1:{port}" and m["peer"].startswith("127.0.0.1:")
            else:
                assert m["pg_tag"] == 1 and m["listen"] == upath and "portal" not in m
            assert m["conn_name"].startswith(f"r{r['reactor']}.c")
        # NBD on the same reactors, meanwhile
        c = NbdClient.connect(str(tmp_path / "nbd.sock")).connect_export("M0")
        c.write(0, b"x" * 512)
        assert c.read(0, 512) == b"x" * 512
        c.disconnect()
        # get_connections: every echo connection, with its stats, on its reactor
        infos = app.call("test_echo_connections")
        conns = {x["name"]: (i["reactor"], x) for i in infos for x in i["connections"]}
        assert sorted(conns) == sorted(r["meta"]["conn_name"] for r in seen)
        assert all(x["stats"]["requests"] == 1 and x["listen"] for _r, x in conns.values())
        assert sum(i["stats"]["connections_accepted"] for i in infos) == 4
        # a listener added at runtime
        extra = app.call("test_echo_listen", {"address": "127.0.0.1:0", "meta": {"pg_tag": 3}})
        s = _tcp(int(extra.rsplit(":", 1)[1]))
        socks.append(s)
        assert _ask(s, "late")["meta"]["pg_tag"] == 3
        with pytest.raises(RpcError):
            app.call("test_echo_listen", {"address": "127.0.0.1:bad", "meta": {}})
        # stop: a request in flight is still answered, then the connection closes
        socks[0].sendall(b"hold\n")
        name0 = seen[0]["meta"]["conn_name"]
        for _ in range(500):                                   # until the server has it
            if any(x["name"] == name0 and x["stats"]["requests"] == 2
                   for i in app.call("test_echo_connections") for x in i["connections"]):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the held request never arrived")
        assert app.call("test_echo_stop") is True
        got = b""
        while True:
            part = socks[0].recv(65536)
            if not part:
                break
            got += part
        assert json.loads(got)["line"] == "hold"
        assert not os.path.exists(upath)                       # the socket file went with it
        with pytest.raises(OSError):
            _tcp(port)
        # NBD is untouched
        c = NbdClient.connect(str(tmp_path / "nbd.sock")).connect_export("M0")
        assert c.read(0, 512) == b"x" * 512
        c.disconnect()
        # and echo can start again
        assert app.call("test_echo_start", {"listen": [{"address": upath, "meta": {}}]}) is True
        assert app.call("test_echo_stop") is True
    finally:
        for s in socks:
            s.close()
