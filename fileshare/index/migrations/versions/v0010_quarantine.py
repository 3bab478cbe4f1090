"""Quarantine (issue 13): infected and unscannable uploads kept as evidence in their own
bucket, one row each, until an admin releases or deletes them (or the bucket's retention
rule expires the bytes).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("file_id", sa.String(128)),
        sa.Column("name", sa.Text),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("signature", sa.Text),
        sa.Column("scanner", sa.Text),
        sa.Column("scanned_at", TS),
        sa.Column("object_key", sa.Text),
        sa.Column("created", TS, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("released", TS),
        sa.Column("released_by", sa.String(255)),
        sa.Column("released_file_id", sa.String(128)),
        sa.Column("deleted", TS),
        sa.Column("deleted_by", sa.String(255)),
        sa.Column("release_until", TS),
    )
    op.create_index("quarantine_created", "quarantine", ["created", "id"])


def downgrade() -> None:
    op.drop_table("quarantine")
