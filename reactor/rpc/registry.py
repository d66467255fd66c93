"""The JSON-RPC method table: names, parameter schemas, allowed states, handlers.

Methods are registered once, with their schema, by a decorator::

    from reactor.rpc import rpc_method, Param, STARTUP, RUNTIME

    @rpc_method("bdev_malloc_create", params=[
        Param("name", str, required=False, help="bdev name (default: MallocN)"),
        Param("num_blocks", int, min=1),
        Param("block_size", int, choices=(512, 4096)),
    ], states=RUNTIME)
    def bdev_malloc_create(request, params):
        ...                      # later, possibly from another poll:
        request.result(name)     # or request.errno(-errno.EEXIST)

The table is read by the server (dispatch, validation, state checks), by ``ringstack rpc``
(``--param value`` parsing) and by ``python -m reactor.rpc.docs`` (docs/rpc.md).  Method
states are SPDK's: STARTUP (before ``framework_start_init``, i.e. ``--wait-for-rpc``) and
RUNTIME; a method may be called only when the current state is in its mask.

This module registers the two methods every target has: ``rpc_get_methods`` and
``spdk_get_version`` (plus SPDK's deprecated aliases ``get_rpc_methods`` and
``get_spdk_version``).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from reactor.rpc.schema import Param, ParamError, Schema

log = logging.getLogger("ringstack.rpc")

# SPDK_RPC_STARTUP / SPDK_RPC_RUNTIME (include/spdk/rpc.h).
STARTUP = 0x1
RUNTIME = 0x2
STATE_NAMES = {STARTUP: "STARTUP", RUNTIME: "RUNTIME"}

# Pass as ``params=RAW`` to skip validation and hand the handler the request's params as sent
# (an escape hatch for methods whose parameters have no fixed shape; prefer a Schema).
RAW = "raw"

Handler = Callable[[Any, Any], Any]


@dataclass
class Method:
    """One entry of the table.  ``alias_of`` names the real method of a (deprecated) alias."""

    name: str
    handler: Handler | None
    schema: Schema | None          # None only for RAW methods
    states: int
    help: str = ""
    alias_of: str | None = None
    deprecated: bool = False
    module: str = ""
    _warned: bool = False

    def allowed_in(self, state: int) -> bool:
        # SPDK's test: (state_mask & g_rpc_state) == g_rpc_state
        return (self.states & state) == state

    def validate(self, params: Any) -> Any:
        if self.schema is None:
            return params
        return self.schema.validate(params)


def _as_schema(params: Schema | Sequence[Param] | str | None) -> Schema | None:
    if params is RAW:
        return None
    if params is None:
        return Schema()
    if isinstance(params, Schema):
        return params
    return Schema(*params)


class MethodTable:
    """An ordered set of methods.  The process-wide table is :data:`METHODS`; tests may build
    their own (``MethodTable(builtins=True)`` starts with rpc_get_methods/spdk_get_version)."""

    def __init__(self, builtins: bool = False):
        self._methods: dict[str, Method] = {}
        if builtins:
            for m in METHODS._methods.values():
                if m.module == __name__:
                    self._methods[m.name] = m

    # -- registering --------------------------------------------------------------------------
    def register(self, name: str, handler: Handler, params: Schema | Sequence[Param] | str | None = None,
                 states: int = RUNTIME, help: str | None = None,
                 aliases: Iterable[str] = ()) -> Method:
        if not name or not isinstance(name, str):
            raise ValueError("method name must be a non-empty string")
        if name in self._methods:
            raise ValueError(f"RPC method {name!r} registered twice "
                             f"(first by {self._methods[name].module or '?'})")
        if states & (STARTUP | RUNTIME) == 0 or states & ~(STARTUP | RUNTIME):
            raise ValueError(f"RPC method {name!r}: states must be STARTUP, RUNTIME or both")
        if help is None:
            help = (handler.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            help = " ".join(help.split())
        m = Method(name=name, handler=handler, schema=_as_schema(params), states=states,
                   help=help, module=getattr(handler, "__module__", "") or "")
        self._methods[name] = m
        for alias in aliases:
            self.alias(alias, name)
        return m

    def method(self, name: str, params: Schema | Sequence[Param] | str | None = None,
               states: int = RUNTIME, help: str | None = None, aliases: Iterable[str] = ()):
        """Decorator form of :meth:`register`; returns the handler unchanged."""
        def deco(handler: Handler) -> Handler:
            self.register(name, handler, params=params, states=states, help=help,
                          aliases=aliases)
            return handler
        return deco

    def alias(self, alias: str, target: str, deprecated: bool = True) -> Method:
        """Register ``alias`` for ``target`` (SPDK_RPC_REGISTER_ALIAS_DEPRECATED)."""
        base = self._methods.get(target)
        if base is None:
            raise ValueError(f"cannot alias {alias!r}: method {target!r} does not exist")
        if base.alias_of is not None:
            raise ValueError(f"cannot alias {alias!r} to alias {target!r}")
        if alias in self._methods:
            raise ValueError(f"RPC method {alias!r} registered twice")
        m = Method(name=alias, handler=None, schema=base.schema, states=base.states,
                   help=f"deprecated alias of {target}", alias_of=target,
                   deprecated=deprecated, module=base.module)
        self._methods[alias] = m
        return m

    def copy_from(self, other: "MethodTable", names: Iterable[str]) -> None:
        """Serve ``other``'s methods ``names`` (and their aliases) from this table too."""
        names = set(names)
        for m in other:
            if m.name in names or m.alias_of in names:
                if m.name in self._methods:
                    raise ValueError(f"RPC method {m.name!r} registered twice")
                self._methods[m.name] = m

    def unregister(self, name: str) -> None:
        """Remove a method and its aliases (tests, module unload)."""
        self._methods.pop(name, None)
        for alias in [m.name for m in self._methods.values() if m.alias_of == name]:
            del self._methods[alias]

    # -- looking up ---------------------------------------------------------------------------
    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def resolve(self, name: str) -> Method | None:
        """The method that serves ``name`` (following an alias), or None."""
        m = self._methods.get(name)
        if m is not None and m.alias_of is not None:
            m = self._methods.get(m.alias_of)
        return m

    def names(self, include_aliases: bool = False, state: int | None = None) -> list[str]:
        return [m.name for m in self._methods.values()
                if (include_aliases or m.alias_of is None)
                and (state is None or m.allowed_in(state))]

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self):
        return iter(list(self._methods.values()))

    def __len__(self) -> int:
        return len(self._methods)


