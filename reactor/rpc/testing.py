"""Test helper: drive an :class:`RpcServer` from a poll loop in a background thread.

The server itself never spawns anything; tests need *some* loop to call ``poll()`` while the
test body acts as a client.  :class:`ServerThread` is that loop: it polls the server, runs
registered pollers (so handlers can complete requests "from a later poll"), and sleeps on the
server's epoll fd when idle.  Everything touching the server runs on the loop thread; the test
thread talks to it only through sockets, :meth:`ServerThread.run_in_loop` and
:meth:`ServerThread.later`.  Every wait is bounded.

    with ServerThread(path, table=table) as st:
        RpcClient(path).call("spdk_get_version")
"""
from __future__ import annotations

import os
import select
import threading
from collections import deque
from typing import Any, Callable

from reactor.rpc.registry import RUNTIME, MethodTable
from reactor.rpc.server import RpcServer


class ServerThread:
    def __init__(self, path: str, table: MethodTable | None = None, state: int = RUNTIME,
                 idle_sleep: float = 0.05):
        self.server = RpcServer(path, table=table, state=state)
        self.idle_sleep = idle_sleep
        self.iterations = 0
        self._stop = False
        self._calls: deque[Callable[[], Any]] = deque()
        self._timers: list[list] = []       # [iterations_left, fn], touched on the loop only
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rpc-test-loop", daemon=True)
        self._thread.start()

    # -- scheduling onto the loop -------------------------------------------------------------
    def later(self, iterations: int, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the loop after ``iterations`` more loop passes.  Call from the loop
        thread (e.g. inside a handler)."""
        self._timers.append([max(0, int(iterations)), fn])

    def run_in_loop(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the loop thread and return its result (bounded wait)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc
            done.set()
        self._calls.append(call)
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("loop did not run the call in time")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                self.iterations += 1
                work = self.server.poll()
                while self._calls:
                    self._calls.popleft()()
                    work += 1
                if self._timers:
                    due = []
                    for t in self._timers:
                        if t[0] <= 0:
                            due.append(t)
                        else:
                            t[0] -= 1
                    for t in due:
                        self._timers.remove(t)
                        t[1]()
                        work += 1
                    if self._timers:
                        work += 1          # timers pending: keep spinning
                if not work:
                    r, _, _ = select.select([self.server.fileno(), self._wake_r], [], [],
                                            self.idle_sleep)
                    if self._wake_r in r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self._error = exc

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, close the server (removing its socket) and re-raise a loop crash."""
        if self._thread.is_alive():
            self._stop = True
            self._wake()
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("RPC test loop did not stop")
        self.server.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
