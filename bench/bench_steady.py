"""Steady state: CPU share of one core and peak RSS of the daemon polling 50 channels at 1 s.

The simulator (`cemsd sim`) and the daemon (`cemsd run`, wall clock, real time) run as two
separate processes; Modbus TCP on 127.0.0.1, five buses (one per gateway), each with a
stack flow meter (6 channels) and two N2O analyzers (2 channels each): 50 channels, each
read once a second, stored in SQLite, closed into minutes and hours as in production.

After a warm-up, the daemon's CPU time (utime + stime from /proc/<pid>/stat) is sampled
over a measured wall interval; peak RSS is VmHWM from /proc/<pid>/status at the end.
Goals: CPU <= 2 % of one core, peak RSS <= 80 MB. Usage:
    .venv/bin/python bench/bench_steady.py [--seconds 180] [--warmup 60] [--runs 1]
Set CEMSD_PROFILE=<file> to have the daemon write a cProfile of its whole run there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import free_port, machine_info, status_kb, wait_port

BUSES = 5
ANALYZERS_PER_BUS = 2
FLOW_METER_CHANNELS = 6  # stack-flow-meter profile
ANALYZER_CHANNELS = 2  # n2o-analyzer profile: concentration and status word
CHANNELS = BUSES * (FLOW_METER_CHANNELS + ANALYZERS_PER_BUS * ANALYZER_CHANNELS)
CPU_GOAL = 0.02
RSS_GOAL_MB = 80.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_files(tmp: Path, ports: list[int]) -> tuple[Path, Path]:
    """The daemon's configuration and the simulator's scenario for the same instruments."""
    scenario_buses, scenario_devices, buses, devices, points = [], [], [], [], {}
    for b, port in enumerate(ports, start=1):
        bus = f"gateway{b}"
        scenario_buses.append({"name": bus, "transport": "tcp", "port": port})
        buses.append({"name": bus, "transport": "tcp", "host": "127.0.0.1", "port": port,
                      "timeout": 0.5, "retries": 0})
        points[f"line{b}"] = {"duct_area_m2": 1.0}
        instruments = [("flow", "stack-flow-meter")] + [
            (f"analyzer{a}", "n2o-analyzer") for a in range(1, ANALYZERS_PER_BUS + 1)]
        for unit_id, (kind, profile) in enumerate(instruments, start=1):
            name = f"l{b}-{kind}"
            scenario_devices.append({"name": name, "bus": bus, "device_id": unit_id,
                                     "profile": profile})
            device = {"name": name, "bus": bus, "device_id": unit_id, "profile": profile,
                      "poll_interval": 1.0}
            if profile == "stack-flow-meter":
                device["point"] = f"line{b}"
            devices.append(device)
    scenario = {"start": datetime.now().astimezone().isoformat(timespec="seconds"),
                "buses": scenario_buses, "devices": scenario_devices}
    config = {"plant": {"id": "bench-steady"}, "storage": {"state_dir": str(tmp / "state")},
              "points": points, "buses": buses, "devices": devices}
    (tmp / "scenario.toml").write_bytes(tomli_w.dumps(scenario).encode())
    (tmp / "cemsd.toml").write_bytes(tomli_w.dumps(config).encode())
    return tmp / "cemsd.toml", tmp / "scenario.toml"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stored_readings(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT coalesce(sum(n), 0) FROM reading_blocks").fetchone()[0])


def one_run(seconds: float, warmup: float, fresh: bool) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="cemsd-bench-steady-"))
    ports = [free_port() for _ in range(BUSES)]
    config_path, scenario_path = write_files(tmp, ports)
    quiet = [sys.executable, "-m", "cemsd", "--log-level", "WARNING"]
    sim = subprocess.Popen([*quiet, "sim", "--scenario", str(scenario_path), "--start-now"],
                           stdin=subprocess.DEVNULL)
    daemon = None
    try:
        for port in ports:
            wait_port(port)
        # The schema exists before the measured start, as after the first start of an
        # installed daemon: a restart finds it at the newest migration (no alembic loaded).
        if not fresh:
            subprocess.run([*quiet, "db-upgrade", "--config", str(config_path)], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        daemon = subprocess.Popen([*_profiled(quiet), "run", "--config", str(config_path)],
                                  stdin=subprocess.DEVNULL)
        database = tmp / "state" / "cemsd.db"
        time.sleep(warmup)
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        cpu0, wall0, rows0 = cpu_seconds(daemon.pid), time.monotonic(), stored_readings(database)
        time.sleep(seconds)
        cpu1, wall1, rows1 = cpu_seconds(daemon.pid), time.monotonic(), stored_readings(database)
        peak_kb = status_kb(daemon.pid, "VmHWM")
        return {"cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
                "readings_per_s": (rows1 - rows0) / (wall1 - wall0),
                "peak_rss_mb": peak_kb / 1024, "wall": wall1 - wall0}
    finally:
        for process in (daemon, sim):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def _profiled(command: list[str]) -> list[str]:
    """CEMSD_PROFILE=<file>: the daemon runs under cProfile and writes its stats there."""
    out = os.environ.get("CEMSD_PROFILE")
    if not out:
        return command
    return [command[0], "-m", "cProfile", "-o", out, *command[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="measured wall interval")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before measuring")
    parser.add_argument("--fresh-database", action="store_true",
                        help="no schema before the start: the daemon migrates (loads alembic)")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report each run")
    args = parser.parse_args()
    print(machine_info())
    print(f"channels: {CHANNELS} ({BUSES} Modbus TCP buses on 127.0.0.1, each a flow meter "
          f"and {ANALYZERS_PER_BUS} analyzers), poll interval 1 s, SQLite; "
          f"warm-up {args.warmup:g} s, measured {args.seconds:g} s wall")
    results = []
    for run in range(1, args.runs + 1):
        r = one_run(args.seconds, args.warmup, args.fresh_database)
        results.append(r)
        print(f"run {run}: readings stored {r['readings_per_s']:6.1f}/s, "
              f"CPU {100 * r['cpu_share']:5.2f} % of one core, "
              f"peak RSS {r['peak_rss_mb']:5.1f} MB", flush=True)
    cpu = sorted(r["cpu_share"] for r in results)
    rss = max(r["peak_rss_mb"] for r in results)
    print(f"CPU share: median {100 * cpu[len(cpu) // 2]:.2f} % (min {100 * cpu[0]:.2f}, "
          f"max {100 * cpu[-1]:.2f}); goal <= {100 * CPU_GOAL:g} %: "
          f"{'met' if cpu[len(cpu) // 2] <= CPU_GOAL else 'MISSED'}")
    print(f"peak RSS: {rss:.1f} MB; goal <= {RSS_GOAL_MB:g} MB: "
          f"{'met' if rss <= RSS_GOAL_MB else 'MISSED'}")


if __name__ == "__main__":
    main()
