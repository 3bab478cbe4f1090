"""Identity and audit: registered clients and their API keys, grants between subjects and
owners, the token endpoint's signing keys, used client-assertion ids, the hash-chained
audit trail, and who created each file record.

Nothing existing is rewritten: the first releases' records get an empty ``created_by``,
and the bootstrap API keys of ``FILESHARE_API_KEYS`` keep working beside registered ones.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
#: The chain's first ``prev_hash``: 64 zeros.
GENESIS = "0" * 64


def upgrade() -> None:
    op.add_column("files", sa.Column("created_by", sa.String(255)))
    op.create_table(
        "clients",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("secret_hash", sa.Text),
        sa.Column("jwks", sa.JSON),
        sa.Column("created", TS, nullable=False),
        sa.Column("revoked", TS),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("expires", TS),
        sa.Column("revoked", TS),
        sa.ForeignKeyConstraint(["client_id"], ["clients.id"], name="api_keys_client_fkey"),
    )
    op.create_index("api_keys_client", "api_keys", ["client_id"])
    op.create_table(
        "grants",
        sa.Column("grantee", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("access", sa.String(8), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("grantee", "owner", name="grants_pkey"),
    )
    op.create_index("grants_owner", "grants", ["owner"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("sign_until", TS, nullable=False),
        sa.Column("verify_until", TS, nullable=False),
    )
    op.create_table(
        "used_assertions",
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires", TS, nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name="used_assertions_pkey"),
    )
    op.create_index("used_assertions_expires", "used_assertions", ["expires"])
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(255)),
        sa.Column("client", sa.String(255)),
        sa.Column("role", sa.String(16)),
        sa.Column("source", sa.String(64)),
        sa.Column("owner", sa.String(255)),
        sa.Column("file_id", sa.String(128)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("detail", sa.JSON),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("audit_events_at", "audit_events", ["at", "seq"])
    op.create_index("audit_events_subject", "audit_events", ["subject", "seq"])
    op.create_index("audit_events_file", "audit_events", ["owner", "file_id", "seq"])
    op.create_index("audit_events_action", "audit_events", ["action", "seq"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    for table in (
        "audit_head",
        "audit_events",
        "used_assertions",
        "signing_keys",
        "grants",
        "api_keys",
        "clients",
    ):
        op.drop_table(table)
    with op.batch_alter_table("files") as batch:
        batch.drop_column("created_by")
