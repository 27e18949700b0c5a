"""Command line (click). Only this module installs signal handlers: they set a flag."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cemsd import __version__
from cemsd.clock import Clock, SharedClockFile, VirtualClock, WallClock
from cemsd.errors import CemsdError, ConfigError

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.store.database import Database


def _load_config(path: str):
    from cemsd.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{len(exc.problems)} problem(s); nothing was started.", err=True)
        sys.exit(2)


def _open_existing_db(config: Config, exit_code: int = 1) -> Database:
    """The database of a configuration for reading; never creates an empty one."""
    from cemsd.store.database import open_existing

    try:
        return open_existing(config.storage.database_url)
    except CemsdError as exc:
        click.echo(f"cemsd: {exc}", err=True)
        sys.exit(exit_code)


@click.group()
@click.version_option(__version__, prog_name="cemsd")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def main(log_level: str) -> None:
    """cemsd: CEMS data acquisition for N2O abatement units."""
    from cemsd.logs import setup_logging

    setup_logging(log_level)


def _register_commands() -> None:
    from cemsd.commissioning_cli import register as register_commissioning
    from cemsd.qaqc.cli import register
    from cemsd.reduction.cli import register as register_reduction

    register(main, _load_config)
    register_commissioning(main, _load_config)
    register_reduction(main, _load_config, _open_existing_db)


_register_commands()


@main.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False))
def check_config(config_file: str) -> None:
    """Validate CONFIG_FILE; print every problem and exit non-zero if there is one."""
    from cemsd.config import load_config
    from cemsd.plan import compile_plan

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem))
        click.echo(f"{len(exc.problems)} problem(s) in {config_file}", err=True)
        sys.exit(1)
    plan = compile_plan(config)
    click.echo(f"{config_file}: OK: plant {config.plant.id}, {len(config.buses)} bus(es), "
               f"{len(plan.devices)} device(s), {len(plan.channels)} channel(s)")
    for device in plan.devices:
        blocks = ", ".join(b.describe() for b in device.blocks)
        click.echo(f"  {device.bus}/{device.name} id {device.device_id} every "
                   f"{device.poll_interval:g} s: {blocks}")
    from cemsd.commissioning import serial_port_warnings

    for warning in serial_port_warnings(config):
        click.echo(warning, err=True)


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--accelerate", default=None,
              help="Run on a simulated clock: a speed factor (e.g. 1000) or 'max'.")
@click.option("--start", default=None, help="Simulated start time (ISO, with offset).")
@click.option("--until", default=None,
              help="Stop at this time: ISO, or +DURATION after the start (e.g. +24h).")
@click.option("--clock-file", default=None, type=click.Path(dir_okay=False),
              help="Publish the simulated time here for a simulator process.")
@click.option("--once", is_flag=True,
              help="Poll every device once, print values, flags and reasons; store nothing.")
def run(config_file: str, accelerate: str | None, start: str | None, until: str | None,
        clock_file: str | None, once: bool) -> None:
    """Run the daemon (wall clock unless --accelerate). SIGTERM/SIGINT stop it in order,
    SIGHUP reloads the configuration file (a bad file is refused, the daemon runs on)."""
    from cemsd.daemon import Daemon
    from cemsd.service import Service

    config = _load_config(config_file)
    if once:
        from cemsd.commissioning import poll_once, reading_lines

        results = asyncio.run(poll_once(config))
        click.echo("\n".join(reading_lines(results, config)))
        sys.exit(1 if any(error for _, _, error in results) else 0)
    clock, name, t0 = _make_clock(accelerate, start, clock_file)
    end = _parse_until(until, t0)
    service = Service(config, lambda c: Daemon(c, clock, clock_name=name, until=end))
    sys.exit(_run_service(service))


def _make_clock(accelerate: str | None, start: str | None, clock_file: str | None
                ) -> tuple[Clock, str, float]:
    if accelerate is None:
        if start or clock_file:
            raise click.UsageError("--start and --clock-file need --accelerate")
        return WallClock(), "wall", datetime.now().timestamp()
    speed = None if accelerate == "max" else float(accelerate)
    if speed is not None and speed <= 0:
        raise click.UsageError("--accelerate takes a positive factor or 'max'")
    t0 = datetime.fromisoformat(start).timestamp() if start else datetime.now().timestamp()
    shared = SharedClockFile(Path(clock_file), create=True) if clock_file else None
    return VirtualClock(t0, speed=speed, shared_file=shared), f"virtual x{accelerate}", t0


def _parse_until(until: str | None, t0: float) -> float | None:
    if until is None:
        return None
    if until.startswith("+"):
        from simulators.scenario import parse_offset

        return t0 + parse_offset(until[1:])
    return datetime.fromisoformat(until).timestamp()


def _run_service(service) -> int:  # type: ignore[no-untyped-def]
    async def main_task() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop, f"signal {sig.name}")
        loop.add_signal_handler(signal.SIGHUP, service.request_reload)
        try:
            return await service.run()
        except CemsdError as exc:
            click.echo(f"cemsd: {exc}", err=True)
            return 1

    return asyncio.run(main_task())


@main.command()
@click.option("--scenario", "scenario_file", required=True, type=click.Path(dir_okay=False))
@click.option("--clock-file", default=None, type=click.Path(dir_okay=False),
              help="Follow the simulated time a daemon publishes (cemsd run --clock-file).")
@click.option("--start-now", is_flag=True, help="On the wall clock, start the scenario now.")
def sim(scenario_file: str, clock_file: str | None, start_now: bool) -> None:
    """Serve the simulated instruments of a scenario until SIGTERM."""
    from simulators.runner import run_simulator
    from simulators.scenario import load_scenario

    try:
        scenario = load_scenario(scenario_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        asyncio.run(run_simulator(scenario, clock_file, start_now))
    except RuntimeError as exc:
        click.echo(f"cemsd sim: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--from", "start", default=None, help="First hour (plant time unless offset).")
@click.option("--to", "end", default=None, help="End, exclusive (plant time unless offset).")
@click.option("--channel", "channels", multiple=True, help="Only these channels (repeat).")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json"]))
def hours(config_file: str, start: str | None, end: str | None, channels: tuple[str, ...],
          fmt: str) -> None:
    """Print stored hourly values."""
    from cemsd import hourly

    config = _load_config(config_file)
    tz = config.plant.tz
    try:
        t0 = hourly.parse_time(start, tz) if start else 0.0
        t1 = hourly.parse_time(end, tz) if end else 4102444800.0  # 2100-01-01
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    db = _open_existing_db(config, exit_code=1)
    try:
        rows = hourly.query_hours(db, t0, t1, tz, list(channels) or None)
    except CemsdError as exc:
        click.echo(f"cemsd: {exc}", err=True)
        sys.exit(1)
    finally:
        db.close()
    if fmt == "csv":
        click.echo(hourly.to_csv(rows), nl=False)
    elif fmt == "json":
        click.echo(hourly.to_json(rows))
    else:
        shown = list(channels) or sorted({r["channel"] for r in rows})
        click.echo(hourly.to_table(rows, shown))


@main.command()
@click.option("--config", "config_file", default="config/demo.toml", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--scenario", "scenario_file", default="config/demo-scenario.toml",
              show_default=True, type=click.Path(dir_okay=False))
@click.option("--hours", "n_hours", default=24.0, show_default=True,
              help="Simulated hours to run.")
@click.option("--speed", default="max", show_default=True,
              help="Speed factor of the simulated clock, or 'max'.")
def demo(config_file: str, scenario_file: str, n_hours: float, speed: str) -> None:
    """Run the bundled simulators and the daemon for a simulated day; print the hours."""
    from cemsd.demo import run_demo

    sys.exit(run_demo(config_file, scenario_file, n_hours, speed))


@main.command("db-upgrade")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
def db_upgrade(config_file: str) -> None:
    """Create or migrate the database to the current schema."""
    from cemsd.store.database import Database

    config = _load_config(config_file)
    db = Database(config.storage.database_url)
    db.upgrade()
    click.echo(f"database at {db.location} is up to date")


@main.command()
@click.argument("name", required=False)
def profiles(name: str | None) -> None:
    """List the register maps (profiles) drivers can use, or print NAME's layout."""
    from drivers.registry import available_profiles, load_profile

    if name is not None:
        from cemsd.commissioning import profile_lines

        try:
            click.echo("\n".join(profile_lines(name)))
        except CemsdError as exc:
            click.echo(f"cemsd profiles: {exc}", err=True)
            sys.exit(1)
        return
    for profile in available_profiles():
        click.echo(f"{profile}: {load_profile(profile).description}")


