"""reactor/fanout.py: broadcast, gather, to_main and the death-safe walks, deterministic
(Harness with several reactors: every cross-reactor message is encoded as in process
mode).  A death is simulated as in tests/test_bdev_multi.py: the dead reactor's threads
are no longer polled and the survivors are told with ``mark_dead``."""
from __future__ import annotations

import logging
import os

import pytest

import reactor as rx
from reactor import fanout
from reactor.fanout import FanoutError
from reactor.stats import framework_get_reactors, thread_get_stats
from reactor.testing import Harness

EIO = 5


def _poll(h, alive):
    """Poll only the threads of the reactors in ``alive`` until nothing is left to do."""
    for _ in range(10_000):
        if not sum(h.poll_thread(i) for i, t in enumerate(h.threads) if t.reactor.index in alive):
            return
    raise RuntimeError("still busy")


def _log():
    return rx.current_reactor().locals.setdefault("test.fanout.log", [])


def _logs(h):
    return [r.locals.get("test.fanout.log", []) for r in h.reactors]


# ----------------------------------------------------------------------- handlers
@rx.remote("test.fanout.append")
def _append(done, value):
    _log().append(value)
    done(0)


@rx.remote("test.fanout.hold")
def _hold(done, value):
    """Record the visit, answer later (the test calls the stored done)."""
    r = rx.current_reactor()
    _log().append(value)
    r.locals.setdefault("test.fanout.held", []).append(done)


@rx.remote("test.fanout.answer")
def _answer_rc(done, rcs):
    done(dict(rcs).get(rx.current_reactor().index, 0))


@rx.remote("test.fanout.raise")
def _raise(done):
    raise RuntimeError("handler bug")


@rx.remote("test.fanout.kv_set")
def _kv_set(done, key, value):
    r = rx.current_reactor()
    kv = r.locals.setdefault("test.fanout.kv", {})
    if key in r.locals.get("test.fanout.refuse", ()):
        done(-17)
        return
    kv[key] = value
    done(0)


@rx.remote("test.fanout.kv_unset")
def _kv_unset(done, key, value):
    r = rx.current_reactor()
    r.locals.setdefault("test.fanout.kv", {}).pop(key, None)
    r.locals.setdefault("test.fanout.undone", []).append(key)
    done(0)


@rx.remote("test.fanout.whoami")
def _whoami(done, extra):
    done(0, [rx.current_reactor().index, extra])


@rx.remote("test.fanout.bad_value")
def _bad_value(done):
    done(0, 2 ** 64 if rx.current_reactor().index == 1 else 7)


@rx.remote("test.fanout.main")
def _main(done, x):
    done(0, x * 2, fanout.on_main_thread(), rx.get_thread().name)


@rx.remote("test.fanout.main_hold")
def _main_hold(done, x):
    rx.current_reactor().locals.setdefault("test.fanout.held", []).append(done)


@rx.remote("test.fanout.walk_visit")
def _walk_visit(it):
    it.ctx["seen"].append(rx.current_reactor().index)
    rx.for_each_channel_continue(it, 0)


@rx.remote("test.fanout.walk_hold")
def _walk_hold(it):
    it.ctx["seen"].append(rx.current_reactor().index)
    rx.current_reactor().locals.setdefault("test.fanout.held_walks", []).append(it)


def _held(h, index):
    return h.reactors[index].locals.get("test.fanout.held", [])


# ----------------------------------------------------------------------- broadcast
def test_broadcast_runs_on_every_reactor_at_once_and_joins_on_the_calling_thread():
    with Harness(4, n_reactors=2) as h:
        h.set_thread(2)                      # a second thread of reactor 0
        got = []
        rx.broadcast(_hold, ["x"], lambda rc: got.append((rc, rx.get_thread().name)))
        assert _logs(h) == [[], []]          # never inside the call
        h.poll_threads()
        # both reactors run it before either answered: in parallel, not a walk
        assert _logs(h) == [["x"], ["x"]] and got == []
        h.set_thread(1)
        _held(h, 1).pop()(0)
        h.poll_threads()
        assert got == []                     # reactor 0 has not answered yet
        h.set_thread(0)
        _held(h, 0).pop()(0)
        h.poll_threads()
        assert got == [(0, "ut_thread2")]    # once, on the thread that broadcast


