"""Deterministic-mode tests of threads, pollers, channels and walks: the scenarios of
SPDK's thread_ut.c, written for ringstack."""
import pytest

import reactor as rx
from reactor.testing import Harness


@pytest.fixture
def h3():
    with Harness(3) as h:
        yield h


def test_send_msg_runs_later_in_order(h3):
    out = []
    for i in range(20):
        assert rx.send_msg(h3.threads[1], out.append, i) == 0
    assert out == []                       # never before send_msg returns
    h3.poll_thread(1)
    assert out == list(range(rx.MSG_BATCH_SIZE))   # one batch per poll
    h3.poll_threads()
    assert out == list(range(20))


def test_message_sent_from_a_message_runs_next_pass(h3):
    out = []

    def first():
        out.append("first")
        rx.send_msg(h3.threads[0], out.append, "inner")

    rx.send_msg(h3.threads[0], first)
    rx.send_msg(h3.threads[0], out.append, "second")
    h3.poll_thread(0)
    assert out == ["first", "second"]
    h3.poll_thread(0)
    assert out == ["first", "second", "inner"]


def test_send_to_exited_thread_is_eio(h3):
    t = h3.threads[2]
    t.exit()
    h3.poll_threads()
    assert t.state == "exited"
    assert rx.send_msg(t, print) == -5


def test_active_poller_runs_every_poll_and_reports_busy(h3):
    runs = []
    p = rx.poller_register(lambda arg: runs.append(arg) or rx.POLLER_BUSY, "a")
    assert h3.poll_thread(0) == 1
    assert h3.poll_thread(0) == 1
    assert runs == ["a", "a"]
    rx.poller_unregister(p)
    assert h3.poll_thread(0) == 0
    assert runs == ["a", "a"]


def test_timed_pollers_equal_deadlines_run_in_registration_order(h3):
    out = []
    rx.poller_register(lambda _: out.append("p1"), None, 1000)
    rx.poller_register(lambda _: out.append("p2"), None, 1000)
    h3.poll_thread(0)
    assert out == []
    h3.advance_time_us(999)
    h3.poll_thread(0)
    assert out == []
    h3.advance_time_us(1)
    h3.poll_thread(0)
    assert out == ["p1", "p2"]
    h3.advance_time_us(1000)
    h3.poll_thread(0)
    assert out == ["p1", "p2", "p1", "p2"]


def test_timed_poller_unregisters_itself(h3):
    out = []
    box = {}

    def once(_):
        out.append(1)
        rx.poller_unregister(box["p"])
        return rx.POLLER_BUSY

    box["p"] = rx.poller_register(once, None, 10)
    for _ in range(5):
        h3.advance_time_us(10)
        h3.poll_thread(0)
    assert out == [1]
    assert h3.threads[0].poller_counts() == (0, 0, 0)


def test_poller_pause_and_resume(h3):
    out = []
    p = rx.poller_register(lambda _: out.append("t"), None, 100)
    a = rx.poller_register(lambda _: out.append("a"))
    rx.poller_pause(p)
    rx.poller_pause(a)
    h3.advance_time_us(500)
    h3.poll_thread(0)
    assert out == []
    assert h3.threads[0].poller_counts() == (0, 0, 2)
    rx.poller_resume(p)
    rx.poller_resume(a)
    h3.poll_thread(0)
    assert out == ["a"]            # the timed one is rescheduled a full period from resume
    h3.advance_time_us(100)
    h3.poll_thread(0)
    assert out == ["a", "a", "t"]


def test_pause_then_resume_before_it_takes_effect(h3):
    out = []
    p = rx.poller_register(lambda _: out.append(1))
    rx.poller_pause(p)
    rx.poller_resume(p)
    h3.poll_thread(0)
    assert out == [1]


def test_poller_calls_from_other_thread_refused(h3):
    p = rx.poller_register(lambda _: 0)
    h3.set_thread(1)
    with pytest.raises(rx.ThreadError, match="belongs to ut_thread0"):
        rx.poller_unregister(p)


