"""Doorbell: an idle consumer sleeps at ~0% CPU and wakes promptly, with no missed
wake-ups over many sleep/wake cycles."""
import multiprocessing
import os
import time

import psutil
import pytest

from ipc.mesh import Mesh
from ipc.shm import Instance

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def stop_resource_tracker():
    """spawn starts multiprocessing's resource tracker, a child that outlives the test."""
    yield
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._stop()


def test_producer_rings_only_a_sleeping_consumer():
    with Instance() as inst:
        mesh = Mesh.create(inst, 2, capacity=1024)
        bell = mesh.doorbell(1)
        assert bell.ring_if_sleeping() is False
        bell.prepare_sleep()
        assert bell.sleeping
        assert bell.ring_if_sleeping() is True
        assert not bell.sleeping
        assert bell.ring_if_sleeping() is False  # flag cleared: one post per sleep
        t0 = time.monotonic()
        assert bell.sleep(5.0) is True  # already rung: returns at once
        assert time.monotonic() - t0 < 1.0
        bell.prepare_sleep()
        bell.cancel_sleep()
        assert bell.ring_if_sleeping() is False
        t0 = time.monotonic()
        assert bell.sleep(0.05) is False  # nobody rang: times out
        assert time.monotonic() - t0 >= 0.04
        mesh.close()


def test_surplus_posts_do_not_cut_the_next_sleep_short():
    with Instance() as inst:
        mesh = Mesh.create(inst, 2, capacity=1024)
        bell = mesh.doorbell(1)
        sem = bell.semaphore.sem
        bell.prepare_sleep()
        for _ in range(3):  # three producers saw the flag before any cleared it
            sem.release()
        assert bell.sleep(1.0) is True
        assert bell.sleep(0.02) is False
        mesh.close()


def _echo_consumer(mesh_name, conn):
    """Reactor 1 in interrupt mode: sleep when idle, echo every record back to 0."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[1]})
    mesh = Mesh.attach(mesh_name)
    inbound = mesh.ring(0, 1)
    reply = mesh.producer(1, 0)
    bell = mesh.doorbell(1)
    conn.send("ready")
    sleeps = 0
    while True:
        records = inbound.drain(64)
        if not records:
            bell.prepare_sleep()
            if inbound.readable():  # re-check after announcing the sleep
                bell.cancel_sleep()
                continue
            bell.sleep(30.0)  # long: a prompt wake-up can only come from the doorbell
            sleeps += 1
            continue
        for rec in records:
            if rec == b"stop":
                conn.send(("sleeps", sleeps))
                mesh.close()
                return
            reply.send(rec)
        reply.flush()


@pytest.mark.timeout(60)
def test_idle_consumer_uses_no_cpu_and_wakes_promptly():
    with Instance() as inst:
        mesh = Mesh.create(inst, 2, capacity=1 << 14)
        parent_conn, child_conn = SPAWN.Pipe()
        child = SPAWN.Process(target=_echo_consumer, args=(mesh.name, child_conn))
        child.start()
        try:
            assert parent_conn.poll(30) and parent_conn.recv() == "ready"
            proc = psutil.Process(child.pid)
            time.sleep(0.2)  # let it go to sleep
            cpu0 = sum(proc.cpu_times()[:2])
            time.sleep(1.0)
            idle_cpu = sum(proc.cpu_times()[:2]) - cpu0
            assert idle_cpu < 0.05, f"idle consumer used {idle_cpu:.3f} s of CPU in 1 s"

            producer = mesh.producer(0, 1)
            back = mesh.ring(1, 0)
            latencies = []
            for i in range(300):
                msg = i.to_bytes(4, "little")
                if i % 10 == 0:
                    time.sleep(0.002)  # make sure it is really asleep now and then
                t0 = time.perf_counter()
                producer.send(msg)
                producer.flush()
                deadline = t0 + 5.0
                got = []
                while not got:
                    got = back.drain(4)
                    if time.perf_counter() > deadline:
                        pytest.fail(f"no echo for message {i} within 5 s (missed wake-up?)")
                latencies.append(time.perf_counter() - t0)
                assert got == [msg]
            producer.send(b"stop")
            producer.flush()
            assert parent_conn.poll(10)
            kind, sleeps = parent_conn.recv()
            latencies.sort()
            # It really slept between messages, and woke in far less than its 30 s timeout.
            assert sleeps >= 20
            assert latencies[len(latencies) // 2] < 0.05, latencies[len(latencies) // 2]
            assert latencies[-1] < 1.0, latencies[-1]
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
        assert child.exitcode == 0
        mesh.close()
