"""Persistent reservations (SPC-4 5.12, SPDK lib/scsi/scsi_pr.c) and SPC-2 RESERVE/RELEASE.

State lives in a :class:`LunShared` (also the LUN's mode-page state): the main reactor
holds the authoritative copy and decides every PERSISTENT RESERVE OUT, RESERVE(6) and
RELEASE(6) there (``decide_*``, which work on a copy and return it only on success, so a
refused command changes nothing); every reactor's replica receives the new state by
broadcast and checks conflicts locally (``check_conflict``).

What differs from SPDK, on purpose: PRgeneration grows once per successful REGISTER /
CLEAR / PREEMPT (SPC-4 6.16.2; SPDK counts every removed registrant); REGISTER AND MOVE
is refused as an invalid field like SPDK, PREEMPT AND ABORT is supported (the preempted
nexuses' tasks on the LUN are aborted on every reactor); APTPL=1, SPEC_I_PT=1 and
ALL_TG_PT=1 are refused with INVALID FIELD IN PARAMETER LIST (REPORT CAPABILITIES says
PTPL_C=0, SIP_C=0, ATP_C=0): nothing survives a restart."""
from __future__ import annotations

import copy

from . import sense as S

# -- reservation types
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
TYPES = (WE, EA, WE_RO, EA_RO, WE_AR, EA_AR)
ALL_REGS = (WE_AR, EA_AR)
REGS_ONLY = (WE_RO, EA_RO)

# -- PR OUT service actions
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_IGNORE, \
    REGISTER_AND_MOVE = range(8)
# -- PR IN service actions
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = range(4)


class LunShared:
    """LUN-wide state that must be single: registrations, the persistent reservation,
    the SPC-2 reservation holder and the changeable mode bits.  A nexus is identified by
    ``(initiator_port, target_port)`` names, so the same I_T nexus seen on two reactors
    (or reconnecting) is one registrant."""

    __slots__ = ("version", "gen", "regs", "rtype", "holder", "crkey", "scsi2", "wce", "swp")

    def __init__(self, wce: bool = False):
        self.version = 0
        self.gen = 0
        self.regs: list = []          # [initiator_port, target_port, key, rel_tgt_port_id]
        self.rtype = 0                # 0: no persistent reservation
        self.holder = None            # (i, t) of the holder; None for all-registrants types
        self.crkey = 0
        self.scsi2 = None             # (i, t) holding a RESERVE(6)
        self.wce = wce
        self.swp = False

    # -- wire form (msgpack: lists and scalars)
    def to_wire(self) -> list:
        return [self.version, self.gen, [list(r) for r in self.regs], self.rtype,
                list(self.holder) if self.holder else None, self.crkey,
                list(self.scsi2) if self.scsi2 else None, self.wce, self.swp]

    @classmethod
    def from_wire(cls, w) -> "LunShared":
        s = cls()
        (s.version, s.gen, regs, s.rtype, holder, s.crkey, scsi2, s.wce, s.swp) = w
        s.regs = [list(r) for r in regs]
        s.holder = tuple(holder) if holder else None
        s.scsi2 = tuple(scsi2) if scsi2 else None
        return s

    def copy(self) -> "LunShared":
        return copy.deepcopy(self)

    # -- queries
    def reg_of(self, nkey):
        for r in self.regs:
            if (r[0], r[1]) == nkey:
                return r
        return None

    def is_holder(self, nkey) -> bool:
        if not self.rtype:
            return False
        if self.rtype in ALL_REGS:
            return self.reg_of(nkey) is not None
        return self.holder == nkey


# ----------------------------------------------------------------------- conflicts
# Command classes for the conflict table (SPC-4 5.12.1 table 62).
ALLOWED, READ_CLASS, WRITE_CLASS, PR_OUT_CLASS, SCSI2_CLASS = range(5)


#: commands an SPC-2 reservation held by another nexus lets through (SPC-2 5.5.1 table
#: 10): INQUIRY, REQUEST SENSE, REPORT LUNS, RELEASE(6)/(10); RESERVE decides by itself
SCSI2_ALLOWED = frozenset((0x12, 0x03, 0xA0, 0x17, 0x57, 0x16, 0x56))


def check_conflict(st: LunShared, nkey, cls: int, opcode: int, pr_out_sa: int = -1) -> bool:
    """True when a command of class ``cls`` from nexus ``nkey`` conflicts with the
    reservations in ``st`` (the caller answers RESERVATION CONFLICT)."""
    if st.scsi2 is not None and st.scsi2 != nkey and opcode not in SCSI2_ALLOWED:
        return True
    if not st.rtype or cls in (ALLOWED, SCSI2_CLASS):
        return False
    if st.is_holder(nkey):
        return False
    registered = st.reg_of(nkey) is not None
    if cls == PR_OUT_CLASS:
        if pr_out_sa in (REGISTER, REGISTER_IGNORE):
            return False
        return not registered
    t = st.rtype
    if cls == READ_CLASS:
        if t in (WE, WE_RO, WE_AR):
            return False
        if t == EA:
            return True
        return not registered
    # write class
    if t in (WE, EA):
        return True
    return not registered