@main.command("hj212-cursors")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
def hj212_cursors(config_file: str) -> None:
    """Show, per HJ 212 platform and CN, up to where the platform has acknowledged."""
    from cemsd.hj212.store import load_cursors
    from cemsd.periods import local_label

    config = _load_config(config_file)
    db = _open_existing_db(config, exit_code=1)
    try:
        for platform in config.hj212:
            cursors = load_cursors(db, platform.name)
            shown = ", ".join(f"{cn} until {local_label(t, config.plant.tz)}"
                              for cn, t in sorted(cursors.items()))
            click.echo(f"{platform.name}: {shown or 'nothing sent yet'}")
    except CemsdError as exc:
        click.echo(f"cemsd: {exc}", err=True)
        sys.exit(1)
    finally:
        db.close()


# --- the registry API, its tokens and the hash chain --------------------------------------------


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--host", default=None, help="Listen address (default: [api] host).")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Listen port (default: [api] port).")
def serve(config_file: str, host: str | None, port: int | None) -> None:
    """Serve the registry API from the database, read-only (no acquisition, no sealing)."""
    from cemsd.api.server import build_server, listen, serve
    from cemsd.api.settings import ApiConfig
    from cemsd.api.tokens import list_tokens

    config = _load_config(config_file)
    settings = (config.api or ApiConfig()).model_copy(
        update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    db = _open_existing_db(config, exit_code=1)
    try:
        list_tokens(db)
        sock = listen(settings.host, settings.port)
    except CemsdError as exc:
        click.echo(f"cemsd serve: {exc}", err=True)
        click.echo("(a database without the API tables: run `cemsd db-upgrade` first)", err=True)
        sys.exit(1)
    server = build_server(config, db, settings)
    scheme = "https" if settings.tls else "http"
    click.echo(f"serving {scheme}://{settings.host}:{sock.getsockname()[1]} "
               f"from {db.location}", err=True)

    async def main_task() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, setattr, server, "should_exit", True)
        await serve(server, sock)

    try:
        asyncio.run(main_task())
    finally:
        db.close()


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
def verify(config_file: str) -> None:
    """Check every sealed record and link of the hash chain; exit 1 naming the first break."""
    from cemsd import chain
    from cemsd.periods import local_label

    config = _load_config(config_file)
    tz = config.plant.tz
    db = _open_existing_db(config, exit_code=2)
    try:
        report = chain.verify(db)
        unsealed = chain.unsealed_count(db)
    except CemsdError as exc:
        click.echo(f"cemsd verify: cannot check: {exc}", err=True)
        sys.exit(2)
    finally:
        db.close()

    def where(b: chain.Break) -> str:
        what = "hour" if b.record_table == "hours" else f"{b.record_table} record for hour"
        return (f"{what} {local_label(b.ts.timestamp(), tz)} {b.channel} "
                f"({b.record_table} id {b.record_id})")

    if not report.ok:
        first = report.breaks[0]
        click.echo(f"chain BROKEN at link {first.seq}: {where(first)}: {first.problem}: "
                   f"{first.detail}")
        for more in report.breaks[1:10]:
            click.echo(f"  also link {more.seq}: {where(more)}: {more.problem}")
        click.echo(f"{len(report.breaks)} broken link(s) among {report.links}")
        sys.exit(1)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(report.by_table.items())) or "none"
    click.echo(f"chain OK: {report.links} sealed record(s) ({counts}); "
               f"{unsealed} stored record(s) not sealed yet")
    if report.head is not None:
        click.echo(f"head: link {report.head.seq} chain_hash {report.head.chain_hash} "
                   f"({report.head.record_table} {report.head.channel} "
                   f"{local_label(report.head.ts.timestamp(), tz)})")


