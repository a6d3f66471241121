"""The state store: one facade over its parts, each a module of its own.

- links: links and the member sets pushed (state/links.py);
- journal: runs, audit and intents (state/journal.py);
- failures: failure rows (state/failures.py);
- held deletions and their approval (state/held.py), over watermarks (state/watermarks.py).

One Store serves one channel. Each method is one short transaction; batch
methods write in chunks with executemany, so an initial sync of 100,000 users
neither holds a lock for long nor loses more than one chunk to a crash.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError

from scimsync.state import tables as t
from scimsync.state.base import Clock, describe, utc_now
from scimsync.state.connect import (
    create_engine,
    is_memory,
    parse_url,
    prepare_sqlite_file,
    safe_url,
)
from scimsync.state.errors import StateError
from scimsync.state.failures import FailureRows
from scimsync.state.held import HeldDeletions
from scimsync.state.journal import Journal
from scimsync.state.links import Links
from scimsync.state.locking import postgres_lock, sqlite_lock
from scimsync.state.migrate import current_revision, head_revision, upgrade


class Store(Links, Journal, FailureRows, HeldDeletions):
    """Everything scimsync remembers about one channel between cycles: the parts' methods,
    opened on one engine."""

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(
        cls, url: str, channel: str, *, clock: Clock = utc_now, readonly: bool = False
    ) -> Store:
        """Connect, migrate the schema to the newest revision and register the channel.

        readonly=True (for `plan`) changes nothing in the database: no migration, no
        channel row, and every write raises StateError. A database without the schema
        reads as an empty store.
        """
        parsed = parse_url(url)
        where = safe_url(parsed)
        prepare_sqlite_file(parsed, create=not readonly)
        try:
            engine = create_engine(parsed)
        except ArgumentError as exc:
            raise StateError(f"cannot open the store at {where}: {exc}") from None
        try:
            if readonly:
                engine, channel_id = _open_readonly(engine, parsed, channel)
            else:
                upgrade(engine, where)
                channel_id = _ensure_channel(engine, channel)
        except DBAPIError as exc:
            engine.dispose()
            raise StateError(f"cannot open the store at {where}: {describe(exc, parsed)}") from None
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, parsed, channel, channel_id, clock)
        store._readonly = readonly
        return store

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({safe_url(self._url)!r}, channel={self._channel!r})"

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the channel for this instance; raises ChannelLocked if another holds it."""
        if self._readonly:
            return contextlib.nullcontext()  # a reader changes nothing, so it needs no turn
        if self._engine.dialect.name == "postgresql":
            return self._wrap_errors(postgres_lock(self._engine, self._channel))
        return sqlite_lock(self._engine, self._url, self._channel, is_memory(self._url))


def _open_readonly(engine: Engine, url: URL, channel: str) -> tuple[Engine, int]:
    """The engine to read from and the channel's id (-1, matching no row, if unknown)."""
    # Connecting to a missing SQLite file would create it.
    missing_file = (
        url.get_backend_name() == "sqlite"
        and not is_memory(url)
        and not Path(str(url.database)).exists()
    )
    with contextlib.ExitStack() as stack:
        revision = None
        if not missing_file:
            conn = stack.enter_context(engine.connect())
            revision = current_revision(conn)
        if revision is None:
            # Nothing recorded yet: read from an empty in-memory schema instead.
            engine.dispose()
            empty = create_engine(parse_url("sqlite://"))
            upgrade(empty, "an empty in-memory store")
            return empty, -1
        where = safe_url(url)
        if revision != head_revision():
            raise StateError(
                f"the store at {where} has schema revision {revision}, this scimsync expects "
                f"{head_revision()}: run `scimsync sync` once to upgrade it"
            )
        c = t.channels.c
        found = conn.execute(sa.select(c.id).where(c.name == channel)).scalar_one_or_none()
        return engine, -1 if found is None else int(found)


def _ensure_channel(engine: Engine, channel: str) -> int:
    c = t.channels.c
    with engine.connect() as conn:
        conn.execution_options(scimsync_write=True)
        with conn.begin():
            found = conn.execute(sa.select(c.id).where(c.name == channel)).scalar_one_or_none()
            if found is not None:
                return int(found)
            insert = (
                postgresql.insert(t.channels)
                if engine.dialect.name == "postgresql"
                else sqlite.insert(t.channels)
            )
            # Two instances may register the same channel at once; the loser reads the winner's id.
            conn.execute(insert.values(name=channel).on_conflict_do_nothing())
            return int(conn.execute(sa.select(c.id).where(c.name == channel)).scalar_one())
