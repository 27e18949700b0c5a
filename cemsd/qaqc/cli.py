"""Technicians' and auditors' commands: calibrate, calibrations, maintenance, substitutions,
audit, status. Commands that act go through the running daemon's control socket; commands
that read open the database directly."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import numpy as np

from cemsd.config import Config
from cemsd.control import ControlError, request
from cemsd.errors import CemsdError
from cemsd.periods import local_label
from cemsd.qaqc.records import audit_entries, calibrations, default_actor, maintenance_windows
from cemsd.qaqc.substitution import quarter_start, share_report
from cemsd.store.database import open_existing

_QUARTER = re.compile(r"^(\d{4})Q([1-4])$")


def register(main: click.Group, load_config: Any) -> None:
    """Add the QA/QC commands to the main command group."""

    def socket_of(config: Config) -> Path:
        return config.qaqc.control_socket or config.storage.state_dir / "cemsd.sock"

    def send(config: Config, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            for line in request(socket_of(config), payload):
                if "progress" in line:
                    click.echo(f"  {line['progress']}")
                elif line.get("ok"):
                    return line["result"]
                else:
                    raise click.ClickException(line.get("error", "the daemon refused"))
        except ControlError as exc:
            raise click.ClickException(str(exc)) from None
        raise click.ClickException("the daemon closed the connection without a result")

    @main.command()
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--channel", required=True, help="e.g. inlet-analyzer.n2o")
    @click.option("--zero", "kind", flag_value="zero", help="zero check")
    @click.option("--span", "kind", flag_value="span", help="span check")
    @click.option("--reference", required=True, type=float,
                  help="the reference gas value, in the channel's unit")
    @click.option("--technician", default=default_actor, show_default="the OS user")
    @click.option("--note", default=None)
    @click.option("--manual", is_flag=True,
                  help="record a value read off the analyzer's display (no valves)")
    @click.option("--reading", type=float, default=None, help="with --manual: the value read")
    def calibrate(config_file: str, channel: str, kind: str | None, reference: float,
                  technician: str, note: str | None, manual: bool,
                  reading: float | None) -> None:
        """Run a zero or span check through the daemon and record its result."""
        if kind is None:
            raise click.UsageError("say --zero or --span")
        if manual != (reading is not None):
            raise click.UsageError("--manual and --reading go together")
        config = load_config(config_file)
        result = send(config, {"op": "calibrate", "channel": channel, "kind": kind,
                               "reference": reference, "technician": technician,
                               "note": note, "manual_reading": reading})
        click.echo(f"calibration #{result['id']}: {result['result']} "
                   f"(drift {_fmt(result['drift_pct_fs'])} % F.S.)")
        if result["result"] in ("out_of_control", "aborted"):
            sys.exit(3)

    @main.command("calibrations")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--channel", default=None)
    @click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]))
    def list_calibrations(config_file: str, channel: str | None, fmt: str) -> None:
        """Calibration records and each channel's drift trend."""
        config = load_config(config_file)
        rows = _read(config, calibrations, channel)
        tz = config.plant.tz
        records = [{
            "id": r.id, "channel": r.channel, "kind": r.kind, "mode": r.mode,
            "started": local_label(r.started_at.timestamp(), tz), "reference": r.reference,
            "measured": r.measured, "drift_pct_fs": r.drift_pct_fs, "result": r.result,
            "technician": r.technician, "note": r.note} for r in rows]
        trends = drift_trends(rows)
        if fmt == "json":
            click.echo(json.dumps({"calibrations": records, "trends": trends}, indent=1))
            return
        for r in records:
            click.echo(f"#{r['id']:<4} {r['started']}  {r['channel']:<24} {r['kind']:<4} "
                       f"{r['mode']:<9} drift {_fmt(r['drift_pct_fs']):>7} % F.S.  "
                       f"{r['result']:<14} {r['technician']}")
        for t in trends:
            click.echo(f"trend {t['channel']} {t['kind']}: {t['checks']} checks, last "
                       f"{_fmt(t['last_drift_pct_fs'])} % F.S., slope "
                       f"{_fmt(t['slope_pct_fs_per_day'])} % F.S./day")

    @main.group("maintenance")
    def maintenance_group() -> None:
        """Maintenance windows: data of the device or channel are flagged M."""

    def _target_options(fn: Any) -> Any:
        fn = click.option("--channel", default=None)(fn)
        fn = click.option("--device", default=None)(fn)
        fn = click.option("--technician", default=default_actor, show_default="the OS user")(fn)
        return click.option("--config", "config_file", required=True,
                            type=click.Path(dir_okay=False))(fn)

    @maintenance_group.command("start")
    @_target_options
    @click.option("--reason", required=True)
    def maintenance_start(config_file: str, device: str | None, channel: str | None,
                          technician: str, reason: str) -> None:
        """Open a maintenance window now."""
        result = send(load_config(config_file), {"op": "maintenance.start", "device": device,
                                                 "channel": channel, "reason": reason,
                                                 "technician": technician})
        click.echo(f"maintenance #{result['id']} started")

    @maintenance_group.command("stop")
    @_target_options
    @click.option("--note", default=None)
    def maintenance_stop(config_file: str, device: str | None, channel: str | None,
                         technician: str, note: str | None) -> None:
        """Close the open maintenance window of a device or channel."""
        result = send(load_config(config_file), {"op": "maintenance.stop", "device": device,
                                                 "channel": channel, "technician": technician,
                                                 "note": note})
        click.echo(f"maintenance #{result['id']} stopped")

    @maintenance_group.command("list")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    def maintenance_list(config_file: str) -> None:
        """Every maintenance window."""
        config = load_config(config_file)
        tz = config.plant.tz
        for r in _read(config, maintenance_windows):
            end = local_label(r.ended_at.timestamp(), tz) if r.ended_at else "open"
            click.echo(f"#{r.id:<4} {r.device or r.channel:<24} "
                       f"{local_label(r.started_at.timestamp(), tz)} .. {end}  "
                       f"{r.technician}: {r.reason}")

    @main.command("substitutions")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--quarter", default=None, help="e.g. 2026Q2 (plant time)")
    @click.option("--from", "start", default=None, help="period start (plant time)")
    @click.option("--to", "end", default=None, help="period end, exclusive")
    @click.option("--series", multiple=True, help="default: each point's N2O mass")
    def substitutions(config_file: str, quarter: str | None, start: str | None,
                      end: str | None, series: tuple[str, ...]) -> None:
        """Share of substituted hours and substituted N2O mass in a quarter or period."""
        from cemsd.hourly import parse_time

        config = load_config(config_file)
        tz = config.plant.tz
        if quarter:
            match = _QUARTER.match(quarter)
            if not match:
                raise click.BadParameter("use e.g. 2026Q2", param_hint="--quarter")
            year, q = int(match[1]), int(match[2])
            t0 = datetime(year, 3 * q - 2, 1, tzinfo=tz).timestamp()
            t1 = quarter_start(t0 + 93 * 86400, tz)
        elif start and end:
            try:
                t0, t1 = parse_time(start, tz), parse_time(end, tz)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        else:
            raise click.UsageError("give --quarter or both --from and --to")
        names = list(series) or [f"{p}.n2o_kg_h" for p in config.points]
        reports = [_read(config, share_report, name, t0, t1) for name in names]
        click.echo(json.dumps(reports, indent=1))

    @main.command("audit")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--action", default=None, help="only actions starting with this")
    def audit(config_file: str, action: str | None) -> None:
        """The append-only log of manual actions and configuration changes."""
        config = load_config(config_file)
        for r in _read(config, audit_entries, action):
            click.echo(json.dumps({
                "id": r.id, "at": local_label(r.at.timestamp(), config.plant.tz),
                "actor": r.actor, "action": r.action, "target": r.target, "reason": r.reason,
                "before": json.loads(r.before) if r.before else None,
                "after": json.loads(r.after) if r.after else None}, ensure_ascii=False))

    @main.command("status")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    def status(config_file: str) -> None:
        """What the running daemon reports: devices, open windows, calibration due times."""
        click.echo(json.dumps(send(load_config(config_file), {"op": "status"}), indent=1))


def _read(config: Config, fn: Any, *args: Any) -> Any:
    try:
        db = open_existing(config.storage.database_url)
    except CemsdError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return fn(db, *args)
    except CemsdError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.close()


def drift_trends(rows: list[Any]) -> list[dict[str, Any]]:
    """Per channel and kind: number of checks, last drift, least-squares slope per day."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        if r.drift_pct_fs is not None:
            groups.setdefault((r.channel, r.kind), []).append(r)
    out = []
    for (channel, kind), items in sorted(groups.items()):
        days = np.array([r.started_at.timestamp() / 86400 for r in items])
        drifts = np.array([r.drift_pct_fs for r in items])
        slope = float(np.polyfit(days, drifts, 1)[0]) if len(items) >= 2 and np.ptp(days) > 0 \
            else None
        out.append({"channel": channel, "kind": kind, "checks": len(items),
                    "last_drift_pct_fs": float(drifts[-1]), "slope_pct_fs_per_day": slope})
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
