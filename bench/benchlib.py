"""What the benchmarks share: the machine they ran on, the spread of repeated figures,
free ports, waiting for a server, a process's memory."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from pathlib import Path


def machine_info() -> str:
    """One line naming the machine: CPU model, cores, memory, Python, OS."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = int(meminfo.read_text().split()[1])
        memory = f", {total_kb / 2**20:.0f} GiB"
    load = ", load " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {model}, {os.cpu_count()} cpus{memory}{load}; "
            f"Python {platform.python_version()}, {platform.platform()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def spread(values: list[float], fmt: str = ".3f") -> str:
    """Median with the range, e.g. '0.812 (0.790-0.840, 3 runs)'."""
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}}, "
            f"{len(values)} runs)")


def status_kb(pid: int, key: str) -> int:
    """A figure of /proc/<pid>/status in kB, e.g. VmHWM (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child_pids(pid: int) -> list[int]:
    """The process's children, whichever of its threads started them."""
    return sorted(int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                  for child in (task / "children").read_text().split())
