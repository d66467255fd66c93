"""The NBD server inside `ringstack start` (two reactors, malloc bdevs from the JSON config),
driven by real clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio, nbd-client) and by raw
sockets.  One target serves the module; tests that change its state undo what they change.

Run as a script (``python tests/test_nbd_target.py start ...``) this file is the launcher:
it is `ringstack start`, plus stand-in ``bdev_malloc_create``/``bdev_malloc_delete`` RPCs
over ``drivers.malloc`` for as long as drivers/malloc_rpc.py does not exist.
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ in ("__main__", "__mp_main__"):
    sys.path.insert(0, ROOT)
    if importlib.util.find_spec("drivers.malloc_rpc") is None:
        import drivers.malloc as _malloc
        from reactor.rpc import Param, rpc_method

        @rpc_method("bdev_malloc_create", params=[
            Param("name", str, required=False), Param("num_blocks", int, min=1),
            Param("block_size", int), Param("uuid", str, required=False, nullable=True),
            Param("optimal_io_boundary", int, default=0)])
        def _standin_create(request, params):
            """Stand-in for drivers/malloc_rpc.py (tests only)."""
            _malloc.create(params["name"], params["num_blocks"], params["block_size"],
                           params["uuid"], params["optimal_io_boundary"],
                           cb=lambda rc, name: request.errno(rc) if rc else request.result(name))

        @rpc_method("bdev_malloc_delete", params=[Param("name", str)])
        def _standin_delete(request, params):
            """Stand-in for drivers/malloc_rpc.py (tests only)."""
            _malloc.delete(params["name"], lambda rc: request.errno(rc) if rc else request.result(True))
    if __name__ == "__main__":
        from tools.cli import main
        sys.exit(main(sys.argv[1:]))

import pytest  # noqa: E402

from targets.nbd import _proto as P  # noqa: E402
from nbd_client import NbdClient, NbdError  # noqa: E402
from tools.nbd_harness import parse_fio_json, summarize_fio  # noqa: E402
from proc_util import wait_for_socket  # noqa: E402
from reactor.rpc import RpcClient, RpcError  # noqa: E402

LAUNCHER = [sys.executable, os.path.abspath(__file__)]
MIB = 1 << 20


def need(binary):
    import shutil
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (tools/install-sysdeps.sh)")


def uri(sock, export=""):
    return f"nbd+unix:///{export}?socket={sock}"


def _wait_exports(t, n, timeout=20):
    """framework_wait_init answers once the state is RUNTIME, possibly before the config's
    RUNTIME entries (nbd_*) have run: wait for the exports themselves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(t.call("nbd_get_exports")) >= n:
                return
        except RpcError:
            pass
        assert time.monotonic() < deadline, t.stderr()
        time.sleep(0.05)


class Target:
    def __init__(self, tmp, config=None, extra=()):
        self.tmp = tmp
        self.rpc_sock = str(tmp / "rpc.sock")
        self.nbd_sock = str(tmp / "nbd.sock")
        self.errlog = open(tmp / "target.err", "w+")
        cmd = LAUNCHER + ["start", "-m", "0x3", "-r", self.rpc_sock]
        if config is not None:
            cfg = tmp / "config.json"
            cfg.write_text(json.dumps(config))
            cmd += ["-c", str(cfg)]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.errlog, text=True)
        try:
            wait_for_socket(self.rpc_sock, self.proc, missing=f"{self.rpc_sock} never appeared")
            self.rpc = RpcClient(self.rpc_sock, timeout=30)
            assert self.rpc.call("framework_wait_init") is True
        except BaseException:
            self.stop()
            raise

    def call(self, method, params=None):
        return self.rpc.call(method, params)

    def stderr(self):
        if self.errlog.closed:
            return self.err_text
        self.errlog.flush()
        self.errlog.seek(0)
        return self.errlog.read()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.errlog.closed:
            self.err_text = self.stderr()
            self.errlog.close()
        return self.proc.returncode