@main.group()
def token() -> None:
    """API tokens for registry clients (stored hashed; every change is audited)."""


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _token_db(config_file: str):  # type: ignore[no-untyped-def]
    from cemsd.store.database import Database

    db = Database(_load_config(config_file).storage.database_url)
    db.upgrade()
    return db


@token.command("create")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="The client, e.g. registry.")
@click.option("--actor", default=None, help="Who does this (default: the OS user).")
def token_create(config_file: str, name: str, actor: str | None) -> None:
    """Create a token and print it once on stdout; only its hash is stored."""
    from cemsd.api.tokens import create_token

    db = _token_db(config_file)
    try:
        secret = create_token(db, name, _actor(actor))
    except CemsdError as exc:
        click.echo(f"cemsd token create: {exc}", err=True)
        sys.exit(1)
    finally:
        db.close()
    click.echo(secret)
    click.echo(f"token {name!r} created; it is shown only this once: give it to the client "
               "now (Authorization: Bearer <token>)", err=True)


@token.command("list")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
def token_list(config_file: str) -> None:
    """List tokens (names and dates; the tokens themselves are not stored)."""
    from cemsd.api.tokens import list_tokens

    db = _token_db(config_file)
    try:
        rows = list_tokens(db)
    finally:
        db.close()

    def when(moment) -> str:  # type: ignore[no-untyped-def]
        return "-" if moment is None else moment.isoformat(timespec="seconds")

    click.echo(f"{'name':<24} {'state':<8} {'created':<26} {'revoked':<26} last used")
    for row in rows:
        state = "revoked" if row.revoked_at else "active"
        click.echo(f"{row.name:<24} {state:<8} {when(row.created_at):<26} "
                   f"{when(row.revoked_at):<26} {when(row.last_used_at)}")


@token.command("revoke")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True)
@click.option("--actor", default=None, help="Who does this (default: the OS user).")
@click.option("--reason", default=None, help="Why, for the audit log.")
def token_revoke(config_file: str, name: str, actor: str | None, reason: str | None) -> None:
    """Revoke a client's token: its requests get 403 from now on."""
    from cemsd.api.tokens import revoke_token

    db = _token_db(config_file)
    try:
        revoke_token(db, name, _actor(actor), reason)
    except CemsdError as exc:
        click.echo(f"cemsd token revoke: {exc}", err=True)
        sys.exit(1)
    finally:
        db.close()
    click.echo(f"token {name!r} revoked")
