"""QA/QC records in the database: calibrations, maintenance windows, control periods, audit.

Synchronous functions on a Database (the daemon runs them on the store's worker thread,
the CLI directly). Records are appended; the only change ever made to a stored record is
closing an open window or period (setting its end once), which the database's triggers
also enforce.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from cemsd.chain import utc_text
from cemsd.config import Config
from cemsd.plan import Plan
from cemsd.plantstate import PlantState
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.writer import Store

GOOD_RESULTS = ("pass", "adjust")  # within control limits: resets the calibration clock
CONFIG_ACTIONS = ("config.load", "config.change")


def _insert(db: Database, table: Any, row: dict[str, Any]) -> int:
    with db.transaction() as conn:
        return int(conn.execute(insert(table).values(**row)).inserted_primary_key[0])


def insert_calibration(db: Database, row: dict[str, Any]) -> int:
    return _insert(db, schema.calibrations, row)


def insert_maintenance(db: Database, row: dict[str, Any]) -> int:
    return _insert(db, schema.maintenance, row)


def insert_control_period(db: Database, row: dict[str, Any]) -> int:
    return _insert(db, schema.control_periods, row)


def control_periods_by_id(db: Database, ids: list[int]) -> list[Any]:
    c = schema.control_periods.c
    return db.fetch(select(schema.control_periods).where(c.id.in_(ids)).order_by(c.id))


def row_document(row: Any) -> dict[str, Any]:
    """A stored row as JSON (events): each column by name, times in UTC text to the
    microsecond, as the database keeps them."""
    return {k: utc_text(v) if isinstance(v, datetime) else v
            for k, v in row._mapping.items()}


def end_maintenance(db: Database, window_id: int, at: float) -> None:
    m = schema.maintenance.c
    with db.transaction() as conn:
        conn.execute(update(schema.maintenance).where(m.id == window_id, m.ended_at.is_(None))
                     .values(ended_at=at))


def close_control_periods(db: Database, channel: str, kinds: tuple[str, ...], at: float,
                          closed_by: int | None) -> list[int]:
    """Close the channel's open periods of these kinds; returns their ids."""
    c = schema.control_periods.c
    where = and_(c.channel == channel, c.kind.in_(kinds), c.ended_at.is_(None))
    with db.transaction() as conn:
        ids = [r.id for r in conn.execute(select(c.id).where(where))]
        if ids:
            conn.execute(update(schema.control_periods).where(c.id.in_(ids))
                         .values(ended_at=at, closed_by=closed_by))
    return ids


def _out_of_control(channel: str, kind: str) -> Any:
    """Open out-of-control periods of a channel found by a check of this kind."""
    c, k = schema.control_periods.c, schema.calibrations.c
    return and_(c.channel == channel, c.kind == "out_of_control", c.ended_at.is_(None),
                or_(c.opened_by.is_(None), c.opened_by.in_(
                    select(k.id).where(k.channel == channel, k.kind == kind))))


def open_out_of_control(db: Database, channel: str, kind: str) -> list[Any]:
    return db.fetch(select(schema.control_periods).where(_out_of_control(channel, kind)))


def close_out_of_control(db: Database, channel: str, kind: str, at: float,
                         closed_by: int) -> list[int]:
    """A passing check ends the periods its kind of drift opened (zero closes zero)."""
    c = schema.control_periods.c
    with db.transaction() as conn:
        ids = [r.id for r in conn.execute(select(c.id).where(_out_of_control(channel, kind)))]
        if ids:
            conn.execute(update(schema.control_periods).where(c.id.in_(ids))
                         .values(ended_at=at, closed_by=closed_by))
    return ids


def open_maintenance(db: Database, now: float) -> list[Any]:
    m = schema.maintenance.c
    return db.fetch(select(schema.maintenance).where(or_(m.ended_at.is_(None), m.ended_at > now))
                     .order_by(m.id))


def open_control_periods(db: Database) -> list[Any]:
    c = schema.control_periods.c
    return db.fetch(select(schema.control_periods).where(c.ended_at.is_(None)).order_by(c.id))


