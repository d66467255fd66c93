"""ringstack's bdev layer: the port of SPDK's lib/bdev/bdev.c (seed/bdev.c).

``bdev`` (this package) re-exports the user API of :mod:`bdev.api`; module authors use
:mod:`bdev.module`.  See docs/bdev.md.
"""
from .api import *  # noqa: F401,F403
from .api import __all__  # noqa: F401
from . import _subsystem  # noqa: F401  registers the "bdev" subsystem
