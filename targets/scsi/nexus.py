"""One I_T nexus to a ScsiDev (SPDK's spdk_scsi_dev_queue_task and lun.c task handling):
command admission (LUN lookup, unit attentions, reservation conflicts), the SPC
commands answered in place, task management, and the nexus's BdevHandles (one per LUN,
opened on the thread that serves the nexus, Contract 2)."""
from __future__ import annotations

import logging
from collections import deque

import reactor as rx

from . import commands as C
from . import dev as D
from . import pr
from . import sbc
from . import sense as S
from . import spc

log = logging.getLogger("ringstack.scsi")

_UA_EXEMPT = (C.INQUIRY, C.REPORT_LUNS, C.REQUEST_SENSE)


def _open_handle(bdev_name, event_cb):
    from targets.serve.bdev_handle import BdevHandle
    return BdevHandle(bdev_name, write=True, event_cb=event_cb)


#: how a nexus opens a bdev (Contract 2); tests may point it elsewhere
open_handle = _open_handle


class LunView:
    """What the SPC/SBC builders need of a LUN as this nexus sees it (geometry from its
    own handle)."""

    __slots__ = ("lun", "h", "bdev_name", "product", "block_size", "num_blocks", "unmap",
                 "write_zeroes", "flush", "has_write_cache", "fua")

    def __init__(self, lun, h):
        import bdev.api as api
        self.lun = lun
        self.h = h
        self.bdev_name = lun.bdev_name
        self.refresh()
        self.product = api.get_product_name(h.bdev) or "Ringstack disk"

    def refresh(self) -> None:
        import bdev.api as api
        h = self.h
        self.block_size = h.block_size
        self.num_blocks = h.num_blocks
        self.unmap = bool(h.supports(api.IO_TYPE_UNMAP))
        self.write_zeroes = bool(h.supports(api.IO_TYPE_WRITE_ZEROES))
        self.flush = bool(h.supports(api.IO_TYPE_FLUSH))
        self.has_write_cache = bool(h.has_write_cache)
        # FUA offered only when the handle can honour it (a write cache without FLUSH
        # cannot): DPOFUA in MODE SENSE says so
        self.fua = bool(getattr(h, "fua_supported", True))


