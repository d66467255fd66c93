"""Process mode: the app, its reactor processes, the loop that drives them, supervision.

``App(cpumask="0x3").run(main)`` turns the calling process into reactor 0 (the main
reactor: app thread, control plane) pinned to the mask's first core, and starts one
reactor process per other core, each pinned to its core.  The calling process is also
the launcher: it owns every shared-memory object of the instance (segments, semaphores,
wake FIFOs), supervises the other reactors, and unlinks everything on every way out.

Start method: reactors are started with ``subprocess.Popen`` of a fresh interpreter
(the "spawn" model), never ``fork``: the launcher may already run threads (an embedding
program's, a logging handler's), and a forked child would inherit their locks in
whatever state they were in.  The child learns what to do from a JSON spec on its
stdin (never pickle), imports the modules that register its message handlers (the
``imports`` list, and the main script as ``__mp_main__`` the way multiprocessing's
spawn does), attaches the ring mesh, and runs its loop.

Lifecycle: start -> every reactor reports ready -> subsystems init (in dependency
order) and the JSON config replayed through the app's RPC dispatcher -> the RPC socket
opens (SPDK's order; with ``wait_for_rpc`` it opens at once, in the STARTUP state) ->
``main`` runs on the app thread.  ``app_stop(rc)`` (or SIGINT/SIGTERM) ->
the app's shutdown callback -> subsystems fini in reverse -> every reactor exits its
threads and its loop -> the launcher reaps the processes and unlinks the segments.
A reactor that dies is noticed by the supervisor poller within 100 ms: the others are
told, the instance shuts down with a non-zero exit code and a message naming the
reactor, and nothing is left in /dev/shm.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

from ipc import codec
from ipc.mesh import Mesh
from ipc.ring import Producer, Ring
from ipc.shm import Instance, reap_dead_instances

from . import reactor as _r
from . import thread as _t
from .io_channel import send_msg
from .reactor import Reactor
from .waker import FifoDoorbell, create_fifo, fifo_path
from .wire import remote

log = logging.getLogger("ringstack.app")

#: Modules every reactor imports so their @remote handlers exist everywhere.
DEFAULT_IMPORTS = ("reactor.io_channel", "reactor.app", "reactor.subsystem", "reactor.stats")


#: Adaptive mode: consecutive idle time before a reactor sleeps (spinning this long keeps
#: latency at ring speed under load; sleeping after it keeps idle reactors at ~0% CPU).
IDLE_SPIN_NS = 200_000
#: Longest sleep when an active poller exists that is not fd-driven (bounded latency).
ACTIVE_POLLER_MAX_SLEEP_S = 0.001
#: Longest sleep otherwise (keeps the supervisor and parent-death checks alive).
MAX_SLEEP_S = 0.1
SUPERVISE_PERIOD_US = 100_000
#: Shutdown bounds: subsystem fini on the main reactor, then threads' exit on the others.
#: Normally both take milliseconds; they matter when a reactor died mid-flight and the
#: replies some fini waits for will never come.
FINI_TIMEOUT_S = 5.0
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 3.0
RING_CAPACITY = _r.DEFAULT_RING_CAPACITY

POLL, ADAPTIVE = "poll", "adaptive"
_PROJECT_PACKAGES = ("reactor", "bdev", "ipc", "drivers", "targets", "tools")


class AppError(Exception):
    """A start-up or run-time failure of the app, reported as one line."""


# ------------------------------------------------------------------------ cpumask
def parse_cpumask(spec) -> list[int]:
    """Cores of an SPDK-style mask: ``0x3``, ``3`` (hex without 0x, as SPDK), ``[0,1]``,
    ``[0-3,6]``, or a list of ints.  Raises ValueError with a clear message."""
    if isinstance(spec, (list, tuple)):
        cores = [int(c) for c in spec]
    else:
        s = str(spec).strip()
        if s.startswith("[") and s.endswith("]"):
            cores = []
            for part in filter(None, (p.strip() for p in s[1:-1].split(","))):
                m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
                if not m:
                    raise ValueError(f"invalid core list entry {part!r} in cpumask {s!r}")
                lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
                if hi < lo:
                    raise ValueError(f"invalid core range {part!r} in cpumask {s!r}")
                cores.extend(range(lo, hi + 1))
        else:
            try:
                mask = int(s, 16)
            except ValueError:
                raise ValueError(f"invalid cpumask {s!r}: expected hex like 0x3 or a list like [0,1]") from None
            cores = [i for i in range(mask.bit_length()) if mask >> i & 1]
    cores = sorted(set(cores))
    if not cores:
        raise ValueError(f"cpumask {spec!r} selects no core")
    if any(c < 0 for c in cores):
        raise ValueError(f"cpumask {spec!r} names a negative core")
    return cores


def check_cores_available(cores: list[int]) -> None:
    allowed = os.sched_getaffinity(0)
    missing = [c for c in cores if c not in allowed]
    if missing:
        raise ValueError(f"core(s) {missing} not available (this process may use {sorted(allowed)})")


def _pin(core: int) -> None:
    try:
        os.sched_setaffinity(0, {core})
    except OSError as exc:
        log.warning("cannot pin to core %d: %s", core, exc)


def _set_parent_death_signal(sig=signal.SIGKILL) -> None:
    """Linux prctl(PR_SET_PDEATHSIG): a reactor must not outlive its launcher."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # not Linux: the loop's parent check still ends it
        pass


