"""targets/serve control operations in deterministic mode (two reactors in one process):
the fanouts are all or nothing (a step refused on one reactor is undone where it
succeeded, a reactor dying mid-operation counts as -EIO), a start that cannot attach a
reactor leaves it as it was, a bad listen address fails the start before any other
reactor is touched, a second stop finishes with the first, and the fd channel's name
cannot be taken first.  NBD's export_add is the protocol op under test; the process-mode
test (fd passing, listeners with their meta, two protocols on the same reactors) is
test_serve_process.py."""
import errno
import os
import socket

import pytest

import reactor as rx
from reactor.testing import Harness
from targets import serve
from targets.nbd.bdev_export import BdevExport
from targets.nbd.service import NbdContext

EIO = errno.EIO


def _poll(h, alive):
    """Poll only the threads of the reactors in ``alive`` until nothing is left to do."""
    for _ in range(10_000):
        if not sum(h.poll_thread(i) for i, t in enumerate(h.threads) if t.reactor.index in alive):
            return
    raise RuntimeError("still busy")


def _setup(h):
    """The bdev layer with one stub bdev, and an NBD server on every reactor."""
    import bdev_stub as S
    S.init_layer(h)
    h.set_thread(0)
    S.create("nb0")
    h.poll_threads()
    srvs = []
    for i in range(len(h.reactors)):
        h.set_thread(i)
        srvs.append(serve.Server("nbd", NbdContext))
    h.set_thread(0)
    return S, srvs


def _teardown(h, S, srvs):
    for i, srv in enumerate(srvs):
        h.set_thread(i)
        if not srv.stopped:
            srv.stop(lambda: None)
    h.poll_threads()
    S.bm.module_list_remove(S.stub_module)
    S.fini_layer(h)


def _exports(srvs):
    return [sorted(e.name for e in srv.ctx.exports) for srv in srvs]


def test_a_protocol_op_is_all_or_nothing_across_reactors():
    with Harness(2, n_reactors=2) as h:
        S, srvs = _setup(h)
        try:
            # reactor 1 already has an export named "e": the add fails there
            h.set_thread(1)
            srvs[1].ctx.exports.add(BdevExport("nb0", "e"))
            h.set_thread(0)
            got = []
            serve.run_on_all_reactors("nbd", "export_add",
                                      {"bdev_name": "nb0", "export_name": "e", "readonly": False},
                                      lambda rc, outs, msg: got.append((rc, msg, _exports(srvs))))
            h.poll_threads()
            rc, msg, seen = got[0]
            assert rc == -errno.EEXIST and msg.startswith("reactor 1:")
            # reactor 0's copy was undone before the caller heard; reactor 1 kept its own
            assert seen == [[], ["e"]] and _exports(srvs) == [[], ["e"]]
            # an add that works everywhere stays everywhere
            serve.run_on_all_reactors("nbd", "export_add",
                                      {"bdev_name": "nb0", "export_name": "f", "readonly": True},
                                      lambda rc, outs, msg: got.append(rc))
            h.poll_threads()
            assert got[-1] == 0 and _exports(srvs) == [["f"], ["e", "f"]]
            infos = []
            serve.get_connections("nbd", lambda rc, msg, outs: infos.append((rc, outs)))
            h.poll_threads()
            assert infos[0][0] == 0 and [o["reactor"] for o in infos[0][1]] == [0, 1]
            assert all(not o["connections"] and o["stats"]["connections_open"] == 0
                       for o in infos[0][1])
        finally:
            _teardown(h, S, srvs)


def test_an_op_meeting_a_dying_reactor_is_undone_on_the_survivor():
    with Harness(2, n_reactors=2) as h:
        S, srvs = _setup(h)
        try:
            got = []
            serve.run_on_all_reactors("nbd", "export_add",
                                      {"bdev_name": "nb0", "export_name": "e", "readonly": True},
                                      lambda rc, outs, msg: got.append((rc, msg)))
            _poll(h, alive=(0,))
            assert got == [] and _exports(srvs)[0] == ["e"]
            h.reactors[0].mark_dead(1)
            _poll(h, alive=(0,))
            assert got == [(-EIO, "reactor 1: " + os.strerror(EIO))]
            assert _exports(srvs)[0] == []
        finally:
            _teardown(h, S, srvs)


