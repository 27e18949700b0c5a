"""Modbus RTU: achieved polls per second on a simulated 9600 8E1 line against its limit.

The simulator (`cemsd sim`) serves a few instruments on a paced serial line
(simulators/line.py: two ptys and a relay that delivers each character only when its
last bit would have arrived at 9600 baud with 11 bits per character, and keeps the line
silent for t3.5 when the direction turns). The endpoints use 8N2 termios settings,
which Debian's ptys accept and which also have 11 bits per character; the relay does the
timing, so this is the wire time of 9600 8E1.

Measured, alternately `--repeat` times:
- pipeline: the whole daemon (bus owner -> decode -> validity -> writer -> SQLite ->
  closing) on a virtual clock at full speed, one RTU bus, timeout 0.5 s, no retries,
  every device due every simulated second, so the owner polls back to back; timed from
  `ready` to the end of shutdown;
- bare: an AsyncModbusSerialClient reading the same blocks back to back on the same line,
  for reference (what pymodbus alone achieves there).

The limit, from the bytes on the wire of each poll (field notes §5): per block, request
8 B (addr, fc, start, quantity, CRC) and reply 5 + 2N B for registers (5 + ceil(N/8) for
bits), each character 11/9600 s, plus 2 x t3.5 per transaction (t3.5 = 3.5 characters),
plus the instrument's turnaround, taken as 0 (the simulator's own reply time counts
against us). A poll is one device's complete set of blocks. Usage:
    .venv/bin/python bench/bench_rtu.py [--minutes 2] [--devices 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType

from cemsd.config import load_config
from cemsd.logs import setup_logging
from cemsd.plan import DevicePlan, compile_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info, spread
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
BAUD = 9600
BITS_PER_CHAR = 11  # 8E1: start + 8 data + parity + stop
T35_CHARS = 3.5
REQUEST_BYTES = 8  # FC01-04: addr + fc + start(2) + quantity(2) + crc(2)
TURNAROUND_S = 0.0  # the instrument's reply time, assumed 0


def reply_bytes(function_code: int, count: int) -> int:
    """addr + fc + byte count + data + crc(2)."""
    data = 2 * count if function_code in (3, 4) else math.ceil(count / 8)
    return 5 + data


def poll_seconds(device: DevicePlan) -> float:
    """Wire time of one poll of `device` at the frame-time limit."""
    char = BITS_PER_CHAR / BAUD
    return sum((REQUEST_BYTES + reply_bytes(b.function_code, b.count)) * char
               + 2 * T35_CHARS * char + TURNAROUND_S for b in device.blocks)


def write_files(tmp: Path, devices: int) -> tuple[Path, Path]:
    names = instruments(devices)
    sim_end, daemon_end = tmp / "line-sim", tmp / "line-daemon"
    scenario = {
        "start": START,
        "buses": [{"name": "rtu", "transport": "serial", "port": str(sim_end),
                   "link": str(daemon_end), "baudrate": BAUD, "parity": "N", "stopbits": 2,
                   "line_bits_per_char": BITS_PER_CHAR}],
        "devices": [{"name": n, "bus": "rtu", "device_id": i + 1, "profile": p}
                    for i, (n, p) in enumerate(names)],
    }
    (tmp / "scenario.toml").write_bytes(tomli_w.dumps(scenario).encode())
    return tmp / "scenario.toml", daemon_end


def write_config(directory: Path, port: Path, devices: int) -> Path:
    return write_daemon_config(directory, {"name": "rtu", "transport": "serial",
                                           "port": str(port), "baudrate": BAUD, "parity": "N",
                                           "stopbits": 2, "timeout": 0.5, "retries": 0},
                               devices)


async def bare_loop(config_path: Path, polls: int) -> float:
    """A plain pymodbus serial client reading the same blocks back to back."""
    bus = compile_plan(load_config(config_path)).buses[0]
    client = AsyncModbusSerialClient(str(bus.bus.port), framer=FramerType.RTU, baudrate=BAUD,
                                     parity="N", stopbits=2, timeout=0.5, retries=0)
    return await read_round_robin(client, bus, polls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="simulated minutes per run")
    parser.add_argument("--devices", type=int, default=3, choices=range(1, len(PROFILES) + 1))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup_logging("WARNING")
    print(machine_info())
    tmp = Path(tempfile.mkdtemp(prefix="cemsd-bench-rtu-"))
    scenario_path, daemon_end = write_files(tmp, args.devices)
    sim = start_simulator(scenario_path, tmp / "clock")
    results: list[tuple[PipelineRun, float]] = []
    try:
        _wait_path(daemon_end)
        plan = compile_plan(load_config(write_config(tmp / "plan", daemon_end, args.devices)))
        devices = plan.buses[0].devices
        limit = len(devices) / sum(poll_seconds(d) for d in devices)
        for i in range(args.repeat):
            config_path = write_config(tmp / f"run{i}", daemon_end, args.devices)
            run = asyncio.run(run_daemon(config_path, tmp / "clock", START, args.minutes))
            bare = asyncio.run(bare_loop(config_path, run.polls))
            results.append((run, bare))
            print(f"run {i + 1}: pipeline {run.rate:6.2f} polls/s ({run.polls} polls), "
                  f"bare pymodbus {bare:6.2f} polls/s, pipeline/limit {run.rate / limit:.3f}")
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    char = BITS_PER_CHAR / BAUD
    print(f"line: {BAUD} baud, {BITS_PER_CHAR} bits per character ({char * 1e3:.3f} ms), "
          f"t3.5 {T35_CHARS * char * 1e3:.2f} ms, turnaround assumed {TURNAROUND_S * 1e3:g} ms")
    for d in devices:
        blocks = ", ".join(f"fc{b.function_code} x{b.count} ({REQUEST_BYTES}+"
                           f"{reply_bytes(b.function_code, b.count)} B)" for b in d.blocks)
        print(f"  {d.name}: {blocks}: {poll_seconds(d) * 1e3:.1f} ms per poll at the limit")
    print(f"limit:               {limit:6.2f} polls/s")
    print(f"bare pymodbus loop:  {spread([b for _, b in results], '.2f')} polls/s")
    print(f"full cemsd pipeline: {spread([r.rate for r, _ in results], '.2f')} polls/s")
    print(f"ratio bare/limit:     {spread([b / limit for _, b in results])}")
    print(f"ratio pipeline/limit: {spread([r.rate / limit for r, _ in results])}")


def _wait_path(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the simulator did not create its serial line")
        time.sleep(0.05)
    time.sleep(0.5)  # the server opens its end right after creating the line


if __name__ == "__main__":
    main()
