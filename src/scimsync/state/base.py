"""What every part of the state store shares: one channel's engine, one transaction at a
time, and the helpers for chunked and dialect-specific writes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError

from scimsync.state.connect import safe_url
from scimsync.state.errors import StateError

Clock = Callable[[], datetime]  # now, timezone-aware: the store's and the cycle's time
T = TypeVar("T")

WRITE_CHUNK = 1000  # rows per executemany transaction
READ_CHUNK = 500  # ids per IN (...) query; well below SQLite's bound-parameter limit
MAX_CAUSE = 2000  # characters of a failure cause kept; the rest is noise in a log


def utc_now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MAX_CAUSE]


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("the state store takes timezone-aware datetimes only")
    return moment


def describe(exc: BaseException, url: URL) -> str:
    """The driver's first line of complaint, with the password blotted out just in case."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    line = lines[0].strip() if lines else type(orig).__name__
    if url.password:
        line = line.replace(str(url.password), "***")
    return line


class StoreBase:
    """One channel's engine and the transaction helper every part of the store shares."""

    def __init__(
        self, engine: Engine, url: URL, channel: str, channel_id: int, clock: Clock
    ) -> None:
        self._engine = engine
        self._url = url
        self._channel = channel
        self._channel_id = channel_id
        self._clock = clock
        # Threads sharing one Store take turns: one transaction at a time keeps SQLite
        # (and the single in-memory connection) free of self-inflicted lock waits.
        self._guard = threading.RLock()
        self._atomic: Connection | None = None
        self._readonly = False

    @property
    def where(self) -> str:
        """The store's URL without its password, for messages."""
        return safe_url(self._url)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Make every store call inside the block one transaction: all of it lands, or none.

        For recording one operation's outcome (save_user, audit, done) so a crash
        can't keep half of it. Other threads' store calls wait until the block ends.
        """
        with self._transaction(write=True) as conn:
            self._atomic = conn
            try:
                yield
            finally:
                self._atomic = None

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self._guard:
            # Only the thread holding the guard can see its own atomic() connection.
            if self._atomic is not None:
                yield self._atomic
                return
            with self._wrap_errors(contextlib.nullcontext()), self._engine.connect() as conn:
                if write:
                    conn.execution_options(scimsync_write=True)
                with conn.begin():
                    yield conn

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._transaction(write=False)

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        if self._readonly:
            raise StateError(f"the store at {self.where} is open read-only")
        return self._transaction(write=True)

    @contextlib.contextmanager
    def _wrap_errors(self, inner: contextlib.AbstractContextManager[T]) -> Iterator[T]:
        try:
            with inner as value:
                yield value
        except DBAPIError as exc:
            raise StateError(f"state store {self.where}: {describe(exc, self._url)}") from None

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _upsert(self, table: sa.Table, key: list[str]) -> sa.Insert:
        stmt = self._insert(table)
        update = {col.name: stmt.excluded[col.name] for col in table.c if col.name not in key}
        return stmt.on_conflict_do_update(index_elements=key, set_=update)
