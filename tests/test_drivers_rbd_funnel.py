"""The rbd bdev across reactors (drivers/rbd_funnel.py), against the session's real Ceph
cluster: which images funnel their I/O to reactor 0's one handle, every I/O type from the
other reactor landing in the image, errors coming back, RESET waiting, a reactor dying on
either side, a bdev deleted or a channel closed with funnelled I/O in flight (every I/O
completes exactly once), and, in process mode, Ceph seeing one client of the image while
both reactors write (bdevperf -w verify on two reactors).

Deterministic mode (two reactors in one process) still runs real librbd: records between
the reactors are encoded exactly as they are in process mode, so the funnel's messages
really cross by value."""
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import bdev_stub
import reactor as rx
from bdev import _const, api
from ceph_cluster import ROOT, rbd_bdev_config
from drivers import rbd, rbd_funnel
from drivers_util import Io, pattern, run_until
from reactor.testing import Harness

BS = 512
#: Ceph's default image features (what `rbd create` gives without --image-feature).
DEFAULT_FEATURES = "layering,exclusive-lock,object-map,fast-diff,deep-flatten"
MiB = 1 << 20


def _conf(c):
    return {"mon_host": c.mon_host(), "auth_client_required": "none"}


def _create(h, c, name, img, **kw):
    out = []
    h.set_thread(0)
    rbd.create(name, "rbd", img, BS, lambda rc, n: out.append(rc), config=_conf(c), **kw)
    assert run_until(h, lambda: out), "create never answered"
    return out[0]


def _delete(h, name, threads=None):
    out = []
    h.set_thread(0)
    rbd.delete(name, lambda rc: out.append(rc))
    assert _run(h, lambda: out, threads), "delete never answered"
    return out[0]


def _run(h, pred, threads=None, timeout=10.0):
    """run_until over some threads only (a 'dead' reactor is not polled)."""
    if threads is None:
        return run_until(h, pred, timeout)
    end = time.monotonic() + timeout
    while not pred():
        for i in threads:
            h.poll_thread(i)
        if time.monotonic() > end:
            return False
        h.advance_time_us(100)
    return True


def _replica(h, thread, name):
    h.set_thread(thread)
    return rbd_funnel.replica_of(api.get_by_name(name).ctxt)


def _hold_completions(h, name="R"):
    """Pause the owner's queue poller: librbd finishes, nothing is collected (so a test
    can act while I/O is surely in the owner's hands, whatever the scheduler does)."""
    q = _replica(h, 0, name).queue
    h.set_thread(0)
    rx.poller_pause(q.poller)
    return q


def _release_completions(h, q):
    h.set_thread(0)
    rx.poller_resume(q.poller)


def _watchers(c, img) -> int:
    return len(json.loads(c.rbd("status", "--format", "json", f"rbd/{img}"))["watchers"])


#: The layer's default pools, stated: an earlier test's initialize(conf=) outlives it.
LAYER_CONF = {"BdevIoPoolSize": _const.BDEV_IO_POOL_SIZE,
              "BdevIoCacheSize": _const.BDEV_IO_CACHE_SIZE}


@contextlib.contextmanager
def _two_reactors():
    with Harness(n_threads=2, n_reactors=2) as h:
        bdev_stub.init_layer(h, conf=LAYER_CONF)
        h.submitters = []
        try:
            yield h
        finally:
            for s in h.submitters:          # a test that failed half-way left them open
                s.close()
            h.set_thread(0)
            for b in list(api.bdevs()):
                if b.module.name == "rbd":
                    _delete(h, b.name)
            bdev_stub.fini_layer(h)


class Submitter:
    """A desc and channel on one thread, submitting without waiting; completions are
    counted per tag (bdev_stub.Cpl fails a tag that completes twice)."""

    def __init__(self, h, name, thread, event_cb=None):
        self.h = h
        self.thread = thread
        if hasattr(h, "submitters"):
            h.submitters.append(self)
        h.set_thread(thread)
        rc, self.desc = api.open_ext(name, True, event_cb or (lambda *a: None))
        assert rc == 0
        self.ch = api.get_io_channel(self.desc)
        self.cpl = bdev_stub.Cpl()

    def write(self, off, data, tag):
        self.h.set_thread(self.thread)
        return api.write_blocks(self.desc, self.ch, bytearray(data), off, len(data) // BS,
                                self.cpl, tag)

    def read(self, off, n, tag, into=None):
        self.h.set_thread(self.thread)
        buf = into if into is not None else bytearray(n * BS)
        return api.read_blocks(self.desc, self.ch, buf, off, n, self.cpl, tag)

    def reset(self, tag):
        self.h.set_thread(self.thread)
        return api.reset(self.desc, self.ch, self.cpl, tag)

    def close(self):
        self.h.set_thread(self.thread)
        if self.ch is not None:
            api.put_io_channel(self.ch)
            self.ch = None
        if self.desc is not None:
            api.close(self.desc)
            self.desc = None


