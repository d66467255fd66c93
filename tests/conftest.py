"""Suite-wide guards: no test may leave a shared-memory segment or a child process behind."""
import os
import re
import time

import psutil
import pytest

SHM_DIR = "/dev/shm"


def _our_segments():
    try:
        return {n for n in os.listdir(SHM_DIR) if "ringstack" in n}
    except FileNotFoundError:
        return set()


def _owner_pid(entry: str):
    m = re.match(r"^(?:sem\.)?ringstack\.(\d+)\.", entry)
    return int(m.group(1)) if m else None


def _ours(entry: str, descendants: set) -> bool:
    """Whether a new /dev/shm entry came from this test: created by this process or one
    of its children, or left by an owner that is gone.  Entries of live processes that are
    not ours (another test run on the same machine) are not this test's leak."""
    pid = _owner_pid(entry)
    if pid is None or pid == os.getpid() or pid in descendants:
        return True
    return not psutil.pid_exists(pid)


def _is_leak(proc) -> bool:
    """A live child that is ours to clean up.  multiprocessing's resource tracker and
    forkserver are per-interpreter helpers that outlive a test by design."""
    try:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "resource_tracker" not in cmd and "forkserver" not in cmd


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a ringstack segment in /dev/shm or a live child process.
    What a module- or session-scoped fixture started before the test (a target that
    several tests share) is that fixture's to stop and check, not the test's."""
    before = _our_segments()
    me = psutil.Process()
    shared = {c.pid for c in me.children(recursive=True)}
    seen_children: set = set()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        kids = [c for c in me.children(recursive=True) if c.pid not in shared]
        seen_children.update(c.pid for c in kids)
        leaked = {e for e in _our_segments() - before if _ours(e, seen_children)}
        children = [c for c in kids if _is_leak(c)]
        if not leaked and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for c in children:
        c.kill()
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            pass
    assert not leaked, f"test leaked shared-memory segments: {sorted(leaked)}"
    assert not children, f"test leaked child processes: {[c.pid for c in children]}"


def pytest_configure(config):
    config.addinivalue_line("markers", "bdev_io_may_be_lost(why): the test loses I/O on purpose "
                            "(a reactor killed under it); callbacks are not counted")


@pytest.fixture(autouse=True)
def bdev_invariants(request, monkeypatch):
    """Deterministic bdev and driver tests end with the layer's invariants intact
    (tests/bdev_invariants.py): no io_outstanding negative or left over, every callback
    of the test's I/O calls run exactly once."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    if not name.startswith(("test_bdev_", "test_drivers_")):
        yield
        return
    import bdev_invariants
    tracker = bdev_invariants.install(monkeypatch)
    yield tracker
    problems = tracker.finish(request.node.get_closest_marker("bdev_io_may_be_lost") is not None)
    assert not problems, "bdev invariants broken:\n  " + "\n  ".join(problems)
