"""Readings on disk: bytes per reading (table plus indexes) and the writer's cost per reading,
the one-row-a-reading layout of migration 0012 ("before") against the packed blocks of 0013
("after"), both measured in this run; and the SQLite file's size across retention.

Readings are written as the daemon's writer writes them: one transaction per batch of
`batch_seconds` (1 s) of real time, every channel's readings of that second together.
Plants: the demo plant's channel set (config/demo.toml: 19 channels every 5 s) and 50
channels every 1 s. Values: status words and switches are small integers, measurements are
noisy values as the drivers decode them (float32 registers, integers scaled by 0.1);
--full-precision gives every measurement float64 noise, the worst case for packing.
Bytes are what the database holds for the readings: SQLite's `dbstat`
(pages of the tables and their indexes), PostgreSQL's pg_total_relation_size (heap, TOAST,
indexes, free space map), after VACUUM (ANALYZE) on PostgreSQL.

Usage:
    .venv/bin/python bench/bench_storage.py [--hours 24] [--pg-url URL] [--retention-hours 3]
Without --pg-url a private PostgreSQL server is started (tests/helpers.py, as the tests do).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    text,
)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from benchlib import machine_info

from cemsd.config import load_config
from cemsd.plan import compile_plan
from cemsd.store.database import MIGRATIONS, Database
from cemsd.store.schema import UTCDateTime

T0 = 1_780_272_000.0  # 2026-06-01 00:00 UTC
DEMO = Path(__file__).parent.parent / "config" / "demo.toml"
OLD_TABLES = ("readings",)
NEW_TABLES = ("reading_blocks", "reading_channels")
Batch = list[tuple[str, float, float | None, str, str | None]]
_OLD = Table("readings", MetaData(), Column("id", Integer, primary_key=True),
             Column("channel", String(100)), Column("ts", UTCDateTime),
             Column("value", Float(precision=53)), Column("flag", String(1)),
             Column("reason", Text))


def demo_channels() -> list[tuple[str, float]]:
    plan = compile_plan(load_config(DEMO))
    return [(ch.name, d.poll_interval) for d in plan.devices for ch in d.channels]


def fifty_channels() -> list[tuple[str, float]]:
    return [(f"line{i // 10}-dev{i % 10}.ch{i}", 1.0) for i in range(50)]


FULL_PRECISION = False  # --full-precision: every measurement with float64 noise


def decoded(name: str, x: float) -> float:
    """A measurement as the drivers deliver it: a float32 register widened, or a scaled
    16-bit integer (profiles: temperature, pressure, moisture at 0.1)."""
    if FULL_PRECISION:
        return x
    if any(k in name for k in ("temperature", "pressure", "moisture")) or name[-1] in "13579":
        return round(x / 0.1) * 0.1
    return float(np.float32(x))


def batches(channels: list[tuple[str, float]], seconds: int, start: float = T0
            ) -> Iterator[Batch]:
    """One writer batch a second: every reading whose poll fell in that second."""
    rng = np.random.default_rng(7)
    discrete = [any(k in name for k in ("status", "running", "open", "counter"))
                for name, _ in channels]
    for s in range(seconds):
        t = start + s
        batch: Batch = []
        for (name, interval), whole in zip(channels, discrete, strict=True):
            if s % round(interval):
                continue
            if whole:
                value = float(s // 3600 if "counter" in name else 0)
            else:
                value = decoded(name, 100.0 * (1 + 0.05 * math.sin(t / 600))
                                + rng.normal(0, 0.8))
            batch.append((name, t, value, "N", None))
        if batch:
            yield batch


# --- the two layouts ------------------------------------------------------------------------------


def at_revision(url: str, revision: str) -> Database:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    db = Database(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return db


def write_old(db: Database, batch: Batch) -> None:
    """How cemsd wrote a batch until 0013: a dict per reading, one row each."""
    with db.engine.begin() as conn:
        conn.execute(insert(_OLD), [dict(zip(("channel", "ts", "value", "flag", "reason"),
                                             row, strict=True)) for row in batch])


def write_new(db: Database, batch: Batch) -> None:
    db.insert_reading_rows(batch)


def fill(db: Database, write: Callable[[Database, Batch], None], batched: Iterable[Batch]
         ) -> tuple[int, float]:
    """Write the batches; returns (readings, CPU seconds of this process in the writes)."""
    n, cpu = 0, 0.0
    for batch in batched:
        started = time.process_time()
        write(db, batch)
        cpu += time.process_time() - started
        n += len(batch)
    return n, cpu


def stored_bytes(db: Database, tables: tuple[str, ...]) -> int:
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            listed = ",".join(f"'{t}'" for t in tables)
            names = conn.execute(text("SELECT name FROM sqlite_master WHERE tbl_name IN "
                                      f"({listed})")).scalars().all()
            listed = ",".join(f"'{n}'" for n in names)
            return int(conn.execute(text("SELECT coalesce(sum(pgsize), 0) FROM dbstat "
                                         f"WHERE name IN ({listed})")).scalar_one())
        return sum(int(conn.execute(text(f"SELECT pg_total_relation_size('{t}')"))
                       .scalar_one()) for t in tables)


def vacuum(db: Database) -> None:
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))


def read_old(db: Database, t0: float, t1: float) -> list[Any]:
    """How cemsd read a minute back until 0013."""
    c = _OLD.c
    return db.fetch(select(c.channel, c.ts, c.value, c.flag, c.reason)
                    .where(c.ts >= t0, c.ts < t1).order_by(c.ts, c.id))


def read_back(db: Database, read: Callable[[Database, float, float], list[Any]],
              seconds: int) -> float:
    """CPU µs per reading to read the last (up to) 30 minutes back a minute at a time, as
    the closer does."""
    first = max(0, seconds // 60 - 30)
    read(db, T0 + 60 * first, T0 + 60 * first + 60)  # compiled statements, caches: warm
    n, cpu = 0, 0.0
    for m in range(first, seconds // 60):
        started = time.process_time()
        n += len(read(db, T0 + 60 * m, T0 + 60 * (m + 1)))
        cpu += time.process_time() - started
    return cpu / n * 1e6


def measure(url: str, layout: str, channels: list[tuple[str, float]], seconds: int
            ) -> tuple[float, float, float]:
    """(bytes per reading, writer CPU µs per reading, read-back CPU µs per reading)."""
    old = layout == "before"
    db = at_revision(url, "0012") if old else at_revision(url, "head")
    try:
        n, cpu = fill(db, write_old if old else write_new, batches(channels, seconds))
        vacuum(db)
        size = stored_bytes(db, OLD_TABLES if old else NEW_TABLES)
        read = read_back(db, read_old if old else Database.readings_between, seconds)
    finally:
        db.close()
    return size / n, cpu / n * 1e6, read


def big_batches(url: str, layout: str) -> float:
    old = layout == "before"
    db = at_revision(url, "0012") if old else at_revision(url, "head")
    seconds = list(batches(fifty_channels(), 1800))
    minutes = ([row for second in seconds[i:i + 60] for row in second]
               for i in range(0, len(seconds), 60))
    try:
        n, cpu = fill(db, write_old if old else write_new, minutes)
    finally:
        db.close()
    return cpu / n * 1e6


def migration(url: str, hours: float) -> tuple[int, float]:
    """Readings of 50 ch / 1 s written in the 0012 layout, then migration 0013 timed:
    (readings, wall seconds)."""
    db = at_revision(url, "0012")
    try:
        n, _ = fill(db, write_old, batches(fifty_channels(), round(hours * 3600)))
    finally:
        db.close()
    started = time.perf_counter()
    at_revision(url, "head").close()
    return n, time.perf_counter() - started


# --- retention ----------------------------------------------------------------------------------


def retention(tmp: Path, hours: int, keep_hours: int) -> list[tuple[int, int, int]]:
    """50 channels at 1 s for `hours`, pruned hourly to `keep_hours` in the daemon's steps:
    (hour, file bytes, free pages) at the end of each hour."""
    path = tmp / "retention.db"
    db = at_revision(f"sqlite:///{path}", "head")
    sizes = []
    try:
        for hour in range(hours):
            for batch in batches(fifty_channels(), 3600, T0 + hour * 3600):
                db.insert_reading_rows(batch)
            before = T0 + (hour + 1 - keep_hours) * 3600
            while db.prune_readings(before, max_blocks=500):
                pass
            with db.engine.connect() as conn:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
                free = int(conn.execute(text("PRAGMA freelist_count")).scalar_one())
            sizes.append((hour + 1, path.stat().st_size, free))
    finally:
        db.close()
    return sizes


# --- main -----------------------------------------------------------------------------------------


def databases(tmp: Path, pg: Any) -> Iterator[tuple[str, Callable[[str], str]]]:
    yield "SQLite", lambda name: f"sqlite:///{tmp / name}.db"
    yield "PostgreSQL", lambda name: pg.create_database(name) if hasattr(pg, "create_database") \
        else _pg_database(pg, name)


def _pg_database(server_url: str, name: str) -> str:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0, help="span written per case")
    parser.add_argument("--pg-url", help="a PostgreSQL server (else a private one)")
    parser.add_argument("--retention-hours", type=int, default=3)
    parser.add_argument("--retention-span", type=int, default=10, help="hours written")
    parser.add_argument("--migrate-hours", type=float, default=2.0)
    parser.add_argument("--full-precision", action="store_true",
                        help="measurements with float64 noise (the worst case for packing)")
    args = parser.parse_args()
    global FULL_PRECISION
    FULL_PRECISION = args.full_precision
    print(machine_info())
    seconds = round(args.hours * 3600)
    server = None
    if args.pg_url:
        pg: Any = args.pg_url
    else:
        from helpers import PostgresServer

        server = pg = PostgresServer()
        server.start()
    plants = {"demo plant (19 ch / 5 s)": demo_channels(), "50 ch / 1 s": fifty_channels()}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            print(f"\nreadings written in 1 s batches over {args.hours:g} h; bytes on disk "
                  "per reading (tables + indexes), writer CPU per reading")
            print("and CPU per reading to read each minute back (closer), before -> after")
            print(f"{'database':<11} {'plant':<25} {'bytes/reading':>17} {'write µs':>17} "
                  f"{'read µs':>15}")
            for backend, url_for in databases(tmp, pg):
                for i, (plant, channels) in enumerate(plants.items()):
                    before = measure(url_for(f"before{i}"), "before", channels, seconds)
                    after = measure(url_for(f"after{i}"), "after", channels, seconds)
                    figures = " ".join(f"{b:6.1f} -> {a:5.1f} ({b / a:4.1f}x)"
                                       for b, a in zip(before, after, strict=True))
                    print(f"{backend:<11} {plant:<25} {figures}", flush=True)
            print("\nwriter CPU per reading in 60 s batches (a simulated run, a backlog), "
                  "50 ch, 30 min, before -> after")
            for backend, url_for in databases(tmp, pg):
                before, after = (big_batches(url_for(f"big{layout}"), layout)
                                 for layout in ("before", "after"))
                print(f"{backend:<11} {before:6.2f} -> {after:5.2f} ({before / after:4.1f}x)",
                      flush=True)
            print(f"\nmigration 0013 of {args.migrate_hours:g} h of 50 ch / 1 s")
            for backend, url_for in databases(tmp, pg):
                n, wall = migration(url_for("migrate"), args.migrate_hours)
                print(f"{backend:<11} {n} readings in {wall:.1f} s: {n / wall:,.0f} readings/s",
                      flush=True)
            print(f"\nSQLite file across retention ({args.retention_hours} h kept, 50 ch / 1 s,"
                  " pruned hourly in steps of 500 blocks)")
            for hour, size, free in retention(tmp, args.retention_span, args.retention_hours):
                print(f"  after hour {hour:2d}: {size / 2**20:7.2f} MiB, {free} free pages")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
