"""A bounded fuzz of the control socket (issue 12): hostile requests generated from the RPC
method table itself -- wrong types, every declared integer bound +-1 and values past 64
bits, huge and NUL-bearing strings, deep nesting, unknown parameters, odd ids -- sent to a
real `ringstack start -m 0x3`.  After each one: exactly one answer came back within a
bound (or, for a parse error, the answer and then the close), the server still answers,
and where the answer was an error the observable state (bdevs with their claims, sizes
and QoS limits; NBD exports) is what it was before.

The cases are generated deterministically (a seeded RNG), so a failure names a case that
can be replayed; the count and the outcome are printed (`pytest -s`)."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest

from proc_util import wait_for_socket
from reactor.rpc import METHODS, RpcClient, discover

ROOT = os.path.join(os.path.dirname(__file__), "..")
ANSWER_S = 10          # every request must be answered within this
SEED = 12

# Methods whose success ends or restarts the instance, or waits on purpose: left out.
SKIP = {"spdk_kill_instance", "framework_start_init", "framework_wait_init", "nbd_server_stop",
        "load_config", "load_subsystem_config", "bdev_wait_for_examine", "rpc_get_methods",
        "spdk_get_version", "save_config", "save_subsystem_config", "framework_get_config",
        "framework_get_subsystems", "framework_get_reactors", "thread_get_stats"}
BASES = ["Malloc0", "Null0"]   # what the target starts with


def _has_default(p) -> bool:
    return p.default is not None and repr(p.default) != "MISSING"


def _valid(p):
    """A plausible valid value for parameter ``p`` (other parameters of a case)."""
    if _has_default(p):
        return p.default
    if p.name == "uuid":
        return "0b0fa0c2-0000-4000-8000-00000000f00d"
    if p.choices:
        return list(p.choices)[0]
    t = p.type
    if t is bool:
        return False
    if t is int:
        lo = int(p.min) if p.min is not None else 1
        return max(lo, 1) if p.max is None or p.max >= 1 else lo
    if t is float:
        return 1.0
    if t is list:
        return []
    if t is dict:
        return {}
    if "bdev" in p.name or p.name in ("name", "base_name"):
        return "Null0" if "base" in p.name else "fz0"
    return "fz0"


def _hostile(p):
    """Hostile values for parameter ``p``."""
    out = []
    t = p.type
    wrong = {str: [1, True, None, [], {}], int: ["1", 1.5, True, None, [1]],
             bool: ["true", 1, None], float: ["1.0", None, []], list: ["x", 1, {}],
             dict: ["x", 1, []]}
    out += wrong.get(t, [])
    if t is int:
        for b in (p.min, p.max):
            if b is not None:
                out += [int(b) - 1, int(b) + 1]
        if "timeout" in p.name and p.max is not None:
            out.remove(int(p.max) - 1)      # a valid wait of nearly the maximum: it answers, later
        out += [2 ** 64, 2 ** 64 - 1, 2 ** 63, -2 ** 63 - 1, -1, 10 ** 30]
    if t is str:
        out += ["", "x" * (1 << 20), "a\0b", "../" * 50, "é" * 300]
    if p.choices:
        out.append("no-such-choice")
    deep = 0
    for _ in range(70):
        deep = [deep]
    out.append(deep)
    return out


def _cases():
    discover()
    rng = random.Random(SEED)
    cases = []
    for name in sorted(METHODS.names()):
        m = METHODS.get(name)
        if m is None or m.schema is None or name in SKIP or name.startswith("test_") or m.alias_of:
            continue
        params = list(m.schema)
        # two bases to vary from: the required parameters only, and every parameter
        # with a plausible value (an optional name makes a wait or a lookup happen)
        required = {p.name: _valid(p) for p in params if p.required}
        full = {p.name: _valid(p) for p in params}
        cases.append((name, {"params": []}))
        cases.append((name, {"params": "x"}))
        cases.append((name, {"params": dict(required, zz_unknown=1)}))
        for base in (required, full):
            for p in params:
                for v in _hostile(p):
                    cases.append((name, {"params": dict(base, **{p.name: v})}))
        for p in params:
            if p.required:
                cases.append((name, {"params": {k: v for k, v in full.items() if k != p.name}}))
    for raw_id in ("1e400", "-1e400", '{"a":1}', "[1]", "true", json.dumps("i" * 200)):
        cases.append(("bdev_get_bdevs", {"raw_id": raw_id}))
    rng.shuffle(cases)
    return cases


def _send(sock_path, method, case, ident):
    """Send one case; return (answer or None, closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(ANSWER_S)
    s.connect(sock_path)
    try:
        if "raw_id" in case:
            body = '{"jsonrpc":"2.0","method":"%s","id":%s}' % (method, case["raw_id"])
        else:
            # every case names its own bdev ("fz<k>"): a name an earlier case created
            # must not turn this one's lookup or wait into a hit
            body = json.dumps({"jsonrpc": "2.0", "method": method, "id": ident,
                               "params": case["params"]}).replace('"fz0"', f'"fz{ident}"')
        s.sendall(body.encode())
        dec = json.JSONDecoder()
        buf = b""
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            try:
                return dec.raw_decode(buf.decode().lstrip())[0], False
            except ValueError:
                continue
        return None, True
    finally:
        s.close()


def _state(c):
    bdevs = sorted((b["name"], b["claimed"], b["num_blocks"], json.dumps(b.get("assigned_rate_limits"),
                                                                        sort_keys=True))
                   for b in c.call("bdev_get_bdevs"))
    try:
        exports = sorted(e["export_name"] for e in c.call("nbd_get_exports"))
    except Exception as exc:       # no NBD server: that is state too
        exports = repr(type(exc).__name__)
    try:                           # registered Ceph clusters (ENOENT: none)
        clusters = sorted(e["cluster_name"] for e in c.call("bdev_rbd_get_clusters_info"))
    except Exception as exc:
        clusters = repr(type(exc).__name__)
    return bdevs, exports, clusters


@pytest.fixture
def target(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 256, "block_size": 512}},
        {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 256, "block_size": 512}}]}]}))
    sock = str(tmp_path / "rpc.sock")
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "start", "-m", "0x3", "-r", sock, "-c", str(cfg)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, p)
        c = RpcClient(sock, timeout=30)
        c.call("framework_wait_init")
        c.call("nbd_server_start", {"listen": str(tmp_path / "nbd.sock")})
        c.call("nbd_export_add", {"bdev_name": "Malloc0"})
        yield sock, c
    finally:
        p.terminate()
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    assert "Traceback" not in err, err[-4000:]


