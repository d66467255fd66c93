"""SPDK JSON config: load (STARTUP entries, framework_start_init, RUNTIME entries), save,
framework_* methods, and SPDK's own rpc.py save_config/load_config against the server."""
import errno
import io
import json

import pytest

from reactor import subsystem
from reactor.rpc import config as rpc_config
from reactor.rpc import (METHODS, RUNTIME, STARTUP, MethodTable, Param, RpcClient, RpcError)
from reactor.rpc.testing import ServerThread

T = 5.0


def make_table(box, store, log):
    table = MethodTable(builtins=True)
    table.copy_from(METHODS, rpc_config.CONFIG_METHODS)

    @table.method("opts_set", params=[Param("level", int)], states=STARTUP)
    def opts_set(req, p):
        log.append(("opts_set", p["level"]))
        store["level"] = p["level"]
        req.result(True)

    @table.method("kv_create", params=[Param("key", str), Param("value", int),
                                       Param("delay", int, default=0)])
    def kv_create(req, p):
        log.append(("kv_create", p["key"]))
        if p["key"] in store:
            req.errno(-errno.EEXIST)
            return

        def apply():
            store[p["key"]] = p["value"]
            req.result(p["key"])
        if p["delay"]:
            box[0].later(p["delay"], apply)      # answered from a later poll
        else:
            apply()

    return table


@pytest.fixture
def env(tmp_path):
    """A server with test methods, a test subsystem whose config is the store, and a fake
    framework init hook."""
    store, log, box = {}, [], [None]
    table = make_table(box, store, log)
    # Only this test's subsystem: others (bdev, nbd) registered by modules imported in this
    # pytest process need a reactor, which this thread-driven server does not have.
    saved = dict(subsystem._registry)
    subsystem._registry.clear()

    def write_config():
        out = []
        if "level" in store:
            out.append({"method": "opts_set", "params": {"level": store["level"]}})
        out += [{"method": "kv_create", "params": {"key": k, "value": v}}
                for k, v in store.items() if k != "level"]
        return out
    subsystem.register_subsystem("rpc_test_sub", write_config=write_config)

    def hook(done):
        log.append(("init",))
        done(0)
    rpc_config.set_framework_init_hook(hook)
    path = str(tmp_path / "cfg.sock")
    st = ServerThread(path, table=table, state=STARTUP)
    box[0] = st
    st.path, st.store, st.log, st.table = path, store, log, table
    try:
        yield st
    finally:
        st.stop()
        rpc_config.set_framework_init_hook(None)
        subsystem._registry.clear()
        subsystem._registry.update(saved)


CONFIG = {"subsystems": [
    {"subsystem": "rpc_test_sub", "config": [
        {"method": "kv_create", "params": {"key": "a", "value": 1, "delay": 3}},
        {"method": "opts_set", "params": {"level": 7}},
        [{"method": "kv_create", "params": {"key": "b", "value": 2}},
         {"method": "kv_create", "params": {"key": "c", "value": 3, "delay": 1}}],
    ]},
    {"subsystem": "empty", "config": None},
]}


def load(st, config, start_init=True):
    box = {}
    st.run_in_loop(lambda: rpc_config.load_config(
        st.server, config, lambda rc, msg: box.update(rc=rc, msg=msg), start_init=start_init))
    import time
    deadline = time.monotonic() + T
    while "rc" not in box:
        assert time.monotonic() < deadline, "config load did not finish"
        time.sleep(0.01)
    return box["rc"], box["msg"]


def test_startup_entries_then_init_then_runtime_entries(env):
    rc, msg = load(env, CONFIG)
    assert (rc, msg) == (0, None)
    assert env.log == [("opts_set", 7), ("init",), ("kv_create", "a"), ("kv_create", "b"),
                       ("kv_create", "c")]
    assert env.store == {"level": 7, "a": 1, "b": 2, "c": 3}
    assert env.server.state == RUNTIME


def test_without_start_init_stops_after_startup_entries(env):
    rc, _ = load(env, CONFIG, start_init=False)
    assert rc == 0 and env.log == [("opts_set", 7)] and env.server.state == STARTUP


def test_failing_entry_is_named_and_stops_the_load(env):
    env.run_in_loop(lambda: env.server.set_state(RUNTIME))
    bad = {"subsystems": [{"subsystem": "rpc_test_sub", "config": [
        {"method": "kv_create", "params": {"key": "x", "value": 1}},
        {"method": "kv_create", "params": {"key": "x", "value": 2}},
        {"method": "kv_create", "params": {"key": "never", "value": 3}}]}]}
    rc, msg = load(env, bad)
    assert rc == -17
    assert msg == "subsystems[0] (rpc_test_sub) config[1] kv_create: -17 File exists"
    assert env.store == {"x": 1}


@pytest.mark.parametrize("config, needle", [
    ({"subsystems": {}}, '"subsystems" array'),
    ({"subsystems": [{"config": []}]}, "subsystems[0] must be an object"),
    ({"subsystems": [{"subsystem": "s", "config": [{"params": {}}]}]},
     'subsystems[0] (s) config[0]: entry must be an object with a "method"'),
    ({"subsystems": [{"subsystem": "s", "config": [{"method": "kv_create", "params": [1]}]}]},
     "subsystems[0] (s) config[0] kv_create: params must be an object"),
    ({"subsystems": [{"subsystem": "rpc_test_sub", "config": [
        {"method": "kv_create", "params": {"key": "k", "value": 1}},
        {"method": "no_such"}]}]},
     "subsystems[0] (rpc_test_sub) config[1]: unknown method 'no_such'"),
    ({"subsystems": [{"subsystem": "s", "config": [
        {"method": "kv_create", "params": {"key": "k"}}]}]},
     "missing required parameter 'value'"),
])
def test_bad_configs_change_nothing(env, config, needle):
    env.run_in_loop(lambda: env.server.set_state(RUNTIME))
    rc, msg = load(env, config)
    assert rc != 0 and needle in msg
    assert env.store == {} and env.log == []