class Nexus:
    def __init__(self, dev, initiator_port: str, target_port: str):
        self.dev = dev
        self.key = (initiator_port, target_port)
        self.initiator_port = initiator_port
        self.target_port = target_port
        self.thread = rx.get_thread()
        self.views: dict = {}            # lun id -> LunView (absent: cannot be reached)
        self.ua: dict = {}               # lun id -> deque of (asc, ascq)
        self.tasks: list = []            # executing
        self.closed = False
        # buffers out of each handle (task data-in, transport data-out): a handle that
        # goes away (hot-remove, nexus loss) closes only once they are all back, so a
        # view the transport is still sending from is never released under it
        self._lent: dict = {}            # id(handle) -> [handle, count, retiring]
        self._out_bufs: dict = {}        # id(data-out buffer) -> handle
        for lun_id, lun in dev.luns.items():
            self.ua[lun_id] = deque()
            try:
                h = open_handle(lun.bdev_name, self._event_cb(lun_id))
            except OSError as exc:
                log.warning("nexus %s: LUN %d (%s) cannot be opened: %s", self.key, lun_id,
                            lun.bdev_name, exc)
                continue
            self.views[lun_id] = LunView(lun, h)
        dev.nexuses.add(self)

    # ------------------------------------------------------------------ plumbing
    def _event_cb(self, lun_id):
        def cb(event):
            v = self.views.get(lun_id)
            if v is None:
                return
            if event == "removed":
                # commands from now on see no LUN; outstanding ones still complete
                self.drop_lun(lun_id)
            elif event == "resized":
                v.refresh()
                self.add_unit_attention(lun_id, S.CAPACITY_DATA_HAS_CHANGED)
        return cb

    def drop_lun(self, lun_id: int) -> None:
        v = self.views.pop(lun_id, None)
        if v is not None:
            self._retire(v.h)

    def run_on_thread(self, fn, *args) -> None:
        if rx.get_thread() is self.thread:
            fn(*args)
        else:
            rx.send_msg(self.thread, fn, *args)

    def add_unit_attention(self, lun_id: int, code) -> None:
        q = self.ua.get(lun_id)
        if q is not None and tuple(code) not in q:
            q.append(tuple(code))

    def lend(self, h, n: int):
        """A buffer of ``n`` bytes from handle ``h``, counted until ``give_back``."""
        ent = self._lent.get(id(h))
        if ent is None:
            ent = self._lent[id(h)] = [h, 0, False]
        ent[1] += 1
        return h.alloc(n)

    def give_back(self, h, buf) -> None:
        h.free(buf)
        ent = self._lent.get(id(h))
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] <= 0 and ent[2]:
            del self._lent[id(h)]
            h.close()

    def _retire(self, h) -> None:
        ent = self._lent.get(id(h))
        if ent is None or ent[1] <= 0:
            self._lent.pop(id(h), None)
            h.close()
        else:
            ent[2] = True

    def alloc(self, n: int):
        """A Data-Out buffer (Contract 3): from a LUN's handle (the arena, so the bdev
        layer need not bounce it), else private memory."""
        for v in self.views.values():
            buf = self.lend(v.h, n)
            self._out_bufs[id(buf)] = v.h
            return buf
        return memoryview(bytearray(n))

    def free(self, buf) -> None:
        h = self._out_bufs.pop(id(buf), None)
        if h is not None:
            self.give_back(h, buf)

    def data_length(self, lun_id: int, cdb) -> int | None:
        """Bytes the CDB transfers, None if none or unknown (Contract 3, optional): a
        transport solicits no more Data-Out than this."""
        v = self.views.get(lun_id)
        if v is None or not cdb:
            return None
        return sbc.data_length(bytes(cdb), v.block_size)

    # ------------------------------------------------------------------ execute
    def execute(self, task, cb) -> None:
        task._nexus = self
        task._cb = cb
        if self.closed:
            task.aborted = True
            self.finish(task)
            return
        self.tasks.append(task)
        try:
            self._dispatch(task)
        except S.ScsiError as e:
            task.set_error(e)
            self.finish(task)
        except Exception:
            log.exception("nexus %s: %r failed", self.key, task)
            task.set_error(S.ScsiError(S.HARDWARE_ERROR, S.INTERNAL_TARGET_FAILURE))
            self.finish(task)

    def finish(self, task) -> None:
        """The task's answer is ready (or it was aborted): the callback, once."""
        if task._finished:
            return
        task._finished = True
        try:
            self.tasks.remove(task)
        except ValueError:
            pass
        if task.data_in and len(task.data_in) > task.transfer_length:
            task.data_in = task.data_in[:task.transfer_length]
        task._cb(task)

    def fail(self, task, e: S.ScsiError) -> None:
        task.set_error(e)
        self.finish(task)

    def fail_tuple(self, task, err) -> None:
        status, sk, asc, ascq = err
        self.fail(task, S.ScsiError(sk, (asc, ascq), status=status))

    def reply(self, task, data: bytes, alloc_len: int | None = None) -> None:
        """Data-in for a command answered in place: at most the allocation length."""
        if alloc_len is not None:
            data = data[:alloc_len]
        task.data_in = data
        self.finish(task)

    def _dispatch(self, task) -> None:
        cdb = task.cdb
        if not cdb:
            raise S.illegal(S.INVALID_COMMAND_OPERATION_CODE)
        op = cdb[0]
        view = self.views.get(task.lun)
        if view is None:
            self._null_lun(task)
            return
        lun = view.lun
        ua = self.ua[task.lun]
        if ua and op not in _UA_EXEMPT:
            raise S.ScsiError(S.UNIT_ATTENTION, ua.popleft())
        cmd = C.lookup(cdb)
        if cmd is None:
            # an unknown service action of a known opcode is a bad CDB field (SPC-4
            # 6.16 / iscsi-test-cu PrinServiceactionRange); an unknown opcode is not ours
            if op in C.SA_FIELD and len(cdb) > C.SA_FIELD[op]:
                raise S.illegal(field=(C.SA_FIELD[op], 4))
            raise S.illegal(S.INVALID_COMMAND_OPERATION_CODE)
        if len(cdb) < len(cmd.usage):
            raise S.illegal()
        sa = cdb[1] & 0x1F if op == C.PR_OUT else -1
        if pr.check_conflict(lun.shared, self.key, cmd.cls, op, sa):
            raise S.conflict()
        handler = _SPC.get(op)
        if handler is not None:
            handler(self, task, view, cdb)
        else:
            sbc.execute(self, task, view, cdb)

    def _null_lun(self, task) -> None:
        op = task.cdb[0]
        if op == C.INQUIRY:
            self.reply(task, spc.null_lun_inquiry(), int.from_bytes(task.cdb[3:5], "big"))
        elif op == C.REPORT_LUNS:
            _report_luns(self, task, None, task.cdb)
        elif op == C.REQUEST_SENSE:
            self.reply(task, S.fixed_sense(S.ILLEGAL_REQUEST, *S.LOGICAL_UNIT_NOT_SUPPORTED),
                       task.cdb[4])
        else:
            raise S.illegal(S.LOGICAL_UNIT_NOT_SUPPORTED)

    # ---------------------------------------------------------- task management
    def _abort(self, task) -> None:
        task.aborted = True
        if task._parked is not None:
            lun = self.dev.luns.get(task.lun)
            if lun is not None:
                lun.unpark(task._parked)
            task._parked = None
        self.finish(task)

    def abort_task(self, lun_id: int, tag: int) -> bool:
        for t in list(self.tasks):
            if t.lun == lun_id and t.tag == tag:
                self._abort(t)
                return True
        return False

    def abort_task_set(self, lun_id: int) -> None:
        for t in [t for t in self.tasks if t.lun == lun_id]:
            self._abort(t)

    def lun_reset(self, lun_id: int, cb) -> None:
        """LOGICAL UNIT RESET (SAM-5 7.8): abort every nexus's tasks on the LUN (those on
        other reactors by broadcast, which also raises their unit attention), release a
        RESERVE(6), reset the bdev through this nexus's handle; ``cb(rc)``."""
        view = self.views.get(lun_id)
        if view is None:
            rx.send_msg(self.thread, cb, -19)
            return
        self.abort_task_set(lun_id)

        def reset_bdev(_err=None):
            v = self.views.get(lun_id)
            if v is None:
                cb(0)
                return
            v.h.reset(lambda err, scsi: cb(err))

        D.reset_fanout(self, lun_id,
                       lambda rc: D.main_op(self, lun_id, "reset", [list(self.key)], reset_bdev))

    def target_reset(self, cb) -> None:
        ids = sorted(self.views)
        rcs = []

        def one(rc=0):
            rcs.append(rc)
            if ids:
                self.lun_reset(ids.pop(0), one)
            else:
                cb(next((r for r in rcs if r), 0))
        if not ids:
            rx.send_msg(self.thread, cb, 0)
            return
        self.lun_reset(ids.pop(0), one)

    def close(self) -> None:
        """I_T nexus loss: tasks are aborted, an SPC-2 reservation this nexus holds is
        released; registrations persist.  Each handle closes once the bdev returned its
        last op and the transport released the tasks (and Data-Out buffers) using it."""
        if self.closed:
            return
        self.closed = True
        for t in list(self.tasks):
            self._abort(t)
        for lun_id, lun in self.dev.luns.items():
            if lun.shared.scsi2 == self.key:
                D.main_op(self, lun_id, "nexus_loss", [list(self.key)], lambda err: None)
        for v in self.views.values():
            self._retire(v.h)
        self.views.clear()
        self.dev.nexuses.discard(self)


