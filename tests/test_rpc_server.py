"""The JSON-RPC server on a real Unix socket, driven by a poll loop in a background thread."""
import errno
import json
import os
import socket
import stat
import time

import pytest

from reactor.rpc import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, INVALID_STATE,
                         METHOD_NOT_FOUND, PARSE_ERROR, RUNTIME, STARTUP, MethodTable, Param,
                         RpcClient, RpcConnectionError, RpcError, RpcServer, RpcServerError,
                         RpcTimeout)
from reactor.rpc.server import MSG_NEEDS_RUNTIME, MSG_NEEDS_STARTUP
from reactor.rpc.testing import ServerThread

T = 5.0  # bound on every wait


def make_table(loop_box):
    """Test methods.  ``loop_box[0]`` is the ServerThread (for deferred completions)."""
    table = MethodTable(builtins=True)
    store = {}
    held = {}

    @table.method("kv_set", params=[Param("key", str), Param("value", int, min=0)])
    def kv_set(req, p):
        """Set a key (the state the error tests check is unchanged)."""
        if p["key"] in store:
            req.errno(-errno.EEXIST)
            return
        store[p["key"]] = p["value"]
        req.result(True)

    @table.method("kv_get", states=STARTUP | RUNTIME)
    def kv_get(req, p):
        return dict(store)

    @table.method("echo", params=[Param("value", object, required=False, nullable=True)],
                  states=STARTUP | RUNTIME)
    def echo(req, p):
        req.result(p["value"])

    @table.method("later", params=[Param("polls", int, min=0), Param("value", object)])
    def later(req, p):
        loop_box[0].later(p["polls"], lambda: req.result(p["value"]))

    @table.method("hold", params=[Param("tag", str)])
    def hold(req, p):
        held[p["tag"]] = req

    @table.method("release", params=[Param("tag", str), Param("rc", int, default=0)])
    def release(req, p):
        r = held.pop(p["tag"], None)
        if r is None:
            req.errno(-errno.ENOENT)
            return
        if p["rc"]:
            r.errno(p["rc"])
        else:
            r.result(p["tag"])
        req.result(True)

    @table.method("fail_errno", params=[Param("rc", int)])
    def fail_errno(req, p):
        req.errno(p["rc"])

    @table.method("boom")
    def boom(req, p):
        raise RuntimeError("kaboom")

    @table.method("boom_after_result")
    def boom_after_result(req, p):
        req.result(1)
        raise RuntimeError("late kaboom")

    @table.method("twice")
    def twice(req, p):
        req.result(1)
        req.result(2)

    @table.method("unserializable")
    def unserializable(req, p):
        req.result({1, 2})

    @table.method("big", params=[Param("size", int, min=0)])
    def big(req, p):
        req.result("x" * p["size"])

    @table.method("startup_only", states=STARTUP)
    def startup_only(req, p):
        req.result("startup")

    @table.method("typed", params=[
        Param("name", str), Param("count", int, min=1, max=10), Param("flag", bool, default=False),
        Param("ratio", float, required=False), Param("names", list, items=str, required=False),
        Param("opts", dict, required=False), Param("mode", str, choices=("a", "b"), default="a"),
    ])
    def typed(req, p):
        return p

    table.store = store
    table.held = held
    return table


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "rpc.sock")


@pytest.fixture
def served(sock_path):
    box = [None]
    table = make_table(box)
    st = ServerThread(sock_path, table=table)
    box[0] = st
    st.table = table
    try:
        yield st
    finally:
        st.stop()
    assert not os.path.exists(sock_path)
    assert not os.path.exists(sock_path + ".lock")


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(T)
    s.connect(path)
    return s


def read_values(s, count, timeout=T):
    """Read exactly ``count`` JSON values from socket ``s`` (bounded)."""
    dec = json.JSONDecoder()
    buf = ""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        buf = buf.lstrip()
        if buf:
            try:
                v, end = dec.raw_decode(buf)
            except ValueError:
                pass
            else:
                out.append(v)
                buf = buf[end:]
                continue
        left = deadline - time.monotonic()
        assert left > 0, f"timed out with {out!r} and {buf[:200]!r}"
        s.settimeout(left)
        data = s.recv(1 << 20)
        assert data, f"connection closed after {out!r}"
        buf += data.decode()
    assert not buf.strip()
    return out