def test_broadcasts_apply_in_the_senders_order_on_every_reactor():
    with Harness(3, n_reactors=3) as h:
        got = []
        for v in range(20):
            rx.broadcast(_append, [v], got.append)
        h.poll_threads()
        assert _logs(h) == [list(range(20))] * 3
        assert got == [0] * 20


def test_broadcast_include_self_false_skips_the_caller():
    with Harness(2, n_reactors=2) as h:
        got = []
        rx.broadcast(_append, ["r"], got.append, include_self=False)
        h.poll_threads()
        assert _logs(h) == [[], ["r"]] and got == [0]


def test_broadcast_rc_is_the_first_error_and_a_raising_handler_answers_eio(caplog):
    with Harness(3, n_reactors=3) as h:
        got = []
        rx.broadcast(_answer_rc, [[[1, -22], [2, -28]]], got.append)
        h.poll_threads()
        assert got == [-22]                  # reactor 1 answers before reactor 2
        rx.broadcast(_answer_rc, [[]], got.append)
        h.poll_threads()
        assert got == [-22, 0]
        with caplog.at_level(logging.ERROR):
            rx.broadcast(_raise, [], got.append)
            h.poll_threads()
        assert got == [-22, 0, -EIO] and "handler bug" in caplog.text


def test_gather_returns_every_reactors_value_and_a_value_that_cannot_cross_is_eio():
    with Harness(2, n_reactors=2) as h:
        got = []
        rx.gather(_whoami, ["e"], lambda rc, res: got.append((rc, res)))
        h.poll_threads()
        assert got == [(0, [(0, 0, [0, "e"]), (1, 0, (1, "e"))])]   # lists cross as tuples
        got.clear()
        rx.gather(_bad_value, [], lambda rc, res: got.append((rc, res)))
        h.poll_threads()
        assert got == [(-EIO, [(0, 0, 7), (1, -EIO, None)])]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad, reason", [
    (2 ** 64, "cannot cross"),                         # msgpack cannot encode it
    ("x" * (1 << 20), "larger than one ring record"),  # does not fit one ring record
])
def test_broadcast_and_to_main_validate_before_sending_anything(bad, reason):
    with Harness(2, n_reactors=2) as h:
        got = []
        with pytest.raises(FanoutError, match=reason) as exc:
            rx.broadcast(_append, [bad], got.append)
        assert "test.fanout.append" in str(exc.value)
        with pytest.raises(FanoutError, match=reason):
            rx.gather(_append, [bad], got.append, include_self=False)
        with pytest.raises(FanoutError, match=reason):
            rx.broadcast(_kv_set, ["k", bad], got.append, undo=_kv_unset)
        with pytest.raises(FanoutError, match=reason):
            fanout.check(_append, [bad])
        h.set_thread(1)
        with pytest.raises(FanoutError, match=reason):
            rx.to_main(_main, [bad], got.append)
        h.set_thread(0)
        # nothing was sent anywhere: no message ran, no callback, no state left behind
        assert h.poll_threads() == 0
        assert _logs(h) == [[], []] and got == []
        assert not h.reactors[0].locals.get("reactor.fanout", {}).get("ops")
        fanout.check(_append, ["fine"])      # the same check passes good arguments
        # the check does not depend on the reactor count: one reactor refuses it too
    with Harness(1) as h1:
        with pytest.raises(FanoutError, match=reason):
            rx.broadcast(_append, [bad], None)
        assert h1.poll_threads() == 0 and _logs(h1) == [[]]


def test_an_undo_that_cannot_cross_is_refused_before_sending():
    @rx.remote("test.fanout.undo_with_a_very_long_name" + "_" * 200)
    def undo(done, v):
        done(0)
    with Harness(2, n_reactors=2) as h:
        limit = h.reactors[0].max_record
        fanout.check(_append, ["y" * (limit - 100)])        # fits with the short name
        with pytest.raises(FanoutError, match="undo"):
            rx.broadcast(_append, ["y" * (limit - 100)], None, undo=undo)
        assert h.poll_threads() == 0 and _logs(h) == [[], []]
        with pytest.raises(TypeError, match="remote"):
            rx.broadcast(lambda done: done(0), [], None)


def test_the_harness_limit_is_a_process_mode_rings():
    from ipc.ring import Ring
    from reactor.app import RING_CAPACITY
    region = bytearray(Ring.region_size(RING_CAPACITY))
    ring = Ring(memoryview(region), RING_CAPACITY, init=True)
    with Harness(2, n_reactors=2) as h:
        assert h.reactors[0].max_record == ring.max_record


