"""JSON config (SPDK's format) and the framework RPCs around it.

A config is what ``save_config`` prints and ``ringstack start -c`` loads::

    {"subsystems": [{"subsystem": "bdev",
                     "config": [{"method": "bdev_malloc_create",
                                 "params": {"name": "Malloc0", "num_blocks": 256,
                                            "block_size": 512}}]}]}

Loading replays the entries, in order, through the RPC method table (:meth:`RpcServer.
call_local`: same state checks, validation and handlers as a socket request), one at a time,
each after the previous answered.  As SPDK's lib/init/json_config.c does, when the server is in
STARTUP state the entries allowed in STARTUP run first, then the framework is initialised
(``framework_start_init``), then the remaining RUNTIME entries run.  The first failing entry
stops the load (but, as SPDK does, an entry whose method is unknown and whose subsystem this
application does not have -- ``iscsi``, ``nvmf``, ``accel`` ... -- is skipped with a warning;
``/* */`` and ``//`` comments are allowed, as SPDK's parser allows them); the error names it (``subsystems[0] (bdev) config[2] bdev_malloc_create: -17
File exists``).  An entry ``[...]`` (a batch, SPDK's ``with_batches``) runs its members in order.

Methods registered here (SPDK's names and shapes):

* ``framework_start_init`` (STARTUP): initialise the subsystems, then switch the RPC state to
  RUNTIME.  The initialisation itself is a hook the app sets with
  :func:`set_framework_init_hook` (default: ``reactor.subsystem.init_all``).
* ``framework_wait_init`` (STARTUP|RUNTIME): answers ``true`` once the state is RUNTIME.
* ``framework_get_subsystems`` / ``framework_get_config{name}`` (RUNTIME), which SPDK's own
  ``rpc.py save_config`` uses.
* ``save_config`` (RUNTIME) returns the whole config; ``load_config{subsystems}``
  (STARTUP|RUNTIME) applies one, so ``ringstack rpc save_config > c.json`` and
  ``ringstack rpc load_config - < c.json`` round-trip.
"""
from __future__ import annotations

import errno
import json
import logging
from typing import Any, Callable

from reactor.rpc.registry import RUNTIME, STARTUP, rpc_method
from reactor.rpc.schema import Param

log = logging.getLogger("ringstack.rpc")

InitHook = Callable[[Callable[[int], None]], None]


def _default_init_hook(done: Callable[[int], None]) -> None:
    from reactor import subsystem
    subsystem.init_all(done)


_init_hook: InitHook = _default_init_hook
_init_in_progress: set[int] = set()


def set_framework_init_hook(hook: InitHook | None) -> None:
    """Set what ``framework_start_init`` runs: ``hook(done)`` initialises the framework and
    calls ``done(rc)`` (0 on success, a negative errno on failure), possibly later.  The app
    sets this when it runs with ``--wait-for-rpc``; None restores the default
    (``reactor.subsystem.init_all``)."""
    global _init_hook
    _init_hook = hook or _default_init_hook


def _subsystems():
    from reactor import subsystem
    return subsystem.ordered()


# -- framework RPCs ---------------------------------------------------------------------------
@rpc_method("framework_start_init", states=STARTUP)
def _framework_start_init(request, params):
    """Start initialization of subsystems (with --wait-for-rpc)."""
    server = request.server
    if id(server) in _init_in_progress:
        request.errno(-errno.EALREADY)
        return

    def done(rc: int = 0) -> None:
        _init_in_progress.discard(id(server))
        if rc:
            log.error("framework_start_init: initialization failed: %s", rc)
            request.error(-32603, "framework_initialization failed")
            return
        server.set_state(RUNTIME)
        request.result(True)

    _init_in_progress.add(id(server))
    try:
        _init_hook(done)
    except Exception:
        _init_in_progress.discard(id(server))
        raise


#: What framework_wait_init waits for.  The app replaces it while it still replays the
#: RUNTIME entries of its start-up config, so "initialised" means "ready to use".
_ready_probe: Callable[[Any], bool] = lambda server: server.state == RUNTIME
_ready_waiters: list = []


def set_ready_probe(probe: Callable[[Any], bool] | None) -> None:
    """Set what ``framework_wait_init`` waits for (None: the RUNTIME state)."""
    global _ready_probe
    _ready_probe = probe or (lambda server: server.state == RUNTIME)


def notify_ready(server) -> None:
    """Answer the ``framework_wait_init`` calls that were waiting, if ready now."""
    server = getattr(server, "dispatcher", server)     # an RpcServer: its dispatcher
    if not _ready_probe(server):
        return
    waiting = [r for r in _ready_waiters if r.server is server]
    for r in waiting:
        _ready_waiters.remove(r)
        if not r.done:
            r.result(True)


@rpc_method("framework_wait_init", states=STARTUP | RUNTIME)
def _framework_wait_init(request, params):
    """Block until subsystems have been initialized."""
    server = request.server
    if _ready_probe(server):
        request.result(True)
        return
    if _on_state not in server.state_listeners:      # once per server
        server.state_listeners.append(_on_state)
    _ready_waiters.append(request)


