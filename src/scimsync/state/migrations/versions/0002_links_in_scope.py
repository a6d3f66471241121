"""links.in_scope: whether a linked user was in the directory's scope when last seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.add_column(
            sa.Column("in_scope", sa.Boolean, nullable=False, server_default=sa.true())
        )
    # Links made before this revision don't say which users left scope: the next cycle is
    # a full reconciliation, which records it for every linked user.
    watermarks = sa.table("watermarks", sa.column("key", sa.String))
    op.execute(sa.delete(watermarks).where(watermarks.c.key == "last_full_reconciliation"))


def downgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.drop_column("in_scope")
