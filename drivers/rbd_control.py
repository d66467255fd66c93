"""The rbd bdev's control side (SPDK's module/bdev/rbd/bdev_rbd.c: registered clusters,
create, delete, resize), with no librados/librbd call on a reactor.

Every call that can wait on the cluster -- ``rados_create``/``rados_connect``, ioctx
create, ``rbd_open``, stat, ``rbd_resize``, ``rbd_close``, ``rados_shutdown`` -- runs on an
offload worker (reactor/offload.py); its outcome comes back to the reactor thread that
asked, and the RPC answers when the work is done.  Meanwhile every reactor keeps serving
I/O and the main thread keeps answering RPCs.  SPDK runs the same calls on a pthread of
its own (``spdk_call_unaffinitized``) but joins it, so its app thread waits.

**All or nothing, in two phases** (every reactor has its own clients and image handles):

1. *prepare*, on every reactor at once (a gather from the main thread): a worker connects
   the client (a registration) or opens the image (a create: with its own client, or the
   reactor's client of the registered cluster) and the reactor keeps the result under the
   request's token, registered nowhere;
2. when every reactor has answered: *commit* -- the main thread registers (the bdev, or
   the cluster) and broadcasts the same to the others, each of which takes its prepared
   handle (no cluster call: nothing waits) -- or, if any reactor failed, *discard*
   everywhere (the prepared handles closed on workers), then the error is answered.

**Rules for a request that meets a pending one** (decided on the main thread, which runs
every rbd RPC and alone keeps the table of pending requests):

* A name is taken when its create starts: a second ``bdev_rbd_create`` of that name
  while the first is pending is -EEXIST (as SPDK's, where the first would have finished);
  ``CephN`` default names skip pending ones.  A second ``bdev_rbd_register_cluster`` of a
  pending cluster name fails as a registered one does (-1).
* ``bdev_rbd_delete`` of a name whose create is pending cancels the create: the delete
  answers true at once; the create answers -ECANCELED once what it opened is closed on
  every reactor; nothing is left.
* ``bdev_rbd_unregister_cluster`` is refused (-1, as SPDK) while a bdev or a create --
  even a cancelled one whose handles are still closing -- uses the cluster.  A cluster
  whose registration is pending is not registered: unregistering it is -1 as well, and
  a create naming it is -1 (no such cluster).
* A disk's resize and its close run on the disk's lane, one at a time in order, so the
  close of a bdev deleted during a resize waits for it.
* Shutdown during a pending connect does not wait for it: the reactor thread abandons the
  job when it exits (offload), the worker closes what the call returns, and the process
  exits with the worker (a daemon thread).

**core_mask** (``bdev_rbd_register_cluster``), as SPDK: the worker that creates and
connects the cluster's client runs with that CPU affinity, so the threads librados starts
for that client inherit it; every later control call of that cluster (image opens,
closes, the shutdown) runs with it too.  Each reactor's client of the cluster is connected
this way.  An invalid mask is SPDK's -1.

**Errors**, as SPDK's RPCs answer them (code and ``spdk_strerror`` message), with the
reason in the JSON-RPC error's ``data`` (SPDK writes it only to its log):

=============================================================  ==========================
a registration that cannot connect, read its file, set an      -1 Operation not permitted
option or use its core_mask; a duplicate cluster name;
unregister of an unknown or used cluster
a create that cannot connect, find the pool or the image, or   -1 Operation not permitted
names an unknown cluster
a duplicate bdev name                                          -17 File exists
block size 0 or not a multiple of 512; a resize smaller than   -22 Invalid argument
the image or of a bdev of another module
delete/resize of an unknown bdev                               -19 No such device
a create cancelled by a delete (ringstack only)                -125 Operation canceled
=============================================================  ==========================
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import string
import time
import uuid as _uuid

import reactor as rx
from bdev import api
from bdev import module as bm

from . import _vbdev, rbd, rbd_funnel, rbd_lib
from .rbd import TIMEOUTS, RbdDisk, _clusters, rbd_module

log = logging.getLogger("ringstack.rbd")

#: SPDK's bare -1 (spdk_strerror(1): "Operation not permitted") for a failed registration,
#: connect, open, and the cluster errors.
SPDK_FAIL = -1
#: SPDK_CPUSET_SIZE: the largest core a core_mask may name, plus one.
CPUSET_SIZE = 1024
#: How long a replica waits for its image handle to see a resize done through another.
RESIZE_SEEN_S = 5.0

_tokens = itertools.count(1)


#: Longest user-given text (a name, a mask) quoted in a log line or an error's reason: a
#: request may carry megabytes, which must not come back in the answer or the log.
QUOTE_MAX = 200


def _short(text, limit: int = QUOTE_MAX) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


class Failure(int):
    """A negative errno (what the callback's ``rc`` compares as) that also says why; the
    RPC puts ``reason`` in the error's ``data``."""

    def __new__(cls, rc: int, reason: str | None = None):
        obj = super().__new__(cls, rc)
        obj.reason = None if reason is None else _short(reason, 4 * QUOTE_MAX)
        return obj


def _why(err) -> str:
    """The reason an offloaded call failed, for the answer: librados's own words."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    # Not a library error but a bug of ours: keep its traceback in the log.
    log.error("rbd: unexpected failure of a control call", exc_info=err)
    return f"internal error: {err!r}"


def _errno(err) -> int:
    return -(getattr(err, "errno", None) or errno.EIO)


def parse_core_mask(mask: str) -> list[int]:
    """The cores of a core_mask, as SPDK's spdk_cpuset_parse reads one: hex with or
    without ``0x`` (at most 256 digits), or a list ``[0,2-3]``; ValueError when it is
    neither, selects no core or names one past 1023.  Bounded work whatever the input (a
    request may say ``[0-99999999999]``)."""
    def invalid(why):
        return ValueError(f"invalid cpumask={_short(mask)}: {why}")
    text = str(mask).strip()
    cores = set()
    if text.startswith("[") and text.endswith("]"):
        for part in (p.strip() for p in text[1:-1].split(",")):
            m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", part)
            if not m:
                raise invalid(f"bad entry {_short(part, 20)!r} (a core list like [0,2-3])")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo or hi >= CPUSET_SIZE:
                raise invalid(f"entry {part!r}: cores 0 to {CPUSET_SIZE - 1}, low to high")
            cores.update(range(lo, hi + 1))
    else:
        digits = text[2:] if text[:2] in ("0x", "0X") else text
        if not digits or len(digits) > CPUSET_SIZE // 4 or \
                any(c not in string.hexdigits for c in digits):
            raise invalid("expected hex like 0x3 or a core list like [0-1]")
        value = int(digits, 16)
        cores = {i for i in range(value.bit_length()) if value >> i & 1}
    if not cores:
        raise invalid("selects no core")
    return sorted(cores)


class ClusterInfo:
    """A registered cluster on one reactor: its parameters and this reactor's client,
    connected at registration and shared by every rbd bdev replica here that names it
    (``ref`` counts them, prepared ones included).  A dropped entry closes its client
    when the last of them is closed."""

    def __init__(self, name, user_id, config_param, config_file, key_file, core_mask,
                 client):
        self.name = name
        self.user_id = user_id
        self.config_param = config_param
        self.config_file = config_file
        self.key_file = key_file
        self.core_mask = core_mask
        self.cpus = parse_core_mask(core_mask) if core_mask is not None else None
        self.client = client
        self.ref = 0
        self.dropped = False
        self.lane = rx.offload.Lane(f"rbd cluster {name}")

    def params(self) -> dict:
        p = {"name": self.name}
        for k in ("user_id", "config_param", "config_file", "key_file", "core_mask"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        return p

    def info(self) -> dict:
        return {"cluster_name": self.name,
                **{k: v for k, v in self.params().items() if k != "name"}}

    def get(self):
        self.ref += 1
        return self.client

    def put(self) -> None:
        self.ref -= 1
        if self.ref == 0 and self.dropped:
            self.shutdown()

    def drop(self, then=None) -> None:
        """Unregistered here: close the client now if unused, else at the last put;
        ``then()`` once it is closed (or at once if that has to wait)."""
        self.dropped = True
        if self.ref:
            log.warning("rbd: cluster %s dropped while %d disk(s) here use it: its client "
                        "closes after them", self.name, self.ref)
            if then is not None:
                then()
            return
        self.shutdown(then)

    def shutdown(self, then=None) -> None:
        client, self.client = self.client, None
        if client is None:
            if then is not None:
                then()
            return
        rx.offload.run(client.close, cb=lambda _err, _v: then and then(), cpus=self.cpus,
                       lane=self.lane, name=f"rbd shutdown {self.name}")


# ------------------------------------------------------------------ per-reactor state
def _prepared() -> dict:
    """token -> what this reactor opened for a request not committed yet (an RbdDisk, or
    a registration's rbd_lib.Client)."""
    return _vbdev.state("rbd.prepared")


def _pending() -> dict:
    """The main thread's table of requests in flight: ``names`` (bdev name -> its pending
    create), ``creates`` (token -> create, until committed or discarded, cancelled ones
    included), ``clusters`` (cluster name -> its pending registration)."""
    st = _vbdev.state("rbd.pending")
    if not st:
        st.update(names={}, creates={}, clusters={})
    return st


class _Pending:
    __slots__ = ("token", "name", "cluster_name", "cb", "cancelled")

    def __init__(self, token, name, cluster_name, cb):
        self.token = token
        self.name = name
        self.cluster_name = cluster_name
        self.cb = cb
        self.cancelled = False


def state_summary() -> dict:
    """This reactor's rbd state, for tests and diagnostics: registered clusters (with
    their use count), bdev replicas, prepared handles, offloaded calls in flight."""
    return {"clusters": {n: c.ref for n, c in sorted(_clusters().items())},
            "disks": sorted(_vbdev.state("rbd")),
            "prepared": len(_prepared()),
            "offload_pending": rx.offload.pending()}


def _first_failure(results, rc) -> str:
    for index, r, value in results:
        if r:
            where = f"reactor {index}: " if index else ""
            return where + (value if isinstance(value, str) else os_strerror(r))
    return os_strerror(rc)


def os_strerror(rc) -> str:
    return os.strerror(-rc) if rc < 0 else str(rc)


@rx.remote("drivers.rbd.discard")
def _discard(done, token):
    """Close what this reactor prepared for ``token`` (nothing if it has nothing)."""
    obj = _prepared().pop(token, None)
    if obj is None:
        return done(0)
    if isinstance(obj, RbdDisk):
        return _close_disk(obj, lambda: done(0))
    rx.offload.run(obj.close, cb=lambda _e, _v: done(0), name="rbd discard client")


def _close_disk(disk, then) -> None:
    """On a worker, after any earlier control call of the disk: close image and own
    client; then give the cluster reference back here and ``then()``."""
    def closed(err, _value):
        if err is not None:
            log.error("rbd %s: closing failed: %s", _short(disk.name), err)
        info, disk.cluster = disk.cluster, None
        if info is not None:
            info.put()
        then()
    rx.offload.run(disk.disconnect, cb=closed, lane=disk.lane, cpus=_cpus_of(disk),
                   name=f"rbd close {disk.name}")


# ------------------------------------------------------------------ registered clusters
def _connect_cluster(user_id, config_param, config_file, key_file):
    """Blocking (a worker): a client of a registered cluster, as SPDK's
    rbd_register_cluster makes it."""
    return rbd_lib.Client(user_id, config_param, config_file, key_file, defaults=TIMEOUTS,
                          registered=True)


@rx.remote("drivers.rbd.prepare_cluster")
def _prepare_cluster(done, token, name, user_id, config_param, config_file, key_file,
                     core_mask):
    cpus = parse_core_mask(core_mask) if core_mask is not None else None

    def connected(err, client):
        if err is not None:
            return done(SPDK_FAIL, _why(err))
        _prepared()[token] = client
        done(0)
    rx.offload.run(_connect_cluster, user_id, config_param, config_file, key_file,
                   cb=connected, cleanup=lambda client: client.close(), cpus=cpus,
                   name=f"rbd connect {name}")


def _install_cluster(token, name, *params) -> int:
    client = _prepared().pop(token, None)
    if client is None:
        return -errno.EIO
    _clusters()[name] = ClusterInfo(name, *params, client=client)
    return 0


@rx.remote("drivers.rbd.commit_cluster")
def _commit_cluster(done, token, name, *params):
    done(_install_cluster(token, name, *params))


@rx.remote("drivers.rbd.uncommit_cluster")
def _uncommit_cluster(done, token, name, *_params):
    _drop_cluster_here(name, lambda: done(0))


@rx.remote("drivers.rbd.drop_cluster")
def _drop_cluster_replica(done, name):
    _drop_cluster_here(name, lambda: done(0))


def _drop_cluster_here(name, then) -> None:
    info = _clusters().pop(name, None)
    if info is None:
        return then()
    info.drop(then)


def register_cluster(name, cb, user_id=None, config_param=None, config_file=None,
                     key_file=None, core_mask=None) -> None:
    """SPDK's bdev_rbd_register_cluster (main thread): connect a client on every reactor
    (with ``core_mask``'s affinity), then record the cluster everywhere; ``cb(rc)``, a
    :class:`Failure` on error.  Nothing is recorded anywhere unless every reactor
    connected."""
    t = rx.get_thread()

    def fail(rc, why):
        log.error("rbd: cluster %s: %s", _short(name), _short(why, 4 * QUOTE_MAX))
        rx.send_msg(t, cb, Failure(rc, why))
    pend = _pending()
    if name in _clusters() or name in pend["clusters"]:
        return fail(SPDK_FAIL, f"cluster name={_short(name)} already exists")
    if core_mask is not None:
        try:
            parse_core_mask(core_mask)
        except ValueError as exc:
            return fail(SPDK_FAIL, str(exc))
    err = rbd_lib.available()
    if err:
        return fail(-errno.ENOTSUP, err)
    params = [user_id, dict(config_param) if config_param is not None else None,
              config_file, key_file, core_mask]
    token = next(_tokens)
    args = [token, name, *params]
    for handler in (_prepare_cluster, _commit_cluster):
        if bm.replicable(handler, args):
            return fail(-errno.EINVAL, "the request cannot reach every reactor")
    p = _Pending(token, name, None, cb)
    pend["clusters"][name] = p
    rx.gather(_prepare_cluster, args,
              lambda rc, results: _cluster_prepared(p, args, rc, results))


def _cluster_prepared(p, args, rc, results) -> None:
    _pending()["clusters"].pop(p.name, None)
    if rc:
        why = _first_failure(results, rc)
        log.error("rbd: cluster %s: %s", _short(p.name), _short(why, 4 * QUOTE_MAX))
        rx.broadcast(_discard, [p.token], lambda _rc: p.cb(Failure(rc, why)))
        return
    _install_cluster(*args)

    def after(rc):
        if rc:       # a reactor died between the phases: the others dropped it (undo)
            _drop_cluster_here(p.name, lambda: p.cb(Failure(rc, "a reactor did not commit")))
            return
        p.cb(0)
    rx.broadcast(_commit_cluster, args, after, include_self=False, undo=_uncommit_cluster)


def unregister_cluster(name, cb) -> None:
    """SPDK's bdev_rbd_unregister_cluster (main thread): -1 when it is not registered or
    something uses it (see the module doc); else it is forgotten everywhere and ``cb(0)``
    once every reactor closed its client."""
    t = rx.get_thread()
    info = _clusters().get(name)
    users = sorted(d.name for d in _vbdev.state("rbd").values() if d.cluster_name == name)
    users += sorted(p.name + (" (cancelled, closing)" if p.cancelled else " (being created)")
                    for p in _pending()["creates"].values() if p.cluster_name == name)
    if info is None or users or info.ref:
        if info is None:
            why = f"could not find the cluster name={_short(name)}"
        else:
            why = f"cluster name={_short(name)} is still used"
            if users:
                why += f" by {', '.join(users)}"
        log.error("rbd: %s", _short(why, 4 * QUOTE_MAX))
        return rx.send_msg(t, cb, Failure(SPDK_FAIL, why))
    left = [2]

    def part(_rc=0):
        left[0] -= 1
        if left[0] == 0:
            cb(0)
    _drop_cluster_here(name, part)
    rx.broadcast(_drop_cluster_replica, [name], part, include_self=False)


def clusters_info(name=None):
    """(rc, result): one cluster's entry, or the list of all; -ENOENT as SPDK (none
    registered, or no such name).  Registrations still connecting are not listed."""
    cs = _clusters()
    if not cs:
        return -errno.ENOENT, None
    if name is not None:
        c = cs.get(name)
        return (0, c.info()) if c is not None else (-errno.ENOENT, None)
    return 0, [c.info() for _n, c in sorted(cs.items())]


# --------------------------------------------------------------------------- create
@rx.remote("drivers.rbd.prepare_disk")
def _prepare_disk(done, token, name, pool_name, rbd_name, user_id, config, cluster_name,
                  read_only):
    disk = RbdDisk(name, pool_name, rbd_name, user_id, config, cluster_name, read_only)
    client = cpus = None
    if cluster_name is not None:
        info = _clusters().get(cluster_name)
        if info is None or info.client is None:
            return done(SPDK_FAIL, f"no registered cluster {_short(cluster_name)} here")
        client = info.get()
        disk.cluster = info
        cpus = info.cpus

    def opened(err, _value):
        if err is not None:
            if disk.cluster is not None:
                disk.cluster.put()
                disk.cluster = None
            return done(SPDK_FAIL, _why(err))
        _prepared()[token] = disk
        done(0, disk.size)
    rx.offload.run(disk.connect, client, cb=opened, cleanup=lambda _v: disk.disconnect(),
                   cpus=cpus, lane=disk.lane, name=f"rbd open {name}")


def _commit_disk(token, name, block_size, blockcnt, uuid) -> int:
    """Register the bdev over the disk this reactor prepared for ``token`` (no cluster
    call: it cannot wait)."""
    disk = _prepared().pop(token, None)
    if disk is None:
        return -errno.EIO
    disk.uuid = uuid
    disk.thread = rx.get_thread()
    # The I/O side decides the mode (drivers/rbd_funnel.py): this reactor's handle, or the
    # funnel to the owner, whose handle this reactor then closes (_commit_disk_replica).
    rbd_funnel.attach(disk)
    bdev = bm.Bdev(name, blocklen=block_size, blockcnt=blockcnt, module=rbd_module,
                   fn_table=rbd._fn_table, ctxt=disk, product_name="Ceph Rbd Disk",
                   write_cache=False, uuid=uuid)
    disk.bdev = bdev
    rx.io_device_register(disk, rbd._channel_create, rbd._channel_destroy, name=f"rbd.{name}")
    rc = bm.bdev_register(bdev)
    if rc:
        # Back to prepared (no channel was ever made): the discard that follows a failed
        # commit closes it, and the create answers once it has.
        rx.io_device_unregister(disk)
        rbd_funnel.detach(disk)
        disk.bdev = disk.thread = None
        _prepared()[token] = disk
        return rc
    _vbdev.state("rbd")[name] = disk
    return 0


@rx.remote("drivers.rbd.commit_disk")
def _commit_disk_replica(done, token, name, *args):
    rc = _commit_disk(token, name, *args)
    disk = _vbdev.state("rbd").get(name) if rc == 0 else None
    if disk is not None and rbd_funnel.replica_of(disk).remote:
        # Its I/O goes to the owner (reactor 0, never a replica here): this reactor is no
        # client of the image, and the create answers once its handle is closed, so Ceph
        # sees one watcher from the moment the bdev exists.  Closing waits on the cluster:
        # a worker does it, on the disk's lane (a destruct's close finds nothing left).
        return _close_disk(disk, lambda: done(0))
    done(rc)


def _name_taken(name) -> bool:
    return api.get_by_name(name) is not None or name in _pending()["names"]


def _next_name() -> str:
    n = 0
    while _name_taken(f"Ceph{n}"):
        n += 1
    return f"Ceph{n}"


def create(name, pool_name, rbd_name, block_size, cb, user_id=None, config=None,
           cluster_name=None, uuid=None, read_only=False) -> None:
    """Create rbd bdev ``name`` (default CephN) on every reactor (main thread);
    ``cb(rc, name)`` once every reactor opened the image and registered it, or, on
    error, once what was opened is closed again (``rc`` a :class:`Failure`; the codes in
    the module doc)."""
    t = rx.get_thread()

    def fail(rc, why):
        log.error("rbd %s: %s", _short(name), _short(why, 4 * QUOTE_MAX))
        rx.send_msg(t, cb, Failure(rc, why), name)
    if block_size <= 0 or block_size % 512:
        return fail(-errno.EINVAL, f"block size {block_size} is not a multiple of 512")
    if cluster_name is not None and cluster_name not in _clusters():
        return fail(SPDK_FAIL, f"no registered cluster {_short(cluster_name)}")
    err = rbd_lib.available()
    if err:
        return fail(-errno.ENOTSUP, err)
    name = name or _next_name()
    if _name_taken(name):
        return fail(-errno.EEXIST, f"bdev name {_short(name)} is taken"
                    + (" (its create is pending)" if name in _pending()["names"] else ""))
    uuid = uuid or str(_uuid.uuid4())
    token = next(_tokens)
    args = [token, name, pool_name, rbd_name, user_id,
            dict(config) if config is not None else None, cluster_name, bool(read_only)]
    for handler, hargs in ((_prepare_disk, args),
                           (_commit_disk_replica, [token, name, block_size, 1 << 63, uuid])):
        if bm.replicable(handler, hargs):
            return fail(-errno.EINVAL, "the request cannot reach every reactor")
    p = _Pending(token, name, cluster_name, cb)
    pend = _pending()
    pend["names"][name] = p
    pend["creates"][token] = p
    rx.gather(_prepare_disk, args,
              lambda rc, results: _disk_prepared(p, block_size, uuid, rc, results))


def _disk_prepared(p, block_size, uuid, rc, results) -> None:
    pend = _pending()
    if pend["names"].get(p.name) is p:
        del pend["names"][p.name]

    def fail(rc, why):
        log.error("rbd %s: %s", _short(p.name), _short(why, 4 * QUOTE_MAX))

        def discarded(_rc):
            pend["creates"].pop(p.token, None)
            p.cb(Failure(rc, why), p.name)
        rx.broadcast(_discard, [p.token], discarded)
    if p.cancelled:
        return fail(-errno.ECANCELED, "deleted (bdev_rbd_delete) while being created")
    if rc:
        return fail(rc, _first_failure(results, rc))
    size = next(v for i, _r, v in results if i == 0)
    if size < block_size:
        return fail(-errno.EINVAL, f"the image is smaller than one block ({size} bytes)")

    def committed(rc):
        if rc == 0:
            pend["creates"].pop(p.token, None)
            return p.cb(0, p.name)
        # The main replica could not register (another module took the name meanwhile),
        # or a replica could not and the layer unregistered the bdev everywhere: close
        # what is still prepared (a failed commit leaves its disk there).
        fail(rc, f"registering the bdev failed: {os_strerror(rc)}")
    _vbdev.replicated_create(_commit_disk, _commit_disk_replica,
                             [p.token, p.name, block_size, size // block_size, uuid],
                             committed)


def delete(name, cb) -> None:
    """SPDK's bdev_rbd_delete (main thread): unregister the bdev everywhere, ``cb(rc)``
    once every replica closed its image and client (-ENODEV: no such rbd bdev).  A name
    whose create is pending: that create is cancelled and ``cb(0)``."""
    p = _pending()["names"].pop(name, None)
    if p is not None:
        p.cancelled = True
        log.warning("rbd %s: deleted while being created: the create is cancelled", _short(name))
        return rx.send_msg(rx.get_thread(), cb, 0)
    _vbdev.unregister_by_name(name, rbd_module, cb)


def destruct(disk) -> int:
    """The fn_table's destruct on one replica: once its last channel is gone, close the
    image and client on a worker, then bdev_destruct_done.  Returns 1 (asynchronous)."""
    st = _vbdev.state("rbd")
    if st.get(disk.name) is disk:
        del st[disk.name]
    bdev = disk.bdev

    def channels_gone():
        # what is in flight on the handle finishes first (the queue's poller waits for it,
        # this reactor goes on serving), then the image and client close on a worker
        rbd_funnel.detach(disk, lambda: _close_disk(disk, lambda: bm.bdev_destruct_done(bdev, 0)))
    rx.io_device_unregister(disk, channels_gone)
    return 1


# --------------------------------------------------------------------------- resize
def _grow_image(disk, nbytes) -> int:
    """Blocking (a worker, on the disk's lane): grow the image to ``nbytes`` (0: keep
    its size, as SPDK's new_size 0); the size it has now.  Never shrinks: data past the
    new end would be lost."""
    image = disk.image
    if image is None:
        raise rbd_lib.RbdError(errno.ENODEV, "the image is closed")
    cur = image.size()
    if nbytes == 0:
        return cur
    if nbytes < cur:
        raise rbd_lib.RbdError(errno.EINVAL, f"the new size ({nbytes} bytes) is smaller "
                               f"than the image ({cur} bytes)")
    if nbytes > cur:
        image.resize(nbytes)
    return nbytes


def _wait_size_seen(disk, want) -> None:
    """Blocking (a worker): until this replica's handle reports ``want`` bytes.  The main
    replica resized through its own client; this handle learns of it from the header
    watch (milliseconds later) and rbd_get_size refreshes it once the notification is in."""
    deadline = time.monotonic() + RESIZE_SEEN_S
    while True:
        image = disk.image
        if image is None:
            raise rbd_lib.RbdError(errno.ENODEV, "the image is closed")
        if image.size() >= want:
            return
        if time.monotonic() > deadline:
            raise rbd_lib.RbdError(errno.ETIMEDOUT, "this reactor's image handle did not "
                                   "see the resize")
        time.sleep(0.002)


def _cpus_of(disk):
    return disk.cluster.cpus if disk.cluster is not None else None


@rx.remote("drivers.rbd.resize_replica")
def _resize_replica(done, name, blocks):
    b = api.get_by_name(name)
    if b is None or b.module is not rbd_module:
        return done(-errno.ENODEV)
    disk = b.ctxt
    if rbd_funnel.replica_of(disk).remote:
        # no handle here: the owner's has the new size already (its resize came first)
        return done(bm.notify_blockcnt_change(b, blocks))

    def seen(err, _value):
        if err is not None:
            log.error("rbd %s: %s", _short(name), _short(_why(err), 4 * QUOTE_MAX))
            return done(_errno(err))
        if api.get_by_name(name) is not b:
            return done(-errno.ENODEV)
        done(bm.notify_blockcnt_change(b, blocks))
    rx.offload.run(_wait_size_seen, disk, blocks * b.blocklen, cb=seen, lane=disk.lane,
                   cpus=_cpus_of(disk), name=f"rbd resize {name}")


def resize(name, new_size_mib, cb) -> None:
    """SPDK's bdev_rbd_resize (main thread): grow the image behind ``name`` to
    ``new_size_mib`` MiB (0: take the image's current size) on a worker, then every
    replica's block count; ``cb(rc)``: -ENODEV (no such bdev), -EINVAL (not rbd, smaller
    than now), or librbd's error."""
    t = rx.get_thread()
    b = api.get_by_name(name)
    if b is None or b.status == bm.STATUS_REMOVING:
        return rx.send_msg(t, cb, -errno.ENODEV)
    if b.module is not rbd_module:
        return rx.send_msg(t, cb, -errno.EINVAL)
    nbytes = new_size_mib << 20
    if new_size_mib >= 1 << 44 or (nbytes and nbytes < b.blocklen * b.blockcnt):
        why = "the new size must be larger than the current one"
        log.error("rbd %s: %s", _short(name), _short(why, 4 * QUOTE_MAX))
        return rx.send_msg(t, cb, Failure(-errno.EINVAL, why))
    disk = b.ctxt

    def resized(err, size):
        if err is not None:
            log.error("rbd %s: %s", _short(name), _short(_why(err), 4 * QUOTE_MAX))
            return cb(Failure(_errno(err), _why(err)))
        if api.get_by_name(name) is not b or b.status == bm.STATUS_REMOVING:
            return cb(-errno.ENODEV)
        blocks = size // b.blocklen
        rc = bm.notify_blockcnt_change(b, blocks)
        if rc:
            return cb(rc)
        bm.broadcast(_resize_replica, [name, blocks], cb, include_self=False)
    rx.offload.run(_grow_image, disk, nbytes, cb=resized, lane=disk.lane,
                   cpus=_cpus_of(disk), name=f"rbd resize {name}")
