"""Direct uploads larger than one PUT: the store's multipart upload id and the part size of
the plan handed out, so that fileshare can complete (or abort) the upload itself.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("multipart_id", sa.Text))
        batch.add_column(sa.Column("part_size", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("part_size")
        batch.drop_column("multipart_id")
