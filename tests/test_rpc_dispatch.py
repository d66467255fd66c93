"""Method dispatch without a socket (reactor.rpc.dispatch): the state check, validation,
handler contract and config replay run with no server; a server serves a given dispatcher; a
claimed-but-not-listening server holds the path without a socket file."""
import errno
import os

import pytest

from reactor.rpc import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_STATE, METHOD_NOT_FOUND,
                         RUNTIME, STARTUP, Dispatcher, MethodTable, Param, RpcClient,
                         RpcServer, RpcServerError)
from reactor.rpc import config as rpc_config
from reactor.rpc.dispatch import MSG_NEEDS_RUNTIME
from reactor.rpc.testing import ServerThread


def table_with(store):
    t = MethodTable(builtins=True)

    @t.method("put", params=[Param("key", str), Param("value", int, default=0)],
              aliases=("old_put",))
    def put(req, p):
        if p["key"] in store:
            req.errno(-errno.EEXIST)
            return
        store[p["key"]] = p["value"]
        req.result(True)

    @t.method("early", states=STARTUP)
    def early(req, p):
        return "early"

    @t.method("boom")
    def boom(req, p):
        raise RuntimeError("kaput")

    t.copy_from(__import__("reactor.rpc", fromlist=["METHODS"]).METHODS,
                rpc_config.CONFIG_METHODS)
    return t


def run(d, method, params=None):
    got = []
    d.call(method, params, lambda err, res: got.append((err, res)))
    assert len(got) == 1, "answered exactly once, synchronously here"
    return got[0]


def test_dispatch_without_socket():
    store = {}
    d = Dispatcher(table_with(store), state=RUNTIME)
    assert run(d, "put", {"key": "a", "value": 1}) == (None, True)
    assert store == {"a": 1}
    assert run(d, "put", {"key": "a"})[0] == {"code": -errno.EEXIST,
                                               "message": os.strerror(errno.EEXIST)}
    err, _ = run(d, "put", {"key": "b", "bogus": 1})
    assert err["code"] == INVALID_PARAMS and "bogus" in err["message"]
    assert "b" not in store
    assert run(d, "nope")[0]["code"] == METHOD_NOT_FOUND
    assert run(d, "old_put", {"key": "c"}) == (None, True)        # alias
    err, _ = run(d, "boom")
    assert err == {"code": INTERNAL_ERROR, "message": "kaput"}
    assert run(d, "early")[0]["code"] == INVALID_STATE


def test_dispatch_state_and_listeners():
    d = Dispatcher(table_with({}), state=STARTUP)
    seen = []
    d.state_listeners.append(lambda disp, st: seen.append((disp, st)))
    err, _ = run(d, "put", {"key": "a"})
    assert err == {"code": INVALID_STATE, "message": MSG_NEEDS_RUNTIME}
    assert run(d, "early") == (None, "early")
    d.set_state(RUNTIME)
    assert seen == [(d, RUNTIME)]
    with pytest.raises(ValueError):
        d.set_state(3)


def test_config_replays_through_a_dispatcher():
    """The loader needs only a dispatcher: STARTUP entries, framework init, RUNTIME ones."""
    store = {}
    d = Dispatcher(table_with(store), state=STARTUP)
    order = []
    rpc_config.set_framework_init_hook(lambda done: (order.append("init"), done(0)))
    try:
        done = []
        rpc_config.load_config(d, {"subsystems": [{"subsystem": "t", "config": [
            {"method": "put", "params": {"key": "x", "value": 7}},
            {"method": "early"}]}]}, lambda rc, msg: done.append((rc, msg)))
    finally:
        rpc_config.set_framework_init_hook(None)
    assert done == [(0, None)] and order == ["init"]
    assert store == {"x": 7} and d.state == RUNTIME


def test_server_serves_a_given_dispatcher(tmp_path):
    store = {}
    d = Dispatcher(table_with(store), state=RUNTIME)
    path = str(tmp_path / "s.sock")
    srv = RpcServer(path, dispatcher=d, listen=False)
    try:
        assert not os.path.exists(path) and not srv.listening
        # the path is claimed: a second server is refused before anything listens
        with pytest.raises(RpcServerError, match="in use"):
            RpcServer(path)
        srv.listen()
        assert os.path.exists(path) and srv.state is d.state and srv.table is d.table
    finally:
        srv.close()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")
    with pytest.raises(ValueError):
        RpcServer(path, table=MethodTable(), dispatcher=d)


def test_socket_requests_reach_the_dispatcher(tmp_path):
    store = {}
    path = str(tmp_path / "t.sock")
    with ServerThread(path, table=table_with(store)) as st:
        with RpcClient(path, timeout=5) as c:
            assert c.call("put", {"key": "k", "value": 3}) is True
        assert st.server.dispatcher.table.get("put") is not None
    assert store == {"k": 3}


def test_bdevperf_loads_without_a_socket(monkeypatch):
    """bdevperf's config door hands the loader a Dispatcher; no RpcServer is built."""
    from reactor.rpc import server as rpc_server
    from tools import bdevperf_bdev

    def refuse(*a, **k):
        raise AssertionError("bdevperf must not stand up an RPC server")
    monkeypatch.setattr(rpc_server.RpcServer, "__init__", refuse)
    got = []
    bdevperf_bdev._with_server(lambda d, finish: (got.append(d), finish(0, None)),
                               lambda rc, msg: got.append(rc))
    assert isinstance(got[0], Dispatcher) and got[0].state == RUNTIME and got[1] == 0


def test_discover_imports_modules_not_source_text(tmp_path, monkeypatch):
    """discover() imports every module of a package: a module that registers a method without
    any of the old grep markers in its text is found; one that fails is reported, not fatal;
    __main__ modules are not run."""
    import sys
    from reactor.rpc import METHODS, discover
    pkg = tmp_path / "discpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "plain.py").write_text(
        "import importlib\n"
        "_reg = importlib.import_module('reactor' + '.r' + 'pc')\n"
        "_reg.METHODS.register('discpkg_hello', lambda req, p: 'hi')\n")
    (pkg / "broken.py").write_text("raise ImportError('half-built')\n")
    (pkg / "__main__.py").write_text("raise SystemExit('must not run')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        failures = discover(("discpkg",))
        assert METHODS.get("discpkg_hello") is not None
        assert [m for m, _ in failures] == ["discpkg.broken"]
        assert "half-built" in failures[0][1]
    finally:
        METHODS.unregister("discpkg_hello")
        for m in [m for m in sys.modules if m.split(".")[0] == "discpkg"]:
            del sys.modules[m]
