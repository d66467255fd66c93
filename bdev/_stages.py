"""The stages the I/O path calls up into (docs/architecture.md, Layers).

QoS (_qos.py) and statistics (_stats.py) sit *above* the rooms that open and close
descriptors, create and destroy channels, submit and complete I/O -- they use those
rooms -- yet those rooms must call them at a few points: register reads a bdev's QoS
configuration, channel create enables QoS on the channel, channel destroy folds the
channel's stats into the bdev, submit routes to the QoS thread, a freed buffer retries
I/O waiting to be funnelled, close stops the queue-depth poller.  The completion room
likewise hands a module's reset completion to the reset room above it.  The rooms form
an import DAG (lower rooms never import higher ones; tests/test_faces.py checks it), so
each such stage is an object defined here, at the bottom, whose entries the stage's own
module fills in when it is imported (``import bdev`` imports every room before any I/O
can run; ``missing()`` lists entries nobody filled in).

A call through a stage costs what the old call into the module did -- one module global
and one attribute (``qos_stage.route(io)`` for ``_qos.route(io)``) -- and the inlined hot
paths (read_blocks, write_blocks, io_complete of a read or write) call none of them.
"""
from __future__ import annotations


class Stage:
    """A set of entries a higher room installs (``install``); every entry is a plain
    function, called as ``stage.entry(...)``."""

    __slots__ = ()

    def install(self, **entries) -> None:
        for name, fn in entries.items():
            setattr(self, name, fn)          # __slots__: a misspelt entry raises here

    def missing(self) -> list:
        return [n for n in type(self).__slots__ if not hasattr(self, n)]

    def __repr__(self):
        return f"<{type(self).__name__} missing={self.missing()}>"


class QosStage(Stage):
    """Installed by _qos.py.  ``route(io)``: the QoS branch of submit (the channel has QoS
    on); ``io_submit(ch)``: submit the QoS queue while quota remains (the I/O was queued on
    the QoS thread); ``retry_fwd_wait(mgmt)``: a buffer came back and I/O waits for one
    to be funnelled; ``enable_on_channel(bdev, ch)``; ``abort_pending(bdev, ch)``: fail
    the channel's I/O still waiting to be funnelled; ``config_from_conf(bdev, conf)``;
    ``on_fini(bdev)``; ``report_open_descs(bdev, is_open)``: first open / last close."""

    __slots__ = ("route", "io_submit", "retry_fwd_wait", "enable_on_channel", "abort_pending",
                 "config_from_conf", "on_fini", "report_open_descs")


class StatsStage(Stage):
    """Installed by _stats.py.  ``histogram_add(ch, lat_ns)``, ``histogram_fold(bdev,
    buckets)`` (a destroyed channel's histogram), ``stop_qd(bdev)``,
    ``set_qd_sampling_period(bdev, period)``."""

    __slots__ = ("histogram_add", "histogram_fold", "stop_qd", "set_qd_sampling_period")


class ResetStage(Stage):
    """Installed by _reset.py.  ``complete(io, status)``: a module completed a reset."""

    __slots__ = ("complete",)


qos_stage = QosStage()
stats_stage = StatsStage()
reset_stage = ResetStage()
STAGES = (qos_stage, stats_stage, reset_stage)


def missing() -> list:
    """``"QosStage.route"``... for every entry no room installed (empty once ``import
    bdev`` has run)."""
    return [f"{type(s).__name__}.{n}" for s in STAGES for n in s.missing()]
