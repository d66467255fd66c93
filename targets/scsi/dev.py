"""ScsiDev and its LUN replicas (SPDK lib/scsi/dev.c, lun.c), and the main reactor's
ownership of LUN-wide state.

Every reactor builds its own ``ScsiDev`` replica (the control plane broadcasts the
create); the replica registers itself in its reactor's ``locals`` so the broadcast
handlers below find it by name.  State that must be single lives on the main reactor:

* ``Lun.auth`` (main only): the authoritative :class:`pr.LunShared` -- registrations,
  the persistent reservation, the RESERVE(6) holder, WCE/SWP.  A nexus on any reactor
  asks for a change with ``to_main(_main_op)``; main decides, then broadcasts the new
  state (and unit attentions / aborts it implies) to every replica and answers only once
  every replica applied it.  Replicas check conflicts locally from ``Lun.shared``.
* The COMPARE AND WRITE range lock: main grants ``lock_range``; every replica then
  holds new overlapping writes and acknowledges once its in-flight overlapping writes
  finished; ``unlock_range`` drops the holds everywhere and restarts what waited.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque

import reactor as rx
from reactor import fanout

import bdev.api as api

from . import pr
from . import sense as S

log = logging.getLogger("ringstack.scsi")

_KEY = "targets.scsi"
_lock_ids = itertools.count(1)


def _devs() -> dict:
    r = rx.current_reactor()
    d = r.locals.get(_KEY)
    if d is None:
        d = r.locals[_KEY] = {}
    return d


def find_dev(name: str):
    """This reactor's replica of ScsiDev ``name``, or None."""
    return _devs().get(name)


def _find_lun(dev_name: str, lun_id: int):
    dev = find_dev(dev_name)
    return dev.luns.get(lun_id) if dev is not None else None


class Lun:
    """One LUN of one reactor's ScsiDev replica."""

    def __init__(self, dev, lun_id: int, bdev_name: str):
        self.dev = dev
        self.id = lun_id
        self.bdev_name = bdev_name
        b = api.get_by_name(bdev_name)
        self.shared = pr.LunShared(wce=bool(b is not None and api.has_write_cache(b)))
        self.auth = None              # main reactor only: the authoritative LunShared
        # range lock, replica side: lock id -> (lba, n); holds waiting for writes to drain
        self.holds: dict = {}
        self.hold_waits: list = []    # [lock_id, lba, n, done]
        self.inflight: dict = {}      # token -> (lba, n): writes submitted to the bdev
        self.parked: deque = deque()  # [lba, n, lock_id, go, task]: writes a hold stopped
        self._tokens = itertools.count(1)
        # range lock, main side
        self.locks: dict = {}         # lock id -> (lba, n)
        self.lock_queue: deque = deque()

    def authority(self) -> pr.LunShared:
        assert fanout.on_main_thread(), "LUN-wide state is decided on the main thread"
        if self.auth is None:
            self.auth = self.shared.copy()
        return self.auth

    # ---- writes vs the COMPARE AND WRITE holds (this reactor)
    def _held(self, lba, n, lock_id) -> bool:
        for lid, (hl, hn) in self.holds.items():
            if lid != lock_id and hl < lba + n and lba < hl + hn:
                return True
        return False

    def begin_write(self, lba: int, n: int, lock_id: int, go, task=None) -> None:
        """Run ``go(token)`` now, or once no hold of another lock overlaps; the caller
        passes the token to ``end_write`` when the bdev answered."""
        if n and self._held(lba, n, lock_id):
            entry = [lba, n, lock_id, go, task]
            self.parked.append(entry)
            if task is not None:
                task._parked = entry
            return
        tok = next(self._tokens)
        self.inflight[tok] = (lba, n)
        go(tok)

    def end_write(self, token) -> None:
        if self.inflight.pop(token, None) is None:
            return
        if self.hold_waits:
            self._check_hold_waits()

    def unpark(self, entry) -> None:
        """A parked write's task was aborted: forget it."""
        try:
            self.parked.remove(entry)
        except ValueError:
            pass

    def _overlapping_inflight(self, lba, n) -> bool:
        return any(il < lba + n and lba < il + inn for il, inn in self.inflight.values())

    def add_hold(self, lock_id, lba, n, done) -> None:
        self.holds[lock_id] = (lba, n)
        self.hold_waits.append([lock_id, lba, n, done])
        self._check_hold_waits()

    def _check_hold_waits(self) -> None:
        still = []
        for w in self.hold_waits:
            if self._overlapping_inflight(w[1], w[2]):
                still.append(w)
            else:
                w[3](0)
        self.hold_waits = still

    def drop_hold(self, lock_id) -> None:
        self.holds.pop(lock_id, None)
        self.hold_waits = [w for w in self.hold_waits if w[0] != lock_id]
        parked, self.parked = self.parked, deque()
        for lba, n, lid, go, task in parked:
            if task is not None:
                task._parked = None
            self.begin_write(lba, n, lid, go, task)


