"""Pre-serialised sealed days of /v1/hours/columns (a cache, decision 0260)

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

IDENTIFIER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ARRAYS = ("units", "start_epoch", "value", "flag", "n_valid", "revision", "substitute_value",
          "substitute_method", "seal_seq")  # each kept as the items of its JSON array


def upgrade() -> None:
    op.create_table(
        'hour_column_days',
        sa.Column('channel', sa.String(length=100), nullable=False),
        sa.Column('day', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('hours', sa.Integer(), nullable=False),
        sa.Column('last_hour_id', IDENTIFIER, nullable=False),
        sa.Column('substitutions', sa.Integer(), nullable=False),
        sa.Column('last_substitution_id', IDENTIFIER, nullable=True),
        sa.Column('last_seq', IDENTIFIER, nullable=False),
        sa.Column('chain_hash', sa.String(length=64), nullable=False),
        sa.Column('units', sa.Text(), nullable=False),
        sa.Column('last_unit', sa.String(length=16), nullable=False),
        *(sa.Column(f'json_{name}', sa.Text(), nullable=False) for name in ARRAYS),
        sa.PrimaryKeyConstraint('channel', 'day', name=op.f('pk_hour_column_days')),
    )


def downgrade() -> None:
    op.drop_table('hour_column_days')
