"""SBC-3 block commands at CDB level over malloc bdevs (2 reactors): data round trips
through both reactors, exact sense for each refusal and that a refused command wrote
nothing, VERIFY/COMPARE AND WRITE miscompare offsets, UNMAP and WRITE SAME parameter
checks, write-through after WCE=0, bdev failures and hot-remove."""
import pytest

from reactor.testing import Harness

import bdev as B
from drivers import malloc

import reactor as rx

from scsi_harness import (BS, NBLK, S, Env, bring_up, cdb10, cdb12, cdb16, check, good,
                          make_task, read, run, sense_of, spy_handle, submit, tear_down,
                          write)

IU = (0x0E, 0x03)   # INVALID FIELD IN INFORMATION UNIT


@pytest.fixture
def env():
    with Harness(2, n_reactors=2) as h:
        bring_up(h)
        e = Env(h)
        yield e
        e.close()
        tear_down(h)


def blocks(ch, n=1):
    return bytes([ch]) * (BS * n)


def test_read_write_all_sizes_across_reactors(env):
    a, b = env.nexus(0), env.nexus(1)
    # WRITE(6)/READ(6): 21-bit LBA, 0 means 256 blocks
    good(run(env, a, bytes([0x0A, 0, 0, 7, 1, 0]), data_out=blocks(1)))
    assert good(run(env, b, bytes([0x08, 0, 0, 7, 1, 0]), tl=BS)).data_in == blocks(1)
    good(run(env, a, bytes([0x0A, 0, 1, 0, 0, 0]), data_out=blocks(6, 256)))
    assert good(run(env, b, bytes([0x08, 0, 1, 0, 0, 0]), tl=256 * BS)).data_in == blocks(6, 256)
    for op_w, op_r, mk, ch in ((0x2A, 0x28, cdb10, 2), (0xAA, 0xA8, cdb12, 3),
                               (0x8A, 0x88, cdb16, 4)):
        good(run(env, a, mk(op_w, 100, 3), data_out=blocks(ch, 3)))
        assert good(run(env, b, mk(op_r, 100, 3), tl=3 * BS)).data_in == blocks(ch, 3)
        # DPO/FUA accepted (DPOFUA=1)
        good(run(env, b, mk(op_w, 100, 1, flags=0x18), data_out=blocks(ch + 1)))
        good(run(env, a, mk(op_r, 100, 1, flags=0x18), tl=BS))


