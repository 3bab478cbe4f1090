"""Partner links (seed 003): per object of the links bucket, what the scanner said of which
version, and until when upload and download links for it are out.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("object_key", sa.Text, primary_key=True),
        sa.Column("resource_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.Text),
        sa.Column("signature", sa.Text),
        sa.Column("scanner", sa.Text),
        sa.Column("scanned_at", TS),
        sa.Column("upload_until", TS),
        sa.Column("download_until", TS),
        sa.Column("created", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("links")
