"""Readings packed into blocks (cemsd/store/packing.py): the layout keeps every reading
exactly, migration 0013 converts a database written with the one-row-a-reading table (0012)
and back, and pruning works in short steps."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from click.testing import CliRunner
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, insert, select
from test_cli import _scenario as cli_scenario

from cemsd.cli import main
from cemsd.errors import StorageError
from cemsd.flags import Flag
from cemsd.readings import Reading
from cemsd.store import packing, schema, writer
from cemsd.store.database import MIGRATIONS, Database
from cemsd.store.schema import UTCDateTime
from cemsd.store.writer import Store
from helpers import analyzer_and_flow_plant, free_port, run_virtual, write_config, write_scenario

T0 = 1_780_272_000.0  # 2026-06-01 00:00 UTC
HOUR = 3600.0

# the readings table as 0012 left it, written the way cemsd wrote it until 0013
_OLD = Table("readings", MetaData(), Column("id", Integer, primary_key=True),
             Column("channel", String(100)), Column("ts", UTCDateTime),
             Column("value", Float(precision=53)), Column("flag", String(1)),
             Column("reason", Text))


def _alembic(db: Database, verb: str, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, revision)


def _plain(rows: Any) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples; NaN compares equal to itself."""
    return [(r.channel, r.ts.timestamp(), "nan" if isinstance(r.value, float)
             and math.isnan(r.value) else r.value, r.flag, r.reason) for r in rows]


def _old_rows(db: Database) -> list[tuple[Any, ...]]:
    c = _OLD.c
    return _plain(db.fetch(select(c.channel, c.ts, c.value, c.flag, c.reason)
                           .order_by(c.ts, c.id)))


def _awkward_readings(db: Database) -> list[dict[str, Any]]:
    """Readings that test the layout: missing values, reasons, ties written out of time
    order, microseconds, a span of several blocks, a NaN where the database keeps one."""
    rows = []
    for i in range(400):
        for channel in ("analyzer.n2o", "flow.velocity", "analyzer.o2"):
            ok = i % 37 != 5
            rows.append({"channel": channel, "ts": T0 + 2.5 * i + 0.000_123 * (i % 3),
                         "value": 10.0 + math.sin(i) if ok else None,
                         "flag": "N" if ok else "B",
                         "reason": None if ok else f"no reply from {channel.split('.')[0]}"})
    rows += [{"channel": "analyzer.n2o", "ts": T0 + 7.5, "value": -1.0, "flag": "D",
              "reason": "restart on a polled slot"},  # a tie, written long after
             {"channel": "late.one", "ts": T0 - 30.0, "value": 0.0, "flag": "M",
              "reason": None}]
    if db.dialect == "postgresql":  # SQLite has always stored NaN as NULL
        rows.append({"channel": "analyzer.o2", "ts": T0 + 9.0, "value": math.nan,
                     "flag": "N", "reason": None})
    return rows


def test_migration_converts_the_reading_rows_exactly_and_back(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "MIGRATION_CHUNK", 500)  # several chunks
    _alembic(db, "downgrade", "0012")
    with db.transaction() as conn:
        conn.execute(insert(_OLD), _awkward_readings(db))
    before = _old_rows(db)

    _alembic(db, "upgrade", "head")
    assert db.at_head()
    assert _plain(db.readings_between(0, 2e9)) == before
    assert _plain(db.readings_between(T0, T0 + 60)) == [r for r in before
                                                          if T0 <= r[1] < T0 + 60]
    assert db.first_reading_ts() == T0 - 30.0
    assert db.fetch(select(schema.reading_blocks.c.id))  # and readings went into blocks

    _alembic(db, "downgrade", "0012")
    assert _old_rows(db) == before
    _alembic(db, "upgrade", "head")
    assert _plain(db.readings_between(0, 2e9)) == before


def test_blocks_keep_order_and_survive_a_partial_prune(db: Database) -> None:
    rows = _awkward_readings(db)
    db.insert_readings(rows[:600])
    db.insert_readings(rows[600:])
    everything = _plain(db.readings_between(0, 2e9))
    assert len(everything) == len(rows)
    assert [r[1] for r in everything] == sorted(r[1] for r in everything)
    cut = T0 + 100.2  # inside a block: it keeps its newer readings
    expected = [r for r in everything if r[1] >= cut]
    removed = 0
    while step := db.prune_readings(cut, max_blocks=1):  # one block per step
        removed += step
    assert removed == len(everything) - len(expected)
    assert _plain(db.readings_between(0, 2e9)) == expected
    assert db.first_reading_ts() == expected[0][1]
    assert db.prune_readings(cut) == 0


def test_columns_are_the_rows_as_arrays(db: Database) -> None:
    db.insert_readings(_awkward_readings(db))
    rows = db.readings_between(T0, T0 + 300)
    cols = db.reading_columns(T0, T0 + 300)
    names = db.channel_names(set(cols.channel.tolist()))
    assert [names[c] for c in cols.channel.tolist()] == [r.channel for r in rows]
    assert np.array_equal(cols.ts_us, [packing.epoch_us(r.ts) for r in rows])
    assert (cols.flag & packing.MISSING != 0).tolist() == [r.value is None for r in rows]


# --- a database the daemon wrote, migrated ---------------------------------------------------


