"""Task management and cross-reactor ownership of the SCSI target: ABORT TASK / ABORT
TASK SET / LUN RESET / TARGET RESET (aborted tasks answer once, with task.aborted, and
their buffers go back only after the bdev returned), a LUN reset reaching the nexuses
of the other reactor (their tasks aborted, their unit attention, RESERVE(6) released),
PREEMPT AND ABORT, I_T nexus loss, and the COMPARE AND WRITE range lock against writes
submitted on the other reactor.  LUN 0 is a stub bdev that holds every I/O until the
test completes it; LUN 1 is malloc."""
import pytest

from reactor.testing import Harness

import bdev as B
import bdev_stub as Stub
from bdev import module as bm

from scsi_harness import (BS, INI2, S, Env, bring_up, cdb10, check, good, make_task, pr_out,
                          run, sense_of, submit, tear_down)

CONFLICT = (S.RESERVATION_CONFLICT, None, None, None)


@pytest.fixture
def env():
    with Harness(2, n_reactors=2) as h:
        bring_up(h)
        Stub.create("stub0", 64, BS)
        h.poll_threads()
        e = Env(h, luns=((0, "stub0"), (1, "m0")))
        yield e
        e.close()
        for i in (0, 1):
            h.set_thread(i)
            Stub.complete("stub0")
        h.poll_threads()
        h.set_thread(0)
        bm.bdev_unregister(B.get_by_name("stub0"), lambda arg, rc: None)
        h.poll_threads()
        tear_down(h)


def held(env, thread):
    env.h.set_thread(thread)
    return Stub.outstanding("stub0")


def complete(env, thread, n=None):
    env.h.set_thread(thread)
    Stub.complete("stub0", n)
    env.h.poll_threads()


def release(env, thread, *tasks):
    env.h.set_thread(thread)
    for t in tasks:
        t.release()


def start_read(env, nx, thread, tag, lun=0, lba=0):
    t = make_task(cdb10(0x28, lba, 1), tl=BS, tag=tag, lun=lun)
    out = submit(env, nx, thread, t)
    env.h.poll_threads()
    return t, out


def test_abort_task(env):
    b = env.nexus(1)
    t, out = start_read(env, b, 1, tag=5)
    assert out == [] and len(held(env, 1)) == 1
    env.h.set_thread(1)
    assert b.abort_task(0, 5) is True
    assert out == [t] and t.aborted
    assert b.abort_task(0, 5) is False and b.abort_task(0, 99) is False
    t.release()
    assert t._bufs                                      # the bdev still owns the buffer
    complete(env, 1)
    assert out == [t] and not t._bufs                   # once, and the buffer went back


def test_abort_task_set_is_per_lun(env):
    b = env.nexus(1)
    t1, o1 = start_read(env, b, 1, tag=1)
    t2, o2 = start_read(env, b, 1, tag=2)
    env.h.set_thread(1)
    b.abort_task_set(1)                                 # nothing on LUN 1
    assert o1 == [] and o2 == []
    b.abort_task_set(0)
    assert o1 == [t1] and o2 == [t2] and t1.aborted and t2.aborted
    good(run(env, b, cdb10(0x28, 0, 1), tl=BS, lun=1))
    complete(env, 1)
    assert o1 == [t1] and o2 == [t2]
    release(env, 1, t1, t2)


