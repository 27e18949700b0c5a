"""Maintenance windows have a planned end, after which they close by themselves

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cemsd.store.schema

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# The SQLite close-once trigger lists the columns that must not change (0002); it is
# recreated so that the planned end cannot change either. PostgreSQL's compares whole rows.
_KEPT = ("id", "device", "channel", "started_at", "reason", "technician", "created_at")


def _sqlite_close_once(columns: tuple[str, ...]) -> None:
    kept = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)
    op.execute("DROP TRIGGER IF EXISTS maintenance_close_once")
    op.execute("CREATE TRIGGER maintenance_close_once BEFORE UPDATE ON maintenance "
               f"WHEN OLD.ended_at IS NOT NULL OR {kept} BEGIN SELECT RAISE(ABORT, "
               "'cemsd: maintenance rows can only be closed, once'); END")


def upgrade() -> None:
    op.add_column('maintenance', sa.Column('planned_end_at', cemsd.store.schema.UTCDateTime(),
                                           nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_close_once((*_KEPT, "planned_end_at"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS maintenance_close_once")
    with op.batch_alter_table('maintenance') as batch_op:
        batch_op.drop_column('planned_end_at')
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_close_once(_KEPT)