# ------------------------------------------------------------------ PR OUT on main
class Outcome:
    """What the main reactor decided: the error to answer (None: GOOD), the new state
    (None: unchanged), unit attentions to raise [(nexus key, (asc, ascq))] and nexuses
    whose tasks must be aborted (PREEMPT AND ABORT)."""

    __slots__ = ("error", "state", "uas", "abort")

    def __init__(self, error=None, state=None, uas=(), abort=()):
        self.error = error
        self.state = state
        self.uas = list(uas)
        self.abort = list(abort)


def _err(e: S.ScsiError) -> Outcome:
    return Outcome(error=(e.status, e.sk, e.asc, e.ascq))


def _conflict() -> Outcome:
    return _err(S.conflict())


def _remove(st: LunShared, pred) -> list:
    """Remove the registrations matching ``pred``; the reservation goes with its holder
    (an all-registrants reservation with the last registrant).  Returns the removed keys."""
    gone = [(r[0], r[1]) for r in st.regs if pred(r)]
    st.regs = [r for r in st.regs if not pred(r)]
    if st.rtype:
        if st.rtype in ALL_REGS:
            if not st.regs:
                st.rtype, st.holder, st.crkey = 0, None, 0
        elif st.holder in gone:
            st.rtype, st.holder, st.crkey = 0, None, 0
    return gone


def decide_pr_out(cur: LunShared, nkey, rel_port: int, sa: int, scope: int, rtype: int,
                  param: bytes, param_len: int) -> Outcome:
    if sa not in (REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT,
                  REGISTER_IGNORE):
        return _err(S.illegal())
    if param_len != 24 or len(param) < 24:
        return _err(S.illegal(S.PARAMETER_LIST_LENGTH_ERROR))
    rkey = int.from_bytes(param[0:8], "big")
    sa_rkey = int.from_bytes(param[8:16], "big")
    flags = param[20]
    spec_i_pt, all_tg_pt, aptpl = flags & 0x08, flags & 0x04, flags & 0x01
    if spec_i_pt or all_tg_pt or aptpl:
        return _err(S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST))
    if sa in (RESERVE, RELEASE, PREEMPT, PREEMPT_AND_ABORT):
        if scope != 0 or rtype not in TYPES:
            return _err(S.illegal())
    st = cur.copy()
    reg = st.reg_of(nkey)

    if sa in (REGISTER, REGISTER_IGNORE):
        if reg is None:
            if sa == REGISTER and rkey:
                return _conflict()
            if not sa_rkey:
                return Outcome()
            st.regs.append([nkey[0], nkey[1], sa_rkey, rel_port])
        else:
            if sa == REGISTER and rkey != reg[2]:
                return _conflict()
            uas = []
            if not sa_rkey:
                released = st.rtype in REGS_ONLY and st.holder == nkey
                _remove(st, lambda r: (r[0], r[1]) == nkey)
                if released:
                    uas = [((r[0], r[1]), S.RESERVATIONS_RELEASED) for r in st.regs]
            else:
                reg[2] = sa_rkey
                if st.holder == nkey:
                    st.crkey = sa_rkey
            st.gen += 1
            return Outcome(state=st, uas=uas)
        st.gen += 1
        return Outcome(state=st)

    if reg is None or rkey != reg[2]:
        return _conflict()

    if sa == RESERVE:
        if st.rtype:
            if st.rtype == rtype and st.is_holder(nkey):
                return Outcome()
            return _conflict()
        st.rtype = rtype
        st.holder = None if rtype in ALL_REGS else nkey
        st.crkey = 0 if rtype in ALL_REGS else rkey
        return Outcome(state=st)

    if sa == RELEASE:
        if not st.rtype or not st.is_holder(nkey):
            return Outcome()
        if st.rtype != rtype:
            return _err(S.illegal(S.INVALID_RELEASE_OF_PERSISTENT_RESERVATION))
        old = st.rtype
        st.rtype, st.holder, st.crkey = 0, None, 0
        uas = []
        if old not in (WE, EA):
            uas = [((r[0], r[1]), S.RESERVATIONS_RELEASED) for r in st.regs
                   if (r[0], r[1]) != nkey]
        return Outcome(state=st, uas=uas)

    if sa == CLEAR:
        others = [(r[0], r[1]) for r in st.regs if (r[0], r[1]) != nkey]
        st.regs = []
        st.rtype, st.holder, st.crkey = 0, None, 0
        st.gen += 1
        return Outcome(state=st, uas=[(k, S.RESERVATIONS_PREEMPTED) for k in others])

    # PREEMPT / PREEMPT AND ABORT
    if not st.rtype or st.rtype in ALL_REGS and sa_rkey:
        if not sa_rkey and not st.rtype:
            return _conflict()
        gone = _remove(st, lambda r: r[2] == sa_rkey)
        if not gone:
            return _conflict()
    elif st.rtype in ALL_REGS:           # sa_rkey == 0: take the LUN over
        gone = _remove(st, lambda r: (r[0], r[1]) != nkey)
        st.rtype, st.crkey = rtype, (0 if rtype in ALL_REGS else rkey)
        st.holder = None if rtype in ALL_REGS else nkey
    elif sa_rkey == st.crkey:            # preempt the holder
        gone = _remove(st, lambda r: r[2] == sa_rkey and (r[0], r[1]) != nkey)
        st.rtype, st.crkey = rtype, (0 if rtype in ALL_REGS else rkey)
        st.holder = None if rtype in ALL_REGS else nkey
    else:
        if not sa_rkey:
            return _err(S.illegal(S.INVALID_FIELD_IN_PARAMETER_LIST))
        gone = _remove(st, lambda r: r[2] == sa_rkey)
        if not gone:
            return _conflict()
    st.gen += 1
    gone = [k for k in gone if k != nkey]
    return Outcome(state=st, uas=[(k, S.REGISTRATIONS_PREEMPTED) for k in gone],
                   abort=gone if sa == PREEMPT_AND_ABORT else ())