def test_start_failing_on_a_reactor_leaves_it_as_it_was():
    with Harness(2, n_reactors=2) as h:
        h.set_thread(0)
        main = serve.Server("nbd", NbdContext)    # what serve.start set up on the main reactor
        got = []
        serve.run_on_all_reactors("nbd", "start",
                                  {"protocol": "nbd", "ctl": f"\0ringstack.test.{os.getpid()}.nobody",
                                   "main_pid": os.getpid(), "opts": None},
                                  lambda rc, outs, msg: got.append((rc, msg)))
        h.poll_threads()
        rc, msg = got[0]
        assert rc < 0 and msg.startswith("reactor 1: fd channel")
        assert "serve.nbd" not in h.reactors[1].locals          # nothing left on reactor 1
        assert serve.current("nbd") is main and not main.stopped   # not the step's to undo
        main.stop(lambda: None)
        h.poll_threads()
        assert serve.current("nbd") is None


def test_a_bad_listen_address_fails_the_start_before_any_reactor_is_touched(tmp_path):
    with Harness(2, n_reactors=2) as h:
        h.set_thread(0)
        got = []
        serve.start("nbd", lambda rc, msg: got.append((rc, msg)),
                    listen=[(str(tmp_path / "ok.sock"), {}), (str(tmp_path / "no" / "x.sock"), {})])
        assert got and got[0][0] == -errno.ENOENT and "cannot listen on" in got[0][1]
        h.poll_threads()
        assert all("serve.nbd" not in r.locals for r in h.reactors)
        assert not (tmp_path / "ok.sock").exists()              # the first one was closed too
        serve.start("nope", lambda rc, msg: got.append((rc, msg)))
        assert got[-1][0] == -errno.ENOENT


def test_second_stop_finishes_with_the_first():
    """A stop while one is under way (or done) gets its finish too, once."""
    with Harness(2, n_reactors=2) as h:
        S, srvs = _setup(h)
        try:
            h.set_thread(0)
            got = []
            srvs[0].stop(lambda: got.append("first"))
            srvs[0].stop(lambda: got.append("second"))
            h.poll_threads()
            assert sorted(got) == ["first", "second"]
            srvs[0].stop(lambda: got.append("third"))       # already stopped
            h.poll_threads()
            assert got.count("third") == 1 and len(got) == 3
        finally:
            _teardown(h, S, srvs)


def test_fd_channel_name_cannot_be_taken_first():
    """Another local user binding the predictable abstract names first (pid and a
    counter) does not stop the server: the name carries 128 random bits."""
    squatters = []
    with Harness(2, n_reactors=2) as h:
        S, srvs = _setup(h)
        try:
            for n in range(64):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.bind(f"\0ringstack.{os.getpid()}.nbd.{n}")
                squatters.append(s)
            h.set_thread(0)
            srvs[0].open_channel()
            assert srvs[0].ctl is not None
            assert len(srvs[0].ctl_name.rsplit(".", 1)[-1]) == 32            # 128 bits, hex
            srvs[0].stop(lambda: None)
            h.poll_threads()
        finally:
            for s in squatters:
                s.close()
            _teardown(h, S, srvs)


def test_registration_errors():
    with pytest.raises(ValueError):
        serve.register_protocol("a/b", NbdContext)
    with pytest.raises(KeyError):
        serve.run_on_all_reactors("nbd", "no_such_op", {}, lambda *a: None)
    with Harness(1, n_reactors=1) as h:
        h.set_thread(0)
        got = []
        serve.run_on_all_reactors("nbd", "export_add",
                                  {"bdev_name": "x", "export_name": "x", "readonly": True},
                                  lambda rc, outs, msg: got.append((rc, msg)))
        h.poll_threads()
        assert got == [(-errno.ENODEV, "reactor 0: NBD server not running")]
        assert rx.current_reactor().locals.get("serve.nbd") is None


def test_start_listen_info_and_stop_on_one_reactor(tmp_path):
    path = str(tmp_path / "s.sock")
    with Harness(1, n_reactors=1) as h:
        h.set_thread(0)
        got = []
        serve.start("nbd", lambda rc, msg: got.append((rc, msg)), listen=[(path, {"tag": 7})])
        h.poll_threads()
        assert got == [(0, None)]
        srv = serve.current("nbd")
        assert srv is not None and os.path.exists(path) and srv.ctl is None   # no channel needed
        serve.start("nbd", lambda rc, msg: got.append((rc, msg)))
        assert got[-1][0] == -errno.EBUSY
        lst = srv.listen("127.0.0.1:0", {"tag": 8})
        infos = []
        serve.get_connections("nbd", lambda rc, msg, outs: infos.append(outs))
        h.poll_threads()
        assert [x["meta"] for x in infos[0][0]["listeners"]] == [{"tag": 7}, {"tag": 8}]
        srv.unlisten(lst)
        assert len(srv.listeners) == 1
        serve.stop("nbd", lambda rc, msg: got.append(("stopped", rc)))
        h.poll_threads()
        assert got[-1] == ("stopped", 0) and serve.current("nbd") is None
        assert not os.path.exists(path)
        with pytest.raises(OSError):
            srv.listen(path, {})                           # a stopped server takes no listener