def test_framework_methods_and_wait_init(env):
    with RpcClient(env.path, timeout=T) as waiter, RpcClient(env.path, timeout=T) as c:
        waiter.send_raw(json.dumps({"jsonrpc": "2.0", "method": "framework_wait_init",
                                    "id": 1}).encode())
        with pytest.raises(RpcError) as ei:
            c.call("framework_get_subsystems")
        assert ei.value.code == -1
        assert c.call("opts_set", {"level": 1}) is True
        assert c.call("framework_start_init") is True
        assert waiter.recv_value()["result"] is True
        assert c.call("framework_wait_init") is True
        with pytest.raises(RpcError) as ei:
            c.call("framework_start_init")
        assert ei.value.code == -1 and "before framework is initialized" in ei.value.message
        subs = c.call("framework_get_subsystems")
        assert {"subsystem": "rpc_test_sub", "depends_on": []} in subs
        assert c.call("framework_get_config", {"name": "rpc_test_sub"}) == \
            [{"method": "opts_set", "params": {"level": 1}}]
        with pytest.raises(RpcError) as ei:
            c.call("framework_get_config", {"name": "nope"})
        assert ei.value.code == -32602 and "'nope'" in ei.value.message


def test_save_and_load_config_rpcs_round_trip(env, tmp_path):
    with RpcClient(env.path, timeout=T) as c:
        assert c.call("load_config", CONFIG) is True      # in STARTUP: runs framework init too
        assert env.server.state == RUNTIME
        saved = c.call("save_config")
    mine = [s for s in saved["subsystems"] if s["subsystem"] == "rpc_test_sub"]
    assert mine == [{"subsystem": "rpc_test_sub", "config": [
        {"method": "opts_set", "params": {"level": 7}},
        {"method": "kv_create", "params": {"key": "a", "value": 1}},
        {"method": "kv_create", "params": {"key": "b", "value": 2}},
        {"method": "kv_create", "params": {"key": "c", "value": 3}}]}]
    # load the saved config into a fresh target: same state
    before = dict(env.store)
    env.run_in_loop(lambda: (env.store.clear(), env.server.set_state(STARTUP)))
    with RpcClient(env.path, timeout=T) as c:
        cfg = {"subsystems": mine}
        assert c.call("load_config", cfg) is True
    assert env.store == before


def test_spdk_rpc_py_save_and_load_config(env):
    spdk_config = pytest.importorskip("spdk.rpc.config")
    from spdk.rpc.client import JSONRPCClient
    with JSONRPCClient(env.path, timeout=T) as client:
        spdk_config.load_config(client, io.StringIO(json.dumps(CONFIG)))
        assert env.server.state == RUNTIME
        assert env.store == {"level": 7, "a": 1, "b": 2, "c": 3}
        out = io.StringIO()
        spdk_config.save_config(client, out, indent=2)
    saved = json.loads(out.getvalue())
    mine = [s for s in saved["subsystems"] if s["subsystem"] == "rpc_test_sub"][0]
    assert {"method": "kv_create", "params": {"key": "b", "value": 2}} in mine["config"]


def test_read_config(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(CONFIG))
    assert rpc_config.read_config(str(p)) == CONFIG
    p.write_text("{nope")
    with pytest.raises(rpc_config.ConfigError, match="not valid JSON"):
        rpc_config.read_config(str(p))
    with pytest.raises(rpc_config.ConfigError, match="cannot read"):
        rpc_config.read_config(str(tmp_path / "missing.json"))


def test_subsystem_not_in_this_app_is_skipped_with_a_warning(env, caplog):
    """SPDK's rule: entries of a subsystem this application lacks (iscsi, nvmf ...) whose
    methods are unknown are skipped with a warning; the rest of the config loads."""
    env.run_in_loop(lambda: env.server.set_state(RUNTIME))
    config = {"subsystems": [
        {"subsystem": "iscsi", "config": [{"method": "iscsi_set_options",
                                           "params": {"nop_timeout": 30}}]},
        {"subsystem": "rpc_test_sub", "config": [
            {"method": "kv_create", "params": {"key": "k", "value": 1}}]},
        {"subsystem": "nvmf", "config": [{"method": "nvmf_create_transport",
                                          "params": {"trtype": "TCP"}}]},
        {"subsystem": "scsi", "config": None}]}
    with caplog.at_level("WARNING", logger="ringstack.rpc"):
        rc, msg = load(env, config)
    assert (rc, msg) == (0, None)
    assert env.store == {"k": 1}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'iscsi'" in warned and "iscsi_set_options" in warned and "'nvmf'" in warned


def test_config_comments_are_allowed(tmp_path):
    """SPDK parses configs with comments allowed; so does read_config."""
    p = tmp_path / "c.json"
    p.write_text('/* from somewhere */\n{"subsystems": [ // a list\n'
                 '  {"subsystem": "bdev", "config": [{"method": "m", "params": '
                 '{"s": "a//b/*c*/"}}]}]}\n')
    cfg = rpc_config.read_config(str(p))
    assert cfg["subsystems"][0]["config"][0]["params"]["s"] == "a//b/*c*/"
    p.write_text('/* unterminated {"subsystems": []}')
    with pytest.raises(rpc_config.ConfigError, match="not valid JSON"):
        rpc_config.read_config(str(p))
