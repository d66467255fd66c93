"""`ringstack bench KIND`: side-by-side benchmarks.  Each kind is a module
``tools.bench_<kind>`` exposing ``add_arguments(parser)`` and ``run(args) -> int``;
every kind accepts ``--json PATH`` and writes its figures and ratios there."""
from __future__ import annotations

import importlib

# The single list of benchmark kinds.
KINDS = ("ipc", "reactor", "scaling", "nbd", "iscsi", "rbd")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a side-by-side benchmark")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    for kind in KINDS:
        try:
            mod = importlib.import_module(f"tools.bench_{kind}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tools.bench_{kind}":
                raise
            continue  # not built yet
        kp = kinds.add_parser(kind, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        kp.add_argument("--json", metavar="PATH", help="write figures and ratios as JSON to PATH")
        mod.add_arguments(kp)
        kp.set_defaults(func=mod.run)
