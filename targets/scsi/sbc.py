"""SBC-3 block commands over the nexus's BdevHandle (SPDK lib/scsi/scsi_bdev.c):
READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY, SYNCHRONIZE CACHE, PRE-FETCH, UNMAP,
WRITE SAME, COMPARE AND WRITE, GET LBA STATUS.

Every check (CDB fields, LBA range, write protection, Data-Out size, UNMAP descriptors)
happens before the first bdev call, so a refused command changes nothing.  Every write
passes through ``Lun.begin_write`` so a COMPARE AND WRITE range lock held anywhere
stops it while the lock is held."""
from __future__ import annotations

import errno

from . import commands as C
from . import dev as D
from . import sense as S
from . import spc

CHUNK = 1 << 20          # WRITE SAME without write_zeroes writes the pattern this much at once
INVALID_FIELD_IN_INFORMATION_UNIT = (0x0E, 0x03)


def _lba_len(cdb: bytes):
    op = cdb[0]
    if op in (C.READ_6, C.WRITE_6):
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        return lba, cdb[4] or 256
    if op in (C.READ_10, C.WRITE_10, C.VERIFY_10, C.WRITE_AND_VERIFY_10, C.PRE_FETCH_10,
              C.SYNCHRONIZE_CACHE_10, C.WRITE_SAME_10):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
    if op in (C.READ_12, C.WRITE_12, C.VERIFY_12, C.WRITE_AND_VERIFY_12):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
    # 16-byte CDBs
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")


_BLOCK_CMDS = frozenset((C.READ_6, C.WRITE_6, C.READ_10, C.WRITE_10, C.READ_12, C.WRITE_12,
                         C.READ_16, C.WRITE_16, C.WRITE_AND_VERIFY_10, C.WRITE_AND_VERIFY_12,
                         C.WRITE_AND_VERIFY_16))
_VERIFY_CMDS = frozenset((C.VERIFY_10, C.VERIFY_12, C.VERIFY_16))


def data_length(cdb: bytes, block_size: int):
    """Bytes of data the CDB transfers (either direction), or None when it moves none or
    the layer does not know: what a transport solicits at most (Contract 3, optional)."""
    cmd = C.lookup(cdb)
    if cmd is None or len(cdb) < len(cmd.usage):
        return None
    op = cdb[0]
    try:
        if op in _BLOCK_CMDS:
            return _lba_len(cdb)[1] * block_size
        if op in _VERIFY_CMDS:
            b = (cdb[1] >> 1) & 0x03
            n = _lba_len(cdb)[1]
            return None if b in (0, 2) or not n else (block_size if b == 3 else n * block_size)
        if op in (C.WRITE_SAME_10, C.WRITE_SAME_16):
            return 0 if op == C.WRITE_SAME_16 and cdb[1] & 0x01 else block_size
        if op == C.COMPARE_AND_WRITE:
            return 2 * cdb[13] * block_size
        if op in (C.UNMAP, C.MODE_SELECT_10):
            return int.from_bytes(cdb[7:9], "big")
        if op == C.MODE_SELECT_6:
            return cdb[4]
        if op == C.PR_OUT:
            return int.from_bytes(cdb[5:9], "big")
    except IndexError:
        return None
    return None


def _check_range(view, lba: int, n: int) -> None:
    if lba + n > view.num_blocks:
        raise S.illegal(S.LBA_OUT_OF_RANGE)


def _check_max_transfer(view, n: int) -> None:
    if n * view.block_size > spc.WORK_BYTES:
        raise S.illegal()


def _check_writable(view) -> None:
    if view.lun.shared.swp:
        raise S.ScsiError(S.DATA_PROTECT, S.WRITE_PROTECTED)


def _data_out(task, nbytes: int):
    """The first ``nbytes`` of Data-Out; less than the CDB asks for is refused before
    anything is written (FCP-4 9.4.2 b, what iscsi-test-cu accepts)."""
    d = task.data_out
    if d is None or len(d) < nbytes:
        raise S.illegal(INVALID_FIELD_IN_INFORMATION_UNIT)
    return memoryview(d)[:nbytes]


