"""Durable cursors and the stored periods uploads are built from.

`hj212_cursor` holds, per platform and CN, `acked_until`: every period *starting*
before it has been acknowledged by that platform (or written, without the A bit). After
a reconnect or a restart, every period from there on is sent again, in order. The
periods come from the minutes and hours tables (days from hours), never from memory.

The functions here are synchronous; the uplink runs them through `daemon.store.call`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from cemsd import standards_hj212 as p
from cemsd.errors import StorageError
from cemsd.hj212.messages import MessageBuilder, PeriodValue, Upload, day_bounds
from cemsd.periods import HOUR, MINUTE
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.writer import Store

PERIOD_TABLES: dict[int, tuple[Table, float]] = {
    p.Cn.MINUTE_DATA: (schema.minutes, MINUTE),
    p.Cn.HOUR_DATA: (schema.hours, HOUR),
}


def load_cursors(db: Database, platform: str) -> dict[int, float]:
    c = schema.hj212_cursor.c
    rows = _fetch(db, select(c.cn, c.acked_until).where(c.platform == platform))
    return {int(r.cn): r.acked_until.timestamp() for r in rows}


def save_cursor(db: Database, platform: str, cn: int, acked_until: float) -> None:
    c = schema.hj212_cursor.c
    values = {"acked_until": acked_until, "updated_at": datetime.now(UTC)}
    try:
        with db.engine.begin() as conn:
            done = conn.execute(update(schema.hj212_cursor)
                                .where(c.platform == platform, c.cn == str(cn)), values)
            if done.rowcount == 0:
                conn.execute(insert(schema.hj212_cursor),
                             {"platform": platform, "cn": str(cn), **values})
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot save the HJ 212 cursor of {platform}: {exc}") from exc


def next_start(db: Database, table: Table, after: float, channels: Sequence[str]) -> float | None:
    """The first stored period of these series starting at or after `after`."""
    c = table.c
    rows = _fetch(db, select(c.ts).where(c.ts >= after, c.channel.in_(list(channels)))
                  .order_by(c.ts).limit(1))
    return rows[0].ts.timestamp() if rows else None


def last_start(db: Database, table: Table, channels: Sequence[str]) -> float | None:
    c = table.c
    rows = _fetch(db, select(c.ts).where(c.channel.in_(list(channels)))
                  .order_by(c.ts.desc()).limit(1))
    return rows[0].ts.timestamp() if rows else None


def pending_starts(db: Database, table: Table, after: float,
                   channels: Sequence[str]) -> tuple[int, float | None]:
    """How many periods of these series start at or after `after`, and the first start."""
    c = table.c
    query = select(func.count(func.distinct(c.ts)), func.min(c.ts)).where(
        c.ts >= after, c.channel.in_(list(channels)))
    count, first = _fetch(db, query)[0]
    if first is not None and not isinstance(first, datetime):  # SQLite: min() gives text
        first = datetime.fromisoformat(first)
    if first is not None and first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    return int(count or 0), None if first is None else first.timestamp()


def period_rows(db: Database, table: Table, t0: float, t1: float,
                channels: Sequence[str]) -> list[PeriodValue]:
    """Periods starting in [t0, t1), the highest revision of each (a correction wins)."""
    c = table.c
    latest = (select(c.channel, c.ts, func.max(c.revision).label("revision"))
              .where(c.ts >= t0, c.ts < t1, c.channel.in_(list(channels)))
              .group_by(c.channel, c.ts).subquery())
    query = (select(c.channel, c.ts, c.value, c.minimum, c.maximum, c.flag)
             .join(latest, (c.channel == latest.c.channel) & (c.ts == latest.c.ts)
                   & (c.revision == latest.c.revision))
             .order_by(c.ts, c.channel))
    return [PeriodValue(r.channel, r.ts.timestamp(), r.value, r.minimum, r.maximum, r.flag)
            for r in _fetch(db, query)]


def _fetch(db: Database, query: Any) -> list[Any]:
    try:
        with db.engine.connect() as conn:
            return list(conn.execute(query))
    except SQLAlchemyError as exc:
        raise StorageError(f"read from {db.location} failed: {exc}") from exc


class PeriodSource:
    """Uploads of stored periods, oldest first, for the backlog and history requests."""

    def __init__(self, store: Store, builder: MessageBuilder, tz: ZoneInfo) -> None:
        self.store = store
        self.db = store.db
        self.builder = builder
        self.tz = tz
        self.channels = builder.series

    async def after(self, cn: int, t0: float, limit: int) -> list[Upload]:
        """Up to `limit` complete periods of `cn` starting at or after t0."""
        if cn == p.Cn.DAY_DATA:
            return await self._days(t0, limit)
        table, width = PERIOD_TABLES[cn]
        first = await self.store.call(next_start, self.db, table, t0, self.channels)
        if first is None:
            return []
        rows = await self.store.call(period_rows, self.db, table, first, first + limit * width,
                                     self.channels)
        by_start: dict[float, dict[str, PeriodValue]] = {}
        for row in rows:
            by_start.setdefault(row.ts, {})[row.channel] = row
        return [self.builder.period(cn, ts, ts + width, values)
                for ts, values in sorted(by_start.items())]

    async def _days(self, t0: float, limit: int) -> list[Upload]:
        """Days whose last hour is stored (hours are closed in order, none skipped)."""
        hours = schema.hours
        last = await self.store.call(last_start, self.db, hours, self.channels)
        uploads: list[Upload] = []
        while len(uploads) < limit and last is not None:
            first = await self.store.call(next_start, self.db, hours, t0, self.channels)
            if first is None:
                break
            start, end = day_bounds(first, self.tz)
            if last < end - HOUR:
                break
            rows = await self.store.call(period_rows, self.db, hours, start, end, self.channels)
            uploads.append(self.builder.day(start, end, rows))
            t0 = end
        return uploads

    async def pending(self, cn: int, t0: float) -> tuple[int, float | None]:
        """Stored periods of `cn` from t0 on that are complete (the backlog), and the
        start of the first."""
        if cn != p.Cn.DAY_DATA:
            table, _ = PERIOD_TABLES[cn]
            return await self.store.call(pending_starts, self.db, table, t0, self.channels)
        last = await self.store.call(last_start, self.db, schema.hours, self.channels)
        first = await self.store.call(next_start, self.db, schema.hours, t0, self.channels)
        if last is None or first is None:
            return 0, None
        count, start = 0, day_bounds(first, self.tz)[0]
        while (end := day_bounds(start, self.tz)[1]) - HOUR <= last:
            count, start = count + 1, end
        return count, None if count == 0 else day_bounds(first, self.tz)[0]

    async def between(self, cn: int, t0: float, t1: float, batch: int = 60) -> list[Upload]:
        """Every period of `cn` starting in [t0, t1] (a platform's history request)."""
        out: list[Upload] = []
        while uploads := await self.after(cn, t0, batch):
            out.extend(u for u in uploads if u.start <= t1)
            if uploads[-1].start >= t1:
                break
            t0 = uploads[-1].end
        return out