# ---------------------------------------------------------------------------- undo
def _kv(h):
    return [r.locals.get("test.fanout.kv", {}) for r in h.reactors]


def test_undo_reverts_the_reactors_that_applied_a_change_before_the_callback():
    with Harness(3, n_reactors=3) as h:
        h.reactors[1].locals["test.fanout.refuse"] = {"k"}
        seen = []

        def cb(rc):
            seen.append((rc, [dict(kv) for kv in _kv(h)]))
        rx.broadcast(_kv_set, ["k", 1], cb, undo=_kv_unset)
        h.poll_threads()
        # the callback saw the change already undone everywhere
        assert seen == [(-17, [{}, {}, {}])]
        assert _kv(h) == [{}, {}, {}]
        undone = [r.locals.get("test.fanout.undone", []) for r in h.reactors]
        assert undone == [["k"], [], ["k"]]  # not on the reactor that refused
        # a change everyone accepts stays, and nothing is undone
        rx.broadcast(_kv_set, ["j", 2], seen.append, undo=_kv_unset)
        h.poll_threads()
        assert seen[-1] == 0 and _kv(h) == [{"j": 2}] * 3


def test_undo_with_include_self_false_leaves_the_caller_to_its_caller():
    with Harness(3, n_reactors=3) as h:
        h.reactors[2].locals["test.fanout.refuse"] = {"k"}
        h.reactors[0].locals["test.fanout.kv"] = {"k": 1}   # the caller applied it itself
        got = []
        rx.broadcast(_kv_set, ["k", 1], got.append, include_self=False, undo=_kv_unset)
        h.poll_threads()
        assert got == [-17]
        assert _kv(h) == [{"k": 1}, {}, {}]
        assert h.reactors[0].locals.get("test.fanout.undone") is None


def test_undo_runs_on_the_survivors_when_a_reactor_dies_mid_broadcast():
    with Harness(3, n_reactors=3) as h:
        got = []
        rx.broadcast(_kv_set, ["k", 1], got.append, undo=_kv_unset)
        _poll(h, alive=(0, 1))               # reactor 2 never runs it
        assert _kv(h)[:2] == [{"k": 1}, {"k": 1}] and got == []
        h.reactors[0].mark_dead(2)
        h.reactors[1].mark_dead(2)
        _poll(h, alive=(0, 1))
        assert got == [-EIO]
        assert _kv(h) == [{}, {}, {}]


# -------------------------------------------------------------------------- deaths
def test_a_reactor_dying_mid_broadcast_answers_eio_once_and_later_ones_skip_it():
    with Harness(2, n_reactors=2) as h:
        got = []
        rx.broadcast(_append, ["a"], got.append)
        gathered = []
        rx.gather(_whoami, [0], lambda rc, res: gathered.append((rc, res)))
        _poll(h, alive=(0,))
        assert got == [] and gathered == []
        h.reactors[0].mark_dead(1)
        fanout.on_reactor_death(h.reactors[0], 1)     # a second report changes nothing
        _poll(h, alive=(0,))
        assert got == [-EIO]
        assert gathered == [(-EIO, [(0, 0, [0, 0]), (1, -EIO, None)])]
        # the 'dead' reactor answers after all: dropped, nothing is counted twice
        h.poll_threads()
        assert got == [-EIO] and len(gathered) == 1
        # later broadcasts do not wait for it (and do not run there)
        before = list(_logs(h)[1])
        rx.broadcast(_append, ["b"], got.append)
        _poll(h, alive=(0,))
        assert got == [-EIO, 0]
        h.poll_threads()
        assert _logs(h)[1] == before


def test_a_death_is_counted_once_per_reactor_while_others_are_still_pending():
    with Harness(3, n_reactors=3) as h:
        got = []
        rx.gather(_hold, ["g"], lambda rc, res: got.append((rc, [(i, rc) for i, rc, _v in res])))
        rx.broadcast(_hold, ["b"], got.append)
        h.poll_thread(0)                     # reactor 0 runs both and answers later
        h.set_thread(0)
        for done in _held(h, 0):
            done(0)
        _poll(h, alive=(0,))
        # reactor 1 dies before answering; its answer comes late, while reactor 2 is
        # still pending: it must not replace the -EIO it was counted as
        h.reactors[0].mark_dead(1)
        _poll(h, alive=(0,))
        h.poll_thread(1)
        h.set_thread(1)
        for done in _held(h, 1):
            done(0)
        _poll(h, alive=(0, 1))
        assert got == []
        fanout.on_reactor_death(h.reactors[0], 1)    # a second report changes nothing
        h.poll_thread(2)
        h.set_thread(2)
        for done in _held(h, 2):
            done(0)
        _poll(h, alive=(0, 2))
        assert got == [(-EIO, [(0, 0), (1, -EIO), (2, 0)]), -EIO]


