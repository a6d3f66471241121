"""Alembic environment: scimsync passes an open connection in config.attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from scimsync.state.migrate import VERSION_TABLE
from scimsync.state.tables import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run migrations through scimsync.state.migrate.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite can't ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
