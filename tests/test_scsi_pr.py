"""Persistent reservations and RESERVE(6)/RELEASE(6) at CDB level, with the nexuses on
two reactors: every PR OUT is decided on the main reactor and must be visible on the
other reactor's replica when it answers.  The conflict matrix (6 types x holder /
registrant / stranger x read / write), each PR OUT service action's rules with the
state unchanged after a refusal, unit attentions to the other nexuses, PREEMPT AND
ABORT (test_scsi_tmf.py), PR IN data."""
import pytest

from reactor.testing import Harness

from scsi_harness import (BS, INI1, INI2, S, TGT, Env, bring_up, check, good, make_task,
                          pr_in, pr_out, read, read_keys, run, sense_of, submit, tear_down,
                          write)

INI3 = "iqn.2016-06.io.spdk:init3,i,0x00023d000003"
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REG_IGNORE = range(7)
CONFLICT = (S.RESERVATION_CONFLICT, None, None, None)
GOOD = (S.GOOD, None, None, None)


@pytest.fixture
def env():
    with Harness(2, n_reactors=2) as h:
        bring_up(h)
        e = Env(h)
        yield e
        e.close()
        tear_down(h)


def clear_ua(env, nx):
    for _ in range(4):
        if run(env, nx, bytes(6)).status == S.GOOD:
            return
    raise AssertionError("unit attentions do not clear")


def reservation(env, nx):
    d = good(pr_in(env, nx, 1)).data_in
    if int.from_bytes(d[4:8], "big") == 0:
        return None
    return int.from_bytes(d[8:16], "big"), d[21] & 0x0F


# (type) -> what a registered non-holder and a stranger may do: (read ok, write ok)
MATRIX = {
    WE: ((True, False), (True, False)),
    EA: ((False, False), (False, False)),
    WE_RO: ((True, True), (True, False)),
    EA_RO: ((True, True), (False, False)),
    WE_AR: ((True, True), (True, False)),
    EA_AR: ((True, True), (False, False)),
}


@pytest.mark.parametrize("rtype", sorted(MATRIX))
def test_conflict_matrix(env, rtype):
    holder = env.nexus(0, ini=INI1)
    reg = env.nexus(1, ini=INI2)
    stranger = env.nexus(1, ini=INI3)
    good(pr_out(env, holder, REG_IGNORE, sa_rkey=0xA1))
    good(pr_out(env, reg, REG_IGNORE, sa_rkey=0xB2))
    good(pr_out(env, holder, RESERVE, rkey=0xA1, rtype=rtype))
    assert reservation(env, stranger) == (0 if rtype in (WE_AR, EA_AR) else 0xA1, rtype)
    good(read(env, holder, 0, 1))
    good(write(env, holder, 0, b"h" * BS))
    for nx, (r_ok, w_ok), lba in zip((reg, stranger), MATRIX[rtype], (1, 2)):
        assert sense_of(read(env, nx, 0, 1)) == (GOOD if r_ok else CONFLICT)
        assert sense_of(write(env, nx, lba, b"x" * BS)) == (GOOD if w_ok else CONFLICT)
        # other read- and write-class commands follow the same column
        t = run(env, nx, bytes([0x1A, 8, 0x3F, 0, 255, 0]), tl=255)           # MODE SENSE
        assert sense_of(t) == (GOOD if r_ok else CONFLICT)
        t = run(env, nx, bytes([0x35]) + bytes(9))                          # SYNC CACHE
        assert sense_of(t) == (GOOD if w_ok else CONFLICT)
        # always allowed
        for cdb, tl in ((bytes([0x12, 0, 0, 0, 36, 0]), 36), (bytes(6), 0),
                        (bytes([0x25]) + bytes(9), 8)):
            good(run(env, nx, cdb, tl=tl))
        good(pr_in(env, nx, 0))
    # nothing the refused writes carried reached the medium
    assert good(read(env, holder, 2, 1)).data_in == bytes(BS)


