"""The pre-serialised sealed days of /v1/hours/columns (cemsd/api/routes/sealed_days.py) give the
bytes of the answer built from the rows in one go, and never outlive what they were built
from: a correction, a new substitution, a newly sealed day, a changed chain hash.

The reference is the answer as /v1/hours/columns built it before any day was kept: the
arrays of all the rows of the span, serialised at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from operator import itemgetter

import pydantic_core
import pytest
from sqlalchemy import insert, select, text
from test_packed_readings import _alembic

from cemsd import chain
from cemsd.api.columns_compact import decode_channel, decode_steps
from cemsd.api.routes.sealed_days import DAY, FIELDS, channel_json, query
from cemsd.records import audit
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import hour_row, tampering

HOUR = 3600
DAY0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
T0 = DAY0 - 5 * HOUR  # 5 hours of the day before: a partial first day
HOURS = 5 + 3 * 24 + 7  # three whole UTC days and 7 hours of a fourth
SEALED = 5 + 2 * 24 + 10  # the first two whole days sealed, and 10 hours of the third
CHANNELS = ("a.n2o", "b.flow")
SPANS = [(T0, T0 + HOURS * HOUR), (DAY0, DAY0 + 2 * DAY), (DAY0 + 7 * HOUR, DAY0 + 30 * HOUR),
         (DAY0 + 0.5, DAY0 + 2 * DAY - 0.5)]  # a whole day but for half a second: not kept
CREATED = T0 + (HOURS + 1) * HOUR


def _unit(channel: str, hour: int) -> str:
    if channel == "b.flow":  # the unit changes in the middle of the first whole day
        return "Nm3/h" if hour >= 5 + 12 else "m3/h"
    return "ppm"


def _value(channel: str, hour: int) -> float | None:
    if hour % 11 == 0:
        return None
    if (channel, hour) == ("b.flow", 20):
        return math.nan
    return 100.0 + hour * 0.37 + (channel == "b.flow") * 1000


def _fill(db: Database) -> None:
    db.insert_aggregates(schema.hours, [
        hour_row(name, T0 + h * HOUR, _value(name, h), _unit(name, h), CREATED, h % 11 != 0)
        for name in CHANNELS for h in range(HOURS)])
    for hour in (11, 33):
        _substitute(db, "a.n2o", hour, 7.0)
    chain.seal_due(db, T0 + SEALED * HOUR, sealed_at=CREATED)


def _substitute(db: Database, name: str, hour: int, value: float) -> None:
    s = schema.substitutions.c
    at = T0 + hour * HOUR
    before = db.fetch(select(s.id, s.revision).where(s.channel == name, s.ts == at)
                      .order_by(s.revision.desc()))
    audit_id = audit(db, CREATED, "li", "correction.manual", name, "revised") if before else None
    with db.transaction() as conn:
        conn.execute(insert(schema.substitutions), [{
            "channel": name, "ts": at, "value": value, "unit": "ppm", "flag": "S",
            "method": "hj75.missing.before_after_mean", "period_kind": "missing",
            "period_start": at, "period_hours": 1, "capture_rate": 0.9, "source_hours": "[]",
            "created_at": CREATED, "revision": before[0].revision + 1 if before else 0,
            "supersedes": before[0].id if before else None, "audit_id": audit_id}])


def _correct(db: Database, name: str, hour: int, value: float) -> None:
    """An audited correction: the hour's next revision (not sealed yet)."""
    h = schema.hours.c
    current = db.fetch(select(schema.hours).where(h.channel == name, h.ts == T0 + hour * HOUR)
                       .order_by(h.revision.desc()))[0]
    audit_id = audit(db, CREATED, "li", "correction.manual", name, "corrected")
    copied = ("channel", "ts", "minimum", "maximum", "n_valid", "n_expected", "flag", "unit")
    with db.transaction() as conn:
        conn.execute(insert(schema.hours), [{
            **{k: getattr(current, k) for k in copied}, "value": value, "reason": "corrected",
            "created_at": CREATED, "revision": current.revision + 1, "supersedes": current.id,
            "audit_id": audit_id}])