def _on_state(server, state) -> None:
    notify_ready(server)


@rpc_method("framework_get_subsystems")
def _framework_get_subsystems(request, params):
    """Get the subsystems in initialization order, with their dependencies."""
    return [{"subsystem": s.name, "depends_on": list(s.depends)} for s in _subsystems()]


@rpc_method("framework_get_config", params=[
    Param("name", str, help="subsystem name"),
    Param("with_batches", bool, default=False, help="accepted for SPDK compatibility"),
])
def _framework_get_config(request, params):
    """Get the configuration (list of method/params entries) of one subsystem."""
    for s in _subsystems():
        if s.name == params["name"]:
            return _subsystem_entries(s)
    request.error(-32602, f"Subsystem '{params['name']}' not found")


def _subsystem_entries(s) -> list:
    entries = s.write_config() if s.write_config else []
    return list(entries or [])


def save_config_dict() -> dict:
    """The running configuration as SPDK's JSON config dict."""
    return {"subsystems": [{"subsystem": s.name, "config": _subsystem_entries(s)}
                           for s in _subsystems()]}


@rpc_method("save_config")
def _save_config(request, params):
    """Get the whole running configuration in SPDK's JSON config format."""
    return save_config_dict()


@rpc_method("load_config", params=[
    Param("subsystems", list, items=dict, help="SPDK JSON config subsystems list"),
], states=STARTUP | RUNTIME)
def _load_config(request, params):
    """Apply a JSON config (as save_config returns): replay its entries in order."""
    def done(rc: int, message: str | None) -> None:
        if rc:
            request.error(rc, message or "load_config failed")
        else:
            request.result(True)
    ConfigLoader(request.server, {"subsystems": params["subsystems"]}, done).start()


# -- loading ----------------------------------------------------------------------------------
class ConfigError(ValueError):
    """The config is not in SPDK's JSON config format; the message names the entry."""


