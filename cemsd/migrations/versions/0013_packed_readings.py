"""Readings packed into blocks: ~10 bytes a reading on disk instead of ~128

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

The readings table (one row a reading, a (ts, channel) index as large as the table) is
converted into reading_blocks + reading_channels (cemsd/store/packing.py, decision 0220)
`packing.MIGRATION_CHUNK` readings at a time, in their write order, so memory stays bounded however large
the database is; the whole conversion is one transaction (all or nothing). The readings
table's pages become free pages that SQLite reuses for new blocks (`VACUUM` gives them
back to the file system at once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cemsd.store.schema
from cemsd.store import packing, progress

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


_OLD = sa.table("readings", sa.column("id", sa.Integer), sa.column("channel", sa.String),
                sa.column("ts", cemsd.store.schema.UTCDateTime()),
                sa.column("value", sa.Float), sa.column("flag", sa.String),
                sa.column("reason", sa.Text))
_FIELDS = ("channel", "ts", "value", "flag", "reason")
_NO_UPDATE = "cemsd: readings are never changed"


def upgrade() -> None:
    _create_packed()
    channels = sa.table("reading_channels", sa.column("id", sa.Integer),
                        sa.column("name", sa.String))
    blocks = sa.table("reading_blocks", sa.column("start", sa.BigInteger),
                      sa.column("n", sa.Integer), sa.column("data", sa.LargeBinary))
    conn = op.get_bind()
    ids: dict[str, int] = {}
    last = converted = 0
    total = conn.execute(sa.select(sa.func.count()).select_from(_OLD)).scalar_one()
    while rows := conn.execute(sa.select(_OLD.c.id, _OLD.c.channel, _OLD.c.ts, _OLD.c.value,
                                         _OLD.c.flag, _OLD.c.reason)
                               .where(_OLD.c.id > last).order_by(_OLD.c.id)
                               .limit(packing.MIGRATION_CHUNK)).all():
        last = rows[-1].id
        new = sorted({r.channel for r in rows} - ids.keys())
        if new:
            conn.execute(sa.insert(channels), [{"name": name} for name in new])
            ids.update(conn.execute(sa.select(channels.c.name, channels.c.id)
                                    .where(channels.c.name.in_(new))).all())
        cols = packing.columns_of([tuple(r)[1:] for r in rows], ids)
        conn.execute(sa.insert(blocks), [{"start": start, "n": len(part),
                                          "data": packing.pack(part)}
                                         for start, part in packing.blocks(cols)])
        converted += len(rows)
        progress.report(f"{converted:,} of {total:,} readings converted to blocks")
    op.drop_table("readings")  # its index and triggers go with it


def _create_packed() -> None:
    op.create_table(
        'reading_channels',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reading_channels')),
        sa.UniqueConstraint('name', name=op.f('uq_reading_channels_name')),
    )
    op.create_table(
        'reading_blocks',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=True, nullable=False),
        sa.Column('start', sa.BigInteger(), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reading_blocks')),
    )
    op.create_index(op.f('ix_reading_blocks_start'), 'reading_blocks', ['start'],
                    unique=False, postgresql_using='brin',
                    postgresql_with={'pages_per_range': 16})
    _no_update("reading_blocks")


def _no_update(table: str) -> None:
    """Readings are pruned, never changed (as the readings table since 0002)."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
                   f"BEGIN SELECT RAISE(ABORT, '{_NO_UPDATE}'); END")
    else:
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION cemsd_append_only()")


def downgrade() -> None:
    op.create_table(
        'readings',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=True, nullable=False),
        sa.Column('channel', sa.String(length=100), nullable=False),
        sa.Column('ts', cemsd.store.schema.UTCDateTime(), nullable=False),
        sa.Column('value', sa.Float(precision=53), nullable=True),
        sa.Column('flag', sa.String(length=1), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_readings')),
    )
    op.create_index(op.f('ix_readings_ts_channel'), 'readings', ['ts', 'channel'],
                    unique=False)
    _no_update("readings")
    conn = op.get_bind()
    names = dict(conn.execute(sa.text("SELECT id, name FROM reading_channels")).all())
    last = 0
    while blocks := conn.execute(sa.text("SELECT id, start, data FROM reading_blocks "
                                         "WHERE id > :last ORDER BY id LIMIT 1000"),
                                 {"last": last}).all():
        last = blocks[-1].id
        cols = packing.concat([packing.unpack(b.data, b.start) for b in blocks])
        conn.execute(sa.insert(_OLD), [dict(zip(_FIELDS, row, strict=True))
                                       for row in packing.rows(cols, names)])
    op.drop_table('reading_blocks')
    op.drop_table('reading_channels')