def _config(nbd_sock):
    return {"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 2048, "block_size": 4096}},
        ]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_server_start", "params": {"listen": nbd_sock}},
            {"method": "nbd_export_add", "params": {"bdev_name": "Malloc0"}},
            {"method": "nbd_export_add", "params": {"bdev_name": "Malloc1", "export_name": "ro", "readonly": True}},
        ]},
    ]}


@pytest.fixture(scope="module")
def _module_leak_guard():
    """conftest's no_leaks, for the whole module: the shared target lives across tests, so
    its segments and processes are checked once it has stopped."""
    import psutil
    from conftest import _is_leak, _our_segments, _ours
    before = _our_segments()
    me = psutil.Process()
    seen = set()

    def kids():
        k = me.children(recursive=True)
        seen.update(c.pid for c in k)
        return k
    kids()
    yield kids
    deadline = time.monotonic() + 5.0
    while True:
        children = [c for c in kids() if _is_leak(c)]
        leaked = {e for e in _our_segments() - before if _ours(e, seen)}
        if (not leaked and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for c in children:
        c.kill()
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"
    assert not children, f"leaked child processes: {[c.pid for c in children]}"


@pytest.fixture(autouse=True)
def no_leaks(_module_leak_guard):
    """Overrides conftest's per-test guard (see _module_leak_guard)."""
    _module_leak_guard()
    yield


@pytest.fixture(scope="module")
def target(_module_leak_guard, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nbdt")
    t = Target(tmp, _config(str(tmp / "nbd.sock")))
    _wait_exports(t, 2)
    yield t
    t.stop()


@pytest.fixture(autouse=True)
def _target_alive(request):
    yield
    if "target" in request.fixturenames:
        t = request.getfixturevalue("target")
        assert t.proc.poll() is None, t.stderr()
        assert "Traceback" not in t.stderr(), t.stderr()


def run(cmd, timeout=60, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def stats(t):
    return {r["reactor"]: r for r in t.call("nbd_get_stats")["reactors"]}


# ------------------------------------------------------------------ real clients
def test_nbdinfo_json_geometry_and_flags(target):
    need("nbdinfo")
    info = json.loads(run(["nbdinfo", "--json", uri(target.nbd_sock, "Malloc0")]).stdout)
    e = info["exports"][0]
    assert e["export-size"] == 65536 * 512
    assert (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]) == (512, 4096, 32 * MIB)
    assert not e["is_read_only"]
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"):
        assert e[flag], flag
    ro = json.loads(run(["nbdinfo", "--json", uri(target.nbd_sock, "ro")]).stdout)["exports"][0]
    assert ro["is_read_only"] and ro["export-size"] == 2048 * 4096
    assert ro["block_size_minimum"] == 4096 and not ro["can_trim"] and not ro["can_zero"]


def test_nbdinfo_list_and_rpc_listing(target):
    need("nbdinfo")
    out = json.loads(run(["nbdinfo", "--list", "--json", uri(target.nbd_sock)]).stdout)
    assert sorted(e["export-name"] for e in out["exports"]) == ["Malloc0", "ro"]
    exports = {e["export_name"]: e for e in target.call("nbd_get_exports")}
    assert exports["Malloc0"]["bdev_name"] == "Malloc0" and exports["Malloc0"]["size"] == 32 * MIB
    assert exports["ro"]["readonly"] is True and exports["ro"]["block_size"] == 4096
    cfg = target.call("save_config")
    nbd = next(s for s in cfg["subsystems"] if s["subsystem"] == "nbd")["config"]
    assert nbd[0] == {"method": "nbd_server_start", "params": {"listen": target.nbd_sock}}
    assert {"method": "nbd_export_add", "params": {"bdev_name": "Malloc1", "export_name": "ro",
                                                   "readonly": True}} in nbd


def test_nbdcopy_in_and_out_and_qemu_img_compare(target, tmp_path):
    need("nbdcopy")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(16 * MIB) + bytes(16 * MIB))   # a data half and a zero half
    run(["nbdcopy", str(src), uri(target.nbd_sock, "Malloc0")])
    out = tmp_path / "out.img"
    run(["nbdcopy", uri(target.nbd_sock, "Malloc0"), str(out)])
    assert out.read_bytes() == src.read_bytes()
    if os.path.exists("/usr/bin/qemu-img"):
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri(target.nbd_sock, "Malloc0")])
        data = src.read_bytes()           # flip a bit: a random first byte may be 0x01 already
        src.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
                            uri(target.nbd_sock, "Malloc0")], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stdout + p.stderr


