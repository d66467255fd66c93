"""`ringstack rpc`: call a JSON-RPC method of a running target.

    ringstack rpc [-s SOCK] [-t TIMEOUT] METHOD [--param value ...]
    ringstack rpc [-s SOCK] METHOD -        # params object from stdin
    ringstack rpc [-s SOCK] -               # whole request {"method": ..., "params": ...} from stdin

``--param value`` options come from the method table (reactor.rpc): each declared parameter
is an option (``--num_blocks`` or ``--num-blocks``), its value converted to the declared type
(int accepts 0x..; bool accepts true/false/yes/no/1/0, and a bare ``--flag`` means true; a list
takes several values or one JSON array; an object takes JSON).  ``ringstack rpc METHOD --help``
lists a method's parameters.  The result is printed as indented JSON; an error is one line on
stderr (``ringstack rpc: error: <code> <message>``) and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reactor.rpc import (DEFAULT_SOCKET, METHODS, STATE_NAMES, Method, ParamError, RpcClient,
                         RpcConnectionError, RpcError, RpcTimeout, discover)
from reactor.rpc.schema import MISSING
from tools.cli import CliError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rpc", help="call a JSON-RPC method of a running target",
        description="Call a JSON-RPC method of a running ringstack (or SPDK) target.",
        epilog="`ringstack rpc METHOD --help` lists the method's parameters; "
               "`ringstack rpc rpc_get_methods` lists the target's methods.")
    p.add_argument("-s", dest="server_addr", metavar="SOCK", default=DEFAULT_SOCKET,
                   help=f"RPC Unix socket path (default {DEFAULT_SOCKET})")
    p.add_argument("-t", dest="timeout", metavar="TIMEOUT", type=float, default=60.0,
                   help="seconds to wait for the answer (default 60)")
    p.add_argument("method", metavar="METHOD",
                   help="method name, or '-' to read a whole JSON request from stdin")
    p.add_argument("params", nargs=argparse.REMAINDER, metavar="--param value",
                   help="method parameters (or '-' to read the params object from stdin)")
    p.set_defaults(func=run)


class _ParamParser(argparse.ArgumentParser):
    """Per-method option parser whose errors are one-line CliErrors."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{self.prog}: {message}")


def _method_parser(m: Method) -> _ParamParser:
    states = "/".join(name for bit, name in STATE_NAMES.items() if m.states & bit)
    parser = _ParamParser(prog=f"ringstack rpc {m.name}", description=f"{m.help} [{states}]",
                          allow_abbrev=False)
    for p in m.schema or ():
        flags = [f"--{p.name}"]
        if "_" in p.name:
            flags.append(f"--{p.name.replace('_', '-')}")
        kwargs: dict[str, Any] = {"dest": p.name, "default": argparse.SUPPRESS}
        if p.type is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif p.type is list:
            kwargs.update(nargs="+", metavar="VALUE")
        else:
            kwargs.update(nargs=1, metavar=p.type_name.upper().replace(" ", "_"))
        text = p.help or ""
        extra = [p.type_name, "required" if p.required else "optional"]
        if not p.required and p.default is not MISSING and p.default is not None:
            extra.append(f"default {json.dumps(p.default)}")
        if p.describe_constraints():
            extra.append(p.describe_constraints())
        kwargs["help"] = (text + " " if text else "") + "(" + "; ".join(extra) + ")"
        parser.add_argument(*flags, **kwargs)
    return parser


def _params_from_cli(m: Method, tokens: list[str]) -> dict:
    if m.schema is None:          # RAW method: accept --key JSON-or-string pairs
        return _raw_params(m.name, tokens)
    ns = vars(_method_parser(m).parse_args(tokens))
    params: dict = {}
    for p in m.schema:
        if p.name not in ns:
            continue
        raw = ns[p.name]
        tokens_for = [raw] if isinstance(raw, str) else list(raw)
        try:
            params[p.name] = p.from_cli(tokens_for)
        except ParamError as exc:
            raise CliError(f"{m.name}: {exc}") from None
    missing = [p.name for p in m.schema if p.required and p.name not in params]
    if missing:
        raise CliError(f"{m.name}: missing required parameter '--{missing[0]}'")
    return params


def _raw_params(name: str, tokens: list[str]) -> dict:
    params: dict = {}
    it = iter(tokens)
    for tok in it:
        if not tok.startswith("--") or len(tok) < 3:
            raise CliError(f"{name}: expected --key value, got {tok!r}")
        try:
            val = next(it)
        except StopIteration:
            raise CliError(f"{name}: {tok} needs a value") from None
        try:
            params[tok[2:]] = json.loads(val)
        except ValueError:
            params[tok[2:]] = val
    return params


def _read_stdin_json(what: str) -> Any:
    text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"stdin is not a JSON {what}: {exc}") from None


def _lookup(name: str) -> Method:
    m = METHODS.get(name)
    if m is None:
        failures = discover()
        m = METHODS.get(name)
        if m is None:
            note = ""
            if failures:
                note = "; could not load " + ", ".join(f"{mod} ({err})" for mod, err in failures)
            raise CliError(f"unknown method '{name}' (not in ringstack's method table; "
                           f"`ringstack rpc rpc_get_methods` lists the target's methods, "
                           f"`ringstack rpc -` sends any request){note}")
    if m.alias_of is not None:
        m = METHODS.get(m.alias_of) or m
    return m


def run(args) -> int:
    if args.method == "-":
        if args.params:
            raise CliError("'-' reads the whole request from stdin and takes no parameters")
        req = _read_stdin_json("object")
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            raise CliError('stdin must hold one JSON object with a "method" string '
                           '(and optional "params")')
        method = req["method"]
        call = lambda client: client.request(req)  # noqa: E731
    else:
        method = args.method
        m = _lookup(method)
        if args.params == ["-"]:
            params = _read_stdin_json("params object")
            if not isinstance(params, dict):
                raise CliError("stdin must hold one JSON params object")
        else:
            params = _params_from_cli(m, list(args.params))
        call = lambda client: client.call(method, params or None)  # noqa: E731
    try:
        with RpcClient(args.server_addr, timeout=args.timeout) as client:
            result = call(client)
    except RpcError as exc:
        raise CliError(f"{exc.code} {exc.message}") from None
    except RpcTimeout:
        raise CliError(f"no answer to {method} within {args.timeout:g} s "
                       f"from {args.server_addr}") from None
    except RpcConnectionError as exc:
        msg = str(exc)
        if "cannot connect" in msg:
            msg += " (is the target running? -s selects the socket)"
        raise CliError(msg) from None
    print(json.dumps(result, indent=2))
    return 0