class ScsiDev:
    """``ScsiDev(name, [(lun_id, bdev_name), ...])``: this reactor's replica."""

    def __init__(self, name: str, luns, dev_id: int = 0, protocol_id: int = 0x5):
        self.name = name
        self.id = dev_id
        self.protocol_id = protocol_id        # SPC-4 7.6.1: 5 = iSCSI
        self.luns: dict = {}
        for lun_id, bdev_name in luns:
            lun_id = int(lun_id)
            if lun_id in self.luns or not 0 <= lun_id < 16384:
                raise ValueError(f"ScsiDev {name}: bad or duplicate LUN id {lun_id}")
            self.luns[lun_id] = Lun(self, lun_id, bdev_name)
        self.nexuses: set = set()
        _devs()[name] = self

    def open_nexus(self, initiator_port: str, target_port: str):
        from .nexus import Nexus
        return Nexus(self, initiator_port, target_port)

    def remove_lun(self, lun_id: int) -> None:
        """Drop a LUN (its bdev went away): every nexus of this replica stops reaching it
        and closes its handle once the buffers it lent are back."""
        lun = self.luns.pop(int(lun_id), None)
        if lun is None:
            return
        for n in list(self.nexuses):
            n.drop_lun(lun.id)

    def destruct(self) -> None:
        """Forget this replica (its open nexuses should be closed first)."""
        for n in list(self.nexuses):
            n.close()
        if _devs().get(self.name) is self:
            del _devs()[self.name]

    def nexuses_of(self, keys) -> list:
        keys = {tuple(k) for k in keys}
        return [n for n in self.nexuses if n.key in keys]


# ===================================================================== main-side ops
def _op_pr_out(auth, nkey, rel_port, sa, scope, rtype, param, param_len):
    return pr.decide_pr_out(auth, tuple(nkey), rel_port, sa, scope, rtype, bytes(param),
                            param_len)


def _op_reserve6(auth, nkey):
    return pr.decide_reserve6(auth, tuple(nkey))


def _op_release6(auth, nkey):
    return pr.decide_release6(auth, tuple(nkey))


def _op_nexus_loss(auth, nkey):
    return pr.decide_nexus_loss(auth, tuple(nkey))


def _op_reset(auth, nkey):
    """LUN reset: an SPC-2 reservation is released whoever holds it."""
    if auth.scsi2 is None:
        return pr.Outcome()
    st = auth.copy()
    st.scsi2 = None
    return pr.Outcome(state=st)


def _op_mode(auth, wce, swp):
    if auth.wce == bool(wce) and auth.swp == bool(swp):
        return pr.Outcome()
    st = auth.copy()
    st.wce, st.swp = bool(wce), bool(swp)
    return pr.Outcome(state=st)


_OPS = {"pr_out": _op_pr_out, "reserve6": _op_reserve6, "release6": _op_release6,
        "nexus_loss": _op_nexus_loss, "reset": _op_reset, "mode": _op_mode}


@rx.remote("targets.scsi.main_op")
def _main_op(done, dev_name, lun_id, op, args):
    """On the main thread: decide ``op`` against the authoritative state; broadcast the
    result; answer ``done(error)`` (error: None or [status, sk, asc, ascq]) once every
    replica has it."""
    lun = _find_lun(dev_name, lun_id)
    if lun is None:
        done([S.CHECK_CONDITION, S.ILLEGAL_REQUEST, *S.LOGICAL_UNIT_NOT_SUPPORTED])
        return
    auth = lun.authority()
    out = _OPS[op](auth, *args)
    if out.error is not None:
        done(list(out.error))
        return
    if out.state is None and not out.uas and not out.abort:
        done(None)
        return
    new = out.state if out.state is not None else auth.copy()
    new.version = auth.version + 1
    uas = [[k[0], k[1], code[0], code[1]] for k, code in out.uas]
    aborts = [list(k) for k in out.abort]
    msg = [dev_name, lun_id, new.to_wire(), uas, aborts]
    try:
        fanout.check(_apply_state, msg)
    except fanout.FanoutError:
        # the state no longer fits one message (very many registrants): refuse the
        # change rather than decide something the replicas cannot learn
        log.error("LUN %s/%d: state too large to replicate; %s refused", dev_name, lun_id, op)
        done([S.CHECK_CONDITION, S.ILLEGAL_REQUEST, *S.INSUFFICIENT_REGISTRATION_RESOURCES])
        return
    lun.auth = new

    def applied(rc):
        if rc:
            log.error("LUN %s/%d: a replica failed to apply state v%d (%d)", dev_name,
                      lun_id, new.version, rc)
        done(None)
    fanout.broadcast(_apply_state, msg, applied)


