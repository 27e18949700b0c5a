"""Alembic environment: cemsd runs migrations programmatically (Database.upgrade) with a
connection in `config.attributes`; `alembic -x url=...` works for maintenance by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cemsd.store.schema import metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/cemsd.db upgrade head")
    with create_engine(url).begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER via table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
