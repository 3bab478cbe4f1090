"""Alembic's entry point, run by ``index.migrate`` on a connection it already opened (and,
on PostgreSQL, already holds the migration lock on); never with a URL from a file."""

from __future__ import annotations

from alembic import context

from fileshare.index.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
