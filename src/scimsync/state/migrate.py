"""Bring a database's schema to the newest revision, with Alembic run in-process."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from scimsync.state.errors import StateError

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "scimsync_schema_version"
# Arbitrary constant: serialises schema upgrades by several instances on PostgreSQL.
_MIGRATION_LOCK_KEY = 0x5C1D_5C0C


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def upgrade(engine: Engine, where: str) -> None:
    """Migrate to head unless already there; `where` names the store in errors."""
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    # Alembic's cookbook recipe "Sharing a Connection across one or more programmatic
    # migration commands": hand the open connection to env.py in config.attributes.
    with engine.connect() as conn:
        conn.execution_options(scimsync_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            try:
                command.upgrade(alembic_config(conn), "head")
            except CommandError as exc:
                # Typically a schema written by a newer scimsync than this one.
                raise StateError(f"cannot migrate the store at {where}: {exc}") from None
