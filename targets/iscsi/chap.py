"""CHAP authentication for the login's security stage (RFC 7143 12.1.3, RFC 1994), with
SPDK's semantics: CHAP_A=5 (MD5) only; a target may require mutual CHAP, in which case the
initiator must send its own CHAP_I/CHAP_C and the target answers with the auth group's
mutual user and secret.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Callable, Optional

CHAP_MD5 = "5"
CHALLENGE_LEN = 16       # bytes of random challenge (SPDK: ISCSI_CHAP_CHALLENGE_LEN 1024 max)
MAX_CHALLENGE = 1024


class AuthError(Exception):
    """Authentication failed (login status 0x0201)."""


class ChapProtocolError(Exception):
    """The initiator broke the CHAP exchange (login status 0x0200)."""


def decode_binary(v: str) -> bytes:
    """RFC 7143 5.1 binary-value: 0x<hex> or 0b<base64>."""
    try:
        if v[:2] in ("0x", "0X"):
            h = v[2:]
            if len(h) % 2:
                h = "0" + h
            return binascii.unhexlify(h)
        if v[:2] in ("0b", "0B"):
            return base64.b64decode(v[2:], validate=True)
    except (binascii.Error, ValueError):
        pass
    raise ChapProtocolError(f"bad binary value {v[:40]!r}")


def encode_hex(b: bytes) -> str:
    return "0x" + b.hex()


def chap_response(ident: int, secret: bytes, challenge: bytes) -> bytes:
    return hashlib.md5(bytes((ident,)) + secret + challenge).digest()


class ChapServer:
    """The target side of one CHAP exchange.

    `lookup(user) -> (secret, muser, msecret) | None` resolves the initiator's CHAP_N in the
    auth group (registry.find_chap_secret); `mutual` says the target demands mutual CHAP.
    """

    def __init__(self, lookup: Callable[[str], Optional[tuple]], mutual: bool):
        self._lookup = lookup
        self._mutual = mutual
        self.state = "wait_a"
        self._id = 0
        self._challenge = b""
        self.user: Optional[str] = None

    def step(self, keys: dict) -> list[tuple[str, str]]:
        """Consume the CHAP keys of one login request; return the keys to answer.  Sets
        state to "done" once the initiator is authenticated."""
        if self.state == "wait_a":
            algs = keys.get("CHAP_A")
            if algs is None:
                raise ChapProtocolError("CHAP_A expected")
            if CHAP_MD5 not in algs.split(","):
                # RFC 7143 12.1.3: no acceptable algorithm -> Reject and fail the login
                raise AuthError("no supported CHAP algorithm (need 5, MD5)")
            self._id = os.urandom(1)[0]
            self._challenge = os.urandom(CHALLENGE_LEN)
            self.state = "wait_r"
            return [("CHAP_A", CHAP_MD5), ("CHAP_I", str(self._id)),
                    ("CHAP_C", encode_hex(self._challenge))]
        if self.state == "wait_r":
            user = keys.get("CHAP_N")
            resp = keys.get("CHAP_R")
            if user is None or resp is None:
                raise ChapProtocolError("CHAP_N and CHAP_R expected")
            got = decode_binary(resp)
            entry = self._lookup(user)
            if entry is None:
                raise AuthError(f"unknown CHAP user {user!r}")
            secret, muser, msecret = entry
            want = chap_response(self._id, secret.encode() if isinstance(secret, str)
                                 else secret, self._challenge)
            if not hmac.compare_digest(got, want):
                raise AuthError(f"bad CHAP response for user {user!r}")
            self.user = user
            ci, cc = keys.get("CHAP_I"), keys.get("CHAP_C")
            if ci is None and cc is None:
                if self._mutual:
                    raise AuthError("mutual CHAP required but the initiator sent no challenge")
                self.state = "done"
                return []
            if ci is None or cc is None:
                raise ChapProtocolError("CHAP_I and CHAP_C go together")
            try:
                ident = int(ci, 0)
            except ValueError:
                raise ChapProtocolError(f"bad CHAP_I {ci!r}") from None
            if not 0 <= ident <= 255:
                raise ChapProtocolError(f"bad CHAP_I {ci!r}")
            challenge = decode_binary(cc)
            if not challenge or len(challenge) > MAX_CHALLENGE:
                raise ChapProtocolError("bad CHAP_C length")
            if challenge == self._challenge:
                raise AuthError("initiator reflected the target's challenge")
            if not muser or not msecret:
                raise AuthError("mutual CHAP asked but the auth group has no mutual secret")
            msec = msecret.encode() if isinstance(msecret, str) else msecret
            self.state = "done"
            return [("CHAP_N", muser), ("CHAP_R", encode_hex(chap_response(ident, msec,
                                                                           challenge)))]
        raise ChapProtocolError("CHAP keys after authentication finished")
