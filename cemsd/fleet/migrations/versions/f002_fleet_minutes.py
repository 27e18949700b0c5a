"""The minutes under the hours with bypass (`bypass.minutes`), partitioned by month like
the hours (docs/decisions/0210); the links of a plant by time (a central bundle's links)

Revision ID: f002
Revises: f001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = 'f002'
down_revision = 'f001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE fleet_minutes (
        plant VARCHAR(64) NOT NULL, channel VARCHAR(100) NOT NULL, ts TIMESTAMP NOT NULL,
        revision INTEGER NOT NULL, value DOUBLE PRECISION, minimum DOUBLE PRECISION,
        maximum DOUBLE PRECISION, n_valid INTEGER NOT NULL, n_expected INTEGER NOT NULL,
        flag VARCHAR(1) NOT NULL, reason TEXT, unit VARCHAR(16) NOT NULL,
        created_at TIMESTAMP NOT NULL, supersedes BIGINT, audit_id BIGINT,
        edge_id BIGINT NOT NULL, received_at TIMESTAMP NOT NULL,
        CONSTRAINT pk_fleet_minutes PRIMARY KEY (plant, channel, ts, revision)
    ) PARTITION BY RANGE (ts)""")
    op.execute("CREATE INDEX ix_fleet_links_plant_ts ON fleet_links (plant, ts)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_fleet_links_plant_ts")
    op.execute("DROP TABLE fleet_minutes")