def reference(db: Database, t0: float, t1: float, name: str) -> bytes:
    """The channel's object as the endpoint built it from all the rows at once."""
    rows = db.fetch(query(t0, t1, (name,)))
    if not rows:
        return b""
    columns = {field: list(map(itemgetter(i), rows)) for i, field in enumerate(FIELDS)}
    units = columns["unit"]
    item = {"channel": name, "unit": units[-1], "units": units if len(set(units)) > 1 else None,
            **{field: columns[field] for field in FIELDS[2:]}}
    return pydantic_core.to_json(item, inf_nan_mode="null")


def assert_same_bytes(db: Database, channels: tuple[str, ...] = CHANNELS) -> None:
    """Both layouts say what the rows say: the default byte for byte, the compact one once
    decoded."""
    for t0, t1 in SPANS:
        for name in channels:
            expected = reference(db, t0, t1, name)
            assert channel_json(db, t0, t1, name) == expected, (name, t0)
            compact = channel_json(db, t0, t1, name, "compact")
            assert bool(compact) == bool(expected), (name, t0)
            if expected:
                decoded = decode_channel(json.loads(compact))
                assert decoded == json.loads(expected), (name, t0)


def kept(db: Database) -> dict[tuple[str, int], tuple[int, int]]:
    """(channel, day) -> (hour rows, last hour id) of the kept days."""
    k = schema.hour_column_days.c
    return {(r.channel, r.day): (r.hours, r.last_hour_id)
            for r in db.fetch(select(k.channel, k.day, k.hours, k.last_hour_id))}


@pytest.fixture
def filled(db: Database) -> Iterator[Database]:
    _fill(db)
    assert_same_bytes(db)  # builds and keeps the sealed whole days
    yield db


def test_sealed_whole_days_are_kept_and_give_the_same_bytes(filled: Database) -> None:
    assert set(kept(filled)) == {(name, DAY0 + d * DAY) for name in CHANNELS for d in (0, 1)}
    assert_same_bytes(filled)  # now from the kept days
    body = channel_json(filled, T0, T0 + HOURS * HOUR, "b.flow")
    assert b'"units":["m3/h"' in body and b"NaN" not in body and b",null," in body


@pytest.mark.parametrize("layout", ["arrays", "compact"])
@pytest.mark.parametrize("name", CHANNELS)  # a.n2o: one unit, joined by the database;
def test_kept_days_are_served_not_rebuilt(filled: Database, name: str,  # b: mixed
                                          layout: str) -> None:
    k = schema.hour_column_days.c
    column = k[f"{'json' if layout == 'arrays' else layout}_flag"]
    day = (k.channel == name) & (k.day == DAY0 + DAY)
    flags = filled.fetch(select(column).where(day))[0][0]
    with filled.transaction() as conn:  # a marker only a kept day can carry into the answer
        conn.execute(schema.hour_column_days.update().where(day).values(
            {column: flags.replace('"N"', '"X"')}))
    body = channel_json(filled, T0, T0 + HOURS * HOUR, name, layout)
    assert b'"X"' in body
    expected = reference(filled, T0, T0 + HOURS * HOUR, name)
    if layout == "arrays":
        assert body.replace(b'"X"', b'"N"') == expected
    else:
        compact = json.loads(body.replace(b'"X"', b'"N"'))
        assert decode_channel(compact) == json.loads(expected)
        assert len(compact["flag"]) < 4 * 24 / 2  # runs: far fewer than the hours


def test_a_correction_of_a_sealed_hour_makes_its_day_stale(filled: Database) -> None:
    day = DAY0 + DAY
    before = kept(filled)
    _correct(filled, "a.n2o", 5 + 24 + 3, 55.5)  # in the second whole day, sealed
    assert_same_bytes(filled)
    assert b"55.5" in channel_json(filled, day, day + DAY, "a.n2o")
    assert ("a.n2o", day) not in kept(filled)  # its correction is not sealed yet
    chain.seal_due(filled, T0 + SEALED * HOUR, sealed_at=CREATED)
    assert_same_bytes(filled)
    rows, last_id = kept(filled)[("a.n2o", day)]
    assert (rows, last_id > before[("a.n2o", day)][1]) == (before[("a.n2o", day)][0] + 1, True)
    assert kept(filled)[("b.flow", day)] == before[("b.flow", day)]  # untouched


