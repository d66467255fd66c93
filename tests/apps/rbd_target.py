"""A target for the rbd control-path tests: tests/apps/drivers_target.py (``ringstack start``
plus ``test_bdev_io``) and two test-only RPCs:

* ``test_rbd_state``: every reactor's rbd state (drivers.rbd_control.state_summary: its
  registered clusters, bdev replicas, prepared handles, offloaded calls in flight) and
  its pid, gathered from every reactor;
* ``test_rbd_inject``: make the next cluster connect (``connect``), image open
  (``open``) or bdev registration (``register``) of one reactor fail, to test that a
  failing replica undoes a registration or a create everywhere.

Run as ``python tests/apps/rbd_target.py MASK SOCK [CONFIG]``.  Child reactors import this
file as __mp_main__, so the handlers below exist in every process."""
import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import drivers_target  # noqa: E402,F401  (test_bdev_io)
import reactor as rx  # noqa: E402
from reactor.app import App  # noqa: E402
from reactor.rpc import Param, rpc_method  # noqa: E402


@rpc_method("test_rbd_state", params=[])
def _test_rbd_state(request, params):
    """Test only: [{reactor, pid, clusters, disks, prepared, offload_pending}], by reactor."""
    def done(rc, results):
        request.result([dict(v or {}, reactor=i, rc=r) for i, r, v in results])
    rx.gather(_rbd_state, [], done)


@rx.remote("test.rbd_state")
def _rbd_state(done):
    from drivers import rbd_control
    done(0, dict(rbd_control.state_summary(), pid=os.getpid()))


@rpc_method("test_rbd_inject", params=[
    Param("reactor", int, min=0),
    Param("what", str, choices=("connect", "open", "register"))])
def _test_rbd_inject(request, params):
    """Test only: the next ``what`` on reactor ``reactor`` fails."""
    r = rx.current_reactor()
    if params["reactor"] >= r.n_reactors:
        return request.errno(-errno.EINVAL)
    # FIFO from this (the main) thread: the next create's broadcast reaches it after this
    r.send(r.default_tid(params["reactor"]), _inject, (params["what"],))
    request.result(True)


@rx.remote("test.rbd_inject")
def _inject(what):
    from bdev import module as bm
    from drivers import rbd, rbd_control
    if what == "connect":
        real_connect = rbd_control._connect_cluster

        def failing_cluster_connect(*args):
            rbd_control._connect_cluster = real_connect
            raise OSError(errno.EIO, "injected connect failure")
        rbd_control._connect_cluster = failing_cluster_connect
    elif what == "open":
        cls = rbd.RbdDisk
        real = cls.connect

        def failing_connect(self, *args):
            cls.connect = real
            raise OSError(errno.EIO, "injected open failure")
        cls.connect = failing_connect
    else:
        real_register = bm.bdev_register

        def failing_register(bdev):
            bm.bdev_register = real_register
            return -errno.ENOMEM
        bm.bdev_register = failing_register


if __name__ == "__main__":
    mask, sock = sys.argv[1], sys.argv[2]
    config = sys.argv[3] if len(sys.argv) > 3 else None
    sys.exit(App(mask, rpc_socket=sock, config=config).run())
