"""`ringstack start`: run a target — one pinned reactor per core of the mask, the JSON-RPC
server on the main reactor, an optional SPDK JSON config — until SIGINT/SIGTERM or
``spdk_kill_instance``."""
from __future__ import annotations

import logging

from reactor.app import ADAPTIVE, POLL, App
from reactor.rpc import DEFAULT_SOCKET


def add_parser(sub) -> None:
    p = sub.add_parser("start", help="start a target (reactors, RPC server, config)",
                       description=__doc__)
    p.add_argument("-m", "--cpumask", default="0x1", help="reactor mask: 0x3 or [0,1] (default 0x1)")
    p.add_argument("-c", "--config", metavar="JSON", help="SPDK JSON config to load at start")
    p.add_argument("-r", "--rpc-socket", default=DEFAULT_SOCKET, metavar="SOCK",
                   help=f"JSON-RPC Unix socket (default {DEFAULT_SOCKET})")
    p.add_argument("--wait-for-rpc", action="store_true",
                   help="wait for framework_start_init before initialising subsystems")
    p.add_argument("--mode", choices=(ADAPTIVE, POLL), default=ADAPTIVE,
                   help="adaptive: sleep when idle (default); poll: always spin")
    p.add_argument("--nbd", metavar="SOCK",
                   help="serve every bdev over NBD on SOCK (Unix path or host:port) once started")
    p.add_argument("--iscsi", metavar="[HOST:]PORT",
                   help="serve every bdev over iSCSI on HOST:PORT (default host 127.0.0.1), "
                        "each as LUN 0 of target <node_base>:<bdev name>")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level")
    p.set_defaults(func=run)


def run(args) -> int:
    level = getattr(logging, args.log_level)
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    app = App(args.cpumask, mode=args.mode, rpc_socket=args.rpc_socket, config=args.config,
              wait_for_rpc=args.wait_for_rpc, log_level=level)
    return app.run(_ready, args)


def _ready(args) -> None:
    if getattr(args, "nbd", None):
        from targets.nbd.rpc import start_exporting_all
        start_exporting_all(args.nbd)
    if getattr(args, "iscsi", None):
        from targets.iscsi.rpc import start_exporting_all as iscsi_export_all
        iscsi_export_all(args.iscsi)
    logging.getLogger("ringstack.start").warning(
        "ringstack target ready: reactors on cores %s, RPC on %s", args.cpumask, args.rpc_socket)
