"""Rescans (issue 13): a content's lease while one replica rescans it (``rescan_until``),
and the order rescans take — clean content, oldest verdict first.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contents") as batch:
        batch.add_column(sa.Column("rescan_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("contents_rescan", "contents", ["state", "scanned_at"])


def downgrade() -> None:
    op.drop_index("contents_rescan", table_name="contents")
    with op.batch_alter_table("contents") as batch:
        batch.drop_column("rescan_until")
