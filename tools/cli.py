"""The `ringstack` command: one entry point, one subcommand per module.

Each subcommand lives in its own module under tools/ and exposes
``add_parser(subparsers)``, which registers an argparse sub-parser whose
``func(args) -> int`` runs it.  Modules are imported lazily so that
``ringstack rpc`` does not pay for importing the benchmark code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from reactor.app import AppError

# subcommand name -> module providing add_parser(); the single list to extend.
SUBCOMMANDS = {
    "start": "tools.start",
    "bench": "tools.bench",
    "bdevperf": "tools.bdevperf",
    "plot": "tools.plot",
    "rpc": "tools.rpc",
}


class CliError(Exception):
    """A user error: printed as one line, exit status 1 (or .status)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class OneLineParser(argparse.ArgumentParser):
    """The parser class of ``ringstack`` and of every subcommand (argparse hands it down
    to sub-parsers): a usage error is one line naming the (sub)command, exit status 1 --
    never a usage dump.  Leftover arguments are reported by the subcommand that got them,
    not by the top-level parser that would name only ``ringstack``."""

    def error(self, message):  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(1)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != "ringstack":
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ringstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, modname in SUBCOMMANDS.items():
        importlib.import_module(modname).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"ringstack {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except AppError as exc:
        print(f"ringstack {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy, so that CliError raised by
    # subcommand modules (which import tools.cli) is the class main() catches.
    from tools.cli import main as _main
    sys.exit(_main())
