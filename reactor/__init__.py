"""ringstack's reactor: threads, pollers, messages, io_devices and channels, walks, and
the app that runs them in pinned processes.  This module is the user API; the pieces
live in thread.py (threads, pollers), io_channel.py (devices, channels, walks),
fanout.py (broadcast, gather, to_main: running something on every reactor), offload.py
(a blocking call on a worker thread, its outcome back on the calling thread), reactor.py
(the per-process loop and routing), testing.py (deterministic mode) and app.py (process
mode)."""
from .io_channel import (ChannelIter, IoChannel, for_each_channel, for_each_channel_continue,
                         for_each_reactor, for_each_thread, get_io_channel, io_channel_get_thread,
                         io_device_is_registered, io_device_register, io_device_unregister,
                         put_io_channel, send_msg)
from .reactor import Reactor, ThreadRef, current_reactor
from .thread import (MSG_BATCH_SIZE, POLLER_BUSY, POLLER_IDLE, Poller, Thread, ThreadError,
                     get_thread, poller_pause, poller_register, poller_resume, poller_unregister)
from .wire import remote
from . import fanout, offload
from .fanout import FanoutError, broadcast, gather, on_main_thread, to_main


def now_ns() -> int:
    """The current reactor's clock (monotonic ns; the mock clock in deterministic mode)."""
    return current_reactor().now()


def now_us() -> int:
    return current_reactor().now() // 1000


def watch_reactor_death(fn) -> None:
    """Run ``fn(index)`` on this reactor (its default thread's context) when the supervisor
    finds reactor ``index`` dead: the place to fail work that was handed to it."""
    current_reactor().death_watchers.append(fn)


def send_critical_msg(thread, fn) -> None:
    thread.send_critical_msg(fn)


def thread_exit(thread=None, cb=None) -> None:
    (thread or get_thread()).exit(cb)


__all__ = [n for n in dir() if not n.startswith("_")]