# --------------------------------------------------------------------- transport
class RingTransport:
    """The process-mode transport: one SPSC ring per ordered pair of reactors.

    ``send`` encodes the message (so a bad argument fails at the call) and queues it
    locally; ``flush`` (end of each loop pass) joins each destination's queued messages
    into batch records (``codec.batch_header`` + the encoded messages: the receiver
    decodes a whole batch with one ``unpackb``), publishes them with a single tail store
    and rings the destination's doorbell if it sleeps.  A full ring keeps the rest in the
    producer's overflow for the next pass.  ``drain`` takes bounded batches of records."""

    #: Messages per batch record: big enough to amortise framing and decoding, small
    #: enough that a batch never approaches a ring's largest record.
    BATCH = 64

    def __init__(self, mesh: Mesh, index: int, doorbells: list[FifoDoorbell]):
        self.mesh = mesh
        self.index = index
        self.producers: dict[int, Producer] = {
            j: Producer(mesh.ring(index, j), doorbells[j]) for j in range(mesh.n) if j != index}
        self.queued: dict[int, list] = {j: [] for j in self.producers}
        self.dirty: set[int] = set()       # destinations with messages or overflow queued
        self.inbound = [ring for _, ring in mesh.inbound(index)]
        self.max_record = Ring.max_record_for(mesh.capacity)
        self._single = self.inbound[0] if len(self.inbound) == 1 else None

    def send(self, dest: int, record: bytes) -> None:
        if len(record) > self.producers[dest].max_record:
            raise ValueError(f"message of {len(record)} bytes is larger than a ring record "
                             f"({self.producers[dest].max_record} bytes); pass data through an arena")
        self.queued[dest].append(record)
        self.dirty.add(dest)

    def drain(self, max_records: int):
        single = self._single
        if single is not None:          # the 2-reactor case: one inbound ring
            return single.drain(max_records) if single.readable() else ()
        out = []
        for ring in self.inbound:
            if ring.readable():
                out.extend(ring.drain(max_records - len(out)))
                if len(out) >= max_records:
                    break
        return out

    def pending(self) -> bool:
        if self.dirty:
            return True
        return any(ring.readable() for ring in self.inbound)

    def flush(self) -> int:
        dirty = self.dirty
        if not dirty:
            return 0
        left = set()
        for dest in dirty:
            producer = self.producers[dest]
            msgs = self.queued[dest]
            if msgs:
                self.queued[dest] = []
                self._pack(producer, msgs)
            if not producer.flush():
                left.add(dest)  # ring full: the producer keeps the overflow, retry next pass
        self.dirty = left
        return 1

    def _pack(self, producer: Producer, msgs: list) -> None:
        if len(msgs) == 1:
            producer.send(msgs[0])
            return
        limit = producer.max_record - 8
        step = self.BATCH
        for i in range(0, len(msgs), step):
            chunk = msgs[i:i + step]
            body = b"".join(chunk)
            while len(body) > limit and len(chunk) > 1:   # large messages: smaller batches
                half = len(chunk) // 2
                self._pack(producer, chunk[:half])
                chunk = chunk[half:]
                body = b"".join(chunk)
            producer.send(codec.batch_header(len(chunk)) + body if len(chunk) > 1 else body)


