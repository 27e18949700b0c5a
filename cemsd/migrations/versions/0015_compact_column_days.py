"""The compact layout of the kept sealed days of /v1/hours/columns (decision 0261)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03

hour_column_days is a cache (decision 0260): its rows are dropped, not converted; the next
pull of a span keeps its sealed days again, in both layouts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

COMPACT = ("units", "start_epoch", "flag", "n_valid", "revision", "substitute_value",
           "substitute_method", "seal_seq")  # each kept as the runs of its array


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM hour_column_days"))
    for name in COMPACT:  # SQLite adds a NOT NULL column only with a default
        op.add_column('hour_column_days', sa.Column(f'compact_{name}', sa.Text(),
                                                    nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('hour_column_days') as batch:
        for name in COMPACT:
            batch.drop_column(f'compact_{name}')