def test_qemu_io_pattern(target):
    need("qemu-io")
    u = uri(target.nbd_sock, "Malloc0")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 1M", "-c", "read -P 0xab 1M 1M",
         "-c", "write -z 1M 64k", "-c", "read -P 0 1M 64k", "-c", "discard 3M 64k", "-c", "flush", u])
    p = run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 1088k 960k", u])
    assert "Pattern verification failed" not in p.stdout + p.stderr


def test_fio_verify_two_connections_on_two_reactors(target):
    need("fio")
    before = stats(target)
    p = subprocess.run(["fio", "--name=v", "--ioengine=nbd", f"--uri={uri(target.nbd_sock, 'Malloc0')}",
                        "--rw=randwrite", "--bs=4k", "--size=8M", "--numjobs=2", "--offset_increment=8M",
                        "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--output-format=json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    res = parse_fio_json(p.stdout)
    assert [j["error"] for j in res["jobs"]] == [0, 0]
    assert summarize_fio(res)["errors"] == 0
    after = stats(target)
    # Each job wrote and read back 2048 blocks on its own connection; round-robin placement
    # put the two job connections on different reactors, so each reactor served >= 4096.
    for r in (0, 1):
        assert after[r]["requests"] - before[r]["requests"] >= 4096, (before, after)
        assert after[r]["connections_accepted"] > before[r]["connections_accepted"]


def test_nbd_client_list_over_tcp_then_back(target):
    need("nbd-client")
    assert target.call("nbd_server_stop") is True
    assert not os.path.exists(target.nbd_sock)
    with pytest.raises(RpcError) as exc:
        target.call("nbd_export_add", {"bdev_name": "Malloc0"})
    assert exc.value.code == -22
    try:
        assert target.call("nbd_server_start", {"listen": "127.0.0.1:0"}) is True
        assert target.call("nbd_export_add", {"bdev_name": "Malloc0", "export_name": "alpha"}) == "alpha"
        assert target.call("nbd_export_add", {"bdev_name": "Malloc1", "export_name": "beta",
                                               "readonly": True}) == "beta"
        u = target.call("nbd_get_stats")["uri"]
        assert u.startswith("nbd://127.0.0.1:")
        port = u.rsplit(":", 1)[1].strip("/")
        p = run(["nbd-client", "-l", "127.0.0.1", port], timeout=30)
        assert "alpha" in p.stdout and "beta" in p.stdout, p.stdout
    finally:
        target.call("nbd_server_stop")
        assert target.call("nbd_server_start", {"listen": target.nbd_sock}) is True
        target.call("nbd_export_add", {"bdev_name": "Malloc0"})
        target.call("nbd_export_add", {"bdev_name": "Malloc1", "export_name": "ro", "readonly": True})
    assert oct(os.stat(target.nbd_sock).st_mode & 0o777) == "0o600"


def test_nbd_server_start_refuses_socket_paths_no_client_could_connect_to(target):
    assert target.call("nbd_server_stop") is True
    long_dir = target.tmp / ("d" * 150)
    long_dir.mkdir()
    try:
        for listen, code, says in ((str(long_dir / "s.sock"), -22, "socket path too long"),
                                   (str(target.tmp / "nul\0.sock"), -32602, "NUL byte")):
            with pytest.raises(RpcError) as exc:
                target.call("nbd_server_start", {"listen": listen})
            assert exc.value.code == code and says in exc.value.message, exc.value
        assert os.listdir(long_dir) == []
        with pytest.raises(RpcError) as exc:       # and no server was left half-started
            target.call("nbd_export_add", {"bdev_name": "Malloc0"})
        assert exc.value.code == -22
    finally:
        assert target.call("nbd_server_start", {"listen": target.nbd_sock}) is True
        target.call("nbd_export_add", {"bdev_name": "Malloc0"})
        target.call("nbd_export_add", {"bdev_name": "Malloc1", "export_name": "ro", "readonly": True})


def test_export_of_a_bdev_nbd_cannot_size_is_einval_not_eexist(target):
    """NBD sizes are below 2**63 bytes: a bigger bdev is a size problem (-EINVAL)."""
    assert target.call("bdev_null_create", {"name": "Huge", "num_blocks": 1 << 54,
                                            "block_size": 512}) == "Huge"    # 2**63 bytes
    try:
        with pytest.raises(RpcError) as exc:
            target.call("nbd_export_add", {"bdev_name": "Huge"})
        assert exc.value.code == -22, exc.value
        assert sorted(e["export_name"] for e in target.call("nbd_get_exports")) == ["Malloc0", "ro"]
    finally:
        assert target.call("bdev_null_delete", {"name": "Huge"}) is True


def test_rpc_errors_change_nothing(target):
    cases = [
        ("nbd_server_start", {"listen": str(target.tmp / "other.sock")}, -17),
        ("nbd_export_add", {"bdev_name": "NoSuchBdev"}, -19),
        ("nbd_export_add", {"bdev_name": "Malloc0"}, -17),
        ("nbd_export_remove", {"export_name": "nope"}, -2),
    ]
    for method, params, code in cases:
        with pytest.raises(RpcError) as exc:
            target.call(method, params)
        assert exc.value.code == code, (method, exc.value)
    assert sorted(e["export_name"] for e in target.call("nbd_get_exports")) == ["Malloc0", "ro"]
    assert not os.path.exists(target.tmp / "other.sock")


# ------------------------------------------------------------------ abuse and robustness
class Bystander:
    """A connection that keeps working while another one misbehaves."""

    def __init__(self, sock):
        self.c = NbdClient.connect(sock, timeout=10).connect_export("Malloc0")
        self.n = 0

    def check(self):
        self.n += 1
        data = bytes([self.n % 256]) * 4096
        self.c.write(8 * MIB + 4096 * (self.n % 16), data)
        assert self.c.read(8 * MIB + 4096 * (self.n % 16), 4096) == data


def raw(sock):
    return NbdClient.connect(sock, timeout=10)


def test_protocol_abuse_answered_while_another_connection_works(target):
    s = target.nbd_sock
    by = Bystander(s)
    by.check()
    # bad client flags -> that connection closes
    c = raw(s)
    c.handshake(cflags=0x80)
    assert c.at_eof()
    by.check()
    # unknown option -> ERR_UNSUP, and the handshake goes on
    c = raw(s)
    c.handshake()
    assert c.option(99)[-1][0] == P.REP_ERR_UNSUP
    assert c.go("Malloc0")["size"] == 32 * MIB
    # unknown command, out-of-range read, misaligned read, oversized read: EINVAL, keeps serving
    for typ, off, length in ((42, 0, 0), (P.CMD_READ, 32 * MIB, 512), (P.CMD_READ, 1, 512),
                             (P.CMD_READ, 0, 64 * MIB)):
        with pytest.raises(NbdError) as exc:
            c._one(typ, off, length)
        assert exc.value.errno == P.NBD_EINVAL, (typ, off, length)
    # write beyond the end: ENOSPC, payload drained, next request fine
    with pytest.raises(NbdError) as exc:
        c.write(32 * MIB, b"x" * 512)
    assert exc.value.errno == P.NBD_ENOSPC
    assert len(c.read(0, 512)) == 512
    by.check()
    # bad request magic -> hard disconnect of that connection only
    c.send(b"\xde\xad\xbe\xef" + bytes(24))
    assert c.at_eof()
    by.check()
    # half-sent request, then vanish
    c = raw(s).connect_export("Malloc0")
    c.send(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 65536) + b"y" * 1000)
    c.close()
    by.check()
    # write to the read-only export: EPERM, drained
    c = raw(s).connect_export("ro")
    with pytest.raises(NbdError) as exc:
        c.write(0, b"z" * 4096)
    assert exc.value.errno == P.NBD_EPERM
    assert len(c.read(0, 4096)) == 4096
    c.disconnect()
    assert c.at_eof()
    by.check()
    by.c.disconnect()


def test_slow_and_vanished_clients_never_block_a_reactor(target):
    s = target.nbd_sock
    # Three connections: with two reactors the first and third share one.
    hog = raw(s).connect_export("Malloc0")
    mid = Bystander(s)
    by = Bystander(s)
    # The hog asks for 256 MiB of reads and never reads a reply.
    hog.sock.setblocking(False)
    reqs = b"".join(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, i, (i % 32) * MIB, MIB)
                    for i in range(256))
    try:
        hog.sock.send(reqs)
    except BlockingIOError:
        pass
    time.sleep(0.3)
    t0 = time.monotonic()
    for _ in range(50):
        by.check()
        mid.check()
    assert time.monotonic() - t0 < 10
    with_hog = sum(r["connections_open"] for r in stats(target).values())
    hog.close()                                   # vanish with replies pending
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        open_now = sum(r["connections_open"] for r in stats(target).values())
        if open_now == with_hog - 1:
            break
        time.sleep(0.1)
    assert open_now == with_hog - 1, json.dumps([e["connections"] for e in target.call("nbd_get_exports")])
    by.check()
    mid.c.disconnect()
    by.c.disconnect()