def _verify(config_path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify", "--config", str(config_path)])
    return result.exit_code, result.output


def _periods(db: Database, table: Any, before: float) -> list[tuple[Any, ...]]:
    return [(r.channel, r.ts.timestamp(), r.value, r.minimum, r.maximum, r.n_valid,
             r.n_expected, r.flag, r.reason)
            for r in db.aggregates_between(table, 0, before)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_daemon_database_migrated_keeps_minutes_hours_and_verify(
        tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    port = free_port()
    scenario = write_scenario(tmp_path, cli_scenario(port))
    end = scenario.epoch + HOUR + 300  # one hour closed, and then some

    def plant(name: str, url: str | None = None) -> Any:
        storage: dict[str, Any] = {"state_dir": str(tmp_path / name),
                                   "finalise_after_hours": 0}
        if url:
            storage["url"] = url
        return write_config(tmp_path / name, analyzer_and_flow_plant(name, port,
                                                                     storage=storage))

    (tmp_path / "written").mkdir()
    config = plant("written", request.getfixturevalue("pg_url")
                   if backend == "postgresql" else None)
    asyncio.run(run_virtual(config, scenario, until=end))
    db = Database(config.storage.database_url)
    readings = db.readings_between(0, 2e9)
    minutes, hours = _periods(db, schema.minutes, end), _periods(db, schema.hours, end)
    assert len(readings) > 1000 and minutes and hours

    _alembic(db, "downgrade", "0012")  # today's layout, rows as cemsd wrote them
    assert _old_rows(db) == _plain(readings)
    verified = _verify(config.source)
    _alembic(db, "upgrade", "head")
    assert _plain(db.readings_between(0, 2e9)) == _plain(readings)
    assert _verify(config.source) == verified and verified[0] == 0
    db.close()

    # the migrated readings alone give the same minutes and hours: a database that holds
    # nothing but them (SQLite for both), closed by a daemon's recovery at the end of the
    # first run
    (tmp_path / "again").mkdir()
    again = plant("again")
    fresh = Database(again.storage.database_url)
    fresh.upgrade()
    fresh.insert_readings([r._asdict() for r in readings])
    asyncio.run(run_virtual(again, scenario, until=end + 60, start=end))
    assert _periods(fresh, schema.minutes, end) == minutes
    assert _periods(fresh, schema.hours, end) == hours
    fresh.close()


async def test_the_writer_goes_between_prune_steps(db: Database,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune is many short transactions, each its own call on the store's worker thread:
    a batch flushed meanwhile is written before the prune ends, not behind all of it."""
    monkeypatch.setattr(writer, "PRUNE_STEP_BLOCKS", 1)
    step = packing.BLOCK_SPAN_US / 1e6 / 4  # four readings a block, ten blocks
    db.insert_readings([{"channel": "a.n2o", "ts": T0 + step * i, "value": float(i),
                         "flag": "N", "reason": None} for i in range(4 * 10)])
    calls: list[str] = []
    prune, write = db.prune_readings, db.insert_reading_rows

    def pruning(before: float, max_blocks: int | None = None) -> int:
        calls.append("prune")
        return prune(before, max_blocks)

    def writing(rows: Any) -> None:
        calls.append("write")
        write(rows)

    monkeypatch.setattr(db, "prune_readings", pruning)
    monkeypatch.setattr(db, "insert_reading_rows", writing)
    store = Store(db)
    pruned = asyncio.create_task(store.prune_readings(T0 + step * 40))
    await asyncio.sleep(0)  # the first step is on the worker thread
    store.add_readings([Reading("a.n2o", T0 + 900.0, 1.0, Flag.N)])
    await store.flush()
    assert await pruned == 40
    assert calls.count("prune") == 11  # ten blocks one by one, then nothing left
    assert calls.index("write") < len(calls) - 2  # between steps, long before the last
    assert [r.ts.timestamp() for r in db.readings_between(0, 2e9)] == [T0 + 900.0]
    await store.close()


@pytest.mark.parametrize(("row", "named"), [
    ({"ts": math.nan}, "reading time nan"),
    ({"value": "high"}, "not a number"),
    ({"flag": "NB"}, "reading flag 'NB'"),
    ({"channel": 7}, "reading channel 7"),
    ({"channel": None, "ts": T0 + 3}, "reading channel None"),
])
def test_a_bad_reading_is_named_and_the_batch_is_not_half_written(
        db: Database, row: dict[str, Any], named: str) -> None:
    good = {"channel": "a.n2o", "ts": T0, "value": 1.0, "flag": "N", "reason": None}
    db.insert_readings([good])
    batch = [{**good, "channel": "b.n2o", "ts": T0 + 1}, {**good, "ts": T0 + 2, **row}]
    with pytest.raises(StorageError, match=re.escape(named)):
        db.insert_readings(batch)
    assert [r.ts.timestamp() for r in db.readings_between(0, 2e9)] == [T0]


def test_the_conversion_tells_its_progress_chunk_by_chunk(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets the daemon extend systemd's start timeout while 0013 runs (decision 0038)."""
    monkeypatch.setattr(packing, "MIGRATION_CHUNK", 500)
    _alembic(db, "downgrade", "0012")
    readings = _awkward_readings(db)
    with db.transaction() as conn:
        conn.execute(insert(_OLD), readings)
    steps: list[str] = []
    db.upgrade(steps.append)
    total = len(readings)
    converted = [min(n, total) for n in range(500, total + 500, 500)]
    assert steps == ["migrating the database schema",
                     *(f"{n:,} of {total:,} readings converted to blocks" for n in converted)]
    steps.clear()
    db.upgrade(steps.append)  # at the head: nothing to do, nothing said
    assert steps == []