# ===================================================================== SPC commands
def _alloc16(cdb, at):
    return int.from_bytes(cdb[at:at + 2], "big")


def _alloc32(cdb, at):
    return int.from_bytes(cdb[at:at + 4], "big")


def _inquiry(nx, task, view, cdb):
    evpd = cdb[1] & 0x01
    alloc = _alloc16(cdb, 3)
    if cdb[1] & 0xFE:
        raise S.illegal()
    if not evpd:
        if cdb[2]:
            raise S.illegal()
        data = spc.standard_inquiry(view.product)
    else:
        data = spc.vpd_page(cdb[2], view, nx.dev, nx.target_port)
    nx.reply(task, data, alloc)


def _report_luns(nx, task, view, cdb):
    alloc = _alloc32(cdb, 6)
    if alloc < 16:
        raise S.illegal()
    nx.reply(task, spc.report_luns(list(nx.views), cdb[2]), alloc)


def _request_sense(nx, task, view, cdb):
    ua = nx.ua[task.lun]
    pending = S.fixed_sense(S.UNIT_ATTENTION, *ua.popleft()) if ua else None
    nx.reply(task, spc.request_sense(pending, bool(cdb[1] & 0x01)), cdb[4])


def _tur(nx, task, view, cdb):
    nx.finish(task)


def _read_capacity10(nx, task, view, cdb):
    if cdb[8] & 0x01 or any(cdb[2:6]):     # PMI / LBA are obsolete: must be zero
        raise S.illegal()
    nx.reply(task, spc.read_capacity10(view))


def _service_action_in(nx, task, view, cdb):
    sa = cdb[1] & 0x1F
    alloc = _alloc32(cdb, 10)
    if sa == C.SAI_READ_CAPACITY_16:
        nx.reply(task, spc.read_capacity16(view), alloc)
    else:
        sbc.get_lba_status(nx, task, view, cdb)


