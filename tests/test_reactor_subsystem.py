"""Subsystems: dependency order, asynchronous init, reverse fini, failures."""
import pytest

from reactor import subsystem


@pytest.fixture(autouse=True)
def clean_registry():
    saved = dict(subsystem._registry)
    subsystem._registry.clear()
    yield
    subsystem._registry.clear()
    subsystem._registry.update(saved)


def test_init_in_dependency_order_async_and_fini_in_reverse():
    log, pending = [], []

    def mk(name):
        def init(done):
            log.append(("init", name))
            pending.append(done)          # completes later, like an async module init
        def fini(done):
            log.append(("fini", name))
            done()
        return init, fini

    for name, deps in (("bdev", ("accel",)), ("nbd", ("bdev",)), ("accel", ())):
        init, fini = mk(name)
        subsystem.register_subsystem(name, init, fini, deps)
    result = []
    subsystem.init_all(result.append)
    assert log == [("init", "accel")] and result == []      # waits for done()
    pending.pop()(0)
    assert log[-1] == ("init", "bdev")
    pending.pop()(0)
    pending.pop()(0)
    assert log == [("init", "accel"), ("init", "bdev"), ("init", "nbd")] and result == [0]
    finished = []
    subsystem.fini_all(lambda: finished.append(True))
    assert log[3:] == [("fini", "nbd"), ("fini", "bdev"), ("fini", "accel")] and finished == [True]


def test_failed_init_stops_and_fini_covers_only_initialised():
    log = []
    subsystem.register_subsystem("a", lambda done: done(0), lambda done: (log.append("fini a"), done()))
    subsystem.register_subsystem("b", lambda done: done(-12), lambda done: (log.append("fini b"), done()))
    subsystem.register_subsystem("c", lambda done: log.append("init c"), None, ("b",))
    result = []
    subsystem.init_all(result.append)
    assert result == [-12] and "init c" not in log
    subsystem.fini_all(lambda: None)
    assert log == ["fini a"]


def test_cycle_and_unknown_dependency_refused():
    subsystem.register_subsystem("x", depends=("y",))
    subsystem.register_subsystem("y", depends=("x",))
    with pytest.raises(ValueError, match="cycle"):
        subsystem.ordered()
    result = []
    subsystem.init_all(result.append)
    assert result == [-22]
    subsystem._registry.clear()
    subsystem.register_subsystem("z", depends=("nope",))
    with pytest.raises(ValueError, match="unknown subsystem 'nope'"):
        subsystem.ordered()


def test_write_config_in_init_order():
    subsystem.register_subsystem("b", depends=("a",), write_config=lambda: [{"method": "m_b", "params": {}}])
    subsystem.register_subsystem("a", write_config=lambda: [])
    assert subsystem.write_config() == [{"subsystem": "a", "config": []},
                                        {"subsystem": "b", "config": [{"method": "m_b", "params": {}}]}]
