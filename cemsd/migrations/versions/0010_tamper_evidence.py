"""Tamper evidence: revisions name their audited correction; the chain is append-only

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0008'
branch_labels = None
depends_on = None

# Every revision above 0 names the audit_log record of the correction that made it
# (who, why, when); cemsd refuses to seal one without it (docs/TAMPER-EVIDENCE.md).
REVISED = ("minutes", "hours", "substitutions", "production_days")
IDENTIFIER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for table in REVISED:  # plain ADD COLUMN: SQLite keeps the table and its triggers
        op.add_column(table, sa.Column("audit_id", IDENTIFIER, nullable=True))
    op.add_column("chain", sa.Column("minutes_sha256", sa.String(length=64), nullable=True))
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for when in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER chain_no_{when.lower()} BEFORE {when} ON chain "
                       "BEGIN SELECT RAISE(ABORT, 'cemsd: the chain is append-only'); END")
    elif dialect == "postgresql":  # cemsd_append_only() is migration 0002's
        op.execute("CREATE TRIGGER chain_append_only BEFORE UPDATE OR DELETE ON chain "
                   "FOR EACH ROW EXECUTE FUNCTION cemsd_append_only()")
        op.execute("CREATE TRIGGER chain_no_truncate BEFORE TRUNCATE ON chain "
                   "FOR EACH STATEMENT EXECUTE FUNCTION cemsd_append_only()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("chain_no_update", "chain_no_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        for name in ("chain_append_only", "chain_no_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON chain")
    # plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would lose the tables' triggers
    for table, column in (*((t, "audit_id") for t in REVISED), ("chain", "minutes_sha256")):
        op.drop_column(table, column)
