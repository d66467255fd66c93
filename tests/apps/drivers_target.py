"""A target for the process-mode driver tests: ``ringstack start`` plus one test-only RPC,
``test_bdev_io``, which runs an I/O on a chosen *reactor* (so a test can write through one
reactor process and read back through the other).  Run as
``python tests/apps/drivers_target.py MASK SOCK [CONFIG]``.  Child reactors import this file
as __mp_main__, so the @remote handlers below exist in every process."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import reactor as rx  # noqa: E402
from bdev import api  # noqa: E402
from reactor.app import App  # noqa: E402
from reactor.rpc import Param, rpc_method  # noqa: E402

_pending = {}
_seq = [0]


@rpc_method("test_bdev_io", params=[
    Param("name", str), Param("reactor", int, min=0), Param("op", str, choices=("read", "write", "flush")),
    Param("offset_blocks", int, default=0, min=0), Param("num_blocks", int, default=1, min=0),
    Param("data", str, default="", help="hex, for writes"),
])
def _test_bdev_io(request, params):
    """Test only: run one I/O on a reactor's default thread; result {rc, success, data}."""
    _seq[0] += 1
    tok = _seq[0]
    _pending[tok] = request
    r = rx.current_reactor()
    if params["reactor"] >= r.n_reactors:
        _pending.pop(tok)
        request.errno(-22)
        return
    r.send(r.default_tid(params["reactor"]), _do_io,
           (rx.get_thread().id, tok, params["name"], params["op"], params["offset_blocks"],
            params["num_blocks"], params["data"]))


@rx.remote("test.drivers_do_io")
def _do_io(origin, tok, name, op, off, num, data):
    rc, desc = api.open_ext(name, op != "read", lambda *a: None)
    if rc:
        rx.send_msg(origin, _io_done, tok, rc, False, "", rx.current_reactor().index)
        return
    ch = api.get_io_channel(desc)
    bs = desc.bdev.blocklen
    buf = bytearray(bytes.fromhex(data)) if op == "write" else bytearray(num * bs)

    def done(bio, success, _arg):
        api.free_io(bio)
        api.put_io_channel(ch)
        api.close(desc)
        rx.send_msg(origin, _io_done, tok, 0, success, buf.hex() if op == "read" else "",
                    rx.current_reactor().index)
    if op == "read":
        rc = api.read_blocks(desc, ch, buf, off, num, done, None)
    elif op == "write":
        rc = api.write_blocks(desc, ch, buf, off, len(buf) // bs, done, None)
    else:
        rc = api.flush_blocks(desc, ch, off, num, done, None)
    if rc:
        api.put_io_channel(ch)
        api.close(desc)
        rx.send_msg(origin, _io_done, tok, rc, False, "", rx.current_reactor().index)


@rx.remote("test.drivers_io_done")
def _io_done(tok, rc, success, data, reactor_index):
    req = _pending.pop(tok, None)
    if req is not None:
        req.result({"rc": rc, "success": bool(success), "data": data, "reactor": reactor_index})


if __name__ == "__main__":
    mask, sock = sys.argv[1], sys.argv[2]
    config = sys.argv[3] if len(sys.argv) > 3 else None
    sys.exit(App(mask, rpc_socket=sock, config=config).run())