def test_idle_reactors_sleep_with_connections_open(target):
    import psutil
    clients = [raw(target.nbd_sock).connect_export("Malloc0") for _ in range(3)]
    for c in clients:
        assert len(c.read(0, 4096)) == 4096
    half = raw(target.nbd_sock)                          # one more, silent in the handshake
    procs = [psutil.Process(target.proc.pid)] + psutil.Process(target.proc.pid).children()
    for p in procs:
        p.cpu_percent()
    time.sleep(1.0)
    usage = [p.cpu_percent() for p in procs]
    assert all(u < 20 for u in usage), usage             # a spinning reactor shows ~100
    for c in clients:
        c.disconnect()
    half.close()


def test_request_split_across_packets_neither_spins_nor_counts_twice(target):
    """An option or a request whose bytes arrive in pieces is parsed once, when complete; in
    between, the reactor sleeps (regression: a half option used to be re-parsed every pass,
    counted each time against the 256-option limit, and the connection was cut)."""
    import psutil
    procs = [psutil.Process(target.proc.pid)] + psutil.Process(target.proc.pid).children()
    c = raw(target.nbd_sock)
    c.handshake()
    name = b"Malloc0"
    opt = P.OPT_HDR.pack(P.IHAVEOPT, P.OPT_INFO, 4 + len(name) + 2) + len(name).to_bytes(4, "big") + name + b"\0\0"
    others = [Bystander(target.nbd_sock), Bystander(target.nbd_sock)]   # one shares c's reactor
    c.send(opt[:20])
    for _ in range(200):              # keep both reactors busy: many passes while c waits
        for b in others:
            b.check()
    for p in procs:
        p.cpu_percent()
    time.sleep(0.5)
    assert all(p.cpu_percent() < 20 for p in procs)
    c.send(opt[20:])
    replies = []
    while True:
        o, rtype, data = c.option_reply()
        replies.append(rtype)
        if rtype == P.REP_ACK or rtype & (1 << 31):
            break
    assert replies[-1] == P.REP_ACK, replies
    assert c.go("Malloc0")["size"] == 32 * MIB
    req = P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 7, 4096, 4096)
    c.send(req[:10])
    time.sleep(0.3)
    c._pending[7] = (P.CMD_READ, 4096)
    c.send(req[10:])
    cookie, err, data = c.reply()
    assert (cookie, err, len(data)) == (7, 0, 4096)
    c.disconnect()


