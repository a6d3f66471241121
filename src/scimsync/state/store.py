"""The state store: links, pushed member sets, runs, audit, intents, failures, watermarks.

One Store serves one channel. Each method is one short transaction; batch
methods write in chunks with executemany, so an initial sync of 100,000 users
neither holds a lock for long nor loses more than one chunk to a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError

from scimsync import retry
from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.state import tables as t
from scimsync.state.connect import (
    create_engine,
    is_memory,
    parse_url,
    prepare_sqlite_file,
    safe_url,
)
from scimsync.state.errors import StateError
from scimsync.state.locking import postgres_lock, sqlite_lock
from scimsync.state.migrate import current_revision, head_revision, upgrade
from scimsync.state.records import (
    Approval,
    AuditKind,
    AuditRecord,
    FailureRecord,
    IntentRecord,
    RunRecord,
    canonical_json,
    held_digest,
)

Clock = Callable[[], datetime]  # now, timezone-aware: the store's and the cycle's time
T = TypeVar("T")

APPROVAL = "approval"  # the watermark row holding an Approval
# The watermark row naming the directory attribute whose values the links' source ids are
# (source.guid_attribute when they were made). Not a watermark of the directory: `reset`
# keeps it, so that a change of the attribute is always seen as a re-key.
IDENTITY = "identity"
# The watermark row holding when `run` last pruned audit and runs (an ISO time). Not a
# watermark of the directory either: `reset` keeps it, so that a reset does not prune again.
PRUNED = "pruned"
REKEYING = "\u00a7"  # a temporary source id's prefix; source ids are ASCII (guid_text)

WRITE_CHUNK = 1000  # rows per executemany transaction
READ_CHUNK = 500  # ids per IN (...) query; well below SQLite's bound-parameter limit
MAX_CAUSE = 2000  # characters of a failure cause kept; the rest is noise in a log
# Rows per pruning transaction: a year's first prune (millions of rows) never holds the
# store for long, and a stop request is heard between chunks.
PRUNE_CHUNK = 10_000


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


class Store:
    """Everything scimsync remembers about one channel between cycles."""

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

    @property
    def where(self) -> str:
        """The store's URL without its password, for messages."""
        return safe_url(self._url)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the channel for this instance; raises ChannelLocked if another holds it."""
        if self._readonly:
            return contextlib.nullcontext()  # a reader changes nothing, so it needs no turn
        if self._engine.dialect.name == "postgresql":
            return self._wrap_errors(postgres_lock(self._engine, self._channel))
        return sqlite_lock(self._engine, self._url, self._channel, is_memory(self._url))

    # -- links ---------------------------------------------------------------

    def linked_users(self, *, with_values: bool = True) -> dict[str, LinkedUser]:
        """Every linked user; `with_values=False` leaves the pushed values out (empty), for a
        caller that reads them from the target anyway: at 100,000 users that is 100 MB."""
        query = self._user_links_query(with_values)
        with self._read() as conn:
            return {row.source_id: _user(row) for row in conn.execute(query)}

    def linked_users_by_ids(
        self, source_ids: Collection[str], *, with_values: bool = True
    ) -> dict[str, LinkedUser]:
        found: dict[str, LinkedUser] = {}
        with self._read() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                query = self._user_links_query(with_values).where(t.links.c.source_id.in_(chunk))
                found.update((row.source_id, _user(row)) for row in conn.execute(query))
        return found

    def linked_ids(self, kind: Kind, *, in_scope: bool | None = None) -> set[str]:
        """The source ids of every link of a kind, without loading the links; with
        `in_scope`, only the users that were (True) or were not (False) in scope."""
        query = self._links_query(kind).with_only_columns(t.links.c.source_id)
        if in_scope is not None:
            query = query.where(t.links.c.in_scope == in_scope)
        with self._read() as conn:
            return set(conn.scalars(query))

    def set_in_scope(self, source_ids: Collection[str], in_scope: bool) -> None:
        """Record that these linked users entered (True) or left (False) the user scope."""
        c = t.links.c
        with self._write() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                conn.execute(
                    sa.update(t.links)
                    .where(
                        c.channel_id == self._channel_id,
                        c.kind == "user",
                        c.source_id.in_(chunk),
                    )
                    .values(in_scope=in_scope)
                )

    def linked_groups(self) -> dict[str, LinkedGroup]:
        with self._read() as conn:
            heads = list(conn.execute(self._links_query(Kind.GROUP)))
            members = self._members(conn, None)
        return {row.source_id: _group(row, members.get(row.source_id, ())) for row in heads}

    def linked_groups_by_ids(self, source_ids: Collection[str]) -> dict[str, LinkedGroup]:
        found: dict[str, LinkedGroup] = {}
        with self._read() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                query = self._links_query(Kind.GROUP).where(t.links.c.source_id.in_(chunk))
                heads = list(conn.execute(query))
                members = self._members(conn, [row.source_id for row in heads])
                for row in heads:
                    found[row.source_id] = _group(row, members.get(row.source_id, ()))
        return found

    def linked_user_named(self, user_name: str) -> LinkedUser | None:
        """The linked user whose userName is this one (case-insensitively), if any."""
        query = self._user_links_query(False).where(
            sa.func.lower(t.links.c.name) == user_name.lower()
        )
        with self._read() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else _user(row)

    def linked_to(self, kind: Kind, target_ids: Collection[str]) -> dict[str, str]:
        """target id -> source id, for the given target ids that are linked."""
        c = t.links.c
        found: dict[str, str] = {}
        with self._read() as conn:
            for chunk in _chunks(target_ids, READ_CHUNK):
                query = self._links_query(kind).with_only_columns(c.target_id, c.source_id)
                found.update(
                    (row.target_id, row.source_id)
                    for row in conn.execute(query.where(c.target_id.in_(chunk)))
                )
        return found

    def groups_holding(self, member_ids: Collection[str]) -> set[str]:
        """Source ids of the linked groups that hold any of these members."""
        c = t.members.c
        found: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(member_ids, READ_CHUNK):
                query = sa.select(c.group_id).distinct()
                query = query.where(c.channel_id == self._channel_id, c.member_id.in_(chunk))
                found.update(conn.scalars(query))
        return found

    def count_linked(self, kind: Kind) -> int:
        query = self._links_query(kind).with_only_columns(sa.func.count())
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def save_user(self, user: LinkedUser) -> None:
        self.save_users([user])

    def save_users(self, users: Iterable[LinkedUser]) -> None:
        """Upsert users, WRITE_CHUNK per transaction."""
        for chunk in _chunks(users, WRITE_CHUNK):
            rows = [self._user_row(user) for user in chunk]
            with self._write() as conn:
                conn.execute(self._upsert_link(), rows)

    def save_group(self, group: LinkedGroup) -> None:
        self.save_groups([group])

    def save_groups(
        self, groups: Iterable[LinkedGroup], stored: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        """Upsert groups; member rows change only where the set differs from what is stored.

        `stored`: member sets the caller knows to be the stored ones (the executor read them
        this cycle), so that a 100,000-member group is not read back to change one row.
        """
        known = stored or {}
        for chunk in _chunks(groups, 100):
            with self._write() as conn:
                conn.execute(self._upsert_link(), [self._group_row(g) for g in chunk])
                unknown = [g.source_id for g in chunk if g.source_id not in known]
                read = self._members(conn, unknown) if unknown else {}
                gone: list[dict[str, Any]] = []
                new: list[dict[str, Any]] = []
                for group in chunk:
                    sid = group.source_id
                    before = known[sid] if sid in known else read.get(sid, set())
                    after = group.member_source_ids
                    gone += [self._member_row(group.source_id, m) for m in before - after]
                    new += [self._member_row(group.source_id, m) for m in after - before]
                for rows in _chunks(gone, WRITE_CHUNK):
                    conn.execute(_delete_member, rows)
                for rows in _chunks(new, WRITE_CHUNK):
                    conn.execute(self._insert(t.members).on_conflict_do_nothing(), rows)

    def forget(self, kind: Kind, source_id: str) -> None:
        """Drop a link after the object was deleted at the target."""
        links, members = t.links.c, t.members.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.links).where(
                    links.channel_id == self._channel_id,
                    links.kind == kind,
                    links.source_id == source_id,
                )
            )
            # A deleted group has no members; a deleted user is in no group any more.
            column = members.group_id if kind == "group" else members.member_id
            conn.execute(
                sa.delete(t.members).where(
                    members.channel_id == self._channel_id, column == source_id
                )
            )

    def rekey(self, new_ids: Mapping[str, str]) -> None:
        """Re-point every record from its old source id to its new one: links, pushed member
        sets (groups and members alike), failures and open intents, in one transaction.
        Ids missing from new_ids stay. The held deletions and their approval name old ids
        and are dropped: the next cycle decides again."""
        pairs = [(old, new) for old, new in new_ids.items() if old != new]
        # Through a temporary id each, so that an old id that is also another's new id
        # never meets itself: every primary key stays unique at every step.
        temporary = {old: f"{REKEYING}{n}" for n, (old, _) in enumerate(pairs)}
        steps = [[(old, temporary[old]) for old, _ in pairs]]
        steps.append([(temporary[old], new) for old, new in pairs])
        columns = [
            t.links.c.source_id,
            t.members.c.group_id,
            t.members.c.member_id,
            t.failures.c.source_id,
            t.intents.c.source_id,
        ]
        with self._write() as conn:
            for step in steps:
                for column in columns:
                    table = column.table
                    where = [table.c.channel_id == self._channel_id]
                    if "kind" in table.c and table is not t.intents:
                        # The middle column of the primary key: the index serves each row.
                        where.append(sa.or_(table.c.kind == "user", table.c.kind == "group"))
                    statement = (
                        sa.update(table)
                        .where(*where, column == sa.bindparam("b_from"))
                        .values({column.name: sa.bindparam("b_to")})
                    )
                    for chunk in _chunks(step, WRITE_CHUNK):
                        conn.execute(statement, [{"b_from": a, "b_to": b} for a, b in chunk])
            for table in (t.staged_deletions, t.watermarks):
                query = sa.delete(table).where(table.c.channel_id == self._channel_id)
                if table is t.watermarks:
                    query = query.where(t.watermarks.c.key == APPROVAL)
                conn.execute(query)

    # -- runs and audit ------------------------------------------------------

    def begin_run(self, mode: str) -> str:
        cycle_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                sa.insert(t.runs).values(
                    cycle_id=cycle_id,
                    channel_id=self._channel_id,
                    mode=mode,
                    started_at=self._clock(),
                )
            )
        return cycle_id

    def finish_run(
        self, cycle_id: str, result: str, summary: Mapping[str, int], cause: str | None = None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                sa.update(t.runs)
                .where(t.runs.c.channel_id == self._channel_id, t.runs.c.cycle_id == cycle_id)
                .values(
                    finished_at=self._clock(),
                    result=result,
                    summary_json=canonical_json(dict(summary)),
                    cause=_clip(cause),
                )
            )

    def count_cycle(self, mode: str, result: str, cause: str | None = None) -> tuple[str, bool]:
        """Record a cycle that wrote nothing at the target: (cycle id, whether a row was added).

        When the newest run is the same (mode, result, cause), the cycle is counted into it
        (finished_at moves, cycles grows) rather than adding a row: a quiet daemon at a
        5-second interval keeps one row, not 17,000 a day.
        """
        c = t.runs.c
        now = self._clock()
        cause = _clip(cause)
        newest = (
            sa.select(c.cycle_id, c.mode, c.result, c.cause)
            .where(c.channel_id == self._channel_id)
            .order_by(c.started_at.desc(), c.cycle_id)
            .limit(1)
        )
        with self._write() as conn:
            row = conn.execute(newest).first()
            if row is not None and (row.mode, row.result, row.cause) == (mode, result, cause):
                conn.execute(
                    sa.update(t.runs)
                    .where(c.channel_id == self._channel_id, c.cycle_id == row.cycle_id)
                    .values(finished_at=now, cycles=c.cycles + 1)
                )
                return str(row.cycle_id), False
            cycle_id = uuid.uuid4().hex
            conn.execute(
                sa.insert(t.runs).values(
                    cycle_id=cycle_id, channel_id=self._channel_id, mode=mode, started_at=now,
                    finished_at=now, result=result, summary_json="{}", cycles=1, cause=cause,
                )
            )  # fmt: skip
            return cycle_id, True

    def runs(self, limit: int = 10) -> list[RunRecord]:
        """The newest runs first."""
        query = (
            sa.select(t.runs)
            .where(t.runs.c.channel_id == self._channel_id)
            .order_by(t.runs.c.started_at.desc(), t.runs.c.cycle_id)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                RunRecord(
                    cycle_id=row.cycle_id,
                    mode=row.mode,
                    started_at=row.started_at,
                    finished_at=row.finished_at,
                    result=row.result,
                    summary=json.loads(row.summary_json) if row.summary_json else {},
                    cycles=row.cycles,
                    cause=row.cause,
                )
                for row in conn.execute(query)
            ]

    def audit(
        self,
        cycle_id: str,
        event: str,
        kind: AuditKind,
        source_id: str,
        target_id: str | None,
        success: bool,
        cause: str | None = None,
        name: str | None = None,
    ) -> None:
        record = AuditRecord(
            cycle_id, self._clock(), event, kind, source_id, target_id, success, cause, name
        )
        self.audit_many([record])

    def audit_many(self, records: Iterable[AuditRecord]) -> None:
        """Append audit entries as given (their `at` included), WRITE_CHUNK per transaction."""
        for chunk in _chunks(records, WRITE_CHUNK):
            rows = [
                {
                    "channel_id": self._channel_id,
                    "cycle_id": r.cycle_id,
                    "at": r.at,
                    "event": r.event,
                    "kind": r.kind,
                    "source_id": r.source_id,
                    "target_id": r.target_id,
                    "name": r.name,
                    "success": r.success,
                    "cause": _clip(r.cause),
                }
                for r in chunk
            ]
            with self._write() as conn:
                conn.execute(sa.insert(t.audit), rows)

    def audit_log(
        self,
        since: datetime | None = None,
        limit: int | None = None,
        cycle_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> list[AuditRecord]:
        """Entries at or after `since`, oldest first; with `limit`, the newest `limit` of them.

        `user` / `group`: only the entries of users / groups with that recorded name (in any
        case) or source id; both given, the entries of either.
        """
        c = t.audit.c
        query = sa.select(t.audit).where(c.channel_id == self._channel_id)
        if since is not None:
            query = query.where(c.at >= _aware(since))
        if cycle_id is not None:
            query = query.where(c.cycle_id == cycle_id)
        subjects = [
            sa.and_(
                c.kind == kind, sa.or_(sa.func.lower(c.name) == name.lower(), c.source_id == name)
            )
            for kind, name in (("user", user), ("group", group))
            if name is not None
        ]
        if subjects:
            query = query.where(sa.or_(*subjects))
        query = query.order_by(c.at.desc(), c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            rows = list(conn.execute(query))
        return [
            AuditRecord(
                cycle_id=row.cycle_id,
                at=row.at,
                event=row.event,
                kind=cast(AuditKind, row.kind),
                source_id=row.source_id,
                target_id=row.target_id,
                success=row.success,
                cause=row.cause,
                name=row.name,
            )
            for row in reversed(rows)
        ]

    def prune(
        self, before: datetime, should_stop: Callable[[], bool] = lambda: False
    ) -> tuple[int, int]:
        """Delete the audit entries and runs older than `before`: (entries, runs) deleted.

        A run goes once it finished before `before`, unless something still reads it: the
        newest run (status shows it, quiet cycles are counted into it), a run never finished
        (in progress, or its process died), the cycle of an open intent or of the held
        operations. Nothing refers to an audit entry. About PRUNE_CHUNK rows a transaction,
        oldest first; `should_stop` is asked between them.
        """
        _aware(before)
        a, r = t.audit.c, t.runs.c
        newest = (
            sa.select(r.cycle_id)
            .where(r.channel_id == self._channel_id)
            .order_by(r.started_at.desc(), r.cycle_id)
            .limit(1)
        )
        in_use = [
            sa.select(table.c.cycle_id).where(table.c.channel_id == self._channel_id)
            for table in (t.intents, t.staged_deletions)
        ]
        old_runs = [
            r.finished_at < before,  # NULL, never finished, is never older
            r.cycle_id != newest.scalar_subquery(),
            *(r.cycle_id.not_in(query) for query in in_use),
        ]
        return (
            self._delete_in_chunks(a.at, before, [], should_stop),
            self._delete_in_chunks(r.started_at, before, old_runs, should_stop),
        )

    def _delete_in_chunks(
        self,
        at: sa.Column[datetime],
        before: datetime,
        conditions: list[sa.ColumnElement[bool]],
        should_stop: Callable[[], bool],
    ) -> int:
        """Delete this channel's rows with `at` before `before` that meet `conditions`.

        Each chunk is a range of the (channel_id, at) index, up to the time of the
        PRUNE_CHUNK-th row: PostgreSQL plans `id IN (SELECT ... LIMIT n)` as a scan of the
        whole table, a range as a walk of the index.
        """
        table = at.table
        channel = table.c.channel_id == self._channel_id
        chunk_end = (
            sa.select(at)
            .where(channel, at < before, *conditions)
            .order_by(at)
            .offset(PRUNE_CHUNK - 1)
            .limit(1)
        )
        deleted = 0
        while not should_stop():
            with self._write() as conn:
                last = conn.execute(chunk_end).scalar_one_or_none()
                # One upper bound only: SQLite bounds its index walk by one of two.
                up_to = at < before if last is None else at <= last  # None: the rest
                deleted += conn.execute(
                    sa.delete(table).where(channel, up_to, *conditions)
                ).rowcount
            if last is None:
                break
        return deleted

    # -- approvals of held operations ----------------------------------------

    def approve_held(self) -> Approval | None:
        """Approve the operations staged now, for the active instance's next cycle."""
        staged = self.staged_deletions()
        if not staged:
            return None
        approval = Approval(self._clock(), held_digest(staged), len(staged))
        value = {"at": approval.at.isoformat(), "digest": approval.digest, "count": approval.count}
        self.set_watermark(APPROVAL, canonical_json(value))
        return approval

    def approval(self) -> Approval | None:
        text = self.watermark(APPROVAL)
        if text is None:
            return None
        value = json.loads(text)
        return Approval(datetime.fromisoformat(value["at"]), value["digest"], value["count"])

    def clear_approval(self) -> None:
        c = t.watermarks.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.watermarks).where(c.channel_id == self._channel_id, c.key == APPROVAL)
            )

    # -- crash safety --------------------------------------------------------

    def intend_many(self, cycle_id: str, entries: Iterable[tuple[str, Kind, str, str]]) -> None:
        """Record many operations (action, kind, source_id, name) about to be sent, at once."""
        at = self._clock()
        rows = [
            {
                "channel_id": self._channel_id,
                "cycle_id": cycle_id,
                "action": action,
                "kind": kind,
                "source_id": source_id,
                "name": name,
                "at": at,
            }
            for action, kind, source_id, name in entries
        ]
        for chunk in _chunks(rows, WRITE_CHUNK):
            with self._write() as conn:
                conn.execute(sa.insert(t.intents), chunk)

    def done_many(self, cycle_id: str, entries: Iterable[tuple[str, Kind, str]]) -> None:
        """Drop the intents (action, kind, source_id) of a cycle whose outcome is recorded."""
        c = t.intents.c
        statement = sa.delete(t.intents).where(
            c.channel_id == self._channel_id,
            c.cycle_id == cycle_id,
            c.action == sa.bindparam("b_action"),
            c.kind == sa.bindparam("b_kind"),
            c.source_id == sa.bindparam("b_source_id"),
        )
        rows = [{"b_action": a, "b_kind": k, "b_source_id": sid} for a, k, sid in entries]
        for chunk in _chunks(rows, WRITE_CHUNK):
            with self._write() as conn:
                conn.execute(statement, chunk)

    def forget_intents(self) -> None:
        """Drop every open intent once what they stood for has been recovered."""
        with self._write() as conn:
            conn.execute(sa.delete(t.intents).where(t.intents.c.channel_id == self._channel_id))

    def open_intents(self) -> list[IntentRecord]:
        """Operations whose outcome was never recorded: the process died mid-call."""
        query = (
            sa.select(t.intents)
            .where(t.intents.c.channel_id == self._channel_id)
            .order_by(t.intents.c.id)
        )
        with self._read() as conn:
            return [
                IntentRecord(
                    intent_id=row.id,
                    cycle_id=row.cycle_id,
                    action=row.action,
                    kind=Kind(row.kind),
                    source_id=row.source_id,
                    name=row.name,
                    at=row.at,
                )
                for row in conn.execute(query)
            ]

    # -- failures ------------------------------------------------------------

    def record_failure(
        self,
        kind: Kind,
        source_id: str,
        name: str,
        action: str,
        cause: str,
        source_fingerprint: str,
        now: datetime,
        max_retries: int,
    ) -> FailureRecord:
        """Store one more failed attempt (or refusal), counted as retry.failed counts it."""
        _aware(now)
        c = t.failures.c
        key = (c.channel_id == self._channel_id, c.kind == kind, c.source_id == source_id)
        with self._write() as conn:
            row = conn.execute(sa.select(t.failures).where(*key)).first()
            record = retry.failed(
                None if row is None else _failure(row),
                kind=kind,
                source_id=source_id,
                name=name,
                action=action,
                cause=_clip(cause) or "",
                source_fingerprint=source_fingerprint,
                now=now,
                max_retries=max_retries,
            )
            values = {"channel_id": self._channel_id, **dataclasses.asdict(record)}
            conn.execute(self._upsert(t.failures, ["channel_id", "kind", "source_id"]), values)
        return record

    def clear_failure(self, kind: Kind, source_id: str) -> None:
        c = t.failures.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.failures).where(
                    c.channel_id == self._channel_id, c.kind == kind, c.source_id == source_id
                )
            )

    def failures(self) -> dict[tuple[Kind, str], FailureRecord]:
        query = sa.select(t.failures).where(t.failures.c.channel_id == self._channel_id)
        with self._read() as conn:
            records = [_failure(row) for row in conn.execute(query)]
        return {(r.kind, r.source_id): r for r in records}

    def reset_failures(self) -> int:
        """Forget every failure, quarantined or not, so the next cycle retries; returns how many."""
        with self._write() as conn:
            result = conn.execute(
                sa.delete(t.failures).where(t.failures.c.channel_id == self._channel_id)
            )
            return result.rowcount

    # -- staged deletions ----------------------------------------------------

    def stage_deletions(self, cycle_id: str, operations: Sequence[Mapping[str, object]]) -> None:
        """Replace the deletions held back by the safety threshold (an empty list clears them)."""
        now = self._clock()
        rows = [
            {
                "channel_id": self._channel_id,
                "position": position,
                "cycle_id": cycle_id,
                "staged_at": now,
                "operation_json": canonical_json(dict(op)),
            }
            for position, op in enumerate(operations)
        ]
        with self._write() as conn:
            conn.execute(
                sa.delete(t.staged_deletions).where(
                    t.staged_deletions.c.channel_id == self._channel_id
                )
            )
            for chunk in _chunks(rows, WRITE_CHUNK):
                conn.execute(sa.insert(t.staged_deletions), chunk)

    def staged_deletions(self) -> list[dict[str, object]]:
        c = t.staged_deletions.c
        query = (
            sa.select(c.operation_json).where(c.channel_id == self._channel_id).order_by(c.position)
        )
        with self._read() as conn:
            return [json.loads(text) for text in conn.execute(query).scalars()]

    # -- watermarks ----------------------------------------------------------

    def watermark(self, key: str) -> str | None:
        c = t.watermarks.c
        query = sa.select(c.value).where(c.channel_id == self._channel_id, c.key == key)
        with self._read() as conn:
            return conn.execute(query).scalar_one_or_none()

    def set_watermark(self, key: str, value: str) -> None:
        row = {"channel_id": self._channel_id, "key": key, "value": value}
        with self._write() as conn:
            conn.execute(self._upsert(t.watermarks, ["channel_id", "key"]), row)

    def clear_watermark(self, key: str) -> None:
        c = t.watermarks.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.watermarks).where(c.channel_id == self._channel_id, c.key == key)
            )

    def clear_watermarks(self, keep: Collection[str] = ()) -> None:
        c = t.watermarks.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.watermarks).where(c.channel_id == self._channel_id, c.key.not_in(keep))
            )

    def reset(self) -> None:
        """Forget the watermarks, so the next cycle is a full reconciliation. Which attribute
        the links are keyed by is kept: it is a fact about the links, not the directory; so
        is the time of the last prune."""
        self.clear_watermarks(keep=[IDENTITY, PRUNED])

    # -- plumbing ------------------------------------------------------------

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

    def _upsert_link(self) -> sa.Insert:
        return self._upsert(t.links, ["channel_id", "kind", "source_id"])

    def _links_query(self, kind: Kind) -> sa.Select[Any]:
        return sa.select(t.links).where(
            t.links.c.channel_id == self._channel_id, t.links.c.kind == kind
        )

    def _user_links_query(self, with_values: bool) -> sa.Select[Any]:
        query = self._links_query(Kind.USER)
        if with_values:
            return query
        c = t.links.c
        return query.with_only_columns(c.source_id, c.target_id, c.name, c.active, c.in_scope)

    def _members(self, conn: Connection, group_ids: list[str] | None) -> dict[str, set[str]]:
        """group source_id -> stored member source_ids; all groups when group_ids is None."""
        c = t.members.c
        out: dict[str, set[str]] = {}
        base = sa.select(c.group_id, c.member_id).where(c.channel_id == self._channel_id)
        queries = (
            [base]
            if group_ids is None
            else [base.where(c.group_id.in_(ids)) for ids in _chunks(group_ids, READ_CHUNK)]
        )
        for query in queries:
            for group_id, member_id in conn.execute(query):
                # Interned: the same GUID stands in many groups and in the links.
                out.setdefault(group_id, set()).add(sys.intern(member_id))
        return out

    def _user_row(self, user: LinkedUser) -> dict[str, Any]:
        return {
            "channel_id": self._channel_id,
            "kind": "user",
            "source_id": user.source_id,
            "target_id": user.target_id,
            "name": user.user_name,
            "active": user.active,
            "values_json": canonical_json(dict(user.values)),
            "in_scope": user.in_scope,
        }

    def _group_row(self, group: LinkedGroup) -> dict[str, Any]:
        return {
            "channel_id": self._channel_id,
            "kind": "group",
            "source_id": group.source_id,
            "target_id": group.target_id,
            "name": group.display_name,
            "active": True,
            "values_json": None,
            "in_scope": True,
        }

    def _member_row(self, group_id: str, member_id: str) -> dict[str, Any]:
        return {"channel_id": self._channel_id, "group_id": group_id, "member_id": member_id}