def assert_silent(s, wait=0.2):
    s.settimeout(wait)
    with pytest.raises(socket.timeout):
        data = s.recv(4096)
        raise AssertionError(f"unexpected data {data!r}")


def req(method, id=1, params=None):
    r = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        r["params"] = params
    return r


def enc(*objs):
    return b"".join(json.dumps(o).encode() for o in objs)


def check_alive(st, path):
    """The server still serves and the store is as the error left it."""
    with RpcClient(path, timeout=T) as c:
        return c.call("kv_get")


# -- stream parsing ---------------------------------------------------------------------------
def test_values_split_across_sends_and_no_newline(served, sock_path):
    s = raw(sock_path)
    data = enc(req("echo", 1, {"value": "héllo wörld ✓"}))
    for i in range(len(data)):            # one byte at a time, multi-byte UTF-8 split too
        s.sendall(data[i:i + 1])
        if i % 7 == 0:
            time.sleep(0.001)
    [resp] = read_values(s, 1)
    assert resp == {"jsonrpc": "2.0", "id": 1, "result": "héllo wörld ✓"}
    s.close()


def test_several_values_in_one_send(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc(*[req("echo", i, {"value": i * 10}) for i in range(20)]))
    out = read_values(s, 20)
    assert [r["id"] for r in out] == list(range(20))
    assert [r["result"] for r in out] == [i * 10 for i in range(20)]
    s.close()


def test_tricky_strings_and_whitespace(served, sock_path):
    s = raw(sock_path)
    value = 'br}ack]ets {[ and "quotes" and \\ backslash \\" end'
    body = json.dumps(req("echo", "id-x", {"value": value}), indent=3)
    s.sendall(b"\n\t  " + body.encode()[:40])
    time.sleep(0.05)
    s.sendall(body.encode()[40:] + b"   \r\n")
    [resp] = read_values(s, 1)
    assert resp["id"] == "id-x" and resp["result"] == value
    s.close()


def test_value_split_after_backslash(served, sock_path):
    s = raw(sock_path)
    data = enc(req("echo", 2, {"value": 'a\\"b'}))
    k = data.index(b"\\\\") + 1          # split right after a backslash
    s.sendall(data[:k])
    time.sleep(0.05)
    s.sendall(data[k:])
    [resp] = read_values(s, 1)
    assert resp["result"] == 'a\\"b'
    s.close()


def test_large_request_and_response(served, sock_path):
    s = raw(sock_path)
    big = "y" * (3 << 20)
    s.sendall(enc(req("echo", 1, {"value": big})))
    [resp] = read_values(s, 1, timeout=20)
    assert resp["result"] == big
    s.sendall(enc(req("big", 2, {"size": 8 << 20}), req("echo", 3, {"value": "after"})))
    r2, r3 = read_values(s, 2, timeout=20)
    assert len(r2["result"]) == 8 << 20 and r3["result"] == "after"
    s.close()


def test_large_response_to_slow_reader_does_not_block_others(served, sock_path):
    slow = raw(sock_path)
    slow.sendall(enc(req("big", 1, {"size": 16 << 20})))
    time.sleep(0.2)                       # server has queued what the socket would not take
    with RpcClient(sock_path, timeout=T) as c:
        assert c.call("echo", {"value": 5}) == 5
    [resp] = read_values(slow, 1, timeout=30)
    assert len(resp["result"]) == 16 << 20
    slow.close()


# -- ordering ---------------------------------------------------------------------------------
def test_responses_in_request_order_when_handlers_complete_out_of_order(served, sock_path):
    s = raw(sock_path)
    polls = [6, 1, 4, 0, 3]
    s.sendall(enc(*[req("later", i, {"polls": n, "value": i}) for i, n in enumerate(polls)],
                  req("echo", 99, {"value": "sync"})))
    out = read_values(s, 6)
    assert [r["id"] for r in out] == [0, 1, 2, 3, 4, 99]
    assert [r["result"] for r in out] == [0, 1, 2, 3, 4, "sync"]
    s.close()