def test_hostile_requests_over_the_schema_are_answered_and_change_nothing(target):
    sock, c = target
    cases = _cases()
    assert len(cases) >= 300
    t0 = time.monotonic()
    before = _state(c)
    outcomes = {"error": 0, "result": 0, "closed": 0}
    problems = []
    for k, (method, case) in enumerate(cases):
        if time.monotonic() - t0 > 55:
            problems.append(f"ran out of time after {k} cases")
            break
        ans, closed = _send(sock, method, case, k)
        where = f"case {k}: {method} {json.dumps(case)[:200]}"
        if ans is None:
            problems.append(f"{where}: no answer within {ANSWER_S} s")
            continue
        if isinstance(ans, list) or "jsonrpc" not in ans or ("error" in ans) == ("result" in ans):
            problems.append(f"{where}: malformed answer {str(ans)[:200]}")
            continue
        try:
            now = _state(c)                       # the probe: the server still answers
        except Exception as exc:
            problems.append(f"{where}: probe failed: {exc!r}")
            break
        if "error" in ans:
            outcomes["error"] += 1
            if ans["error"]["code"] == -32603:
                problems.append(f"{where}: internal error {ans['error']}")
            if now != before:
                problems.append(f"{where}: error {ans['error']} but state changed: {before} -> {now}")
        else:
            outcomes["result"] += 1
        before = now
    print(f"\nfuzz: {len(cases)} cases, {outcomes}, {len(problems)} problems, "
          f"{time.monotonic() - t0:.1f} s")
    assert not problems, "\n".join(problems[:40])