# ----------------------------------------------------------------- the choice
def test_the_mode_is_chosen_per_image_and_a_funnelled_image_has_one_client(ceph_cluster,
                                                                           monkeypatch):
    """auto: an image with exclusive-lock funnels (reactor 0 keeps the only handle, reactor
    1 none), a layering-only one keeps a handle per reactor, a read-only one too;
    RINGSTACK_RBD_FUNNEL=always/never force it.  Ceph sees it: one watcher, or two."""
    c = ceph_cluster
    locked = c.new_image(size="1M", features=DEFAULT_FEATURES)
    plain = c.new_image(size="1M")
    with _two_reactors() as h:
        assert _create(h, c, "L", locked) == 0
        assert _create(h, c, "P", plain) == 0
        assert _create(h, c, "RO", locked, read_only=True) == 0
        owner, other = _replica(h, 0, "L"), _replica(h, 1, "L")
        assert owner.queue is not None and not owner.remote
        assert other.remote and other.queue is None
        h.set_thread(1)
        assert api.get_by_name("L").ctxt.image is None      # reactor 1 is no client of it
        for name in ("P", "RO"):
            for t in (0, 1):
                rep = _replica(h, t, name)
                assert not rep.funnel and rep.queue is not None, (name, t)
        assert _watchers(c, plain) == 2           # P: a handle per reactor
        _delete(h, "RO")
        assert _watchers(c, locked) == 1          # L: reactor 0's handle only
        _delete(h, "L")
        _delete(h, "P")
        monkeypatch.setattr(rbd_funnel, "MODE", "always")
        assert _create(h, c, "P", plain) == 0
        assert _replica(h, 1, "P").remote and _watchers(c, plain) == 1
        _delete(h, "P")
        monkeypatch.setattr(rbd_funnel, "MODE", "never")
        assert _create(h, c, "L", locked) == 0
        assert not _replica(h, 1, "L").funnel and _watchers(c, locked) == 2