def test_held_request_blocks_later_responses_until_released(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc(req("hold", 1, {"tag": "A"}), req("echo", 2, {"value": "B"})))
    assert_silent(s)                       # B is done but must wait behind A
    with RpcClient(sock_path, timeout=T) as other:
        assert other.call("release", {"tag": "A"}) is True
    a, b = read_values(s, 2)
    assert (a["id"], a["result"], b["id"], b["result"]) == (1, "A", 2, "B")
    s.close()


def test_late_completion_after_client_left_is_harmless(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc(req("hold", 1, {"tag": "gone"})))
    with RpcClient(sock_path, timeout=T) as c:
        deadline = time.monotonic() + T
        while "gone" not in served.run_in_loop(lambda: dict(served.table.held)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    s.close()
    time.sleep(0.1)
    with RpcClient(sock_path, timeout=T) as c:
        assert c.call("release", {"tag": "gone", "rc": -5}) is True
        assert c.call("echo", {"value": 1}) == 1


# -- notifications and batches ----------------------------------------------------------------
def test_notifications_get_no_response_but_run(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc({"jsonrpc": "2.0", "method": "kv_set", "params": {"key": "n", "value": 1}},
                  {"jsonrpc": "2.0", "method": "no_such_method"},
                  {"jsonrpc": "2.0", "method": "kv_set", "params": {"key": 5}},
                  req("kv_get", 7)))
    [resp] = read_values(s, 1)
    assert resp == {"jsonrpc": "2.0", "id": 7, "result": {"n": 1}}
    assert_silent(s)
    s.close()


def test_batch(served, sock_path):
    s = raw(sock_path)
    batch = [req("echo", 1, {"value": "a"}),
             {"jsonrpc": "2.0", "method": "echo", "params": {"value": "notify"}},
             req("later", 2, {"polls": 3, "value": "b"}),
             req("nope", 3),
             42,
             req("kv_set", 4, {"key": "k"})]
    s.sendall(enc(batch, req("echo", 5, {"value": "after"})))
    resp, after = read_values(s, 2)
    assert isinstance(resp, list)
    assert [r["id"] for r in resp] == [1, 2, 3, None, 4]
    assert resp[0]["result"] == "a" and resp[1]["result"] == "b"
    assert resp[2]["error"]["code"] == METHOD_NOT_FOUND
    assert resp[3]["error"]["code"] == INVALID_REQUEST
    assert resp[4]["error"]["code"] == INVALID_PARAMS and "'value'" in resp[4]["error"]["message"]
    assert after["id"] == 5
    s.close()


def test_empty_batch_and_all_notification_batch(served, sock_path):
    s = raw(sock_path)
    s.sendall(b"[]")
    [resp] = read_values(s, 1)
    assert resp == {"jsonrpc": "2.0", "id": None,
                    "error": {"code": INVALID_REQUEST, "message": "Invalid request"}}
    s.sendall(enc([{"jsonrpc": "2.0", "method": "echo"}, {"jsonrpc": "2.0", "method": "x"}]))
    assert_silent(s)
    s.sendall(enc(req("echo", 3, {"value": 3})))
    assert read_values(s, 1)[0]["result"] == 3
    s.close()


# -- errors -----------------------------------------------------------------------------------
def test_parse_error_answers_then_closes_and_earlier_requests_complete(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc(req("kv_set", 1, {"key": "p", "value": 1})) + b'{"jsonrpc": "2.0", ]')
    ok, err = read_values(s, 2)
    assert ok == {"jsonrpc": "2.0", "id": 1, "result": True}
    assert err == {"jsonrpc": "2.0", "id": None,
                   "error": {"code": PARSE_ERROR, "message": "Parse error"}}
    s.settimeout(T)
    assert s.recv(100) == b""              # closed by the server
    s.close()
    assert check_alive(served, sock_path) == {"p": 1}


@pytest.mark.parametrize("garbage", [b"}", b"nul!", b'{"a": NaN}', b"\xff\xfe{}", b"[1,}"])
def test_parse_error_variants(served, sock_path, garbage):
    s = raw(sock_path)
    s.sendall(garbage + b" ")
    [err] = read_values(s, 1)
    assert err["error"]["code"] == PARSE_ERROR
    s.settimeout(T)
    assert s.recv(100) == b""
    s.close()
    assert check_alive(served, sock_path) == {}


@pytest.mark.parametrize("bad, want_id", [
    ({"method": "echo", "id": 1}, 1),                                 # no jsonrpc
    ({"jsonrpc": "1.0", "method": "echo", "id": 2}, 2),               # wrong version
    ({"jsonrpc": "2.0", "id": 3}, 3),                                 # no method
    ({"jsonrpc": "2.0", "method": 5, "id": 4}, 4),                    # method not a string
    ({"jsonrpc": "2.0", "method": "echo", "params": 5, "id": 5}, 5),  # params not object/array
    ({"jsonrpc": "2.0", "method": "echo", "id": {"x": 1}}, None),     # id of bad type
    ({"jsonrpc": "2.0", "method": "echo", "id": 6, "extra": 1}, 6),   # unknown member
    ("just a string", None),
    (12345, None),
])
def test_invalid_request(served, sock_path, bad, want_id):
    s = raw(sock_path)
    s.sendall(enc(bad) + b" " + enc(req("kv_get", "after")))
    err, after = read_values(s, 2)
    assert err == {"jsonrpc": "2.0", "id": want_id,
                   "error": {"code": INVALID_REQUEST, "message": "Invalid request"}}
    assert after["result"] == {}           # same connection keeps working, nothing changed
    s.close()


def test_method_not_found(served, sock_path):
    with RpcClient(sock_path, timeout=T) as c:
        with pytest.raises(RpcError) as ei:
            c.call("bdev_does_not_exist", {"x": 1})
        assert (ei.value.code, ei.value.message) == (METHOD_NOT_FOUND, "Method not found")
        assert c.call("kv_get") == {}


@pytest.mark.parametrize("params, needle", [
    ({"value": 1}, "missing required parameter 'key'"),
    ({"key": "a"}, "missing required parameter 'value'"),
    ({"key": 1, "value": 1}, "parameter 'key' must be a string, got integer"),
    ({"key": "a", "value": "1"}, "parameter 'value' must be an integer, got string"),
    ({"key": "a", "value": True}, "parameter 'value' must be an integer, got boolean"),
    ({"key": "a", "value": 1.5}, "parameter 'value' must be an integer, got number"),
    ({"key": "a", "value": -1}, "parameter 'value' must be >= 0"),
    ({"key": "a", "value": 1, "vaule": 2}, "unknown parameter 'vaule'"),
    ({"key": None, "value": 1}, "parameter 'key' must be a string, got null"),
    (["a", 1], "params must be an object"),
])
def test_invalid_params_name_the_parameter_and_change_nothing(served, sock_path, params, needle):
    with RpcClient(sock_path, timeout=T) as c:
        with pytest.raises(RpcError) as ei:
            c.call("kv_set", params)
        assert ei.value.code == INVALID_PARAMS
        assert ei.value.message.startswith("Invalid parameters")
        assert needle in ei.value.message
        assert c.call("kv_get") == {}


def test_typed_params_defaults_and_constraints(served, sock_path):
    with RpcClient(sock_path, timeout=T) as c:
        got = c.call("typed", {"name": "n", "count": 2, "ratio": 3})
        assert got == {"name": "n", "count": 2, "flag": False, "ratio": 3, "names": None,
                       "opts": None, "mode": "a"}
        for bad, needle in [({"count": 11}, "'count' must be <= 10"),
                            ({"mode": "c"}, "'mode' must be one of \"a\", \"b\""),
                            ({"names": ["x", 1]}, "'names' item 1 must be a string"),
                            ({"opts": []}, "'opts' must be an object"),
                            ({"flag": "true"}, "'flag' must be a boolean")]:
            with pytest.raises(RpcError) as ei:
                c.call("typed", {"name": "n", "count": 2, **bad})
            assert ei.value.code == INVALID_PARAMS and needle in ei.value.message
        with pytest.raises(RpcError) as ei:
            c.call("spdk_get_version", {"x": 1})
        assert ei.value.code == INVALID_PARAMS and "'x'" in ei.value.message
        assert c.call("spdk_get_version", {})["fields"]["major"] >= 0


def test_errno_convention(served, sock_path):
    with RpcClient(sock_path, timeout=T) as c:
        assert c.call("kv_set", {"key": "a", "value": 1}) is True
        with pytest.raises(RpcError) as ei:
            c.call("kv_set", {"key": "a", "value": 2})
        assert (ei.value.code, ei.value.message) == (-17, "File exists")
        with pytest.raises(RpcError) as ei:
            c.call("fail_errno", {"rc": -errno.ENODEV})
        assert (ei.value.code, ei.value.message) == (-19, "No such device")
        assert c.call("kv_get") == {"a": 1}


def test_handler_exception_is_internal_error_and_server_survives(served, sock_path, caplog):
    with RpcClient(sock_path, timeout=T) as c:
        with pytest.raises(RpcError) as ei:
            c.call("boom")
        assert (ei.value.code, ei.value.message) == (INTERNAL_ERROR, "kaboom")
        assert c.call("boom_after_result") == 1          # answered before raising
        assert c.call("twice") == 1                       # second completion ignored
        with pytest.raises(RpcError) as ei:
            c.call("unserializable")
        assert ei.value.code == INTERNAL_ERROR and "JSON-serializable" in ei.value.message
        assert c.call("kv_get") == {}
    assert any("kaboom" in r.getMessage() or (r.exc_info and "kaboom" in str(r.exc_info[1]))
               for r in caplog.records)
    assert any("completed twice" in r.getMessage() for r in caplog.records)


# -- states -----------------------------------------------------------------------------------
def test_startup_and_runtime_states(served, sock_path):
    with RpcClient(sock_path, timeout=T) as c:
        with pytest.raises(RpcError) as ei:
            c.call("startup_only")
        assert (ei.value.code, ei.value.message) == (INVALID_STATE, MSG_NEEDS_STARTUP)
        runtime_current = c.call("rpc_get_methods", {"current": True})
        assert "startup_only" not in runtime_current and "kv_set" in runtime_current
        served.run_in_loop(lambda: served.server.set_state(STARTUP))
        with pytest.raises(RpcError) as ei:
            c.call("kv_set", {"key": "s", "value": 1})
        assert (ei.value.code, ei.value.message) == (INVALID_STATE, MSG_NEEDS_RUNTIME)
        # the state check comes before parameter validation, as in SPDK
        with pytest.raises(RpcError) as ei:
            c.call("kv_set", {"bogus": 1})
        assert ei.value.code == INVALID_STATE
        assert c.call("startup_only") == "startup"
        assert c.call("echo", {"value": 1}) == 1          # STARTUP|RUNTIME
        current = c.call("rpc_get_methods", {"current": True})
        assert "startup_only" in current and "kv_set" not in current and "kv_get" in current
        everything = c.call("rpc_get_methods")
        assert {"startup_only", "kv_set", "rpc_get_methods", "spdk_get_version"} <= set(everything)
        assert "get_rpc_methods" not in everything
        assert "get_rpc_methods" in c.call("rpc_get_methods", {"include_aliases": True})
        assert c.call("kv_get") == {}
        served.run_in_loop(lambda: served.server.set_state(RUNTIME))
        assert c.call("kv_set", {"key": "s", "value": 1}) is True


def test_deprecated_alias_serves_the_method(served, sock_path):
    with RpcClient(sock_path, timeout=T) as c:
        assert c.call("get_spdk_version") == c.call("spdk_get_version")


# -- socket file ------------------------------------------------------------------------------
def test_socket_mode_0600_and_files_removed_on_close(sock_path):
    old = os.umask(0)                      # even with a permissive umask
    try:
        srv = RpcServer(sock_path)
    finally:
        os.umask(old)
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock_path + ".lock").st_mode) == 0o600
        assert srv.poll() == 0             # idle
    finally:
        srv.close()
    assert not os.path.exists(sock_path) and not os.path.exists(sock_path + ".lock")


