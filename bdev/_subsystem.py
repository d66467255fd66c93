"""The "bdev" subsystem of the app: initialise the layer at start, finish it at stop."""
from reactor import subsystem

from . import _core


def _init(done) -> None:
    _core.initialize(lambda _arg, rc: done(rc))


def _fini(done) -> None:
    if _core.get_manager() is None:
        done()
        return
    _core.finish(lambda _arg: done())


subsystem.register_subsystem("bdev", init=_init, fini=_fini,
                             write_config=lambda: _core.subsystem_config_json() if _core.get_manager() else [])
