"""Runs count the cycles they stand for and keep the cause of a failed one.

A quiet cycle (nothing changed) and a cycle refused the same way as the one before
are counted into the newest run instead of adding a row each, so a 5-second interval
does not add 17,000 rows a day. A failed run says why.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add a NOT NULL column in place without a default.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("cycles", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("cause", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cause")
        batch.drop_column("cycles")
