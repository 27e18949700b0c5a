"""`cemsd demo`: the bundled simulators in their own process, the daemon on a simulated
clock it shares with them, a simulated day, then the stored hourly table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cemsd.clock import SharedClockFile, VirtualClock
from cemsd.config import Config, load_config
from cemsd.daemon import Daemon
from cemsd.errors import CemsdError, ConfigError
from cemsd.hourly import query_hours, to_table
from cemsd.periods import local_label
from cemsd.reduction.inputs import bypass_events
from cemsd.reduction.production import import_days, read_csv_file
from cemsd.reduction.report import build_report
from cemsd.store import schema
from cemsd.store.database import Database
from simulators.scenario import Scenario, load_scenario

SHOWN = (
    "inlet-analyzer.n2o",
    "outlet-analyzer.n2o",
    "inlet.flow_nm3_h",
    "outlet.flow_nm3_h",
    "inlet.n2o_kg_h",
    "outlet.n2o_kg_h",
    "plant.bypass_position",
)


def shown(config: Config) -> tuple[str, ...]:
    """The demo plant's columns, or each unit's N2O mass at its inlet and outlet."""
    if not config.units:
        return SHOWN
    return tuple(f"{point}.n2o_kg_h" for u in config.units for point in u.points)


def run_demo(config_file: str, scenario_file: str, hours: float, speed: str) -> int:
    try:
        config = load_config(config_file)
        scenario = load_scenario(scenario_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        return 2
    state = config.storage.state_dir
    state.mkdir(parents=True, exist_ok=True)
    for old in state.glob("cemsd.db*"):
        old.unlink()  # a fresh day each time
    clock_path = state / "clock"
    shared = SharedClockFile(clock_path, create=True)
    start, end = scenario.epoch, scenario.epoch + hours * 3600
    shared.write(start)
    sim = subprocess.Popen(
        [sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
         "--scenario", scenario_file, "--clock-file", str(clock_path)],
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_ready(scenario, sim)
        clock = VirtualClock(start, speed=None if speed == "max" else float(speed),
                             shared_file=shared)
        daemon = Daemon(config, clock, clock_name=f"virtual x{speed}", until=end)
        click.echo(f"demo: {hours:g} simulated hours from {scenario.start.isoformat()}, "
                   f"clock speed {speed}")
        began = time.monotonic()
        asyncio.run(daemon.run())
        wall = time.monotonic() - began
    finally:
        sim.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sim.wait(timeout=10)
        if sim.poll() is None:
            sim.kill()
        shared.close()
    db = Database(config.storage.database_url)
    columns = shown(config)
    rows = query_hours(db, start, end, config.plant.tz, list(columns))
    click.echo(to_table(rows, columns))
    inlets = {f"{u.inlet}.n2o_kg_h" for u in config.abatement_units()}
    valid = sum(1 for r in rows if r["channel"] in inlets and r["flag"] == "N")
    click.echo(f"\n{hours:g} simulated hours in {wall:.0f} s of wall time; "
               f"{valid} valid hours of inlet N2O mass.")
    _afterwards(db, config, config_file, start, end)
    click.echo(f"database: {db.location}")
    click.echo(f"all channels: cemsd hours --config {config_file} --format csv")
    db.close()
    return 0


def _afterwards(db: Database, config: Config, config_file: str, start: float, end: float
                ) -> None:
    """What QA/QC and the reduction work made of the day: events, substitutes, a report."""
    tz = config.plant.tz
    for e in bypass_events(db, start, end):
        finish = local_label(e.ended_at.timestamp(), tz)[11:] if e.ended_at else "open"
        unit = f" ({e.unit})" if config.units else ""
        click.echo(f"bypass event #{e.id}{unit}: {local_label(e.started_at.timestamp(), tz)} to "
                   f"{finish}, {e.n2o_kg or 0:.0f} kg N2O ({e.method})")
    for s in db.fetch(schema.substitutions.select()):
        click.echo(f"substituted {s.channel} {local_label(s.ts.timestamp(), tz)}: "
                   f"{s.value:.2f} {s.unit} ({s.method})")
    production = Path(config_file).with_name(f"{Path(config_file).stem}-production.csv")
    if not production.exists():
        production = Path(config_file).with_name("demo-production.csv")
    if hours_in(start, end) < 24 or not production.exists():
        return
    import_days(db, read_csv_file(production), f"import:{production.name}", time.time())
    try:
        report = build_report(db, config, start, start + 86400, time.time())
    except CemsdError as exc:
        click.echo(f"no report: {exc}")
        return
    for name, unit in report["units"].items() if config.units else ():
        _reductions(f"unit {name}", unit["result"], report)
    _reductions("the plant" if config.units else "the day", report["result"], report)
    click.echo(f"full report: cemsd report --config {config_file} --from 2026-06-01 "
               "--to 2026-06-02 --format html --output demo-report.html")


def _reductions(what: str, r: dict[str, Any], report: dict[str, Any]) -> None:
    click.echo(f"reductions of {what}: N2O generated {r['totals']['n2o_generated_t']:.2f} t, "
               f"project emissions {r['project_emissions_t']:.3f} t, destruction "
               f"{r['de_overall']:.2%}, credited {r['credited_co2e_t']:,.0f} t CO2e "
               f"(GWP {report['parameters']['gwp']:g})")


def hours_in(start: float, end: float) -> float:
    return (end - start) / 3600


def _wait_ready(scenario: Scenario, sim: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = list(scenario.buses)
    while pending:
        if sim.poll() is not None:
            raise SystemExit(f"the simulator exited with code {sim.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("the simulator did not come up within 30 s")
        bus = pending[0]
        if _bus_ready(bus.transport, bus.host, bus.port, bus.link):
            pending.pop(0)
        else:
            time.sleep(0.05)


def _bus_ready(transport: str, host: str, port: int | str, link: str | None) -> bool:
    if transport == "serial":
        return link is None or os.path.exists(link)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False
