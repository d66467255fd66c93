"""Subsystems (SPDK's lib/init): named parts of the app that initialise in dependency
order and finish in reverse.  ``init(done)`` and ``fini(done)`` run on the app thread and
call ``done(rc)`` / ``done()`` when finished, possibly later (initialisation is
asynchronous: the bdev subsystem, for one, waits for every module and every examine).

A subsystem may also take part in the JSON config: ``write_config()`` returns the list of
``{"method", "params"}`` entries that recreate its state (``save_config``), and the app
replays such lists through the RPC methods on load (``load_config``).
"""
from __future__ import annotations

import logging

log = logging.getLogger("ringstack.subsystem")


class Subsystem:
    def __init__(self, name, init=None, fini=None, depends=(), write_config=None):
        self.name = name
        self.init = init
        self.fini = fini
        self.depends = tuple(depends)
        self.write_config = write_config
        self.initialized = False

    def __repr__(self):
        return f"<Subsystem {self.name}>"


_registry: dict[str, Subsystem] = {}


def register_subsystem(name, init=None, fini=None, depends=(), write_config=None) -> Subsystem:
    """Register (or replace) a subsystem.  Every reactor imports the same modules, but
    subsystems initialise on the main reactor only."""
    s = Subsystem(name, init, fini, depends, write_config)
    _registry[name] = s
    return s


def unregister_subsystem(name) -> None:
    _registry.pop(name, None)


def ordered() -> list[Subsystem]:
    """Subsystems in dependency order (a dependency before its dependents, otherwise
    registration order).  A missing dependency or a cycle raises ValueError."""
    out, state = [], {}

    def visit(s, chain):
        st = state.get(s.name)
        if st == "done":
            return
        if st == "visiting":
            raise ValueError("subsystem dependency cycle: " + " -> ".join(chain + [s.name]))
        state[s.name] = "visiting"
        for dep in s.depends:
            if dep not in _registry:
                raise ValueError(f"subsystem {s.name!r} depends on unknown subsystem {dep!r}")
            visit(_registry[dep], chain + [s.name])
        state[s.name] = "done"
        out.append(s)

    for s in list(_registry.values()):
        visit(s, [])
    return out


def init_all(cb) -> None:
    """Initialise every subsystem in order, each after the previous called ``done(0)``;
    ``cb(rc)`` with the first non-zero rc, or 0."""
    try:
        todo = ordered()
    except ValueError as exc:
        log.error("%s", exc)
        cb(-22)
        return
    _init_next(todo, 0, cb)


def _init_next(todo, i, cb) -> None:
    while i < len(todo) and todo[i].init is None:
        todo[i].initialized = True
        i += 1
    if i == len(todo):
        cb(0)
        return
    s = todo[i]

    def done(rc=0):
        if rc:
            log.error("subsystem %s failed to initialise: %s", s.name, rc)
            cb(rc)
            return
        s.initialized = True
        _init_next(todo, i + 1, cb)

    try:
        s.init(done)
    except Exception:
        log.exception("subsystem %s init raised", s.name)
        cb(-5)


def fini_all(cb) -> None:
    """Finish the initialised subsystems in reverse order, then ``cb()``."""
    try:
        todo = [s for s in reversed(ordered()) if s.initialized]
    except ValueError:
        todo = [s for s in reversed(list(_registry.values())) if s.initialized]
    _fini_next(todo, 0, cb)


def _fini_next(todo, i, cb) -> None:
    while i < len(todo) and todo[i].fini is None:
        todo[i].initialized = False
        i += 1
    if i == len(todo):
        cb()
        return
    s = todo[i]

    def done(*_):
        s.initialized = False
        _fini_next(todo, i + 1, cb)

    try:
        s.fini(done)
    except Exception:
        log.exception("subsystem %s fini raised", s.name)
        done()


def write_config() -> list[dict]:
    """``save_config``'s subsystems list, in init order."""
    out = []
    for s in ordered():
        entries = s.write_config() if s.write_config else []
        out.append({"subsystem": s.name, "config": entries})
    return out