def test_poller_exception_is_logged_not_fatal(h3, caplog):
    out = []
    rx.poller_register(lambda _: 1 / 0)
    rx.poller_register(lambda _: out.append(1))
    h3.poll_thread(0)
    assert out == [1]
    assert "ZeroDivisionError" in caplog.text


# ----------------------------------------------------------------------- channels
class Dev:
    def __init__(self):
        self.created = []
        self.destroyed = []

    def create(self, io_device):
        ctx = {"thread": rx.get_thread().name}
        self.created.append(ctx["thread"])
        return ctx

    def destroy(self, io_device, ctx):
        self.destroyed.append(ctx["thread"])


def test_channel_refcount_and_deferred_destroy(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    ch1 = rx.get_io_channel(d)
    ch2 = rx.get_io_channel(d)
    assert ch1 is ch2 and ch1.ctx == {"thread": "ut_thread0"} and d.created == ["ut_thread0"]
    rx.put_io_channel(ch1)
    h3.poll_threads()
    assert d.destroyed == []
    rx.put_io_channel(ch2)
    assert d.destroyed == []            # deferred, never inside put
    h3.poll_threads()
    assert d.destroyed == ["ut_thread0"]
    done = []
    rx.io_device_unregister(d, lambda: done.append(True))
    h3.poll_threads()
    assert done == [True]


def test_channel_reacquired_before_deferred_destroy(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    ch = rx.get_io_channel(d)
    rx.put_io_channel(ch)
    ch_again = rx.get_io_channel(d)
    h3.poll_threads()
    assert ch_again is ch and d.destroyed == [] and len(d.created) == 1
    rx.put_io_channel(ch_again)
    h3.poll_threads()
    assert d.destroyed == ["ut_thread0"]
    rx.io_device_unregister(d)


def test_unregister_waits_for_last_channel(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    h3.set_thread(1)
    ch = rx.get_io_channel(d)
    h3.set_thread(0)
    done = []
    rx.io_device_unregister(d, lambda: done.append(rx.get_thread().name))
    assert rx.get_io_channel(d) is None      # no new channels after unregister
    h3.poll_threads()
    assert done == []
    h3.set_thread(1)
    rx.put_io_channel(ch)
    h3.poll_threads()
    assert done == ["ut_thread0"]            # on the unregistering thread


def test_unregister_completes_on_the_default_thread_when_the_unregistering_one_exited(h3):
    """A thread that unregisters a device and exits while another thread still holds a
    channel: the completion is not lost (the layer above waits on it), it runs on the
    reactor's default thread."""
    d = Dev()
    h3.set_thread(1)
    rx.io_device_register(d, d.create, d.destroy)
    h3.set_thread(2)
    ch = rx.get_io_channel(d)
    h3.set_thread(1)
    done = []
    rx.io_device_unregister(d, lambda: done.append(rx.get_thread().name))
    h3.threads[1].exit()
    h3.poll_threads()
    assert h3.threads[1].state == "exited" and done == []
    h3.set_thread(2)
    rx.put_io_channel(ch)
    h3.poll_threads()
    assert done == ["ut_thread0"]


def test_get_channel_of_unknown_device_is_none(h3):
    assert rx.get_io_channel(object()) is None


def _put_channels(h, chans, only=None):
    """Release each thread's channel on its own thread, then make thread 0 current."""
    for i, ch in chans.items():
        if only is None or i in only:
            h.set_thread(i)
            rx.put_io_channel(ch)
    h.set_thread(0)


def _make_channels(h, d, threads):
    chans = {}
    for i in threads:
        h.set_thread(i)
        chans[i] = rx.get_io_channel(d)
    h.set_thread(0)
    return chans


def test_for_each_channel_visits_in_turn_and_completes_on_origin(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    chans = _make_channels(h3, d, [0, 1, 2])
    seen = []

    def fn(it):
        seen.append((rx.get_thread().name, it.get_channel() is chans[int(rx.get_thread().name[-1])]))
        it.ctx["n"] += 1
        rx.for_each_channel_continue(it, 0)

    result = []
    rx.for_each_channel(d, fn, {"n": 0}, lambda it, st: result.append((rx.get_thread().name, st, it.ctx["n"])))
    assert seen == []
    h3.poll_threads()
    assert seen == [("ut_thread0", True), ("ut_thread1", True), ("ut_thread2", True)]
    assert result == [("ut_thread0", 0, 3)]
    _put_channels(h3, chans)
    h3.poll_threads()


def test_for_each_channel_stops_on_nonzero_status(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    chans = _make_channels(h3, d, [0, 1, 2])
    seen = []

    def fn(it):
        seen.append(rx.get_thread().name)
        rx.for_each_channel_continue(it, -5 if rx.get_thread().name == "ut_thread1" else 0)

    result = []
    rx.for_each_channel(d, fn, None, lambda it, st: result.append(st))
    h3.poll_threads()
    assert seen == ["ut_thread0", "ut_thread1"] and result == [-5]
    _put_channels(h3, chans)
    h3.poll_threads()


def test_for_each_channel_channel_removed_mid_walk(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    chans = _make_channels(h3, d, [0, 1, 2])
    seen = []

    def fn(it):
        seen.append(rx.get_thread().name)
        rx.for_each_channel_continue(it, 0)

    rx.for_each_channel(d, fn, None, lambda it, st: seen.append(("done", st)))
    h3.poll_thread(0)          # visits thread 0, queues the visit to thread 1
    h3.set_thread(1)
    rx.put_io_channel(chans[1])
    h3.poll_thread(1)          # deferred destroy runs before the walk message? order: put after
    h3.poll_threads()
    assert seen[0] == "ut_thread0" and seen[-1] == ("done", 0)
    # thread 1's channel was destroyed before or right after its visit; thread 2 was visited
    assert "ut_thread2" in seen
    _put_channels(h3, chans, only=(0, 2))
    h3.poll_threads()


def test_for_each_channel_skips_channel_released_before_visit(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    chans = _make_channels(h3, d, [0, 1, 2])
    h3.set_thread(1)
    rx.put_io_channel(chans[1])
    h3.poll_thread(1)          # channel on thread 1 destroyed
    h3.set_thread(0)
    seen = []
    rx.for_each_channel(d, lambda it: (seen.append(rx.get_thread().name), rx.for_each_channel_continue(it, 0)),
                        None, lambda it, st: seen.append("done"))
    h3.poll_threads()
    assert seen == ["ut_thread0", "ut_thread2", "done"]
    _put_channels(h3, chans, only=(0, 2))
    h3.poll_threads()


def test_for_each_channel_unknown_device_completes_enodev_async(h3):
    out = []
    rx.for_each_channel(object(), lambda it: None, None, lambda it, st: out.append(st))
    assert out == []
    h3.poll_threads()
    assert out == [-19]


def test_unregister_deferred_behind_outstanding_walk(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    chans = _make_channels(h3, d, [0, 1])
    held = []
    rx.for_each_channel(d, lambda it: held.append(it), None, lambda it, st: held.append("done"))
    h3.poll_threads()
    assert len(held) == 1          # fn on thread 0 has not continued yet
    _put_channels(h3, chans)
    done = []
    rx.io_device_unregister(d, lambda: done.append(True))
    h3.poll_threads()
    assert done == []              # the walk is still visiting the device
    h3.set_thread(0)
    rx.for_each_channel_continue(held[0], 0)
    h3.poll_threads()
    assert held[-1] == "done" and done == [True]


def test_for_each_thread(h3):
    seen = []
    rx.for_each_thread(lambda ctx: seen.append(rx.get_thread().name), {"x": 1},
                       lambda ctx: seen.append(("cpl", rx.get_thread().name, ctx)))
    h3.poll_threads()
    assert seen == ["ut_thread0", "ut_thread1", "ut_thread2", ("cpl", "ut_thread0", {"x": 1})]


# --------------------------------------------------------------------- thread exit
def test_thread_exit_waits_for_pollers_and_channels(h3):
    d = Dev()
    rx.io_device_register(d, d.create, d.destroy)
    h3.set_thread(1)
    p = rx.poller_register(lambda _: 0)
    ch = rx.get_io_channel(d)
    exited = []
    rx.thread_exit(cb=lambda: exited.append(True))
    h3.poll_threads()
    t = h3.threads[1]
    assert t.state == "exiting" and exited == []
    rx.poller_unregister(p)
    h3.poll_threads()
    assert t.state == "exiting"          # still holds a channel
    h3.set_thread(1)
    rx.put_io_channel(ch)
    h3.poll_threads()
    assert t.state == "exited" and exited == [True]
    with pytest.raises(rx.ThreadError):
        h3.set_thread(1)
        rx.poller_register(lambda _: 0)


def test_exiting_thread_still_runs_messages(h3):
    out = []
    t = h3.threads[2]
    t.exit()
    rx.send_msg(t, out.append, 1)
    h3.poll_threads()
    assert out == [1] and t.state == "exited"


# ------------------------------------------------------------- across two reactors
@rx.remote("test.walk_fn")
def _walk_fn(it):
    it.ctx["visits"].append(rx.get_thread().name)
    it.ctx["n"] += 1
    rx.for_each_channel_continue(it, 0)


@rx.remote("test.dev_create")
def _dev_create(io_device):
    return {"reactor": rx.current_reactor().index}


@rx.remote("test.dev_destroy")
def _dev_destroy(io_device, ctx):
    pass


def test_replicated_io_device_and_walk_carry_ctx_by_value():
    with Harness(4, n_reactors=2) as h:
        done = []
        rx.io_device_register("test.dev", _dev_create, _dev_destroy, cb=lambda: done.append(1))
        assert not rx.io_device_is_registered("test.dev") or True
        h.poll_threads()
        assert done == [1]
        chans = {}
        for i in range(4):
            h.set_thread(i)
            chans[i] = rx.get_io_channel("test.dev")
            assert chans[i].ctx == {"reactor": i % 2}
        h.set_thread(0)
        ctx = {"n": 0, "visits": []}
        result = []
        rx.for_each_channel("test.dev", _walk_fn, ctx, lambda it, st: result.append((st, it.ctx)))
        h.poll_threads()
        st, final = result[0]
        assert st == 0 and final["n"] == 4
        # reactor 0's threads (0, 2) then reactor 1's (1, 3)
        assert list(final["visits"]) == ["ut_thread0", "ut_thread2", "ut_thread1", "ut_thread3"]
        assert ctx["n"] == 2               # by value: the caller's object saw only reactor 0
        _put_channels(h, chans)
        gone = []
        rx.io_device_unregister("test.dev", lambda: gone.append(1))
        h.poll_threads()
        assert gone == [1]
        for i in range(2):
            h.set_thread(i)
            assert not rx.io_device_is_registered("test.dev")


def test_unregistered_function_cannot_cross_reactors():
    with Harness(2, n_reactors=2) as h:
        with pytest.raises(TypeError, match="not registered"):
            rx.send_msg(h.threads[1], print, "x")
        with pytest.raises(TypeError, match="must be registered"):
            rx.for_each_thread(lambda ctx: None)


def test_malformed_record_is_dropped_and_next_delivered(caplog):
    out = []

    @rx.remote("test.collect")
    def collect(x):
        out.append(x)

    with Harness(2, n_reactors=2) as h:
        h.reactors[0].transport.send(1, b"\xc1garbage")
        rx.send_msg(h.threads[1], collect, 7)
        h.poll_threads()
        assert out == [7]
        assert "malformed" in caplog.text


def test_dead_reactor_is_skipped_and_watchers_run():
    with Harness(2, n_reactors=2) as h:
        seen = []
        rx.watch_reactor_death(seen.append)
        rx.current_reactor().mark_dead(1)
        rx.current_reactor().mark_dead(1)          # once only
        assert seen == [1]
        assert rx.send_msg(h.threads[1], _walk_fn, None) == -5
        visits = []
        rx.for_each_thread(_record_thread, {"names": []},
                           lambda ctx: visits.append(list(ctx["names"])))
        h.poll_threads()
        assert visits == [["ut_thread0"]]          # reactor 1 skipped, the walk completed


@rx.remote("test.record_thread")
def _record_thread(ctx):
    ctx["names"].append(rx.get_thread().name)
