"""Shared-memory segments: naming, mode, attach, cleanup on every exit path, the reaper."""
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time

import posix_ipc
import pytest

from ipc.shm import Instance, Segment, list_instance_objects, reap_dead_instances, segment_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours(pid):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"ringstack.{pid}.")
                  or n.startswith(f"sem.ringstack.{pid}."))


def test_segment_is_named_by_owner_pid_created_0600_and_attachable():
    with Instance() as inst:
        seg = inst.create_segment("data", 4096)
        assert seg.name == f"/ringstack.{os.getpid()}.data"
        mode = os.stat(f"/dev/shm/ringstack.{os.getpid()}.data").st_mode
        assert stat.S_IMODE(mode) == 0o600
        seg.buf[:5] = b"hello"
        other = Segment.attach(seg.name)
        assert bytes(other.buf[:5]) == b"hello"
        assert other.size >= 4096 and not other.owned
        other.close()
        with pytest.raises(posix_ipc.ExistentialError):
            inst.create_segment("data", 4096)  # O_CREX: never silently reuse
    assert ours(os.getpid()) == []


def test_close_refuses_while_views_are_alive_and_says_why():
    with Instance() as inst:
        seg = inst.create_segment("views", 4096)
        view = seg.buf[0:8].cast("Q")
        with pytest.raises(BufferError, match="views.*still alive"):
            seg.close()
        view.release()
        seg.close()
        assert seg.closed


def test_instance_close_unlinks_segments_and_semaphores():
    inst = Instance()
    inst.create_segment("a", 100)
    inst.create_segment("b", 100)
    inst.create_semaphore("bell")
    assert ours(os.getpid()) == sorted([f"ringstack.{os.getpid()}.a", f"ringstack.{os.getpid()}.b",
                                        f"sem.ringstack.{os.getpid()}.bell"])
    inst.close()
    inst.close()  # idempotent
    assert ours(os.getpid()) == []


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="must match"):
        segment_name(1, "../etc")


def _run_child(body: str) -> subprocess.Popen:
    # SIGINT back to Python's default: a child of a shell-backgrounded run inherits SIG_IGN.
    script = textwrap.dedent("""
        import os, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, %r)
        from ipc.shm import Instance
    """ % REPO) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_line(proc, timeout=20.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        proc.communicate()
        pytest.fail("child did not report in time")
    return proc.stdout.readline().decode().strip()


def _finish(proc, timeout=20.0):
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("child did not exit in time")


CHILD_CREATES = textwrap.dedent("""
    inst = Instance()
    inst.create_segment("seg", 4096)
    inst.create_semaphore("sem")
    {extra}
    print("ready", flush=True)
""")


def test_ignored_signal_stays_ignored():
    proc = _run_child("""
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        inst = Instance()
        inst.create_segment("seg", 4096)
        inst.install_signal_handlers()
        print("ready", flush=True)
        time.sleep(0.5)
        print(len([n for n in os.listdir("/dev/shm") if n.startswith("ringstack.%d." % os.getpid())]), flush=True)
    """)
    assert _wait_line(proc) == "ready"
    proc.send_signal(signal.SIGINT)
    assert _wait_line(proc) == "1"          # still running, segment still there
    _finish(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize("how", ["normal", "exception", "sigterm", "sigint"])
def test_every_exit_path_unlinks_what_the_instance_created(how):
    if how == "normal":
        body = CHILD_CREATES.format(extra="")
    elif how == "exception":
        body = CHILD_CREATES.format(extra="") + "raise RuntimeError('boom')\n"
    else:
        body = CHILD_CREATES.format(extra="inst.install_signal_handlers()") + "time.sleep(30)\n"
    proc = _run_child(body)
    assert _wait_line(proc) == "ready"
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigint":
        proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    if how == "sigterm":
        assert proc.returncode == -signal.SIGTERM  # the default action still happens
    elif how == "sigint":
        assert b"KeyboardInterrupt" in err
    elif how == "exception":
        assert b"boom" in err
    else:
        assert proc.returncode == 0, err
    assert ours(proc.pid) == []


def test_sigkilled_attacher_leaks_nothing_the_owner_unlinks():
    with Instance() as inst:
        seg = inst.create_segment("shared", 4096)
        proc = _run_child(f"""
            from ipc.shm import Segment
            s = Segment.attach({seg.name!r})
            s.buf[:2] = b"hi"
            print("ready", flush=True)
            time.sleep(30)
        """)
        assert _wait_line(proc) == "ready"
        proc.kill()
        _finish(proc)
        assert bytes(seg.buf[:2]) == b"hi"
    assert ours(os.getpid()) == []


def test_reaper_removes_a_sigkilled_owners_objects_and_spares_live_ones():
    with Instance() as live:
        live.create_segment("alive", 4096)
        live.create_semaphore("alivesem")
        proc = _run_child(CHILD_CREATES.format(extra="") + "time.sleep(30)\n")
        assert _wait_line(proc) == "ready"
        proc.kill()
        _finish(proc)  # reaped: the pid is gone (a zombie would also count as dead)
        assert ours(proc.pid) == [f"ringstack.{proc.pid}.seg", f"sem.ringstack.{proc.pid}.sem"]
        assert proc.pid in list_instance_objects()
        removed = reap_dead_instances()
        assert sorted(removed) == [f"ringstack.{proc.pid}.seg", f"sem.ringstack.{proc.pid}.sem"]
        assert ours(proc.pid) == []
        assert ours(os.getpid()) == [f"ringstack.{os.getpid()}.alive", f"sem.ringstack.{os.getpid()}.alivesem"]


def test_forked_child_does_not_unlink_the_parents_objects():
    with Instance() as inst:
        inst.create_segment("forked", 4096)
        pid = os.fork()
        if pid == 0:  # child: closing must not unlink what the parent owns
            try:
                inst.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ours(os.getpid()) == [f"ringstack.{os.getpid()}.forked"]
    assert ours(os.getpid()) == []
