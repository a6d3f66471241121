"""Turn a state URL into an engine: SQLite in WAL mode, PostgreSQL through psycopg 3."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from scimsync import log
from scimsync.state.errors import StateError

BUSY_TIMEOUT_MS = 30_000
# The store holds every user's pushed attributes: only its owner may read it. SQLite gives
# the -wal and -shm files the database file's mode.
SQLITE_FILE_MODE = 0o600
logger = log.get(__name__)
EXPECTED = "expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"


def parse_url(url: str) -> URL:
    """Parse and normalise a state URL; the error never repeats the URL (it may hold a password)."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise StateError(f"invalid state store URL: {EXPECTED}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.get_driver_name() != "psycopg":
        # Plain postgresql:// means psycopg2 to SQLAlchemy; psycopg 3 is what we install.
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise StateError(f"unsupported state store {safe_url(parsed)}: {EXPECTED}")
    return parsed


def safe_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for memory, URI filenames and PostgreSQL."""
    if url.get_backend_name() != "sqlite" or is_memory(url) or "uri" in url.query:
        return None
    return Path(str(url.database))


def prepare_sqlite_file(url: URL, *, create: bool) -> None:
    """Create a missing SQLite file owner-only (with `create`); warn if an existing one is not.

    An existing file's mode is the administrator's choice (they may share it with a
    group on purpose), so it is reported, not changed.
    """
    path = sqlite_file(url)
    if path is None:
        return
    if create:
        # It may exist; or SQLite says why it cannot be opened when it connects.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # a read-only open of a missing file reads as an empty store
    if mode & 0o077:
        logger.warning(
            f"the state store {path} has mode {mode:04o}; it holds every user's pushed "
            f"attributes, so only its owner should read it: chmod 600 {path}"
        )


def create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def _sqlite_engine(url: URL) -> Engine:
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if is_memory(url):
        # One shared connection, or every checkout would see its own empty database.
        kwargs["poolclass"] = StaticPool
    engine = sa.create_engine(url, **kwargs)

    # The pysqlite driver's own transaction handling defers BEGIN and can't do
    # BEGIN IMMEDIATE; SQLAlchemy documents taking it over with these two hooks
    # (docs: "Serializable isolation / Savepoints / Transactional DDL" for pysqlite).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL is durable against process crashes; only power loss
            # may drop the last commits (sqlite.org/pragma.html#pragma_synchronous).
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a read-then-write transaction
        # waits on busy_timeout instead of failing with SQLITE_BUSY halfway.
        write = conn.get_execution_options().get("scimsync_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
