"""Storage against SQLite and a real PostgreSQL server: migrations, idempotent period
inserts, time round trips, and that the migrated schema is exactly the declared one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cemsd.errors import StorageError
from cemsd.store import schema
from cemsd.store.database import Database

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC).timestamp()


def _minute(channel: str, ts: float, value: float | None, flag: str = "N") -> dict:
    return {"channel": channel, "ts": ts, "value": value, "minimum": value, "maximum": value,
            "n_valid": 30, "n_expected": 30, "flag": flag, "reason": None, "unit": "ppm",
            "created_at": ts + 60}


def test_migrated_schema_matches_declared_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []


def test_upgrade_twice_is_harmless(db: Database) -> None:
    db.upgrade()
    assert db.last_ts(schema.minutes) is None


def test_readings_round_trip_utc(db: Database) -> None:
    db.insert_readings([
        {"channel": "a.n2o", "ts": T0 + 1.5, "value": 2.5, "flag": "N", "reason": None},
        {"channel": "a.n2o", "ts": T0 + 3.0, "value": None, "flag": "B", "reason": "no reply"},
    ])
    rows = db.readings_between(T0, T0 + 60)
    assert [r.ts.timestamp() for r in rows] == [T0 + 1.5, T0 + 3.0]
    assert rows[0].ts.tzinfo is UTC
    assert [(r.value, r.flag, r.reason) for r in rows] == [
        (2.5, "N", None), (None, "B", "no reply")]
    assert db.first_reading_ts() == T0 + 1.5


def test_closing_a_period_twice_never_duplicates(db: Database) -> None:
    first = [_minute("a.n2o", T0, 10.0), _minute("b.n2o", T0, 20.0)]
    assert db.insert_aggregates(schema.minutes, first) == first
    again = [_minute("a.n2o", T0, 99.0), _minute("a.n2o", T0 + 60, 11.0)]
    # only what was stored comes back (the closer publishes exactly that)
    assert db.insert_aggregates(schema.minutes, again) == [again[1]]
    assert db.insert_aggregates(schema.minutes, again) == []
    rows = db.aggregates_between(schema.minutes, T0, T0 + 120)
    assert [(r.channel, r.ts.timestamp(), r.value) for r in rows] == [
        ("a.n2o", T0, 10.0),  # the first close stands; the second is ignored
        ("b.n2o", T0, 20.0),
        ("a.n2o", T0 + 60, 11.0),
    ]
    assert db.last_ts(schema.minutes) == T0 + 60


def test_prune_keeps_newer_readings(db: Database) -> None:
    db.insert_readings([
        {"channel": "a", "ts": T0 + i * 10.0, "value": float(i), "flag": "N", "reason": None}
        for i in range(10)
    ])
    assert db.prune_readings(T0 + 50) == 5
    assert [r.value for r in db.readings_between(0, 2e9)] == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_naive_datetime_is_refused(db: Database) -> None:
    with pytest.raises(StorageError):
        db.insert_readings([{"channel": "a", "ts": datetime(2026, 1, 1), "value": 1.0,
                             "flag": "N", "reason": None}])


def test_unreachable_database_is_a_clear_storage_error() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError, match="cannot migrate"):
        db.upgrade()
