"""iSCSI sessions (RFC 7143 4.4 / 6.3): ISID+TSIH identity, the CmdSN window every
connection of a session shares, MaxConnections, and reinstatement at ErrorRecoveryLevel 0.

A session lives on one reactor (its connections' CmdSN window is state of that reactor),
in that reactor's `SessionTable`.  What must be single across reactors is decided by the
main reactor's `SessionDirectory` (SPDK keeps one global session array): the TSIH (its
high bits name the reactor the session lives on, so `reactor_of_tsih` routes a joining
connection without asking), the (InitiatorName, ISID, TargetName) lookup of ERL 0 session
reinstatement (the old session is closed on its own reactor by a message) and the
max_sessions count.  A leading login asks the directory with `open_session` (to_main)
and waits for the answer; a closed session tells the directory (`closed`).

CmdSN rules (RFC 7143 4.2.2.1, 3.2.2.1 of RFC 3720 as libiscsi's iSCSICmdSnTooHigh/TooLow
test them): a non-immediate command is delivered in CmdSN order; one outside
[ExpCmdSN, MaxCmdSN] is silently dropped; one ahead of ExpCmdSN inside the window waits
for the gap to fill.  MaxCmdSN = ExpCmdSN + queue_depth - 1 - (commands not yet answered),
so the window never closes on a well-behaved initiator and never moves backwards.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import reactor as rx

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


def reactor_placement() -> tuple:
    """(this reactor's index, the number of reactors); (0, 1) without a reactor."""
    return _reactor_index(), max(1, _reactor_attr("n_reactors"))


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

    def remove_conn(self, conn, keep_open: bool = False) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        for sn, (c, _) in list(self.held.items()):
            if c is conn:
                del self.held[sn]
        if not self.conns and not keep_open:
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


def reactor_of_tsih(tsih: int) -> int:
    """The reactor index whose table owns `tsih`.  A connection joining a session
    (Login with TSIH != 0) must be served on that reactor: a listener can read the first
    Login PDU's TSIH (BHS bytes 14-15) and pass the fd there (SPDK moves such connections
    to the session's lcore the same way)."""
    return tsih // _TSIH_PER_REACTOR


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

    def create(self, tsih: int = 0, **kw) -> Optional[Session]:
        """A session under `tsih` (the directory's answer; 0: pick a free one here)."""
        tsih = tsih or self.alloc_tsih()
        if not tsih or tsih in self.by_tsih:
            return None
        s = Session(self, tsih, **kw)
        self.by_tsih[tsih] = s
        return s

    def remove(self, s: Session) -> None:
        if self.by_tsih.get(s.tsih) is s:
            del self.by_tsih[s.tsih]
            session_closed(s.tsih)


#: This process's (reactor's) sessions.
SESSIONS = SessionTable()


# ---------------------------------------------------------------------- the directory
class SessionDirectory:
    """Every session of the target, as the main reactor knows them: TSIH -> [reactor,
    initiator name, ISID, target name, session type, closing].  A reinstated session is
    `closing` until its reactor reports it closed: its TSIH is not given out again
    before, and it no longer counts against max_sessions."""

    def __init__(self):
        self.entries: dict[int, list] = {}
        self.watching = False       # main reactor: forget_reactor is a death watcher

    def live(self) -> int:
        return sum(1 for e in self.entries.values() if not e[5])

    def open(self, reactor_index: int, initiator: str, isid: int, target: str,
             session_type: str, max_sessions: int, reinstate: bool):
        """-> (tsih or 0, reason, [(reactor, tsih) of sessions to close])."""
        close = []
        if reinstate and session_type == SESSION_NORMAL:
            for tsih, e in self.entries.items():
                if (not e[5] and e[1] == initiator and e[2] == isid and e[3] == target
                        and e[4] == SESSION_NORMAL):
                    e[5] = True
                    close.append((e[0], tsih))
        if self.live() >= max_sessions:
            for _r, tsih in close:          # refused: the old session stays
                self.entries[tsih][5] = False
            return 0, "max_sessions reached", []
        base = (reactor_index % 64) * _TSIH_PER_REACTOR
        for tsih in range(max(1, base), base + _TSIH_PER_REACTOR):
            if tsih not in self.entries:
                self.entries[tsih] = [reactor_index, initiator, isid, target, session_type,
                                      False]
                return tsih, "", close
        for _r, tsih in close:
            self.entries[tsih][5] = False
        return 0, "no free TSIH", []

    def closed(self, tsih: int) -> None:
        self.entries.pop(tsih, None)

    def forget_reactor(self, index: int) -> None:
        for tsih in [t for t, e in self.entries.items() if e[0] == index]:
            del self.entries[tsih]


#: The main reactor's directory (only the main reactor's copy is ever consulted; a
#: process without reactors, as the unit tests drive connections, uses its own).
DIRECTORY = SessionDirectory()


def _on_thread() -> bool:
    try:
        return rx.get_thread() is not None
    except Exception:       # no reactor thread here (connections driven directly)
        return False


def close_local(tsih: int, reason: str = "session reinstated") -> None:
    """Close this reactor's session `tsih` and all its connections (ERL 0)."""
    s = SESSIONS.find(tsih)
    if s is None:
        return
    log.info("iscsi: closing session tsih=%d (ISID %s): %s", tsih, s.isid_hex, reason)
    for c in list(s.conns):
        c.abort(reason)
    s.close()


@rx.remote("iscsi.session.reinstate")
def _reinstate_here(tsih: int) -> None:
    close_local(tsih)


@rx.remote("iscsi.session.open")
def _directory_open(done, reactor_index, initiator, isid, target, session_type,
                    max_sessions, reinstate):
    r = rx.current_reactor()
    if not DIRECTORY.watching:
        # a reactor that dies takes its sessions with it: their TSIHs and places go back
        DIRECTORY.watching = True
        rx.watch_reactor_death(DIRECTORY.forget_reactor)
    tsih, why, close = DIRECTORY.open(reactor_index, initiator, isid, target, session_type,
                                      max_sessions, reinstate)
    for index, old in close:
        if index == r.index:
            close_local(old)
        elif r.send(r.default_tid(index), _reinstate_here, (old,)) != 0:
            DIRECTORY.closed(old)       # its reactor is gone, and its sessions with it
    # the answer goes after the close: FIFO per sender, so a session reinstated on the
    # asking reactor is gone there before the new one exists
    done(tsih, why)


@rx.remote("iscsi.session.closed")
def _directory_closed(tsih: int) -> None:
    DIRECTORY.closed(tsih)


def open_session(reactor_index: int, initiator: str, isid: int, target: str,
                 session_type: str, max_sessions: int, reinstate: bool,
                 cb: Callable[[int, str], None]) -> None:
    """Ask the directory for a TSIH (reinstating the session with the same initiator,
    ISID and target when `reinstate`); ``cb(tsih, reason)`` (tsih 0: refused) runs on
    this thread, later -- or at once when there is no reactor (unit tests)."""
    args = (reactor_index, initiator, isid, target, session_type, max_sessions, reinstate)
    if not _on_thread():
        tsih, why, close = DIRECTORY.open(*args)
        for _index, old in close:
            close_local(old)
        cb(tsih, why)
        return
    rx.to_main(_directory_open, args, cb, fail=(0, "the main reactor did not answer"))


def session_closed(tsih: int) -> None:
    """Tell the directory that `tsih` closed here (its TSIH may be given out again)."""
    if not _on_thread():
        DIRECTORY.closed(tsih)
        return
    r = rx.current_reactor()
    if r.index == 0:
        DIRECTORY.closed(tsih)
    else:       # -EIO when the main reactor is gone: then so is the directory
        r.send(r.default_tid(0), _directory_closed, (tsih,))
