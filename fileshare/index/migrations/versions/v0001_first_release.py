"""The schema of the first release (files only), as it created it without migrations.

An index made by that release already has this table and no ``alembic_version``: the
statements are idempotent, so such an index is simply stamped at this revision and then
upgraded like any other.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE = """
CREATE TABLE IF NOT EXISTS files (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    sha1         BLOB NOT NULL,
    size         INTEGER NOT NULL,
    created      TEXT NOT NULL
)
"""
_POSTGRES = """
CREATE TABLE IF NOT EXISTS files (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    name         text,
    content_type text NOT NULL,
    sha256       text NOT NULL,
    sha1         bytea NOT NULL,
    size         bigint NOT NULL,
    created      timestamptz NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS files_owner_sha256 ON files (owner, sha256)"


def upgrade() -> None:
    op.execute(_SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRES)
    op.execute(_INDEX)


def downgrade() -> None:
    op.execute("DROP TABLE files")
