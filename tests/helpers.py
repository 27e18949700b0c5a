"""Test helpers: free ports, config and scenario files, a real PostgreSQL server, and the
in-process harness that runs simulators and the daemon on one virtual clock."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from cemsd.clock import VirtualClock
from cemsd.config import Config, load_config
from cemsd.daemon import Daemon
from cemsd.periods import minute_floor
from cemsd.store.database import Database
from simulators.scenario import Scenario, load_scenario
from simulators.server import SimulatorServer

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def write_config(tmp: Path, data: dict[str, Any], name: str = "cemsd.toml") -> Config:
    """A config file in tmp; its state directory is under tmp unless the data name one."""
    storage = {"state_dir": str(tmp / "state"), **data.get("storage", {})}
    return load_config(write_toml(tmp / name, {**data, "storage": storage}))


def set_at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of configuration data setting a dotted path, list indices as numbers
    ('devices.0.device_id'); missing tables are created."""
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def all_of(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)
    return mutate


def write_scenario(tmp: Path, data: dict[str, Any], name: str = "scenario.toml") -> Scenario:
    return load_scenario(write_toml(tmp / name, data))


async def run_virtual(
    config: Config,
    scenario: Scenario,
    until: float,
    start: float | None = None,
    clock: VirtualClock | None = None,
    sim: SimulatorServer | None = None,
) -> Daemon:
    """Simulators and daemon in this process, on one virtual clock, until `until`."""
    clock = clock or VirtualClock(scenario.epoch if start is None else start)
    sim = sim or SimulatorServer(scenario, clock)
    await sim.start()
    try:
        daemon = Daemon(config, clock, clock_name="virtual", until=until)
        await daemon.run()
    finally:
        await sim.stop()
    return daemon


class RunningDaemon:
    """A daemon started on a virtual clock; act on the timeline once `ready` returned."""

    def __init__(self, config: Config, scenario: Scenario, until: float,
                 clock: VirtualClock | None = None, **options: Any) -> None:
        self.clock = clock or VirtualClock(scenario.epoch)
        self.sim = SimulatorServer(scenario, self.clock)
        self.daemon = Daemon(config, self.clock, clock_name="virtual", until=until, **options)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningDaemon:
        await self.sim.start()
        self.task = asyncio.create_task(self.daemon.run())
        ready = asyncio.create_task(self.daemon.ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            await self.task  # raises what start-up raised
        return self

    async def finished(self) -> None:
        assert self.task is not None
        await self.task

    async def closed_through(self, t: float, timeout: float = 20.0) -> None:
        """Wait (wall clock) until every minute ending at or before t is closed: a minute's
        close overlaps the next minute's polling (0242), so a participant woken within a
        minute of a minute's end may find that minute still being closed."""
        deadline = time.monotonic() + timeout
        while (self.daemon.closer is None or self.daemon.closer.next_minute is None
               or self.daemon.closer.next_minute < minute_floor(t)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"minutes through {t} not closed within {timeout} s")
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            self.daemon.request_stop("test ended")
            await self.task
        await self.sim.stop()


def database(config: Config) -> Database:
    return Database(config.storage.database_url)


# --- PostgreSQL: a private server for the test session -------------------------------------


class PostgresServer:
    """initdb + pg_ctl into a temporary folder; run as the postgres user when we are root."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="cemsd-pg-"))
        self.data = self.base / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.base, 0o755)

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self._run(f"{self.bindir}/initdb", "-D", str(self.data), "-U", "cemsd",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-o", options,
                  "-l", str(self.base / "log"), "-w", "-t", "60", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://cemsd@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(initdb).parent)
    raise RuntimeError("PostgreSQL server binaries not found: `make test` installs postgresql")


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


@contextmanager
def tampering(db: Database) -> Iterator[Any]:
    """What someone with write access to the database file or server can do: remove cemsd's
    append-only triggers, then edit rows. The hash chain must still notice."""
    with db.transaction() as conn:
        if conn.dialect.name == "sqlite":
            names = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
            for name in names:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            for table in ("minutes", "hours", "calibrations", "substitutions", "audit_log",
                          "reading_blocks", "maintenance", "control_periods", "chain",
                          "production_days", "bypass_events"):
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield conn


def hour_row(channel: str, ts: float, value: float | None, unit: str, created: float,
             valid: bool = True) -> dict[str, Any]:
    """An hour row as the closer stores it: valid (N, 60 of 60 minutes) or not (B, 20)."""
    return {"channel": channel, "ts": ts, "value": value, "minimum": None, "maximum": None,
            "n_valid": 60 if valid else 20, "n_expected": 60, "flag": "N" if valid else "B",
            "reason": None, "unit": unit, "created_at": created}

def serve_process(config_path: Path, port: int) -> subprocess.Popen[str]:
    """`cemsd serve` as its own process: the registry API over the stored data."""
    return subprocess.Popen(
        [sys.executable, "-m", "cemsd", "--log-level", "WARNING", "serve",
         "--config", str(config_path), "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(base_url: str, process: subprocess.Popen[str], **client: Any) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cemsd serve exited: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base_url}/health", timeout=1, **client).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError("cemsd serve did not come up")


MetricSamples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_value(samples: MetricSamples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape_metrics_text(port: int) -> str:
    """A real scrape of the daemon's /metrics, as Prometheus does it, from a thread (the
    scrape waits for the daemon's loop: never block it)."""
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            return reply.read().decode()

    return await asyncio.to_thread(get)


async def scrape_metrics(port: int) -> MetricSamples:
    """A real scrape, parsed with the Prometheus text parser."""
    text = await scrape_metrics_text(port)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def interrupt_bus(config: Config, scenario: Scenario, bus: str, down: float, up: float,
                        until: float, check: Any = None) -> None:
    """Run the daemon to `until` (epoch seconds) while the simulator's `bus` is down from
    `down` to `up`; `check(state)` is awaited with "down" and "up" right after each change,
    simulated time standing still."""
    async with RunningDaemon(config, scenario, until) as running:
        clock, sim = running.clock, running.sim
        with clock.participant():
            await clock.sleep_until(down)
            await sim.stop_bus(bus)
            if check is not None:
                await check("down")
            await clock.sleep_until(up)
            await sim.start_bus(bus)
            if check is not None:
                await check("up")
        await running.finished()


def analyzer_and_flow_plant(plant_id: str, port: int, **sections: Any) -> dict[str, Any]:
    """A small plant for command tests: an N2O analyzer (%vol) and a velocity flow meter
    giving N2O mass at `inlet` (defaults for temperature, pressure, moisture), both on one
    Modbus TCP bus at 127.0.0.1:`port`, polled every 5 s; `sections` are added."""
    return {
        "plant": {"id": plant_id, "timezone": "Asia/Shanghai"},
        **sections,
        "points": {"inlet": {"duct_area_m2": 1.0, "temperature_default_c": 20.0,
                             "pressure_default_kpa": 0.0, "moisture_default_pct": 0.0}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.3, "retries": 0}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0},
            {"name": "flow", "bus": "bus", "device_id": 2, "profile": "stack-flow-meter",
             "poll_interval": 5.0, "point": "inlet",
             "channels": {k: {"enabled": False} for k in
                          ("temperature", "pressure", "moisture", "volume_flow")}},
        ],
    }


