"""Submission: the users' I/O calls (read/readv/write/writev/write_zeroes/unmap/flush
and the NVMe passthrus; seed order of checks: EBADF, EINVAL, ENOMEM), ``_io_submit``
(split, or route to QoS through the QoS stage) and ``_io_submit_now`` (the seed's
_spdk_bdev_io_submit), the split of I/O a bdev cannot take whole, and write-zeroes
emulation.  read_blocks and write_blocks are the per-I/O hot path and stay inlined.
"""
from __future__ import annotations

import logging

from ._bdev_io import _get_io, free_io, queue_io_wait
from ._buffers import io_get_buf
from ._complete import _defer, io_complete
from ._const import (BDEV_IO_NUM_CHILD_IOV, EBADF, EINVAL, ENOMEM, ENOTSUP, IO_STATUS_FAILED,
                     IO_STATUS_PENDING, IO_STATUS_SUCCESS, IO_TYPE_FLUSH, IO_TYPE_NVME_ADMIN,
                     IO_TYPE_NVME_IO, IO_TYPE_NVME_IO_MD, IO_TYPE_READ, IO_TYPE_UNMAP,
                     IO_TYPE_WRITE, IO_TYPE_WRITE_ZEROES, LARGE_BUF_MAX_SIZE, ZERO_BUFFER_SIZE)
from ._stages import qos_stage
from ._types import BDEV_CH_QOS_ENABLED, BDEV_CH_RESET_IN_PROGRESS, U64, IoWaitEntry

log = logging.getLogger("ringstack.bdev")

# The zero buffer only ever feeds writes, so one immutable buffer per process serves all.
_ZERO_BUFFER = memoryview(bytes(ZERO_BUFFER_SIZE))


# ===================================================================== submission
def _io_valid_blocks(bdev, offset_blocks, num_blocks) -> bool:
    if offset_blocks < 0 or num_blocks < 0:
        return False
    # The seed's u64 overflow check: offset + num wrapping around.
    if offset_blocks + num_blocks >= U64:
        return False
    return offset_blocks + num_blocks <= bdev.blockcnt


def _bytes_to_blocks(bdev, offset_bytes, num_bytes):
    bs = bdev.blocklen
    return offset_bytes // bs, num_bytes // bs, (offset_bytes % bs) | (num_bytes % bs)


def _io_init(io, bdev, cb_arg, cb) -> None:
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.in_submit_request = False
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None


def _io_submit_now(io, bypass_qos=False) -> None:
    """The seed's _spdk_bdev_io_submit, on the thread owning io.ch.  ``bypass_qos``: the
    QoS thread already took this I/O's quota (a passthru admitted from another reactor)."""
    bdev = io.bdev
    ch = io.ch
    sr = ch.shared_resource
    io.submit_tsc = ch.clock()
    ch.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    flags = ch.flags
    if bypass_qos:
        flags &= ~BDEV_CH_QOS_ENABLED
    if flags == 0:
        if not sr.nomem_io:
            bdev._submit(ch.channel, io)
        else:
            ch.io_outstanding -= 1
            sr.io_outstanding -= 1
            sr.nomem_io.append(io)
    elif flags & BDEV_CH_RESET_IN_PROGRESS:
        io_complete(io, IO_STATUS_FAILED)
    elif flags & BDEV_CH_QOS_ENABLED:
        ch.io_outstanding -= 1
        sr.io_outstanding -= 1
        bdev.qos.queued.append(io)
        qos_stage.io_submit(ch)
    else:
        log.error("unknown bdev_ch flag %x found", flags)
        io_complete(io, IO_STATUS_FAILED)
    io.in_submit_request = False


def _io_submit(io) -> None:
    """spdk_bdev_io_submit: split if needed, funnel to the QoS thread if QoS is on."""
    bdev = io.bdev
    if bdev._may_split and _should_split(io):
        io.submit_tsc = io.ch.clock()    # the parent's (its children get their own)
        if io.type == IO_TYPE_READ and io.iovs[0] is None:
            n = io.num_blocks * bdev.blocklen
            if n > LARGE_BUF_MAX_SIZE:
                # No layer buffer that large: the parent fails, after the call (it never
                # reached a module, so no counter moves).
                log.error("read of %d bytes without a buffer exceeds %d", n, LARGE_BUF_MAX_SIZE)
                _fail_parent(io)
                return
            io_get_buf(io, _io_split, n)
        else:
            _io_split(None, io)
        return
    if io.ch.flags & BDEV_CH_QOS_ENABLED:
        qos_stage.route(io)
    else:
        _io_submit_now(io)


