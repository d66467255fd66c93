"""Data-in builders for the SPC-4 commands answered without the bdev: INQUIRY (standard
and VPD pages), REPORT LUNS, MODE SENSE / MODE SELECT parsing, READ CAPACITY, REQUEST
SENSE.  Layouts follow SPC-4/SBC-3 and SPDK lib/scsi/scsi_bdev.c; each builder returns
the full data and the caller truncates it to the allocation length."""
from __future__ import annotations

from . import sense as S

VENDOR = "INTEL"             # SPDK's DEFAULT_DISK_VENDOR, so initiators see the same LU
REVISION = "0001"
MAX_SERIAL = 32
WORK_BYTES = 4 << 20         # SPDK_WORK_BLOCK_SIZE: max/optimal transfer, write same
ATS_BYTES = 1 << 20          # SPDK_WORK_ATS_BLOCK_SIZE: max COMPARE AND WRITE
MAX_UNMAP_LBA_COUNT = 1 << 20   # SPDK says 4 Mi; iscsi-test-cu holds a finite one to <= 1 Mi
MAX_UNMAP_DESCRIPTORS = 256

VPD_SUPPORTED, VPD_SERIAL, VPD_DEVICE_ID, VPD_BLOCK_LIMITS, VPD_BLOCK_CHARS, VPD_LBP = \
    0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2


def pad(s: str, n: int) -> bytes:
    b = s.encode("ascii", "replace")[:n]
    return b + b" " * (n - len(b))


