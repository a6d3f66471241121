"""The initial schema: links, members, runs, audit, intents, failures, staged deletions, watermarks.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than taken from tables.py, so this migration never changes
# when the tables do; tests check that the two agree.
TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.UniqueConstraint("name", name="uq_channels_name"),
    )
    op.create_table(
        "links",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(5), nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("target_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("values_json", sa.Text, nullable=True),
        sa.Column("fingerprint", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("channel_id", "kind", "source_id", name="pk_links"),
    )
    op.create_index("ix_links_target", "links", ["channel_id", "kind", "target_id"])
    op.create_table(
        "members",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("group_id", sa.String(255), nullable=False),
        sa.Column("member_id", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "group_id", "member_id", name="pk_members"),
    )
    op.create_index("ix_members_member", "members", ["channel_id", "member_id"])
    op.create_table(
        "runs",
        sa.Column("cycle_id", sa.String(32), nullable=False),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("result", sa.String(32), nullable=True),
        sa.Column("summary_json", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("cycle_id", name="pk_runs"),
    )
    op.create_index("ix_runs_channel_started", "runs", ["channel_id", "started_at"])
    op.create_table(
        "audit",
        sa.Column("id", BIG_ID, nullable=False, autoincrement=True),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("cycle_id", sa.String(32), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(5), nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("target_id", sa.String(255), nullable=True),
        sa.Column("name", sa.String(512), nullable=True),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("cause", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_channel_at", "audit", ["channel_id", "at"])
    op.create_table(
        "intents",
        sa.Column("id", BIG_ID, nullable=False, autoincrement=True),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("cycle_id", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(5), nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_intents"),
    )
    op.create_index("ix_intents_channel", "intents", ["channel_id"])
    op.create_table(
        "failures",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(5), nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("source_fingerprint", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failed_at", TIME, nullable=False),
        sa.Column("last_failed_at", TIME, nullable=False),
        sa.Column("next_retry_at", TIME, nullable=False),
        sa.Column("quarantined", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "kind", "source_id", name="pk_failures"),
    )
    op.create_table(
        "staged_deletions",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("cycle_id", sa.String(32), nullable=False),
        sa.Column("staged_at", TIME, nullable=False),
        sa.Column("operation_json", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "position", name="pk_staged_deletions"),
    )
    op.create_table(
        "watermarks",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "key", name="pk_watermarks"),
    )


def downgrade() -> None:
    for table in (
        "watermarks",
        "staged_deletions",
        "failures",
        "intents",
        "audit",
        "runs",
        "members",
        "links",
        "channels",
    ):
        op.drop_table(table)
