"""What the polling benchmarks share: the daemon run, the bare loop, the simulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from cemsd.clock import SharedClockFile, VirtualClock
from cemsd.config import load_config
from cemsd.daemon import Daemon
from cemsd.plan import BusPlan


@dataclass
class PipelineRun:
    rate: float  # polls per second from ready to stopped
    polls: int
    startup_s: float


async def run_daemon(config_path: Path, clock_path: Path, start: str,
                     minutes: float, overlap: bool = True) -> PipelineRun:
    """A fresh daemon (its own database) polling `minutes` of simulated time from `start`
    on a virtual clock at full speed; timed from `ready` to the end of its shutdown.
    `overlap=False`: closing a minute holds simulated time still (decision 0242)."""
    config = load_config(config_path)
    epoch = datetime.fromisoformat(start).timestamp()
    clock = VirtualClock(epoch, shared_file=SharedClockFile(clock_path, create=True),
                         overlap=overlap)
    daemon = Daemon(config, clock, clock_name="bench", until=epoch + minutes * 60)
    created = time.perf_counter()
    run = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    started = time.perf_counter()
    await run
    elapsed = time.perf_counter() - started
    polls = sum(h.polls for o in daemon.owners for h in o.health.values())
    failed = {r: n for o in daemon.owners for h in o.health.values()
              for r, n in h.results.items() if r != "ok"}
    if failed:
        raise SystemExit(f"polls failed {failed}: the comparison would be unfair")
    return PipelineRun(polls / elapsed, polls, started - created)


async def read_round_robin(client: Any, bus: BusPlan, polls: int) -> float:
    """Polls per second of a bare pymodbus client reading each device's blocks in turn."""
    await client.connect()
    calls = {1: client.read_coils, 2: client.read_discrete_inputs,
             3: client.read_holding_registers, 4: client.read_input_registers}
    started = time.perf_counter()
    for i in range(polls):
        device = bus.devices[i % len(bus.devices)]
        for block in device.blocks:
            response = await calls[block.function_code](block.address, count=block.count,
                                                        device_id=device.device_id)
            assert not response.isError()
    elapsed = time.perf_counter() - started
    client.close()
    return polls / elapsed


def start_simulator(scenario_path: Path, clock_path: Path) -> subprocess.Popen[bytes]:
    """`cemsd sim` following the benchmark's virtual clock through the clock file."""
    SharedClockFile(clock_path, create=True).write(0.0)
    return subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
                             "--scenario", str(scenario_path), "--clock-file", str(clock_path)],
                            stdin=subprocess.DEVNULL)


PROFILES = ["n2o-analyzer-percent", "n2o-analyzer-ppm", "stack-flow-meter", "plant-io"]


def instruments(count: int) -> list[tuple[str, str]]:
    """(name, profile) of the benchmark's instruments: analyzers, flow meter, plant I/O."""
    return [(f"dev{i + 1}", PROFILES[i % len(PROFILES)]) for i in range(count)]


def write_daemon_config(directory: Path, bus: dict[str, Any], devices: int) -> Path:
    """A daemon configuration with its own state directory (a fresh database): every
    instrument on `bus`, due every second."""
    directory.mkdir(parents=True)
    config: dict[str, Any] = {
        "plant": {"id": "bench"},
        "storage": {"state_dir": str(directory / "state")},
        "points": {"inlet": {"duct_area_m2": 1.0}, "outlet": {"duct_area_m2": 1.0}},
        "buses": [bus],
        "devices": [],
    }
    for i, (name, profile) in enumerate(instruments(devices)):
        device = {"name": name, "bus": bus["name"], "device_id": i + 1, "profile": profile,
                  "poll_interval": 1.0}
        if profile == "stack-flow-meter":
            device["point"] = "inlet"
        config["devices"].append(device)
    (directory / "cemsd.toml").write_bytes(tomli_w.dumps(config).encode())
    return directory / "cemsd.toml"
