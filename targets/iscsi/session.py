"""iSCSI sessions (RFC 7143 4.4 / 6.3): ISID+TSIH identity, the CmdSN window every
connection of a session shares, MaxConnections, and reinstatement at ErrorRecoveryLevel 0.

Sessions live in a per-process (per-reactor) table.  A TSIH is unique across reactors:
its high bits are the reactor's index (SPDK keeps one global session array; we have one
table per reactor process, so the index partitions the TSIH space instead).

CmdSN rules (RFC 7143 4.2.2.1, 3.2.2.1 of RFC 3720 as libiscsi's iSCSICmdSnTooHigh/TooLow
test them): a non-immediate command is delivered in CmdSN order; one outside
[ExpCmdSN, MaxCmdSN] is silently dropped; one ahead of ExpCmdSN inside the window waits
for the gap to fill.  MaxCmdSN = ExpCmdSN + queue_depth - 1 - (commands not yet answered),
so the window never closes on a well-behaved initiator and never moves backwards.
"""
from __future__ import annotations

import logging
from typing import Optional

from .pdu import sn_add, sn_gt, sn_lt

log = logging.getLogger("ringstack.iscsi")

SESSION_NORMAL = "Normal"
SESSION_DISCOVERY = "Discovery"

#: TSIH space of one reactor: 1024 sessions (SPDK's max_sessions defaults to 128).
_TSIH_PER_REACTOR = 1024


def _reactor_attr(attr: str) -> int:
    try:
        from reactor import current_reactor
        v = getattr(current_reactor(), attr, 0)
    except Exception:     # no reactor in this thread (unit tests drive connections directly)
        return 0
    return v if isinstance(v, int) else 0


def _reactor_index() -> int:
    return _reactor_attr("index")


def reactor_core() -> int:
    """The core the current reactor runs on (SPDK's lcore_id)."""
    return _reactor_attr("core")


class Session:
    def __init__(self, table: "SessionTable", tsih: int, isid: int, initiator_name: str,
                 target_name: str, session_type: str, node, queue_depth: int,
                 cmdsn: int, params: dict):
        self.table = table
        self.tsih = tsih
        self.isid = isid
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.session_type = session_type
        self.discovery = session_type == SESSION_DISCOVERY
        self.node = node
        self.queue_depth = max(1, queue_depth)
        self.exp_cmdsn = cmdsn
        self.unanswered = 0          # non-immediate commands taken, not yet answered
        self.params = params         # session-wide negotiated values (leading connection)
        self.max_connections = int(params.get("MaxConnections", 1))
        self.conns: list = []
        self.held: dict = {}         # CmdSN -> (conn, pdu bytes): waiting for a gap
        self.nexus = None
        self.closed = False
        self.unfinished: set = set()   # connections not yet done (tasks may be running)

    @property
    def max_cmdsn(self) -> int:
        return sn_add(self.exp_cmdsn, self.queue_depth - 1 - self.unanswered)

    @property
    def isid_hex(self) -> str:
        return f"0x{self.isid:012x}"

    def cmdsn_check(self, cmdsn: int) -> int:
        """0: deliver now (ExpCmdSN advanced), 1: in the window but ahead (hold),
        -1: outside the window (drop silently)."""
        exp = self.exp_cmdsn
        if cmdsn == exp:
            if self.unanswered >= self.queue_depth:
                return -1      # window closed (MaxCmdSN = ExpCmdSN - 1)
            self.exp_cmdsn = sn_add(exp, 1)
            self.unanswered += 1
            return 0
        if sn_lt(cmdsn, exp) or sn_gt(cmdsn, self.max_cmdsn):
            return -1
        return 1

    def hold(self, cmdsn: int, conn, pdu: bytes) -> bool:
        if cmdsn in self.held:
            return False
        self.held[cmdsn] = (conn, pdu)
        return True

    def release_held(self) -> None:
        """Deliver commands that waited for ExpCmdSN to reach them (any connection)."""
        while self.held:
            item = self.held.pop(self.exp_cmdsn, None)
            if item is None:
                return
            conn, pdu = item
            if conn.closing_or_dead():
                # its connection went away; the CmdSN is consumed all the same
                self.exp_cmdsn = sn_add(self.exp_cmdsn, 1)
                continue
            self.exp_cmdsn = sn_add(self.exp_cmdsn, 1)
            self.unanswered += 1
            conn.deliver_held(pdu)

    def answered(self) -> None:
        if self.unanswered > 0:
            self.unanswered -= 1

    def add_conn(self, conn) -> None:
        self.conns.append(conn)
        self.unfinished.add(conn)

    def conn_finished(self, conn) -> None:
        """The connection's socket is closed and its last SCSI task returned."""
        self.unfinished.discard(conn)
        if self.closed and not self.unfinished:
            self._close_nexus()

    def remove_conn(self, conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        for sn, (c, _) in list(self.held.items()):
            if c is conn:
                del self.held[sn]
        if not self.conns:
            self.close()

    def find_conn(self, cid: int):
        for c in self.conns:
            if c.cid == cid:
                return c
        return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.table.remove(self)
        if not self.unfinished:
            self._close_nexus()
        # else: tasks still run in the SCSI layer; the nexus goes when the last returns

    def _close_nexus(self) -> None:
        if self.nexus is not None:
            try:
                self.nexus.close()
            except Exception:     # the SCSI layer's failure must not stop the teardown
                log.exception("iscsi session tsih=%d: nexus close failed", self.tsih)
            self.nexus = None


class SessionTable:
    def __init__(self, index: Optional[int] = None):
        self._index = index
        self.by_tsih: dict[int, Session] = {}

    def _tsih_range(self) -> range:
        idx = _reactor_index() if self._index is None else self._index
        base = (idx % 64) * _TSIH_PER_REACTOR
        return range(max(1, base), base + _TSIH_PER_REACTOR)

    def alloc_tsih(self) -> int:
        for t in self._tsih_range():
            if t not in self.by_tsih:
                return t
        return 0

    def find(self, tsih: int) -> Optional[Session]:
        return self.by_tsih.get(tsih)

    def find_isid(self, initiator_name: str, isid: int, target_name: str):
        for s in self.by_tsih.values():
            if (s.isid == isid and s.initiator_name == initiator_name
                    and s.target_name == target_name and not s.closed):
                return s
        return None

    def count(self) -> int:
        return len(self.by_tsih)

    def create(self, **kw) -> Optional[Session]:
        tsih = self.alloc_tsih()
        if not tsih:
            return None
        s = Session(self, tsih, **kw)
        self.by_tsih[tsih] = s
        return s

    def remove(self, s: Session) -> None:
        if self.by_tsih.get(s.tsih) is s:
            del self.by_tsih[s.tsih]


#: This process's (reactor's) sessions.
SESSIONS = SessionTable()