@rx.remote("targets.scsi.apply_state")
def _apply_state(done, dev_name, lun_id, wire_state, uas, aborts):
    lun = _find_lun(dev_name, lun_id)
    if lun is not None:
        st = pr.LunShared.from_wire(wire_state)
        if st.version > lun.shared.version:
            lun.shared = st
        for i, t, asc, ascq in uas:
            for n in lun.dev.nexuses_of([(i, t)]):
                n.add_unit_attention(lun_id, (asc, ascq))
        for n in lun.dev.nexuses_of(aborts):
            n.run_on_thread(n.abort_task_set, lun_id)
    done(0)


def main_op(nexus, lun_id: int, op: str, args: list, cb) -> None:
    """Ask the main thread to decide ``op``; ``cb(error)`` on this thread."""
    def answered(err=None, *_rest):
        cb(err)
    fanout.to_main(_main_op, [nexus.dev.name, lun_id, op, args], answered,
                   fail=([S.CHECK_CONDITION, S.NOT_READY, *S.LOGICAL_UNIT_COMMUNICATION_FAILURE],))


# ------------------------------------------------------------------- the range lock
@rx.remote("targets.scsi.lock_range")
def _main_lock(done, dev_name, lun_id, lba, n):
    lun = _find_lun(dev_name, lun_id)
    if lun is None:
        done(0)
        return
    lid = next(_lock_ids)
    if any(ll < lba + n and lba < ll + ln for ll, ln in lun.locks.values()) or lun.lock_queue:
        lun.lock_queue.append((lid, lba, n, done))
    else:
        _grant(lun, lid, lba, n, done)


def _grant(lun, lid, lba, n, done) -> None:
    lun.locks[lid] = (lba, n)
    fanout.broadcast(_hold, [lun.dev.name, lun.id, lid, lba, n], lambda rc: done(lid))


@rx.remote("targets.scsi.hold")
def _hold(done, dev_name, lun_id, lid, lba, n):
    lun = _find_lun(dev_name, lun_id)
    if lun is None:
        done(0)
        return
    lun.add_hold(lid, lba, n, done)


@rx.remote("targets.scsi.unlock_range")
def _main_unlock(done, dev_name, lun_id, lid):
    lun = _find_lun(dev_name, lun_id)
    if lun is None or lun.locks.pop(lid, None) is None:
        done()
        return
    fanout.broadcast(_unhold, [dev_name, lun_id, lid], lambda rc: done())
    queue, lun.lock_queue = lun.lock_queue, deque()
    for entry in queue:        # FIFO; a waiter overlapping an earlier one keeps waiting
        qlid, qlba, qn, qdone = entry
        busy = any(ll < qlba + qn and qlba < ll + ln for ll, ln in lun.locks.values()) or \
            any(ql < qlba + qn and qlba < ql + qln for _i, ql, qln, _d in lun.lock_queue)
        if busy:
            lun.lock_queue.append(entry)
        else:
            _grant(lun, qlid, qlba, qn, qdone)


@rx.remote("targets.scsi.unhold")
def _unhold(done, dev_name, lun_id, lid):
    lun = _find_lun(dev_name, lun_id)
    if lun is not None:
        lun.drop_hold(lid)
    done(0)


def lock_range(nexus, lun_id, lba, n, cb) -> None:
    """``cb(lock_id)`` once every reactor holds overlapping writes (0: failed)."""
    fanout.to_main(_main_lock, [nexus.dev.name, lun_id, lba, n], cb, fail=(0,))


def unlock_range(nexus, lun_id, lid, cb=None) -> None:
    fanout.to_main(_main_unlock, [nexus.dev.name, lun_id, lid], cb or (lambda *a: None),
                   fail=())


# ------------------------------------------------------------------- LUN reset fanout
@rx.remote("targets.scsi.lun_reset_all")
def _lun_reset_all(done, dev_name, lun_id, i_port, t_port):
    """Every nexus on this reactor: its tasks on the LUN are aborted (the one that asked
    aborted its own already) and it gets BUS DEVICE RESET FUNCTION OCCURRED -- every I_T
    nexus, the resetting one included (SAM-5 LOGICAL UNIT RESET; iscsi-test-cu
    MultipathIO.Reset)."""
    lun = _find_lun(dev_name, lun_id)
    if lun is not None:
        for n in list(lun.dev.nexuses):
            if n.key != (i_port, t_port):
                n.run_on_thread(n.abort_task_set, lun_id)
            n.add_unit_attention(lun_id, S.BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    done(0)


def reset_fanout(nexus, lun_id, cb) -> None:
    fanout.broadcast(_lun_reset_all, [nexus.dev.name, lun_id, nexus.key[0], nexus.key[1]],
                     lambda rc: cb(rc))
