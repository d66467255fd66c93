"""bdevperf's ``-j`` job files (SPDK's ``read_job_config``, the INI-like format of
``doc/bdevperf.md``), and the offset generators only bdevperf uses (SPDK's zipf).

A job file is a list of sections.  ``[global]`` sections set defaults for the job sections
below them (each ``[global]`` starts again from the built-in defaults); every other section is
one job config: ``filename`` (bdev names separated by ``:``), ``cpumask``, ``bs``, ``iodepth``,
``rwmixread`` (default 50), ``offset`` and ``length`` (in blocks, 0 = the whole bdev) and
``rw``.  Command-line values (-T, -o, -q, -M > 0, -w) override every ``[global]`` section,
as SPDK's ``config_set_cli_args`` does.  The reading follows SPDK's ``spdk_conf``: ``#`` starts a
comment line, keys are case-insensitive, a key's first whitespace-separated word is its value,
``key=`` with nothing after it is the same as no key, and a line ending in ``\\`` continues on
the next one.
"""
from __future__ import annotations

import math
import random
import re

from tools.bdevperf_report import WORKLOADS


class JobFileError(Exception):
    """A job file SPDK's bdevperf refuses: one line, exit status 1."""


UNDEFINED = None


def _words(value: str) -> list[str]:
    """SPDK's spdk_strsepq over " \\t": quotes and backslashes, whitespace-separated."""
    out, cur, quote, esc, have = [], [], None, False, False
    for ch in value:
        if esc:
            cur.append(ch)
            esc = False
        elif quote:
            if quote == '"' and ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch == "\\":
            esc, have = True, True
        elif ch in "\"'":
            quote, have = ch, True
        elif ch in " \t":
            if cur or have:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(ch)
    if cur or have:
        out.append("".join(cur))
    return out


def read_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """``[(section name, {lowercased key: first value})]`` in file order (sections with the
    same name stay apart: SPDK reads job files with section merging disabled)."""
    sections: list[tuple[str, dict[str, str]]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i]
            i += 1
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            if not s.endswith("]") or "]" in s[1:-1]:
                continue                     # SPDK logs "broken section" and goes on
            sections.append((s[1:-1], {}))
            continue
        if not sections:
            continue                         # "unknown section": logged, skipped by SPDK
        # SPDK: the key ends at the first blank or '=', then every blank and '=' is skipped
        m = re.match(r"([^ \t=]*)[ \t=]*(.*)$", s)
        key, rest = m.group(1), m.group(2)
        if not key:
            continue
        vals = _words(rest)
        d = sections[-1][1]
        if key.lower() not in d:             # the first occurrence of a key wins
            d[key.lower()] = vals[0] if vals else None
    return sections


def _uint(section: str, d: dict, name: str, default):
    """SPDK's parse_uint_option: absent -> the default (an error in a job section when the
    default is undefined); a number is read with strtol's leading digits."""
    v = d.get(name)
    if v is None:
        if default is UNDEFINED and section != "global":
            raise JobFileError(f"Job '{section}' has no '{name}' assigned")
        return default
    try:
        n = int(v, 10)
    except ValueError:
        raise JobFileError(f"Job '{section}' has bad '{name}' value.") from None
    if n < 0:
        raise JobFileError(f"Job '{section}' has bad '{name}' value.")
    return n