def test_a_new_substitution_makes_its_day_stale(filled: Database) -> None:
    _substitute(filled, "a.n2o", 33, 8.25)  # a revision of the substitute (second day)
    _substitute(filled, "a.n2o", 22, 9.75)  # a first substitute (first whole day)
    assert_same_bytes(filled)
    body = channel_json(filled, DAY0, DAY0 + 2 * DAY, "a.n2o")
    assert b"8.25" in body and b"9.75" in body


def test_a_newly_sealed_day_is_kept(filled: Database) -> None:
    chain.seal_due(filled, T0 + HOURS * HOUR, sealed_at=CREATED)
    assert_same_bytes(filled)
    days = {day for _, day in kept(filled)}
    assert days == {DAY0, DAY0 + DAY, DAY0 + 2 * DAY}  # the partial days never


def test_a_changed_chain_hash_is_not_served_and_verify_still_sees_a_changed_row(
        filled: Database) -> None:
    link, h = schema.chain.c, schema.hours.c
    last = filled.fetch(select(link.seq, link.record_id).join_from(
        schema.chain, schema.hours, h.id == link.record_id).where(
        link.record_table == "hours", h.channel == "a.n2o", h.ts < DAY0 + DAY)
        .order_by(link.seq.desc()).limit(1))[0]
    with tampering(filled) as conn:
        conn.execute(text("UPDATE hours SET value = 1234.5 WHERE id = :id"),
                     {"id": last.record_id})
    body = channel_json(filled, DAY0, DAY0 + DAY, "a.n2o")
    assert b"1234.5" not in body  # the value as sealed: the day's chain hash is unchanged
    assert not chain.verify(filled).ok  # and verify, which reads the rows, names the change
    with tampering(filled) as conn:
        conn.execute(text("UPDATE chain SET chain_hash = :c WHERE seq = :s"),
                     {"c": "ab" * 32, "s": last.seq})
    assert_same_bytes(filled)  # no longer the kept day: the rows as they are now
    assert b"1234.5" in channel_json(filled, DAY0, DAY0 + DAY, "a.n2o")


def test_hours_missing_from_the_span_are_runs_of_starts(db: Database) -> None:
    """Absent hours (the daemon stopped) in sealed and unsealed days: the compact starts
    skip them, and the kept days decode as the rows say."""
    present = [h for h in range(HOURS) if not 30 <= h < 40 and h not in (3, 60, 61)]
    db.insert_aggregates(schema.hours, [
        hour_row("c.gap", T0 + h * HOUR, _value("c.gap", h), "ppm", CREATED, h % 11 != 0)
        for h in present])
    chain.seal_due(db, T0 + SEALED * HOUR, sealed_at=CREATED)
    for _ in range(2):  # from the rows, then from the kept days
        assert_same_bytes(db, ("c.gap",))
    assert {day for _, day in kept(db)} == {DAY0, DAY0 + DAY}
    starts = json.loads(channel_json(db, T0, T0 + HOURS * HOUR, "c.gap", "compact"))[
        "start_epoch"]
    assert decode_steps(starts) == [int(T0) + h * HOUR for h in present]
    stored = [row.value for row in db.fetch(query(T0, T0 + HOURS * HOUR, ("c.gap",)))]
    served = json.loads(channel_json(db, T0, T0 + HOURS * HOUR, "c.gap", "compact"))["value"]
    assert served == [None if v is None or math.isnan(v) else v for v in stored]  # exact
    assert len(starts) < 3 * 12  # a few runs, not an item per hour


def test_migration_0015_empties_the_kept_days_and_keeps_both_layouts_again(
        filled: Database) -> None:
    _alembic(filled, "downgrade", "0014")  # kept days of the arrays layout only
    assert kept(filled)
    _alembic(filled, "upgrade", "head")
    assert kept(filled) == {}  # a cache: dropped, not converted
    assert_same_bytes(filled)
    k = schema.hour_column_days.c
    rows = filled.fetch(select(k.compact_flag, k.compact_seal_seq))
    assert len(rows) == len(kept(filled)) == 4 and all(all(row) for row in rows)
