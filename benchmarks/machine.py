"""One line describing the machine a benchmark ran on (cores, memory, CPU model, versions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def describe() -> str:
    import duckdb
    import pyspark

    try:
        from benchmarks.quix_baseline import import_quixstreams

        quix = import_quixstreams().__version__
    except ImportError:  # the latency baseline is then skipped
        quix = "not installed"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {memory_gib():.1f} GiB, CPU {cpu_model()}, "
        f"Python {platform.python_version()}, pyspark {pyspark.__version__}, "
        f"duckdb {duckdb.__version__}, quixstreams {quix}; load average {load} (1/5/15 min)"
    )
