"""HJ 212 cursors and period queries on SQLite and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from cemsd.hj212.messages import MessageBuilder
from cemsd.hj212.store import (
    PeriodSource,
    last_start,
    load_cursors,
    next_start,
    period_rows,
    save_cursor,
)
from cemsd.settings.hj212 import Hj212Platform
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.writer import Store

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=TZ).timestamp()  # plant-local midnight


def _row(channel: str, ts: float, value: float, revision: int = 0, flag: str = "N") -> dict:
    return {"channel": channel, "ts": ts, "value": value, "minimum": value, "maximum": value,
            "n_valid": 60, "n_expected": 60, "flag": flag, "reason": None, "unit": "mg/m3",
            "created_at": ts + 60, "revision": revision}


def test_cursor_is_saved_and_moved(db: Database) -> None:
    assert load_cursors(db, "prov") == {}
    save_cursor(db, "prov", 2051, T0)
    save_cursor(db, "prov", 2061, T0 + 3600)
    save_cursor(db, "prov", 2051, T0 + 60)
    save_cursor(db, "other", 2051, T0 + 600)
    assert load_cursors(db, "prov") == {2051: T0 + 60, 2061: T0 + 3600}
    assert load_cursors(db, "other") == {2051: T0 + 600}


def test_queries_skip_gaps_and_take_the_highest_revision(db: Database) -> None:
    db.insert_aggregates(schema.minutes, [
        _row("a", T0, 1.0), _row("a", T0 + 60, 2.0), _row("a", T0 + 60, 2.5, revision=1),
        _row("b", T0 + 60, 7.0), _row("a", T0 + 600, 3.0), _row("z", T0 + 900, 9.0)])
    assert next_start(db, schema.minutes, T0 + 1, ["a", "b"]) == T0 + 60
    assert next_start(db, schema.minutes, T0 + 61, ["a"]) == T0 + 600
    assert next_start(db, schema.minutes, T0 + 601, ["a", "b"]) is None
    assert last_start(db, schema.minutes, ["a", "b"]) == T0 + 600
    rows = period_rows(db, schema.minutes, T0, T0 + 3600, ["a", "b"])
    assert [(r.channel, r.ts - T0, r.value) for r in rows] == [
        ("a", 0, 1.0), ("a", 60, 2.5), ("b", 60, 7.0), ("a", 600, 3.0)]


def _source(db: Database) -> tuple[PeriodSource, Store]:
    platform = Hj212Platform(name="p", host="h", port=1, mn="A" * 24, pw="1",
                             codes={"a": "c1"})
    store = Store(db)
    return PeriodSource(store, MessageBuilder(platform, {"a": "mg/m3"}, TZ), TZ), store


def test_period_source_reads_minutes_in_order_across_gaps(db: Database) -> None:
    db.insert_aggregates(schema.minutes, [_row("a", T0 + 60 * i, float(i))
                                          for i in (0, 1, 2, 30, 31)])
    source, store = _source(db)

    async def read() -> tuple[list, list, list]:
        first = await source.after(2051, T0, 2)
        rest = await source.after(2051, first[-1].end, 60)
        history = await source.between(2051, T0 + 60, T0 + 1800)
        return first, rest, history

    try:
        first, rest, history = asyncio.run(read())
    finally:
        asyncio.run(store.close())
    assert [u.start - T0 for u in first] == [0, 60]
    assert [u.start - T0 for u in rest] == [120, 1800, 1860]
    assert [u.end - u.start for u in rest] == [60, 60, 60]
    assert [u.start - T0 for u in history] == [60, 120, 1800]
    assert dict(history[-1].cp[1]) == {"c1-Min": "30", "c1-Avg": "30", "c1-Max": "30",
                                       "c1-Flag": "N"}


def test_a_day_is_sent_once_its_last_hour_is_stored(db: Database) -> None:
    db.insert_aggregates(schema.hours, [_row("a", T0 + 3600 * i, 10.0) for i in range(23)])
    source, store = _source(db)
    try:
        before = asyncio.run(source.after(2031, T0, 5))
        db.insert_aggregates(schema.hours, [_row("a", T0 + 23 * 3600, 34.0)])
        after = asyncio.run(source.after(2031, T0, 5))
    finally:
        asyncio.run(store.close())
    assert before == []
    assert [(u.cn, u.start, u.end) for u in after] == [(2031, T0, T0 + 86400)]
    assert dict(after[0].cp[1]) == {"c1-Min": "10", "c1-Avg": "11", "c1-Max": "34",
                                    "c1-Flag": "N"}  # (23 x 10 + 34) / 24
