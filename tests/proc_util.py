"""Helpers for the tests that start a target process."""
from __future__ import annotations

import os
import time


def wait_for_socket(path, proc, timeout=30, missing=None):
    """Wait until ``path`` exists; AssertionError when ``proc`` exits first (with its
    stderr) or after ``timeout`` s (``missing``, default "RPC socket never appeared")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise AssertionError(f"target exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(missing or "RPC socket never appeared")


def stop_all(procs, timeout=20):
    """SIGTERM every target still running and reap it (SIGKILL after ``timeout`` s)."""
    import signal
    import subprocess
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def started_targets(make, *args):
    """A fixture's body: yields ``start(**kw)``, which makes ``make(*args, **kw)`` (a target
    with ``stop()``) and keeps it; every one made is stopped at the end."""
    made = []

    def start(**kw):
        t = make(*args, **kw)
        made.append(t)
        return t
    yield start
    for t in made:
        t.stop()


def running(pid) -> bool:
    """Alive and not a zombie (a daemon reparented to init is reaped in init's own time)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(ln for ln in f if ln.startswith("State:")).split()[1]
    except (OSError, StopIteration):
        return False
    return state != "Z"