def reduction_plant(tmp: Path, reduction: dict[str, Any] | None = None,
                    plant_id: str = "aa1") -> tuple[Config, Database]:
    """A plant with an inlet and an outlet point (hours are stored by the test, nothing is
    polled) and its migrated SQLite database: for reports and bundles."""
    config = write_config(tmp, {
        "plant": {"id": plant_id, "name": "Adipic 1", "timezone": "Asia/Shanghai"},
        "points": {"inlet": {"flow_basis": "standard_dry"},
                   "outlet": {"flow_basis": "standard_dry"}},
        "reduction": {"installation_date": "2025-01-01", "production_cap_t_per_year": 160000}
        if reduction is None else reduction,
        "buses": [{"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": 1}],
        "devices": [{"name": "a", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-percent",
                     "poll_interval": 5.0}],
    })
    db = Database(config.storage.database_url)
    db.upgrade()
    return config, db


def calibration_plant(tmp: Path, start: str, calibration: dict[str, Any],
                      events: list[dict[str, Any]] | None = None,
                      **sections: Any) -> tuple[Config, Scenario]:
    """One 0-5000 ppm N2O analyzer (2000 ppm, noise 2) behind remote zero/span valves (zero
    gas 0, span gas 4000 ppm), polled every 5 s; `calibration` is the channel's
    [calibration] table, `sections` more of the config (plant, qaqc)."""
    port = free_port()
    scenario = write_scenario(tmp, {
        "start": start,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm",
                     "signals": {"n2o": {"base": 2000.0, "noise": 2.0}},
                     "calibration": {"channel": "n2o", "zero_gas": 0.0, "span_gas": 4000.0}}],
        "events": events or [],
    })
    config = write_config(tmp, {
        "plant": {"id": "cal"},
        "points": {"outlet": {}},
        **sections,
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "poll_interval": 5.0,
                     "channels": {"n2o": {"calibration": calibration}}}],
    })
    return config, scenario


@contextmanager
def simulator_process(scenario: Path, ready: Callable[[], bool]) -> Iterator[None]:
    """`cemsd sim` serving a scenario file in a process of its own while the block runs."""
    sim = subprocess.Popen([sys.executable, "-m", "cemsd", "sim", "--scenario", str(scenario),
                            "--start-now"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, timeout=30)
        yield
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)


def cli(*args: str) -> tuple[int, str, str]:
    """A cemsd command in this process (never two at once: CliRunner swaps sys.stdout)."""
    from click.testing import CliRunner

    from cemsd.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr
