"""A raw, blocking iSCSI initiator for tests: builds PDUs by hand so tests can break the
rules on purpose (bad opcodes, lengths, CmdSN, DataSN, digests)."""
from __future__ import annotations

import socket
import struct

from targets.iscsi import pdu as P
from targets.iscsi.chap import chap_response, decode_binary, encode_hex

INITIATOR = "iqn.1994-05.com.example:test"


class Pdu:
    def __init__(self, hdr: bytes, data: bytes, ahs: bytes = b""):
        self.hdr = hdr
        self.data = data
        self.f = P.bhs_unpack(hdr, 0)
        self.ahs = ahs

    op = property(lambda s: s.f[0] & 0x3F)
    flags = property(lambda s: s.f[1])
    itt = property(lambda s: s.f[5])
    ttt = property(lambda s: s.f[6])
    stat_sn = property(lambda s: s.f[7])
    exp_cmdsn = property(lambda s: s.f[8])
    max_cmdsn = property(lambda s: s.f[9])
    status_class = property(lambda s: s.f[10] >> 16)   # login response
    tsih = property(lambda s: s.f[4] & 0xFFFF)

    @property
    def text(self) -> dict:
        return dict(P.decode_text(self.data))

    def __repr__(self):
        return f"<Pdu op=0x{self.op:02x} flags=0x{self.flags:02x} itt=0x{self.itt:x} dsl={len(self.data)}>"


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hd = False
        self.dd = False
        self.cmdsn = 1
        self.exp_statsn = 0
        self.itt = 0x100
        self.isid = 0x80_12_34_56_78_9A
        self.tsih = 0
        self.cid = 0
        self.max_cmdsn = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    # ---------------------------------------------------------------- wire
    def send_raw(self, b: bytes):
        self.sock.sendall(b)

    def send(self, op, flags, b2b3=0, lun=0, itt=0, w=(0,) * 7, data=b"", ahs=b"",
             hdr_digest_ok=True, data_digest_ok=True, dsl=None):
        n = len(data) if dsl is None else dsl
        hdr = P.bhs_pack(op, flags, b2b3, ((len(ahs) // 4) << 24) | n, lun, itt, *w) + ahs
        out = hdr
        if self.hd:
            dg = P.digest(hdr)
            if not hdr_digest_ok:
                dg = bytes(x ^ 0xFF for x in dg)
            out += dg
        if data:
            pad = P.PADS[len(data) & 3]
            out += data + pad
            if self.dd:
                dg = P.digest(data + pad)
                if not data_digest_ok:
                    dg = bytes(x ^ 0xFF for x in dg)
                out += dg
        self.sock.sendall(out)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            c = self.sock.recv(n - len(buf))
            if not c:
                raise ConnectionError("closed by target")
            buf += c
        return bytes(buf)

    def recv(self) -> Pdu:
        hdr = self._recv_exact(48)
        f = P.bhs_unpack(hdr, 0)
        ahs = self._recv_exact((f[3] >> 24) * 4)
        if self.hd:
            dg = self._recv_exact(4)
            assert dg == P.digest(hdr + ahs), "bad header digest from target"
        dsl = f[3] & 0xFFFFFF
        data = b""
        if dsl:
            raw = self._recv_exact(dsl + (-dsl & 3))
            if self.dd:
                dg = self._recv_exact(4)
                assert dg == P.digest(raw), "bad data digest from target"
            data = raw[:dsl]
        p = Pdu(hdr, data, ahs)
        if p.op in (P.OP_SCSI_RSP, P.OP_NOP_IN, P.OP_TEXT_RSP, P.OP_LOGOUT_RSP, P.OP_TMF_RSP,
                    P.OP_REJECT, P.OP_LOGIN_RSP) or (p.op == P.OP_DATA_IN and p.flags & 1):
            if not (p.op == P.OP_NOP_IN and p.itt == P.RESERVED_TAG):
                self.exp_statsn = (p.stat_sn + 1) & 0xFFFFFFFF
        if p.op != P.OP_LOGIN_RSP or p.f[9]:
            self.max_cmdsn = p.max_cmdsn
        return p

    def closed_by_target(self, timeout: float = 3.0) -> bool:
        """True when the target closes the connection (after any queued PDUs)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                c = self.sock.recv(65536)
                if not c:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def silent(self, timeout: float = 0.5) -> bool:
        """True when nothing arrives within timeout."""
        self.sock.settimeout(timeout)
        try:
            c = self.sock.recv(1, socket.MSG_PEEK)
            return False if c else False
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(5.0)

    # ---------------------------------------------------------------- login
    def login_pdu(self, keys, csg, nsg, transit=True, cont=False, vmin=0, cmdsn=None):
        flags = (P.LOGIN_TRANSIT if transit else 0) | (P.LOGIN_CONTINUE if cont else 0) \
            | (csg << 2) | (nsg if transit else 0)
        data = P.encode_text(keys) if isinstance(keys, list) else keys
        self.send(P.OP_LOGIN_REQ | P.IMMEDIATE_BIT, flags, vmin, (self.isid << 16) | self.tsih,
                  0x1, (self.cid << 16, self.cmdsn if cmdsn is None else cmdsn,
                        self.exp_statsn, 0, 0, 0, 0), data)
        return self.recv()

    def login(self, target=None, *, discovery=False, initiator=INITIATOR, extra=(),
              chap=None, mutual=None, digests=None, expect_ok=True):
        """Full login.  chap=(user, secret); mutual=(muser, msecret); digests=(hd, dd)."""
        keys = [("InitiatorName", initiator)]
        if discovery:
            keys.append(("SessionType", "Discovery"))
        else:
            keys.append(("TargetName", target))
        keys.append(("AuthMethod", "CHAP,None" if chap else "None"))
        r = self.login_pdu(keys, 0, 1)
        if r.status_class:
            if expect_ok:
                raise AssertionError(f"login failed 0x{r.status_class:04x}")
            return r
        if chap:
            assert r.text.get("AuthMethod") == "CHAP", r.text
            r = self.login_pdu([("CHAP_A", "5")], 0, 1, transit=False)
            t = r.text
            ident, challenge = int(t["CHAP_I"]), decode_binary(t["CHAP_C"])
            keys = [("CHAP_N", chap[0]),
                    ("CHAP_R", encode_hex(chap_response(ident, chap[1].encode(), challenge)))]
            my_challenge = b"\x11" * 16
            if mutual:
                keys += [("CHAP_I", "7"), ("CHAP_C", encode_hex(my_challenge))]
            r = self.login_pdu(keys, 0, 1)
            if r.status_class:
                if expect_ok:
                    raise AssertionError(f"login failed 0x{r.status_class:04x}")
                return r
            if mutual:
                t = r.text
                assert t["CHAP_N"] == mutual[0]
                assert decode_binary(t["CHAP_R"]) == chap_response(7, mutual[1].encode(),
                                                                   my_challenge)
        hd, dd = digests or (False, False)
        keys = [("HeaderDigest", "CRC32C" if hd else "None"),
                ("DataDigest", "CRC32C" if dd else "None"),
                ("MaxRecvDataSegmentLength", "65536")] + list(extra)
        r = self.login_pdu(keys, 1, 3)
        if r.status_class:
            if expect_ok:
                raise AssertionError(f"login failed 0x{r.status_class:04x}")
            return r
        assert r.flags & P.LOGIN_TRANSIT and (r.flags & 3) == 3, r
        self.tsih = r.tsih
        self.last_login = r
        t = r.text
        self.hd = t.get("HeaderDigest") == "CRC32C"
        self.dd = t.get("DataDigest") == "CRC32C"
        self.max_cmdsn = r.max_cmdsn
        return r

    # ---------------------------------------------------------------- FFP helpers
    def scsi(self, cdb: bytes, *, read=0, write=b"", edtl=None, immediate=True, lun=0,
             itt=None, cmdsn=None, final=True, imm_bit=False):
        itt = self.next_itt() if itt is None else itt
        if edtl is None:
            edtl = read or len(write)
        flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write or (
            edtl and not read) else 0)
        cdb = cdb.ljust(16, b"\0")
        sn = self.cmdsn if cmdsn is None else cmdsn
        if cmdsn is None and not imm_bit:
            self.cmdsn += 1
        w20, w24, w28 = edtl, sn, self.exp_statsn
        w = (w20, w24, w28) + struct.unpack(">4I", cdb)
        data = write if immediate else b""
        self.send(P.OP_SCSI_CMD | (P.IMMEDIATE_BIT if imm_bit else 0), flags, 0,
                  P.int_to_lun(lun), itt, w, data)
        return itt

    def data_out(self, itt, ttt, datasn, offset, data, final=True, lun=0):
        self.send(P.OP_DATA_OUT, 0x80 if final else 0, 0, P.int_to_lun(lun), itt,
                  (ttt, 0, self.exp_statsn, 0, datasn, offset, 0), data)

    def nop(self, data=b"", itt=None, immediate=True):
        itt = self.next_itt() if itt is None else itt
        sn = self.cmdsn
        if not immediate:
            self.cmdsn += 1
        self.send(P.OP_NOP_OUT | (P.IMMEDIATE_BIT if immediate else 0), 0x80, 0, 0, itt,
                  (P.RESERVED_TAG, sn, self.exp_statsn, 0, 0, 0, 0), data)
        return itt

    def ping(self) -> Pdu:
        itt = self.nop(b"ping")
        r = self.recv()
        assert r.op == P.OP_NOP_IN and r.itt == itt and r.data == b"ping", r
        return r

    def text(self, keys, ttt=P.RESERVED_TAG, itt=None, cont=False):
        itt = self.next_itt() if itt is None else itt
        sn = self.cmdsn
        self.cmdsn += 1
        self.send(P.OP_TEXT_REQ, (0 if cont else 0x80) | (P.TEXT_CONTINUE if cont else 0), 0,
                  0, itt, (ttt, sn, self.exp_statsn, 0, 0, 0, 0),
                  P.encode_text(keys) if isinstance(keys, list) else keys)
        return itt

    def tmf(self, func, lun=0, rtt=P.RESERVED_TAG, refcmdsn=0):
        itt = self.next_itt()
        self.send(P.OP_TMF_REQ | P.IMMEDIATE_BIT, 0x80 | func, 0, P.int_to_lun(lun), itt,
                  (rtt, self.cmdsn, self.exp_statsn, refcmdsn, 0, 0, 0))
        return itt

    def logout(self, reason=0, cid=None):
        itt = self.next_itt()
        sn = self.cmdsn
        self.cmdsn += 1
        self.send(P.OP_LOGOUT_REQ, 0x80 | reason, 0, 0, itt,
                  ((self.cid if cid is None else cid) << 16, sn, self.exp_statsn, 0, 0, 0, 0))
        return self.recv()

    def read_all(self, itt):
        """Collect Data-In for itt until status; returns (data, status_pdu, datains)."""
        data = bytearray()
        dis = []
        while True:
            p = self.recv()
            assert p.itt == itt, p
            if p.op == P.OP_DATA_IN:
                dis.append(p)
                assert p.f[11] == len(data), "BufferOffset out of order"
                data += p.data
                if p.flags & P.DATAIN_STATUS:
                    return bytes(data), p, dis
            elif p.op == P.OP_SCSI_RSP:
                return bytes(data), p, dis
            else:
                raise AssertionError(f"unexpected {p}")


def read10(lba, blocks):
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba, blocks):
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


TUR = bytes(6)
