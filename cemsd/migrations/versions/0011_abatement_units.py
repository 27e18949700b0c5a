"""Bypass events name their abatement unit

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# SQLite: the close-once guard lists the columns that never change; the unit joins them.
# (PostgreSQL's guard compares every column but the closing ones: it covers the unit as is.)
_SQLITE_GUARD = ("CREATE TRIGGER bypass_events_close_once BEFORE UPDATE ON bypass_events "
                 "WHEN OLD.ended_at IS NOT NULL OR {kept} BEGIN SELECT RAISE(ABORT, "
                 "'cemsd: bypass_events rows can only be closed, once'); END")


def _sqlite_guard(columns: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS bypass_events_close_once")
    op.execute(_SQLITE_GUARD.format(kept=" OR ".join(f"NEW.{c} IS NOT OLD.{c}"
                                                     for c in columns)))


def upgrade() -> None:
    with op.batch_alter_table('bypass_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unit', sa.String(length=64), nullable=True))
    _sqlite_guard(("id", "started_at", "created_at", "unit"))


def downgrade() -> None:
    with op.batch_alter_table('bypass_events', schema=None) as batch_op:
        batch_op.drop_column('unit')  # SQLite rebuilds the table: its guards go with it
    _sqlite_guard(("id", "started_at", "created_at"))
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER IF NOT EXISTS bypass_events_no_delete BEFORE DELETE ON "
                   "bypass_events BEGIN SELECT RAISE(ABORT, 'cemsd: bypass_events are "
                   "append-only'); END")
