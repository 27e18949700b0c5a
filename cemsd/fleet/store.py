"""The collector's database: one transaction per batch of messages.

- Hours and events are inserted `ON CONFLICT DO NOTHING` on their key (plant, channel,
  hour, revision / plant, time, message id): a re-sent message changes nothing. A message
  whose key is taken by a record with other content is a conflict: the first stays, the
  pair goes to `fleet_conflicts` (once, by digest) and is returned for the ERROR log and
  the metric.
- The monthly partitions a batch needs are created before its insert (`CREATE TABLE IF
  NOT EXISTS ... PARTITION OF`), remembered once committed.
- The witness (cemsd/fleet/witness.py) checks links and heads in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, func, select, text
from sqlalchemy.dialects.postgresql import insert

from cemsd.chain import utc_text
from cemsd.errors import StorageError
from cemsd.fleet import schema
from cemsd.fleet.bulk import copy_in
from cemsd.fleet.messages import Event, Head, Hour, Links, Minutes, Record, Rejected, Status
from cemsd.fleet.witness import (
    PENDING,
    Alarm,
    audit_records,
    witness_head,
    witness_links,
)
from cemsd.store.database import Database

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HOUR_CONTENT = ("value", "minimum", "maximum", "n_valid", "n_expected", "flag", "reason",
                "unit", "created_at", "supersedes", "audit_id")
EVENT_CONTENT = ("kind", "data")


@dataclass(frozen=True)
class Conflict:
    plant: str
    record: str  # hour | minute | event
    key: str
    stored: dict[str, Any]
    received: dict[str, Any]


@dataclass
class Ingested:
    """What one batch did."""

    hours: int = 0  # new hour rows
    events: int = 0
    duplicates: int = 0  # records received before, unchanged
    links: int = 0
    heads: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class FleetStore:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self._partitions: set[str] = set()

    def close(self) -> None:
        self.db.close()

    def upgrade(self) -> None:
        """The collector's schema to its newest migration (its own Alembic tree)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.db.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except Exception as exc:
            raise StorageError(f"cannot migrate {self.db.location}: {exc}") from exc

    # --- ingesting ---------------------------------------------------------------------------

    def ingest(self, records: list[Record], now: datetime) -> Ingested:
        """One batch in one transaction (all or nothing: the caller acknowledges after)."""
        done = Ingested(rejected=[r for r in records if isinstance(r, Rejected)])
        hours = [r.row for r in records if isinstance(r, Hour)]
        minutes = [row for r in records if isinstance(r, Minutes) for row in r.rows]
        events = [r.event if isinstance(r, Minutes) else r for r in records
                  if isinstance(r, Event | Minutes)]
        created: set[str] = set()
        with self.db.transaction() as conn:
            self._touch_plants(conn, records, now)
            created |= self._ensure_partitions(conn, schema.hours, [h["ts"] for h in hours])
            created |= self._ensure_partitions(conn, schema.minutes, [m["ts"] for m in minutes])
            created |= self._ensure_partitions(conn, schema.events, [e.at for e in events])
            done.hours, dup, done.conflicts = _insert_hours(conn, hours, now)
            _, dup_minutes, minute_conflicts = _insert_periods(
                conn, schema.minutes, "minute", minutes, now)
            done.events, dup_events, event_conflicts = _insert_events(conn, events, now)
            done.duplicates = dup + dup_minutes + dup_events
            done.conflicts += minute_conflicts + event_conflicts
            for record in records:  # links before the head that follows them: in order
                if isinstance(record, Links):
                    done.links += len(record.links)
                    done.alarms += witness_links(conn, record.plant, record.links, now)
                elif isinstance(record, Head):
                    done.heads += 1
                    done.alarms += witness_head(conn, record, now)
        self._partitions |= created
        return done

    def _touch_plants(self, conn: Connection, records: list[Record], now: datetime) -> None:
        status = {r.plant: r.state for r in records if isinstance(r, Status)}
        plants = {r.plant for r in records if not isinstance(r, Rejected)}
        for plant in sorted(plants):
            statement = insert(schema.plants).values(
                plant=plant, first_seen=now, last_message_at=now, status=status.get(plant))
            conn.execute(statement.on_conflict_do_update(
                index_elements=["plant"],
                set_={"last_message_at": now, "status": func.coalesce(
                    statement.excluded.status, schema.plants.c.status)}))

    def _ensure_partitions(self, conn: Connection, table: Table, times: list[datetime]
                           ) -> set[str]:
        months = {(t.year, t.month) for t in times}
        created = set()
        for year, month in sorted(months):
            name = f"{table.name}_{year:04d}_{month:02d}"
            if name in self._partitions:
                continue
            after = (year + month // 12, month % 12 + 1)
            conn.execute(text(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table.name} FOR VALUES FROM "
                f"('{year:04d}-{month:02d}-01') TO ('{after[0]:04d}-{after[1]:02d}-01')"))
            created.add(name)
        return created

    def audit_records(self, now: datetime, limit: int = 2000) -> tuple[int, list[Alarm]]:
        """One step of the witness's record audit (witness.audit_records)."""
        with self.db.transaction() as conn:
            return audit_records(conn, now, limit)

    def unchecked_links(self) -> int:
        c = schema.links.c
        return int(self.db.fetch(select(func.count()).where(c.checked == PENDING))[0][0])

    # --- reading -----------------------------------------------------------------------------

    def plants(self) -> list[str]:
        return [r.plant for r in self.db.fetch(select(schema.plants.c.plant)
                                               .order_by(schema.plants.c.plant))]

    def progress(self, now: datetime) -> list[dict[str, Any]]:
        """Per plant: first and last hour received, hours missing in between, the lag of
        the newest hour (now - its end), the last message, the witness's alarms."""
        c = schema.hours.c
        per_plant = {r.plant: r for r in self.db.fetch(
            select(c.plant, func.min(c.ts).label("first"), func.max(c.ts).label("last"),
                   func.count(func.distinct(c.ts)).label("hours")).group_by(c.plant))}
        alarms = dict(self.db.fetch(select(schema.alarms.c.plant, func.count())
                                    .group_by(schema.alarms.c.plant)))
        conflicts = dict(self.db.fetch(select(schema.conflicts.c.plant, func.count())
                                       .group_by(schema.conflicts.c.plant)))
        out = []
        for plant in self.db.fetch(select(schema.plants).order_by(schema.plants.c.plant)):
            hours = per_plant.get(plant.plant)
            span = 0 if hours is None else int((hours.last - hours.first).total_seconds()
                                               // 3600) + 1
            out.append({
                "plant": plant.plant, "status": plant.status,
                "last_message_at": utc_text(plant.last_message_at),
                "first_hour": None if hours is None else utc_text(hours.first),
                "last_hour": None if hours is None else utc_text(hours.last),
                "hours_received": 0 if hours is None else int(hours.hours),
                "hours_missing": 0 if hours is None else span - int(hours.hours),
                "lag_seconds": None if hours is None else
                (now - hours.last).total_seconds() - 3600,
                "alarms": int(alarms.get(plant.plant, 0)),
                "conflicts": int(conflicts.get(plant.plant, 0)),
            })
        return out

    def gaps(self, plant: str) -> list[tuple[datetime, datetime]]:
        """The missing hours of a plant between its first and last, as [start, end) spans."""
        rows = self.db.fetch(text(
            "SELECT ts + interval '1 hour' AS start, next AS end FROM ("
            " SELECT ts, lead(ts) OVER (ORDER BY ts) AS next FROM ("
            "  SELECT DISTINCT ts FROM fleet_hours WHERE plant = :plant) AS t) AS g "
            "WHERE next > ts + interval '1 hour' ORDER BY ts").bindparams(plant=plant))
        return [(r.start.replace(tzinfo=UTC), r.end.replace(tzinfo=UTC)) for r in rows]


# --- idempotent inserts with conflicts -----------------------------------------------------------


def _insert_hours(conn: Connection, rows: list[dict[str, Any]], now: datetime
                  ) -> tuple[int, int, list[Conflict]]:
    return _insert_periods(conn, schema.hours, "hour", rows, now)


def _insert_periods(conn: Connection, table: Table, record: str, rows: list[dict[str, Any]],
                    now: datetime) -> tuple[int, int, list[Conflict]]:
    """Hours or minutes, keyed (plant, channel, start, revision)."""
    keys = ("plant", "channel", "ts", "revision")
    return _insert_once(conn, table, keys, HOUR_CONTENT, record,
                        [{**r, "received_at": now} for r in rows], now)


def _insert_events(conn: Connection, events: list[Event], now: datetime
                   ) -> tuple[int, int, list[Conflict]]:
    rows = [{"plant": e.plant, "at": e.at, "message_id": e.message_id, "kind": e.kind,
             "data": e.data, "received_at": now} for e in events]
    return _insert_once(conn, schema.events, ("plant", "at", "message_id"), EVENT_CONTENT,
                        "event", rows, now)


def _insert_once(conn: Connection, table: Table, keys: tuple[str, ...],
                 content: tuple[str, ...], record: str, rows: list[dict[str, Any]],
                 now: datetime) -> tuple[int, int, list[Conflict]]:
    """Insert what is new; compare the rest with what is stored: (new, same, conflicts).

    The batch is copied (COPY) into a temporary table, inserted from there in one
    statement, and compared with what is stored in one join: no statement per row."""
    if not rows:
        return 0, 0, []
    incoming = copy_in(conn, table, rows)
    on_keys = " AND ".join(f"i.{k} = s.{k}" for k in keys)
    inserted = conn.execute(text(
        f"INSERT INTO {table.name} SELECT * FROM {incoming} ON CONFLICT DO NOTHING")).rowcount
    differing = conn.execute(text(
        f"SELECT {', '.join(f'i.{k}' for k in keys)}, "
        f"{', '.join(f'i.{n} AS in_{n}, s.{n} AS kept_{n}' for n in content)} "
        f"FROM {incoming} i JOIN {table.name} s ON {on_keys} "
        f"WHERE ({', '.join(f'i.{n}' for n in content)}) IS DISTINCT FROM "
        f"({', '.join(f's.{n}' for n in content)})")).all()
    conflicts = []
    for row in differing:
        key = tuple(_utc_value(getattr(row, k)) for k in keys)
        conflict = Conflict(row.plant, record, _key_text(key[1:]),
                            {n: _utc_value(getattr(row, f"kept_{n}")) for n in content},
                            {n: _utc_value(getattr(row, f"in_{n}")) for n in content})
        if _keep_conflict(conn, conflict, now):
            conflicts.append(conflict)
    return inserted, len(rows) - inserted - len(conflicts), conflicts


def _utc_value(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


def _key_text(key: tuple[Any, ...]) -> str:
    return " ".join(utc_text(k) if isinstance(k, datetime) else str(k) for k in key)


def _json_text(values: dict[str, Any]) -> str:
    return json.dumps({k: utc_text(v) if isinstance(v, datetime) else v
                       for k, v in values.items()}, sort_keys=True)


def _keep_conflict(conn: Connection, conflict: Conflict, now: datetime) -> bool:
    """Store it once (a re-sent conflicting message is the same conflict); True if new."""
    stored, received = _json_text(conflict.stored), _json_text(conflict.received)
    digest = hashlib.sha256("\n".join((conflict.plant, conflict.record, conflict.key,
                                       stored, received)).encode()).hexdigest()
    row = conn.execute(insert(schema.conflicts).on_conflict_do_nothing().returning(
        schema.conflicts.c.id), {"plant": conflict.plant, "record": conflict.record,
                                 "key": conflict.key, "stored": stored, "received": received,
                                 "digest": digest, "received_at": now}).first()
    return row is not None