def test_a_reactor_that_answered_then_died_is_not_counted_as_failed():
    with Harness(3, n_reactors=3) as h:
        got = []
        rx.broadcast(_hold, ["b"], got.append)
        for i in (0, 1, 2):
            h.poll_thread(i)
        for i in (0, 1):
            h.set_thread(i)
            _held(h, i).pop()(0)
        _poll(h, alive=(0, 1))
        h.reactors[0].mark_dead(1)           # it had answered 0 already
        _poll(h, alive=(0,))
        assert got == []
        h.set_thread(2)
        _held(h, 2).pop()(0)
        _poll(h, alive=(0, 2))
        assert got == [0]


def test_a_reactor_dying_during_the_undo_does_not_strand_it():
    with Harness(3, n_reactors=3) as h:
        h.reactors[1].locals["test.fanout.refuse"] = {"k"}
        got = []
        rx.broadcast(_kv_set, ["k", 1], got.append, undo=_kv_unset)
        _poll(h, alive=(0, 1, 2))
        assert got == [-17]
        # again, but reactor 2 stops between applying and undoing
        got.clear()
        rx.broadcast(_kv_set, ["k", 1], got.append, undo=_kv_unset)
        h.poll_thread(0)                     # reactor 0 applies; reactors 1, 2 get it
        h.poll_thread(1)
        h.poll_thread(2)
        _poll(h, alive=(0, 1))               # the undo reaches reactor 2, never runs
        assert got == []
        h.reactors[0].mark_dead(2)
        _poll(h, alive=(0, 1))
        assert got == [-17] and _kv(h)[0] == {}


def test_a_reactor_dying_mid_walk_completes_the_walk_with_eio_and_drops_its_late_end(caplog):
    with Harness(2, n_reactors=2) as h:
        got = []
        rx.for_each_reactor(_walk_hold, {"seen": []}, lambda it, st: got.append((st, it.ctx["seen"])))
        _poll(h, alive=(0,))
        assert got == []
        held = h.reactors[0].locals["test.fanout.held_walks"]
        h.set_thread(0)
        rx.for_each_channel_continue(held.pop(), 0)   # reactor 0 is done: the walk leaves
        h.poll_threads()
        assert got == [] and h.reactors[1].locals["test.fanout.held_walks"]   # at reactor 1
        h.reactors[0].mark_dead(1)
        _poll(h, alive=(0,))
        assert got == [(-EIO, [0])]
        # reactor 1 was not dead after all and finishes the walk: dropped quietly
        h.set_thread(1)
        rx.for_each_channel_continue(h.reactors[1].locals["test.fanout.held_walks"].pop(), 0)
        with caplog.at_level(logging.ERROR):
            h.poll_threads()
        assert got == [(-EIO, [0])] and "unknown walk" not in caplog.text
        # later walks skip the dead reactor
        h.set_thread(0)
        rx.for_each_reactor(_walk_visit, {"seen": []}, lambda it, st: got.append((st, it.ctx["seen"])))
        _poll(h, alive=(0,))
        assert got[-1] == (0, [0])


def test_a_walk_still_on_its_origin_reactor_is_not_failed_by_a_death():
    with Harness(2, n_reactors=2) as h:
        got = []
        fanout.for_each_reactor(_walk_hold, {"seen": []}, lambda it, st: got.append((st, it.ctx["seen"])))
        _poll(h, alive=(0,))
        h.reactors[0].mark_dead(1)
        _poll(h, alive=(0,))
        assert got == []                     # still here: it will simply skip reactor 1
        rx.for_each_channel_continue(h.reactors[0].locals["test.fanout.held_walks"].pop(), 0)
        _poll(h, alive=(0,))
        assert got == [(0, [0])]


