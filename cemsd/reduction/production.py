"""Adipic acid production per plant-local day: imported from a CSV file or read from the
plant's production counter (role production_counter), and the production cap pro-rated
to a period by its days.

A period with a day of unknown production is refused, naming the days: nothing is
credited on a guess.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select

from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.records import audit_row
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.units import Role


class ProductionError(CemsdError):
    """Production data that cannot be used (bad file, days missing)."""


def days_of(t0: float, t1: float, tz: ZoneInfo) -> list[date]:
    """The plant-local days of [t0, t1) (both at local midnight)."""
    first = datetime.fromtimestamp(t0, tz).date()
    last = datetime.fromtimestamp(t1 - 1, tz).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def midnight(day: date, tz: ZoneInfo) -> float:
    return datetime.combine(day, time(0), tz).timestamp()


def parse_csv(text: str, name: str) -> list[tuple[date, float]]:
    """Rows `date,tonnes` (ISO date, adipic acid in t); every problem names its line."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or {"date", "tonnes"} - set(reader.fieldnames):
        raise ProductionError(f"{name}: the header must name the columns date and tonnes")
    rows, seen, problems = [], set(), []
    for line, row in enumerate(reader, start=2):
        try:
            day = date.fromisoformat((row["date"] or "").strip())
            tonnes = float(row["tonnes"])
        except (TypeError, ValueError):
            problems.append(f"{name}:{line}: cannot read {row.get('date')!r}, "
                            f"{row.get('tonnes')!r}")
            continue
        if not tonnes >= 0:
            problems.append(f"{name}:{line}: tonnes must be zero or more, not {tonnes}")
        elif day in seen:
            problems.append(f"{name}:{line}: {day} appears twice")
        seen.add(day)
        rows.append((day, tonnes))
    if problems:
        raise ProductionError("\n".join(problems))
    return rows


def import_days(db: Database, rows: Iterable[tuple[date, float]], source: str, now: float,
                actor: str = "cemsd") -> dict[str, int]:
    """Store the days; a changed figure is a new revision of its day, an equal one is kept.
    One transaction: the audit record (who imported what) first, every row naming it."""
    rows = list(rows)
    with db.transaction() as conn:
        current = _current(conn.execute(select(schema.production_days)).all())
        new = [(day, tonnes, current.get(day)) for day, tonnes in rows
               if current.get(day) is None or current[day].tonnes != tonnes]
        counts = {"added": sum(old is None for *_, old in new),
                  "changed": sum(old is not None for *_, old in new)}
        audit_id = conn.execute(insert(schema.audit_log).values(audit_row(
            now, actor, "production.import", source.removeprefix("import:"), None, None,
            {**counts, "days": len(rows),
             "first": str(min(d for d, _ in rows)) if rows else None,
             "last": str(max(d for d, _ in rows)) if rows else None}))).inserted_primary_key[0]
        for day, tonnes, old in new:
            conn.execute(schema.production_days.insert().values(
                day=day, tonnes=tonnes, source=source, created_at=now, audit_id=audit_id,
                revision=0 if old is None else old.revision + 1,
                supersedes=None if old is None else old.id))
    return counts


def days_written(db: Database, now: float) -> list[Any]:
    """The rows one import (at `now`) stored."""
    p = schema.production_days.c
    return db.fetch(select(schema.production_days).where(p.created_at == now).order_by(p.id))


def imported(db: Database, days: list[date]) -> dict[date, float]:
    p = schema.production_days.c
    rows = db.fetch(select(schema.production_days).where(p.day >= days[0], p.day <= days[-1]))
    return {d: r.tonnes for d, r in _current(rows).items()}


def _current(rows: Iterable[Any]) -> dict[date, Any]:
    latest: dict[date, Any] = {}
    for row in rows:
        if row.day not in latest or row.revision > latest[row.day].revision:
            latest[row.day] = row
    return latest


def from_counter(db: Database, config: Config, days: list[date]) -> dict[date, float]:
    """Daily production from the totaliser: its last valid reading of a day minus that of
    the day before (hours of a counter channel keep their last value)."""
    channel = next((f"{d.name}.{k}" for d in config.devices for k, c in d.channels.items()
                    if c.role is Role.PRODUCTION_COUNTER), None)
    if channel is None:
        raise ProductionError("production = 'counter' needs a channel with role "
                              "production_counter")
    tz = config.plant.tz
    t0 = midnight(days[0] - timedelta(days=1), tz)
    t1 = midnight(days[-1] + timedelta(days=1), tz)
    end_of_day: dict[date, float] = {}
    for row in db.aggregates_between(schema.hours, t0, t1, [channel]):
        if row.flag == "N" and row.value is not None:
            end_of_day[datetime.fromtimestamp(row.ts.timestamp(), tz).date()] = row.value
    out = {}
    for day in days:
        before, after = end_of_day.get(day - timedelta(days=1)), end_of_day.get(day)
        if before is not None and after is not None and after >= before:
            out[day] = after - before
    return out


def period_production(db: Database, config: Config, t0: float, t1: float
                      ) -> dict[date, float]:
    """Production of every day of the period, or ProductionError naming the missing days."""
    days = days_of(t0, t1, config.plant.tz)
    source = config.reduction.production
    figures = from_counter(db, config, days) if source == "counter" else imported(db, days)
    missing = [d for d in days if d not in figures]
    if missing:
        listed = ", ".join(str(d) for d in missing[:31]) + (" ..." if len(missing) > 31 else "")
        how = ("import them with `cemsd production import`" if source == "imported"
               else "the production counter has no valid end-of-day value")
        raise ProductionError(f"production is missing for {len(missing)} day(s): {listed} "
                              f"({how}); nothing is credited without it")
    return {d: figures[d] for d in days}


def prorated_cap(cap_per_year: float, days: Iterable[date]) -> float:
    """The annual cap for these days: each day is 1/365 (1/366 in a leap year) of it."""
    return sum(cap_per_year / (366 if _leap(d.year) else 365) for d in days)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def read_csv_file(path: Path) -> list[tuple[date, float]]:
    try:
        return parse_csv(path.read_text(encoding="utf-8"), path.name)
    except (OSError, UnicodeDecodeError) as exc:
        raise ProductionError(f"cannot read {path}: {exc}") from None
