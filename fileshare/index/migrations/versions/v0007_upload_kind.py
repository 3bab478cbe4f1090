"""How a direct upload's bytes come: one PUT (``put``), a part plan (``parts``) or a browser
form's POST (``form``, whose object is copied to a key nobody can write before it is read).
Existing intents are PUTs or part plans, told apart by their part size.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="put"))
    op.execute("UPDATE uploads SET kind = 'parts' WHERE part_size IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("kind")