#: The process-wide table that ``@rpc_method`` fills and the server serves by default.
METHODS = MethodTable()


def rpc_method(name: str, params: Schema | Sequence[Param] | str | None = None,
               states: int = RUNTIME, help: str | None = None, aliases: Iterable[str] = ()):
    """Register the decorated ``handler(request, params)`` as JSON-RPC method ``name`` in the
    process-wide table.  ``params`` is a :class:`Schema` or a list of :class:`Param` (None: the
    method takes no parameters; ``RAW``: no validation).  ``states`` is STARTUP, RUNTIME or
    ``STARTUP | RUNTIME``.  ``help`` defaults to the handler docstring's first paragraph."""
    return METHODS.method(name, params=params, states=states, help=help, aliases=aliases)


def register_alias(alias: str, target: str, deprecated: bool = True) -> Method:
    return METHODS.alias(alias, target, deprecated)


# -- discovery --------------------------------------------------------------------------------
# Packages whose modules may declare methods.  Every module of them is imported (each must
# import without side effects); a module's methods are whatever its @rpc_method decorators
# registered, so nothing is read from source text and no list of modules is kept by hand.
_DISCOVER_PACKAGES = ("reactor", "bdev", "drivers", "targets")


def discover(packages: Sequence[str] = _DISCOVER_PACKAGES) -> list[tuple[str, str]]:
    """Import every module of ``packages`` (``__main__`` modules excepted), filling
    :data:`METHODS` with the methods they declare.

    Returns ``[(module, error)]`` for modules that failed to import (they are skipped, not
    fatal: one half-built module must not take down ``ringstack rpc``)."""
    failures: list[tuple[str, str]] = []

    def failed(name: str) -> None:
        exc = sys.exc_info()[1]
        failures.append((name, f"{type(exc).__name__}: {exc}"))

    for pkg_name in packages:
        try:
            pkg = importlib.import_module(pkg_name)
        except Exception:  # noqa: BLE001 - reported to the caller
            failed(pkg_name)
            continue
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + ".", onerror=failed):
            if info.name.rsplit(".", 1)[-1] == "__main__" or info.name in sys.modules:
                continue
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001
                failed(info.name)
    return failures


# -- built-in methods -------------------------------------------------------------------------
def _ringstack_version() -> str:
    try:
        from importlib.metadata import version
        return version("ringstack")
    except Exception:  # noqa: BLE001 - not installed: fall back to the source tree's version
        return "0.1.0"


def version_info() -> dict:
    """SPDK's spdk_get_version shape: {"version": str, "fields": {major, minor, patch, suffix}}."""
    raw = _ringstack_version()
    core, _, suffix = raw.partition("+")
    nums = []
    rest = ""
    for i, piece in enumerate(core.split(".")):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if digits and len(nums) < 3 and piece == digits:
            nums.append(int(digits))
        else:
            rest = "." .join(core.split(".")[i:])
            break
    while len(nums) < 3:
        nums.append(0)
    major, minor, patch = nums
    suffix = ("-" + rest if rest else "") + ("+" + suffix if suffix else "")
    # SPDK_VERSION_STRING: "SPDK v" MAJOR "." MINOR ["." PATCH if nonzero] SUFFIX
    text = f"ringstack v{major}.{minor}" + (f".{patch}" if patch else "") + suffix
    return {"version": text,
            "fields": {"major": major, "minor": minor, "patch": patch, "suffix": suffix}}


@rpc_method("rpc_get_methods", params=[
    Param("current", bool, default=False,
          help="list only the methods callable in the current state"),
    Param("include_aliases", bool, default=False, help="list deprecated aliases too"),
], states=STARTUP | RUNTIME, aliases=("get_rpc_methods",))
def _rpc_get_methods(request, params):
    """Get the list of supported RPC methods."""
    server = request.server
    state = server.state if params["current"] else None
    return server.table.names(include_aliases=params["include_aliases"], state=state)


@rpc_method("spdk_get_version", states=STARTUP | RUNTIME, aliases=("get_spdk_version",))
def _spdk_get_version(request, params):
    """Get the version (SPDK's shape: version string and major/minor/patch/suffix fields)."""
    return version_info()


__all__ = ["STARTUP", "RUNTIME", "STATE_NAMES", "RAW", "Method", "MethodTable", "METHODS",
           "rpc_method", "register_alias", "discover", "version_info", "Param", "ParamError",
           "Schema"]
