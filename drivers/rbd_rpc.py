"""JSON-RPC methods of the Ceph RBD bdev (SPDK's bdev_rbd_* in module/bdev/rbd/bdev_rbd_rpc.c)
over drivers/rbd_control.py.  Errors are SPDK's code with ``spdk_strerror``'s message; the
reason SPDK only logs is the error's ``data`` (drivers/rbd_control.py lists the codes)."""
import os

from reactor.rpc import ANY, U32, U64, Param, ParamError, rpc_method
from reactor.rpc.dispatch import ERROR_MESSAGES, INVALID_PARAMS

from . import rbd_control as rbd


def _error(request, rc) -> None:
    code = int(rc)
    request.error(code, os.strerror(-code), data=getattr(rc, "reason", None))


def answer(request, result):
    """``cb(rc)`` answering ``result``, or the error (with its reason as ``data``)."""
    def cb(rc):
        if rc:
            _error(request, rc)
        else:
            request.result(result)
    return cb


def answer_value(request):
    def cb(rc, value):
        if rc:
            _error(request, rc)
        else:
            request.result(value)
    return cb


def _config(params, key):
    """SPDK decodes ``config``/``config_param`` as a JSON object of string values (its
    schema.yaml calls it a string; its decoder refuses one); null is an empty config."""
    v = params[key]
    if v is None:
        return None if key not in params.get("_given", ()) else {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ParamError(f"parameter '{key}' must be an object of string values "
                         "(librados option: value)", key)
    return v


def _invalid(request, exc) -> None:
    """The schema's own answer for a bad parameter (-32602), for the check it cannot make."""
    request.error(INVALID_PARAMS, f"{ERROR_MESSAGES[INVALID_PARAMS]}: {exc}")


def _cfg_param(name, help):
    return Param(name, ANY, required=False,
                 help=f"{help}: an object of librados options, e.g. {{\"mon_host\": "
                      "\"127.0.0.1\"}; without it the default ceph.conf is read")


@rpc_method("bdev_rbd_register_cluster", params=[
    Param("name", str, help="name of the registered Rados cluster object"),
    Param("user_id", str, required=False, help="Ceph ID (e.g. admin, not client.admin)"),
    _cfg_param("config_param", "explicit librados configuration"),
    Param("config_file", str, required=False, help="path of a librados configuration file"),
    Param("key_file", str, required=False, help="path of a librados key file"),
    Param("core_mask", str, required=False,
          help="CPU mask the cluster's librados threads run on (e.g. 0x1, [0-1])"),
])
def bdev_rbd_register_cluster(request, params):
    """Register a Rados cluster that rbd bdevs can share (each reactor connects a client)."""
    try:
        cfg = _config(params, "config_param")
    except ParamError as exc:
        return _invalid(request, exc)
    rbd.register_cluster(params["name"], answer(request, params["name"]),
                         user_id=params["user_id"], config_param=cfg,
                         config_file=params["config_file"], key_file=params["key_file"],
                         core_mask=params["core_mask"])


@rpc_method("bdev_rbd_unregister_cluster", params=[
    Param("name", str, help="name of the registered Rados cluster object")])
def bdev_rbd_unregister_cluster(request, params):
    """Unregister a Rados cluster; fails (-1) while an rbd bdev or a pending create uses it."""
    rbd.unregister_cluster(params["name"], answer(request, True))


@rpc_method("bdev_rbd_get_clusters_info", params=[
    Param("name", str, required=False, help="one cluster (default: all, as a list)")])
def bdev_rbd_get_clusters_info(request, params):
    """The registered clusters' parameters (ENOENT when none is registered)."""
    rc, value = rbd.clusters_info(params["name"])
    if rc:
        request.errno(rc)
    else:
        request.result(value)


@rpc_method("bdev_rbd_create", params=[
    Param("name", str, required=False, help="bdev name (default: CephN)"),
    Param("user_id", str, required=False, help="Ceph ID (e.g. admin, not client.admin)"),
    Param("pool_name", str, help="pool name"),
    Param("rbd_name", str, help="image name"),
    Param("block_size", int, min=0, max=U32, help="block size in bytes (a multiple of 512)"),
    _cfg_param("config", "explicit librados configuration"),
    Param("cluster_name", str, required=False,
          help="a cluster registered with bdev_rbd_register_cluster"),
    Param("uuid", str, required=False, format="uuid", help="UUID of the new bdev"),
    Param("read_only", bool, default=False, help="open the image read-only"),
])
def bdev_rbd_create(request, params):
    """Create a bdev on a Ceph RBD image (each reactor opens the image itself)."""
    try:
        cfg = _config(params, "config")
    except ParamError as exc:
        return _invalid(request, exc)
    rbd.create(params["name"], params["pool_name"], params["rbd_name"], params["block_size"],
               answer_value(request), user_id=params["user_id"], config=cfg,
               cluster_name=params["cluster_name"], uuid=params["uuid"],
               read_only=params["read_only"])


@rpc_method("bdev_rbd_delete", params=[Param("name", str, help="rbd bdev name")])
def bdev_rbd_delete(request, params):
    """Delete an rbd bdev (closes its images and clients on every reactor)."""
    rbd.delete(params["name"], answer(request, True))


@rpc_method("bdev_rbd_resize", params=[
    Param("name", str, help="rbd bdev name"),
    Param("new_size", int, min=0, max=U64,
          help="new size in MiB (grow only; 0: the image's current size)"),
])
def bdev_rbd_resize(request, params):
    """Grow an rbd bdev's image."""
    rbd.resize(params["name"], params["new_size"], answer(request, True))