def _write_blocks_available(task, view, n: int) -> int:
    """How many of the CDB's ``n`` blocks the Data-Out carries.  A shorter but
    block-aligned Data-Out (the initiator's expected length below the CDB's) is written
    as far as it goes (FCP-4 9.4.2 a: data beyond the expected length is not
    transferred); the transport reports the overflow.  A partial block is refused."""
    have = len(task.data_out) if task.data_out is not None else 0
    if have >= n * view.block_size:
        return n
    if have % view.block_size:
        raise S.illegal(INVALID_FIELD_IN_INFORMATION_UNIT)
    return have // view.block_size


def bdev_error(err: int, scsi) -> S.ScsiError:
    """A failed bdev op: the bdev layer's SCSI translation when there is one."""
    if scsi is not None:
        sc, sk, asc, ascq = scsi
        if sc == S.CHECK_CONDITION:
            return S.ScsiError(sk, (asc, ascq))
        return S.ScsiError(S.NO_SENSE, S.NO_ADDITIONAL_SENSE, status=sc)
    if err in (-errno.ENODEV, -errno.ENXIO):
        return S.illegal(S.LOGICAL_UNIT_NOT_SUPPORTED)
    return S.ScsiError(S.ABORTED_COMMAND, S.NO_ADDITIONAL_SENSE)


class _Op:
    """Bookkeeping of one bdev call for a task: the task's in-flight count (so an
    aborted task's buffers wait for the bdev) and, for writes, the LUN's write token."""

    __slots__ = ("nx", "task", "lun", "token", "next")

    def __init__(self, nx, task, nxt, lun=None):
        self.nx = nx
        self.task = task
        self.lun = lun
        self.token = None
        self.next = nxt
        task._inflight += 1

    def __call__(self, err, scsi):
        task = self.task
        task._inflight -= 1
        if self.token is not None:
            self.lun.end_write(self.token)
        if task.aborted or task._finished:
            task._free_if_idle()
            return
        if err:
            self.nx.fail(task, bdev_error(err, scsi))
            return
        try:
            self.next()
        except S.ScsiError as e:
            self.nx.fail(task, e)


def _alloc(task, h, n: int):
    buf = task._nexus.lend(h, n)
    task._bufs.append((h, buf))
    return buf


def _guarded(nx, task, view, lba, n, submit, nxt) -> None:
    """Run ``submit(op)`` (one write-kind bdev call over blocks lba..lba+n) once no
    foreign range lock holds the range; ``op`` completes the step and ends the write."""
    lun = view.lun

    def go(token):
        if task.aborted or task._finished:
            lun.end_write(token)
            return
        op = _Op(nx, task, nxt, lun)
        op.token = token
        submit(op)
    lun.begin_write(lba, n, task.lock_id, go, task)


def _write(nx, task, view, lba, n, data, fua, nxt) -> None:
    """Write ``data`` at block ``lba`` (n blocks) once no foreign range lock holds it."""
    _guarded(nx, task, view, lba, n,
             lambda op: view.h.write(lba * view.block_size, data, op, fua=fua), nxt)


def _write_kind(nx, task, view, lba, n, kind, nxt) -> None:
    """unmap / write_zeroes over a block range, under the range-lock rules."""
    bs = view.block_size
    _guarded(nx, task, view, lba, n, lambda op: getattr(view.h, kind)(lba * bs, n * bs, op), nxt)


def _fua(view, cdb_fua: bool) -> bool:
    # WCE=0 (MODE SELECT) on a bdev with a write cache: every write is write-through
    if not view.fua:
        return False
    return cdb_fua or (view.has_write_cache and not view.lun.shared.wce)


def _check_dpofua(view, cdb) -> None:
    """DPO/FUA bits are refused when MODE SENSE reports DPOFUA=0 (SBC-3 6.4.3)."""
    if cdb[1] & 0x18 and not view.fua:
        raise S.illegal()


# ----------------------------------------------------------------------- commands
def execute(nx, task, view, cdb) -> None:
    fn = _SBC.get(cdb[0])
    if fn is None:
        raise S.illegal(S.INVALID_COMMAND_OPERATION_CODE)
    fn(nx, task, view, cdb)


