"""Direct-to-bucket uploads: what an upload intent needs beyond the table of 0002 — who
created it, how often its ingestion was tried, the verdict and the refusal it ended with,
and when.

The table held no rows before this release (nothing wrote to it), so nothing is rewritten.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("created_by", sa.String(255)))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("code", sa.String(64)))
        batch.add_column(sa.Column("signature", sa.Text))
        batch.add_column(sa.Column("finished", TS))
    op.create_index("uploads_file", "uploads", ["owner", "file_id"])


def downgrade() -> None:
    op.drop_index("uploads_file", "uploads")
    with op.batch_alter_table("uploads") as batch:
        for column in ("finished", "signature", "code", "attempts", "created_by"):
            batch.drop_column(column)
