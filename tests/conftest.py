"""Suite-wide guards: no test may leave a shared-memory segment or a child process behind."""
import os
import time

import psutil
import pytest

SHM_DIR = "/dev/shm"


def _our_segments():
    try:
        return {n for n in os.listdir(SHM_DIR) if "ringstack" in n}
    except FileNotFoundError:
        return set()


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
    """Fail a test that leaves a ringstack segment in /dev/shm or a live child process."""
    before = _our_segments()
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    while True:
        leaked = _our_segments() - before
        children = [c for c in me.children(recursive=True) if _is_leak(c)]
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
