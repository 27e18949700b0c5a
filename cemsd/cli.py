"""Command line (click). Only this module installs signal handlers: they set a flag."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path


def _ignore_sighup_until_ready() -> None:
    """SIGHUP reloads a running daemon, but its handler is installed only once `run` has
    imported, read its configuration and prepared storage (seconds on a busy box). Until
    then the default action would end the process, so the cemsd program ignores SIGHUP from
    its first moment; every command but `run` restores the default (main below)."""
    program = Path(sys.argv[0])
    ours = program.name == "cemsd" or program.parent.name == "cemsd"  # script or -m cemsd
    if ours and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


_ignore_sighup_until_ready()  # before the imports below, which take the time

import asyncio  # noqa: E402
import math  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import TYPE_CHECKING, Any, NoReturn  # noqa: E402
from zoneinfo import ZoneInfo  # noqa: E402

import click  # noqa: E402

from cemsd import __version__  # noqa: E402
from cemsd.cliargs import MOMENT, SPEED, UNTIL  # noqa: E402
from cemsd.clock import Clock, SharedClockFile, VirtualClock, WallClock  # noqa: E402
from cemsd.errors import CemsdError, ConfigError  # noqa: E402

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.store.database import Database

DB_UPGRADE_PROGRESS_SECONDS = 10.0  # a long migration's progress on stderr at most this often

def _load_config(path: str):
    from cemsd.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{len(exc.problems)} problem(s); nothing was started.", err=True)
        sys.exit(2)


def _open_existing_db(config: Config, exit_code: int = 1, upgrade: bool = False) -> Database:
    """The database of a configuration, which must exist: only `run` and `db-upgrade`
    create one. `upgrade`: migrate it first (commands that write)."""
    from cemsd.store.database import open_existing

    try:
        return open_existing(config.storage.database_url, upgrade=upgrade)
    except CemsdError as exc:
        click.echo(f"cemsd: {exc}", err=True)
        sys.exit(exit_code)


def _prepare_storage(config: Config) -> None:
    """For the commands that may create the database: its place is usable, or exit 1."""
    from cemsd.store.location import prepare_storage

    try:
        prepare_storage(config.storage)
    except CemsdError as exc:
        click.echo(f"cemsd: {exc}; nothing was started.", err=True)
        sys.exit(1)


@click.group()
@click.version_option(__version__, prog_name="cemsd")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """cemsd: CEMS data acquisition for N2O abatement units."""
    from cemsd.logs import setup_logging

    if ctx.invoked_subcommand != "run" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    setup_logging(log_level)


def _register_commands() -> None:
    from importlib.metadata import entry_points

    from cemsd.commissioning_cli import register as register_commissioning
    from cemsd.qaqc.cli import register
    from cemsd.reduction.cli import register as register_reduction

    register(main, _load_config)
    register_commissioning(main, _load_config)
    register_reduction(main, _load_config, _open_existing_db)
    # Commands of other packages (the simulators' `sim` and `demo`): cemsd never imports them.
    for entry in entry_points(group="cemsd.commands"):
        main.add_command(entry.load(), entry.name)


_register_commands()


@main.command("check-config")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_option", default=None, type=click.Path(dir_okay=False),
              help="The configuration file (or give it as the argument).")
def check_config(config_file: str | None, config_option: str | None) -> None:
    """Validate CONFIG_FILE; print every problem and exit non-zero if there is one."""
    from cemsd.config import config_warnings, load_config
    from cemsd.plan import compile_plan

    if (config_file is None) == (config_option is None):
        raise click.UsageError("give the configuration file once: --config FILE or FILE")
    config_file = config_file or config_option
    assert config_file is not None

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
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}")
    from cemsd.commissioning import serial_port_warnings

    for warning in serial_port_warnings(config):
        click.echo(warning, err=True)


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--accelerate", default=None, type=SPEED,
              help="Run on a simulated clock: a speed factor (e.g. 1000) or 'max'.")
@click.option("--start", default=None, type=MOMENT,
              help="Simulated start time (ISO; plant time unless it has an offset).")
@click.option("--until", default=None, type=UNTIL,
              help="Stop at this time: ISO (plant time unless offset), or +DURATION after "
                   "the start (e.g. +24h).")
@click.option("--clock-file", default=None, type=click.Path(dir_okay=False),
              help="Publish the simulated time here for a simulator process.")
@click.option("--accept-new-database", is_flag=True,
              help="Start even though the database lacks the chain head this state directory "
                   "recorded (it was emptied or replaced on purpose); audited.")
@click.option("--once", is_flag=True,
              help="Poll every device once, print values, flags and reasons; store nothing.")
def run(config_file: str, accelerate: float | None, start: str | None, until: str | None,
        clock_file: str | None, accept_new_database: bool, once: bool) -> None:
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
    clock, name, t0 = _make_clock(accelerate, start, clock_file, config.plant.tz)
    end = _parse_until(until, t0, config.plant.tz)
    if end is not None and end <= t0:
        raise click.BadParameter("must be after the start", param_hint="'--until'")
    _prepare_storage(config)
    service = Service(config, lambda c: Daemon(c, clock, clock_name=name, until=end,
                                               accept_new_database=accept_new_database))
    sys.exit(_run_service(service))


def _plant_time(text: str, tz: ZoneInfo, option: str) -> float:
    """As `hours --from` reads it: without an offset, in the plant's zone."""
    from cemsd import hourly

    try:
        return hourly.parse_time(text, tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _make_clock(accelerate: float | None, start: str | None, clock_file: str | None,
                tz: ZoneInfo) -> tuple[Clock, str, float]:
    if accelerate is None:
        if start is not None or clock_file:
            raise click.UsageError("--start and --clock-file need --accelerate")
        return WallClock(), "wall", datetime.now().timestamp()
    speed = None if math.isinf(accelerate) else accelerate
    t0 = datetime.now().timestamp() if start is None else _plant_time(start, tz, "--start")
    shared = SharedClockFile(Path(clock_file), create=True) if clock_file else None
    label = "max" if speed is None else f"{speed:g}"
    return VirtualClock(t0, speed=speed, shared_file=shared), f"virtual x{label}", t0


def _parse_until(until: str | None, t0: float, tz: ZoneInfo) -> float | None:
    """--until, already checked by UNTIL: a moment (plant time unless offset), or +DURATION
    after the start."""
    if until is None:
        return None
    if until.startswith("+"):
        from cemsd.periods import parse_offset

        return t0 + parse_offset(until[1:])
    return _plant_time(until, tz, "--until")


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


@main.command("db-upgrade")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
def db_upgrade(config_file: str) -> None:
    """Create or migrate the database to the current schema."""
    from cemsd.store.database import Database
    from cemsd.store.progress import Throttled

    config = _load_config(config_file)
    _prepare_storage(config)
    db = Database(config.storage.database_url)
    try:
        db.upgrade(Throttled(lambda step: click.echo(f"cemsd db-upgrade: {step}", err=True),
                             DB_UPGRADE_PROGRESS_SECONDS))
    except CemsdError as exc:
        click.echo(f"cemsd db-upgrade: {exc}", err=True)
        sys.exit(1)
    finally:
        db.close()
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
    from pydantic import ValidationError

    from cemsd.api.server import build_server, listen, serve
    from cemsd.api.tokens import list_tokens
    from cemsd.settings.api import ApiConfig

    config = _load_config(config_file)
    given = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:  # validated like the file's [api]: a host name the resolver cannot take is refused
        settings = ApiConfig.model_validate({**(config.api or ApiConfig()).model_dump(),
                                             **given})
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"].removeprefix("Value error, "),
                                 param_hint="'--host'") from None
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
@click.option("--pinned", "pinned_file", default=None, type=click.Path(dir_okay=False),
              help="JSON list of chain heads {seq, hash, time} a registry recorded earlier")