# -------------------------------------------------------------------------- loop
class Loop:
    """Drives one reactor: poll, and in adaptive mode sleep when idle (see module doc)."""

    def __init__(self, reactor: Reactor, doorbell: FifoDoorbell, mode: str):
        self.reactor = reactor
        self.doorbell = doorbell
        self.mode = mode
        self.fds: dict[int, object] = {}     # fds whose readability should wake us
        self.stopping = False
        self.checks = []                     # callables run once per wake-up (signals, parent)

    def watch_fd(self, fd: int) -> None:
        self.fds[fd] = True

    def unwatch_fd(self, fd: int) -> None:
        self.fds.pop(fd, None)

    def run(self) -> None:
        r = self.reactor
        clock = time.monotonic_ns
        poll_once = r.poll_once
        idle_since = None
        spin = self.mode == POLL
        while r.running:
            now = clock()
            if poll_once(now):
                idle_since = None
                continue
            if spin:
                continue
            if idle_since is None:
                idle_since = now
                continue
            if now - idle_since < IDLE_SPIN_NS:
                continue
            self._sleep(clock())
            idle_since = None
            for check in self.checks:
                check()

    def _sleep(self, now: int) -> None:
        r = self.reactor
        deadline = r.next_deadline()
        timeout = MAX_SLEEP_S
        if deadline is not None:
            timeout = min(timeout, max(0.0, (deadline - now) / 1e9))
        if any(t.has_active_pollers() for t in r.threads):
            timeout = min(timeout, ACTIVE_POLLER_MAX_SLEEP_S)
        if timeout <= 0:
            return
        bell = self.doorbell
        bell.prepare_sleep()
        # re-check after announcing: a producer that published before seeing the flag
        # is caught here; one that publishes after will see the flag and ring.
        if r.has_queued_work():
            bell.cancel_sleep()
            return
        fds = list(self.fds)
        for t in r.threads:
            fds.extend(t.watched_fds())
        ready = bell.sleep(timeout, fds)
        if ready:
            now = time.monotonic_ns()
            for t in r.threads:
                t.fd_ready(ready, now)


_loop: Loop | None = None


def current_loop() -> Loop:
    if _loop is None:
        raise _t.ThreadError("no reactor loop in this process")
    return _loop


# ------------------------------------------------------------------ control plane
@remote("reactor.ready")
def _reactor_ready(index: int, pid: int) -> None:
    app = App._running
    if app is not None:
        app._on_reactor_ready(index, pid)


@remote("reactor.exit")
def _reactor_exit() -> None:
    """Sent to each non-main reactor's default thread at shutdown: exit every thread,
    then leave the loop."""
    r = _r.current_reactor()
    for t in list(r.threads):
        t.exit()
    r.on_thread_exited = lambda t: _stop_if_empty(r)
    _stop_if_empty(r)
    if r.running:
        # Threads leave only once their pollers and channels are gone; after a peer died
        # some never will (their subsystem fini could not finish).  Bound the wait.
        import threading

        def force():
            if r.running:
                log.warning("reactor %d: threads %s did not exit in %.0f s; leaving anyway",
                            r.index, [t.name for t in r.threads], EXIT_TIMEOUT_S)
                r.running = False
                if _loop is not None:
                    _loop.doorbell.wake()
        timer = threading.Timer(EXIT_TIMEOUT_S, force)
        timer.daemon = True
        timer.start()


def _stop_if_empty(r: Reactor) -> None:
    if not r.threads:
        r.running = False


@remote("reactor.peer_died")
def _peer_died(index: int, why: str) -> None:
    r = _r.current_reactor()
    log.error("reactor %d: peer reactor %d died (%s)", r.index, index, why)
    r.mark_dead(index)


