"""One active instance per channel: a PostgreSQL advisory lock, or a lock file beside SQLite."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from scimsync.state.errors import ChannelLocked, StateError

# In-memory SQLite has no file to lock; it is private to this process anyway.
_memory_locks: set[str] = set()
_memory_guard = threading.Lock()


def advisory_key(channel: str) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock, derived from the channel name."""
    digest = hashlib.sha256(f"scimsync:channel:{channel}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def postgres_lock(engine: Engine, channel: str) -> Iterator[None]:
    # A session-level advisory lock lives as long as this connection, so it is held
    # on a connection of its own and dies with the process if it crashes
    # (postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS).
    key = advisory_key(channel)
    with engine.connect() as conn:
        got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
        conn.commit()
        if not got:
            raise ChannelLocked(f"channel {channel!r} is locked by another scimsync instance")
        try:
            yield
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            conn.commit()


def lock_file_path(url: URL, channel: str) -> Path:
    safe = hashlib.sha256(channel.encode()).hexdigest()[:16]
    return Path(f"{url.database}.{safe}.lock")


@contextlib.contextmanager
def sqlite_lock(engine: Engine, url: URL, channel: str, memory: bool) -> Iterator[None]:
    if memory:
        with _memory_lock(f"{id(engine)}:{channel}", channel):
            yield
        return
    path = lock_file_path(url, channel)
    # flock belongs to the open file description: it excludes other processes and
    # other opens in this process alike, and the kernel drops it if we crash.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ChannelLocked(
                f"channel {channel!r} is locked by another scimsync instance ({path})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _memory_lock(key: str, channel: str) -> Iterator[None]:
    with _memory_guard:
        if key in _memory_locks:
            raise ChannelLocked(f"channel {channel!r} is already locked in this process")
        _memory_locks.add(key)
    try:
        yield
    finally:
        with _memory_guard:
            _memory_locks.discard(key)
