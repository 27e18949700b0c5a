"""Polling under API load: Modbus request latency and readings lost, with and without
concurrent heavy API clients, and the daemon's peak memory (decisions 0110-0112).

The daemon runs in this process on the wall clock (a virtual clock would wait for a
starved loop and hide the harm), polling `--devices` simulated instruments (`cemsd sim`, a
separate process, Modbus TCP on 127.0.0.1) every second, with its API on 127.0.0.1. Its
database holds the last year of hours for 10 series and production for every day, so a
year pull and a year report (every hour of the year computed) do their full work. The
database is filled by a child process, so this process's memory is the daemon's.

Two phases of `--seconds` each: unloaded, then loaded by `--clients` clients (a child
process, 127.0.0.1 only, bounded by the phase's time and a request count) each looping
over a year pull of /v1/hours/columns, a 365-day report, and a 9000-year report (refused);
a client told 503 waits half a second (less than the Retry-After it is given) and asks
again. Per phase: every Modbus request's duration as the bus owner measures it (request
observers: the loop's delays count), polls missed against the grid, failed polls, and,
after the run, the minutes wholly inside the phase with a reading missing or failed (B).

Goal: p99 loaded <= 2 x unloaded, 0 readings lost or flagged, peak RSS <= 200 MB. Usage:
    .venv/bin/python bench/bench_isolation.py [--seconds 120] [--clients 20] [--devices 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine_info, wait_port
from polling_common import instruments, write_daemon_config

PLANT_TZ = timezone(timedelta(hours=8))  # Asia/Shanghai
# The year of stored hours ends with the last whole hour: a daemon closes, at start, every
# period from the newest stored one to now, so an older year would be a long recovery.
YEAR_END = datetime.fromtimestamp((time.time() // 3600 - 1) * 3600, PLANT_TZ)
YEAR_START = YEAR_END - timedelta(hours=365 * 24)
SPAN = {"from": YEAR_START.isoformat(), "to": YEAR_END.isoformat()}
# a report covers whole plant days: the 364 whole days of the year
REPORT_DAYS = {"from": str(YEAR_START.date() + timedelta(days=1)), "to": str(YEAR_END.date())}
# Not the daemon's own series: its start-up (QA/QC substitution, sealing) would work
# through their year first. A report still does its full work per hour of the span.
SERIES = [f"line{c}.n2o" for c in range(10)]
POLL_SECONDS = 0.5
MAX_REQUESTS_PER_CLIENT = 500
GOAL_P99_RATIO, GOAL_RSS_MB = 2.0, 200.0


# --- the child processes ----------------------------------------------------------------------


def fill(database_url: str) -> None:
    """A year of hours of SERIES (all sealed) and production for every day."""
    from bench_api import fill as fill_hours

    from cemsd.reduction.production import import_days
    from cemsd.store.database import Database

    db = Database(database_url)
    fill_hours(db, start=YEAR_START.timestamp(), names=SERIES)
    first, days = YEAR_START.date(), (YEAR_END.date() - YEAR_START.date()).days + 1
    import_days(db, [(first + timedelta(days=d), 1000.0) for d in range(days)], "bench",
                time.time())
    db.close()


REQUESTS = [
    ("/v1/hours/columns", SPAN),
    ("/v1/reports", REPORT_DAYS),
    ("/v1/reports", {"from": "0001-01-01", "to": "9999-12-31"}),
]


def load(base_url: str, token: str, clients: int, seconds: float, out: str) -> None:
    """`clients` threads asking heavy requests until `seconds` have passed."""
    import httpx

    if not base_url.startswith("http://127.0.0.1:"):
        raise SystemExit("the load runs against 127.0.0.1 only")
    deadline = time.monotonic() + seconds
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                path, params = REQUESTS[(index + n) % len(REQUESTS)]
                try:
                    response = http.get(path, params=params)
                    outcome = f"{path} {response.status_code}"
                except httpx.HTTPError as exc:
                    response, outcome = None, f"{path} {type(exc).__name__}"
                with lock:
                    statuses[outcome] += 1
                if response is not None and response.status_code == 503:
                    time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(out).write_text(json.dumps(statuses))


# --- the daemon and the measurement -------------------------------------------------------------


@dataclass
class Phase:
    name: str
    started: float = 0.0  # wall clock
    ended: float = 0.0
    seconds: list[float] = field(default_factory=list)  # each Modbus request
    results: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    peak_rss_mb: float = 0.0
    invalid_minutes: int = 0
    minutes: int = 0
    load: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.seconds, n=1000)[int(q * 1000) - 1] * 1000


def rss_mb(key: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(tmp: Path, port: int, api_port: int, devices: int) -> Path:
    path = write_daemon_config(tmp / "daemon", {"name": "bus", "transport": "tcp",
                                                "host": "127.0.0.1", "port": port,
                                                "timeout": 0.3, "retries": 0}, devices)
    config = tomllib.loads(path.read_text())
    config["plant"]["timezone"] = "Asia/Shanghai"
    config["api"] = {"port": api_port}
    for device in config["devices"]:
        device["poll_interval"] = POLL_SECONDS
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def write_scenario(tmp: Path, port: int, devices: int) -> Path:
    scenario = {"start": "2026-01-01T00:00:00+08:00",
                "buses": [{"name": "bus", "transport": "tcp", "port": port}],
                "devices": [{"name": n, "bus": "bus", "device_id": i + 1, "profile": p}
                            for i, (n, p) in enumerate(instruments(devices))]}
    path = tmp / "scenario.toml"
    path.write_bytes(tomli_w.dumps(scenario).encode())
    return path


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.phase: Phase | None = None

    def observe(self, device: str, result: str, seconds: float) -> None:
        if self.phase is not None:
            self.phase.seconds.append(seconds)
            self.phase.results[result] += 1

    async def sample_rss(self) -> None:
        while True:
            if self.phase is not None:
                self.phase.peak_rss_mb = max(self.phase.peak_rss_mb, rss_mb())
            await asyncio.sleep(0.2)

    async def run_phase(self, name: str, daemon: Any, load: list[str] | None) -> Phase:
        phase = Phase(name)
        polls = sum(h.polls for o in daemon.owners for h in o.health.values())
        phase.started, self.phase = time.time(), phase
        child = None
        if load is not None:
            child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--load",
                                                         *load)
        await asyncio.sleep(self.args.seconds)
        self.phase, phase.ended = None, time.time()
        phase.polls = sum(h.polls for o in daemon.owners for h in o.health.values()) - polls
        if child is not None:
            await asyncio.wait_for(child.wait(), 120)
        print(f"phase {name} done", flush=True)
        return phase

    async def run(self, config: Any, token: str, api_port: int) -> list[Phase]:
        """The daemon on the wall clock, an unloaded then a loaded phase."""
        from cemsd.clock import WallClock
        from cemsd.daemon import Daemon

        print(f"rss before the daemon: {rss_mb():.0f} MB")
        daemon = Daemon(config, WallClock(), clock_name="wall")
        daemon.request_observers.append(self.observe)
        running = asyncio.create_task(daemon.run())
        await daemon.ready.wait()
        print(f"daemon ready; rss {rss_mb():.0f} MB", flush=True)
        sampler = asyncio.create_task(self.sample_rss())
        await asyncio.sleep(5)  # the first polls and the API's first answers
        phases = [await self.run_phase("unloaded", daemon, None)]
        phases.append(await self.run_phase(
            f"loaded ({self.args.clients} clients)", daemon,
            [f"http://127.0.0.1:{api_port}", token, str(self.args.clients),
             str(self.args.seconds), str(self.tmp / "load.json")]))
        await asyncio.sleep(config.processing.close_grace_seconds + 65)  # close minutes
        sampler.cancel()
        daemon.request_stop("benchmark done")
        await running
        return phases


def measure(args: argparse.Namespace, tmp: Path) -> list[Phase]:
    """Database filled, simulator started, then the daemon's phases."""
    from cemsd.api.tokens import create_token
    from cemsd.config import load_config
    from cemsd.store.database import Database

    port, api_port = free_port(), free_port()
    config = load_config(write_config(tmp, port, api_port, args.devices))
    url = config.storage.database_url
    Path(config.storage.state_dir).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--fill", url], check=True)
    db = Database(url)
    token = create_token(db, "bench", "bench")
    db.close()
    sim = subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
                            "--scenario", str(write_scenario(tmp, port, args.devices)),
                            "--start-now"], stdin=subprocess.DEVNULL)
    try:
        wait_port(port)
        phases = asyncio.run(Bench(args, tmp).run(config, token, api_port))
    finally:
        sim.terminate()
        sim.wait(timeout=20)
    phases[-1].load = json.loads((tmp / "load.json").read_text())
    for phase in phases:
        count_minutes(url, phase)
    return phases