def test_refuses_live_server_and_replaces_stale_socket(sock_path):
    srv = RpcServer(sock_path)
    try:
        with pytest.raises(RpcServerError, match="in use"):
            RpcServer(sock_path)
        assert os.path.exists(sock_path)   # the loser did not remove the winner's files
        assert os.path.exists(sock_path + ".lock")
    finally:
        srv.close()
    # a stale socket file (its server died without cleaning up)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    assert os.path.exists(sock_path)
    with RpcServer(sock_path) as srv2:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert srv2.poll() == 0
    assert not os.path.exists(sock_path)


def test_refuses_socket_answered_by_unlocked_server(sock_path):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(sock_path)
    other.listen(1)
    try:
        with pytest.raises(RpcServerError, match="in use"):
            RpcServer(sock_path)
        assert os.path.exists(sock_path)
    finally:
        other.close()
        os.unlink(sock_path)
    assert not os.path.exists(sock_path + ".lock")


def test_refuses_to_remove_a_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(RpcServerError, match="not a socket"):
        RpcServer(str(path))
    assert path.read_text() == "keep me"


def test_poll_fileno_contract_without_threads(sock_path):
    """The owner's loop: poll() returns 0 when idle, the fd becomes readable on a connection,
    and everything happens inside poll()."""
    import select as sel
    table = MethodTable(builtins=True)
    with RpcServer(sock_path, table=table) as srv:
        assert srv.poll() == 0
        assert sel.select([srv.fileno()], [], [], 0)[0] == []
        c = raw(sock_path)
        assert sel.select([srv.fileno()], [], [], T)[0] == [srv.fileno()]
        assert srv.poll() > 0              # accepted
        c.sendall(enc(req("spdk_get_version", 1)))
        deadline = time.monotonic() + T
        while not sel.select([c], [], [], 0)[0]:
            assert time.monotonic() < deadline
            if not srv.poll():
                sel.select([srv.fileno()], [], [], 0.05)
        [resp] = read_values(c, 1)
        assert resp["result"]["version"].startswith("ringstack v")
        c.close()
        deadline = time.monotonic() + T
        while srv.connections:
            assert time.monotonic() < deadline
            srv.poll()
            sel.select([srv.fileno()], [], [], 0.05)
        assert srv.poll() == 0