def _read(nx, task, view, cdb):
    if cdb[0] != C.READ_6 and cdb[1] & 0xE0:      # RDPROTECT: no protection information
        raise S.illegal()
    if cdb[0] not in (C.READ_6, C.WRITE_6):
        _check_dpofua(view, cdb)
    lba, n = _lba_len(cdb)
    _check_range(view, lba, n)
    _check_max_transfer(view, n)
    task.expected_length = n * view.block_size
    if n == 0:
        nx.finish(task)
        return
    nbytes = n * view.block_size
    buf = _alloc(task, view.h, nbytes)

    def done():
        task.data_in = buf[:nbytes]
        nx.finish(task)
    view.h.read(lba * view.block_size, nbytes, buf, _Op(nx, task, done))


def _accept_write(nx, task, view, cdb):
    """The checks every WRITE-kind command makes before it moves data (range, maximum
    transfer, writable LUN), then ``(lba, n, data)``: the blocks the Data-Out really
    carries.  ``n == 0`` means the task is already finished (nothing to write)."""
    lba, n = _lba_len(cdb)
    _check_range(view, lba, n)
    _check_max_transfer(view, n)
    _check_writable(view)
    task.expected_length = n * view.block_size
    n = _write_blocks_available(task, view, n)
    if n == 0:
        nx.finish(task)
        return lba, 0, None
    return lba, n, _data_out(task, n * view.block_size)


def _write_cmd(nx, task, view, cdb):
    op = cdb[0]
    if op != C.WRITE_6 and cdb[1] & 0xE0:         # WRPROTECT
        raise S.illegal()
    if cdb[0] not in (C.READ_6, C.WRITE_6):
        _check_dpofua(view, cdb)
    lba, n, data = _accept_write(nx, task, view, cdb)
    if not n:
        return
    fua = _fua(view, op != C.WRITE_6 and bool(cdb[1] & 0x08))
    _write(nx, task, view, lba, n, data, fua, lambda: nx.finish(task))


def _bytchk(cdb) -> int:
    b = (cdb[1] >> 1) & 0x03
    if b == 0x02:
        raise S.illegal()
    return b


def _compare_then(nx, task, view, lba, n, expect, same_block: bool, nxt) -> None:
    """Read n blocks at lba and compare with ``expect`` (one block repeated when
    ``same_block``); a difference is MISCOMPARE with the byte offset in INFORMATION."""
    bs = view.block_size
    nbytes = n * bs
    buf = _alloc(task, view.h, nbytes)

    def compared():
        got = bytes(buf[:nbytes])
        want = bytes(expect) * n if same_block else bytes(expect)
        if got != want:
            off = next(i for i in range(nbytes) if got[i] != want[i])
            raise S.ScsiError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=off)
        nxt()
    view.h.read(lba * bs, nbytes, buf, _Op(nx, task, compared))


def _verify(nx, task, view, cdb):
    if cdb[1] & 0xE0:                             # VRPROTECT
        raise S.illegal()
    bytchk = _bytchk(cdb)
    lba, n = _lba_len(cdb)
    _check_range(view, lba, n)
    _check_max_transfer(view, n)
    if n == 0:
        nx.finish(task)
        return
    bs = view.block_size
    if bytchk == 0:
        # medium verification: read it, so a failing medium reports its error
        task.expected_length = 0
        buf = _alloc(task, view.h, n * bs)
        view.h.read(lba * bs, n * bs, buf, _Op(nx, task, lambda: nx.finish(task)))
        return
    same = bytchk == 0x03
    task.expected_length = bs if same else n * bs
    expect = _data_out(task, task.expected_length)
    _compare_then(nx, task, view, lba, n, expect, same, lambda: nx.finish(task))


def _write_verify(nx, task, view, cdb):
    if cdb[1] & 0xE0:
        raise S.illegal()
    bytchk = _bytchk(cdb)
    if bytchk == 0x03:
        raise S.illegal()
    lba, n, data = _accept_write(nx, task, view, cdb)
    if not n:
        return

    def written():
        if bytchk:
            _compare_then(nx, task, view, lba, n, data, False, lambda: nx.finish(task))
        else:
            nx.finish(task)
    _write(nx, task, view, lba, n, data, True, written)


def _sync_cache(nx, task, view, cdb):
    lba, n = _lba_len(cdb)
    _check_range(view, lba, n)
    if not view.flush:
        nx.finish(task)
        return
    bs = view.block_size
    count = n if n else view.num_blocks - lba
    view.h.flush(lba * bs, count * bs, _Op(nx, task, lambda: nx.finish(task)))