# ------------------------------------------------------------- the data path
def test_every_io_type_from_the_other_reactor_lands_in_the_image(ceph_cluster, tmp_path):
    """READ, WRITE (one message, and larger than a CHUNK: several), FLUSH, UNMAP,
    WRITE_ZEROES and RESET submitted on reactor 1 of a funnelled image: each succeeds and
    what it did is in the image (read on the owner, and `rbd export`)."""
    c = ceph_cluster
    img = c.new_image(size="12M", features=DEFAULT_FEATURES)
    obj = 4 * MiB // BS                     # the image's objects are 4 MiB
    with _two_reactors() as h:
        assert _create(h, c, "R", img) == 0
        assert _replica(h, 1, "R").remote
        b = api.get_by_name("R")
        for t in (api.IO_TYPE_READ, api.IO_TYPE_WRITE, api.IO_TYPE_FLUSH, api.IO_TYPE_UNMAP,
                  api.IO_TYPE_WRITE_ZEROES, api.IO_TYPE_RESET):
            assert api.io_type_supported(b, t), t
        far, owner = Io(h, "R", 1), Io(h, "R", 0)
        small = pattern(8 * BS, 3)
        big = os.urandom(300 * 1024)          # three parts of at most CHUNK
        assert rbd_funnel.CHUNK < len(big)
        assert far.write(0, small) == (0, True)
        assert far.write(64, big) == (0, True)
        assert far.read(64, len(big) // BS)[1:] == (True, big)
        assert far.write(16, pattern(8 * BS, 9)) == (0, True)
        assert far.run(api.write_zeroes_blocks, 16, 8) == (0, True)
        assert far.write(obj, pattern(4 * BS, 5)) == (0, True)
        assert far.run(api.unmap_blocks, obj, obj) == (0, True)     # one whole object
        assert far.run(api.flush_blocks, 0, 8) == (0, True)
        assert far.run(api.reset) == (0, True)
        assert owner.read(0, 8)[1:] == (True, small)
        assert owner.read(16, 8)[1:] == (True, bytes(8 * BS))
        assert owner.read(obj, 4)[1:] == (True, bytes(4 * BS))
        far.close()
        owner.close()
    c.rbd("export", f"rbd/{img}", str(tmp_path / "x.img"))
    x = (tmp_path / "x.img").read_bytes()
    assert x[:8 * BS] == small and x[64 * BS:64 * BS + len(big)] == big
    assert x[16 * BS:24 * BS] == bytes(8 * BS) and x[obj * BS:(obj + 4) * BS] == bytes(4 * BS)


def test_an_io_the_owner_fails_fails_on_the_submitter_with_its_errno(ceph_cluster, caplog):
    """The image shrinks behind ringstack's back: a write past its new end fails in the
    owner's librbd; reactor 1's write fails with that errno logged there, nothing is
    written, and both reactors keep working."""
    c = ceph_cluster
    img = c.new_image(size="1M", features=DEFAULT_FEATURES)
    with _two_reactors() as h:
        assert _create(h, c, "R", img) == 0
        far, owner = Io(h, "R", 1), Io(h, "R", 0)
        assert far.write(2000, pattern(BS, 1)) == (0, True)
        c.rbd("resize", "--allow-shrink", "--size", "512K", f"rbd/{img}")
        h.set_thread(0)
        image = api.get_by_name("R").ctxt.image
        deadline = time.monotonic() + 10
        while image.size() != 512 * 1024:    # the owner's handle learns it from the watch
            assert time.monotonic() < deadline
            time.sleep(0.01)
        caplog.clear()
        assert far.write(1500, pattern(BS, 2)) == (0, False)
        assert any("write of 1 blocks at 1500 failed: Invalid argument" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert far.read(1500, 1)[:2] == (0, False)
        assert far.write(3, pattern(BS, 4)) == (0, True)     # still serving
        assert owner.read(3, 1)[1:] == (True, pattern(BS, 4))
        far.close()
        owner.close()
    assert "size 512 KiB" in c.rbd("info", f"rbd/{img}")     # nothing grew it back


def test_a_reset_on_the_other_reactor_waits_for_its_funnelled_io(ceph_cluster):
    """RESET submitted behind writes on reactor 1 completes only after every one of them:
    with the owner's poller paused (librbd finishes, nobody collects) the reset's own
    round of freeze, submit and unfreeze runs through and it still waits."""
    c = ceph_cluster
    img = c.new_image(size="1M", features=DEFAULT_FEATURES)
    with _two_reactors() as h:
        assert _create(h, c, "R", img) == 0
        q = _hold_completions(h)
        s = Submitter(h, "R", 1)
        for i in range(8):
            assert s.write(i * 8, pattern(8 * BS, i), f"w{i}") == 0
        assert s.reset("reset") == 0
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            h.poll_threads()
            h.advance_time_us(100)
        assert len(q.ops) == 8 and s.cpl.done == []
        _release_completions(h, q)
        assert run_until(h, lambda: len(s.cpl.done) == 9)
        assert s.cpl.args()[-1] == "reset"
        assert all(ok for _a, ok in s.cpl.done)
        s.close()


# --------------------------------------------------------------- reactor death
@pytest.mark.bdev_io_may_be_lost("reactor 1 dies with its writes in the owner's hands")
def test_a_submitter_that_dies_does_not_stop_the_owner(ceph_cluster, bdev_invariants):
    """Reactor 1 dies with writes in the owner's hands: the owner finishes them, drops
    the answers (nothing for reactor 1 waits in its transport) and keeps serving."""
    c = ceph_cluster
    img = c.new_image(size="1M", features=DEFAULT_FEATURES)
    with Harness(n_threads=2, n_reactors=2) as h:
        bdev_stub.init_layer(h, conf=LAYER_CONF)
        assert _create(h, c, "R", img) == 0
        owner_q = _hold_completions(h)
        s = Submitter(h, "R", 1)
        for i in range(4):
            assert s.write(i, pattern(BS, i), f"w{i}") == 0
        h.poll_thread(1)                      # the requests go out
        h.poll_thread(0)                      # the owner starts them
        assert len(owner_q.ops) == 4
        h.reactors[0].mark_dead(1)            # the supervisor found reactor 1 dead
        _release_completions(h, owner_q)
        assert _run(h, lambda: not owner_q.ops, threads=[0])
        h.poll_thread(0)
        assert not h.reactors[1].transport.pending()        # the answers were dropped
        assert s.cpl.done == []
        owner = Io(h, "R", 0)
        assert owner.write(9, pattern(BS, 7)) == (0, True)
        assert owner.read(2, 1)[1:] == (True, pattern(BS, 2))   # reactor 1's write landed
        owner.close()
        _delete(h, "R", threads=[0])
        h.set_thread(0)
        out = []
        api.finish(lambda arg: out.append(1))
        assert _run(h, lambda: out, threads=[0])
        bdev_stub.bm.module_list_remove(bdev_stub.stub_module)
    # reactor 1's channel died with it (its process would be gone)
    for key, ctx in list(bdev_invariants.live.items()):
        if ctx.thread is h.threads[1]:
            del bdev_invariants.live[key]
    assert _watchers(c, img) == 0


def test_the_owner_dying_fails_each_funnelled_io_once(ceph_cluster):
    """Reactor 0 dies (as reactor 1 sees it) with reactor 1's I/O in its hands: each fails
    once, on its thread; new I/O fails at once; an answer arriving later is dropped."""
    c = ceph_cluster
    img = c.new_image(size="1M", features=DEFAULT_FEATURES)
    with _two_reactors() as h:
        assert _create(h, c, "R", img) == 0
        s = Submitter(h, "R", 1)
        for i in range(4):
            assert s.write(i, pattern(BS, i), f"w{i}") == 0
        h.poll_thread(1)                      # sent, not yet delivered to reactor 0
        h.reactors[1].mark_dead(0)
        assert _run(h, lambda: len(s.cpl.done) == 4, threads=[1])
        assert s.write(5, pattern(BS, 5), "late") == 0
        assert _run(h, lambda: len(s.cpl.done) == 5, threads=[1])
        assert run_until(h, lambda: not _replica(h, 0, "R").queue.ops)   # owner answers...
        h.poll_threads()
        got = s.cpl.by_arg()                  # ...and nothing completes twice
        assert sorted(got) == ["late", "w0", "w1", "w2", "w3"]
        assert not any(ok for ok, _t in got.values())
        assert set(s.cpl.threads) == {h.threads[1].name}
        # the simulated death is over: let the layer tear down normally
        h.reactors[1].dead.clear()
        s.close()


# ----------------------------------------------------- deletes and closes in flight
def test_delete_with_funnelled_io_in_flight_completes_each_once(ceph_cluster, caplog):
    """bdev_rbd_delete while 24 of reactor 1's I/O are in the owner's hands: the owner does
    not block on them (it goes on answering: a write reactor 1 sends after the owner's
    replica is gone fails -ENODEV at once), the delete answers only once librbd has given
    them back, and each completes exactly once, successfully; reactor 1's user, told of the
    hot-remove, closes once its I/O is done (SPDK's rule); no client of the image is left."""
    c = ceph_cluster
    img = c.new_image(size="1M", features=DEFAULT_FEATURES)
    with _two_reactors() as h:
        assert _create(h, c, "R", img) == 0
        events = []
        submitted = 25

        def close_when_done():
            if events and len(s.cpl.done) == submitted and s.ch is not None:
                s.close()

        def on_event(ev, bdev, ctx):
            events.append(ev)
            close_when_done()
        owner_q = _hold_completions(h)        # collected only once released below
        s = Submitter(h, "R", 1, on_event)
        for i in range(12):
            assert s.write(i * 4, pattern(4 * BS, i), f"w{i}") == 0
            assert s.read(100 + i, 1, f"r{i}") == 0
        h.poll_thread(1)
        for _ in range(5):                    # (8 messages a pass)
            h.poll_thread(0)
        assert len(owner_q.ops) == 24         # librbd has them all
        out = []
        h.set_thread(0)
        rbd.delete("R", lambda rc: out.append(rc))
        for _ in range(5):                    # the owner's replica goes first
            h.poll_thread(0)
        assert "R" not in rbd_funnel._state()["names"]
        assert s.write(60, pattern(BS, 1), "after") == 0   # reactor 1 does not know yet
        assert run_until(h, lambda: "after" in s.cpl.by_arg())
        assert "write of 1 blocks at 60 failed: No such device" in caplog.text
        # the delete waits for the 24 without blocking the owner, and has not answered
        assert not run_until(h, lambda: out, timeout=0.5)
        assert out == [] and len(owner_q.ops) == 24 and s.ch is not None
        _release_completions(h, owner_q)
        # (the user closes from its loop once its last completion is in)
        assert run_until(h, lambda: (close_when_done(), out)[1]) and out == [0]
        got = s.cpl.by_arg()
        assert len(got) == submitted and got["after"][0] is False
        assert all(got[t][0] is True for t in got if t != "after"), got
        assert events == [api.EVENT_REMOVE]
        for t in (0, 1):
            h.set_thread(t)
            assert api.get_by_name("R") is None
            assert not rbd_funnel._state()["pending"]     # no token left behind
    assert _watchers(c, img) == 0


# ------------------------------------------------------------------ process mode
def _sample(c, img, stop, seen):
    """While ``stop`` is unset: the image's watchers and exclusive-lock owners, as Ceph
    reports them."""
    while not stop.is_set():
        try:
            st = json.loads(c.rbd("status", "--format", "json", f"rbd/{img}", timeout=10))
            locks = json.loads(c.rbd("lock", "ls", "--format", "json", f"rbd/{img}", timeout=10))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError):
            continue
        seen.append(([w["address"] for w in st["watchers"]],
                     sorted(lk["locker"] for lk in locks)))


def test_bdevperf_verify_on_two_reactors_through_one_client(ceph_cluster, tmp_path):
    """ringstack bdevperf -w verify -C on two reactor processes, an image with Ceph's
    default features: it passes, and while both reactors write Ceph never sees more than
    one watcher, and one exclusive-lock owner, always the same."""
    c = ceph_cluster
    img = c.new_image(size="8M", features=DEFAULT_FEATURES)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(rbd_bdev_config(c, img)))
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "RINGSTACK_RBD_FUNNEL"}
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "bdevperf", "-q", "16", "-o",
                          "4096", "-w", "verify", "-t", "4", "-m", "0x3", "-C", "-c", str(cfg),
                          "--results", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=_sample, args=(c, img, stop, seen))
    try:
        sampler.start()
        stdout, stderr = p.communicate(timeout=90)
    finally:
        stop.set()
        sampler.join()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, stdout + stderr
    jobs = json.loads(out.read_text())["results"]
    assert [j["core_mask"] for j in jobs] == ["0x1", "0x2"]
    for j in jobs:
        assert j["status"] == "finished" and j["io_failed"] == 0 and j["iops"] > 0
        assert "mismatch" not in j
    # (a sample's two reads are ~0.1 s apart: at start and end one may see the lock and
    # the other no watcher yet / any more)
    assert ([1], True) in [([len(w)], bool(locks)) for w, locks in seen], seen
    assert all(len(w) <= 1 for w, _l in seen), seen
    assert len({lk for _w, locks in seen for lk in locks}) == 1, seen