def test_register_rules(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    gen0, keys = read_keys(env, a)
    assert keys == []
    good(pr_out(env, a, REGISTER, sa_rkey=0))                  # unregistered, key 0: no-op
    assert read_keys(env, b) == (gen0, [])
    assert sense_of(pr_out(env, a, REGISTER, rkey=5, sa_rkey=6)) == CONFLICT
    good(pr_out(env, a, REGISTER, sa_rkey=0x10))
    assert read_keys(env, b) == (gen0 + 1, [0x10])             # seen on the other reactor
    assert sense_of(pr_out(env, a, REGISTER, rkey=0x99, sa_rkey=0x11)) == CONFLICT
    assert read_keys(env, b) == (gen0 + 1, [0x10])             # unchanged
    good(pr_out(env, a, REGISTER, rkey=0x10, sa_rkey=0x11))
    good(pr_out(env, a, REG_IGNORE, rkey=0x77, sa_rkey=0x12))  # key ignored
    good(pr_out(env, b, REG_IGNORE, sa_rkey=0x20))
    assert read_keys(env, a) == (gen0 + 4, [0x12, 0x20])
    # APTPL/SPEC_I_PT/ALL_TG_PT are not supported; a bad parameter length neither
    for flags in (0x01, 0x04, 0x08):
        check(pr_out(env, a, REG_IGNORE, sa_rkey=0x13, flags=flags), S.ILLEGAL_REQUEST,
              S.INVALID_FIELD_IN_PARAMETER_LIST)
    cdb = bytes([0x5F, REG_IGNORE, 0, 0, 0]) + (20).to_bytes(4, "big") + b"\0"
    check(run(env, a, cdb, data_out=bytes(20)), S.ILLEGAL_REQUEST, S.PARAMETER_LIST_LENGTH_ERROR)
    assert read_keys(env, a) == (gen0 + 4, [0x12, 0x20])
    # unregistering the holder releases the reservation
    good(pr_out(env, a, RESERVE, rkey=0x12, rtype=WE))
    good(pr_out(env, a, REGISTER, rkey=0x12, sa_rkey=0))
    assert reservation(env, b) is None and read_keys(env, b)[1] == [0x20]


def test_reserve_and_release_rules(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    assert sense_of(pr_out(env, a, RESERVE, rkey=0, rtype=WE)) == CONFLICT   # unregistered
    good(pr_out(env, a, REG_IGNORE, sa_rkey=1))
    good(pr_out(env, b, REG_IGNORE, sa_rkey=2))
    assert sense_of(pr_out(env, a, RESERVE, rkey=9, rtype=WE)) == CONFLICT  # wrong key
    check(pr_out(env, a, RESERVE, rkey=1, rtype=2), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(pr_out(env, a, RESERVE, rkey=1, rtype=WE, scope=1), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert reservation(env, b) is None
    good(pr_out(env, a, RESERVE, rkey=1, rtype=WE_RO))
    good(pr_out(env, a, RESERVE, rkey=1, rtype=WE_RO))                 # same again: GOOD
    assert sense_of(pr_out(env, a, RESERVE, rkey=1, rtype=EA)) == CONFLICT
    assert sense_of(pr_out(env, b, RESERVE, rkey=2, rtype=WE_RO)) == CONFLICT
    # release: a non-holder changes nothing, a wrong type is refused
    good(pr_out(env, b, RELEASE, rkey=2, rtype=WE_RO))
    check(pr_out(env, a, RELEASE, rkey=1, rtype=WE), S.ILLEGAL_REQUEST,
          S.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
    assert sense_of(pr_out(env, a, RELEASE, rkey=7, rtype=WE_RO)) == CONFLICT
    assert reservation(env, b) == (1, WE_RO)
    gen = read_keys(env, a)[0]
    good(pr_out(env, a, RELEASE, rkey=1, rtype=WE_RO))
    assert reservation(env, a) is None and read_keys(env, a)[0] == gen    # no generation bump
    # releasing a registrants-only reservation tells the other registrants
    check(run(env, b, bytes(6)), S.UNIT_ATTENTION, S.RESERVATIONS_RELEASED)
    good(run(env, b, bytes(6)))
    good(run(env, a, bytes(6)))


def test_clear(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(pr_out(env, a, REG_IGNORE, sa_rkey=1))
    good(pr_out(env, b, REG_IGNORE, sa_rkey=2))
    good(pr_out(env, b, RESERVE, rkey=2, rtype=EA_RO))
    assert sense_of(pr_out(env, a, CLEAR, rkey=3)) == CONFLICT
    gen, keys = read_keys(env, a)
    assert keys == [1, 2] and reservation(env, a) == (2, EA_RO)
    good(pr_out(env, a, CLEAR, rkey=1))
    check(run(env, b, bytes(6)), S.UNIT_ATTENTION, S.RESERVATIONS_PREEMPTED)
    assert read_keys(env, b) == (gen + 1, []) and reservation(env, b) is None
    good(write(env, b, 0, b"b" * BS))


def test_preempt(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(pr_out(env, a, REG_IGNORE, sa_rkey=1))
    good(pr_out(env, b, REG_IGNORE, sa_rkey=2))
    good(pr_out(env, a, RESERVE, rkey=1, rtype=WE))
    assert sense_of(write(env, b, 0, b"b" * BS)) == CONFLICT
    check(pr_out(env, b, PREEMPT, rkey=2, sa_rkey=0, rtype=EA), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_PARAMETER_LIST)
    assert sense_of(pr_out(env, b, PREEMPT, rkey=2, sa_rkey=0x55, rtype=EA)) == CONFLICT
    assert sense_of(pr_out(env, b, PREEMPT, rkey=9, sa_rkey=1, rtype=EA)) == CONFLICT
    gen, keys = read_keys(env, b)
    assert keys == [1, 2] and reservation(env, b) == (1, WE)
    good(pr_out(env, b, PREEMPT, rkey=2, sa_rkey=1, rtype=EA))
    assert reservation(env, b) == (2, EA)
    check(run(env, a, bytes(6)), S.UNIT_ATTENTION, S.REGISTRATIONS_PREEMPTED)
    assert read_keys(env, b) == (gen + 1, [2])
    assert sense_of(read(env, a, 0, 1)) == CONFLICT
    good(write(env, b, 0, b"b" * BS))
    # an all-registrants reservation preempted with key 0: b takes the LUN over
    good(pr_out(env, a, REG_IGNORE, sa_rkey=1))
    good(pr_out(env, b, RELEASE, rkey=2, rtype=EA))
    good(pr_out(env, a, RESERVE, rkey=1, rtype=EA_AR))
    good(pr_out(env, b, PREEMPT, rkey=2, sa_rkey=0, rtype=WE))
    assert reservation(env, b) == (2, WE) and read_keys(env, b)[1] == [2]
    # no reservation: preempt removes matching registrations only
    good(pr_out(env, b, RELEASE, rkey=2, rtype=WE))
    clear_ua(env, a)
    good(pr_out(env, a, REG_IGNORE, sa_rkey=1))
    good(pr_out(env, b, PREEMPT, rkey=2, sa_rkey=1, rtype=WE))
    assert read_keys(env, b)[1] == [2] and reservation(env, b) is None


def test_pr_in_data(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    d = good(pr_in(env, a, 2)).data_in
    assert d == bytes([0, 8, 0x10, 0x80, 0xEA, 0x01, 0, 0])
    good(pr_out(env, a, REG_IGNORE, sa_rkey=0x1111))
    good(pr_out(env, b, REG_IGNORE, sa_rkey=0x2222))
    good(pr_out(env, b, RESERVE, rkey=0x2222, rtype=WE_RO))
    d = good(pr_in(env, a, 3)).data_in
    descs, pos = [], 8
    while pos < len(d):
        alen = int.from_bytes(d[pos + 20:pos + 24], "big")
        descs.append((int.from_bytes(d[pos:pos + 8], "big"), d[pos + 12] & 1, d[pos + 13],
                      int.from_bytes(d[pos + 18:pos + 20], "big"), bytes(d[pos + 24:pos + 24 + alen])))
        pos += 24 + alen
    assert int.from_bytes(d[4:8], "big") == len(d) - 8
    assert [x[:4] for x in descs] == [(0x1111, 0, 0, 1), (0x2222, 1, WE_RO, 1)]
    tid = descs[0][4]
    assert tid[0] == 0x45 and tid[4:].rstrip(b"\0") == INI1.encode() and len(tid) % 4 == 0
    # truncation to the allocation length; a bad service action
    assert good(pr_in(env, a, 0, alloc=12)).data_in[4:8] == (16).to_bytes(4, "big")
    for sa in range(4, 0x20):
        check(pr_in(env, a, sa), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


def reserve6(env, nx):
    return run(env, nx, bytes([0x16, 0, 0, 0, 0, 0]))


def release6(env, nx):
    return run(env, nx, bytes([0x17, 0, 0, 0, 0, 0]))


def test_reserve6_release6(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    good(reserve6(env, a))
    good(reserve6(env, a))
    for t in (reserve6(env, b), read(env, b, 0, 1), write(env, b, 0, b"b" * BS),
              run(env, b, bytes(6))):
        assert sense_of(t) == CONFLICT
    good(run(env, b, bytes([0x12, 0, 0, 0, 36, 0]), tl=36))
    good(release6(env, b))                              # not the holder: GOOD, no change
    assert sense_of(read(env, b, 0, 1)) == CONFLICT
    check(run(env, a, bytes([0x16, 1, 0, 0, 0, 0])), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    good(release6(env, a))
    good(reserve6(env, b))
    assert sense_of(read(env, a, 0, 1)) == CONFLICT
    # I_T nexus loss releases it
    env.h.set_thread(1)
    b.close()
    env.h.poll_threads()
    good(read(env, a, 0, 1))
    # with persistent registrations, SPC-2 RESERVE from an unregistered nexus conflicts
    good(pr_out(env, a, REG_IGNORE, sa_rkey=5))
    c = env.nexus(1, ini=INI2)
    assert sense_of(reserve6(env, c)) == CONFLICT
    assert sense_of(reserve6(env, a)) == CONFLICT       # registered, no PR held: SPC-2
    good(pr_out(env, a, RESERVE, rkey=5, rtype=WE))
    good(reserve6(env, a))                              # the PR holder: GOOD, ignored
    good(release6(env, a))
    assert reservation(env, c) == (5, WE)
    good(read(env, c, 0, 1))


def test_registration_survives_nexus_loss(env):
    a = env.nexus(1)
    good(pr_out(env, a, REG_IGNORE, sa_rkey=0x42))
    good(pr_out(env, a, RESERVE, rkey=0x42, rtype=EA))
    env.h.set_thread(1)
    a.close()
    env.h.poll_threads()
    again = env.nexus(0, ini=INI1, tgt=TGT)             # the same I_T nexus, other reactor
    assert read_keys(env, again)[1] == [0x42]
    good(write(env, again, 0, b"a" * BS))               # still the holder
    other = env.nexus(1, ini=INI2)
    assert sense_of(read(env, other, 0, 1)) == CONFLICT


def test_pr_out_answers_only_after_every_replica_applied(env):
    """The ownership rule: main decides, broadcasts, and the command answers after every
    reactor's replica has the new state (so the next command anywhere sees it)."""
    b = env.nexus(1)
    good(pr_out(env, b, REG_IGNORE, sa_rkey=0x31))
    replicas = [env.dev(i).luns[0] for i in (0, 1)]
    seen = []
    param = (0x31).to_bytes(8, "big") + bytes(16)
    t = make_task(bytes([0x5F, RESERVE, EA, 0, 0, 0, 0, 0, 24, 0]), data_out=param)
    out = submit(env, b, 1, t)
    t._cb = lambda task: (seen.append([r.shared.rtype for r in replicas]), out.append(task))
    env.h.poll_threads()
    assert out == [t] and t.status == S.GOOD
    assert seen == [[EA, EA]]                           # both had it at answer time
    assert replicas[1].auth is None                     # only main holds the authority
    assert replicas[0].auth.rtype == EA


def test_pr_out_bad_parameter_list_lengths(env):
    a = env.nexus(1)
    for plen, data in ((0, b""), (23, bytes(23)), (1 << 20, bytes(1 << 20)), (24, bytes(10))):
        cdb = bytes([0x5F, REG_IGNORE, 0, 0, 0]) + plen.to_bytes(4, "big") + b"\0"
        check(run(env, a, cdb, data_out=data, tl=len(data)), S.ILLEGAL_REQUEST,
              S.PARAMETER_LIST_LENGTH_ERROR)
    assert read_keys(env, a)[1] == []


def test_registrations_beyond_one_message_are_refused_unchanged(env):
    a = env.nexus(0)
    keys = []
    rc = S.GOOD
    for i in range(400):             # huge port names: the state outgrows one ring record
        nx = env.nexus(i % 2, ini=f"iqn.2016-06.io.spdk:{'x' * 8000}{i},i,0x{i:012x}")
        t = pr_out(env, nx, REG_IGNORE, sa_rkey=i + 1)
        if t.status != S.GOOD:
            check(t, S.ILLEGAL_REQUEST, (0x55, 0x04))
            rc = t.status
            break
        keys.append(i + 1)
    assert rc == S.CHECK_CONDITION, "never outgrew a message"
    assert read_keys(env, a)[1] == keys                  # the refused one left no trace
    for i in (0, 1):
        assert env.dev(i).luns[0].shared.regs == env.dev(0).luns[0].auth.regs
