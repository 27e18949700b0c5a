"""A plant's report from the fleet database, by the edge's own code (docs/decisions/0204).

One plant's period is copied into an edge-shaped database (SQLite in a temporary folder,
the edge's schema and migrations): its hours (every revision), the substitutions, imported
production days and bypass events the edge published as events, the minutes under its
hours with bypass (`bypass.minutes`, decision 0210), and the chain links the witness
received (decision 0211). The edge's `build_report` / `export_bundle` then run on that
copy: no second copy of the report logic, so the central figures are the edge's figures by
construction, and the central bundle carries the edge's links: `cemsd verify-bundle`
checks its rows against the edge's chain.

Each copied record takes the id of the edge's link that seals it (found by its hash), so
the bundle's rows meet their links as at the edge. A bypass event still open, or one whose
minutes have not all been received, is refused, naming it and the hour.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Table, func, insert, select

from cemsd import chain
from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.fleet import schema as fleet
from cemsd.fleet.edge_tables import (
    BYPASS_EVENTS,
    CALIBRATION_EVENT,
    CALIBRATIONS,
    CONTROL_PERIODS,
    MAINTENANCE,
    MAINTENANCE_EVENT,
    SUBSTITUTIONS,
    EventTable,
    column_defaults,
    merged_rows,
)
from cemsd.fleet.store import FleetStore
from cemsd.mqtt import PRODUCTION_EVENT
from cemsd.periods import HOUR, hour_floor
from cemsd.qaqc.calibration import CONTROL_PERIOD_EVENT
from cemsd.qaqc.substitution import SUBSTITUTION_EVENT
from cemsd.reduction.bundle import export_bundle
from cemsd.reduction.bypass import BYPASS_EVENT, BYPASS_MINUTES_EVENT
from cemsd.reduction.report import build_report
from cemsd.store import schema
from cemsd.store.database import Database

# Hours copied before the period: the production counter's end of the day before.
LOOKBACK_SECONDS = 2 * 86400.0
HOUR_COLUMNS = ("channel", "ts", "revision", "value", "minimum", "maximum", "n_valid",
                "n_expected", "flag", "reason", "unit", "created_at", "supersedes", "audit_id")
REPORT_EVENTS = (BYPASS_EVENT, BYPASS_MINUTES_EVENT, SUBSTITUTION_EVENT, PRODUCTION_EVENT,
                 CALIBRATION_EVENT, MAINTENANCE_EVENT, CONTROL_PERIOD_EVENT)
# What a central bundle holds of the edge's records (its manifest's `scope`, read by
# `cemsd verify-bundle`): the collector receives no audit log, and minutes only under the
# hours with bypass; the links of both still chain (docs/decisions/0212).
CENTRAL_SCOPE = {"made_by": "collector", "rows_absent": ["audit_log"], "minutes": "bypass"}


class CentralReportError(CemsdError):
    """A central report that would not equal the edge's."""


def central_report(store: FleetStore, config: Config, t0: float, t1: float, now: float
                   ) -> dict[str, Any]:
    with edge_copy(store, config, t0, t1) as db:
        return build_report(db, config, t0, t1, now)


def central_bundle(store: FleetStore, config: Config, t0: float, t1: float, now: float,
                   path: Path) -> dict[str, Any]:
    """The verification bundle of central data with the edge's chain links, signed with
    the key in the plant configuration's state_dir (the collector's copy of it: its
    attestation, docs/decisions/0204 and 0212)."""
    with edge_copy(store, config, t0, t1) as db:
        return export_bundle(db, config, t0, t1, now, path, scope=CENTRAL_SCOPE)


@contextlib.contextmanager
def edge_copy(store: FleetStore, config: Config, t0: float, t1: float) -> Iterator[Database]:
    """The plant's records around [t0, t1) in a fresh edge database, removed afterwards."""
    plant = config.plant.id
    if not store.db.fetch(select(fleet.plants.c.plant).where(fleet.plants.c.plant == plant)):
        raise CentralReportError(f"plant {plant!r}: nothing received from it")
    tables = _edge_tables(store, config, t0, t1)
    with tempfile.TemporaryDirectory(prefix=f"cemsd-central-{plant}-") as folder:
        db = Database(f"sqlite:///{Path(folder) / 'edge.db'}")
        try:
            db.upgrade()
            with db.transaction() as conn:
                for table, rows in tables:
                    if rows:
                        conn.execute(insert(table), rows)
            yield db
        finally:
            db.close()