def last_good_calibrations(db: Database) -> dict[str, float]:
    c = schema.calibrations.c
    query = (select(c.channel, func.max(c.ended_at)).where(c.result.in_(GOOD_RESULTS))
             .group_by(c.channel))
    return {row[0]: _epoch(row[1]) for row in db.fetch(query) if row[1] is not None}


def calibrations(db: Database, channel: str | None = None) -> list[Any]:
    c = schema.calibrations.c
    query = select(schema.calibrations).order_by(c.started_at, c.id)
    if channel:
        query = query.where(c.channel == channel)
    return db.fetch(query)


def maintenance_windows(db: Database) -> list[Any]:
    return db.fetch(select(schema.maintenance).order_by(schema.maintenance.c.id))


def control_periods(db: Database, channel: str | None = None) -> list[Any]:
    c = schema.control_periods.c
    query = select(schema.control_periods).order_by(c.started_at, c.id)
    if channel:
        query = query.where(c.channel == channel)
    return db.fetch(query)


def audit(db: Database, at: float, actor: str, action: str, target: str | None = None,
          reason: str | None = None, before: Any = None, after: Any = None) -> int:
    """Append one entry to the audit log: who, when, what, why, before and after."""
    return _insert(db, schema.audit_log, audit_row(at, actor, action, target, reason, before,
                                                   after))


def audit_row(at: float, actor: str, action: str, target: str | None, reason: str | None,
              before: Any, after: Any) -> dict[str, Any]:
    """An audit-log row (for a caller that writes it in its own transaction)."""
    return {
        "at": at, "actor": actor, "action": action, "target": target, "reason": reason,
        "before": None if before is None else json.dumps(before, sort_keys=True, default=str),
        "after": None if after is None else json.dumps(after, sort_keys=True, default=str),
        "host": socket.gethostname(),
    }


def audit_entries(db: Database, action: str | None = None) -> list[Any]:
    a = schema.audit_log.c
    query = select(schema.audit_log).order_by(a.id)
    if action:  # a plain prefix: LIKE would ignore case on SQLite and treat _ as a wildcard
        query = query.where(func.substr(a.action, 1, len(action)) == action)
    return db.fetch(query)


def audit_config(db: Database, at: float, path: Path) -> str | None:
    """Record the configuration in force when it differs from the last one recorded.

    The first configuration and every later change go into the audit log with the full
    text, so the configuration in force at any time can be reconstructed.
    """
    text = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    a = schema.audit_log.c
    last = db.fetch(select(schema.audit_log).where(a.action.in_(CONFIG_ACTIONS))
                     .order_by(a.id.desc()).limit(1))
    previous = json.loads(last[0].after) if last else None
    if previous is not None and previous["sha256"] == digest:
        return None
    stat = path.stat()
    action = "config.load" if previous is None else "config.change"
    reason = (f"{path} modified {datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()} "
              f"(file owner uid {stat.st_uid})")
    before = None if previous is None else {"sha256": previous["sha256"],
                                            "path": previous["path"]}
    audit(db, at, "cemsd", action, str(path), reason, before,
          {"sha256": digest, "path": str(path), "text": text})
    return action


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


def _epoch(value: Any) -> float:
    from cemsd.store.database import as_epoch

    epoch = as_epoch(value)
    assert epoch is not None
    return epoch


async def load_plant_state(config: Config, plan: Plan, store: Store, now: float) -> PlantState:
    """The QA/QC state as the database last left it."""
    db = store.db
    state = PlantState(config, plan)
    state.load(await store.call(open_maintenance, db, now),
               await store.call(open_control_periods, db), now)
    good = await store.call(last_good_calibrations, db)
    commissioned = await store.call(db.first_run_started) or now
    for channel in plan.channels:
        settings = channel.spec.calibration
        if settings is None:
            continue
        if channel.name in good:
            since, what = good[channel.name], "last check within limits"
        else:
            since, what = commissioned, "no check since commissioning"
        state.calibration_due[channel.name] = (since + settings.interval, what)
    return state