def test_client_errors(sock_path, tmp_path):
    with pytest.raises(RpcConnectionError, match="No such file"):
        RpcClient(str(tmp_path / "missing.sock"))
    table = MethodTable(builtins=True)
    hung = []
    table.register("hang", lambda r, p: hung.append(r))
    box = [None]
    with ServerThread(sock_path, table=table):
        with RpcClient(sock_path, timeout=0.3) as c:
            with pytest.raises(RpcTimeout):
                c.call("hang")


def test_many_clients_and_half_close(served, sock_path):
    socks = [raw(sock_path) for _ in range(10)]
    for i, s in enumerate(socks):
        s.sendall(enc(req("echo", i, {"value": i})))
        s.shutdown(socket.SHUT_WR)          # half-close: answers still come back
    for i, s in enumerate(socks):
        [r] = read_values(s, 1)
        assert r["result"] == i
        s.settimeout(T)
        assert s.recv(10) == b""           # then the server closes
        s.close()
    deadline = time.monotonic() + T
    while served.run_in_loop(lambda: served.server.connections):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_requests_sent_then_connection_closed_still_run(served, sock_path):
    s = raw(sock_path)
    s.sendall(enc({"jsonrpc": "2.0", "method": "kv_set", "params": {"key": "bye", "value": 1}},
                  req("kv_set", 1, {"key": "bye2", "value": 2})))
    s.close()                               # gone before any answer
    deadline = time.monotonic() + T
    while check_alive(served, sock_path) != {"bye": 1, "bye2": 2}:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_pipelined_flood_with_backpressure_keeps_order(served, sock_path):
    """2000 requests whose answers (~40 MiB) exceed the server's output bound while the
    client is still sending: the server stops reading, then catches up, in order."""
    import threading
    s = raw(sock_path)
    n, size = 2000, 20000
    payload = b"".join(enc(req("big", i, {"size": size})) for i in range(n))
    errors = []

    def send():
        try:
            s.sendall(payload)
        except OSError as exc:
            errors.append(exc)
    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.3)                         # let the server hit its bounds before we read
    out = read_values(s, n, timeout=60)
    t.join(T)
    assert not t.is_alive() and not errors
    assert [r["id"] for r in out] == list(range(n))
    assert all(len(r["result"]) == size for r in out)
    s.close()


