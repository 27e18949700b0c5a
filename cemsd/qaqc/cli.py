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

from cemsd.config import Config
from cemsd.control import ControlError, request
from cemsd.errors import CemsdError
from cemsd.periods import local_label
from cemsd.qaqc.substitution import quarter_start, share_report
from cemsd.qaqc.trend import drift_trends
from cemsd.qaqc.views import (
    CALIBRATION_HEADER,
    audit_line,
    calibration_line,
    fmt_drift,
    plant_times,
    status_lines,
)
from cemsd.records import audit_entries, calibrations, default_actor, maintenance_windows
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
                   f"(drift {fmt_drift(result['drift_pct_fs'])} % F.S.; pass within "
                   f"±{result['pass_limit_pct']:g}, out of control beyond "
                   f"±{result['control_limit_pct']:g} % F.S.)")
        if result["result"] in ("out_of_control", "aborted"):
            sys.exit(3)

    @main.command("calibrations")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--channel", default=None)
    @click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]))
    def list_calibrations(config_file: str, channel: str | None, fmt: str) -> None:
        """Calibration records, the limits each was judged against, each channel's drift
        trend."""
        config = load_config(config_file)
        rows = _read(config, calibrations, channel)
        tz = config.plant.tz
        records = [{
            "id": r.id, "channel": r.channel, "kind": r.kind, "mode": r.mode,
            "started": local_label(r.started_at.timestamp(), tz), "reference": r.reference,
            "measured": r.measured, "drift_pct_fs": r.drift_pct_fs,
            "pass_limit_pct": r.pass_limit_pct, "control_limit_pct": r.control_limit_pct,
            "result": r.result, "technician": r.technician, "note": r.note} for r in rows]
        trends = drift_trends(rows)
        if fmt == "json":
            click.echo(json.dumps({"calibrations": records, "trends": trends}, indent=1))
            return
        click.echo(CALIBRATION_HEADER)
        for r in records:
            click.echo(calibration_line(r))
        for t in trends:
            slope = (f"slope {fmt_drift(t['slope_pct_fs_per_day'])} % F.S./day"
                     if t["note"] is None else t["note"])
            click.echo(f"trend {t['channel']} {t['kind']}: {t['checks']} checks over "
                       f"{t['days']:g} days, last {fmt_drift(t['last_drift_pct_fs'])} % F.S., "
                       f"{slope}")

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
    @click.option("--duration", default=None, metavar="DURATION",
                  help="planned length, e.g. 4h or 90m; the window closes by itself then "
                       "[default: [qaqc] maintenance_hours]")
    def maintenance_start(config_file: str, device: str | None, channel: str | None,
                          technician: str, reason: str, duration: str | None) -> None:
        """Open a maintenance window now, for a planned duration."""
        from cemsd.periods import parse_offset

        try:
            seconds = None if duration is None else parse_offset(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--duration") from None
        config = load_config(config_file)
        result = send(config, {"op": "maintenance.start", "device": device,
                               "channel": channel, "reason": reason,
                               "technician": technician, "duration_s": seconds})
        end = local_label(result["planned_end_at"], config.plant.tz)
        click.echo(f"maintenance #{result['id']} started; closes by itself at {end} "
                   "(plant time) unless stopped before")

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
            if r.ended_at is None and r.planned_end_at is not None:
                end += f" (until {local_label(r.planned_end_at.timestamp(), tz)})"
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
    @click.option("--json", "as_json", is_flag=True, help="one JSON object a line (JSONL)")
    def audit(config_file: str, action: str | None, as_json: bool) -> None:
        """The append-only log of manual actions and configuration changes (plant time)."""
        config = load_config(config_file)
        tz = config.plant.tz
        for r in _read(config, audit_entries, action):
            entry = {
                "id": r.id, "at": local_label(r.at.timestamp(), tz),
                "actor": r.actor, "action": r.action, "target": r.target, "reason": r.reason,
                "before": plant_times(json.loads(r.before), tz) if r.before else None,
                "after": plant_times(json.loads(r.after), tz) if r.after else None}
            click.echo(json.dumps(entry, ensure_ascii=False) if as_json
                       else audit_line(entry))

    @main.command("status")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
    def status(config_file: str, as_json: bool) -> None:
        """What the running daemon reports: devices, open windows, calibrations, uplinks."""
        result = send(load_config(config_file), {"op": "status"})
        if as_json:
            click.echo(json.dumps(result, indent=1, ensure_ascii=False))
        else:
            click.echo("\n".join(status_lines(result)))


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