def test_a_reactor_dying_mid_channel_walk_fails_the_walk():
    with Harness(2, n_reactors=2) as h:
        rx.io_device_register("test.fanout.dev", _dev_create, _dev_destroy)
        h.poll_threads()
        chans = []
        for i in (0, 1):
            h.set_thread(i)
            chans.append(rx.get_io_channel("test.fanout.dev"))
        h.set_thread(0)
        got = []
        fanout.for_each_channel("test.fanout.dev", _walk_visit, {"seen": []},
                                lambda it, st: got.append(st))
        _poll(h, alive=(0,))
        h.reactors[0].mark_dead(1)
        _poll(h, alive=(0,))
        assert got == [-EIO]


@rx.remote("test.fanout.dev_create")
def _dev_create(dev):
    return {}


@rx.remote("test.fanout.dev_destroy")
def _dev_destroy(dev, ctx):
    pass


def test_to_main_runs_on_the_main_thread_and_answers_the_calling_thread():
    with Harness(4, n_reactors=2) as h:
        h.set_thread(3)                      # reactor 1, not its default thread
        got = []
        assert not rx.on_main_thread()
        rx.to_main(_main, [21], lambda *v: got.append((v, rx.get_thread().name)))
        assert got == []
        h.poll_threads()
        assert got == [((0, 42, True, "ut_thread0"), "ut_thread3")]
        h.set_thread(0)
        assert rx.on_main_thread()


def test_a_to_main_that_cannot_answer_calls_back_with_fail(caplog):
    with Harness(2, n_reactors=2) as h:
        h.set_thread(1)
        got = []
        with caplog.at_level(logging.ERROR):
            rx.to_main(_raise, [], lambda *v: got.append(v), fail=(-EIO, None))
            h.poll_threads()
        assert got == [(-EIO, None)]


def test_reactor_0_dying_mid_to_main_fails_it_once_and_later_ones_at_once():
    with Harness(2, n_reactors=2) as h:
        h.set_thread(1)
        got = []
        rx.to_main(_main_hold, [1], lambda *v: got.append(v))
        _poll(h, alive=(1,))                 # reactor 0 never runs it
        h.poll_thread(0)                     # ... or runs it and never answers
        assert got == [] and len(_held(h, 0)) == 1
        h.reactors[1].mark_dead(0)
        _poll(h, alive=(1,))
        assert got == [(-EIO,)]
        # the main thread answers after all: dropped
        h.set_thread(0)
        _held(h, 0).pop()(0, "late")
        h.poll_threads()
        assert got == [(-EIO,)]
        # a later to_main does not wait for the dead main reactor
        h.set_thread(1)
        rx.to_main(_main, [1], lambda *v: got.append(v), fail=("dead",))
        assert got == [(-EIO,)]              # a message, never inside the call
        _poll(h, alive=(1,))
        assert got == [(-EIO,), ("dead",)]


# --------------------------------------------------------------------------- stats
def test_stats_gather_every_reactor_and_are_not_stranded_by_a_death():
    with Harness(3, n_reactors=2) as h:
        got = []
        framework_get_reactors(got.append)
        thread_get_stats(got.append)
        h.poll_threads()
        assert [e["lcore"] for e in got[0]["reactors"]] == [0, 1]
        assert isinstance(got[0]["reactors"][1]["lw_threads"], list)
        assert [t["name"] for t in got[1]["threads"]] == ["ut_thread0", "ut_thread2", "ut_thread1"]
        got.clear()
        framework_get_reactors(got.append)
        thread_get_stats(got.append)
        _poll(h, alive=(0,))
        assert got == []
        h.reactors[0].mark_dead(1)
        _poll(h, alive=(0,))
        assert [e["lcore"] for e in got[0]["reactors"]] == [0]
        assert [t["name"] for t in got[1]["threads"]] == ["ut_thread0", "ut_thread2"]
        got.clear()
        framework_get_reactors(got.append)
        _poll(h, alive=(0,))
        assert [e["lcore"] for e in got[0]["reactors"]] == [0]


def test_idle_reactors_have_nothing_to_do_after_a_fanout():
    with Harness(2, n_reactors=2) as h:
        rx.broadcast(_append, [1], None)
        rx.gather(_whoami, [1], None)
        h.poll_threads()
        assert not any(t.has_pending_work() for t in h.threads)
        assert not any(r.transport.pending() for r in h.reactors)
        assert all(t.poller_counts() == (0, 0, 0) for t in h.threads)   # no poller added
