"""Simulated hours per wall second for the demo plant: in process over a month, and
through real sockets over a shorter span in the same run.

- sockets: as `cemsd demo` runs it: the simulators in their own process (`cemsd sim`,
  Modbus TCP on 127.0.0.1 and RTU over a socat pty pair) following the daemon's virtual
  clock through the clock file;
- in process: the same scenario's instruments answering the daemon's bus owners through
  the in-process transport (drivers/inprocess.py, decision 0241): the same bus owners,
  decode, validity, storage, closing and components, without the wire.

Both runs use the demo configuration (config/demo.toml) with a fresh SQLite database in
a temporary directory and every component it configures (QA/QC, bypass, sealing). Each is
timed from the daemon's `ready` to the end of its shutdown; wall time and CPU time (the
daemon's threads, and the simulator process's for the socket run) are printed, since the
machine is shared. The in-process run's
hours are counted afterwards (each channel has every hour). Usage:
    .venv/bin/python bench/bench_simulation.py [--days 30] [--socket-hours 2]
        [--config config/demo.toml] [--scenario config/demo-scenario.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cemsd.clock import SharedClockFile, VirtualClock
from cemsd.config import load_config
from cemsd.daemon import Daemon, TransportFactory
from cemsd.logs import setup_logging
from cemsd.store import schema
from cemsd.store.database import Database
from simulators.demo import plant_copy
from simulators.inprocess import InProcessSimulator
from simulators.scenario import load_scenario

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info, wait_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SimulationRun:
    hours: float
    wall_s: float
    cpu_s: float
    hours_stored: int = 0

    @property
    def rate(self) -> float:
        """Simulated hours per wall second."""
        return self.hours / self.wall_s


async def timed_run(config_path: Path, clock: VirtualClock, hours: float,
                    transport: TransportFactory | None) -> SimulationRun:
    config = load_config(config_path)
    options: dict[str, Any] = {} if transport is None else {"transport_factory": transport}
    daemon = Daemon(config, clock, clock_name="virtual (bench)",
                    until=clock.now() + hours * 3600, **options)
    run = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    await run
    return SimulationRun(hours, time.perf_counter() - wall, time.process_time() - cpu)


def in_process(config: Path, scenario: Path, hours: float, overlap: bool = True
               ) -> SimulationRun:
    sim_scenario = load_scenario(scenario)
    clock = VirtualClock(sim_scenario.epoch, overlap=overlap)
    run = asyncio.run(timed_run(config, clock, hours,
                                InProcessSimulator(sim_scenario, clock).transport))
    run.hours_stored = count_hours(config, sim_scenario.epoch, hours)
    return run


def through_sockets(config: Path, scenario: Path, hours: float, overlap: bool = True
                    ) -> SimulationRun:
    sim_scenario = load_scenario(scenario)
    clock_path = scenario.parent / "clock"
    shared = SharedClockFile(clock_path, create=True)
    shared.write(sim_scenario.epoch)
    sim = subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
                            "--scenario", str(scenario), "--clock-file", str(clock_path)],
                           stdin=subprocess.DEVNULL)
    try:
        for bus in sim_scenario.buses:
            if bus.transport == "tcp":
                wait_port(int(bus.port))
            else:
                wait_path(Path(str(bus.link)))
        clock = VirtualClock(sim_scenario.epoch, shared_file=shared, overlap=overlap)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = asyncio.run(timed_run(config, clock, hours, None))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    # the simulator process's CPU counts too (it ran beside the daemon the whole time)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_s += (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return run


def wait_path(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the simulator did not create {path}")
        time.sleep(0.05)


def count_hours(config_path: Path, start: float, hours: float) -> int:
    """Hours stored per channel, the fewest of any channel (each should have them all)."""
    db = Database(load_config(config_path).storage.database_url)
    try:
        rows = db.aggregates_between(schema.hours, start, start + hours * 3600)
    finally:
        db.close()
    per_channel: dict[str, int] = {}
    for row in rows:
        per_channel[row.channel] = per_channel.get(row.channel, 0) + 1
    return min(per_channel.values(), default=0)


def report(name: str, run: SimulationRun) -> None:
    """The run's rate, and a 30-day month at that rate and at its CPU time (what a quiet
    machine would take if the run's threads did not overlap)."""
    print(f"{name}: {run.hours:g} simulated h in {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU: "
          f"{run.rate:.2f} simulated h per wall s; a 30-day month "
          f"{720 / run.rate / 60:.1f} min wall, {720 * run.cpu_s / run.hours / 60:.1f} min CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=30.0, help="simulated days in process")
    parser.add_argument("--socket-hours", type=float, default=2.0,
                        help="simulated hours through sockets (the ratio's baseline)")
    parser.add_argument("--serial", action="store_true",
                        help="close minutes with simulated time held still (no overlap, 0242)")
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo.toml")
    parser.add_argument("--scenario", type=Path, default=ROOT / "config/demo-scenario.toml")
    args = parser.parse_args()
    setup_logging("ERROR")
    print(machine_info())
    tmp = Path(tempfile.mkdtemp(prefix="cemsd-bench-sim-"))

    sockets = through_sockets(*plant_copy(args.config, args.scenario, tmp / "sockets", True),
                              args.socket_hours, overlap=not args.serial)
    report("through sockets", sockets)
    direct = in_process(*plant_copy(args.config, args.scenario, tmp / "in-process", False),
                        args.days * 24, overlap=not args.serial)
    report("in process     ", direct)
    print(f"hours stored per channel (in process): {direct.hours_stored} of "
          f"{args.days * 24:g}")
    print(f"ratio in process / sockets (simulated hours per wall second): "
          f"{direct.rate / sockets.rate:.2f}")
    print(machine_info())


if __name__ == "__main__":
    main()
