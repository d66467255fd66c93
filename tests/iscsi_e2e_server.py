"""Test-only end-to-end target: the iSCSI engine over the real SCSI layer (targets/scsi) and
a malloc bdev, on a deterministic two-reactor Harness, serving 127.0.0.1:<port> until
SIGTERM.  Connections alternate between the reactors.  The configuration replica is the
test fake (one per reactor) until the control plane's lands.

usage: python iscsi_e2e_server.py PORT [BLOCKS]
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bdev_stub as Stub                    # noqa: E402
import iscsi_fakes as F                     # noqa: E402
from drivers import malloc                  # noqa: E402
from reactor.testing import Harness         # noqa: E402
from targets.iscsi.conn import IscsiConnection   # noqa: E402
from targets.scsi import ScsiDev            # noqa: E402

N_REACTORS = 2


def main() -> None:
    port = int(sys.argv[1])
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
    h = Harness(N_REACTORS, n_reactors=N_REACTORS)
    Stub.init_layer(h)
    h.set_thread(0)
    rcs = []
    malloc.create("Malloc0", blocks, 512, cb=lambda rc, n: rcs.append(rc))
    h.poll_threads()
    if rcs != [0]:
        raise SystemExit(f"malloc create: {rcs}")
    regs = []
    for i in range(N_REACTORS):
        h.set_thread(i)
        reg = F.FakeRegistry(port)
        reg.add_node("disk1", ScsiDev(F.BASE + ":disk1", [(0, "Malloc0")]), queue_depth=64)
        regs.append(reg)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    ls.setblocking(False)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    conns = []
    turn = 0
    sel = selectors.DefaultSelector()
    print("ready", flush=True)
    while not stop:
        try:
            while True:
                s, addr = ls.accept()
                th = turn % N_REACTORS
                turn += 1
                h.set_thread(th)
                meta = {"pg_tag": 1, "portal": ("127.0.0.1", port), "peer": addr}
                conns.append((th, IscsiConnection(s, meta, regs[th])))
        except BlockingIOError:
            pass
        busy = h.poll_threads()
        for th, c in list(conns):
            h.set_thread(th)
            if (c.needs_poll() or c.wants_read()) and c.poll():
                busy += 1
            if c.done:
                conns.remove((th, c))
            elif c.needs_poll():
                busy += 1
        busy += h.poll_threads()
        if busy:
            continue
        fds = {ls.fileno(): selectors.EVENT_READ}
        for th, c in conns:
            ev = (selectors.EVENT_READ if c.wants_read() else 0) | \
                (selectors.EVENT_WRITE if c.send_blocked else 0)
            if ev and c.fileno() >= 0:
                fds[c.fileno()] = ev
        for fd, ev in fds.items():
            sel.register(fd, ev)
        try:
            sel.select(0.01)
        finally:
            for fd in fds:
                sel.unregister(fd)
    for th, c in conns:
        h.set_thread(th)
        c.abort("server stop")
    for _ in range(100):
        h.poll_threads()
        for th, c in conns:
            h.set_thread(th)
            c.poll()
        if all(c.done for _, c in conns):
            break
    ls.close()


if __name__ == "__main__":
    main()