# -------------------------------------------------------------- SPC-2 RESERVE/RELEASE
def _scsi2_check(st: LunShared, nkey):
    """SPC-4 5.12.3 (SPDK scsi2_check_reservation_conflict): 'ignore' (GOOD, nothing
    changes), 'conflict', or None (process as SPC-2)."""
    reg = st.reg_of(nkey)
    if reg is not None:
        if st.is_holder(nkey) or st.rtype in REGS_ONLY:
            return "ignore"
        return "conflict"
    return "conflict" if st.regs else None


def decide_reserve6(cur: LunShared, nkey) -> Outcome:
    verdict = _scsi2_check(cur, nkey)
    if verdict == "ignore":
        return Outcome()
    if verdict == "conflict" or (cur.scsi2 is not None and cur.scsi2 != nkey):
        return _conflict()
    st = cur.copy()
    st.scsi2 = nkey
    return Outcome(state=st)


def decide_release6(cur: LunShared, nkey) -> Outcome:
    verdict = _scsi2_check(cur, nkey)
    if verdict == "ignore":
        return Outcome()
    if verdict == "conflict":
        return _conflict()
    if cur.scsi2 != nkey:          # not the holder (or none): GOOD, nothing released
        return Outcome()
    st = cur.copy()
    st.scsi2 = None
    return Outcome(state=st)


def decide_nexus_loss(cur: LunShared, nkey):
    """I_T nexus loss (and LUN/target reset) releases an SPC-2 reservation; persistent
    registrations survive."""
    if cur.scsi2 != nkey:
        return Outcome()
    st = cur.copy()
    st.scsi2 = None
    return Outcome(state=st)


# ----------------------------------------------------------------------- PR IN data
def transport_id(initiator_port: str) -> bytes:
    """iSCSI TransportID (SPC-4 7.6.4.6): format 01b (name + ',i,0x' + ISID) when the port
    name carries an ISID, else 00b; NUL-terminated, padded to a multiple of 4."""
    fmt = 1 if ",i,0x" in initiator_port else 0
    name = initiator_port.encode() + b"\0"
    name += b"\0" * (-len(name) % 4)
    return bytes([(fmt << 6) | 0x05, 0]) + len(name).to_bytes(2, "big") + name


def pr_in_data(st: LunShared, sa: int) -> bytes:
    gen = st.gen.to_bytes(4, "big")
    if sa == READ_KEYS:
        keys = b"".join(r[2].to_bytes(8, "big") for r in st.regs)
        return gen + len(keys).to_bytes(4, "big") + keys
    if sa == READ_RESERVATION:
        if not st.rtype:
            return gen + bytes(4)
        d = st.crkey.to_bytes(8, "big") + bytes(4) + bytes([0, st.rtype & 0x0F]) + bytes(2)
        return gen + len(d).to_bytes(4, "big") + d
    if sa == REPORT_CAPABILITIES:
        # CRH=1; TMV=1; WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX | EX_AC_AR
        return bytes([0, 8, 0x10, 0x80, 0xEA, 0x01, 0, 0])
    if sa == READ_FULL_STATUS:
        out = bytearray()
        for i, t, key, rtpi in st.regs:
            tid = transport_id(i)
            holder = st.is_holder((i, t))
            d = bytearray(24)
            d[0:8] = key.to_bytes(8, "big")
            d[12] = 0x01 if holder else 0
            d[13] = (st.rtype & 0x0F) if holder else 0
            d[18:20] = (rtpi & 0xFFFF).to_bytes(2, "big")
            d[20:24] = len(tid).to_bytes(4, "big")
            out += d + tid
        return gen + len(out).to_bytes(4, "big") + bytes(out)
    raise S.illegal()