def _edge_tables(store: FleetStore, config: Config, t0: float, t1: float
                 ) -> list[tuple[Table, list[dict[str, Any]]]]:
    """The edge's rows for the copy, table by table (refused: a bypass event of the
    period the copy could not recompute)."""
    plant = config.plant.id
    events = _events(store, plant)
    bypass = _bypass_events(events, plant)
    in_period = [e for e in bypass if e["started_at"].timestamp() < t1
                 and (e["ended_at"] is None or e["ended_at"].timestamp() > t0)]
    _require_minutes(config, in_period, events.get(BYPASS_MINUTES_EVENT, []), t0, t1)
    since = t0 - _lookback(config, in_period)
    links = _links(store, plant, since, t1)
    return [
        (schema.hours, _sealed("hours", _hours(store, plant, since, t1), links)),
        (schema.substitutions, _sealed("substitutions", _rows(events, SUBSTITUTIONS, plant),
                                       links)),
        (schema.production_days, _sealed("production_days", _production_days(events), links)),
        (schema.bypass_events, bypass),
        (schema.minutes, _minutes(store, plant, since, t1)),
        (schema.chain, links), *_qaqc(events, plant)]


def _lookback(config: Config, bypass: list[dict[str, Any]]) -> float:
    """The hours needed before the period: the day before, and with a bypass event the
    look-back of its estimate (masses.largest_inlet_hour)."""
    if not bypass:
        return LOOKBACK_SECONDS
    return max(LOOKBACK_SECONDS, (config.reduction.bypass.vent_lookback_hours + 1) * HOUR)


def _events(store: FleetStore, plant: str) -> dict[str, list[dict[str, Any]]]:
    """The data of the plant's report events by kind, in the order the edge sent them."""
    c = fleet.events.c
    rows = store.db.fetch(select(c.kind, c.data, c.at, c.message_id).where(
        c.plant == plant, c.kind.in_(REPORT_EVENTS)).order_by(c.message_id))
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row.kind, []).append({**json.loads(row.data), "_at": row.at,
                                             "_message_id": row.message_id})
    return out


def _hours(store: FleetStore, plant: str, t0: float, t1: float) -> list[dict[str, Any]]:
    c = fleet.hours.c
    rows = store.db.fetch(select(*(c[n] for n in HOUR_COLUMNS)).where(
        c.plant == plant, c.ts >= _utc(t0), c.ts < _utc(t1)).order_by(c.ts, c.channel))
    return [dict(r._mapping) for r in rows]


def _minutes(store: FleetStore, plant: str, t0: float, t1: float) -> list[dict[str, Any]]:
    """The bypass minutes received, with the edge's ids."""
    c = fleet.minutes.c
    rows = store.db.fetch(select(c.edge_id.label("id"), *(c[n] for n in HOUR_COLUMNS)).where(
        c.plant == plant, c.ts >= _utc(t0), c.ts < _utc(t1)).order_by(c.channel, c.ts))
    return [dict(r._mapping) for r in rows]


def _links(store: FleetStore, plant: str, t0: float, t1: float) -> list[dict[str, Any]]:
    """The links received for the records of [t0, t1), every one between the first and
    the last, and the link of the newest head the witness found extending the chain (the
    copy's head, as chain/head.json of the edge's bundle)."""
    c = fleet.links.c
    first, last = store.db.fetch(select(func.min(c.seq), func.max(c.seq)).where(
        c.plant == plant, c.ts >= _utc(t0), c.ts < _utc(t1)))[0]
    h = fleet.heads.c
    head = store.db.fetch(select(func.max(h.seq)).where(h.plant == plant,
                                                        h.verdict == "extends"))[0][0]
    if first is None:
        return []
    columns = [c[col.name] for col in schema.chain.c]
    rows = store.db.fetch(select(*columns).where(
        c.plant == plant, c.seq.between(first, last) | (c.seq == head)).order_by(c.seq))
    return [dict(r._mapping) for r in rows]


