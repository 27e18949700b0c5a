"""Synchronous database operations. The daemon calls them on one worker thread
(store.writer.Store), the CLI calls them directly.

SQLite runs in WAL mode with synchronous=NORMAL: a committed transaction survives a
killed process (kill -9); only a power loss can take the last transactions.
"""

from __future__ import annotations

import ast
import logging
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    Engine,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from cemsd.errors import StorageError
from cemsd.store import packing, schema
from cemsd.store.progress import ProgressHook, Throttled

log = logging.getLogger(__name__)
PRUNE_STEP_BLOCKS = 500  # per transaction: a few ms of write lock, the writer goes between


class StoredReading(NamedTuple):
    channel: str
    ts: datetime
    value: float | None
    flag: str
    reason: str | None

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA recursive_triggers=ON")  # INSERT OR REPLACE fires delete triggers
    cursor.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def open_existing(url: str, upgrade: bool = False) -> Database:
    """A database that must already exist (every command but `run` and `db-upgrade`): a
    missing SQLite file, or a database without cemsd's schema (a mistyped state_dir or
    database name), is an error naming it, never a new empty database left behind.
    `upgrade` migrates an existing one to the current schema (commands that write)."""
    parsed = make_url(url)
    path = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and path != ":memory:" and not Path(path).exists():
        raise StorageError(f"no database at {path}: the daemon has not stored anything with "
                           "this configuration yet (check [storage] state_dir and url)")
    db = Database(url)
    try:
        if not db.has_schema():
            raise StorageError(f"{db.location} is not a cemsd database (no schema): check "
                               "[storage] state_dir and url, or run `cemsd db-upgrade`")
        if upgrade:
            db.upgrade()
    except BaseException:
        db.close()
        raise
    return db


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._channels: dict[str, int] = {}  # reading channel name -> id (committed)
        self._names: dict[int, str] = {}

    def close(self) -> None:
        self.engine.dispose()

    @property
    def location(self) -> str:
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            return str(Path(parsed.database or "").resolve())
        return parsed.render_as_string(hide_password=True)

    # --- schema ----------------------------------------------------------------------------

    def upgrade(self, progress: ProgressHook | None = None) -> None:
        """Bring the schema to the newest migration (idempotent). A database already at the
        newest one (every start but the first after an install or update) is left alone
        without loading alembic, which would stay in the daemon's memory (~10 MB).
        `progress` hears the steps of a long migration (cemsd/store/progress.py)."""
        if self.at_head():
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        started = time.monotonic()
        log.info("migrating the database schema", extra={"database": self.location})
        if progress is not None:
            progress("migrating the database schema")
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                cfg.attributes["progress"] = _logged(progress)
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot migrate {self.location}: {exc}") from exc
        log.info("database schema migrated", extra={
            "database": self.location, "seconds": round(time.monotonic() - started, 1)})

    def has_schema(self) -> bool:
        """The database holds cemsd's tables (its schema version is recorded)."""
        try:
            with self.engine.connect() as conn:
                return inspect(conn).has_table("alembic_version")
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open {self.location}: {_short(exc)}") from exc

    def at_head(self) -> bool:
        """The database's alembic revisions are exactly the heads of cemsd/migrations."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return False
                stored = {r[0] for r in conn.execute(text("SELECT version_num FROM "
                                                          "alembic_version"))}
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot migrate {self.location}: cannot read its schema "
                               f"version: {exc}") from exc
        return stored == migration_heads()

    # --- writes --------------------------------------------------------------------------------

    def _insert_ignoring_duplicates(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        raise StorageError(f"unsupported database {self.dialect}")

    def insert_readings(self, rows: Sequence[dict[str, Any]]) -> None:
        """Readings as dicts (channel, ts, value, flag, reason), in one transaction."""
        self.insert_reading_rows([(r["channel"], r["ts"], r["value"], r["flag"],
                                   r.get("reason")) for r in rows])

    def insert_reading_rows(self, rows: Sequence[tuple[Any, Any, Any, Any, Any]]) -> None:
        """Readings as (channel, ts, value, flag, reason) tuples, packed into blocks
        (store/packing.py) and written in one transaction: all of them or none."""
        if not rows:
            return
        try:
            with self.engine.begin() as conn:
                ids = self._channel_ids(conn, {r[0] for r in rows})
                blocks = [{"start": start, "n": len(cols), "data": packing.pack(cols)}
                          for start, cols in packing.blocks(packing.columns_of(rows, ids))]
                conn.execute(insert(schema.reading_blocks), blocks)
        except SQLAlchemyError as exc:
            raise StorageError(f"write to {self.location} failed: {_short(exc)}") from exc
        self._channels.update(ids)  # only ids that are committed are remembered

    def _channel_ids(self, conn: Connection, names: set[str]) -> dict[str, int]:
        """The id of each channel name, adding the names not seen before."""
        ids = {name: self._channels[name] for name in names if name in self._channels}
        bad = [name for name in names - ids.keys() if not isinstance(name, str)]
        if bad:
            raise StorageError(f"reading channel {bad[0]!r} is not a name")
        missing = sorted(names - ids.keys())
        if missing:
            c = schema.reading_channels.c
            conn.execute(self._insert_ignoring_duplicates(schema.reading_channels),
                         [{"name": name} for name in missing])
            ids.update(conn.execute(select(c.name, c.id).where(c.name.in_(missing))).all())
            too_high = [name for name in missing if ids[name] > packing.MAX_CHANNEL_ID]
            if too_high:
                raise StorageError(f"more than {packing.MAX_CHANNEL_ID} reading channels: "
                                   f"cannot add {too_high[0]!r}")
        return ids

    def insert_aggregates(self, table: Table, rows: Sequence[dict[str, Any]]
                          ) -> list[dict[str, Any]]:
        """Insert minute, hour or substitution rows; a row already present for (channel, ts,
        revision) is kept. Returns the rows this call inserted, in their order (what a
        listener may publish: a period closed twice is published once)."""
        if not rows:
            return []
        c = table.c
        statement = self._insert_ignoring_duplicates(table).returning(c.channel, c.ts,
                                                                      c.revision)
        try:
            with self.engine.begin() as conn:
                inserted = {(r.channel, r.ts.timestamp(), r.revision)
                            for r in conn.execute(statement, list(rows))}
        except SQLAlchemyError as exc:
            raise StorageError(f"write to {self.location} failed: {_short(exc)}") from exc
        return [row for row in rows if _period_key(row) in inserted]

    def _execute_many(self, statement: Any, rows: Sequence[dict[str, Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(statement, list(rows))
        except SQLAlchemyError as exc:
            raise StorageError(f"write to {self.location} failed: {_short(exc)}") from exc

    def upsert_channels(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert or update the channel rows; returns them as written (with updated_at)."""
        now = datetime.now(UTC)
        written = []
        with self.engine.begin() as conn:
            for row in rows:
                values = {**row, "updated_at": now}
                done = conn.execute(
                    update(schema.channels).where(schema.channels.c.name == row["name"]),
                    values,
                )
                if done.rowcount == 0:
                    conn.execute(insert(schema.channels), values)
                written.append(values)
        return written

    def prune_readings(self, before: float, max_blocks: int | None = None) -> int:
        """Delete the readings before `before`; returns how many. With `max_blocks`, one
        short transaction of at most that many blocks (0 returned: nothing left to prune);
        without, such steps until done. The writer's Store.prune_readings runs the steps
        as separate calls so that batches of new readings are written in between."""
        before_us = packing.epoch_us(before)
        if max_blocks is not None:
            return self._prune_step(before_us, max_blocks)
        removed = 0
        while step := self._prune_step(before_us, PRUNE_STEP_BLOCKS):
            removed += step
        return removed

    def _prune_step(self, before_us: int, max_blocks: int) -> int:
        b = schema.reading_blocks.c
        with self.transaction() as conn:
            # blocks that end before `before` (they span less than BLOCK_SPAN_US) go whole
            whole = conn.execute(
                select(b.id, b.n).where(b.start <= before_us - packing.BLOCK_SPAN_US)
                .limit(max_blocks)).all()  # any of them: no sort over the whole range
            if whole:
                conn.execute(delete(schema.reading_blocks)
                             .where(b.id.in_([row.id for row in whole])))
                return sum(row.n for row in whole)
            # the few that straddle it keep their newer readings, under the same id
            straddling = conn.execute(
                select(b.id, b.start, b.n, b.data)
                .where(b.start > before_us - packing.BLOCK_SPAN_US, b.start < before_us)
                .limit(max_blocks)).all()
            removed = 0
            for row in straddling:
                cols = packing.unpack(row.data, row.start)
                kept = cols.take(np.flatnonzero(cols.ts_us >= before_us))
                conn.execute(delete(schema.reading_blocks).where(b.id == row.id))
                if len(kept):
                    conn.execute(insert(schema.reading_blocks).values(
                        id=row.id, start=int(kept.ts_us[0]), n=len(kept),
                        data=packing.pack(kept)))
                removed += row.n - len(kept)
            return removed

    def start_run(self, started: float, clock: str, version: str, config_path: str,
                  config_sha256: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(schema.daemon_runs).values(
                    started_at=started, clock=clock, version=version,
                    config_path=config_path, config_sha256=config_sha256,
                    host=socket.gethostname(),
                )
            )
            return int(result.inserted_primary_key[0])

    def stop_run(self, run_id: int, stopped: float, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(schema.daemon_runs)
                .where(schema.daemon_runs.c.id == run_id)
                .values(stopped_at=stopped, exit_reason=reason)
            )

    def first_run_started(self) -> float | None:
        return as_epoch(self._fetch(select(func.min(schema.daemon_runs.c.started_at)))[0][0])

    # --- reads -----------------------------------------------------------------------------------

    def readings_between(self, t0: float, t1: float) -> list[StoredReading]:
        """Readings in [t0, t1) in time order, ties in the order they were written."""
        cols = self.reading_columns(t0, t1)
        names = self.channel_names(set(cols.channel.tolist()))
        return packing.rows(cols, names, StoredReading._make)

    def reading_columns(self, t0: float, t1: float) -> packing.Columns:
        """`readings_between` as columns (channel ids: `channel_names`), for callers
        that work on arrays: no Python object per reading."""
        t0_us, t1_us = packing.epoch_us(t0), packing.epoch_us(t1)
        b = schema.reading_blocks.c
        # no ORDER BY id in SQL: the planner would walk the whole table in id order
        rows = sorted(self._fetch(select(b.id, b.start, b.data).where(
            b.start > t0_us - packing.BLOCK_SPAN_US, b.start < t1_us)))
        cols = packing.concat([packing.unpack(data, start) for _, start, data in rows])
        inside = np.flatnonzero((cols.ts_us >= t0_us) & (cols.ts_us < t1_us))
        return cols.take(inside[np.argsort(cols.ts_us[inside], kind="stable")])

    def channel_names(self, ids: set[int]) -> dict[int, str]:
        """Names of reading channel ids (the lookup table is read again for a new id)."""
        if not ids <= self._names.keys():
            c = schema.reading_channels.c
            self._names = dict(self._fetch(select(c.id, c.name)))
        unknown = ids - self._names.keys()
        if unknown:
            raise StorageError(f"{self.location}: reading blocks name channel id "
                               f"{min(unknown)}, which reading_channels does not have")
        return self._names

    def aggregates_between(
        self,
        table: Table,
        t0: float,
        t1: float,
        channels: Sequence[str] | None = None,
        current: bool = True,
    ) -> list[Any]:
        """Minute or hour rows in [t0, t1), by time and channel; by default only the
        current revision of each period (a correction supersedes, never overwrites)."""
        c = table.c
        query = select(table).where(c.ts >= t0, c.ts < t1)
        if channels:
            query = query.where(c.channel.in_(list(channels)))
        rows = self._fetch(query.order_by(c.ts, c.channel, c.revision))
        if not current:
            return rows
        latest: dict[tuple[str, Any], Any] = {}
        for row in rows:
            latest[(row.channel, row.ts)] = row  # the highest revision comes last
        return list(latest.values())

    def last_ts(self, table: Table) -> float | None:
        return as_epoch(self._fetch(select(func.max(table.c.ts)))[0][0])

    def first_reading_ts(self) -> float | None:
        first = self._fetch(select(func.min(schema.reading_blocks.c.start)))[0][0]
        return None if first is None else first / 1_000_000

    def channel_rows(self) -> list[Any]:
        return self._fetch(select(schema.channels).order_by(schema.channels.c.name))

    # --- for modules with their own tables (API tokens, hash chain) -----------------------------

    def fetch(self, query: Any) -> list[Any]:
        """Run a read query; a database error becomes StorageError."""
        return self._fetch(query)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; a database error becomes StorageError (nothing committed)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"write to {self.location} failed: {_short(exc)}") from exc

    def _fetch(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).all())
        except SQLAlchemyError as exc:
            raise StorageError(f"read from {self.location} failed: {_short(exc)}") from exc



