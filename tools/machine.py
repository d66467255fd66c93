"""What machine a benchmark ran on: the one place every ``ringstack bench`` and bdevperf
report reads it from (BENCHMARKS.md records nproc and the CPU model with each figure)."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it ("Model name"), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
