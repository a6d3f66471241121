"""Held deletions: what the safety threshold kept back, and the approval that releases it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa

from scimsync.state import tables as t
from scimsync.state.base import WRITE_CHUNK, _chunks
from scimsync.state.records import Approval, canonical_json, held_digest
from scimsync.state.watermarks import APPROVAL, Watermarks


class HeldDeletions(Watermarks):
    """Deletions the safety threshold held back, and the approval that releases them."""

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