# -------------------------------------------------------------------------- child
def _child_main() -> None:
    """Entry point of a non-main reactor process (spec as JSON on stdin)."""
    spec = json.loads(sys.stdin.readline())
    logging.basicConfig(level=spec.get("log_level", logging.WARNING),
                        format=f"[reactor {spec['index']}] %(levelname)s %(name)s: %(message)s")
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the launcher handles Ctrl-C for all
    _pin(spec["core"])
    _prepare_imports(spec)
    mesh = Mesh.attach(spec["mesh"])
    index = spec["index"]
    bells = [FifoDoorbell(mesh._doorbell_region(j), fifo_path(spec["owner"], j), consumer=(j == index))
             for j in range(mesh.n)]
    transport = RingTransport(mesh, index, bells)
    r = Reactor(index, spec["core"], mesh.n, transport, time.monotonic_ns)
    r.create_thread(f"reactor_{index}")
    _r._process_reactor = r
    global _loop
    _loop = Loop(r, bells[index], spec["mode"])
    parent = os.getppid()

    def parent_alive():
        if os.getppid() != parent:
            r.running = False
    _loop.checks.append(parent_alive)
    r.send(r.default_tid(0), _reactor_ready, (index, os.getpid()))
    rc = 0
    try:
        _loop.run()
    except Exception:
        log.exception("reactor %d crashed", index)
        rc = 1
    finally:
        try:
            transport.flush()
        except Exception:
            pass
        for b in bells:
            b.close()
        mesh.close()
    sys.stdout.flush()
    os._exit(rc)


def _prepare_imports(spec) -> None:
    import importlib
    prep = spec.get("main")
    if prep:
        import multiprocessing.spawn as mps
        mps.prepare(prep)       # imports the launcher's main script as __mp_main__
    for mod in spec["imports"]:
        try:
            importlib.import_module(mod)
        except ImportError as exc:   # e.g. an optional extra the launcher had and we lack
            log.warning("reactor %d: cannot import %s: %s", spec["index"], mod, exc)
    if spec.get("discover"):
        from . import rpc
        rpc.discover()   # the same modules (and so the same @remote handlers) as reactor 0


def _main_preparation() -> dict | None:
    """What a child needs to import the launcher's main script (as multiprocessing's
    spawn does), restricted to JSON-safe fields."""
    import multiprocessing.spawn as mps
    data = mps.get_preparation_data("ringstack-reactor")
    keep = {k: data[k] for k in ("sys_path", "sys_argv", "dir", "orig_dir",
                                 "init_main_from_path", "init_main_from_name") if k in data}
    return keep if ("init_main_from_path" in keep or "init_main_from_name" in keep) else {
        k: keep[k] for k in ("sys_path", "dir") if k in keep}


