"""Watermarks: named values per channel, most of them change detection's positions."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from scimsync.state import tables as t
from scimsync.state.base import StoreBase

APPROVAL = "approval"  # the watermark row holding an Approval
# The watermark row naming the directory attribute whose values the links' source ids are
# (source.guid_attribute when they were made). Not a watermark of the directory: `reset`
# keeps it, so that a change of the attribute is always seen as a re-key.
IDENTITY = "identity"
# The watermark row holding when `run` last pruned audit and runs (an ISO time). Not a
# watermark of the directory either: `reset` keeps it, so that a reset does not prune again.
PRUNED = "pruned"


class Watermarks(StoreBase):
    """Small named values of the channel: change detection's positions, and the rows the
    module's constants name."""

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
