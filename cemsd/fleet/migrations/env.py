"""Alembic environment of the collector's own schema (cemsd/fleet/schema.py), kept apart
from the edge's tree: its own version table, revisions f001, f002, ... The collector runs
it programmatically (cemsd/fleet/store.py) with a connection in `config.attributes`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cemsd.fleet.schema import metadata

VERSION_TABLE = "fleet_alembic_version"
config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic -x url=postgresql+psycopg://... upgrade head")
    with create_engine(url).begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata,
                      version_table=VERSION_TABLE, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
