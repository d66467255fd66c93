"""`ringstack rpc`: parameters from the method table, output, errors and exit codes."""
import errno
import io
import json
import os
import subprocess
import sys

import pytest

from reactor.rpc import METHODS, Param, STARTUP, RUNTIME
from reactor.rpc.testing import ServerThread
from tools.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEN = []


@pytest.fixture
def cli_methods():
    """Methods registered in the process-wide table, which is what the CLI reads."""
    def typed(req, p):
        SEEN.append(p)
        return p

    def fail(req, p):
        req.errno(-errno.ENODEV)

    METHODS.register("test_cli_typed", typed, params=[
        Param("name", str), Param("num_blocks", int, min=1), Param("readonly", bool, default=False),
        Param("ratio", float, required=False), Param("base_bdevs", list, items=str, required=False),
        Param("opts", dict, required=False)])
    METHODS.register("test_cli_fail", fail, params=[Param("name", str)])
    yield
    METHODS.unregister("test_cli_typed")
    METHODS.unregister("test_cli_fail")
    SEEN.clear()


@pytest.fixture
def served(tmp_path, cli_methods):
    path = str(tmp_path / "cli.sock")
    st = ServerThread(path)
    st.path = path
    yield st
    st.stop()


def run_cli(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["rpc", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_good_call_converts_types_from_the_table(served, capsys):
    rc, out, err = run_cli(capsys, "-s", served.path, "test_cli_typed", "--name", "Malloc0",
                           "--num-blocks", "0x10", "--readonly", "--ratio", "2.5",
                           "--base_bdevs", "a", "b", "--opts", '{"k": [1]}')
    assert rc == 0 and err == ""
    assert json.loads(out) == {"name": "Malloc0", "num_blocks": 16, "readonly": True,
                               "ratio": 2.5, "base_bdevs": ["a", "b"], "opts": {"k": [1]}}
    assert out.startswith("{\n  ")                      # indented JSON
    rc, out, _ = run_cli(capsys, "-s", served.path, "test_cli_typed", "--name", "x",
                         "--num_blocks", "3", "--readonly", "false", "--base_bdevs", '["c"]')
    assert rc == 0
    got = json.loads(out)
    assert got["readonly"] is False and got["base_bdevs"] == ["c"] and got["ratio"] is None


def test_builtin_methods(served, capsys):
    rc, out, _ = run_cli(capsys, "-s", served.path, "spdk_get_version")
    assert rc == 0 and json.loads(out)["version"].startswith("ringstack v")
    rc, out, _ = run_cli(capsys, "-s", served.path, "rpc_get_methods", "--current")
    assert rc == 0 and "test_cli_typed" in json.loads(out)


def test_server_error_is_one_line_and_nonzero(served, capsys):
    rc, out, err = run_cli(capsys, "-s", served.path, "test_cli_fail", "--name", "nope")
    assert rc != 0 and out == ""
    assert err == "ringstack rpc: error: -19 No such device\n"


@pytest.mark.parametrize("argv, needle", [
    (["test_cli_typed", "--name", "x"], "missing required parameter '--num_blocks'"),
    (["test_cli_typed", "--name", "x", "--num_blocks", "ten"], "'num_blocks' must be an integer"),
    (["test_cli_typed", "--name", "x", "--num_blocks", "0"], "'num_blocks' must be >= 1"),
    (["test_cli_typed", "--name", "x", "--num_blocks", "1", "--readonly", "maybe"],
     "'readonly' must be a boolean"),
    (["test_cli_typed", "--name", "x", "--num_blocks", "1", "--bogus", "1"],
     "unrecognized arguments: --bogus"),
    (["no_such_method_anywhere"], "unknown method 'no_such_method_anywhere'"),
])
def test_client_side_errors_are_one_line(served, capsys, argv, needle):
    rc, out, err = run_cli(capsys, "-s", served.path, *argv)
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and needle in err, err
    assert SEEN == []


def test_missing_socket_is_one_line(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "-s", str(tmp_path / "absent.sock"), "spdk_get_version")
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and "cannot connect" in err and "absent.sock" in err


def test_stdin_request_and_params(served, capsys, monkeypatch):
    rc, out, _ = run_cli(capsys, "-s", served.path, "-", monkeypatch=monkeypatch,
                         stdin='{"method": "test_cli_typed", "params": {"name": "s", "num_blocks": 2}}')
    assert rc == 0 and json.loads(out)["name"] == "s"
    rc, out, _ = run_cli(capsys, "-s", served.path, "test_cli_typed", "-", monkeypatch=monkeypatch,
                         stdin='{"name": "p", "num_blocks": 3}')
    assert rc == 0 and json.loads(out)["num_blocks"] == 3
    rc, out, err = run_cli(capsys, "-s", served.path, "-", monkeypatch=monkeypatch,
                           stdin='{"method": "test_cli_typed", "params": {"name": "s"}}')
    assert rc != 0 and err.startswith("ringstack rpc: error: -32602 Invalid parameters")
    assert "num_blocks" in err and err.count("\n") == 1
    rc, out, err = run_cli(capsys, "-s", served.path, "-", monkeypatch=monkeypatch, stdin="{oops")
    assert rc != 0 and "not a JSON object" in err


def test_installed_command_exit_codes(tmp_path):
    """The console script end to end, in a child process (waited for)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ringstack")
    if not os.path.exists(exe):
        pytest.skip("console script not installed (pip install -e .)")
    path = str(tmp_path / "sub.sock")
    env = dict(os.environ, PYTHONPATH=ROOT)
    with ServerThread(path):
        ok = subprocess.run([exe, "rpc", "-s", path,
                             "spdk_get_version"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=env)
        assert ok.returncode == 0, ok.stderr
        assert "ringstack v" in json.loads(ok.stdout)["version"]
        bad = subprocess.run([exe, "rpc", "-s", path,
                              "rpc_get_methods", "--current", "nah"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT, env=env)
        assert bad.returncode == 1 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1
    gone = subprocess.run([exe, "rpc", "-s", path,
                           "spdk_get_version"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
