"""Client upload policies (issue 13): the types a registered client may upload and what
its unscannable uploads become; a direct upload keeps its client's choice for its
ingestion. Every column is nullable and NULL means the deployment's settings, so existing
clients and uploads keep behaving as they did.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("allowed_types", sa.Text))
        batch.add_column(sa.Column("unscannable", sa.String(16)))
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("unscannable", sa.String(16)))


def downgrade() -> None:
    # Never by recreating the table: other tables' foreign keys point at clients (SQLite
    # 3.35+ drops a column in place).
    with op.batch_alter_table("uploads", recreate="never") as batch:
        batch.drop_column("unscannable")
    with op.batch_alter_table("clients", recreate="never") as batch:
        batch.drop_column("unscannable")
        batch.drop_column("allowed_types")
