"""python -m targets.nbd: serve memory-backed exports (a test fixture and debugging aid).

  python -m targets.nbd --listen /tmp/nbd.sock --export disk0:64M [--export ro:1M:ro]
      [--block-min 512] [--async] [--reorder]

Prints one line "READY <uri> ..." on stdout once every listener is bound, then serves
until SIGTERM/SIGINT, after which it drains in-flight requests and removes its sockets.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .backend import MemoryExport
from .server import NbdLoop

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    t = text.strip().upper().rstrip("B").rstrip("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    return int(t[:-1] if unit else t) * _UNITS[unit]


def parse_export(spec: str, args) -> MemoryExport:
    """NAME:SIZE[:ro]"""
    parts = spec.split(":")
    if len(parts) < 2 or parts[2:] not in ([], ["ro"]):
        raise argparse.ArgumentTypeError(f"bad --export {spec!r}: expected NAME:SIZE[:ro]")
    return MemoryExport(parts[0], parse_size(parts[1]), readonly=parts[2:] == ["ro"],
                        description=f"memory export {parts[0]}",
                        block_min=args.block_min, block_preferred=max(args.block_min, 4096),
                        async_completion=args.async_completion or args.reorder,
                        reorder=args.reorder, can_multi_conn=not args.no_multi_conn)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m targets.nbd", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", action="append", required=True,
                    help="socket path or host:port (repeatable); TCP binds 127.0.0.1 unless a host is given")
    ap.add_argument("--export", action="append", required=True, metavar="NAME:SIZE[:ro]")
    ap.add_argument("--block-min", type=int, default=1)
    ap.add_argument("--async", dest="async_completion", action="store_true",
                    help="complete backend I/O on the next loop pass instead of inside the call")
    ap.add_argument("--reorder", action="store_true", help="complete each batch in reverse order")
    ap.add_argument("--no-multi-conn", action="store_true")
    ap.add_argument("--max-inflight", type=int, default=256)
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exports = [parse_export(s, args) for s in args.export]
    pollers = [e.poll for e in exports if e.async_completion]
    loop = NbdLoop(exports, args.listen, pollers=pollers, max_inflight=args.max_inflight)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    print("READY " + " ".join(lst.uri for lst in loop.listeners), flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
