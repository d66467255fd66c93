"""The login phase (RFC 7143 6, 11.12/11.13): stages, T/C bits, security (None/CHAP) and
operational negotiation, session creation/reinstatement/joining.  A mixin of
IscsiConnection: it uses the connection's queueing (`_queue_pdu`) and state.

Failure answers a Login Response with the status class/detail (SPDK's choices: target not
found 0x0203, authorization 0x0202, authentication 0x0201, missing parameter 0x0207,
initiator error 0x0200, ...) and closes the connection once it is sent.
"""
from __future__ import annotations

import logging

from . import pdu as P
from .chap import AuthError, ChapProtocolError, ChapServer
from .negotiate import DECLARATIVE_LOGIN_KEYS, Negotiation, NegotiationError, target_values
from .session import (SESSION_DISCOVERY, SESSION_NORMAL, SESSIONS, open_session,
                      session_closed)

log = logging.getLogger("ringstack.iscsi")

#: Receive limit during login (RFC 7143: 8192 until MaxRecvDataSegmentLength applies).
LOGIN_MAX_DSL = 8192
#: A login text split over C-bit PDUs may not grow past this.
LOGIN_MAX_TEXT = 64 * 1024


class LoginFailed(Exception):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


class LoginMixin:
    def _login_init(self) -> None:
        self._lg_first = True
        self._lg_text = bytearray()          # C-bit continuation
        self._lg_stage = P.STAGE_SECURITY
        self._lg_auth_done = False
        self._lg_auth_method = None          # "None" | "CHAP" once chosen
        self._lg_chap = None
        self._lg_neg = None
        self._lg_isid = 0
        self._lg_tsih = 0
        self._lg_itt = 0
        self._lg_cmdsn = 0
        self._lg_sent_tpgt = False
        self._lg_wait = False                # asking the main reactor for a TSIH
        self.initiator_name = ""
        self.initiator_alias = ""
        self.target_name = ""
        self.session_type = SESSION_NORMAL
        self.node = None

    # ------------------------------------------------------------------ helpers
    def _login_rsp(self, flags: int, status: int, pairs=(), tsih: int = 0) -> None:
        data = P.encode_text(pairs)
        stat_sn = self.stat_sn
        self.stat_sn = P.sn_add(stat_sn, 1)
        sess = self.session
        exp = sess.exp_cmdsn if sess is not None else self._lg_cmdsn
        maxc = sess.max_cmdsn if sess is not None else self._lg_cmdsn   # window of one
        isid_tsih = (self._lg_isid << 16) | (tsih & 0xFFFF)
        hdr = P.bhs_pack(P.OP_LOGIN_RSP, flags, 0, len(data), isid_tsih, self._lg_itt,
                         0, stat_sn, exp, maxc, status << 16, 0, 0)
        self._queue_pdu(hdr, data)

    def _login_fail(self, status: int, why: str) -> None:
        log.warning("iscsi %s: login failed (0x%04x): %s", self.name, status, why)
        self.stats["login_failures"] = self.stats.get("login_failures", 0) + 1
        self._login_rsp(0, status)
        self._close_after_flush(f"login failed: {why}")

    def _chap_settings(self):
        """(disable, require, mutual, group) for this login: the node's, or discovery's."""
        reg = self.reg
        if self.session_type == SESSION_DISCOVERY or self.node is None:
            d = reg.discovery_auth
            return bool(d[0]), bool(d[1]), bool(d[2]), int(d[3])
        n = self.node
        return (bool(n.disable_chap), bool(n.require_chap), bool(n.mutual_chap),
                int(n.chap_group))

    # ------------------------------------------------------------------ entry
    def _on_login_pdu(self, f, data) -> None:
        flags = f[1]
        transit = bool(flags & P.LOGIN_TRANSIT)
        cont = bool(flags & P.LOGIN_CONTINUE)
        csg = (flags >> 2) & 3
        nsg = flags & 3
        try:
            if self._lg_first:
                vmax, vmin = f[2] >> 8, f[2] & 0xFF
                if vmin > 0:
                    raise LoginFailed(P.LOGIN_UNSUPPORTED_VERSION,
                                      f"version-min {vmin} (only 0 is known)")
                self._lg_isid = f[4] >> 16
                self._lg_tsih = f[4] & 0xFFFF
                self._lg_itt = f[5]
                self.cid = f[6] >> 16
                self._lg_cmdsn = f[7]
                self.stat_sn = f[8]           # ExpStatSN: where our StatSN starts
            elif f[5] != self._lg_itt or (f[4] >> 16) != self._lg_isid:
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, "ITT/ISID changed during login")
            if transit and cont:
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, "T and C bits both set")
            if csg == 2 or csg == 3 or (transit and (nsg == 2 or nsg <= csg)):
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR,
                                  f"bad stage transition CSG={csg} NSG={nsg} T={int(transit)}")
            if csg != self._lg_stage:
                if not (self._lg_stage == P.STAGE_SECURITY and csg == P.STAGE_OPERATIONAL
                        and self._lg_first):
                    raise LoginFailed(P.LOGIN_INITIATOR_ERROR,
                                      f"CSG {csg} but the login is in stage {self._lg_stage}")
            self._lg_text += data
            if len(self._lg_text) > LOGIN_MAX_TEXT:
                raise LoginFailed(P.LOGIN_OUT_OF_RESOURCES, "login text too long")
            if cont:
                # RFC 7143 6.2: acknowledge with an empty response, keep collecting
                self._login_rsp((csg << 2), P.LOGIN_SUCCESS, tsih=self._lg_tsih)
                return
            try:
                pairs = P.decode_text(self._lg_text)
            except ValueError as e:
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, str(e)) from None
            self._lg_text = bytearray()
            keys = {}
            for k, v in pairs:
                if k in keys:
                    raise LoginFailed(P.LOGIN_INITIATOR_ERROR, f"key {k} sent twice")
                keys[k] = v
            answer = []
            if self._lg_first:
                self._login_first(keys, answer)
                self._lg_first = False
            if csg == P.STAGE_SECURITY:
                done = self._login_security(keys, answer)
            else:
                if not self._lg_auth_done:
                    self._login_skip_security()
                self._lg_stage = P.STAGE_OPERATIONAL
                done = True
                self._login_operational(keys, answer)
            if transit and done:
                if nsg == P.STAGE_FULL_FEATURE:
                    self._login_to_ffp(csg, answer)
                    return
                self._lg_stage = nsg
                self._login_rsp(P.LOGIN_TRANSIT | (csg << 2) | nsg, P.LOGIN_SUCCESS, answer,
                                tsih=self._lg_tsih)
                return
            self._login_rsp((csg << 2) | (nsg if transit else 0), P.LOGIN_SUCCESS, answer,
                            tsih=self._lg_tsih)
        except LoginFailed as e:
            self._login_fail(e.status, str(e))

    # ------------------------------------------------------------------ stages
    def _login_first(self, keys: dict, answer: list) -> None:
        reg = self.reg
        self.initiator_name = keys.get("InitiatorName", "")
        if not self.initiator_name:
            raise LoginFailed(P.LOGIN_MISSING_PARAMETER, "no InitiatorName")
        self.initiator_alias = keys.get("InitiatorAlias", "")
        st = keys.get("SessionType", SESSION_NORMAL)
        if st not in (SESSION_NORMAL, SESSION_DISCOVERY):
            raise LoginFailed(P.LOGIN_SESSION_TYPE_UNSUPPORTED, f"SessionType={st}")
        self.session_type = st
        if st == SESSION_NORMAL:
            tn = keys.get("TargetName", "")
            if not tn:
                raise LoginFailed(P.LOGIN_MISSING_PARAMETER, "no TargetName")
            node = reg.find_target(tn)
            if node is None:
                raise LoginFailed(P.LOGIN_TARGET_NOT_FOUND, f"no target {tn}")
            if not reg.access_allowed(node, self.initiator_name, self.peer_host, self.pg_tag):
                raise LoginFailed(P.LOGIN_AUTHORIZATION_FAILURE,
                                  f"{self.initiator_name} from {self.peer_host} "
                                  f"may not access {tn} through portal group {self.pg_tag}")
            self.node = node
            self.target_name = node.name
        if self._lg_tsih:
            sess = SESSIONS.find(self._lg_tsih)
            if (sess is None or sess.isid != self._lg_isid
                    or sess.initiator_name != self.initiator_name
                    or sess.session_type != st
                    or (st == SESSION_NORMAL and sess.target_name != self.target_name)):
                raise LoginFailed(P.LOGIN_SESSION_DOES_NOT_EXIST,
                                  f"no session tsih={self._lg_tsih} for this ISID/initiator")
            old = sess.find_conn(self.cid)
            if old is None and len(sess.conns) >= sess.max_connections:
                raise LoginFailed(P.LOGIN_TOO_MANY_CONNECTIONS,
                                  f"session tsih={sess.tsih} has MaxConnections="
                                  f"{sess.max_connections}")
        self._lg_neg = Negotiation(target_values(reg.options, self.node, self.max_recv_dsl))
        if st == SESSION_NORMAL:
            answer.append(("TargetPortalGroupTag", str(self.pg_tag)))
            alias = getattr(self.node, "alias", "") or ""
            if alias:
                answer.append(("TargetAlias", alias))

    def _login_skip_security(self) -> None:
        """The initiator went straight to the operational stage: only possible when this
        target accepts AuthMethod=None."""
        disable, require, _mutual, _g = self._chap_settings()
        if require and not disable:
            raise LoginFailed(P.LOGIN_AUTH_FAILED, "CHAP required but security stage skipped")
        self._lg_auth_done = True

    def _login_security(self, keys: dict, answer: list) -> bool:
        # operational keys sent early are negotiated here too (SPDK negotiates every key
        # in whichever stage it comes)
        self._negotiate_keys({k: v for k, v in keys.items()
                              if k != "AuthMethod" and not k.startswith("CHAP_")}, answer)
        if self._lg_auth_done:
            return True
        disable, require, mutual, group = self._chap_settings()
        if self._lg_auth_method is None:
            am = keys.get("AuthMethod")
            if am is None:
                if require and not disable:
                    raise LoginFailed(P.LOGIN_AUTH_FAILED, "CHAP required, no AuthMethod")
                self._lg_auth_method = "None"
                self._lg_auth_done = True
                return True
            ours = ["None"] if disable else ["CHAP"] if require else ["CHAP", "None"]
            chosen = next((m for m in am.split(",") if m in ours), None)
            if chosen is None:
                answer.append(("AuthMethod", "Reject"))
                raise LoginFailed(P.LOGIN_AUTH_FAILED, f"AuthMethod {am} not acceptable")
            answer.append(("AuthMethod", chosen))
            self._lg_auth_method = chosen
            if chosen == "None":
                self._lg_auth_done = True
                return True
            reg = self.reg
            self._lg_chap = ChapServer(lambda user: reg.find_chap_secret(group, user), mutual)
            if "CHAP_A" not in keys:
                return False
        try:
            ckeys = {k: v for k, v in keys.items() if k.startswith("CHAP_")}
            if not ckeys:
                return False
            answer.extend(self._lg_chap.step(ckeys))
        except AuthError as e:
            raise LoginFailed(P.LOGIN_AUTH_FAILED, str(e)) from None
        except ChapProtocolError as e:
            raise LoginFailed(P.LOGIN_INITIATOR_ERROR, str(e)) from None
        if self._lg_chap.state == "done":
            self._lg_auth_done = True
            return True
        return False

    def _login_operational(self, keys: dict, answer: list) -> None:
        for k in keys:
            if k == "AuthMethod" or k.startswith("CHAP_"):
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, f"key {k} outside the security stage")
        self._negotiate_keys(keys, answer)
        neg = self._lg_neg
        if not neg.declared_mrdsl:
            neg.declared_mrdsl = True
            answer.append(("MaxRecvDataSegmentLength", str(self.max_recv_dsl)))

    def _negotiate_keys(self, keys: dict, answer: list) -> None:
        neg = self._lg_neg
        discovery = self.session_type == SESSION_DISCOVERY
        leading = self._lg_tsih == 0
        for k, v in keys.items():
            if k in ("InitiatorName", "InitiatorAlias", "TargetName", "SessionType"):
                continue
            if k in DECLARATIVE_LOGIN_KEYS:
                answer.append((k, "Irrelevant"))
                continue
            if len(k) > 63 or len(v) > 8192:
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, f"key {k[:64]} too long")
            try:
                a = neg.offer(k, v, discovery=discovery, leading=leading)
            except NegotiationError as e:
                raise LoginFailed(P.LOGIN_INITIATOR_ERROR, str(e)) from None
            if a is not None:
                answer.append((k, a))

    def _login_to_ffp(self, csg: int, answer: list) -> None:
        neg = self._lg_neg
        neg.finish()
        reg = self.reg
        opts = reg.options
        if self._lg_tsih == 0:
            # The main reactor's directory allocates the TSIH, reinstates (closes, on its
            # own reactor) a session with this initiator, ISID and target, and counts
            # max_sessions over every reactor.  Input waits meanwhile.
            self._lg_wait = True
            self._stalled = True
            open_session(self.reactor_index, self.initiator_name, self._lg_isid,
                         self.target_name, self.session_type,
                         int(opts.get("max_sessions", 128)),
                         not opts.get("allow_duplicated_isid", False),
                         lambda tsih, why: self._login_got_tsih(csg, answer, tsih, why))
            return
        sess = SESSIONS.find(self._lg_tsih)
        if sess is None or sess.closed:
            self._login_fail(P.LOGIN_SESSION_DOES_NOT_EXIST, "session went away")
            return
        old = sess.find_conn(self.cid)
        if old is not None and old is not self:
            # connection reinstatement (same CID): at ERL 0 the old one just goes
            old.abort("connection reinstated")
            sess.remove_conn(old, keep_open=True)   # the session goes on with this one
        if len(sess.conns) >= sess.max_connections:
            self._login_fail(P.LOGIN_TOO_MANY_CONNECTIONS, "MaxConnections reached")
            return
        self._login_complete(csg, answer, sess)

    def _login_got_tsih(self, csg: int, answer: list, tsih: int, why: str) -> None:
        """The directory's answer to a leading login (on this thread)."""
        self._lg_wait = False
        self._stalled = False
        if self.closing_or_dead() or self.fileno() < 0:
            if tsih:
                session_closed(tsih)     # nobody will use it: give it back
            return
        if not tsih:
            self._login_fail(P.LOGIN_OUT_OF_RESOURCES, why)
            return
        neg = self._lg_neg
        opts = self.reg.options
        params = {k: neg.value(k) for k in (
            "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
            "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain",
            "MaxOutstandingR2T", "ErrorRecoveryLevel")}
        qd = int(getattr(self.node, "queue_depth", 0) or opts.get("max_queue_depth", 64))
        sess = SESSIONS.create(tsih=tsih, isid=self._lg_isid,
                               initiator_name=self.initiator_name,
                               target_name=self.target_name,
                               session_type=self.session_type, node=self.node,
                               queue_depth=qd, cmdsn=self._lg_cmdsn, params=params)
        if sess is None:
            session_closed(tsih)
            self._login_fail(P.LOGIN_OUT_OF_RESOURCES, f"TSIH {tsih} already in use here")
            return
        if self.node is not None:
            try:
                sess.nexus = self.node.dev.open_nexus(
                    f"{self.initiator_name},i,{sess.isid_hex}",
                    f"{self.node.name},t,0x{self.pg_tag:04x}")
            except Exception as e:     # the SCSI layer refused: no session
                log.exception("iscsi %s: open_nexus failed", self.name)
                sess.close()
                self._login_fail(P.LOGIN_TARGET_ERROR, f"open_nexus: {e}")
                return
        self._login_complete(csg, answer, sess)

    def _login_complete(self, csg: int, answer: list, sess) -> None:
        neg = self._lg_neg
        sess.add_conn(self)
        self.session = sess
        # the last Login Response goes out without digests; they start with the next PDU
        self._login_rsp(P.LOGIN_TRANSIT | (csg << 2) | P.STAGE_FULL_FEATURE, P.LOGIN_SUCCESS,
                        answer, tsih=sess.tsih)
        self._apply_params(neg, sess)
        self._enter_ffp()
