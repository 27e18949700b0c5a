"""Polls per second through the whole pipeline against a bare pymodbus loop.

Both run in this process against the same simulator process (`cemsd sim`, Modbus TCP on
127.0.0.1), one after the other, in one run:

- baseline: an AsyncModbusTcpClient reading each device's blocks back to back;
- pipeline: the daemon (bus owner -> decode -> validity -> writer -> SQLite -> minute
  and hour closing) on a virtual clock at full speed, so it polls as fast as it can.

A poll is one device's complete set of block reads. The ratio pipeline/baseline is the
figure; absolute rates depend on the machine. Usage:
    .venv/bin/python bench/bench_polling.py [--minutes 30] [--devices 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from pymodbus.client import AsyncModbusTcpClient

from cemsd.clock import SharedClockFile, VirtualClock
from cemsd.config import load_config
from cemsd.daemon import Daemon
from cemsd.logs import setup_logging
from cemsd.plan import compile_plan

START = "2026-06-01T00:00:00+08:00"
PROFILES = ["n2o-analyzer-percent", "n2o-analyzer-ppm", "stack-flow-meter", "plant-io"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_files(tmp: Path, port: int, devices: int) -> tuple[Path, Path]:
    names = [f"dev{i + 1}" for i in range(devices)]
    profiles = [PROFILES[i % len(PROFILES)] for i in range(devices)]
    scenario = {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i + 1, "profile": p}
                    for i, (n, p) in enumerate(zip(names, profiles, strict=True))],
    }
    config = {
        "plant": {"id": "bench"},
        "storage": {"state_dir": str(tmp / "state")},
        "points": {"inlet": {"duct_area_m2": 1.0}, "outlet": {"duct_area_m2": 1.0}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.5, "retries": 0}],
        "devices": [],
    }
    for i, (name, profile) in enumerate(zip(names, profiles, strict=True)):
        device = {"name": name, "bus": "bus", "device_id": i + 1, "profile": profile,
                  "poll_interval": 1.0}
        if profile == "stack-flow-meter":
            device["point"] = "inlet"
        config["devices"].append(device)
    (tmp / "scenario.toml").write_bytes(tomli_w.dumps(scenario).encode())
    (tmp / "cemsd.toml").write_bytes(tomli_w.dumps(config).encode())
    return tmp / "cemsd.toml", tmp / "scenario.toml"


async def bare_loop(config_path: Path, polls: int) -> float:
    """Polls per second of a plain pymodbus client reading the same blocks."""
    plan = compile_plan(load_config(config_path))
    bus = plan.buses[0]
    client = AsyncModbusTcpClient(bus.bus.host, port=bus.bus.port, timeout=1, retries=0)
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


async def pipeline(config_path: Path, clock_path: Path, minutes: float) -> tuple[float, int]:
    config = load_config(config_path)
    epoch = __import__("datetime").datetime.fromisoformat(START).timestamp()
    clock = VirtualClock(epoch, shared_file=SharedClockFile(clock_path, create=True))
    daemon = Daemon(config, clock, clock_name="bench", until=epoch + minutes * 60)
    started = time.perf_counter()
    await daemon.run()
    elapsed = time.perf_counter() - started
    polls = sum(h.polls for o in daemon.owners for h in o.health.values())
    failed = sum(n for o in daemon.owners for h in o.health.values()
                 for r, n in h.results.items() if r != "ok")
    if failed:
        raise SystemExit(f"{failed} polls failed: the comparison would be unfair")
    return polls / elapsed, polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes")
    parser.add_argument("--devices", type=int, default=4, choices=range(1, len(PROFILES) + 1),
                        help="instruments on the bus: analyzers, flow meter, plant I/O")
    args = parser.parse_args()
    setup_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="cemsd-bench-"))
    port = free_port()
    config_path, scenario_path = write_files(tmp, port, args.devices)
    clock_path = tmp / "clock"
    SharedClockFile(clock_path, create=True).write(0.0)
    sim = subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
                            "--scenario", str(scenario_path), "--clock-file", str(clock_path)],
                           stdin=subprocess.DEVNULL)
    try:
        _wait_port(port)
        rate, polls = asyncio.run(pipeline(config_path, clock_path, args.minutes))
        baseline = asyncio.run(bare_loop(config_path, polls))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"{os.cpu_count()} cpus, Python {platform.python_version()}, {platform.system()}")
    print(f"devices: {args.devices} on one Modbus TCP bus; {polls} polls "
          f"({args.minutes:g} simulated minutes at 1 s)")
    print(f"bare pymodbus loop:  {baseline:8.0f} polls/s")
    print(f"full cemsd pipeline: {rate:8.0f} polls/s")
    print(f"ratio pipeline/bare: {rate / baseline:8.3f}")


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the simulator did not start")


if __name__ == "__main__":
    main()
