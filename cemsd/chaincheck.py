"""`cemsd verify`: the whole check of the stored record against the chain.

chain.verify() walks the links (every sealed record unchanged, every link in place). This
adds what a walk of the links cannot see on its own:

- recorded heads: the chain holds every head recorded outside the database (the daemon's
  head file, heads a registry pinned); a cut tail or an emptied or rebuilt chain fails;
- completeness: every record final as of the newest known head is sealed;
- audited revisions: every revision above 0 names an audited correction (who, why, when);
- minutes: no minute under a sealed hour was written after the hour's newest revision;
- malformed rows: a value of the wrong type (SQLite keeps what it is given) is named.

Every finding is a chain.Break naming the record; nothing here raises on bad data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Date, Float, Integer, and_, func, inspect, literal, not_, or_

from cemsd import chain
from cemsd.chain import KINDS, MINUTES, REVISED, Break, SealedKind, Verification
from cemsd.chainhead import Pin, check_pins, pin_time
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

_LISTED = 50  # findings of one kind listed one by one; the rest are counted


def check(db: Database, finalise_after_hours: float, pins: list[Pin]) -> Verification:
    if not inspect(db.engine).has_table("chain"):  # an empty (or foreign) database
        return _no_chain(pins)
    report = chain.verify(db)
    report.breaks += check_pins(db, pins)
    report.breaks += malformed_rows(db)
    report.breaks += unaudited_revisions(db)
    report.breaks += minutes_after_sealing(report)
    report.breaks += unsealed_final_records(db, report, finalise_after_hours, pins)
    return report


def _no_chain(pins: list[Pin]) -> Verification:
    """A database without cemsd's tables: fine only if no head was ever recorded."""
    report = Verification()
    report.breaks = [Break(p.seq, "chain", None, "", None, "chain shorter than a recorded head",
                           f"{p.source} is link {p.seq} ({p.time}); this database has no "
                           "chain at all (emptied or replaced)") for p in pins if p.seq > 0]
    return report


def _break(kind: SealedKind, row: Any, problem: str, detail: str) -> Break:
    ts = getattr(row, "ts", None) or getattr(row, "at", None)
    moment = chain.time_or_none(ts) if not isinstance(ts, datetime) else ts
    channel = getattr(row, "channel", None) or getattr(row, "action", None)
    return Break(None, kind.name, row.id if isinstance(row.id, int) else None,
                 str(channel or chain.PRODUCTION_CHANNEL), moment, problem, detail)


def unsealed_final_records(db: Database, report: Verification, finalise_after_hours: float,
                           pins: list[Pin]) -> list[Break]:
    """Records final as of the newest known head (in the chain, or recorded outside it)
    that have no link: the chain's tail was cut or it was emptied."""
    times = [pin_time(p) for p in pins if p.seq > 0]
    if report.head is not None:
        times.append(report.head.sealed_at.timestamp())
    known = [t for t in times if t is not None]
    if not known:
        return []
    reference = max(known)
    through = chain.due_before(reference, finalise_after_hours)
    out = []
    for kind in KINDS.values():
        t = kind.table.c
        written = t.at if kind.name == "audit_log" else t.created_at
        where = [chain.unsealed_clause(kind), written <= reference]
        if kind.periodic:
            where.append(t.ts <= through)
        rows = db.fetch(chain.raw_select(kind.table).where(*where).order_by(t.id))
        out += [_break(kind, row, "record not sealed",
                       f"final since the head of {_utc(reference)} but not in the chain "
                       "(its links were removed, or the daemon refused it)")
                for row in rows[:_LISTED]]
        out += _more(kind, len(rows), "record not sealed")
    return out


def unaudited_revisions(db: Database) -> list[Break]:
    """Revisions above 0 without an audited correction written no later than themselves."""
    out = []
    for kind in REVISED:
        t = kind.table
        rows = db.fetch(chain.raw_select(t).where(not_(chain.audited_clause(t))).order_by(t.c.id))
        out += [_break(kind, row, "revision not audited",
                       f"revision {row.revision} (supersedes id {row.supersedes}) names no "
                       f"audited correction (audit_id {row.audit_id}): who made it, and why?")
                for row in rows[:_LISTED]]
        out += _more(kind, len(rows), "revision not audited")
    return out


def minutes_after_sealing(report: Verification) -> list[Break]:
    """A minute written after the newest sealed revision of its hour is covered by no seal."""
    out = []
    for key, minute_at in sorted(report.minute_written.items()):
        hour_at = report.hour_written.get(key)
        if hour_at is not None and minute_at > hour_at:
            out.append(Break(None, "minutes", None, key[0], key[1], "minute not sealed",
                             f"a minute under this sealed hour was written at "
                             f"{chain.utc_text(minute_at)}, after the hour's newest revision "
                             f"({chain.utc_text(hour_at)}): no seal covers it"))
    return out


def malformed_rows(db: Database) -> list[Break]:
    """Rows holding a value of the wrong type. Only SQLite can store one (PostgreSQL's
    columns are typed); it is found in SQL, then read raw to name the value."""
    if db.dialect != "sqlite":
        return []
    out = []
    for kind in (*KINDS.values(), MINUTES):
        bad = or_(*[_wrong_type(column) for column in kind.table.c])
        loaded = chain.load(db, kind.table, chain.raw_select(kind.table).where(bad)
                            .order_by(kind.table.c.id))
        problems = sorted(loaded.malformed.items())
        for record_id, why in problems[:_LISTED]:
            row = db.fetch(chain.raw_select(kind.table).where(kind.table.c.id == record_id))[0]
            out.append(_break(kind, row, "record malformed", why))
        out += _more(kind, len(problems), "record malformed")
    return out


# how SQLAlchemy writes a date and a timestamp into SQLite
_STORED_DATE = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]"
_STORED_TIME = _STORED_DATE + " [0-2][0-9]:[0-5][0-9]:[0-6][0-9]*"


def _wrong_type(column: Any) -> Any:
    kind = func.typeof(column)
    pattern = (_STORED_TIME if isinstance(column.type, UTCDateTime)
               else _STORED_DATE if isinstance(column.type, Date) else None)
    if pattern is not None:
        glob = column.op("GLOB", return_type=Boolean)
        return and_(column.is_not(None), or_(kind != "text", not_(glob(literal(pattern)))))
    if isinstance(column.type, Float):
        return kind.not_in(("real", "integer", "null"))
    if isinstance(column.type, Integer):
        return kind.not_in(("integer", "null"))
    return kind.not_in(("text", "null"))


def _more(kind: SealedKind, count: int, problem: str) -> list[Break]:
    if count <= _LISTED:
        return []
    return [Break(None, kind.name, None, "", None, problem,
                  f"and {count - _LISTED} more {kind.name} record(s) like the ones above")]


def _utc(epoch: float) -> str:
    return chain.utc_text(datetime.fromtimestamp(epoch, UTC))