def test_lun_reset_reaches_the_other_reactor(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(run(env, b, bytes([0x16, 0, 0, 0, 0, 0])))            # b: RESERVE(6) on LUN 0
    assert sense_of(run(env, a, bytes(6))) == CONFLICT
    tb, ob = start_read(env, b, 1, tag=7)
    env.h.set_thread(0)
    rcs = []
    a.lun_reset(0, rcs.append)
    env.h.poll_threads()
    assert ob == [tb] and tb.aborted                          # b's task, on reactor 1
    assert rcs == []                                          # the bdev reset is held
    complete(env, 0)
    assert rcs == [0]
    # every nexus, the resetting one too, gets the unit attention once
    check(run(env, a, bytes(6)), S.UNIT_ATTENTION, S.BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    good(run(env, a, bytes(6)))                               # RESERVE(6) released
    check(run(env, b, bytes(6)), S.UNIT_ATTENTION, S.BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    good(run(env, b, bytes(6)))
    good(run(env, b, bytes(6), lun=1))                        # only LUN 0 was reset
    complete(env, 1)
    assert ob == [tb]
    release(env, 1, tb)


def test_target_reset(env):
    a = env.nexus(0)
    t, out = start_read(env, a, 0, tag=3)
    env.h.set_thread(0)
    rcs = []
    a.target_reset(rcs.append)
    env.h.poll_threads()
    assert out == [t] and t.aborted
    for _ in range(3):
        complete(env, 0)
    assert rcs == [0]
    release(env, 0, t)


def test_nexus_close_aborts_and_keeps_registrations(env):
    b = env.nexus(1, ini=INI2)
    good(pr_out(env, b, 6, sa_rkey=0x77))
    t, out = start_read(env, b, 1, tag=9)
    env.h.set_thread(1)
    b.close()
    assert out == [t] and t.aborted
    complete(env, 1)
    assert out == [t]
    release(env, 1, t)
    a = env.nexus(0)
    d = good(run(env, a, bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0]), tl=64, lun=0)).data_in
    assert int.from_bytes(d[8:16], "big") == 0x77


def test_preempt_and_abort(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(pr_out(env, a, 6, sa_rkey=1))
    good(pr_out(env, b, 6, sa_rkey=2))
    good(pr_out(env, b, 1, rkey=2, rtype=1))
    t, out = start_read(env, b, 1, tag=4)
    other, oout = start_read(env, b, 1, tag=5, lun=1)          # LUN 1 is not preempted
    assert oout == [other]
    good(pr_out(env, a, 5, rkey=1, sa_rkey=2, rtype=3))        # PREEMPT AND ABORT
    assert out == [t] and t.aborted
    check(run(env, b, bytes(6)), S.UNIT_ATTENTION, S.REGISTRATIONS_PREEMPTED)
    assert sense_of(run(env, b, cdb10(0x28, 0, 1), tl=BS)) == CONFLICT   # a holds EA now
    complete(env, 1)
    assert out == [t]
    release(env, 1, t, other)


def caw_cdb(lba, n=1):
    return bytes([0x89, 0]) + lba.to_bytes(8, "big") + bytes([0, 0, 0, n, 0, 0])


def test_compare_and_write_holds_writes_of_the_other_reactor(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(run(env, a, cdb10(0x2A, 10, 1), data_out=b"A" * BS, lun=1))
    cw = make_task(caw_cdb(10), data_out=b"A" * BS + b"B" * BS, lun=1, tag=1)
    cw_out = submit(env, b, 1, cw)
    # step the reactors until every replica holds the range
    lun0 = env.dev(0).luns[1]
    for _ in range(50):
        if lun0.holds:
            break
        env.h.poll_thread(0)
        env.h.poll_thread(1)
    assert lun0.holds and cw_out == []
    wr = make_task(cdb10(0x2A, 10, 1), data_out=b"C" * BS, lun=1, tag=2)
    wr_out = submit(env, a, 0, wr)
    assert len(lun0.parked) == 1 and wr_out == []              # held until the unlock
    # a parked write that is aborted leaves the queue and answers once, aborted
    wr2 = make_task(cdb10(0x2A, 10, 1), data_out=b"D" * BS, lun=1, tag=3)
    wr2_out = submit(env, a, 0, wr2)
    assert len(lun0.parked) == 2
    assert a.abort_task(1, 3) and wr2_out == [wr2] and wr2.aborted
    assert len(lun0.parked) == 1
    env.h.poll_threads()
    assert wr2_out == [wr2]
    assert cw_out == [cw] and cw.status == S.GOOD              # it saw A, wrote B
    assert wr_out == [wr] and wr.status == S.GOOD              # then C went in
    release(env, 1, cw)
    release(env, 0, wr, wr2)
    d = good(run(env, b, cdb10(0x28, 10, 1), tl=BS, lun=1)).data_in
    assert d == b"C" * BS
    for i in (0, 1):
        lun = env.dev(i).luns[1]
        assert not lun.holds and not lun.parked and not lun.inflight and not lun.locks


def test_compare_and_write_waits_for_inflight_writes(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    wr = make_task(cdb10(0x2A, 3, 1), data_out=b"W" * BS, tag=1)
    wr_out = submit(env, b, 1, wr)
    env.h.poll_threads()
    assert len(held(env, 1)) == 1 and wr_out == []            # b's write is in flight
    cw = make_task(caw_cdb(3), data_out=b"W" * BS + b"Z" * BS, tag=2)
    cw_out = submit(env, a, 0, cw)
    env.h.poll_threads()
    assert len(held(env, 0)) == 0                             # no read before b's write ends
    complete(env, 1)
    assert wr_out == [wr]
    assert len(held(env, 0)) == 1                             # now the compare reads
    complete(env, 0)                                          # (the stub reads no data)
    complete(env, 0)
    assert cw_out == [cw]
    release(env, 1, wr)
    release(env, 0, cw)
    for i in (0, 1):
        lun = env.dev(i).luns[0]
        assert not lun.holds and not lun.parked and not lun.locks


def test_abort_of_a_compare_and_write_releases_the_lock(env):
    a = env.nexus(0)
    cw = make_task(caw_cdb(3), data_out=bytes(2 * BS), tag=2)
    out = submit(env, a, 0, cw)
    env.h.poll_threads()
    assert len(held(env, 0)) == 1
    env.h.set_thread(0)
    assert a.abort_task(0, 2)
    complete(env, 0)
    assert out == [cw] and cw.aborted
    release(env, 0, cw)
    for i in (0, 1):
        lun = env.dev(i).luns[0]
        assert not lun.holds and not lun.locks