def test_hot_remove_fails_io_and_closes_the_connection(target):
    assert target.call("bdev_malloc_create", {"name": "Hot0", "num_blocks": 8192, "block_size": 512}) == "Hot0"
    assert target.call("nbd_export_add", {"bdev_name": "Hot0"}) == "Hot0"
    c = raw(target.nbd_sock).connect_export("Hot0")
    c.write(0, b"h" * 4096)
    # pipeline reads, then remove the bdev under them
    cookies = [c.request(P.CMD_READ, i * 65536, 65536) for i in range(32)]
    result = {}
    th = threading.Thread(target=lambda: result.setdefault(
        "rc", target.call("bdev_malloc_delete", {"name": "Hot0"})))
    th.start()
    answers = []
    try:
        while True:
            cookie, err, _ = c.reply()
            answers.append(err)
    except (EOFError, ConnectionResetError, KeyError):
        pass
    th.join(30)
    assert result.get("rc") is True
    assert all(e in (0, P.NBD_ESHUTDOWN) for e in answers), answers
    assert c.at_eof()
    # once removed, the export is gone everywhere and new clients are refused
    deadline = time.monotonic() + 10
    while any(e["export_name"] == "Hot0" for e in target.call("nbd_get_exports")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c2 = raw(target.nbd_sock)
    c2.handshake()
    with pytest.raises(Exception):
        c2.go("Hot0")
    c2.close()
    Bystander(target.nbd_sock).check()


def test_sigterm_stops_cleanly(tmp_path):
    need("nbdinfo")
    t = Target(tmp_path, {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}},
        {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 2048, "block_size": 512}}]}]},
        extra=["--nbd", str(tmp_path / "nbd.sock")])
    try:
        _wait_exports(t, 2)
        out = json.loads(run(["nbdinfo", "--list", "--json", uri(t.nbd_sock)]).stdout)
        assert sorted(e["export-name"] for e in out["exports"]) == ["M0", "M1"]
        idle = raw(t.nbd_sock).connect_export("M0")     # a client still connected at shutdown
        half = raw(t.nbd_sock)                          # and one stuck in the handshake
    finally:
        rc = t.stop()
    assert rc == 0, t.stderr()
    assert "Traceback" not in t.stderr(), t.stderr()
    assert idle.at_eof() and half.at_eof()
    assert not os.path.exists(t.nbd_sock) and not os.path.exists(t.rpc_sock)