def naa_ieee_extended(name: str) -> bytes:
    """SPDK's bdev_scsi_set_naa_ieee_extended: NAA 2 with Intel's OUI, from a hash of the
    bdev name, so the same bdev keeps the same identifier."""
    v = 0
    for ch in name.encode():
        v = (v * 131 + ch) & 0xFFFFFFFFFFFFFFFF
    id_a = (v & 0x0000000FFF000000) << 24
    v = (v & 0x0000000000FFFFFF) | 0x2000000347000000 | id_a
    return (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


def _desig(code_set: int, assoc: int, dtype: int, body: bytes, protocol_id: int) -> bytes:
    piv = 1 if assoc in (1, 2) else 0     # PIV is reserved for the LU association
    b0 = ((protocol_id & 0x0F) << 4 if piv else 0) | code_set
    return bytes([b0, (piv << 7) | (assoc << 4) | dtype, 0, len(body)]) + body


def _scsi_name(s: str) -> bytes:
    b = s.encode() + b"\0"
    return b + b"\0" * (-len(b) % 4)


def standard_inquiry(product: str) -> bytes:
    d = bytearray(96)
    d[0] = 0x00                      # connected, direct access block device
    d[2] = 0x06                      # SPC-4
    d[3] = 0x12                      # HISUP, response data format 2
    d[4] = len(d) - 5
    d[6] = 0x10                      # MULTIP
    d[7] = 0x02                      # CMDQUE
    d[8:16] = pad(VENDOR, 8)
    d[16:32] = pad(product, 16)
    d[32:36] = pad(REVISION, 4)
    d[36:56] = b" " * 20             # vendor specific
    # version descriptors: SAM-5, iSCSI (no version), SPC-4, SBC-3
    for i, v in enumerate((0x00A0, 0x0960, 0x0460, 0x04C0)):
        d[58 + 2 * i:60 + 2 * i] = v.to_bytes(2, "big")
    return bytes(d)


def vpd_page(page: int, lun, dev, target_port: str) -> bytes:
    """``lun`` offers .bdev_name .product .block_size .num_blocks .unmap .write_zeroes;
    ``dev`` offers .name .id .protocol_id; unknown pages are INVALID FIELD IN CDB."""
    bs = lun.block_size
    if page == VPD_SUPPORTED:
        body = bytes([VPD_SUPPORTED, VPD_SERIAL, VPD_DEVICE_ID, VPD_BLOCK_LIMITS,
                      VPD_BLOCK_CHARS, VPD_LBP])
    elif page == VPD_SERIAL:
        body = lun.bdev_name.encode()[:MAX_SERIAL - 1]
    elif page == VPD_DEVICE_ID:
        pid = dev.protocol_id
        rel = _rel_port(target_port)
        body = b"".join((
            _desig(1, 0, 3, naa_ieee_extended(lun.bdev_name), pid),
            _desig(2, 0, 1, pad(VENDOR, 8) + pad(lun.product, 16)
                   + pad(lun.bdev_name, MAX_SERIAL), pid),
            _desig(3, 2, 8, _scsi_name(dev.name), pid),
            _desig(3, 1, 8, _scsi_name(target_port), pid),
            _desig(1, 1, 4, (rel & 0xFFFF).to_bytes(4, "big"), pid),
            _desig(1, 1, 5, bytes(4), pid),
            _desig(1, 0, 6, (dev.id & 0xFFFF).to_bytes(4, "big"), pid),
        ))
    elif page == VPD_BLOCK_LIMITS:
        b = bytearray(60)
        b[1] = min(ATS_BYTES // bs, 0xFF)                 # MAX COMPARE AND WRITE LENGTH
        b[2:4] = (max(4096 // bs, 1)).to_bytes(2, "big")  # OPTIMAL TRANSFER GRANULARITY
        work = WORK_BYTES // bs
        b[4:8] = work.to_bytes(4, "big")                  # MAXIMUM TRANSFER LENGTH
        b[8:12] = work.to_bytes(4, "big")                 # OPTIMAL TRANSFER LENGTH
        if lun.unmap:
            b[16:20] = MAX_UNMAP_LBA_COUNT.to_bytes(4, "big")
            b[20:24] = MAX_UNMAP_DESCRIPTORS.to_bytes(4, "big")
        b[32:40] = max_write_same(lun).to_bytes(8, "big")   # MAX WRITE SAME LENGTH
        body = bytes(b)
    elif page == VPD_BLOCK_CHARS:
        b = bytearray(60)
        b[0:2] = (1).to_bytes(2, "big")                   # non-rotating medium
        body = bytes(b)
    elif page == VPD_LBP:
        flags = 0
        if lun.unmap:
            flags |= 0x80 | 0x40 | 0x20                   # LBPU LBPWS LBPWS10
        # provisioning type: thin when blocks can be unmapped, else not reported
        body = bytes([0, flags, 0x02 if lun.unmap else 0x00, 0])
    else:
        raise S.illegal()
    return bytes([0x00, page]) + len(body).to_bytes(2, "big") + body


def max_write_same(lun) -> int:
    return WORK_BYTES // lun.block_size


def _rel_port(target_port: str) -> int:
    """Relative target port id: the TPGT in SPDK's 'iqn...,t,0x<TPGT>' name, else 1."""
    _, sep, tail = target_port.rpartition(",t,0x")
    if sep:
        try:
            return int(tail, 16) or 1
        except ValueError:
            pass
    return 1


def null_lun_inquiry() -> bytes:
    """INQUIRY to a LUN that does not exist: peripheral qualifier 3, type 1Fh (SPC-4
    6.6.2; SPDK spdk_scsi_task_process_null_lun)."""
    d = bytearray(36)
    d[0] = 0x7F
    d[4] = len(d) - 5
    return bytes(d)


def report_luns(lun_ids, select: int) -> bytes:
    if select not in (0x00, 0x01, 0x02):
        raise S.illegal()
    ids = [] if select == 0x01 else sorted(lun_ids)    # no well-known LUs
    body = b"".join(_fmt_lun(i) for i in ids)
    return len(body).to_bytes(4, "big") + bytes(4) + body


def _fmt_lun(lun_id: int) -> bytes:
    """SAM-5 4.7: peripheral addressing below 256, flat space addressing above."""
    if lun_id < 256:
        return bytes([0, lun_id]) + bytes(6)
    return bytes([0x40 | ((lun_id >> 8) & 0x3F), lun_id & 0xFF]) + bytes(6)


def read_capacity10(lun) -> bytes:
    last = lun.num_blocks - 1
    return min(last, 0xFFFFFFFF).to_bytes(4, "big") + lun.block_size.to_bytes(4, "big")


def read_capacity16(lun) -> bytes:
    d = bytearray(32)
    d[0:8] = (lun.num_blocks - 1).to_bytes(8, "big")
    d[8:12] = lun.block_size.to_bytes(4, "big")
    # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: the bdev API tells no physical size
    if lun.unmap:
        d[14] = 0x80                                    # LBPME (LBPRZ not claimed)
    return bytes(d)


# --------------------------------------------------------------------- mode pages
PAGE_RW_ERROR, PAGE_DISCONNECT, PAGE_VERIFY_ERROR, PAGE_CACHING, PAGE_CONTROL, \
    PAGE_POWER, PAGE_IEC, PAGE_ALL = 0x01, 0x02, 0x07, 0x08, 0x0A, 0x1A, 0x1C, 0x3F
_PAGE_LEN = {PAGE_RW_ERROR: 0x0A, PAGE_DISCONNECT: 0x0E, PAGE_VERIFY_ERROR: 0x0A,
             PAGE_CACHING: 0x12, PAGE_CONTROL: 0x0A, PAGE_POWER: 0x0A, PAGE_IEC: 0x0A}
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = range(4)


def mode_page(page: int, pc: int, lun, shared) -> bytes:
    """One mode page (page_0 format).  Changeable bits: WCE (when the bdev has a write
    cache) and SWP; everything else is fixed."""
    n = _PAGE_LEN[page]
    p = bytearray(n + 2)
    p[0], p[1] = page, n
    if page == PAGE_CACHING:
        if pc == PC_CHANGEABLE:
            p[2] = 0x04 if lun.has_write_cache else 0
        else:
            wce = shared.wce if pc == PC_CURRENT else lun.has_write_cache
            p[2] = (0x04 if wce else 0) | 0x01          # WCE, RCD=1 as SPDK
    elif page == PAGE_CONTROL:
        if pc == PC_CHANGEABLE:
            p[4] = 0x08                                 # SWP
        else:
            p[3] = 0x10                                 # QUEUE ALGORITHM MODIFIER 1
            if pc == PC_CURRENT and shared.swp:
                p[4] = 0x08
            p[8:10] = b"\xff\xff"                       # busy timeout: unlimited
    return bytes(p)


def mode_sense(cdb: bytes, lun, shared, ten: bool) -> bytes:
    dbd = cdb[1] & 0x08
    llbaa = bool(cdb[1] & 0x10) and ten
    pc = cdb[2] >> 6
    page = cdb[2] & 0x3F
    subpage = cdb[3]
    if pc == PC_SAVED:
        raise S.illegal(S.SAVING_PARAMETERS_NOT_SUPPORTED)
    if page == PAGE_ALL:
        if subpage not in (0x00, 0xFF):
            raise S.illegal()
        pages = b"".join(mode_page(p, pc, lun, shared) for p in sorted(_PAGE_LEN))
    elif page in _PAGE_LEN and subpage in (0x00, 0xFF):
        pages = mode_page(page, pc, lun, shared)
    else:
        raise S.illegal()
    if dbd:
        bdesc = b""
    elif llbaa:
        bdesc = lun.num_blocks.to_bytes(8, "big") + bytes(4) + lun.block_size.to_bytes(4, "big")
    else:
        nb = lun.num_blocks if lun.num_blocks <= 0xFFFFFFFF else 0xFFFFFFFF
        bdesc = nb.to_bytes(4, "big") + b"\0" + lun.block_size.to_bytes(3, "big")
    devspec = (0x10 if lun.fua else 0) | (0x80 if shared.swp else 0)   # DPOFUA, WP
    if ten:
        total = 8 + len(bdesc) + len(pages)
        hdr = (total - 2).to_bytes(2, "big") + bytes([0, devspec, 0x01 if llbaa else 0, 0]) \
            + len(bdesc).to_bytes(2, "big")
    else:
        total = 4 + len(bdesc) + len(pages)
        hdr = bytes([min(total - 1, 0xFF), 0, devspec, len(bdesc)])
    return hdr + bdesc + pages


def mode_select(cdb: bytes, data: bytes, lun, shared, ten: bool) -> tuple:
    """Parse MODE SELECT parameter data; returns the new (wce, swp).  Only the
    changeable bits may differ from the current values (SPC-4 6.11)."""
    if not (cdb[1] & 0x10):                    # PF=0: vendor-specific pages, not ours
        raise S.illegal()
    if cdb[1] & 0x01:                          # SP: nothing can be saved
        raise S.illegal()
    hlen = 8 if ten else 4
    if len(data) < hlen:
        if not data:
            return shared.wce, shared.swp
        raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
    if ten:
        bdlen = int.from_bytes(data[6:8], "big")
        long_lba = data[4] & 0x01
    else:
        bdlen = data[3]
        long_lba = 0
    pos = hlen
    if bdlen:
        step = 16 if long_lba else 8
        if bdlen % step or pos + bdlen > len(data):
            raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
        for off in range(pos, pos + bdlen, step):
            d = data[off:off + step]
            blen = int.from_bytes(d[12:16] if long_lba else d[5:8], "big")
            if blen != lun.block_size:
                raise S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST)
        pos += bdlen
    wce, swp = shared.wce, shared.swp
    while pos < len(data):
        if pos + 2 > len(data):
            raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
        page = data[pos] & 0x3F
        if data[pos] & 0x40:                   # subpages: none changeable
            raise S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST)
        plen = data[pos + 1]
        if page not in _PAGE_LEN or plen != _PAGE_LEN[page]:
            raise S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST)
        if pos + 2 + plen > len(data):
            raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
        got = data[pos:pos + 2 + plen]
        cur = mode_page(page, PC_CURRENT, lun, shared)
        mask = mode_page(page, PC_CHANGEABLE, lun, shared)
        for i in range(2, len(got)):
            if (got[i] ^ cur[i]) & ~mask[i] & 0xFF:
                raise S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST)
        if page == PAGE_CACHING and lun.has_write_cache:
            wce = bool(got[2] & 0x04)
        if page == PAGE_CONTROL:
            swp = bool(got[4] & 0x08)
        pos += 2 + plen
    return wce, swp


def request_sense(pending: bytes | None, desc: bool) -> bytes:
    if desc:
        raise S.illegal()                      # descriptor format not supported (D_SENSE=0)
    return pending if pending else S.fixed_sense(S.NO_SENSE, 0, 0)
