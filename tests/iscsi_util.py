"""Helpers for the iSCSI compliance tests: run libiscsi's iscsi-test-cu on one test
family against a URL and read its CUnit report; start ringstack (or tgtd) serving a
malloc bdev over iSCSI and check that it left nothing behind.

iscsi-test-cu's report (CUnit "basic" mode, verbose) looks like::

    Suite: GetLBAStatus
      Test: Simple ...passed
      Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed ...
    FAILED
        1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
      Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
    passed
    ...
    Run Summary:    Type  Total    Ran Passed Failed Inactive
                  suites     47     47    n/a      0        0
                   tests    215    215    208      7        0

CUnit counts a skipped test as passed: libiscsi skips by printing "[SKIPPED] why" and
returning, so a test is *skipped* here when it passed and printed [SKIPPED].  CUnit's
"passed"/"FAILED" verdict is written at the end of the header line, or on a line of its
own at column 0 after the test's indented messages; failed asserts follow, indented.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

TEST_CU = "iscsi-test-cu"
FAMILIES = ("SCSI", "iSCSI")

_SUITE = re.compile(r"^Suite: (.+?)\s*$")
_TEST = re.compile(r"^  Test: (\S+) \.\.\.(.*)$")
# CUnit's verdict, possibly followed on the same line by output printed after it (a
# suite's teardown: "passed    [FAILED] PRIN command: ..." in Reserve6.LUNReset).
_VERDICT = re.compile(r"^(passed|FAILED)(?:\s+(.*))?$")
_ASSERT = re.compile(r"^\s+\d+\. \S+:\d+\s+- ")
_SUMMARY_ROW = re.compile(r"^\s*(suites|tests|asserts)\s+(\d+)\s+(\d+)\s+(n/a|\d+)\s+(\d+)\s+(n/a|\d+)\s*$")


class CunitParseError(ValueError):
    """The text is not a complete iscsi-test-cu report (crashed run, truncated output)."""


@dataclass
class TestOutcome:
    suite: str
    name: str
    status: str = ""              # "passed", "failed" or "skipped"
    messages: list = field(default_factory=list)   # the test's own lines ([SKIPPED] ..., [FAILED] ...)
    asserts: list = field(default_factory=list)    # CUnit's failed-assert lines
    trailing: list = field(default_factory=list)   # printed after the verdict (teardown)

    @property
    def full_name(self) -> str:
        return f"{self.suite}.{self.name}"


@dataclass
class CunitReport:
    tests: list
    summary: dict                  # {"tests": {"total", "ran", "passed", "failed", "inactive"}, ...}

    def _names(self, status: str) -> list:
        return [t.full_name for t in self.tests if t.status == status]

    @property
    def passed(self) -> int:
        return sum(t.status == "passed" for t in self.tests)

    @property
    def failed(self) -> int:
        return sum(t.status == "failed" for t in self.tests)

    @property
    def skipped(self) -> int:
        return sum(t.status == "skipped" for t in self.tests)

    @property
    def passed_with_failure_messages(self) -> list:
        """Tests CUnit passed although they printed [FAILED] (libiscsi logs some checks
        without asserting them): worth a look, not counted as failures."""
        return [t.full_name for t in self.tests
                if t.status == "passed" and any("[FAILED]" in m for m in t.messages)]

    @property
    def failed_names(self) -> list:
        return self._names("failed")

    @property
    def skipped_names(self) -> list:
        return self._names("skipped")

    def counts(self) -> dict:
        return {"tests": len(self.tests), "passed": self.passed, "failed": self.failed,
                "skipped": self.skipped}


def parse_cunit(text: str) -> CunitReport:
    """The per-test outcomes and the Run Summary of one iscsi-test-cu run.

    CunitParseError when a test has no verdict, the summary is missing, or the
    per-test count disagrees with the summary (a crash mid-run)."""
    tests: list = []
    summary: dict = {}
    suite = ""
    current: Optional[TestOutcome] = None

    def finish(verdict: str) -> None:
        nonlocal current
        if verdict == "FAILED":
            current.status = "failed"
        elif any("[SKIPPED]" in m for m in current.messages):
            current.status = "skipped"
        else:
            current.status = "passed"
        tests.append(current)

    last = None
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("Run Summary:"):
            last = None
            continue
        m = _SUMMARY_ROW.match(line)
        if m:
            summary[m.group(1)] = {"total": int(m.group(2)), "ran": int(m.group(3)),
                                   "passed": None if m.group(4) == "n/a" else int(m.group(4)),
                                   "failed": int(m.group(5)),
                                   "inactive": None if m.group(6) == "n/a" else int(m.group(6))}
            continue
        m = _SUITE.match(line)
        if m:
            if current is not None:
                raise CunitParseError(f"test {current.full_name} has no verdict")
            suite, last = m.group(1), None
            continue
        m = _TEST.match(line)
        if m:
            if current is not None:
                raise CunitParseError(f"test {current.full_name} has no verdict")
            current = TestOutcome(suite, m.group(1))
            rest = m.group(2).strip()
            v = _VERDICT.match(rest)
            if v:
                finish(v.group(1))
                last, current = tests[-1], None
                if v.group(2):
                    last.trailing.append(v.group(2))
            elif rest:
                current.messages.append(rest)
            continue
        if current is not None:
            v = _VERDICT.match(line)      # column 0: the test's messages are indented
            if v:
                finish(v.group(1))
                last, current = tests[-1], None
                if v.group(2):
                    last.trailing.append(v.group(2))
            elif line.strip():
                current.messages.append(line.strip())
            continue
        if last is not None and _ASSERT.match(line):
            last.asserts.append(line.strip())
        elif last is not None and line.strip():
            last.trailing.append(line.strip())
    if current is not None:
        raise CunitParseError(f"test {current.full_name} has no verdict (the run stopped there)")
    if "tests" not in summary:
        raise CunitParseError("no CUnit Run Summary (the run did not finish)")
    row = summary["tests"]
    if row["ran"] != len(tests) or row["failed"] != sum(t.status == "failed" for t in tests):
        raise CunitParseError(f"summary says {row['ran']} ran / {row['failed']} failed, "
                              f"the report lists {len(tests)} / "
                              f"{sum(t.status == 'failed' for t in tests)}")
    return CunitReport(tests, summary)


@dataclass
class FamilyRun:
    family: str
    url: str
    returncode: int
    seconds: float
    report: CunitReport
    stdout: str
    stderr: str


def have_test_cu() -> bool:
    return shutil.which(TEST_CU) is not None


def run_family(url: str, family: str, timeout: float = 600.0, dataloss: bool = True,
               extra: tuple = ()) -> FamilyRun:
    """``iscsi-test-cu [--dataloss] --test=FAMILY URL``, parsed.  ``family`` is
    FAMILY[.SUITE[.TEST]] (e.g. "SCSI", "iSCSI", "SCSI.Read10").  iscsi-test-cu exits 1
    whenever a test fails, so the exit status alone says nothing: read the report."""
    cmd = [TEST_CU] + (["--dataloss"] if dataloss else []) + [f"--test={family}", *extra, url]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    try:
        report = parse_cunit(p.stdout)
    except CunitParseError as exc:
        raise CunitParseError(f"{' '.join(cmd)} (rc {p.returncode}): {exc}\n"
                              f"stdout tail:\n{p.stdout[-2000:]}\nstderr tail:\n{p.stderr[-2000:]}") from None
    return FamilyRun(family, url, p.returncode, seconds, report, p.stdout, p.stderr)


@contextmanager
def ringstack_iscsi(size: int = 64 << 20, mask: str = "0x3", how: str = "option",
                    nbd: bool = False, check_leftovers: bool = True) -> Iterator:
    """``ringstack start -m MASK ... --iscsi PORT`` with a malloc bdev Malloc0 of ``size``
    bytes on a free port, yielded once the port accepts; stopped in the end, and (by
    default) AssertionError if anything of it is left (processes, /dev/shm, socket).

        with ringstack_iscsi() as rs:
            run_family(rs.url, "SCSI")

    In a test: ``pytest.skip(reason)`` first when ``available()`` says no."""
    from tools.ringstack_iscsi import RingstackIscsi
    rs = RingstackIscsi(size=size, mask=mask, how=how, nbd=nbd)
    rs.start()
    try:
        yield rs
    finally:
        err = rs.stop()
        if check_leftovers:
            left = rs.leftovers()
            assert not left, f"ringstack left {left}"
            assert "Traceback" not in err, f"ringstack stderr:\n{err[-3000:]}"


@contextmanager
def tgtd_iscsi(size: int = 64 << 20, cpus: Optional[str] = None) -> Iterator:
    """A private tgtd (tools/tgtd.py) exporting ``size`` bytes; checked for leftovers."""
    from tools.tgtd import Tgtd
    t = Tgtd(size=size, cpus=cpus).start()
    try:
        yield t
    finally:
        t.stop()
        left = t.leftovers()
        assert not left, f"tgtd left {left}"


def ringstack_iscsi_available() -> tuple:
    """``(ok, reason)``: whether ringstack can serve iSCSI in this tree."""
    from tools.ringstack_iscsi import available
    return available()
