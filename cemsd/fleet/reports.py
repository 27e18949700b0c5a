"""A plant's report from the fleet database, by the edge's own code (docs/decisions/0204).

One plant's period is copied into an edge-shaped database (SQLite in a temporary folder,
the edge's schema and migrations): its hours (every revision), the substitutions, imported
production days and bypass events the edge published as events. The edge's
`build_report` / `export_bundle` then run on that copy: no second copy of the report logic,
so the central figures are the edge's figures by construction.

The collector keeps no minutes: a period with a bypass event (its mass is recomputed minute
by minute) is refused, naming the event, rather than reported with other figures.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.fleet import schema as fleet
from cemsd.fleet.messages import utc_time
from cemsd.fleet.store import FleetStore
from cemsd.mqtt import PRODUCTION_EVENT
from cemsd.qaqc.substitution import SUBSTITUTION_EVENT, SUBSTITUTION_TIMES
from cemsd.reduction.bundle import export_bundle
from cemsd.reduction.report import build_report
from cemsd.store import schema
from cemsd.store.database import Database

# Hours copied before the period: the production counter's end of the day before.
LOOKBACK_SECONDS = 2 * 86400.0
BYPASS_EVENT = "bypass"  # cemsd/reduction/bypass.py
HOUR_COLUMNS = ("channel", "ts", "revision", "value", "minimum", "maximum", "n_valid",
                "n_expected", "flag", "reason", "unit", "created_at", "supersedes", "audit_id")


class CentralReportError(CemsdError):
    """A central report that would not equal the edge's."""


def central_report(store: FleetStore, config: Config, t0: float, t1: float, now: float
                   ) -> dict[str, Any]:
    with edge_copy(store, config, t0, t1) as db:
        return build_report(db, config, t0, t1, now)


def central_bundle(store: FleetStore, config: Config, t0: float, t1: float, now: float,
                   path: Path) -> dict[str, Any]:
    """The verification bundle of central data, signed with the key in the plant
    configuration's state_dir (the collector's copy of it: docs/decisions/0205)."""
    with edge_copy(store, config, t0, t1) as db:
        return export_bundle(db, config, t0, t1, now, path)


@contextlib.contextmanager
def edge_copy(store: FleetStore, config: Config, t0: float, t1: float) -> Iterator[Database]:
    """The plant's records around [t0, t1) in a fresh edge database, removed afterwards."""
    plant = config.plant.id
    if not store.db.fetch(select(fleet.plants.c.plant).where(fleet.plants.c.plant == plant)):
        raise CentralReportError(f"plant {plant!r}: nothing received from it")
    events = _events(store, plant)
    _refuse_bypass(plant, events.get(BYPASS_EVENT, []), t0, t1)
    with tempfile.TemporaryDirectory(prefix=f"cemsd-central-{plant}-") as folder:
        db = Database(f"sqlite:///{Path(folder) / 'edge.db'}")
        try:
            db.upgrade()
            with db.transaction() as conn:
                for table, rows in (
                        (schema.hours, _hours(store, plant, t0 - LOOKBACK_SECONDS, t1)),
                        (schema.substitutions, _substitutions(events)),
                        (schema.production_days, _production_days(events))):
                    if rows:
                        conn.execute(insert(table), rows)
            yield db
        finally:
            db.close()


def _events(store: FleetStore, plant: str) -> dict[str, list[dict[str, Any]]]:
    """The data of the plant's report events by kind, in the order the edge sent them."""
    c = fleet.events.c
    rows = store.db.fetch(select(c.kind, c.data, c.at).where(
        c.plant == plant, c.kind.in_([BYPASS_EVENT, SUBSTITUTION_EVENT, PRODUCTION_EVENT]))
        .order_by(c.message_id))
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row.kind, []).append({**json.loads(row.data), "_at": row.at})
    return out


def _hours(store: FleetStore, plant: str, t0: float, t1: float) -> list[dict[str, Any]]:
    c = fleet.hours.c
    rows = store.db.fetch(select(*(c[n] for n in HOUR_COLUMNS)).where(
        c.plant == plant, c.ts >= _utc(t0), c.ts < _utc(t1)).order_by(c.ts, c.channel))
    return [dict(r._mapping) for r in rows]


def _substitutions(events: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = {}
    for event in events.get(SUBSTITUTION_EVENT, []):
        for doc in event["rows"]:
            row = {k: utc_time(v) if k in SUBSTITUTION_TIMES else v for k, v in doc.items()}
            rows.setdefault((row["channel"], row["ts"], row.get("revision", 0)), row)
    return list(rows.values())


def _production_days(events: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every import as the edge stored it: a changed figure is the day's next revision."""
    current: dict[date, dict[str, Any]] = {}
    rows = []
    for event in events.get(PRODUCTION_EVENT, []):
        for doc in event["days"]:
            day = date.fromisoformat(doc["day"])
            old = current.get(day)
            if old is not None and old["tonnes"] == doc["tonnes"]:
                continue
            current[day] = {"day": day, "tonnes": doc["tonnes"], "source": event["source"],
                            "created_at": event["_at"],
                            "revision": 0 if old is None else old["revision"] + 1}
            rows.append(current[day])
    return rows


def _refuse_bypass(plant: str, events: list[dict[str, Any]], t0: float, t1: float) -> None:
    latest = {e["id"]: e for e in events}  # an event's close follows its open
    for event in latest.values():
        end = event.get("ended_at")
        if event["started_at"] < t1 and (end is None or end > t0):
            raise CentralReportError(
                f"plant {plant!r}: bypass event {event['id']} (from "
                f"{_utc(event['started_at']):%Y-%m-%d %H:%M} UTC) lies in the period; its mass "
                "is recomputed from minutes, which the collector does not keep: take this "
                "report from the edge")


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