def verify(config_file: str, pinned_file: str | None) -> None:
    """Check the hash chain: every sealed record and link, the heads recorded outside the
    database (the daemon's head file, --pinned), that every final record is sealed and
    every revision audited. Exit 1 naming each finding, 2 if it cannot check."""
    from cemsd import chain, chaincheck
    from cemsd.chainhead import load_pins
    from cemsd.periods import local_label

    config = _load_config(config_file)
    tz = config.plant.tz
    db, recorded = _verifiable(config)
    try:
        pins = [*([recorded] if recorded else []),
                *(load_pins(Path(pinned_file)) if pinned_file else [])]
        report = chaincheck.check(db, config.storage.finalise_after_hours, pins)
        unsealed = chain.unsealed_count(db) if report.ok else 0
    except CemsdError as exc:
        click.echo(f"cemsd verify: cannot check: {exc}", err=True)
        sys.exit(2)
    finally:
        db.close()
    if not report.ok:
        _echo_breaks(report.breaks, report.links, tz)
        sys.exit(1)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(report.by_table.items())) or "none"
    click.echo(f"chain OK: {report.links} sealed record(s) ({counts}); "
               f"{unsealed} stored record(s) not sealed yet; "
               f"{len(pins)} recorded head(s) on the chain")
    if report.head is not None:
        click.echo(f"head: link {report.head.seq} chain_hash {report.head.chain_hash} "
                   f"({report.head.record_table} {report.head.channel} "
                   f"{local_label(report.head.ts.timestamp(), tz)})")


def _verifiable(config: Config) -> tuple[Database, Any]:
    """The database to verify and the head its state directory recorded; a database that
    lacks the chain the state directory saw (emptied, removed, replaced) is itself a finding
    (exit 1), anything else that stops the check exits 2."""
    from cemsd.chainhead import read_head
    from cemsd.store.database import open_existing

    def cannot(exc: Exception) -> NoReturn:
        click.echo(f"cemsd verify: cannot check: {exc}", err=True)
        sys.exit(2)

    try:
        recorded = read_head(config.storage.state_dir)
    except CemsdError as exc:
        cannot(exc)
    try:
        return open_existing(config.storage.database_url), recorded
    except CemsdError as exc:
        if recorded is None:
            cannot(exc)
        click.echo(f"chain GONE: {exc}; the state directory recorded the head at link "
                   f"{recorded.seq} ({recorded.hash}, {recorded.time}): the database was "
                   "emptied, removed or replaced")
        sys.exit(1)


