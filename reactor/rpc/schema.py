"""Parameter schemas for JSON-RPC methods: the one table both ends read.

A method declares its parameters once, as a :class:`Schema` of :class:`Param`.  The same
declaration is used by

* the server, to validate ``params`` before the handler runs (SPDK's
  ``spdk_json_decode_object``: a missing required key, a value of the wrong type or a key no
  decoder knows all fail the request with -32602 "Invalid parameters", here with the offending
  parameter named in the message);
* the ``ringstack rpc`` client, to turn ``--param value`` strings into typed JSON values;
* the docs generator (``python -m reactor.rpc.docs``) for docs/rpc.md.

Types are the JSON ones, spelt as Python types: ``str``, ``int``, ``float``, ``bool``,
``list``, ``dict`` (plus ``ANY``).  ``bool`` is not an ``int`` here (SPDK's decoders keep them
apart), and an ``int`` is accepted where a ``float`` is wanted.  ``null`` is accepted only for
an optional parameter declared ``nullable=True``.

``fixed="why"`` declares a parameter *accepted at its default only*: SPDK's decoder knows it
and SPDK's CLI always sends it, but the feature is outside ringstack (DIF/metadata, ...).  The
default (or, without one, leaving it out) passes; any other value is -32602 naming the
parameter and the reason.  The integer ranges of SPDK's decoders are ``U8``, ``U32``,
``U64`` (``min=0, max=...``) and ``I32_MIN``/``I32_MAX``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

ANY = object  # a parameter of any JSON type

# The ranges of SPDK's integer decoders (spdk_json_decode_uint8/uint32/uint64/int32).
U8 = (1 << 8) - 1
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "array", dict: "object", ANY: "any"}


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class ParamError(ValueError):
    """A parameter failed validation; ``str()`` names the parameter."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _type_ok(typ: Any, value: Any) -> bool:
    if typ is ANY:
        return True
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ)


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _parse_uuid(name: str, value: str) -> str:
    """SPDK's spdk_uuid_parse: exactly the 36-character 8-4-4-4-12 form (no braces, no
    urn: prefix); the canonical lower-case spelling goes on."""
    if not _UUID_RE.fullmatch(value):
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise ParamError(f"parameter '{name}' must be a UUID (8-4-4-4-12 hex digits), "
                         f"got {json.dumps(shown)}", name)
    return value.lower()


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    ``required`` defaults to True unless a ``default`` is given.  An optional parameter the
    caller leaves out is passed to the handler as its ``default`` (``None`` if it has none), so
    handlers can index ``params[name]`` for every declared name.
    """

    name: str
    type: Any = str
    required: bool | None = None
    default: Any = MISSING
    help: str = ""
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    items: Any = None          # element type of a list parameter (None: any)
    nullable: bool = False     # accept JSON null for an optional parameter
    fixed: str = ""            # non-empty: accepted at its default only, and why
    format: str = ""           # "uuid": a string SPDK parses (spdk_uuid_parse), normalised

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"param {self.name!r}: unsupported type {self.type!r}")
        if self.items is not None and self.items not in _TYPE_NAMES:
            raise TypeError(f"param {self.name!r}: unsupported item type {self.items!r}")
        if self.required is None:
            object.__setattr__(self, "required", self.default is MISSING)
        if self.required and self.default is not MISSING:
            raise TypeError(f"param {self.name!r}: a required parameter cannot have a default")
        if self.fixed and self.required:
            raise TypeError(f"param {self.name!r}: a fixed parameter must be optional")
        if self.format not in ("", "uuid") or (self.format and self.type is not str):
            raise TypeError(f"param {self.name!r}: unsupported format {self.format!r}")

    # -- describing ---------------------------------------------------------------------------
    @property
    def type_name(self) -> str:
        name = _TYPE_NAMES[self.type]
        if self.type is list and self.items is not None:
            name = f"array of {_TYPE_NAMES[self.items]}"
        return name

    def describe_constraints(self) -> str:
        parts = []
        if self.format == "uuid":
            parts.append("a UUID (8-4-4-4-12 hex digits)")
        if self.fixed:
            parts.append(("default only" if self.default is not MISSING else "omitted only")
                         + f" ({self.fixed})")
        if self.choices is not None:
            parts.append("one of " + ", ".join(json.dumps(c) for c in self.choices))
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return "; ".join(parts)

    # -- validating ---------------------------------------------------------------------------
    def validate(self, value: Any) -> Any:
        """Return ``value`` if it satisfies this parameter, else raise :class:`ParamError`."""
        n = self.name
        if value is None:
            if self.nullable and not self.required:
                return None
            raise ParamError(f"parameter '{n}' must be {_article(self.type_name)}, got null", n)
        if not _type_ok(self.type, value):
            raise ParamError(f"parameter '{n}' must be {_article(self.type_name)}, "
                             f"got {json_type_name(value)}", n)
        if self.type is str and "\0" in value:
            # SPDK's spdk_json_strdup refuses an embedded NUL: no C string holds one, and a
            # name or path cut short at it would name something else
            raise ParamError(f"parameter '{n}' must not contain a NUL byte", n)
        if self.format == "uuid":
            value = _parse_uuid(n, value)
        if self.type is list and self.items is not None:
            for i, item in enumerate(value):
                if not _type_ok(self.items, item):
                    raise ParamError(f"parameter '{n}' item {i} must be "
                                     f"{_article(_TYPE_NAMES[self.items])}, "
                                     f"got {json_type_name(item)}", n)
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"parameter '{n}' must be one of "
                             f"{', '.join(json.dumps(c) for c in self.choices)}, "
                             f"got {json.dumps(value)}", n)
        if self.min is not None and value < self.min:
            raise ParamError(f"parameter '{n}' must be >= {self.min}, got {value}", n)
        if self.max is not None and value > self.max:
            raise ParamError(f"parameter '{n}' must be <= {self.max}, got {value}", n)
        if self.fixed and (self.default is MISSING or value != self.default
                           or type(value) is not type(self.default)):
            what = ("can only be left out" if self.default is MISSING
                    else f"is accepted only at its default {json.dumps(self.default)}")
            raise ParamError(f"parameter '{n}' {what} in ringstack ({self.fixed}), "
                             f"got {json.dumps(value)}", n)
        return value

    # -- command line -------------------------------------------------------------------------
    def from_cli(self, tokens: Sequence[str]) -> Any:
        """Convert ``--name`` tokens from the command line to a JSON value, then validate it.

        int: decimal or 0x/0o/0b; bool: true/false/yes/no/on/off/1/0 (a bare ``--name`` is
        true); list: JSON array, or one token per element; dict: a JSON object.
        """
        n = self.name
        if self.type is list:
            if len(tokens) == 1 and tokens[0].lstrip().startswith("["):
                value = _json_token(n, tokens[0])
            else:
                value = [_scalar_from_cli(n, self.items or ANY, t) for t in tokens]
        else:
            if len(tokens) != 1:
                raise ParamError(f"parameter '{n}' takes one value, got {len(tokens)}", n)
            value = _scalar_from_cli(n, self.type, tokens[0])
        return self.validate(value)


def _article(type_name: str) -> str:
    return ("an " if type_name[0] in "aeiou" else "a ") + type_name


def _json_token(name: str, token: str) -> Any:
    try:
        return json.loads(token)
    except ValueError as exc:
        raise ParamError(f"parameter '{name}': invalid JSON {token!r}: {exc}", name) from None


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _scalar_from_cli(name: str, typ: Any, token: str) -> Any:
    if typ is str:
        return token
    if typ is bool:
        low = token.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ParamError(f"parameter '{name}' must be a boolean (true/false), got {token!r}", name)
    if typ is int:
        try:
            return int(token, 0)
        except ValueError:
            raise ParamError(f"parameter '{name}' must be an integer, got {token!r}", name) from None
    if typ is float:
        try:
            return float(token)
        except ValueError:
            raise ParamError(f"parameter '{name}' must be a number, got {token!r}", name) from None
    if typ is dict:
        value = _json_token(name, token)
        if not isinstance(value, dict):
            raise ParamError(f"parameter '{name}' must be a JSON object, got {token!r}", name)
        return value
    # ANY (or list items without a declared type): JSON if it parses, else the string.
    try:
        return json.loads(token)
    except ValueError:
        return token


class Schema:
    """The parameters of one method, in declaration order.

    ``Schema()`` (no parameters) accepts an absent params member, ``null`` or ``{}``; anything
    else is invalid, as SPDK's "method requires no parameters" checks are.
    """

    def __init__(self, *params: Param | Iterable[Param]):
        flat: list[Param] = []
        for p in params:
            if isinstance(p, Param):
                flat.append(p)
            else:
                flat.extend(p)
        names = [p.name for p in flat]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TypeError(f"duplicate parameter names {sorted(dup)}")
        self.params = flat
        self._by_name = {p.name: p for p in flat}

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def get(self, name: str) -> Param | None:
        return self._by_name.get(name)

    def validate(self, params: Any) -> dict:
        """Validate a request's ``params`` member; return a dict with defaults filled in.

        Raises :class:`ParamError` naming the first offending parameter: unknown keys first
        (a misspelt optional key is otherwise silently ignored), then each declared parameter in
        order (wrong type/constraint or missing).
        """
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ParamError(f"params must be an object (named parameters), got "
                             f"{json_type_name(params)}")
        if not self.params and params:
            raise ParamError(f"method takes no parameters, got '{next(iter(params))}'",
                             next(iter(params)))
        for key in params:
            if key not in self._by_name:
                raise ParamError(f"unknown parameter '{key}'", key)
        out: dict = {}
        for p in self.params:
            if p.name in params:
                out[p.name] = p.validate(params[p.name])
            elif p.required:
                raise ParamError(f"missing required parameter '{p.name}'", p.name)
            else:
                out[p.name] = None if p.default is MISSING else _copy_default(p.default)
        return out


def _copy_default(value: Any) -> Any:
    # A mutable default must not be shared between requests.
    if isinstance(value, (list, dict)):
        return json.loads(json.dumps(value))
    return value
