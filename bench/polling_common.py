"""What the polling benchmarks share: the machine line and the spread of repeated figures."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def machine() -> str:
    """CPU model, cores, Python and kernel: every figure is printed with this line."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} cpus, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average {load:.2f} at the start")


def spread(values: list[float], fmt: str = ".3f") -> str:
    """Median with the range, e.g. '0.812 (0.790-0.840, 3 runs)'."""
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}}, "
            f"{len(values)} runs)")