def _prefetch(nx, task, view, cdb):
    lba, n = _lba_len(cdb)
    _check_range(view, lba, n)
    nx.finish(task)              # nothing to stage: GOOD (SBC-3 5.8: no cache promised)


def _unmap(nx, task, view, cdb):
    if not view.unmap:
        raise S.illegal(S.INVALID_COMMAND_OPERATION_CODE)
    if cdb[1] & 0x01:            # ANCHOR: ANC_SUP=0
        raise S.illegal()
    plen = int.from_bytes(cdb[7:9], "big")
    task.expected_length = plen
    if plen == 0:
        nx.finish(task)
        return
    if plen < 8:
        raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
    _check_writable(view)
    data = bytes(_data_out(task, plen))
    bdlen = int.from_bytes(data[2:4], "big")
    if bdlen > plen - 8 or bdlen % 16:
        bdlen = (min(bdlen, plen - 8) // 16) * 16     # SBC-3 5.28: only whole descriptors
    descs = []
    total = 0
    for off in range(8, 8 + bdlen, 16):
        lba = int.from_bytes(data[off:off + 8], "big")
        n = int.from_bytes(data[off + 8:off + 12], "big")
        _check_range(view, lba, n)
        total += n
        if n:
            descs.append((lba, n))
    if len(descs) > spc.MAX_UNMAP_DESCRIPTORS or total > spc.MAX_UNMAP_LBA_COUNT:
        raise S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST)

    def step():
        if not descs:
            nx.finish(task)
            return
        lba, n = descs.pop(0)
        _write_kind(nx, task, view, lba, n, "unmap", step)
    step()


