"""Commands of the emission-reduction work: report, export-verification, production import,
bypass-events. They read the database directly (the daemon need not run)."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import click

from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.periods import local_label

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


# Reports cover days in [FIRST_REPORT_DAY, REPORT_DAYS_END): nothing was stored before 2000,
# and a date near the ends of the calendar (year 1, 9999) cannot be carried through plant
# time.
FIRST_REPORT_DAY = date(2000, 1, 1)
REPORT_DAYS_END = date(2200, 1, 1)


def period_days(period: str | None, start: str | None, end: str | None) -> tuple[date, date]:
    """A month (2026-10) or from/to dates: the first day and the day after the last."""
    if period:
        match = _MONTH.match(period)
        if not match or not 1 <= int(match[2]) <= 12:
            raise click.BadParameter("use a month, e.g. 2026-10", param_hint="--period")
        first = date(max(int(match[1]), 1), int(match[2]), 1)
        after = first if first >= REPORT_DAYS_END else (first + timedelta(days=32)).replace(day=1)
    elif start and end:
        try:
            first, after = date.fromisoformat(start), date.fromisoformat(end)
        except ValueError:
            raise click.BadParameter("use dates, e.g. 2026-10-01") from None
        if after <= first:
            raise click.BadParameter("--to must be after --from")
    else:
        raise click.UsageError("give --period YYYY-MM, or --from and --to dates")
    if first < FIRST_REPORT_DAY or after > REPORT_DAYS_END:
        raise click.BadParameter(f"reports cover days from {FIRST_REPORT_DAY} to before "
                                 f"{REPORT_DAYS_END}; {first} to {after} is outside")
    return first, after


def period_bounds(config: Config, period: str | None, start: str | None, end: str | None
                  ) -> tuple[float, float]:
    """A month (2026-10) or from/to dates, as plant-local midnights."""
    first, after = period_days(period, start, end)
    tz = config.plant.tz
    return (datetime.combine(first, clock_time(0), tz).timestamp(),
            datetime.combine(after, clock_time(0), tz).timestamp())


def emit_report(report: dict[str, Any], fmt: str, output: str | None) -> None:
    from cemsd.reduction.html import to_html
    from cemsd.reduction.report import to_csv, to_json

    text = {"json": to_json, "csv": to_csv, "html": to_html}[fmt](report)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"written {output}", err=True)
    else:
        click.echo(text, nl=False)


def register(main: click.Group, load_config: Any, open_db: Any) -> None:
    @main.command()
    @click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False))
    @click.option("--period", default=None, help="a month, e.g. 2026-10 (plant time)")
    @click.option("--from", "start", default=None, help="first day (plant time)")
    @click.option("--to", "end", default=None, help="day after the last")
    @click.option("--format", "fmt", default="json", type=click.Choice(["json", "csv", "html"]))
    @click.option("--output", default=None, type=click.Path(dir_okay=False))
    @click.option("--from-bundle", "bundle", default=None, type=click.Path(dir_okay=False),
                  help="recompute from a verification bundle alone")
    def report(config_file: str | None, period: str | None, start: str | None,
               end: str | None, fmt: str, output: str | None, bundle: str | None) -> None:
        """Emission reductions of a period, from the stored hours (or a bundle)."""
        if bundle:
            _from_bundle(Path(bundle), fmt, output)
            return
        if not config_file:
            raise click.UsageError("give --config (or --from-bundle)")
        from cemsd.reduction.report import build_report

        config = load_config(config_file)
        t0, t1 = period_bounds(config, period, start, end)
        db = open_db(config)
        try:
            result = build_report(db, config, t0, t1, time.time())
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            db.close()
        emit_report(result, fmt, output)

    def _from_bundle(path: Path, fmt: str, output: str | None) -> None:
        from cemsd.reduction.bundle import open_bundle, recompute

        try:
            opened = open_bundle(path)
            again = recompute(opened)
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        original = opened.report
        same = (again["result"] == original["result"]
                and again["inputs_sha256"] == original["inputs_sha256"])
        click.echo(f"{path}: manifest verified; recomputed report "
                   f"{'equals' if same else 'DIFFERS FROM'} report.json", err=True)
        units = {name: {**unit, **again["units"].get(name, {})}
                 for name, unit in original.get("units", {}).items()}
        emit_report({**original, **again, "units": units}, fmt, output)
        if not same:
            sys.exit(1)

    @main.command("export-verification")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--period", default=None, help="a month, e.g. 2026-10 (plant time)")
    @click.option("--from", "start", default=None)
    @click.option("--to", "end", default=None)
    @click.option("--output", default=None, type=click.Path(dir_okay=False),
                  help="default: cemsd-<plant>-<period>.tar.gz")
    def export_verification(config_file: str, period: str | None, start: str | None,
                            end: str | None, output: str | None) -> None:
        """Write the verification bundle of a period (report, data, manifest)."""
        from cemsd.reduction.bundle import export_bundle

        config = load_config(config_file)
        t0, t1 = period_bounds(config, period, start, end)
        name = period or f"{start}_{end}"
        path = Path(output or f"cemsd-{config.plant.id}-{name}.tar.gz")
        db = open_db(config)
        try:
            manifest = export_bundle(db, config, t0, t1, time.time(), path)
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            db.close()
        click.echo(f"{path}: {len(manifest['files'])} files, inputs SHA-256 "
                   f"{manifest['inputs_sha256']}")

    @main.command("verify-bundle")
    @click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True))
    @click.option("--public-key", default=None,
                  help="the plant's public key: hex, base64 or a PEM file (GET /v1/keys)")
    @click.option("--pinned", default=None, type=click.Path(dir_okay=False, exists=True),
                  help="chain heads pinned earlier (GET /v1/chain/head answers; a list or "
                       "JSON lines)")
    def verify_bundle_command(bundle_file: str, public_key: str | None,
                              pinned: str | None) -> None:
        """Check a verification bundle offline: files, signature, chain, rows, pinned heads,
        and the report recomputed. Exits 1 naming every problem."""
        from cemsd.reduction.verify import verify_bundle

        try:
            checks = verify_bundle(Path(bundle_file), public_key, pinned)
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        for check in checks:
            click.echo(f"{check.name}: {'OK' if check.ok else 'FAILED'}")
            for line in check.problems:
                click.echo(f"  ! {line}")
            for line in check.notes:
                click.echo(f"  - {line}")
        failed = sum(len(c.problems) for c in checks)
        click.echo(f"{bundle_file}: " + ("verified; the recomputed report equals report.json"
                                         if not failed else f"NOT verified: {failed} problem(s)"))
        if failed:
            sys.exit(1)

    @main.group("production")
    def production_group() -> None:
        """Adipic acid production per day."""

    @production_group.command("import")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--actor", default=None, help="who imports (default: the OS user)")
    @click.argument("csv_file", type=click.Path(dir_okay=False, exists=True))
    def production_import(config_file: str, actor: str | None, csv_file: str) -> None:
        """Import daily production (CSV with columns date,tonnes)."""
        from cemsd.mqtt import PRODUCTION_EVENT, queue_event
        from cemsd.records import default_actor, row_document
        from cemsd.reduction.production import days_written, import_days, read_csv_file
        config = load_config(config_file)
        path = Path(csv_file)
        try:
            rows = read_csv_file(path)
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        db = open_db(config, exit_code=1, upgrade=True)
        try:
            now = time.time()
            counts = import_days(db, rows, f"import:{path.name}", now,
                                 actor or default_actor())
            queue_event(config, db, PRODUCTION_EVENT, {
                "source": f"import:{path.name}",
                "days": [{"day": str(day), "tonnes": tonnes} for day, tonnes in rows],
                # the rows as stored (ids, revisions, write time): what the chain seals
                "rows": [row_document(r) for r in days_written(db, now)]}, now)
        except CemsdError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            db.close()
        click.echo(f"{path.name}: {counts['added']} days added, {counts['changed']} changed")

    @main.command("bypass-events")
    @click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False))
    @click.option("--period", default=None)
    @click.option("--from", "start", default=None)
    @click.option("--to", "end", default=None)
    def bypass_events_command(config_file: str, period: str | None, start: str | None,
                              end: str | None) -> None:
        """Bypass events (open ones included), one JSON object a line."""
        from cemsd.reduction.inputs import bypass_events

        config = load_config(config_file)
        t0, t1 = period_bounds(config, period, start, end) if (period or start) else (0, 4e9)
        db = open_db(config)
        try:
            for e in bypass_events(db, t0, t1):
                click.echo(json.dumps({
                    "id": e.id, "unit": e.unit,
                    "start": local_label(e.started_at.timestamp(), config.plant.tz),
                    "end": local_label(e.ended_at.timestamp(), config.plant.tz)
                    if e.ended_at else None, "triggers": json.loads(e.triggers),
                    "gas_volume_nm3": e.gas_volume_nm3, "n2o_kg": e.n2o_kg,
                    "n2o_estimated_kg": e.n2o_estimated_kg, "method": e.method}))
        finally:
            db.close()
