"""Polls per second through the whole pipeline against a bare pymodbus loop.

Both run in this process against the same simulator process (`cemsd sim`, Modbus TCP on
127.0.0.1), alternately, `--repeat` times in one run:

- baseline: an AsyncModbusTcpClient with the daemon's client settings (timeout, no
  retries) reading each device's blocks back to back, as many polls as the pipeline made;
- pipeline: the daemon (bus owner -> decode -> validity -> writer -> SQLite -> minute
  and hour closing -> period listeners) on a virtual clock at full speed, so it polls as
  fast as it can. Timed from the daemon's `ready` to the end of its shutdown (the last
  flush and closing included); start-up (migrations, recovery) is a one-off and is
  printed apart.

Why the virtual clock and not the wall clock: a wall-clock daemon cannot be driven
faster than its grid, and the configuration (rightly) refuses a poll interval shorter
than timeout x attempts, so "poll interval 0" does not exist. On the virtual clock
every stage does its real work per reading and per minute. Closing a minute overlaps the
next minute's polling as on the wall clock (decision 0242); `--serial` holds simulated
time still while the closer works, as before that decision.

A poll is one device's complete set of block reads. The ratio pipeline/baseline is the
figure; absolute rates depend on the machine. The machine has few cores shared with
other work, so the spread over the repeats is printed too. Usage:
    .venv/bin/python bench/bench_polling.py [--minutes 30] [--devices 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import tomli_w
from pymodbus.client import AsyncModbusTcpClient

from cemsd.config import load_config
from cemsd.logs import setup_logging
from cemsd.plan import compile_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine_info, spread, wait_port
from polling_common import (
    PROFILES,
    PipelineRun,
    instruments,
    read_round_robin,
    run_daemon,
    start_simulator,
    write_daemon_config,
)

START = "2026-06-01T00:00:00+08:00"




def write_scenario(tmp: Path, port: int, devices: int) -> Path:
    scenario = {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i + 1, "profile": p}
                    for i, (n, p) in enumerate(instruments(devices))],
    }
    (tmp / "scenario.toml").write_bytes(tomli_w.dumps(scenario).encode())
    return tmp / "scenario.toml"


def write_config(directory: Path, port: int, devices: int) -> Path:
    return write_daemon_config(directory, {"name": "bus", "transport": "tcp",
                                           "host": "127.0.0.1", "port": port,
                                           "timeout": 0.5, "retries": 0}, devices)


async def bare_loop(config_path: Path, polls: int) -> float:
    """Polls per second of a plain pymodbus client reading the same blocks."""
    bus = compile_plan(load_config(config_path)).buses[0]
    client = AsyncModbusTcpClient(bus.bus.host, port=bus.bus.port,
                                  timeout=bus.devices[0].timeout, retries=0)
    return await read_round_robin(client, bus, polls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes")
    parser.add_argument("--devices", type=int, default=4, choices=range(1, len(PROFILES) + 1),
                        help="instruments on the bus: analyzers, flow meter, plant I/O")
    parser.add_argument("--repeat", type=int, default=3, help="pipeline/baseline pairs")
    parser.add_argument("--serial", action="store_true",
                        help="close minutes with simulated time held still (no overlap, 0242)")
    args = parser.parse_args()
    setup_logging("WARNING")
    print(machine_info())
    tmp = Path(tempfile.mkdtemp(prefix="cemsd-bench-"))
    port = free_port()
    clock_path = tmp / "clock"
    sim = start_simulator(write_scenario(tmp, port, args.devices), clock_path)
    runs: list[tuple[PipelineRun, float]] = []
    try:
        wait_port(port)
        for i in range(args.repeat):
            config_path = write_config(tmp / f"run{i}", port, args.devices)
            run = asyncio.run(run_daemon(config_path, clock_path, START, args.minutes,
                                         overlap=not args.serial))
            baseline = asyncio.run(bare_loop(config_path, run.polls))
            runs.append((run, baseline))
            print(f"run {i + 1}: pipeline {run.rate:6.0f} polls/s ({run.polls} polls, start-up "
                  f"{run.startup_s:.2f} s), bare {baseline:6.0f} polls/s, "
                  f"ratio {run.rate / baseline:.3f}")
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"devices: {args.devices} on one Modbus TCP bus, {args.minutes:g} simulated minutes "
          "at a 1 s poll interval per run")
    print(f"bare pymodbus loop:  {spread([b for _, b in runs], '.0f')} polls/s")
    print(f"full cemsd pipeline: {spread([r.rate for r, _ in runs], '.0f')} polls/s")
    print(f"ratio pipeline/bare: {spread([r.rate / b for r, b in runs])}")




if __name__ == "__main__":
    main()