def _submit_reset(io) -> None:
    io.in_submit_request = True
    io.bdev._submit(io.ch.channel, io)
    io.in_submit_request = False


# -- the user's I/O calls (seed order of checks: EBADF, EINVAL, ENOMEM)
def read(desc, ch, buf, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return read_blocks(desc, ch, buf, ob, nb, cb, cb_arg)


def read_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    # The hot path (bdevperf, NBD): everything inlined -- validation (offset + num >
    # blockcnt also catches the seed's u64 wrap-around, Python ints do not wrap), the
    # per-thread cache, _io_init and, when the channel has no flag and the bdev cannot
    # split, the seed's _spdk_bdev_io_submit.  Any other case takes _io_submit.
    # write_blocks repeats this body on purpose (the per-I/O budget): do not factor it.
    bdev = desc.bdev
    if offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > bdev.blockcnt:
        return -EINVAL
    channel = ch.ctx
    mgmt = channel.mgmt
    cache = mgmt.cache
    if cache:
        io = cache.pop()
    else:
        io = _get_io(channel)
        if io is None:
            return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_READ
    iov = io._iov
    iov[0] = buf
    io.iovs = iov
    io.iovcnt = 1
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None
    if channel.flags or bdev._may_split:
        io.in_submit_request = False
        _io_submit(io)
        return 0
    sr = channel.shared_resource
    io.submit_tsc = channel.clock()
    if sr.nomem_io:
        io.in_submit_request = False
        sr.nomem_io.append(io)
        return 0
    channel.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    bdev._submit(channel.channel, io)
    io.in_submit_request = False
    return 0


def readv(desc, ch, iovs, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return readv_blocks(desc, ch, iovs, ob, nb, cb, cb_arg)


def readv_blocks(desc, ch, iovs, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_READ
    io.iovs = iovs
    io.iovcnt = len(iovs)
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def write(desc, ch, buf, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return write_blocks(desc, ch, buf, ob, nb, cb, cb_arg)


def write_blocks(desc, ch, buf, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    # Inlined like read_blocks, repeating its body on purpose (the per-I/O budget).
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > bdev.blockcnt:
        return -EINVAL
    channel = ch.ctx
    cache = channel.mgmt.cache
    if cache:
        io = cache.pop()
    else:
        io = _get_io(channel)
        if io is None:
            return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_WRITE
    iov = io._iov
    iov[0] = buf
    io.iovs = iov
    io.iovcnt = 1
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    io.bdev = bdev
    io.caller_ctx = cb_arg
    io.cb = cb
    io.status = IO_STATUS_PENDING
    io.buf = None
    io.io_submit_ch = None
    io.proxy = False
    io.fwd = None
    if channel.flags or bdev._may_split:
        io.in_submit_request = False
        _io_submit(io)
        return 0
    sr = channel.shared_resource
    io.submit_tsc = channel.clock()
    if sr.nomem_io:
        io.in_submit_request = False
        sr.nomem_io.append(io)
        return 0
    channel.io_outstanding += 1
    sr.io_outstanding += 1
    io.in_submit_request = True
    bdev._submit(channel.channel, io)
    io.in_submit_request = False
    return 0


def writev(desc, ch, iovs, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return writev_blocks(desc, ch, iovs, ob, nb, cb, cb_arg)


def writev_blocks(desc, ch, iovs, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_WRITE
    io.iovs = iovs
    io.iovcnt = len(iovs)
    io.num_blocks = num_blocks
    io.offset_blocks = offset_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def write_zeroes(desc, ch, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return write_zeroes_blocks(desc, ch, ob, nb, cb, cb_arg)


def write_zeroes_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    """Write zeroes; emulated with writes of the zero buffer (1 MiB at a time) when the
    module lacks WRITE_ZEROES but has WRITE; -ENOTSUP when it has neither."""
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.type = IO_TYPE_WRITE_ZEROES
    io.ch = channel
    io.desc = desc
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    supported = bdev.fn_table.io_type_supported
    if supported(bdev.ctxt, IO_TYPE_WRITE_ZEROES):
        _io_submit(io)
        return 0
    if supported(bdev.ctxt, IO_TYPE_WRITE):
        io.submit_tsc = channel.clock()
        io.split_remaining_num_blocks = num_blocks
        io.split_current_offset_blocks = offset_blocks
        _write_zero_buffer_next(io)
        return 0
    free_io(io)
    return -ENOTSUP


def unmap(desc, ch, offset, nbytes, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, nbytes)
    if rem:
        return -EINVAL
    return unmap_blocks(desc, ch, ob, nb, cb, cb_arg)


def unmap_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    if num_blocks == 0:
        log.error("can't unmap 0 bytes")
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_UNMAP
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 1
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def flush(desc, ch, offset, length, cb, cb_arg=None) -> int:
    ob, nb, rem = _bytes_to_blocks(desc.bdev, offset, length)
    if rem:
        return -EINVAL
    return flush_blocks(desc, ch, ob, nb, cb, cb_arg)


def flush_blocks(desc, ch, offset_blocks, num_blocks, cb, cb_arg=None) -> int:
    if not desc.write:
        return -EBADF
    bdev = desc.bdev
    if not _io_valid_blocks(bdev, offset_blocks, num_blocks):
        return -EINVAL
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = IO_TYPE_FLUSH
    io.iovs = None
    io.iovcnt = 0
    io.offset_blocks = offset_blocks
    io.num_blocks = num_blocks
    _io_init(io, bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def _nvme_passthru(desc, ch, io_type, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg) -> int:
    if not desc.write:
        # As the seed: the command is not parsed, so a read-only desc may not pass it.
        return -EBADF
    channel = ch.ctx
    io = _get_io(channel)
    if io is None:
        return -ENOMEM
    io.ch = channel
    io.desc = desc
    io.type = io_type
    io.nvme_cmd = cmd
    io.nvme_buf = buf
    io.nvme_nbytes = nbytes
    io.md_buf = md_buf
    io.md_len = md_len
    io.iovs = io._iov
    io._iov[0] = None
    io.iovcnt = 0
    io.offset_blocks = io.num_blocks = 0
    _io_init(io, desc.bdev, cb_arg, cb)
    _io_submit(io)
    return 0


def nvme_admin_passthru(desc, ch, cmd, buf, nbytes, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_ADMIN, cmd, buf, nbytes, None, 0, cb, cb_arg)


def nvme_io_passthru(desc, ch, cmd, buf, nbytes, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_IO, cmd, buf, nbytes, None, 0, cb, cb_arg)


def nvme_io_passthru_md(desc, ch, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg=None) -> int:
    return _nvme_passthru(desc, ch, IO_TYPE_NVME_IO_MD, cmd, buf, nbytes, md_buf, md_len, cb, cb_arg)


# ===================================================================== split
def _should_split(io) -> bool:
    # (per I/O of a bdev that may split: the split parameters are read from their slots,
    # not through the Bdev properties that keep _may_split true to them)
    if io.type != IO_TYPE_READ and io.type != IO_TYPE_WRITE:
        # Only payload I/O splits: unmap and friends are large and payload-free, the
        # module splits those better (the seed's reasoning).
        return False
    bdev = io.bdev
    b = bdev._optimal_io_boundary
    if bdev._split_on_optimal_io_boundary and b:
        if io.offset_blocks // b != (io.offset_blocks + io.num_blocks - 1) // b:
            return True
    if bdev._max_rw_size and io.num_blocks > bdev._max_rw_size:
        return True
    if bdev._max_num_segments and io.iovcnt > bdev._max_num_segments:
        return True
    if bdev._max_segment_size and io.iovs[0] is not None:
        mss = bdev._max_segment_size
        for v in io.iovs:
            if len(v) > mss:
                return True
    return False


def _io_split(_ch, io) -> None:
    io.split_current_offset_blocks = io.offset_blocks
    io.split_remaining_num_blocks = io.num_blocks
    _io_split_with_payload(io)


def _queue_io_wait_with_cb(io, cb_fn) -> None:
    entry = io.waitq_entry
    if entry is None:
        entry = io.waitq_entry = IoWaitEntry()
    entry.bdev = io.bdev
    entry.cb_fn = cb_fn
    entry.cb_arg = io
    rc = queue_io_wait(io.bdev, io.ch.io_ch, entry)
    if rc:
        log.error("queue IO failed, rc=%d", rc)
        _fail_parent(io)


def _io_split_with_payload(io) -> None:
    bdev = io.bdev
    remaining = io.split_remaining_num_blocks
    current = io.split_current_offset_blocks
    blocklen = bdev.blocklen
    handled = (current - io.offset_blocks) * blocklen
    iovs = io.iovs
    pi = 0
    poff = 0
    while handled > 0:
        if handled >= len(iovs[pi]):
            handled -= len(iovs[pi])
            pi += 1
            continue
        poff += handled
        break
    n = remaining
    b = bdev._optimal_io_boundary
    if bdev._split_on_optimal_io_boundary and b:
        n = min(n, b - current % b)
    if bdev._max_rw_size:
        n = min(n, bdev._max_rw_size)
    max_iov = BDEV_IO_NUM_CHILD_IOV
    if bdev._max_num_segments:
        max_iov = min(max_iov, bdev._max_num_segments)
    mss = bdev._max_segment_size
    to_bytes = n * blocklen
    child = []
    while to_bytes > 0 and len(child) < max_iov and pi < len(iovs):
        v = iovs[pi]
        ln = min(to_bytes, len(v) - poff)
        if mss and ln > mss:
            ln = mss
        mv = v if type(v) is memoryview else memoryview(v)  # slices must alias, not copy
        child.append(mv[poff:poff + ln])
        to_bytes -= ln
        poff += ln
        if poff >= len(v):
            pi += 1
            poff = 0
    if to_bytes > 0:
        # Out of child iovec slots: the child must still be whole blocks.
        if to_bytes % blocklen:
            log.error("remaining %d is not a multiple of block size %d", to_bytes, blocklen)
            _fail_parent(io)
            return
        n -= to_bytes // blocklen
    io.child_iov = child
    if io.type == IO_TYPE_READ:
        rc = readv_blocks(io.desc, io.ch.io_ch, child, current, n, _io_split_done, io)
    else:
        rc = writev_blocks(io.desc, io.ch.io_ch, child, current, n, _io_split_done, io)
    if rc == 0:
        io.split_current_offset_blocks += n
        io.split_remaining_num_blocks -= n
    elif rc == -ENOMEM:
        _queue_io_wait_with_cb(io, _io_split_with_payload)
    else:
        _fail_parent(io)


def _fail_parent(io) -> None:
    """A split or emulated parent fails: its callback runs later, from the thread's
    deferred batch -- never inside the user's call (the first child is made there) and
    without touching io_outstanding (only children were counted)."""
    io.status = IO_STATUS_FAILED
    _defer(io)


def _io_split_done(child, success, parent) -> None:
    free_io(child)
    if not success:
        parent.status = IO_STATUS_FAILED
        parent.cb(parent, False, parent.caller_ctx)
        return
    if parent.split_remaining_num_blocks == 0:
        parent.status = IO_STATUS_SUCCESS
        parent.cb(parent, True, parent.caller_ctx)
        return
    _io_split_with_payload(parent)


# ===================================================================== write zeroes emulation
def _write_zero_buffer_next(io) -> None:
    bs = io.bdev.blocklen
    nbytes = min(bs * io.split_remaining_num_blocks, ZERO_BUFFER_SIZE)
    nblocks = nbytes // bs
    rc = write_blocks(io.desc, io.ch.io_ch, _ZERO_BUFFER[:nblocks * bs], io.split_current_offset_blocks,
                      nblocks, _write_zero_buffer_done, io)
    if rc == 0:
        io.split_remaining_num_blocks -= nblocks
        io.split_current_offset_blocks += nblocks
    elif rc == -ENOMEM:
        _queue_io_wait_with_cb(io, _write_zero_buffer_next)
    else:
        _fail_parent(io)


def _write_zero_buffer_done(child, success, parent) -> None:
    free_io(child)
    if not success:
        parent.status = IO_STATUS_FAILED
        parent.cb(parent, False, parent.caller_ctx)
        return
    if parent.split_remaining_num_blocks == 0:
        parent.status = IO_STATUS_SUCCESS
        parent.cb(parent, True, parent.caller_ctx)
        return
    _write_zero_buffer_next(parent)
