"""Failure rows: the records a cycle could not apply, as retry.py counts them."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scimsync import retry
from scimsync.model import Kind
from scimsync.state import tables as t
from scimsync.state.base import StoreBase, _aware, _clip
from scimsync.state.records import FailureRecord


class FailureRows(StoreBase):
    """The failure rows; when a record is due again is retry.py's to decide."""

    def record_failure(
        self, attempt: retry.Attempt, *, now: datetime, max_retries: int
    ) -> FailureRecord:
        """Store one more failed attempt (or refusal), counted as retry.failed counts it."""
        _aware(now)
        c = t.failures.c
        key = (
            c.channel_id == self._channel_id,
            c.kind == attempt.kind,
            c.source_id == attempt.source_id,
        )
        clipped = dataclasses.replace(attempt, cause=_clip(attempt.cause) or "")
        with self._write() as conn:
            row = conn.execute(sa.select(t.failures).where(*key)).first()
            previous = None if row is None else _failure(row)
            record = retry.failed(previous, clipped, now=now, max_retries=max_retries)
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


def _failure(row: sa.Row[Any]) -> FailureRecord:
    # The table's columns are the record's fields (record_failure writes it with asdict).
    columns = {field.name: row._mapping[field.name] for field in dataclasses.fields(FailureRecord)}
    return FailureRecord(**{**columns, "kind": Kind(row.kind)})