def _echo_breaks(breaks: list[Any], links: int, tz: Any) -> None:
    from cemsd.periods import local_label

    def where(b: Any) -> str:
        what = ("hour" if b.record_table == "hours" else "minutes of hour"
                if b.record_table == "minutes" else f"{b.record_table} record for hour")
        at = "?" if b.ts is None else local_label(b.ts.timestamp(), tz)
        record = "" if b.record_id is None else f" ({b.record_table} id {b.record_id})"
        return "the chain" if b.record_table == "chain" else f"{what} {at} {b.channel}{record}"

    def at_link(b: Any) -> str:
        return f" at link {b.seq}" if b.seq is not None else ""

    first = breaks[0]
    click.echo(f"chain BROKEN{at_link(first)}: {where(first)}: {first.problem}: {first.detail}")
    for more in breaks[1:20]:
        click.echo(f"  also{at_link(more) or ':'} {where(more)}: {more.problem}: {more.detail}")
    click.echo(f"{len(breaks)} finding(s); {links} link(s) checked")


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
    return _open_existing_db(_load_config(config_file), exit_code=1, upgrade=True)


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


# --- the fleet collector (cemsd/fleet/, docs/SCALING.md) -------------------------------------


def _collector_settings(config_file: str):  # type: ignore[no-untyped-def]
    from cemsd.fleet.settings import load_collector

    try:
        return load_collector(config_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{len(exc.problems)} problem(s); nothing was started.", err=True)
        sys.exit(2)


@main.group(invoke_without_command=True)
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False))
@click.pass_context
def collect(ctx: click.Context, config_file: str | None) -> None:
    """Collect every plant's MQTT records into the fleet database; serve the fleet API.
    `cemsd collect report ...`: a plant's report from the fleet database."""
    if ctx.invoked_subcommand is not None:
        return
    if config_file is None:
        raise click.UsageError("give --config (the collector's configuration)")
    from cemsd.fleet.service import CollectorService

    service = CollectorService(_collector_settings(config_file))
    try:
        service.prepare()
    except CemsdError as exc:
        click.echo(f"cemsd collect: {exc}; nothing was started.", err=True)
        sys.exit(1)
    if service.api_port is not None:
        click.echo(f"fleet API on port {service.api_port}", err=True)

    async def main_task() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(main_task())


@collect.command("report")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="the collector's configuration")
@click.option("--plant-config", required=True, type=click.Path(dir_okay=False, exists=True),
              help="the plant's configuration (its monitoring plan: units, reduction)")
@click.option("--period", default=None, help="a month, e.g. 2026-10 (plant time)")
@click.option("--from", "start", default=None, help="first day (plant time)")
@click.option("--to", "end", default=None, help="day after the last")
@click.option("--format", "fmt", default="json", type=click.Choice(["json", "csv", "html"]))
@click.option("--output", default=None, type=click.Path(dir_okay=False))
@click.option("--bundle", default=None, type=click.Path(dir_okay=False),
              help="write the verification bundle (.tar.gz) instead")
def collect_report(config_file: str, plant_config: str, period: str | None, start: str | None,
                   end: str | None, fmt: str, output: str | None, bundle: str | None) -> None:
    """A plant's emission reductions from the fleet database, by the edge's report code."""
    from cemsd.fleet.reports import central_bundle, central_report
    from cemsd.fleet.store import FleetStore
    from cemsd.reduction.cli import emit_report, period_bounds

    config = _load_config(plant_config)
    t0, t1 = period_bounds(config, period, start, end)
    store = FleetStore(_collector_settings(config_file).database_url)
    try:
        if bundle:
            manifest = central_bundle(store, config, t0, t1, time.time(), Path(bundle))
            click.echo(f"written {bundle} ({len(manifest['files'])} files)", err=True)
            return
        result = central_report(store, config, t0, t1, time.time())
    except CemsdError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    emit_report(result, fmt, output)


@main.group("fleet-token")
def fleet_token() -> None:
    """Tokens of the fleet API, each scoped to plants."""


@fleet_token.command("create")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True)
@click.option("--plant", "plants", multiple=True, required=True,
              help="A plant the token may read (repeat; '*' for every plant).")
def fleet_token_create(config_file: str, name: str, plants: tuple[str, ...]) -> None:
    """Create a token for a registry client; it is printed once."""
    from cemsd.fleet.store import FleetStore
    from cemsd.fleet.tokens import create_token

    store = FleetStore(_collector_settings(config_file).database_url)
    try:
        store.upgrade()
        click.echo(create_token(store.db, name, list(plants)))
    except CemsdError as exc:
        click.echo(f"cemsd fleet-token create: {exc}", err=True)
        sys.exit(1)
    finally:
        store.close()