def _mode_sense(nx, task, view, cdb):
    ten = cdb[0] == C.MODE_SENSE_10
    alloc = _alloc16(cdb, 7) if ten else cdb[4]
    nx.reply(task, spc.mode_sense(cdb, view, view.lun.shared, ten), alloc)


def _mode_select(nx, task, view, cdb):
    ten = cdb[0] == C.MODE_SELECT_10
    plen = _alloc16(cdb, 7) if ten else cdb[4]
    data = bytes(task.data_out[:plen]) if task.data_out is not None else b""
    if len(data) < plen:
        raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
    wce, swp = spc.mode_select(cdb, data, view, view.lun.shared, ten)
    D.main_op(nx, task.lun, "mode", [wce, swp], lambda err: _answered(nx, task, err))


def _answered(nx, task, err) -> None:
    if task._finished:
        return
    if err:
        nx.fail_tuple(task, err)
    else:
        nx.finish(task)


def _start_stop(nx, task, view, cdb):
    # a disk that is always ready: START/STOP and power conditions are accepted, LOEJ
    # (eject) of a non-removable medium is refused (SBC-3 5.25)
    if cdb[4] & 0x02 and not cdb[4] & 0xF0:
        raise S.illegal()
    nx.finish(task)


def _prevent_allow(nx, task, view, cdb):
    # RMB=0 in INQUIRY: PREVENT is accepted and has nothing to lock (SPC-4 6.13)
    if cdb[4] & 0x02:             # PREVENT 10b/11b: obsolete (medium changer)
        raise S.illegal()
    nx.finish(task)


def _pr_in(nx, task, view, cdb):
    alloc = _alloc16(cdb, 7)
    nx.reply(task, pr.pr_in_data(view.lun.shared, cdb[1] & 0x1F), alloc)


def _pr_out(nx, task, view, cdb):
    plen = _alloc32(cdb, 5)
    # without SPEC_I_PT (refused) the list is exactly 24 bytes: checked here so a bogus
    # length never travels to the main reactor
    if plen != 24:
        raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
    data = bytes(task.data_out[:plen]) if task.data_out is not None else b""
    if len(data) < plen:
        raise S.illegal(S.PARAMETER_LIST_LENGTH_ERROR)
    rel = spc._rel_port(nx.target_port)
    args = [list(nx.key), rel, cdb[1] & 0x1F, cdb[2] >> 4, cdb[2] & 0x0F, data, plen]
    D.main_op(nx, task.lun, "pr_out", args, lambda err: _answered(nx, task, err))


def _reserve6(nx, task, view, cdb):
    if cdb[1] & 0x03:          # obsolete 3rd-party / extent bits
        raise S.illegal()
    D.main_op(nx, task.lun, "reserve6", [list(nx.key)], lambda err: _answered(nx, task, err))


def _release6(nx, task, view, cdb):
    D.main_op(nx, task.lun, "release6", [list(nx.key)], lambda err: _answered(nx, task, err))


def _maintenance_in(nx, task, view, cdb):
    nx.reply(task, C.report_supported_opcodes(cdb), _alloc32(cdb, 6))


def _read_defect_data(nx, task, view, cdb):
    # no defects; the header echoes the requested list format (SBC-3 5.11)
    if cdb[0] == C.READ_DEFECT_DATA_10:
        nx.reply(task, bytes([0, cdb[2] & 0x1F, 0, 0]), _alloc16(cdb, 7))
    else:
        nx.reply(task, bytes([0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0]), _alloc32(cdb, 6))


_SPC = {
    C.INQUIRY: _inquiry, C.REPORT_LUNS: _report_luns, C.REQUEST_SENSE: _request_sense,
    C.TEST_UNIT_READY: _tur, C.READ_CAPACITY_10: _read_capacity10,
    C.SERVICE_ACTION_IN_16: _service_action_in, C.MODE_SENSE_6: _mode_sense,
    C.MODE_SENSE_10: _mode_sense, C.MODE_SELECT_6: _mode_select,
    C.MODE_SELECT_10: _mode_select, C.START_STOP_UNIT: _start_stop,
    C.PREVENT_ALLOW: _prevent_allow, C.PR_IN: _pr_in, C.PR_OUT: _pr_out,
    C.RESERVE_6: _reserve6, C.RELEASE_6: _release6, C.MAINTENANCE_IN: _maintenance_in,
    C.READ_DEFECT_DATA_10: _read_defect_data, C.READ_DEFECT_DATA_12: _read_defect_data,
}
