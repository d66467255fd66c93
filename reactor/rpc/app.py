"""The app's own JSON-RPC methods: SPDK's ``framework_get_reactors``, ``thread_get_stats``,
``spdk_kill_instance``.  They run on the app thread (where the server is polled)."""
from __future__ import annotations

import errno
import signal

from reactor.rpc.registry import RUNTIME, STARTUP, rpc_method
from reactor.rpc.schema import Param
from reactor.stats import framework_get_reactors, thread_get_stats


@rpc_method("framework_get_reactors", states=RUNTIME)
def _framework_get_reactors(request, params):
    """Reactors with their busy/idle time and lightweight threads."""
    framework_get_reactors(request.result)


@rpc_method("thread_get_stats", states=RUNTIME)
def _thread_get_stats(request, params):
    """Every thread's busy/idle time and poller counts."""
    thread_get_stats(request.result)


_SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGQUIT": signal.SIGQUIT,
            "SIGHUP": signal.SIGHUP, "SIGKILL": signal.SIGKILL}


@rpc_method("spdk_kill_instance", params=[Param("sig_name", str, help="SIGINT, SIGTERM, ...")],
            states=STARTUP | RUNTIME)
def _spdk_kill_instance(request, params):
    """Send a signal to the app (SIGINT/SIGTERM: orderly shutdown)."""
    name = params["sig_name"].upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = _SIGNALS.get(name)
    if sig is None:
        request.errno(-errno.EINVAL)
        return
    from reactor.app import running_app
    app = running_app()
    request.result(True)
    if app is not None and sig in (signal.SIGINT, signal.SIGTERM):
        app.stop(0)
    else:
        import os
        os.kill(os.getpid(), sig)
