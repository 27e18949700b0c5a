"""Durable storage: SQLAlchemy 2 Core tables, Alembic migrations, a batching writer."""
