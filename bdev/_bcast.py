"""The bdev layer's name for the reactor's fanout (reactor/fanout.py): broadcast to every
replica, the hop to the main thread, the walks a reactor's death cannot strand.  Kept so
the layer's call sites keep importing from here; the logic lives in reactor.fanout."""
import logging

from reactor.fanout import (EIO, FanoutError, broadcast, check, for_each_channel,  # noqa: F401
                            for_each_reactor, gather, on_main_thread, on_reactor_death, to_main)

from ._const import EINVAL

log = logging.getLogger("ringstack.bdev")


def replicable(handler, args=()) -> int:
    """0 if ``broadcast(handler, args)`` can reach every reactor, else -EINVAL (logged
    with the reason: an argument msgpack cannot encode, such as an integer >= 2**64, or a
    message larger than one ring record).  A control-plane change calls it *before*
    applying anything locally, so a change no replica could receive is refused whole
    (docs/architecture.md, All or nothing)."""
    try:
        check(handler, args)
    except FanoutError as exc:
        log.error("refused before anything was applied: %s", exc)
        return -EINVAL
    return 0
