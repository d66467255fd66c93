"""Process mode: real reactor processes (mask 0x3), shared-memory rings, signals, crashes."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from reactor.app import parse_cpumask

APP = os.path.join(os.path.dirname(__file__), "apps", "xproc.py")
PY = sys.executable


def run_app(scenario, timeout=60):
    p = subprocess.run([PY, APP, scenario], capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    return p, results


def start_app(scenario):
    p = subprocess.Popen([PY, APP, scenario], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("RESULT "):
            return p, json.loads(line[7:])
        if not line and p.poll() is not None:
            break
    p.kill()
    raise AssertionError(f"app did not start: {p.stderr.read()}")


def shm_entries_of(pid):
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"ringstack.{pid}.") or
            n.startswith(f"sem.ringstack.{pid}.")]


def test_cross_process_send_msg_in_order_under_backpressure():
    p, res = run_app("order")
    assert p.returncode == 0, p.stderr
    assert res == [{"received": 200_000, "bad": 0}]


def test_io_device_registered_on_one_reactor_walk_carries_ctx_across_processes():
    p, res = run_app("channels")
    assert p.returncode == 0, p.stderr
    (r,) = res
    assert r["registered_by"] == 1            # registered from reactor 1 ...
    assert r["main_ctx"] == {"reactor": 0}    # ... and usable on reactor 0
    walk = r["walk"]
    assert walk["status"] == 0
    assert walk["ctx"]["n"] == 2
    assert walk["ctx"]["visits"] == [[0, "app_thread", 0], [1, "reactor_1", 1]]
    assert walk["caller_ctx_n"] == 1           # ctx travelled by value
    assert r["still_registered"] is False


def test_stats_shapes_cover_both_reactors():
    p, res = run_app("stats")
    assert p.returncode == 0, p.stderr
    (r,) = res
    assert [x["lcore"] for x in r["reactors"]["reactors"]] == [0, 1]
    names = [t["name"] for t in r["threads"]["threads"]]
    assert names == ["app_thread", "reactor_1"]
    for t in r["threads"]["threads"]:
        assert {"busy", "idle", "active_pollers_count", "timed_pollers_count", "paused_pollers_count"} <= set(t)


def test_sigterm_shuts_down_cleanly_and_leaves_nothing():
    p, info = start_app("idle")
    procs = [psutil.Process(pid) for pid in info["reactors"]]
    assert shm_entries_of(info["launcher"])
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "SIGTERM" in err
    for c in procs:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE
    assert shm_entries_of(info["launcher"]) == []


@pytest.mark.parametrize("scenario", ["idle", "idle_bdev"])
def test_sigkill_of_a_reactor_is_detected_and_instance_stops_with_error(scenario):
    p, info = start_app(scenario)
    assert info.get("rc", 0) == 0
    child = info["reactors"][0]
    t0 = time.monotonic()
    os.kill(child, signal.SIGKILL)
    out, err = p.communicate(timeout=20)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    assert "reactor 1" in err and "died" in err and "signal 9" in err
    assert elapsed < 15      # the bdev layer's fini waits for the dead reactor: bounded
    assert shm_entries_of(info["launcher"]) == []


def test_idle_reactors_sleep():
    p, info = start_app("idle")
    try:
        procs = [psutil.Process(info["launcher"])] + [psutil.Process(x) for x in info["reactors"]]
        time.sleep(0.5)  # let start-up settle
        before = [sum(pr.cpu_times()[:2]) for pr in procs]
        time.sleep(1.0)
        after = [sum(pr.cpu_times()[:2]) for pr in procs]
        used = [a - b for a, b in zip(after, before)]
        # an idle reactor wakes every 100 ms at most; 5% is a generous bound on a loaded box
        assert all(u < 0.05 for u in used), used
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)


@pytest.mark.parametrize("spec,cores", [("0x3", [0, 1]), ("3", [0, 1]), ("[0,1]", [0, 1]),
                                         ("[0-2,5]", [0, 1, 2, 5]), ([1], [1])])
def test_parse_cpumask(spec, cores):
    assert parse_cpumask(spec) == cores


@pytest.mark.parametrize("spec,msg", [("0x0", "selects no core"), ("zz", "invalid cpumask"),
                                       ("[1-0]", "invalid core range"), ("[a]", "invalid core list")])
def test_parse_cpumask_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_cpumask(spec)


def test_readme_embedding_example_runs(tmp_path):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "embed.py"
    script.write_text(code)
    p = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["1^2 = 1 (computed on reactor 1)", "2^2 = 4 (computed on reactor 1)",
                                     "3^2 = 9 (computed on reactor 1)"]


def test_children_load_every_project_module_the_launcher_loaded(tmp_path):
    """The launcher imports the bdev layer only under __main__ (children re-import the
    script as __mp_main__ and skip that block): its subsystem still initialises on every
    reactor, because children import each project module the launcher had loaded."""
    script = tmp_path / "late.py"
    script.write_text(f'''
import sys
sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "..")!r})
from reactor.app import App, app_stop

def main():
    import bdev
    print("bdevs:", [b.name for b in bdev.bdevs()], flush=True)
    app_stop(0)

if __name__ == "__main__":
    import bdev  # noqa: F401  (registers the "bdev" subsystem in the launcher only)
    sys.exit(App("0x3").run(main))
''')
    p = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "bdevs: []"
    assert "dropping message" not in p.stderr
