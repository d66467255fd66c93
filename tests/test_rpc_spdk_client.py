"""SPDK's own Python client (PyPI `spdk`, spdk.rpc.client.JSONRPCClient) against our server,
used exactly as scripts/rpc.py uses it."""
import pytest

from reactor.rpc import MethodTable, Param, RpcServer
from reactor.rpc.testing import ServerThread

spdk_client = pytest.importorskip("spdk.rpc.client")
JSONRPCClient = spdk_client.JSONRPCClient
JSONRPCException = spdk_client.JSONRPCException


@pytest.fixture
def served(tmp_path):
    table = MethodTable(builtins=True)
    made = []

    @table.method("bdev_test_create", params=[Param("name", str), Param("num_blocks", int, min=1)])
    def create(req, p):
        made.append(p["name"])
        return p["name"]

    path = str(tmp_path / "spdk.sock")
    st = ServerThread(path, table=table)
    st.path = path
    st.made = made
    yield st
    st.stop()


def test_rpc_get_methods_and_spdk_get_version(served):
    client = JSONRPCClient(served.path, timeout=5.0)
    try:
        methods = client.call("rpc_get_methods")
        assert "rpc_get_methods" in methods and "spdk_get_version" in methods
        assert client.rpc_get_methods(current=True, include_aliases=True) == \
            ["rpc_get_methods", "get_rpc_methods", "spdk_get_version", "get_spdk_version",
             "bdev_test_create"]
        version = client.spdk_get_version()
        assert set(version) >= {"version", "fields"}
        assert isinstance(version["version"], str)
        fields = version["fields"]
        assert {"major", "minor", "patch", "suffix"} <= set(fields)
        assert all(isinstance(fields[k], int) for k in ("major", "minor", "patch"))
        assert isinstance(fields["suffix"], str)
        # several calls on the one connection, keyword style as rpc.py's generated functions
        assert client.bdev_test_create(name="Dev0", num_blocks=8) == "Dev0"
    finally:
        client.close()


def test_errors_reach_the_spdk_client(served):
    with JSONRPCClient(served.path, timeout=5.0) as client:
        with pytest.raises(JSONRPCException) as ei:
            client.bdev_test_create(name="Dev1")
        assert '"code": -32602' in ei.value.message
        assert "num_blocks" in ei.value.message
        with pytest.raises(JSONRPCException) as ei:
            client.call("no_such_method")
        assert '"code": -32601' in ei.value.message
        assert served.made == []


def test_spdk_client_batch_mode(served):
    client = JSONRPCClient(served.path, timeout=5.0, batch_mode=True)
    try:
        client.call("spdk_get_version")
        client.call("bdev_test_create", {"name": "B", "num_blocks": 1})
        client.call("bdev_test_create", {"name": "C"})
        assert client.send_batch()
        results, errors = JSONRPCClient.handle_batch_response(client.recv())
        assert results[1] == "B" and len(results) == 2
        assert len(errors) == 1 and errors[0]["code"] == -32602
    finally:
        client.close()