def test_nbd_flag_exports_bdevs_created_later_and_drops_deleted_ones(tmp_path):
    need("nbdinfo")
    t = Target(tmp_path, {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}}]}]},
        extra=["--nbd", str(tmp_path / "nbd.sock")])
    try:
        _wait_exports(t, 1)
        assert t.call("bdev_malloc_create", {"name": "Late0", "num_blocks": 4096, "block_size": 512}) == "Late0"
        _wait_exports(t, 2)
        out = json.loads(run(["nbdinfo", "--list", "--json", uri(t.nbd_sock)]).stdout)
        assert sorted(e["export-name"] for e in out["exports"]) == ["Late0", "M0"]
        late = [e for e in t.call("nbd_get_exports") if e["export_name"] == "Late0"][0]
        assert late["bdev_name"] == "Late0" and late["size"] == 4096 * 512
        assert t.call("bdev_malloc_delete", {"name": "Late0"}) is True
        deadline = time.monotonic() + 10
        while any(e["export_name"] == "Late0" for e in t.call("nbd_get_exports")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = json.loads(run(["nbdinfo", "--list", "--json", uri(t.nbd_sock)]).stdout)
        assert [e["export-name"] for e in out["exports"]] == ["M0"]
    finally:
        rc = t.stop()
    assert rc == 0, t.stderr()
    assert "Traceback" not in t.stderr(), t.stderr()
