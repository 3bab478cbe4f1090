"""Signed webhooks (issue 13): the callback URLs clients register, and the outbox of
messages to them, written in the transaction of the change each reports.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("events", sa.JSON),
        sa.Column("created", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name="webhook_endpoints_client_fkey"
        ),
    )
    op.create_index("webhook_endpoints_client", "webhook_endpoints", ["client_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", TS, nullable=False),
        sa.Column("lease_until", TS),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created", TS, nullable=False),
        sa.Column("delivered", TS),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name="webhook_deliveries_endpoint_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt"])
    op.create_index("webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "created"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
