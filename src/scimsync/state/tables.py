"""The schema as SQLAlchemy Core tables. Migrations create it; queries use these objects.

Every per-channel table starts with channel_id, a small integer from `channels`,
so rows stay lean and one database can hold many channels.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Fixed constraint names, so that later migrations can refer to them on every dialect.
metadata = sa.MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores it as text without a zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the state store takes timezone-aware datetimes only")
        utc = value.astimezone(UTC)
        # SQLite compares times as text: drop the zone so every row has the same form.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


channels = sa.Table(
    "channels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
)

# One row per linked object. user_name/display_name go in `name`; values are for users
# only (groups keep their members in `members`).
links = sa.Table(
    "links",
    metadata,
    sa.Column("channel_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(5), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("target_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("values_json", sa.Text, nullable=True),
    # Users only: in the directory's scope when last seen (a user who left it keeps its link).
    sa.Column("in_scope", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Index("ix_links_target", "channel_id", "kind", "target_id"),
)

# The member set last pushed for each group: one row per membership, so a change
# to a large group writes only the difference.
members = sa.Table(
    "members",
    metadata,
    sa.Column("channel_id", sa.Integer, primary_key=True),
    sa.Column("group_id", sa.String(255), primary_key=True),
    sa.Column("member_id", sa.String(255), primary_key=True),
    # forget(user) drops the user from every group it was pushed to.
    sa.Index("ix_members_member", "channel_id", "member_id"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("cycle_id", sa.String(32), primary_key=True),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("result", sa.String(32), nullable=True),
    sa.Column("summary_json", sa.Text, nullable=True),
    # How many cycles this row stands for: quiet or repeated refused cycles update it.
    sa.Column("cycles", sa.Integer, nullable=False, server_default="1"),
    sa.Column("cause", sa.Text, nullable=True),  # why a failed or interrupted run ended
    sa.Index("ix_runs_channel_started", "channel_id", "started_at"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("cycle_id", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(5), nullable=False),
    sa.Column("source_id", sa.String(255), nullable=False),
    sa.Column("target_id", sa.String(255), nullable=True),
    sa.Column("name", sa.String(512), nullable=True),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("cause", sa.Text, nullable=True),
    sa.Index("ix_audit_channel_at", "channel_id", "at"),
)

intents = sa.Table(
    "intents",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("cycle_id", sa.String(32), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(5), nullable=False),
    sa.Column("source_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_intents_channel", "channel_id"),
)

failures = sa.Table(
    "failures",
    metadata,
    sa.Column("channel_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(5), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("source_fingerprint", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_failed_at", UTCDateTime, nullable=False),
    sa.Column("last_failed_at", UTCDateTime, nullable=False),
    sa.Column("next_retry_at", UTCDateTime, nullable=False),
    sa.Column("quarantined", sa.Boolean, nullable=False),
)

staged_deletions = sa.Table(
    "staged_deletions",
    metadata,
    sa.Column("channel_id", sa.Integer, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("cycle_id", sa.String(32), nullable=False),
    sa.Column("staged_at", UTCDateTime, nullable=False),
    sa.Column("operation_json", sa.Text, nullable=False),
)

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("channel_id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