def _write_same(nx, task, view, cdb):
    ten = cdb[0] == C.WRITE_SAME_10
    if cdb[1] & 0xE0 or cdb[1] & 0x10:            # WRPROTECT, ANCHOR
        raise S.illegal()
    unmap = bool(cdb[1] & 0x08)
    ndob = (not ten) and bool(cdb[1] & 0x01)
    lba, n = _lba_len(cdb)
    bs = view.block_size
    if lba > view.num_blocks:
        raise S.illegal(S.LBA_OUT_OF_RANGE)
    if n == 0:                                    # WSNZ=0: to the end of the medium
        n = view.num_blocks - lba
    _check_range(view, lba, n)
    if n > spc.max_write_same(view):
        raise S.illegal()
    if unmap and not view.unmap:
        raise S.illegal()
    _check_writable(view)
    if ndob:
        if task.data_out is not None and len(task.data_out):
            raise S.illegal()
        block = bytes(bs)
        task.expected_length = 0
    else:
        if task.data_out is None or len(task.data_out) != bs:
            raise S.illegal()
        block = bytes(task.data_out[:bs])
        task.expected_length = bs
    if n == 0:
        nx.finish(task)
        return
    zero = not any(block)
    done = lambda: nx.finish(task)                # noqa: E731
    if unmap and zero:
        _write_kind(nx, task, view, lba, n, "unmap", done)
    elif zero and view.write_zeroes:
        _write_kind(nx, task, view, lba, n, "write_zeroes", done)
    else:
        per = max(1, CHUNK // bs)
        pattern = block * min(per, n)
        state = {"lba": lba, "left": n}

        def step():
            if not state["left"]:
                nx.finish(task)
                return
            k = min(per, state["left"])
            at = state["lba"]
            state["lba"] += k
            state["left"] -= k
            _write(nx, task, view, at, k, memoryview(pattern)[:k * bs],
                   _fua(view, False), step)
        step()


def _compare_and_write(nx, task, view, cdb):
    if cdb[1] & 0xE0:
        raise S.illegal()
    _check_dpofua(view, cdb)
    lba = int.from_bytes(cdb[2:10], "big")
    n = cdb[13]
    bs = view.block_size
    if n > min(spc.ATS_BYTES // bs, 0xFF):
        raise S.illegal()
    _check_range(view, lba, n)
    _check_writable(view)
    task.expected_length = 2 * n * bs
    # the Data-Out is exactly the verify and write halves: anything else (e.g. a 256-block
    # request whose count wrapped to 0 in the one-byte field) is a bad CDB
    have = len(task.data_out) if task.data_out is not None else 0
    if have != 2 * n * bs:
        raise S.illegal()
    if n == 0:
        nx.finish(task)
        return
    data = memoryview(task.data_out)
    verify, write = data[:n * bs], data[n * bs:2 * n * bs]
    fua = _fua(view, bool(cdb[1] & 0x08))
    lun_id = task.lun

    def locked(lid):
        if not lid:
            if not task._finished:
                nx.fail(task, S.ScsiError(S.ABORTED_COMMAND, S.NO_ADDITIONAL_SENSE))
            return
        task.lock_id = lid
        if task.aborted or task._finished:
            D.unlock_range(nx, lun_id, lid)
            return
        task._inflight += 1              # the lock itself: released on every path below

        def unlock_then(fn):
            task._inflight -= 1
            D.unlock_range(nx, lun_id, lid)
            task.lock_id = 0
            fn()

        def fail_unlock(e):
            unlock_then(lambda: nx.fail(task, e))

        _guarded_compare(nx, task, view, lba, n, verify, write, fua, fail_unlock,
                         unlock_then)
    D.lock_range(nx, lun_id, lba, n, locked)


def _guarded_compare(nx, task, view, lba, n, expect, write, fua, fail_unlock,
                     unlock_then):
    """COMPARE AND WRITE's read-compare-write with the range lock released on every
    outcome: mismatch, bdev error, abort."""
    bs = view.block_size
    nbytes = n * bs
    buf = _alloc(task, view.h, nbytes)
    lun = view.lun
    h = view.h

    def read_done(err, scsi):
        task._inflight -= 1
        if task.aborted or task._finished:
            unlock_then(lambda: task._free_if_idle())
            return
        if err:
            fail_unlock(bdev_error(err, scsi))
            return
        got = bytes(buf[:nbytes])
        want = bytes(expect)
        if got != want:
            off = next(i for i in range(nbytes) if got[i] != want[i])
            fail_unlock(S.ScsiError(S.MISCOMPARE, S.MISCOMPARE_DURING_VERIFY, info=off))
            return

        def go(token):
            if task.aborted or task._finished:
                lun.end_write(token)
                unlock_then(lambda: task._free_if_idle())
                return
            task._inflight += 1

            def wrote(err, scsi):
                task._inflight -= 1
                lun.end_write(token)
                if task.aborted or task._finished:
                    unlock_then(lambda: task._free_if_idle())
                elif err:
                    fail_unlock(bdev_error(err, scsi))
                else:
                    unlock_then(lambda: nx.finish(task))
            h.write(lba * bs, write, wrote, fua=fua)
        lun.begin_write(lba, n, task.lock_id, go, task)

    task._inflight += 1
    h.read(lba * bs, nbytes, buf, read_done)


def get_lba_status(nx, task, view, cdb):
    lba = int.from_bytes(cdb[2:10], "big")
    alloc = int.from_bytes(cdb[10:14], "big")
    if lba >= view.num_blocks:
        raise S.illegal(S.LBA_OUT_OF_RANGE)
    # every block reads as mapped: the bdev API does not report allocation
    n = min(view.num_blocks - lba, 0xFFFFFFFF)
    desc = lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes([0, 0, 0, 0])
    nx.reply(task, (len(desc) + 4).to_bytes(4, "big") + bytes(4) + desc, alloc)


_SBC = {
    C.READ_6: _read, C.READ_10: _read, C.READ_12: _read, C.READ_16: _read,
    C.WRITE_6: _write_cmd, C.WRITE_10: _write_cmd, C.WRITE_12: _write_cmd,
    C.WRITE_16: _write_cmd,
    C.VERIFY_10: _verify, C.VERIFY_12: _verify, C.VERIFY_16: _verify,
    C.WRITE_AND_VERIFY_10: _write_verify, C.WRITE_AND_VERIFY_12: _write_verify,
    C.WRITE_AND_VERIFY_16: _write_verify,
    C.SYNCHRONIZE_CACHE_10: _sync_cache, C.SYNCHRONIZE_CACHE_16: _sync_cache,
    C.PRE_FETCH_10: _prefetch, C.PRE_FETCH_16: _prefetch,
    C.UNMAP: _unmap, C.WRITE_SAME_10: _write_same, C.WRITE_SAME_16: _write_same,
    C.COMPARE_AND_WRITE: _compare_and_write,
}
