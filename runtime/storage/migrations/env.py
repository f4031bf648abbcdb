"""Alembic's entry point: migrate the connection :mod:`runtime.storage.migrations` hands over."""

from __future__ import annotations

from alembic import context

from runtime.storage.schema import metadata

conn = context.config.attributes["connection"]
context.configure(
    connection=conn,
    target_metadata=metadata,
    render_as_batch=conn.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
