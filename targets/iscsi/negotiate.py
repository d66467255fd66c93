"""Text key=value negotiation (RFC 7143 sections 6 and 13): the operational keys, their
result functions, RFC defaults, and the answers NotUnderstood / Irrelevant / Reject.

One `Negotiation` per connection login.  The target's own values come from the registry's
options and the target node (SPDK's iscsi_conn_params_init / iscsi_negotiate_params); keys
the initiator never sends keep their RFC default, which both sides then assume.
"""
from __future__ import annotations

from typing import Optional

#: RFC 7143 defaults: what a key means when it was never negotiated.
RFC_DEFAULTS = {
    "HeaderDigest": "None", "DataDigest": "None",
    "MaxConnections": 1, "InitialR2T": True, "ImmediateData": True,
    "MaxRecvDataSegmentLength": 8192, "MaxBurstLength": 262144, "FirstBurstLength": 65536,
    "DefaultTime2Wait": 2, "DefaultTime2Retain": 20, "MaxOutstandingR2T": 1,
    "DataPDUInOrder": True, "DataSequenceInOrder": True, "ErrorRecoveryLevel": 0,
}

# result functions
_MIN, _MAX, _AND, _OR, _LIST, _DECL = range(6)

#: key -> (kind, low, high); numeric ranges from RFC 7143 section 13.
_KEYS = {
    "HeaderDigest": (_LIST, 0, 0),
    "DataDigest": (_LIST, 0, 0),
    "MaxConnections": (_MIN, 1, 65535),
    "InitialR2T": (_OR, 0, 0),
    "ImmediateData": (_AND, 0, 0),
    "MaxRecvDataSegmentLength": (_DECL, 512, 16777215),
    "MaxBurstLength": (_MIN, 512, 16777215),
    "FirstBurstLength": (_MIN, 512, 16777215),
    "DefaultTime2Wait": (_MAX, 0, 3600),
    "DefaultTime2Retain": (_MIN, 0, 3600),
    "MaxOutstandingR2T": (_MIN, 1, 65535),
    "DataPDUInOrder": (_OR, 0, 0),
    "DataSequenceInOrder": (_OR, 0, 0),
    "ErrorRecoveryLevel": (_MIN, 0, 2),
    "IFMarker": (_AND, 0, 0),
    "OFMarker": (_AND, 0, 0),
}

#: Operational keys that mean nothing in a discovery session (RFC 7143 13.x "Irrelevant
#: when SessionType=Discovery"); SPDK answers them Irrelevant too.
_NORMAL_ONLY = frozenset({
    "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
    "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder",
    "DataSequenceInOrder", "ErrorRecoveryLevel",
})
#: Session-wide keys only the leading connection negotiates ("LO" in RFC 7143).
_LEADING_ONLY = _NORMAL_ONLY

#: Keys that carry identity or authentication; login.py handles them, not this module.
DECLARATIVE_LOGIN_KEYS = frozenset({
    "InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "TargetAlias",
    "TargetAddress", "TargetPortalGroupTag", "AuthMethod",
    "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R",
})

_MARKER_KEYS = frozenset({"IFMarkInt", "OFMarkInt"})


class NegotiationError(Exception):
    """A text request that breaks the rules (login fails with status 0x0200)."""


def _bool(v: str) -> Optional[bool]:
    return True if v == "Yes" else False if v == "No" else None


def _yesno(b: bool) -> str:
    return "Yes" if b else "No"


def _number(v: str) -> Optional[int]:
    # RFC 7143 5.1: decimal or 0x-hex; no sign
    try:
        if v[:2] in ("0x", "0X"):
            return int(v[2:], 16)
        if v.isdigit():
            return int(v)
    except ValueError:
        pass
    return None