# ---------------------------------------------------------------------------- app
class App:
    """An app instance in process mode.  See the module docstring."""

    _running: "App | None" = None

    def __init__(self, cpumask="0x1", *, mode: str = ADAPTIVE, imports=(), name: str = "ringstack",
                 shutdown_cb=None, ring_capacity: int = RING_CAPACITY, log_level=logging.WARNING,
                 rpc_socket: str | None = None, config=None, wait_for_rpc: bool = False):
        """``rpc_socket``: serve JSON-RPC there (SPDK's methods) from the app thread.
        ``config``: an SPDK JSON config (dict or path) replayed through the RPC methods at
        start.  ``wait_for_rpc``: stay in the STARTUP state until ``framework_start_init``."""
        if mode not in (POLL, ADAPTIVE):
            raise AppError(f"mode must be {POLL!r} or {ADAPTIVE!r}, not {mode!r}")
        try:
            self.cores = parse_cpumask(cpumask)
        except ValueError as exc:
            raise AppError(str(exc)) from None
        self.mode = mode
        self.imports = list(DEFAULT_IMPORTS) + [m for m in imports if m not in DEFAULT_IMPORTS]
        self.name = name
        self.shutdown_cb = shutdown_cb
        self.ring_capacity = ring_capacity
        self.log_level = log_level
        self.rc = 0
        self.error: str | None = None
        self.rpc_socket = rpc_socket
        self.wait_for_rpc = wait_for_rpc
        self.config_label = config if isinstance(config, str) else "config"
        self.config = _read_config(config) if isinstance(config, str) else config
        self.dispatcher = None     # runs RPC methods from the start (config, socket requests)
        self.server = None         # the RPC socket: claimed at start, listening once ready
        self.initialized = False
        self._config_done = False
        if (self.config is not None or wait_for_rpc) and rpc_socket is None:
            raise AppError("a JSON config or --wait-for-rpc needs an RPC socket (-r)")
        self.procs: dict[int, subprocess.Popen] = {}
        self.ready: set[int] = set()
        self.reactor: Reactor | None = None
        self.app_thread = None
        self._main = None
        self._stopping = False
        self._signal = None
        self._exiting_children = False
        self._fini_done = False

    @property
    def n_reactors(self) -> int:
        return len(self.cores)

    # -- public
    def run(self, main=None, *args) -> int:
        """Start every reactor, run ``main(*args)`` on the app thread once initialised,
        and block until the app stops.  Returns the exit code (0 = clean)."""
        if App._running is not None:
            raise AppError("an app is already running in this process")
        try:
            check_cores_available(self.cores)
        except ValueError as exc:
            raise AppError(str(exc)) from None
        reap_dead_instances()
        saved_affinity = os.sched_getaffinity(0)
        App._running = self
        self._main = (main, args)
        instance = Instance()
        mesh = None
        bells = []
        fifos = []
        old_handlers = {}
        try:
            mesh = Mesh.create(instance, self.n_reactors, self.ring_capacity)
            fifos = [create_fifo(instance.pid, j) for j in range(self.n_reactors)]
            bells = [FifoDoorbell(mesh._doorbell_region(j), fifos[j], consumer=(j == 0))
                     for j in range(self.n_reactors)]
            transport = RingTransport(mesh, 0, bells)
            r = Reactor(0, self.cores[0], self.n_reactors, transport, time.monotonic_ns)
            self.reactor = r
            self.app_thread = r.create_thread("app_thread")
            _r._process_reactor = r
            global _loop
            _loop = Loop(r, bells[0], self.mode)
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
            prev = _t._set_current(self.app_thread)
            try:
                _t.poller_register(lambda _: self.supervise(), None, SUPERVISE_PERIOD_US,
                                   "app_supervisor")
                if self.rpc_socket is not None:
                    self._start_rpc_server()
            finally:
                _t._set_current(prev)
            self._spawn_children(mesh, instance.pid)
            _pin(self.cores[0])
            if self.n_reactors == 1:
                send_msg(self.app_thread, self._begin_init)
            _loop.run()
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if self.dispatcher is not None:
                from .rpc import config as rpc_config
                rpc_config.set_framework_init_hook(None)
                rpc_config.set_ready_probe(None)
                self.dispatcher = None
            if self.server is not None:
                self.server.close()
                self.server = None
            self._reap_children()
            for b in bells:
                b.close()
            if mesh is not None:
                mesh.close()
            for path in fifos:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            instance.close()
            try:
                os.sched_setaffinity(0, saved_affinity)  # an embedding program gets its process back
            except OSError:
                pass
            _r._process_reactor = None
            _loop = None
            App._running = None
        if self.error:
            log.error("%s", self.error)
        return self.rc

    def stop(self, rc: int = 0) -> None:
        """Begin an orderly shutdown (callable from any thread of the main reactor)."""
        if self._stopping:
            return
        self._stopping = True
        if rc and not self.rc:
            self.rc = rc
        send_msg(self.app_thread, self._shutdown_sequence)

    # -- start-up
    def _spawn_children(self, mesh: Mesh, owner: int) -> None:
        prep = _main_preparation()
        # Every reactor must know the same handlers and subsystems: a child that lacks a
        # module the launcher loaded would drop that module's messages (e.g. the bdev
        # layer's replica init) and the app would never finish starting.  So children
        # import, besides the explicit list, every project module loaded here.
        loaded = sorted(m for m in list(sys.modules)
                        if m.split(".", 1)[0] in _PROJECT_PACKAGES and m not in self.imports)
        imports = self.imports + loaded
        for index in range(1, self.n_reactors):
            spec = {"index": index, "core": self.cores[index], "mesh": mesh.name, "owner": owner,
                    "mode": self.mode, "imports": imports, "main": prep,
                    "discover": self.dispatcher is not None,
                    "log_level": self.log_level}
            proc = subprocess.Popen(
                [sys.executable, "-c", "from reactor.app import _child_main; _child_main()"],
                stdin=subprocess.PIPE, close_fds=True)
            proc.stdin.write((json.dumps(spec) + "\n").encode())
            proc.stdin.close()
            self.procs[index] = proc

    def _on_reactor_ready(self, index: int, pid: int) -> None:
        self.ready.add(index)
        if len(self.ready) == self.n_reactors - 1:
            self._begin_init()

    def _start_rpc_server(self) -> None:
        """The dispatcher (STARTUP state) and the socket path, claimed now so a path in use
        fails the start at once; the socket itself opens at once only with wait_for_rpc,
        otherwise once init and the config are done (:meth:`_open_rpc`)."""
        from . import rpc
        rpc.discover()   # every module that declares methods, so the table is complete
        self.dispatcher = rpc.Dispatcher(state=rpc.STARTUP)
        try:
            self.server = rpc.RpcServer(self.rpc_socket, dispatcher=self.dispatcher,
                                        listen=self.wait_for_rpc)
        except rpc.RpcServerError as exc:
            raise AppError(f"RPC server: {exc}") from None
        _t.poller_register(lambda _: self.server.poll(), None, 1000, "rpc_server",
                           fd=self.server.fileno())

    def _open_rpc(self) -> bool:
        """Start listening on the RPC socket (SPDK's spdk_rpc_initialize after subsystem
        init and the config); False (and the app stopping) if the socket cannot open."""
        if self.server is None or self.server.listening:
            return True
        from . import rpc
        try:
            self.server.listen()
        except rpc.RpcServerError as exc:
            self.error = f"RPC server: {exc}"
            self.stop(1)
            return False
        return True

    def _begin_init(self) -> None:
        """Every reactor is up: load the config and/or initialise the subsystems (SPDK's
        order: STARTUP entries, framework init, RUNTIME entries), then run main."""
        from . import subsystem
        if not self.wait_for_rpc:
            # A start-up that never finishes (a lost reply, a module that never calls
            # init_done) must fail with a message, not hang the launcher.
            def deadline(_):
                _t.poller_unregister(timer[0])
                if not self.initialized and not self._stopping:
                    self.error = f"start-up did not complete in {START_TIMEOUT_S:.0f} s"
                    self.stop(1)
                return 1
            timer = [_t.poller_register(deadline, None, int(START_TIMEOUT_S * 1e6), "start_deadline")]
        if self.dispatcher is None:
            subsystem.init_all(lambda rc: send_msg(self.app_thread, self._on_init_done, rc))
            return
        from .rpc import config as rpc_config
        rpc_config.set_framework_init_hook(self._framework_init)
        if self.config is not None:
            # framework_wait_init answers once the whole config is applied, not merely
            # after the framework init in its middle
            from .rpc import RUNTIME
            rpc_config.set_ready_probe(lambda srv: srv.state == RUNTIME and self._config_done)
            rpc_config.load_config(self.dispatcher, self.config, self._on_config_loaded,
                                   start_init=not self.wait_for_rpc)
        elif not self.wait_for_rpc:
            self.dispatcher.call("framework_start_init", None, self._on_start_init)
        else:
            log.warning("waiting for framework_start_init on %s", self.rpc_socket)

    def _framework_init(self, done) -> None:
        from . import subsystem

        def inited(rc):
            done(rc)
            self._on_init_done(rc)
        # Answer from a fresh message: the last subsystem may call its done() from deep
        # inside its own init bookkeeping, and what runs next (config RUNTIME entries,
        # main) must see every subsystem fully initialised.
        subsystem.init_all(lambda rc: send_msg(self.app_thread, inited, rc))

    def _on_config_loaded(self, rc: int, message) -> None:
        self._config_done = True
        from .rpc import config as rpc_config
        rpc_config.notify_ready(self.dispatcher)
        if rc:
            self.error = f"{self.config_label}: {message}"
            self.stop(1)
            return
        if self.initialized:
            self._run_main()       # the framework came up in the middle of the config
            return
        from .rpc import STARTUP
        if self.dispatcher.state == STARTUP and not self.wait_for_rpc:
            self.dispatcher.call("framework_start_init", None, self._on_start_init)

    def _on_start_init(self, err, result) -> None:
        if err is not None and not self._stopping:
            self.error = f"framework_start_init failed: {err.get('message')}"
            self.stop(1)

    def _on_init_done(self, rc: int) -> None:
        self.initialized = not rc
        if rc:
            self.error = f"subsystem initialisation failed: {os.strerror(-rc) if rc < 0 else rc}"
            self.stop(1)
            return
        if self.config is not None and not self._config_done:
            return                 # main runs once the config's RUNTIME entries are applied
        self._run_main()

    def _run_main(self) -> None:
        if self._stopping or not self._open_rpc():
            return
        main, args = self._main
        if main is None:
            return
        try:
            main(*args)
        except Exception as exc:
            log.exception("app main raised")
            self.error = f"app main failed: {exc}"
            self.stop(1)

    # -- shutdown
    def _shutdown_sequence(self) -> None:
        if self.shutdown_cb is not None:
            try:
                self.shutdown_cb()
            except Exception:
                log.exception("app shutdown callback raised")
        from . import subsystem
        self._fini_done = False

        def deadline(_):
            _t.poller_unregister(timer[0])
            if not self._fini_done:
                log.error("subsystem fini did not finish in %.0f s%s; exiting anyway", FINI_TIMEOUT_S,
                          f" (reactors {sorted(self.reactor.dead)} died)" if self.reactor.dead else "")
                if not self.rc:
                    self.rc = 1
                self._after_fini()
            return 1
        timer = [_t.poller_register(deadline, None, int(FINI_TIMEOUT_S * 1e6), "fini_deadline")]
        subsystem.fini_all(self._after_fini)

    def _after_fini(self) -> None:
        if self._fini_done:
            return
        self._fini_done = True
        r = self.reactor
        self._exiting_children = True
        for index in range(1, self.n_reactors):
            if self.procs.get(index) and self.procs[index].poll() is None:
                r.send(r.default_tid(index), _reactor_exit, ())
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._exiting_children:
            return
        if all(p.poll() is not None for p in self.procs.values()):
            self.reactor.running = False

    # -- supervision (runs on the app thread)
    def supervise(self) -> int:
        for index, proc in self.procs.items():
            code = proc.poll()
            if code is None:
                continue
            if self._exiting_children or index in self.reactor.dead:
                continue
            self.reactor.mark_dead(index)
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            if index not in self.ready and not self._stopping:
                self.error = f"reactor {index} (core {self.cores[index]}) failed to start: {why}"
            else:
                self.error = f"reactor {index} (pid {proc.pid}, core {self.cores[index]}) died: {why}"
            r = self.reactor
            for other, p in self.procs.items():
                if other != index and p.poll() is None:
                    r.send(r.default_tid(other), _peer_died, (index, why))
            self.stop(1)
            return 1
        self._maybe_finish()
        return 0

    def _on_signal(self, signum, frame) -> None:
        # Python runs this between bytecodes of the main thread, i.e. between two steps
        # of the loop: queueing SPDK's "critical message" is safe here, and the wake
        # covers a loop asleep in select.
        self._signal = signum
        try:
            self.app_thread.send_critical_msg(self._check_signal)
        except _t.ThreadError:
            pass  # one already pending: it reads self._signal
        if _loop is not None:
            _loop.doorbell.wake()

    def _check_signal(self) -> None:
        if self._signal is not None:
            sig, self._signal = self._signal, None
            log.warning("received %s: shutting down", signal.Signals(sig).name)
            self.stop(0)

    def _reap_children(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            left = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(left)
            except subprocess.TimeoutExpired:
                log.error("reactor pid %d did not exit in time: killing it", proc.pid)
                proc.kill()
                proc.wait()


def _read_config(path: str) -> dict:
    from .rpc.config import strip_comments     # SPDK's configs may carry comments
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.loads(strip_comments(f.read()))
    except OSError as exc:
        raise AppError(f"cannot read config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise AppError(f"config {path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("subsystems", []), list):
        raise AppError(f"config {path}: expected an object with a 'subsystems' list")
    return cfg


def app_stop(rc: int = 0) -> None:
    """Stop the running app (SPDK's spdk_app_stop); call from the main reactor."""
    app = App._running
    if app is None:
        raise AppError("no app is running")
    app.stop(rc)


def running_app() -> App | None:
    return App._running