_delete_member = sa.delete(t.members).where(
    t.members.c.channel_id == sa.bindparam("channel_id"),
    t.members.c.group_id == sa.bindparam("group_id"),
    t.members.c.member_id == sa.bindparam("member_id"),
)


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


def _user(row: sa.Row[Any]) -> LinkedUser:
    return LinkedUser(
        source_id=sys.intern(row.source_id),
        target_id=row.target_id,
        user_name=row.name,
        active=row.active,
        values=json.loads(row.values_json or "{}") if "values_json" in row._fields else {},
        in_scope=row.in_scope,
    )


def _group(row: sa.Row[Any], members: Iterable[str]) -> LinkedGroup:
    return LinkedGroup(
        source_id=row.source_id,
        target_id=row.target_id,
        display_name=row.name,
        member_source_ids=frozenset(members),
    )


def _failure(row: sa.Row[Any]) -> FailureRecord:
    return FailureRecord(
        kind=Kind(row.kind),
        source_id=row.source_id,
        name=row.name,
        action=row.action,
        cause=row.cause,
        source_fingerprint=row.source_fingerprint,
        attempts=row.attempts,
        first_failed_at=row.first_failed_at,
        last_failed_at=row.last_failed_at,
        next_retry_at=row.next_retry_at,
        quarantined=row.quarantined,
    )
