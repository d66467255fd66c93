"""The NBD handshake (fixed newstyle): client flags, then option haggling until
NBD_OPT_EXPORT_NAME or NBD_OPT_GO opens an export and the connection enters the
transmission phase (transmission.py).  A mixin of `Connection`: it parses what the
receive buffer holds and queues replies through the connection's send queue.

Every option is validated here; a bad option gets an error reply and haggling goes on,
while a protocol violation (bad magic, unknown client flags, too many options, a bad
NBD_OPT_EXPORT_NAME) ends the connection.
"""
from __future__ import annotations

import logging

from . import _proto as P
from .backend import Export

log = logging.getLogger("ringstack.nbd")

# Connection states
_S_CFLAGS = 1        # greeting sent, waiting for the client flags
_S_OPTIONS = 2       # option haggling
_S_TRANS = 3         # transmission
_S_CLOSING = 4       # no more input; finish in-flight replies, then close the socket
_S_DEAD = 5          # socket closed; waiting for the backend to return outstanding ops
_S_DONE = 6          # everything released
_STATE_NAMES = {1: "handshake", 2: "options", 3: "transmission", 4: "closing", 5: "dead", 6: "done"}


class Handshake:
    """Option haggling, mixed into `Connection` (which owns the buffers and the queue)."""

    def _parse_handshake(self) -> int:
        rbuf = self._rbuf
        count = 0
        while self._state < _S_TRANS:
            start, end = self._rstart, self._rend
            if self._skip:
                self._rstart = start = self._drain(start, end)
                if self._skip:
                    break
            if self._state == _S_CFLAGS:
                if end - start < 4:
                    break
                (cflags,) = P.CLIENT_FLAGS.unpack_from(rbuf, start)
                self._rstart = start + 4
                if cflags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES):
                    self._die(f"unknown client flags {cflags:#x}")
                    return count
                self._no_zeroes = bool(cflags & P.FLAG_C_NO_ZEROES)
                self._state = _S_OPTIONS
                count += 1
                continue
            if end - start < 16:
                break
            magic, opt, length = P.OPT_HDR.unpack_from(rbuf, start)
            if magic != P.IHAVEOPT:
                self._die(f"bad option magic {magic:#x}")
                return count
            if length <= P.MAX_OPTION_DATA and end - start < 16 + length:
                break      # incomplete: not counted yet (this parse may run again before the rest)
            self._nopts += 1
            if self._nopts > P.MAX_OPTIONS:
                self._die("too many options")
                return count
            if length > P.MAX_OPTION_DATA:
                self._rstart = start + 16
                self._skip = length
                self._after_skip = (self._opt_reply, opt, P.REP_ERR_TOO_BIG, b"option data too large")
                count += 1
                continue
            data = bytes(rbuf[start + 16:start + 16 + length])
            self._rstart = start + 16 + length
            count += 1
            self._option(opt, data)
        return count

    def _opt_reply(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self._queue_small(P.OPT_REPLY.pack(P.REPLY_MAGIC_OPT, opt, rtype, len(data)) + data)

    def _option(self, opt: int, data: bytes) -> None:
        if opt == P.OPT_EXPORT_NAME:
            try:
                name = data.decode("utf-8")
            except UnicodeDecodeError:
                self._die("export name is not UTF-8")
                return
            export = self._exports.lookup(name)
            if export is None or not self._open(export):
                self._die(f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
                return
            reply = P.EXPORT_NAME_REPLY.pack(export.size, export.transmission_flags())
            self._queue_small(reply if self._no_zeroes else reply + bytes(124))
            self._enter_transmission()
        elif opt == P.OPT_ABORT:
            self._opt_reply(opt, P.REP_ACK)
            self._begin_closing("client sent NBD_OPT_ABORT")
        elif opt == P.OPT_LIST:
            if data:
                self._opt_reply(opt, P.REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                return
            for e in self._exports:
                name = e.name.encode()
                self._opt_reply(opt, P.REP_SERVER, len(name).to_bytes(4, "big") + name + e.description.encode())
            self._opt_reply(opt, P.REP_ACK)
        elif opt == P.OPT_INFO or opt == P.OPT_GO:
            self._info_or_go(opt, data)
        elif opt == P.OPT_STRUCTURED_REPLY:
            if data:
                self._opt_reply(opt, P.REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")
            elif self._structured:
                self._opt_reply(opt, P.REP_ERR_INVALID, b"structured replies already negotiated")
            else:
                self._structured = True
                self._opt_reply(opt, P.REP_ACK)
        else:
            self._opt_reply(opt, P.REP_ERR_UNSUP, b"option not supported")

    def _info_or_go(self, opt: int, data: bytes) -> None:
        n = len(data)
        if n < 6:
            self._opt_reply(opt, P.REP_ERR_INVALID, b"short NBD_OPT_INFO/GO")
            return
        namelen = int.from_bytes(data[:4], "big")
        if namelen > P.MAX_STRING or 4 + namelen + 2 > n:
            self._opt_reply(opt, P.REP_ERR_INVALID, b"bad export name length")
            return
        nreq = int.from_bytes(data[4 + namelen:6 + namelen], "big")
        if 6 + namelen + 2 * nreq != n:
            self._opt_reply(opt, P.REP_ERR_INVALID, b"bad information request count")
            return
        try:
            name = data[4:4 + namelen].decode("utf-8")
        except UnicodeDecodeError:
            self._opt_reply(opt, P.REP_ERR_INVALID, b"export name is not UTF-8")
            return
        wanted = {int.from_bytes(data[6 + namelen + 2 * i:8 + namelen + 2 * i], "big") for i in range(nreq)}
        export = self._exports.lookup(name)
        if export is None:
            self._opt_reply(opt, P.REP_ERR_UNKNOWN, f"no export named {name!r}".encode()[:256])
            return
        if opt == P.OPT_GO and not self._open(export):
            self._opt_reply(opt, P.REP_ERR_UNKNOWN, f"export {name!r} cannot be opened".encode()[:256])
            return
        self._opt_reply(opt, P.REP_INFO, P.INFO_EXPORT_S.pack(P.INFO_EXPORT, export.size,
                                                              export.transmission_flags()))
        if P.INFO_NAME in wanted:
            self._opt_reply(opt, P.REP_INFO, P.INFO_NAME.to_bytes(2, "big") + export.name.encode())
        if P.INFO_DESCRIPTION in wanted and export.description:
            self._opt_reply(opt, P.REP_INFO, P.INFO_DESCRIPTION.to_bytes(2, "big") + export.description.encode())
        if P.INFO_BLOCK_SIZE in wanted or export.block_min > 1:
            self._opt_reply(opt, P.REP_INFO, P.INFO_BLOCK_SIZE_S.pack(
                P.INFO_BLOCK_SIZE, export.block_min, export.block_preferred, export.block_max))
        self._opt_reply(opt, P.REP_ACK)
        if opt == P.OPT_GO:
            self._enter_transmission()

    def _open(self, export: Export) -> bool:
        try:
            self._handle = export.open(self._on_export_event)
        except OSError as exc:
            log.warning("nbd %s: cannot open export %r: %s", self.name, export.name, exc)
            return False
        self.export = export
        self.export_name = export.name
        return True

    def _enter_transmission(self) -> None:
        e = self.export
        self._size = e.size
        self._min_mask = e.block_min - 1
        self._max_payload = min(e.block_max, 0xFFFFFFFF)
        self._drain_limit = max(2 * self._max_payload, P.DEFAULT_MAX_PAYLOAD * 2)
        self._readonly = e.readonly
        self._fua_flush = bool(getattr(e, "fua_needs_flush", False))
        fua = P.CMD_FLAG_FUA if e.can_fua else 0
        allowed = {P.CMD_READ: fua | (P.CMD_FLAG_DF if self._structured else 0),
                   P.CMD_WRITE: fua, P.CMD_DISC: 0xFFFF}
        if e.can_flush:
            allowed[P.CMD_FLUSH] = fua
        if e.can_trim:
            allowed[P.CMD_TRIM] = fua
        if e.can_write_zeroes:
            allowed[P.CMD_WRITE_ZEROES] = fua | P.CMD_FLAG_NO_HOLE
        self._allowed = allowed
        self._state = _S_TRANS
        log.debug("nbd %s: serving export %r (structured=%s)", self.name, e.name, self._structured)