def test_lock_file_symlink_or_foreign_file_is_refused(sock_path, tmp_path):
    """The lock file may sit in a world-writable directory (/var/tmp): a symlink planted
    at <socket>.lock is never followed (nothing is created where it points), and a hard
    link to another file is not used either."""
    target = tmp_path / "elsewhere"
    os.symlink(target, sock_path + ".lock")
    with pytest.raises(RpcServerError, match="symbolic link"):
        RpcServer(sock_path)
    assert not os.path.lexists(target)                  # nothing created through the link
    assert os.path.islink(sock_path + ".lock")          # and the planted link left alone
    os.unlink(sock_path + ".lock")
    other = tmp_path / "other"
    other.write_text("x")
    os.link(other, sock_path + ".lock")
    with pytest.raises(RpcServerError, match="regular file of this user"):
        RpcServer(sock_path)
    assert other.read_text() == "x" and os.path.exists(sock_path + ".lock")
    os.unlink(sock_path + ".lock")
    with RpcServer(sock_path):                          # a clean path still works
        pass
    assert not os.path.exists(sock_path + ".lock")


@pytest.mark.parametrize("depth", [65, 1000, 100000])
@pytest.mark.parametrize("where", ["top", "params", "batch"])
def test_deep_nesting_gets_a_parse_error_not_silence(served, sock_path, depth, where):
    """JSON nested past SPDK's 64 levels is a parse error, answered (id null), then the
    connection closes; the server keeps serving others."""
    deep = "[" * depth + "]" * depth
    body = {"top": deep,
            "params": '{"jsonrpc":"2.0","method":"echo","id":1,"params":{"value":%s}}' % deep,
            "batch": '[{"jsonrpc":"2.0","method":"echo","id":1,"params":{"value":1}},%s]' % deep}[where]
    s = raw(sock_path)
    s.sendall(body.encode())
    (resp,) = read_values(s, 1)
    assert resp["error"]["code"] == -32700 and resp["id"] is None
    s.close()
    s2 = raw(sock_path)
    s2.sendall(enc(req("echo", 7, {"value": "still here"})))
    assert read_values(s2, 1)[0]["result"] == "still here"
    s2.close()


def test_nesting_at_the_limit_is_accepted(served, sock_path):
    value = json.loads("[" * 62 + "]" * 62)             # 62 + params {} + request {} = 64
    s = raw(sock_path)
    s.sendall(enc(req("echo", 1, {"value": value})))
    assert read_values(s, 1)[0]["result"] == value
    s.close()


@pytest.mark.parametrize("bad_id", ["1e400", "-1e400"])
def test_id_json_cannot_carry_back_is_invalid_request_and_runs_nothing(served, sock_path, bad_id):
    s = raw(sock_path)
    s.sendall(('{"jsonrpc":"2.0","method":"kv_set","id":%s,"params":{"key":"k","value":1}}' % bad_id).encode())
    (resp,) = read_values(s, 1)
    assert resp == {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32600, "message": "Invalid request"}}
    s.sendall(enc(req("echo", 2, {"value": "next"})))
    assert read_values(s, 1)[0]["result"] == "next"
    assert "k" not in served.table.store                 # the method never ran
    s.close()
