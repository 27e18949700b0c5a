"""Tables. Every timestamp is UTC (naive in the database, aware in Python).

Minute and hour tables share one shape: value with min/max, valid and expected
sub-value counts, flag, reason and unit, unique per (channel, ts) so that closing a
period twice (after a restart) can never duplicate it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Accepts aware datetimes or epoch seconds; stores naive UTC; returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


Identifier = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only
Double = Float(precision=53)

readings = Table(
    "readings",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("channel", String(100), nullable=False),
    Column("ts", UTCDateTime, nullable=False),
    Column("value", Double),
    Column("flag", String(1), nullable=False),
    Column("reason", Text),
    Index(None, "ts", "channel"),
)


def _aggregate_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Identifier, primary_key=True, autoincrement=True),
        Column("channel", String(100), nullable=False),
        Column("ts", UTCDateTime, nullable=False),  # period start
        Column("value", Double),
        Column("minimum", Double),
        Column("maximum", Double),
        Column("n_valid", Integer, nullable=False),
        Column("n_expected", Integer, nullable=False),
        Column("flag", String(1), nullable=False),
        Column("reason", Text),
        Column("unit", String(16), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        UniqueConstraint("channel", "ts"),
        Index(None, "ts"),
    )


minutes = _aggregate_table("minutes")
hours = _aggregate_table("hours")

channels = Table(
    "channels",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("device", String(64)),
    Column("key", String(64)),
    Column("role", String(32)),
    Column("point", String(64)),
    Column("unit", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("range_low", Double),
    Column("range_high", Double),
    Column("description", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

daemon_runs = Table(
    "daemon_runs",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("clock", String(32), nullable=False),
    Column("version", String(32), nullable=False),
    Column("config_path", Text),
    Column("config_sha256", String(64)),
    Column("host", String(255)),
    Column("exit_reason", Text),
)