def count_minutes(url: str, phase: Phase) -> None:
    """The daemon's minutes of polled channels wholly inside the phase, and those with a
    reading missing or failed (B); other flags are the simulated plant's own states."""
    from sqlalchemy import select

    from cemsd.store import schema
    from cemsd.store.database import Database

    db = Database(url)
    m = schema.minutes.c
    first = (phase.started // 60 + 1) * 60
    rows = db.fetch(select(m.flag, m.n_valid, m.n_expected)
                    .where(m.ts >= datetime.fromtimestamp(first, UTC),
                           m.ts <= datetime.fromtimestamp(phase.ended - 60, UTC),
                           m.channel.like("dev%")))
    db.close()
    phase.minutes = len(rows)
    phase.invalid_minutes = sum(1 for r in rows if r.flag == "B")


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    base = phases[0]
    expected = round(args.devices * args.seconds / POLL_SECONDS)
    print(f"{'phase':<22} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'polls':>6} {'missed':>6} {'failed':>6} {'minutes':>7} {'B':>4} "
          f"{'peak RSS':>8}")
    for p in phases:
        failed = sum(n for r, n in p.results.items() if r != "ok")
        print(f"{p.name:<22} {len(p.seconds):>8} {p.percentile(0.5):>7.2f} "
              f"{p.percentile(0.99):>7.2f} {max(p.seconds) * 1000:>7.1f} {p.polls:>6} "
              f"{max(0, expected - p.polls):>6} {failed:>6} {p.minutes:>7} "
              f"{p.invalid_minutes:>4} {p.peak_rss_mb:>6.0f} MB")
    loaded = phases[-1]
    ratio = loaded.percentile(0.99) / base.percentile(0.99)
    print(f"API answers under load: {dict(sorted(loaded.load.items()))}")
    print(f"p99 loaded / unloaded: {ratio:.2f} (goal <= {GOAL_P99_RATIO}); peak RSS "
          f"(VmHWM) {rss_mb('VmHWM'):.0f} MB (goal <= {GOAL_RSS_MB:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the daemon's process (default 0.005)")
    parser.add_argument("--fill", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill)
        return
    if args.load:
        url, token, clients, seconds, out = args.load
        load(url, token, int(clients), float(seconds), out)
        return
    if not 1 <= args.clients <= 100 or not 10 <= args.seconds <= 600:
        raise SystemExit("--clients 1..100 and --seconds 10..600: the load stays bounded")
    from cemsd.logs import setup_logging

    setup_logging("WARNING")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    print(machine_info())
    print(f"pid {os.getpid()}: {args.devices} devices polled every {POLL_SECONDS:g} s, "
          f"{args.seconds:g} s per phase, GIL switch interval {sys.getswitchinterval():g} s")
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        phases = measure(args, Path(tmp))
    report(phases, args)


if __name__ == "__main__":
    main()
