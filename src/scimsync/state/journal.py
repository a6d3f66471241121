"""The record of what happened: runs, the audit trail and its retention, and the intents
of operations in flight (crash safety).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from scimsync.model import Kind
from scimsync.state import tables as t
from scimsync.state.base import WRITE_CHUNK, StoreBase, _aware, _chunks, _clip
from scimsync.state.records import AuditKind, AuditRecord, IntentRecord, RunRecord, canonical_json

# Rows per pruning transaction: a year's first prune (millions of rows) never holds the
# store for long, and a stop request is heard between chunks.
PRUNE_CHUNK = 10_000


class Journal(StoreBase):
    """What happened: runs, the audit trail and its retention, and open intents."""

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
        newest = self._runs_newest_first(c.cycle_id, c.mode, c.result, c.cause).limit(1)
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

    def _runs_newest_first(self, *columns: Any) -> sa.Select[Any]:
        """This channel's runs, newest first: what `status` lists, quiet cycles are counted
        into and pruning keeps. Runs started at the same instant go by cycle id."""
        c = t.runs.c
        return (
            sa.select(*columns)
            .where(c.channel_id == self._channel_id)
            .order_by(c.started_at.desc(), c.cycle_id)
        )

    def runs(self, limit: int = 10) -> list[RunRecord]:
        """The newest runs first."""
        query = self._runs_newest_first(t.runs).limit(limit)
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
        newest = self._runs_newest_first(r.cycle_id).limit(1)
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
