"""SPC-4 commands of the SCSI target at CDB level, over malloc bdevs in a 2-reactor
Harness: INQUIRY and its VPD pages, REPORT LUNS, unknown LUNs and opcodes, MODE SENSE /
MODE SELECT (and that a MODE SELECT on one reactor is seen on the other), REPORT
SUPPORTED OPERATION CODES, READ CAPACITY, REQUEST SENSE, TUR, START STOP, PREVENT ALLOW."""
import pytest

from reactor.testing import Harness

from scsi_harness import (BS, INI2, NBLK, S, Env, bring_up, check, good, run, sense_of,
                          tear_down, write)


@pytest.fixture
def env():
    with Harness(2, n_reactors=2) as h:
        bring_up(h, names=("m0", "m1"))
        e = Env(h, luns=((0, "m0"), (3, "m1")))
        yield e
        e.close()
        tear_down(h, names=("m0", "m1"))


def inquiry(env, nx, evpd=0, page=0, alloc=255, lun=0):
    return run(env, nx, bytes([0x12, evpd, page]) + alloc.to_bytes(2, "big") + b"\0",
               tl=alloc, lun=lun)


def test_standard_inquiry(env):
    nx = env.nexus(0)
    d = good(inquiry(env, nx, alloc=260)).data_in
    assert len(d) == 96 and d[0] == 0 and d[2] == 6 and d[3] & 0x0F == 2
    assert d[4] == len(d) - 5
    assert d[8:16] == b"INTEL   " and d[16:32] == b"Malloc disk     "
    descs = [int.from_bytes(d[58 + 2 * i:60 + 2 * i], "big") for i in range(8)]
    assert descs[:4] == [0x00A0, 0x0960, 0x0460, 0x04C0] and descs[4:] == [0] * 4
    # truncated to the allocation length, never an error (SPC-4 4.2.5.6)
    assert good(inquiry(env, nx, alloc=5)).data_in == d[:5]
    # page code without EVPD, reserved bits: INVALID FIELD IN CDB
    check(inquiry(env, nx, evpd=0, page=0x80), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    check(inquiry(env, nx, evpd=2), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


def _vpd(env, nx, page):
    d = good(inquiry(env, nx, 1, page, 255)).data_in
    assert d[1] == page and int.from_bytes(d[2:4], "big") == len(d) - 4
    return d


def test_vpd_pages(env):
    nx = env.nexus(1)
    assert list(_vpd(env, nx, 0x00)[4:]) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    assert _vpd(env, nx, 0x80)[4:] == b"m0"
    d = _vpd(env, nx, 0x83)
    descs, pos = [], 4
    while pos < len(d):
        n = d[pos + 3]
        descs.append((d[pos] & 0x0F, (d[pos + 1] >> 4) & 3, d[pos + 1] & 0x0F,
                      bytes(d[pos + 4:pos + 4 + n])))
        pos += 4 + n
    kinds = [(cs, assoc, typ) for cs, assoc, typ, _ in descs]
    assert kinds == [(1, 0, 3), (2, 0, 1), (3, 2, 8), (3, 1, 8), (1, 1, 4), (1, 1, 5), (1, 0, 6)]
    assert descs[0][3][0] >> 4 == 2                       # NAA IEEE extended
    assert descs[1][3].startswith(b"INTEL   Malloc disk     m0")
    assert descs[2][3].rstrip(b"\0") == b"disk1"
    assert descs[3][3].rstrip(b"\0").endswith(b",t,0x0001")
    assert descs[4][3] == bytes([0, 0, 0, 1])             # relative target port 1
    bl = _vpd(env, nx, 0xB0)
    assert len(bl) == 64 and bl[5] == 255
    assert int.from_bytes(bl[8:12], "big") == (4 << 20) // BS
    assert int.from_bytes(bl[20:24], "big") == 1 << 20 and int.from_bytes(bl[24:28], "big") == 256
    assert int.from_bytes(bl[36:44], "big") == (4 << 20) // BS
    assert int.from_bytes(_vpd(env, nx, 0xB1)[4:6], "big") == 1
    lbp = _vpd(env, nx, 0xB2)
    assert lbp[5] == 0xE0 and lbp[6] == 0x02              # LBPU LBPWS LBPWS10, thin
    check(inquiry(env, nx, 1, 0x81), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


def test_unknown_lun_and_opcode(env):
    nx = env.nexus(0)
    d = good(inquiry(env, nx, lun=7)).data_in
    assert d[0] == 0x7F                                   # PQ 3, type 1Fh
    check(run(env, nx, bytes(6), lun=7), S.ILLEGAL_REQUEST, S.LOGICAL_UNIT_NOT_SUPPORTED)
    rs = good(run(env, nx, bytes([0x03, 0, 0, 0, 18, 0]), tl=18, lun=7)).data_in
    assert rs[2] == S.ILLEGAL_REQUEST and rs[12:14] == bytes([0x25, 0])
    # unsupported opcodes and service actions
    for cdb in (bytes([0xC0]) + bytes(5), bytes([0x53]) + bytes(9),
                bytes([0x83]) + bytes(15), bytes([0x8B]) + bytes(15), bytes([0x48]) + bytes(9)):
        check(run(env, nx, cdb), S.ILLEGAL_REQUEST, S.INVALID_COMMAND_OPERATION_CODE)
    # an unknown service action of a known opcode: INVALID FIELD IN CDB
    for cdb in (bytes([0x9E, 0x1F]) + bytes(14), bytes([0x5F, 0x07]) + bytes(8),
                bytes([0xA3, 0x0A]) + bytes(10)):
        t = run(env, nx, cdb)
        check(t, S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
        assert t.sense[15] == 0xCC and t.sense[16:18] == b"\0\1"      # byte 1, bit 4


def test_remove_lun(env):
    nx = env.nexus(1)
    cdb = bytes([0xA0, 0, 0, 0, 0, 0]) + (256).to_bytes(4, "big") + b"\0\0"
    for i in (0, 1):
        env.dev(i).remove_lun(3)
    d = good(run(env, nx, cdb, tl=256)).data_in
    assert int.from_bytes(d[0:4], "big") == 8
    check(run(env, nx, bytes(6), lun=3), S.ILLEGAL_REQUEST, S.LOGICAL_UNIT_NOT_SUPPORTED)
    good(run(env, nx, bytes(6), lun=0))
    assert 3 not in env.dev(0).luns and not nx._lent


def test_report_luns(env):
    nx = env.nexus(0)
    cdb = bytes([0xA0, 0, 0, 0, 0, 0]) + (256).to_bytes(4, "big") + b"\0\0"
    for lun in (0, 5):     # also through a LUN that does not exist (SPC-4 6.33)
        d = good(run(env, nx, cdb, tl=256, lun=lun)).data_in
        assert int.from_bytes(d[0:4], "big") == 16
        assert d[8:16] == bytes(8) and d[16:24] == bytes([0, 3]) + bytes(6)
    check(run(env, nx, cdb[:2] + b"\x03" + cdb[3:], tl=256), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    check(run(env, nx, cdb[:6] + (8).to_bytes(4, "big") + b"\0\0", tl=8), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)


def test_read_capacity(env):
    nx = env.nexus(0)
    d = good(run(env, nx, bytes([0x25]) + bytes(9), tl=8)).data_in
    assert d == (NBLK - 1).to_bytes(4, "big") + BS.to_bytes(4, "big")
    d = good(run(env, nx, bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0",
                 tl=32)).data_in
    assert int.from_bytes(d[0:8], "big") == NBLK - 1 and int.from_bytes(d[8:12], "big") == BS
    assert d[14] & 0x80                                   # LBPME: the bdev unmaps
    d = good(run(env, nx, bytes([0x9E, 0x10]) + bytes(8) + (12).to_bytes(4, "big") + b"\0\0",
                 tl=12)).data_in
    assert len(d) == 12


def mode_sense6(env, nx, page, pc=0, dbd=0, alloc=255, subpage=0):
    return run(env, nx, bytes([0x1A, dbd << 3, (pc << 6) | page, subpage, alloc, 0]), tl=alloc)


def mode_sense10(env, nx, page, pc=0, dbd=0, llbaa=0, alloc=1024):
    return run(env, nx, bytes([0x5A, (dbd << 3) | (llbaa << 4), (pc << 6) | page, 0, 0, 0, 0])
               + alloc.to_bytes(2, "big") + b"\0", tl=alloc)


def _pages(d, off):
    out = {}
    while off < len(d):
        out[d[off] & 0x3F] = bytes(d[off:off + 2 + d[off + 1]])
        off += 2 + d[off + 1]
    return out


def test_mode_sense(env):
    nx = env.nexus(0)
    d = good(mode_sense6(env, nx, 0x3F)).data_in
    assert d[0] == len(d) - 1 and d[2] == 0x10 and d[3] == 8      # DPOFUA; one block desc
    assert int.from_bytes(d[4:8], "big") == NBLK and int.from_bytes(d[9:12], "big") == BS
    pages = _pages(d, 12)
    assert sorted(pages) == [0x01, 0x02, 0x07, 0x08, 0x0A, 0x1A, 0x1C]
    assert len(pages[0x08]) == 20 and len(pages[0x0A]) == 12
    assert pages[0x08][2] & 0x01                                  # RCD
    assert pages[0x08][2] & 0x04                                  # WCE: malloc has a cache
    # DBD, one page, changeable values
    d = good(mode_sense6(env, nx, 0x0A, pc=1, dbd=1)).data_in
    assert d[3] == 0 and _pages(d, 4)[0x0A][4] == 0x08            # SWP changeable
    d = good(mode_sense10(env, nx, 0x08, llbaa=1)).data_in
    assert int.from_bytes(d[0:2], "big") == len(d) - 2 and d[4] & 1
    assert int.from_bytes(d[6:8], "big") == 16 and int.from_bytes(d[8:16], "big") == NBLK
    # allocation length truncates (residuals are the transport's)
    assert len(good(mode_sense6(env, nx, 0x3F, alloc=4)).data_in) == 4
    check(mode_sense6(env, nx, 0x08, pc=3), S.ILLEGAL_REQUEST, S.SAVING_PARAMETERS_NOT_SUPPORTED)
    check(mode_sense6(env, nx, 0x05), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


def _select6(env, nx, page_bytes, sp=0, pf=1):
    data = bytes([0, 0, 0, 0]) + page_bytes
    return run(env, nx, bytes([0x15, (pf << 4) | sp, 0, 0, len(data), 0]), data_out=data)


def test_mode_select_swp_is_lun_wide(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    ctl = _pages(good(mode_sense6(env, a, 0x0A, dbd=1)).data_in, 4)[0x0A]
    on = bytearray(ctl)
    on[4] |= 0x08
    good(_select6(env, a, bytes(on)))
    # the other reactor's replica has it before the MODE SELECT answered
    d = good(mode_sense6(env, b, 0x0A, dbd=1)).data_in
    assert d[2] & 0x80 and _pages(d, 4)[0x0A][4] & 0x08
    check(write(env, b, 0, b"w" * BS), S.DATA_PROTECT, S.WRITE_PROTECTED)
    good(_select6(env, b, bytes(ctl)))
    good(write(env, a, 0, b"w" * BS))


def test_mode_select_refusals_change_nothing(env):
    nx = env.nexus(0)
    ctl = _pages(good(mode_sense6(env, nx, 0x0A, dbd=1)).data_in, 4)[0x0A]
    bad = bytearray(ctl)
    bad[4] |= 0x08
    bad[2] |= 0x04                       # D_SENSE is not changeable
    check(_select6(env, nx, bytes(bad)), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_PARAMETER_LIST)
    cache = _pages(good(mode_sense6(env, nx, 0x08, dbd=1)).data_in, 4)[0x08]
    rcd = bytearray(cache)
    rcd[2] &= ~0x05                      # WCE may change, RCD may not: all refused
    check(_select6(env, nx, bytes(rcd)), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_PARAMETER_LIST)
    assert _pages(good(mode_sense6(env, nx, 0x08, dbd=1)).data_in, 4)[0x08] == cache
    check(_select6(env, nx, bytes(ctl[:1]) + bytes([9]) + bytes(ctl[2:11])), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_PARAMETER_LIST)
    check(_select6(env, nx, bytes(ctl), sp=1), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    assert not _pages(good(mode_sense6(env, nx, 0x0A, dbd=1)).data_in, 4)[0x0A][4] & 0x08
    good(write(env, nx, 0, b"w" * BS))


def test_mode_select_wce(env):
    a = env.nexus(0)
    b = env.nexus(1, ini=INI2)
    cache = _pages(good(mode_sense6(env, a, 0x08, dbd=1)).data_in, 4)[0x08]
    off = bytearray(cache)
    off[2] &= ~0x04
    good(_select6(env, a, bytes(off)))
    assert not _pages(good(mode_sense6(env, b, 0x08, dbd=1)).data_in, 4)[0x08][2] & 0x04
    # default values still show the bdev's cache
    assert _pages(good(mode_sense6(env, b, 0x08, pc=2, dbd=1)).data_in, 4)[0x08][2] & 0x04
    good(write(env, b, 0, b"w" * BS))                    # write-through now


def test_report_supported_opcodes(env):
    nx = env.nexus(0)

    def rsoc(opt, op=0, sa=0, rctd=0, alloc=8192):
        return run(env, nx, bytes([0xA3, 0x0C, (rctd << 7) | opt, op]) + sa.to_bytes(2, "big")
                   + alloc.to_bytes(4, "big") + b"\0\0", tl=alloc)
    d = good(rsoc(0)).data_in
    n = int.from_bytes(d[0:4], "big")
    descs = [d[4 + i:12 + i] for i in range(0, n, 8)]
    ops = {(x[0], int.from_bytes(x[2:4], "big") if x[5] & 1 else None) for x in descs}
    assert (0x28, None) in ops and (0x9E, 0x10) in ops and (0x5F, 0x06) in ops
    assert (0x89, None) in ops and (0x12, None) in ops
    d = good(rsoc(0, rctd=1)).data_in
    assert int.from_bytes(d[0:4], "big") == 20 * len(descs) and d[4 + 5] & 0x02
    one = good(rsoc(1, 0x28)).data_in
    assert one[1] & 0x07 == 3 and int.from_bytes(one[2:4], "big") == 10 and one[4] == 0x28
    one = good(rsoc(2, 0x9E, 0x10, rctd=1)).data_in
    assert one[1] & 0x80 and one[4] == 0x9E and len(one) == 4 + 16 + 12
    assert good(rsoc(1, 0xC1)).data_in[1] & 0x07 == 1              # not supported
    for t in (rsoc(1, 0x9E), rsoc(2, 0x28), rsoc(5)):   # has SAs / has none / bad option
        check(t, S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
        # the pointer names byte 2 (REPORTING OPTIONS), not the service action
        assert t.sense[15] == 0xCA and t.sense[16:18] == b"\0\2"


def test_tur_request_sense_start_stop_prevent(env):
    nx = env.nexus(1)
    good(run(env, nx, bytes(6)))
    rs = good(run(env, nx, bytes([0x03, 0, 0, 0, 252, 0]), tl=252)).data_in
    assert rs[0] == 0x70 and rs[2] == 0 and len(rs) == 18
    check(run(env, nx, bytes([0x03, 1, 0, 0, 252, 0]), tl=252), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    good(run(env, nx, bytes([0x1B, 0, 0, 0, 0x01, 0])))          # START
    good(run(env, nx, bytes([0x1B, 1, 0, 0, 0x00, 0])))          # STOP, IMMED
    check(run(env, nx, bytes([0x1B, 0, 0, 0, 0x02, 0])), S.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)                                # eject a fixed disk
    good(run(env, nx, bytes([0x1E, 0, 0, 0, 1, 0])))
    good(run(env, nx, bytes([0x1E, 0, 0, 0, 0, 0])))
    check(run(env, nx, bytes([0x1E, 0, 0, 0, 2, 0])), S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


def test_short_cdb_is_invalid_field(env):
    nx = env.nexus(0)
    t = run(env, nx, bytes([0x28, 0, 0, 0]))
    check(t, S.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    assert sense_of(good(run(env, nx, bytes(6))))[0] == S.GOOD