def test_lba_out_of_range_writes_nothing(env):
    a = env.nexus(0)
    good(write(env, a, NBLK - 1, blocks(9)))
    for cdb, n in ((cdb10(0x2A, NBLK - 1, 2), 2), (cdb16(0x8A, NBLK, 1), 1),
                   (cdb16(0x8A, 2**64 - 1, 2), 2), (cdb12(0xAA, 0xFFFFFFFF, 1), 1),
                   (bytes([0x0A, 0x00, 0x04, 0x00, 1, 0]), 1)):
        check(run(env, a, cdb, data_out=blocks(7, n)), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    assert good(read(env, a, NBLK - 1, 1)).data_in == blocks(9)
    check(read(env, a, NBLK - 1, 2), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    # zero blocks: at the end is fine, past it is out of range
    good(run(env, a, cdb10(0x28, NBLK, 0)))
    check(run(env, a, cdb10(0x28, NBLK + 1, 0)), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)


def test_protect_fields_and_short_data_out(env):
    a = env.nexus(0)
    good(write(env, a, 0, blocks(5, 2)))
    for p in range(1, 8):
        check(run(env, a, cdb10(0x28, 0, 1, flags=p << 5), tl=BS), S.ILLEGAL_REQUEST,
              S.INVALID_FIELD_IN_CDB)
        check(run(env, a, cdb10(0x2A, 0, 1, flags=p << 5), data_out=blocks(1)),
              S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    # Data-Out shorter than the CDB asks for: the whole blocks it carries are written
    # (the transport reports the overflow), a partial block is refused with nothing written
    t = good(run(env, a, cdb10(0x2A, 0, 2), data_out=blocks(6)))
    assert t.expected_length == 2 * BS
    assert good(read(env, a, 0, 2)).data_in == blocks(6) + blocks(5)
    good(run(env, a, cdb10(0x2A, 0, 1), data_out=b"", tl=0))
    t = run(env, a, cdb10(0x2A, 0, 2), data_out=blocks(7)[:200])
    check(t, S.ILLEGAL_REQUEST, IU)
    check(run(env, a, cdb10(0x2E, 0, 2), data_out=blocks(7, 2)[:BS + 1]), S.ILLEGAL_REQUEST, IU)
    assert good(read(env, a, 0, 2)).data_in == blocks(6) + blocks(5)
    # Data-Out longer: the CDB's blocks are written, the transport reports the underflow
    t = good(run(env, a, cdb10(0x2A, 0, 1), data_out=blocks(8, 2)))
    assert t.expected_length == BS
    assert good(read(env, a, 0, 2)).data_in == blocks(8) + blocks(5)


def test_read_residual_lengths(env):
    a = env.nexus(0)
    t = good(run(env, a, cdb10(0x28, 0, 2), tl=BS))      # EDTL < SPDTL: overflow
    assert len(t.data_in) == BS and t.expected_length == 2 * BS
    t = good(run(env, a, cdb10(0x28, 0, 1), tl=4 * BS))  # EDTL > SPDTL: underflow
    assert len(t.data_in) == BS and t.expected_length == BS


def verify(env, nx, lba, n, data=None, bytchk=1, op=0x2F):
    mk = {0x2F: cdb10, 0xAF: cdb12, 0x8F: cdb16}[op]
    return run(env, nx, mk(op, lba, n, flags=bytchk << 1), data_out=data)


def test_verify(env):
    a, b = env.nexus(0), env.nexus(1)
    good(write(env, a, 20, blocks(1) + blocks(2)))
    for op in (0x2F, 0xAF, 0x8F):
        good(verify(env, b, 20, 2, blocks(1) + blocks(2), op=op))
        bad = bytearray(blocks(1) + blocks(2))
        bad[BS + 17] = 0
        t = verify(env, b, 20, 2, bytes(bad), op=op)
        check(t, S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY)
        assert t.sense[0] & 0x80 and int.from_bytes(t.sense[3:7], "big") == BS + 17
        good(verify(env, b, 20, 2, None, bytchk=0, op=op))        # medium check only
    # BYTCHK=11b: one block compared against every block
    good(write(env, a, 30, blocks(4, 3)))
    good(verify(env, a, 30, 3, blocks(4), bytchk=3))
    check(verify(env, a, 30, 3, blocks(5), bytchk=3), S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY)
    check(verify(env, a, 30, 1, blocks(4), bytchk=2), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(verify(env, a, NBLK, 1, blocks(4)), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    good(verify(env, a, 0, 0))


def test_write_and_verify(env):
    a, b = env.nexus(0), env.nexus(1)
    for op, mk in ((0x2E, cdb10), (0xAE, cdb12), (0x8E, cdb16)):
        good(run(env, a, mk(op, 40, 2, flags=0x02), data_out=blocks(op, 2)))
        assert good(read(env, b, 40, 2)).data_in == blocks(op, 2)
        check(run(env, a, mk(op, NBLK - 1, 2), data_out=blocks(1, 2)), S.ILLEGAL_REQUEST,
              S.LBA_OUT_OF_RANGE)
    assert good(read(env, b, NBLK - 1, 1)).data_in == bytes(BS)


def test_sync_cache_and_prefetch(env):
    a = env.nexus(1)
    for cdb in (cdb10(0x35, 0, 0), cdb10(0x35, 10, 10), cdb16(0x91, 0, NBLK),
                cdb10(0x34, 0, 8), cdb16(0x90, NBLK - 1, 1), cdb10(0x34, 0, 0)):
        good(run(env, a, cdb))
    for cdb in (cdb10(0x35, NBLK, 1), cdb16(0x91, 0, NBLK + 1), cdb10(0x34, NBLK - 1, 2),
                cdb16(0x90, NBLK + 1, 0)):
        check(run(env, a, cdb), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)


def unmap_cdb(plen, anchor=0):
    return bytes([0x42, anchor, 0, 0, 0, 0, 0]) + plen.to_bytes(2, "big") + b"\0"


def unmap_param(descs):
    body = b"".join(l.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(4) for l, n in descs)
    return (len(body) + 6).to_bytes(2, "big") + len(body).to_bytes(2, "big") + bytes(4) + body


def test_unmap(env):
    a, b = env.nexus(0), env.nexus(1)
    good(write(env, a, 0, blocks(0xAA, 8)))
    p = unmap_param([(1, 2), (5, 1)])
    good(run(env, b, unmap_cdb(len(p)), data_out=p))
    assert good(read(env, a, 0, 8)).data_in == (blocks(0xAA) + bytes(2 * BS) + blocks(0xAA, 2)
                                                + bytes(BS) + blocks(0xAA, 2))
    good(run(env, b, unmap_cdb(0)))                               # nothing to do
    good(write(env, a, 0, blocks(0xBB, 8)))
    # a bad descriptor anywhere: nothing is unmapped
    p = unmap_param([(0, 1), (NBLK - 1, 2)])
    check(run(env, b, unmap_cdb(len(p)), data_out=p), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    p = unmap_param([(0, 1)] * 257)
    check(run(env, b, unmap_cdb(len(p)), data_out=p), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_PARAMETER_LIST)
    check(run(env, b, unmap_cdb(6), data_out=bytes(6)), S.ILLEGAL_REQUEST,
          S.PARAMETER_LIST_LENGTH_ERROR)
    p = unmap_param([(0, 1)])
    check(run(env, b, unmap_cdb(len(p), anchor=1), data_out=p), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert good(read(env, a, 0, 8)).data_in == blocks(0xBB, 8)


def ws(env, nx, lba, n, data, flags=0, sixteen=False):
    if sixteen:
        return run(env, nx, cdb16(0x93, lba, n, flags), data_out=data,
                   tl=None if data is not None else 0)
    return run(env, nx, cdb10(0x41, lba, n, flags), data_out=data)


def test_write_same(env):
    a, b = env.nexus(0), env.nexus(1)
    pat = bytes(range(256)) * 2
    good(ws(env, a, 10, 5, pat))
    assert good(read(env, b, 10, 5)).data_in == pat * 5
    good(ws(env, b, 10, 5, bytes(BS), flags=0x08, sixteen=True))    # UNMAP
    assert good(read(env, a, 10, 5)).data_in == bytes(5 * BS)
    good(ws(env, a, 10, 3, pat, sixteen=True))
    good(ws(env, a, 10, 3, None, flags=0x01, sixteen=True))         # NDOB: zeroes
    assert good(read(env, a, 10, 3)).data_in == bytes(3 * BS)
    # 0 blocks: to the end of the medium
    good(ws(env, a, NBLK - 4, 0, pat))
    assert good(read(env, b, NBLK - 4, 4)).data_in == pat * 4
    # refusals: nothing written
    good(write(env, a, 0, blocks(3, 2)))
    check(ws(env, a, 0, 2, pat[:BS // 2]), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(ws(env, a, 0, 2, pat + pat), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(ws(env, a, NBLK - 1, 2, pat), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    check(ws(env, a, 0, 2, pat, flags=0x10), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(ws(env, a, 0, 2, pat, flags=0x01, sixteen=True), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert good(read(env, a, 0, 2)).data_in == blocks(3, 2)


def caw(env, nx, lba, verify_data, write_data, n=None, thread=None):
    n = len(verify_data) // BS if n is None else n
    return run(env, nx, bytes([0x89, 0]) + lba.to_bytes(8, "big") + bytes([0, 0, 0, n, 0, 0]),
               data_out=verify_data + write_data, thread=thread)


def test_compare_and_write(env):
    a, b = env.nexus(0), env.nexus(1)
    good(write(env, a, 50, blocks(1, 2)))
    good(caw(env, b, 50, blocks(1, 2), blocks(2, 2)))
    assert good(read(env, a, 50, 2)).data_in == blocks(2, 2)
    exp = bytearray(blocks(2, 2))
    exp[BS + 27] = 9
    t = caw(env, b, 50, bytes(exp), blocks(3, 2))
    check(t, S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY)
    assert int.from_bytes(t.sense[3:7], "big") == BS + 27
    assert good(read(env, a, 50, 2)).data_in == blocks(2, 2)         # not written
    check(caw(env, a, 50, blocks(2, 2), blocks(3, 1), n=2), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    check(caw(env, a, NBLK - 1, blocks(2, 2), blocks(3, 2)), S.ILLEGAL_REQUEST,
          S.LBA_OUT_OF_RANGE)
    assert good(read(env, a, 50, 2)).data_in == blocks(2, 2)
    good(caw(env, a, 50, b"", b"", n=0))
    check(caw(env, a, 50, blocks(2, 2), blocks(3, 2), n=0), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert good(read(env, a, 50, 2)).data_in == blocks(2, 2)
    # the lock was released everywhere
    for i in (0, 1):
        lun = env.dev(i).luns[0]
        assert not lun.holds and not lun.parked and not lun.locks


def test_get_lba_status(env):
    a = env.nexus(0)
    cdb = bytes([0x9E, 0x12]) + (7).to_bytes(8, "big") + (24).to_bytes(4, "big") + b"\0\0"
    d = good(run(env, a, cdb, tl=24)).data_in
    assert int.from_bytes(d[0:4], "big") == 20 and int.from_bytes(d[8:16], "big") == 7
    assert int.from_bytes(d[16:20], "big") == NBLK - 7 and d[20] & 0x0F == 0
    cdb = bytes([0x9E, 0x12]) + NBLK.to_bytes(8, "big") + (24).to_bytes(4, "big") + b"\0\0"
    check(run(env, a, cdb, tl=24), S.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)


def test_wce_off_makes_writes_fua(env):
    a = env.nexus(0)
    seen = []
    h = spy_handle(a)
    real = h._h.write

    def spy(off, data, cb, fua=False):
        seen.append(fua)
        return real(off, data, cb, fua=fua)
    h.write = spy
    good(write(env, a, 0, blocks(1)))
    cache = bytearray(good(run(env, a, bytes([0x1A, 8, 0x08, 0, 255, 0]), tl=255)).data_in[4:])
    cache[2] &= ~0x04
    data = bytes(4) + bytes(cache)
    good(run(env, a, bytes([0x15, 0x10, 0, 0, len(data), 0]), data_out=data))
    good(write(env, a, 0, blocks(1)))
    good(run(env, a, cdb10(0x2A, 0, 1, flags=0x08), data_out=blocks(1)))
    assert seen == [False, True, True]


def test_bdev_failure_and_hot_remove(env):
    a, b = env.nexus(0), env.nexus(1)
    good(write(env, a, 0, blocks(1)))
    # an I/O the bdev fails answers with a CHECK CONDITION, not a hang
    h = spy_handle(a)

    def failing(off, n, buf, cb):
        rx.send_msg(rx.get_thread(), cb, -5, (S.CHECK_CONDITION, S.MEDIUM_ERROR, 0x11, 0))
    h.read = failing
    check(read(env, a, 0, 1), S.MEDIUM_ERROR, (0x11, 0))
    del h.read
    # hot-remove: in-flight I/O completes, later commands see no LUN
    t = make_task(cdb10(0x28, 0, 1), tl=BS)
    out = submit(env, b, 1, t)
    env.h.set_thread(0)
    malloc.delete("m0", lambda rc: None)
    env.h.poll_threads()
    assert out == [t]
    for nx in (a, b):
        check(read(env, nx, 0, 1), S.ILLEGAL_REQUEST, S.LOGICAL_UNIT_NOT_SUPPORTED)
        assert good(run(env, nx, bytes([0x12, 0, 0, 0, 36, 0]), tl=36)).data_in[0] == 0x7F
    assert sense_of(t)[0] in (S.GOOD, S.CHECK_CONDITION)
    # b's handle (so the bdev) closes once the transport gave the task's buffer back
    assert B.get_by_name("m0") is not None
    env.h.set_thread(1)
    assert b._lent
    t.release()
    assert not b._lent
    env.h.poll_threads()
    env.h.set_thread(0)
    assert B.get_by_name("m0") is None


def test_data_length_tells_the_transport_what_to_solicit(env):
    a = env.nexus(0)
    dl = a.data_length
    assert dl(0, cdb10(0x2A, 0, 3)) == 3 * BS and dl(0, bytes([0x0A, 0, 0, 0, 0, 0])) == 256 * BS
    assert dl(0, cdb16(0x8E, 0, 2)) == 2 * BS
    assert dl(0, cdb10(0x2F, 0, 4, flags=0x02)) == 4 * BS
    assert dl(0, cdb10(0x2F, 0, 4, flags=0x06)) == BS and dl(0, cdb10(0x2F, 0, 4)) is None
    assert dl(0, cdb10(0x41, 0, 9)) == BS and dl(0, cdb16(0x93, 0, 9, flags=1)) == 0
    assert dl(0, bytes([0x89, 0]) + bytes(11) + bytes([3, 0, 0])) == 6 * BS
    assert dl(0, unmap_cdb(40)) == 40 and dl(0, bytes([0x15, 0x10, 0, 0, 28, 0])) == 28
    assert dl(0, bytes([0x5F, 0, 0, 0, 0]) + (24).to_bytes(4, "big") + b"\0") == 24
    assert dl(0, bytes(6)) is None and dl(7, cdb10(0x2A, 0, 1)) is None
    assert dl(0, bytes([0x2A, 0])) is None
