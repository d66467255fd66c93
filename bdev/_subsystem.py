"""The "bdev" subsystem of the app: initialise the layer at start, finish it at stop."""
from reactor import subsystem

from . import iobuf  # noqa: F401  registers the "iobuf" subsystem, which bdev depends on
from ._lifecycle import finish, initialize, subsystem_config_json
from ._manager import get_manager


def _init(done) -> None:
    initialize(lambda _arg, rc: done(rc))


def _fini(done) -> None:
    if get_manager() is None:
        done()
        return
    finish(lambda _arg: done())


subsystem.register_subsystem("bdev", init=_init, fini=_fini, depends=("iobuf",),
                             write_config=lambda: subsystem_config_json() if get_manager() else [])