MIGRATION_LOG_SECONDS = 30.0  # a long migration's progress in the log at most this often


def _logged(progress: ProgressHook | None) -> ProgressHook:
    """Each step to the caller's hook; every MIGRATION_LOG_SECONDS one to the log."""
    to_log = Throttled(lambda message: log.info("migrating", extra={"progress": message}),
                       MIGRATION_LOG_SECONDS)

    def step(message: str) -> None:
        to_log(message)
        if progress is not None:
            progress(message)
    return step


def migration_heads(versions: Path = MIGRATIONS / "versions") -> set[str]:
    """Revisions of the migration files that no other file names as its down_revision,
    read from the files' `revision` / `down_revision` assignments (as alembic does)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                name, value = node.targets[0].id, node.value
                if name == "revision":
                    revisions.add(ast.literal_eval(value))
                elif name == "down_revision":
                    down = ast.literal_eval(value)
                    parents.update((down,) if isinstance(down, str) else down or ())
    return revisions - parents


def _period_key(row: dict[str, Any]) -> tuple[str, float, int]:
    ts = row["ts"]
    return (row["channel"], ts if isinstance(ts, int | float) else ts.timestamp(),
            row.get("revision") or 0)


def as_epoch(value: Any) -> float | None:
    """An aggregate over a timestamp column: SQLite returns its stored text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC).timestamp()


def _short(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
