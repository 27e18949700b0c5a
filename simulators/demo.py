"""`cemsd demo`: the bundled simulators in their own process, the daemon on a simulated
clock it shares with them, a simulated day, then the stored hourly table."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import tomli_w

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
    try:
        sim, config, scenario, ports_copy = _start_simulator(config, scenario, scenario_file,
                                                             clock_path)
    except OSError as exc:
        shared.close()
        click.echo(f"demo: {exc}", err=True)
        return 2
    try:
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
        if ports_copy is not None:
            ports_copy.unlink(missing_ok=True)
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


def _free_ports(config: Config, scenario: Scenario, scenario_file: str
                ) -> tuple[Config, str, Path | None]:
    """The simulator's TCP ports, moved to free ones where another process holds them
    (else the simulator fails and the daemon might poll a stranger). The scenario is copied
    beside the original (its relative paths stay right) with the new ports; the daemon's
    buses on those ports follow. OSError naming the port when that cannot be done."""
    moved: dict[int, int] = {}
    for bus in scenario.buses:
        if bus.transport == "tcp" and not _can_listen(bus.host, int(bus.port)):
            moved[int(bus.port)] = _any_free_port(bus.host)
            click.echo(f"demo: port {bus.port} on {bus.host} (bus {bus.name}) is in use by "
                       f"another process; the demo uses port {moved[int(bus.port)]} instead")
    if not moved:
        return config, scenario_file, None
    original = Path(scenario_file)
    data = tomllib.loads(original.read_text())
    for bus in data["buses"]:
        if bus.get("transport") == "tcp" and bus.get("port") in moved:
            bus["port"] = moved[bus["port"]]
    copy = original.with_name(f".{original.stem}-free-ports.toml")
    busy = ", ".join(str(p) for p in moved)
    try:
        copy.write_text(tomli_w.dumps(data))
    except OSError as exc:
        raise OSError(f"port(s) {busy} in use by another process, and no copy of "
                      f"{original} with free ports could be written ({exc}): stop that "
                      f"process or change the port in {original} and {config.source}") from None
    buses = [b.model_copy(update={"port": moved[b.port]})
             if b.transport == "tcp" and b.port in moved else b for b in config.buses]
    return config.model_copy(update={"buses": buses}), str(copy), copy


def _can_listen(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def plant_copy(config: Path, scenario: Path, into: Path, sockets: bool) -> tuple[Path, Path]:
    """A plant's configuration and scenario copied into `into` with its own state
    directory; with `sockets`, free TCP ports and the pty pair inside `into` (a benchmark
    or a test runs the demo plant beside others)."""
    into.mkdir(parents=True)
    plant, sim = tomllib.loads(config.read_text()), tomllib.loads(scenario.read_text())
    plant["storage"]["state_dir"] = str(into / "state")
    if sockets:
        ports = {bus["name"]: _any_free_port("127.0.0.1")
                 for bus in sim["buses"] if bus["transport"] == "tcp"}
        for bus in plant["buses"] + sim["buses"]:
            if bus["transport"] == "tcp":
                bus["port"] = ports[bus["name"]]
            elif "link" in bus:  # the simulator's end, and the daemon's end it links to
                bus["port"], bus["link"] = str(into / "tty-sim"), str(into / "tty-cemsd")
            else:
                bus["port"] = str(into / "tty-cemsd")
    paths = into / "cemsd.toml", into / "scenario.toml"
    for path, data in zip(paths, (plant, sim), strict=True):
        path.write_bytes(tomli_w.dumps(data).encode())
    return paths


def _any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


START_ATTEMPTS = 3  # another program may take a port between our look and the bind


def _start_simulator(config: Config, scenario: Scenario, scenario_file: str, clock_path: Path
                     ) -> tuple[subprocess.Popen[bytes], Config, Scenario, Path | None]:
    """The simulator serving every bus of the scenario, on free ports. It says when it
    serves (a ready file with its pid), so the demo never mistakes another program on a
    port for it; when a port was taken in between, the ports are looked at again.
    OSError saying why when it cannot be started."""
    ready = clock_path.with_name("simulator.ready")
    for attempt in range(1, START_ATTEMPTS + 1):
        config, scenario_file, ports_copy = _free_ports(config, scenario, scenario_file)
        if ports_copy is not None:
            scenario = load_scenario(scenario_file)
        ready.unlink(missing_ok=True)
        sim = subprocess.Popen(
            [sys.executable, "-m", "cemsd", "--log-level", "WARNING", "sim",
             "--scenario", scenario_file, "--clock-file", str(clock_path),
             "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL,
        )
        if _wait_ready(sim, ready):
            return sim, config, scenario, ports_copy
        if ports_copy is not None:
            ports_copy.unlink(missing_ok=True)
        click.echo(f"demo: the simulator exited with code {sim.returncode} (attempt "
                   f"{attempt} of {START_ATTEMPTS})", err=True)
    raise OSError(f"the simulator could not be started in {START_ATTEMPTS} attempts; "
                  "its messages are above")


def _wait_ready(sim: subprocess.Popen[bytes], ready: Path, timeout: float = 30) -> bool:
    """True once the simulator serves every bus; False when it exited first."""
    deadline = time.monotonic() + timeout
    while not (ready.exists() and ready.read_text() == str(sim.pid)):
        if sim.poll() is not None:
            return False
        if time.monotonic() > deadline:
            sim.kill()
            raise OSError("the simulator did not come up within 30 s")
        time.sleep(0.05)
    return True
