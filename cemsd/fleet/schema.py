"""The collector's own schema (its own Alembic tree, cemsd/fleet/migrations/): hours and
events partitioned by month (native PostgreSQL `PARTITION BY RANGE`, partitions created on
demand by cemsd/fleet/store.py), the witness's links, heads and alarms, conflicts, tokens.

Times are naive UTC like the edge's (`UTCDateTime`). Keys carry the plant: one database
for the whole fleet; the partition key (the hour, the event time) is in every primary key,
as PostgreSQL requires of a partitioned table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from cemsd.store import schema as edge
from cemsd.store.schema import UTCDateTime

metadata = MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s",
                                       "pk": "pk_%(table_name)s"})

PARTITIONED = ("fleet_hours", "fleet_events", "fleet_minutes")  # by month (below)
PARTITION_COLUMN = {"fleet_hours": "ts", "fleet_events": "at", "fleet_minutes": "ts"}


def _period_columns() -> list[Column[Any]]:
    """An hour's or a minute's columns as the edge's tables have them (but its id), keyed
    by the plant, the channel, the start and the revision."""
    keys = ("channel", "ts", "revision")
    return [Column("plant", String(64), primary_key=True)] + [
        Column(c.name, c.type, primary_key=c.name in keys, nullable=c.nullable)
        for c in edge.minutes.c if c.name != "id"]


# one row per plant, channel, hour and revision, as the edge published it
hours = Table(
    "fleet_hours", metadata, *_period_columns(),
    Column("message_id", BigInteger),  # the edge's outbox id
    Column("received_at", UTCDateTime, nullable=False),
    postgresql_partition_by="RANGE (ts)",
)

# the minutes under an hour with bypass, as the edge published them (`bypass.minutes`,
# docs/decisions/0210): what a central report recomputes a bypass mass from
minutes = Table(
    "fleet_minutes", metadata, *_period_columns(),
    Column("edge_id", BigInteger, nullable=False),  # the minute's id at the edge
    Column("received_at", UTCDateTime, nullable=False),
    postgresql_partition_by="RANGE (ts)",
)

# every other event (bypass, calibration, substitution, ...) as the edge published it
events = Table(
    "fleet_events", metadata,
    Column("plant", String(64), primary_key=True),
    Column("at", UTCDateTime, primary_key=True),
    Column("message_id", BigInteger, primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("data", Text, nullable=False),  # JSON
    Column("received_at", UTCDateTime, nullable=False),
    # a plant's events of one kind in the order sent (the edge's tables rebuilt: f003)
    Index(None, "plant", "kind", "message_id"),
    postgresql_partition_by="RANGE (at)",
)

# a record that differs from what was received before under the same key: kept, raised
conflicts = Table(
    "fleet_conflicts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("plant", String(64), nullable=False),
    Column("record", String(16), nullable=False),  # hour | minute | event
    Column("key", Text, nullable=False),
    Column("stored", Text, nullable=False),  # JSON: what was received first (kept)
    Column("received", Text, nullable=False),  # JSON: the differing record
    Column("digest", String(64), nullable=False, unique=True),  # the same conflict once
    Column("received_at", UTCDateTime, nullable=False),
    Index(None, "plant", "id"),
)

# the witness: every link received per plant, never overwritten
links = Table(
    "fleet_links", metadata,
    Column("plant", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("record_table", String(32), nullable=False),
    Column("record_id", BigInteger, nullable=False),
    Column("channel", String(100), nullable=False),
    Column("ts", UTCDateTime, nullable=False),
    Column("form", Integer, nullable=False),
    Column("record_hash", String(64), nullable=False),
    Column("minutes_sha256", String(64)),
    Column("prev_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("sealed_at", UTCDateTime, nullable=False),
    # pending (hour links: the record hash not recomputed yet) | record (recomputed) |
    # unchecked (not an hour, or its hour never came)
    Column("checked", String(16), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ix_fleet_links_pending", "plant", "seq", postgresql_where="checked = 'pending'"),
    Index(None, "plant", "ts"),  # the links of a period (a central bundle's)
)

# every chain head received per plant, with the witness's verdict
heads = Table(
    "fleet_heads", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("plant", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("time", UTCDateTime),
    Column("message_id", BigInteger),  # the edge's outbox id (None: sent on connect)
    Column("verdict", String(16), nullable=False),  # extends | pending | rewritten | shortened
    Column("received_at", UTCDateTime, nullable=False),
    Index(None, "plant", "seq", "hash", unique=True),
)

# what the witness raised: a rewritten, shortened or altered chain, a sealed record that
# differs from the record received
alarms = Table(
    "fleet_alarms", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("plant", String(64), nullable=False),
    Column("problem", String(64), nullable=False),
    Column("seq", BigInteger),
    Column("detail", Text, nullable=False),
    Column("digest", String(64), nullable=False, unique=True),  # the same finding once
    Column("raised_at", UTCDateTime, nullable=False),
    Index(None, "plant", "id"),
)

# per plant: when it was last heard of
plants = Table(
    "fleet_plants", metadata,
    Column("plant", String(64), primary_key=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_message_at", UTCDateTime, nullable=False),
    Column("status", String(16)),  # online | offline, the edge's retained status
)

# registry tokens scoped to plants (only the SHA-256 of a token is stored)
tokens = Table(
    "fleet_tokens", metadata,
    Column("name", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("plants", Text, nullable=False),  # JSON list of plant ids, or ["*"]
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)