# ------------------------------------------------------------- the idle poller
class _FakeImage:
    """What ImageQueue needs of rbd_lib.Image, with collect() scripted."""

    def __init__(self):
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.handle = None
        self.script = []
        self.collects = 0

    def completion(self, tag):
        return tag

    def release(self, c):
        pass

    def collect(self):
        self.collects += 1
        return self.script.pop(0) if self.script else (0, [])


def test_the_queue_poller_reads_the_signal_that_trails_a_completion():
    """librbd queues a completion, then signals the eventfd: a poll can collect it before
    the signal lands.  The idle queue must read the eventfd once more (or a sleeping
    reactor would wake on it forever), then stop making calls."""
    img = _FakeImage()
    with Harness(n_threads=1) as h:
        q = rbd_funnel.ImageQueue(img, "fake")
        done = []
        assert q.start(lambda handle, c: 0, (), lambda ctx, ret: done.append(ret), None) == 0
        tag = next(iter(q.ops))
        img.script = [(0, [(tag, 0)]), (1, [])]   # collected first, its signal second
        h.poll_threads()
        assert done == [0] and not q.ops
        assert img.collects == 2                  # came back for the trailing signal
        h.poll_threads()
        assert img.collects == 2                  # then idle: no call at all
        h.set_thread(0)
        q.close()
        h.poll_threads()
    os.close(img.efd)