def read_job_file(path: str, cli: dict) -> list[dict]:
    """The job configs of ``path``: dicts with name, filenames (list), cpumask (a list of
    cores, or None for every core of the app), bs, iodepth, rwmixread, offset, length, rw.
    ``cli``: the command line's bdev (-T), io_size, queue_depth, rw_percentage, workload."""
    from reactor.app import parse_cpumask
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise JobFileError(f"Invalid job config: cannot read {path}: {exc.strerror}") from None

    def with_cli(c: dict) -> dict:
        if cli.get("bdev"):
            c["filename"] = cli["bdev"]
        if cli.get("io_size"):
            c["bs"] = cli["io_size"]
        if cli.get("queue_depth"):
            c["iodepth"] = cli["queue_depth"]
        if (cli.get("rw_percentage") or 0) > 0:
            c["rwmixread"] = cli["rw_percentage"]
        if cli.get("workload"):
            if cli["workload"] not in WORKLOADS:
                raise JobFileError("rw must be one of (" + ", ".join(WORKLOADS) + ")")
            c["rw"] = cli["workload"]
        return c

    defaults = with_cli({"filename": None, "cpumask": None, "bs": UNDEFINED, "iodepth": UNDEFINED,
                         "rwmixread": 50, "offset": 0, "length": 0, "rw": UNDEFINED})
    glob = dict(defaults)
    jobs = []
    for name, d in read_sections(text):
        is_global = name == "global"
        if is_global:
            glob = dict(defaults)
        c = {"name": name}
        c["filename"] = d.get("filename") if d.get("filename") is not None else glob["filename"]
        if not is_global and c["filename"] is None:
            raise JobFileError(f"Job '{name}' expects 'filename' parameter")
        if c["filename"] is not None and len(c["filename"]) >= 1024:
            raise JobFileError(f"filename for '{name}' job is too long. Max length is 1024")
        if d.get("cpumask") is None:
            c["cpumask"] = glob["cpumask"]
        else:
            try:
                c["cpumask"] = parse_cpumask(d["cpumask"])
            except ValueError:
                raise JobFileError(f"Job '{name}' has bad 'cpumask' value") from None
        c["bs"] = _uint(name, d, "bs", glob["bs"])
        if c["bs"] == 0:
            raise JobFileError(f"'bs' of job '{name}' must be greater than 0")
        c["iodepth"] = _uint(name, d, "iodepth", glob["iodepth"])
        if c["iodepth"] == 0:
            raise JobFileError(f"'iodepth' of job '{name}' must be greater than 0")
        c["rwmixread"] = _uint(name, d, "rwmixread", glob["rwmixread"])
        if c["rwmixread"] > 100:
            raise JobFileError(f"'rwmixread' value of '{name}' job is not in 0-100 range")
        c["offset"] = _uint(name, d, "offset", glob["offset"])
        c["length"] = _uint(name, d, "length", glob["length"])
        rw = d.get("rw")
        if rw is not None and rw not in WORKLOADS:
            raise JobFileError(f"Job '{name}' has bad 'rw' value")
        c["rw"] = rw if rw is not None else glob["rw"]
        if not is_global and c["rw"] is UNDEFINED:
            raise JobFileError(f"Job '{name}' has no 'rw' assigned")
        if is_global:
            glob = with_cli(c)
        else:
            c["filenames"] = [f for f in (p.replace(" ", "").replace("\t", "")
                                          for p in c.pop("filename").split(":")) if f]
            jobs.append(c)
    return jobs


# ------------------------------------------------------------------------------- zipf
def zipf_table(n_values: int, theta: float, count: int, rng: random.Random) -> list[int]:
    """``count`` draws in ``[0, n_values)`` from SPDK's zipf generator (lib/util/zipf.c: the
    Gray et al. method, value 0 the most frequent), seeded from ``rng``."""
    def zeta(n):
        calc = min(10_000_000, n)
        z = math.fsum((1.0 / (i + 1)) ** theta for i in range(calc))
        i = calc
        while i < n:                         # SPDK's estimate beyond 10M values
            step = min(1_000_000, n - i)
            z += ((1.0 / (i + 1)) ** theta + (1.0 / (i + step + 1)) ** theta) * step / 2
            i += step
        return z
    if n_values <= 1:
        return [0] * count
    alpha = 1.0 / (1.0 - theta) if theta != 1.0 else math.inf
    zetan = zeta(n_values)
    eta = (1.0 - (2.0 / n_values) ** (1.0 - theta)) / (1.0 - zeta(2) / zetan)
    val1 = 1.0 + 0.5 ** theta
    out = []
    rand = rng.random
    for _ in range(count):
        u = rand()
        z = u * zetan
        if z < 1.0:
            out.append(0)
        elif z < val1:
            out.append(1)
        else:
            base = eta * (u - 1.0) + 1.0
            v = n_values * base ** alpha if alpha != math.inf else 0.0
            out.append(int(v) % n_values)
    return out
