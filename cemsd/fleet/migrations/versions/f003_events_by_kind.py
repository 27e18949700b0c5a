"""A plant's events of one kind in the order sent: the fleet API rebuilds the edge's
QA/QC and bypass tables from them (docs/decisions/0207)

Revision ID: f003
Revises: f002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = 'f003'
down_revision = 'f002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # on the partitioned parent: PostgreSQL creates it on every partition, present and future
    op.execute("CREATE INDEX ix_fleet_events_plant_kind_message_id "
               "ON fleet_events (plant, kind, message_id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_fleet_events_plant_kind_message_id")
