"""links.fingerprint goes: it was written with every user and read by nothing.

The planner compares the values last pushed (links.values_json) key by key, which a
digest of them cannot replace; the column cost a digest per saved user and 32 bytes a row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("links") as batch:
        batch.drop_column("fingerprint")


def downgrade() -> None:
    # The column comes back empty: nothing wrote it meanwhile.
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(32), nullable=True))
