"""One writer per database, enforced where the data lives, for the daemon's whole life.

- SQLite: an exclusive `flock` on `<database>.lock` beside the database file, reached by
  its resolved path, so the same file named through `state_dir` and through an explicit
  `[storage] url` (or a symlink) is one lock. The holder writes its pid, host, start time
  and configuration into the file for the next one to name. The database file itself is
  not locked: WAL readers (`cemsd hours`, `verify`, `report`, `serve`, the API's own
  connections) go on reading while the daemon writes.
- PostgreSQL: `pg_try_advisory_lock` on a key derived from the plant id, held by a
  dedicated connection for the daemon's life (advisory locks belong to one database and end
  with their session). The connection's `application_name` names the holder; a refused
  start reads it back from `pg_stat_activity`.

The daemon takes the lock before it migrates or records a run, so a refused start changes
nothing in the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from cemsd.errors import CemsdError

APPLICATION_NAME = "cemsd writer"


class WriterLockError(CemsdError):
    """Another daemon writes this database (or the lock could not be taken)."""


class WriterLock:
    """Held from acquire() until release(); release() is idempotent."""

    def __init__(self, location: str, release: Any) -> None:
        self.location = location
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def acquire_writer_lock(url: str, plant_id: str, config_path: str = "") -> WriterLock:
    """The database's writer lock for this process, or WriterLockError naming the holder."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise WriterLockError(f"[storage] url is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:"):
            return WriterLock(":memory:", None)  # private to this process anyway
        return _lock_file(Path(path), config_path)
    if backend == "postgresql":
        return _advisory_lock(url, plant_id, config_path)
    raise WriterLockError(f"[storage] url: unsupported database {backend!r} (cemsd stores in "
                          "SQLite or PostgreSQL)")


def _holder(config_path: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config_path}


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    if holder.get("config"):
        parts.append(f"with {holder['config']}")
    return " ".join(parts)


# --- SQLite: a lock file beside the database ---------------------------------------------------


def lock_path(database: Path) -> Path:
    resolved = database.resolve()
    return resolved.with_name(resolved.name + ".lock")


def _lock_file(database: Path, config_path: str) -> WriterLock:
    path = lock_path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise WriterLockError(f"cannot create the writer lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WriterLockError(
            f"the database {database.resolve()} is written by another cemsd "
            f"({_describe_holder(holder)}; lock {path}): one writer per database, stop "
            "that daemon first or give this configuration its own database") from None
    except OSError as exc:
        os.close(fd)
        raise WriterLockError(f"cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder(config_path)) + "\n").encode(), 0)

    def release() -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays: removing it would race the next taker
        os.close(fd)  # closing the descriptor releases the flock

    return WriterLock(str(path), release)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- PostgreSQL: an advisory lock on the plant id --------------------------------------------


def advisory_key(plant_id: str) -> int:
    """A signed 64-bit key from the plant id (pg advisory locks take a bigint)."""
    digest = hashlib.sha256(f"cemsd writer {plant_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _advisory_lock(url: str, plant_id: str, config_path: str) -> WriterLock:
    holder = _holder(config_path)
    name = f"{APPLICATION_NAME} {plant_id} pid {holder['pid']} on {holder['host']}"[:63]
    engine = create_engine(url, poolclass=NullPool,
                           connect_args={"application_name": name})
    key = advisory_key(plant_id)
    try:
        conn = engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        conn.commit()  # the session holds the lock, not the transaction
    except SQLAlchemyError as exc:
        engine.dispose()
        raise WriterLockError(f"cannot take the writer lock on "
                              f"{make_url(url).render_as_string(hide_password=True)}: "
                              f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}") from None
    if not got:
        other = _advisory_holder(conn, key)
        conn.close()
        engine.dispose()
        raise WriterLockError(
            f"the database {make_url(url).render_as_string(hide_password=True)} is written "
            f"by another cemsd for plant {plant_id!r} ({other}): one writer per database, "
            "stop that daemon first")

    def release() -> None:
        _close(conn, engine, key)

    return WriterLock(f"advisory lock {key}", release)


def _advisory_holder(conn: Connection, key: int) -> str:
    query = text(
        "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1")
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(query, {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).first()
    except SQLAlchemyError:
        row = None
    if row is None:
        return "holder not visible to this role"
    return (f"session pid {row.pid}, application_name {row.application_name!r}, from "
            f"{row.client_addr or 'a local socket'} since {row.backend_start:%Y-%m-%d %H:%M:%S%z}")


def _close(conn: Connection, engine: Engine, key: int) -> None:
    with contextlib.suppress(SQLAlchemyError):
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        conn.commit()
    with contextlib.suppress(SQLAlchemyError):
        conn.close()
    engine.dispose()