class Negotiation:
    """The operational-key state of one connection's login.

    `ours` holds the target's side (numbers, booleans, lists of digest names in order of
    preference); `result` collects what was negotiated; `answered` remembers which keys
    this login already saw (a key sent twice is a protocol error).
    """

    def __init__(self, ours: dict):
        self.ours = ours
        self.result: dict = {}
        self.answered: set = set()
        self.declared_mrdsl = False

    def value(self, key: str):
        if key in self.result:
            return self.result[key]
        return RFC_DEFAULTS[key]

    def offer(self, key: str, value: str, *, discovery: bool, leading: bool) -> Optional[str]:
        """The answer to one operational key (None: the key needs no answer, such as a
        declarative key of the initiator)."""
        if key in self.answered:
            raise NegotiationError(f"key {key} negotiated twice")
        self.answered.add(key)
        spec = _KEYS.get(key)
        if spec is None:
            if key in _MARKER_KEYS:
                return "Irrelevant"      # markers are No (RFC 7143 obsoletes them)
            return "NotUnderstood"
        if discovery and key in _NORMAL_ONLY:
            return "Irrelevant"
        if not leading and key in _LEADING_ONLY:
            return "Irrelevant"
        kind, low, high = spec
        if kind == _LIST:
            offered = value.split(",")
            for v in offered:
                if v in self.ours[key]:
                    self.result[key] = v
                    return v
            return "Reject"
        if kind in (_AND, _OR):
            b = _bool(value)
            if b is None:
                return "Reject"
            mine = self.ours.get(key, False)
            r = (b and mine) if kind == _AND else (b or mine)
            self.result[key] = r
            return _yesno(r)
        n = _number(value)
        if n is None or n < low or n > high:
            return "Reject"
        if kind == _DECL:       # MaxRecvDataSegmentLength: the initiator's receive limit
            self.result[key] = n
            return None
        mine = self.ours[key]
        r = min(n, mine) if kind == _MIN else max(n, mine)
        self.result[key] = r
        return str(r)

    def finish(self) -> None:
        """Cross-key rules once the operational stage ends: FirstBurstLength never exceeds
        MaxBurstLength (RFC 7143 13.14)."""
        if "FirstBurstLength" in self.result or "MaxBurstLength" in self.result:
            mbl = self.value("MaxBurstLength")
            if self.value("FirstBurstLength") > mbl:
                self.result["FirstBurstLength"] = mbl


def target_values(options: dict, node=None, max_recv_dsl: int = 8192) -> dict:
    """The target's side of every operational key, from iscsi_get_options (SPDK names)
    and the target node's digest requirements (SPDK: header_digest/data_digest on the
    node make CRC32C the only acceptable value)."""
    o = options
    hd = ["CRC32C"] if node is not None and getattr(node, "header_digest", False) \
        else ["CRC32C", "None"]
    dd = ["CRC32C"] if node is not None and getattr(node, "data_digest", False) \
        else ["CRC32C", "None"]
    return {
        "HeaderDigest": hd, "DataDigest": dd,
        "MaxConnections": int(o.get("max_connections_per_session", 2)),
        # SPDK always asks for R2T (InitialR2T=Yes); "initial_r2t" (not an SPDK option)
        # lets tests exercise unsolicited Data-Out
        "InitialR2T": bool(o.get("initial_r2t", True)),
        "ImmediateData": bool(o.get("immediate_data", True)),
        "MaxRecvDataSegmentLength": max_recv_dsl,
        "MaxBurstLength": int(o.get("max_burst_length", 1048576)),
        "FirstBurstLength": int(o.get("first_burst_length", 8192)),
        "DefaultTime2Wait": int(o.get("default_time2wait", 2)),
        "DefaultTime2Retain": int(o.get("default_time2retain", 20)),
        "MaxOutstandingR2T": int(o.get("max_outstanding_r2t", 1)),
        "DataPDUInOrder": True, "DataSequenceInOrder": True,
        "ErrorRecoveryLevel": min(int(o.get("error_recovery_level", 0)), 0),
        "IFMarker": False, "OFMarker": False,
    }