def _sealed(table: str, rows: list[dict[str, Any]], links: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The rows with the ids of the edge's records that the links seal: a row hashing to a
    link is that record; a row hashing to none takes a link of its channel and time left
    over (the verifier then names it changed); a row without a link gets an id after
    theirs."""
    kind = chain.KINDS[table]
    mine = [ln for ln in links if ln["record_table"] == table]
    free: dict[tuple[str, datetime], list[dict[str, Any]]] = {}
    for link in mine:
        free.setdefault((link["channel"], link["ts"]), []).append(link)
    keys = [_link_key(kind, row) for row in rows]
    ids: list[int | None] = [None] * len(rows)
    for i, (key, typed) in enumerate(keys):
        link = next((ln for ln in free.get(key, []) if _hashes_to(kind, typed, ln)), None)
        if link is not None:
            free[key].remove(link)
            ids[i] = link["record_id"]
    for i, (key, _) in enumerate(keys):
        if ids[i] is None and free.get(key):
            ids[i] = free[key].pop(0)["record_id"]
    top = max([ln["record_id"] for ln in mine] + [r.get("id") or 0 for r in rows], default=0)
    out = []
    for row, found in zip(rows, ids, strict=True):
        if found is None and row.get("id") is None:
            top += 1
            found = top
        out.append({**row, "id": row.get("id") if found is None else found})
    return out


def _link_key(kind: chain.SealedKind, row: dict[str, Any]
              ) -> tuple[tuple[str, datetime], SimpleNamespace]:
    typed = _typed(kind, row)
    return (kind.link_channel(typed), kind.link_time(typed)), typed


def _typed(kind: chain.SealedKind, row: dict[str, Any]) -> SimpleNamespace:
    """A row as the edge's table holds it (its defaults filled in), for its hash."""
    defaults = column_defaults(kind.table)
    return SimpleNamespace(**{c.name: row.get(c.name, defaults.get(c.name))
                              for c in kind.table.c})


def _hashes_to(kind: chain.SealedKind, row: SimpleNamespace, link: dict[str, Any]) -> bool:
    digest = link["minutes_sha256"] if kind.name == "hours" else None
    try:
        return chain.record_hash(kind, row, link["form"], digest) == link["record_hash"]
    except (chain.Malformed, TypeError, ValueError):
        return False


def _rows(events: dict[str, list[dict[str, Any]]], spec: EventTable, plant: str
          ) -> list[dict[str, Any]]:
    """The edge table's rows rebuilt from the events as the fleet API lists them
    (cemsd/fleet/edge_tables.py), every column present."""
    rows = merged_rows(spec, ((e, e["_message_id"]) for e in events.get(spec.kind, [])), plant)
    return [{c.name: row.get(c.name) for c in spec.table.c} for row in rows]


def _production_days(events: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every import as the edge stored it: its rows as published, or (an edge before
    decision 0211) a changed figure as the day's next revision."""
    current: dict[date, dict[str, Any]] = {}
    rows = []
    for event in events.get(PRODUCTION_EVENT, []):
        if "rows" in event:
            for doc in event["rows"]:
                row = vars(chain.parse_text(schema.production_days, doc, "production row"))
                rows.append(row)
                current[row["day"]] = row
            continue
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


def _bypass_events(events: dict[str, list[dict[str, Any]]], plant: str
                   ) -> list[dict[str, Any]]:
    """Each event as the edge stored it: opened, then closed with its figures (written
    when its open was received, if an edge before decision 0207 sent no `created_at`)."""
    received = {e["id"]: e["_at"] for e in reversed(events.get(BYPASS_EVENT, []))}
    return [{**row, "created_at": row["created_at"] or received[row["id"]]}
            for row in _rows(events, BYPASS_EVENTS, plant)]


def _qaqc(events: dict[str, list[dict[str, Any]]], plant: str
          ) -> list[tuple[Table, list[dict[str, Any]]]]:
    """Calibrations, maintenance windows and control periods as the edge stored them (each
    by id, as its last event left it: a window's close follows its start), for the
    bundle's QA/QC evidence (docs/decisions/0213); without a row a required column never
    came in (a window whose start was not received)."""
    return [(spec.table, [row for row in _rows(events, spec, plant) if all(
        row[c.name] is not None or c.nullable for c in spec.table.c)])
        for spec in (CALIBRATIONS, MAINTENANCE, CONTROL_PERIODS)]


def _require_minutes(config: Config, bypass: list[dict[str, Any]],
                     published: list[dict[str, Any]], t0: float, t1: float) -> None:
    """Every hour of the period with a bypass event has its minutes; the event is closed
    (an open event's mass grows with each minute at the edge)."""
    plant, tz = config.plant.id, config.plant.tz
    received = {(m["unit"], m["hour"]) for m in published}
    for event in bypass:
        name = (f"plant {plant!r}: bypass event {event['id']} (from "
                f"{event['started_at']:%Y-%m-%d %H:%M} UTC)")
        if event["ended_at"] is None:
            raise CentralReportError(f"{name} is still open at the edge: its mass grows "
                                     "with each minute; take this report once it closed")
        hour = hour_floor(max(event["started_at"].timestamp(), t0), tz)
        while hour < min(event["ended_at"].timestamp(), t1):
            if (event["unit"], chain.utc_text(_utc(hour))) not in received:
                raise CentralReportError(
                    f"{name}: the minutes of the hour {_utc(hour):%Y-%m-%d %H:%M} UTC "
                    f"({BYPASS_MINUTES_EVENT}) have not been received from it")
            hour += HOUR


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