def read_config(path: str) -> dict:
    """Read and check a JSON config file; raise ConfigError with a one-line message."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        config = json.loads(strip_comments(text))
    except ValueError as exc:
        raise ConfigError(f"config {path} is not valid JSON: {exc}") from None
    entries(config)        # shape check
    return config


def strip_comments(text: str) -> str:
    """``text`` with its ``/* ... */`` and ``// ...`` comments (outside strings) blanked out:
    SPDK parses its JSON configs with SPDK_JSON_PARSE_FLAG_ALLOW_COMMENTS.  Blanking keeps
    line and column numbers of JSON errors right.  An unterminated ``/*`` is left in place
    (the JSON parser then reports it)."""
    if "/" not in text:
        return text
    out: list[str] = []
    i, n, in_str = 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            if c == "\\":
                out.append(text[i:i + 2])
                i += 2
                continue
            in_str = c != '"'
        elif c == '"':
            in_str = True
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
            continue
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end >= 0:
                out.append("".join(ch if ch == "\n" else " " for ch in text[i:end + 2]))
                i = end + 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _unlinked(sub_name: str, method: str, table) -> bool:
    """SPDK's rule (lib/init/json_config.c): an entry whose method is unknown is skipped, not
    an error, when its subsystem is not in this application (a config saved by nvmf_tgt
    loaded into bdevperf, say); an unknown method of a subsystem we have stays an error."""
    from reactor import subsystem
    return table.resolve(method) is None and sub_name not in subsystem._registry


def entries(config: Any, table=None,
            skipped: list | None = None) -> list[tuple[str, str, dict | None]]:
    """Flatten a config to ``[(label, method, params)]`` in load order, checking its shape.
    Entries of subsystems this application lacks, with methods ``table`` (default: the
    process-wide one) does not know, are left out (listed in ``skipped`` when given)."""
    if not isinstance(config, dict) or not isinstance(config.get("subsystems"), list):
        raise ConfigError('config must be an object with a "subsystems" array')
    if table is None:
        from reactor.rpc.registry import METHODS as table
    out = []
    for i, sub in enumerate(config["subsystems"]):
        if not isinstance(sub, dict) or not isinstance(sub.get("subsystem"), str):
            raise ConfigError(f'subsystems[{i}] must be an object with a "subsystem" name')
        cfg = sub.get("config")
        if cfg is None:
            continue
        if not isinstance(cfg, list):
            raise ConfigError(f"subsystems[{i}] ({sub['subsystem']}): config must be an array")
        for j, entry in enumerate(cfg):
            members = entry if isinstance(entry, list) else [entry]
            for k, e in enumerate(members):
                label = f"subsystems[{i}] ({sub['subsystem']}) config[{j}]" + \
                    (f"[{k}]" if isinstance(entry, list) else "")
                if not isinstance(e, dict) or not isinstance(e.get("method"), str):
                    raise ConfigError(f'{label}: entry must be an object with a "method" string')
                extra = set(e) - {"method", "params"}
                if extra:
                    raise ConfigError(f"{label}: unexpected member {sorted(extra)[0]!r}")
                params = e.get("params")
                if params is not None and not isinstance(params, dict):
                    raise ConfigError(f"{label} {e['method']}: params must be an object")
                if _unlinked(sub["subsystem"], e["method"], table):
                    if skipped is not None:
                        skipped.append((sub["subsystem"], e["method"]))
                    continue
                out.append((label, e["method"], params))
    return out


class ConfigLoader:
    """Replays a config through ``server.call_local``; ``done(rc, message)`` once at the end
    (rc 0: loaded; otherwise a negative errno or JSON-RPC code with a message naming the
    failing entry).  With ``start_init`` (default) a load that begins in STARTUP state calls
    ``framework_start_init`` between the STARTUP and RUNTIME entries; without it the load stops
    after the STARTUP entries and ``remaining`` lists the rest.
    """

    def __init__(self, server, config: Any, done: Callable[[int, str | None], None],
                 start_init: bool = True):
        self.server = server
        self.config = config
        self.done_cb = done
        self.start_init = start_init
        self.todo: list[tuple[str, str, dict | None]] = []
        self.remaining: list[tuple[str, str, dict | None]] = []
        self.skipped: list[str] = []
        self.unlinked: list[tuple[str, str]] = []     # (subsystem, method) not in this app
        self.finished = False
        self._phase = "first"
        self._in_call = False
        self._sync_done = False
        self._error: tuple[int, str] | None = None

    def start(self) -> "ConfigLoader":
        unlinked: list = []
        try:
            self.todo = entries(self.config, self.server.table, unlinked)
        except ConfigError as exc:
            self._finish(-errno.EINVAL, str(exc))
            return self
        for name in dict.fromkeys(sub for sub, _ in unlinked):
            methods = [m for sub, m in unlinked if sub == name]
            log.warning("config: skipping subsystem '%s' (not in this application): %s",
                        name, ", ".join(methods))
        self.unlinked = unlinked
        table = self.server.table
        for label, method, _ in self.todo:
            if table.resolve(method) is None:
                self._finish(-32601, f"{label}: unknown method '{method}'")
                return self
        self._run()
        return self

    def _finish(self, rc: int, message: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        if rc:
            log.error("config load failed: %s", message)
        elif self.skipped:
            log.warning("config: skipped entries not allowed in the current state: %s",
                        ", ".join(self.skipped))
        self.done_cb(rc, message)

    def _next_entry(self):
        state = self.server.state
        while self.todo:
            label, method, params = self.todo.pop(0)
            m = self.server.table.resolve(method)
            if m.allowed_in(state):
                return label, method, params
            if state == STARTUP:
                self.remaining.append((label, method, params))   # after framework init
            else:
                self.skipped.append(f"{label} {method}")
        return None

    def _run(self) -> None:
        # A trampoline: entries that complete synchronously loop here instead of recursing.
        while not self.finished:
            nxt = self._next_entry()
            if nxt is None:
                if not self._end_phase():
                    return
                continue
            label, method, params = nxt
            self._in_call, self._sync_done, self._error = True, False, None

            def cb(err, result, label=label, method=method):
                if err is not None:
                    self._error = (err.get("code", -1), f"{label} {method}: "
                                   f"{err.get('code')} {err.get('message')}")
                if self._in_call:
                    self._sync_done = True
                    return
                if self._error:
                    self._finish(*self._error)
                    return
                self._run()

            self.server.call_local(method, params, cb)
            self._in_call = False
            if not self._sync_done:
                return                 # answered later: cb resumes
            if self._error:
                self._finish(*self._error)
                return

    def _end_phase(self) -> bool:
        """All entries of this phase ran.  Return True to keep looping."""
        if self._phase == "first" and self.remaining and self.server.state == STARTUP:
            if not self.start_init:
                self._finish(0, None)
                return False
            self._phase = "init"
            self.todo, self.remaining = self.remaining, []

            def init_done(err, result):
                if err is not None:
                    self._finish(err.get("code", -1),
                                 f"framework_start_init: {err.get('code')} {err.get('message')}")
                    return
                if self.server.state == STARTUP:   # a hook that does not switch state
                    self.server.set_state(RUNTIME)
                self._phase = "second"
                if self._in_call:
                    self._sync_done = True
                    return
                self._run()

            if self.server.table.get("framework_start_init") is None:
                self.server.set_state(RUNTIME)
                self._phase = "second"
                return True
            self._in_call, self._sync_done = True, False
            self.server.call_local("framework_start_init", None, init_done)
            self._in_call = False
            return self._sync_done and not self.finished
        self._finish(0, None)
        return False


def load_config(server, config: Any, done: Callable[[int, str | None], None],
                start_init: bool = True) -> ConfigLoader:
    """Apply ``config`` (a dict in SPDK's JSON config format) through ``server``'s methods;
    ``done(rc, message)`` when finished (see :class:`ConfigLoader`)."""
    return ConfigLoader(server, config, done, start_init).start()


#: The methods this module registers (tests copy them into private tables).
CONFIG_METHODS = ("framework_start_init", "framework_wait_init", "framework_get_subsystems",
                  "framework_get_config", "save_config", "load_config")

__all__ = ["ConfigError", "ConfigLoader", "load_config", "read_config", "entries",
           "save_config_dict", "set_framework_init_hook", "CONFIG_METHODS"]
