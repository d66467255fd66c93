"""The bdev layer's name for the reactor's fanout (reactor/fanout.py): broadcast to every
replica, the hop to the main thread, the walks a reactor's death cannot strand.  Kept so
the layer's call sites keep importing from here; the logic lives in reactor.fanout."""
from reactor.fanout import (EIO, FanoutError, broadcast, check, for_each_channel,  # noqa: F401
                            for_each_reactor, gather, on_main_thread, on_reactor_death, to_main)
