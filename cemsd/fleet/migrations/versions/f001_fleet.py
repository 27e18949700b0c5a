"""The collector's schema: hours and events partitioned by month, conflicts, the witness's
links, heads and alarms, plants, tokens scoped to plants

Revision ID: f001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = 'f001'
down_revision = None
branch_labels = None
depends_on = None

TABLES = [
    """CREATE TABLE fleet_hours (
        plant VARCHAR(64) NOT NULL, channel VARCHAR(100) NOT NULL, ts TIMESTAMP NOT NULL,
        revision INTEGER NOT NULL, value DOUBLE PRECISION, minimum DOUBLE PRECISION,
        maximum DOUBLE PRECISION, n_valid INTEGER NOT NULL, n_expected INTEGER NOT NULL,
        flag VARCHAR(1) NOT NULL, reason TEXT, unit VARCHAR(16) NOT NULL,
        created_at TIMESTAMP NOT NULL, supersedes BIGINT, audit_id BIGINT, message_id BIGINT,
        received_at TIMESTAMP NOT NULL,
        CONSTRAINT pk_fleet_hours PRIMARY KEY (plant, channel, ts, revision)
    ) PARTITION BY RANGE (ts)""",
    # a month of the whole fleet: the partition is pruned, then this index by time
    "CREATE INDEX ix_fleet_hours_ts ON fleet_hours (ts)",
    """CREATE TABLE fleet_events (
        plant VARCHAR(64) NOT NULL, at TIMESTAMP NOT NULL, message_id BIGINT NOT NULL,
        kind VARCHAR(64) NOT NULL, data TEXT NOT NULL, received_at TIMESTAMP NOT NULL,
        CONSTRAINT pk_fleet_events PRIMARY KEY (plant, at, message_id)
    ) PARTITION BY RANGE (at)""",
    """CREATE TABLE fleet_conflicts (
        id BIGSERIAL CONSTRAINT pk_fleet_conflicts PRIMARY KEY, plant VARCHAR(64) NOT NULL,
        record VARCHAR(16) NOT NULL, key TEXT NOT NULL, stored TEXT NOT NULL,
        received TEXT NOT NULL, digest VARCHAR(64) NOT NULL UNIQUE,
        received_at TIMESTAMP NOT NULL)""",
    "CREATE INDEX ix_fleet_conflicts_plant_id ON fleet_conflicts (plant, id)",
    """CREATE TABLE fleet_links (
        plant VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, record_table VARCHAR(32) NOT NULL,
        record_id BIGINT NOT NULL, channel VARCHAR(100) NOT NULL, ts TIMESTAMP NOT NULL,
        form INTEGER NOT NULL, record_hash VARCHAR(64) NOT NULL, minutes_sha256 VARCHAR(64),
        prev_hash VARCHAR(64) NOT NULL, chain_hash VARCHAR(64) NOT NULL,
        sealed_at TIMESTAMP NOT NULL, checked VARCHAR(16) NOT NULL,
        received_at TIMESTAMP NOT NULL,
        CONSTRAINT pk_fleet_links PRIMARY KEY (plant, seq))""",
    # the links the record audit has still to recompute
    "CREATE INDEX ix_fleet_links_pending ON fleet_links (plant, seq) WHERE checked = 'pending'",
    """CREATE TABLE fleet_heads (
        id BIGSERIAL CONSTRAINT pk_fleet_heads PRIMARY KEY, plant VARCHAR(64) NOT NULL,
        seq BIGINT NOT NULL, hash VARCHAR(64) NOT NULL, time TIMESTAMP, message_id BIGINT,
        verdict VARCHAR(16) NOT NULL, received_at TIMESTAMP NOT NULL)""",
    "CREATE UNIQUE INDEX ix_fleet_heads_plant_seq_hash ON fleet_heads (plant, seq, hash)",
    """CREATE TABLE fleet_alarms (
        id BIGSERIAL CONSTRAINT pk_fleet_alarms PRIMARY KEY, plant VARCHAR(64) NOT NULL,
        problem VARCHAR(64) NOT NULL, seq BIGINT, detail TEXT NOT NULL,
        digest VARCHAR(64) NOT NULL UNIQUE, raised_at TIMESTAMP NOT NULL)""",
    "CREATE INDEX ix_fleet_alarms_plant_id ON fleet_alarms (plant, id)",
    """CREATE TABLE fleet_plants (
        plant VARCHAR(64) CONSTRAINT pk_fleet_plants PRIMARY KEY,
        first_seen TIMESTAMP NOT NULL, last_message_at TIMESTAMP NOT NULL,
        status VARCHAR(16))""",
    """CREATE TABLE fleet_tokens (
        name VARCHAR(64) CONSTRAINT pk_fleet_tokens PRIMARY KEY,
        token_sha256 VARCHAR(64) NOT NULL UNIQUE, plants TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL, revoked_at TIMESTAMP)""",
]


def upgrade() -> None:
    for statement in TABLES:
        op.execute(statement)


def downgrade() -> None:
    for table in ("fleet_tokens", "fleet_plants", "fleet_alarms", "fleet_heads",
                  "fleet_links", "fleet_conflicts", "fleet_events", "fleet_hours"):
        op.execute(f"DROP TABLE {table}")
