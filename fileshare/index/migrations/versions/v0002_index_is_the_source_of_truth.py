"""The index becomes the source of truth: contents, per-owner files with client ids,
tags, objects awaiting deletion, and uploads.

The first release's ``files`` rows (one per record, content fields repeated) are split into
``contents`` (one per sha256, state ``clean`` — that release only recorded clean content —,
under the key that release wrote: ``sha256/ab/cd/<hex>``) and ``files`` keyed by
(owner, id). Times are rewritten in UTC, SQLite's as fixed-width text that sorts in time
order. The verdict's provenance of those contents is unknown and stays empty, so a rescan
treats them as the oldest.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import sqlite

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BATCH = 1000
TS = sa.DateTime(timezone=True)


def _create_tables() -> None:
    op.create_table(
        "contents",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("sha1", sa.LargeBinary(20), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("object_key", sa.Text),
        sa.Column("signature", sa.Text),
        sa.Column("scanner", sa.Text),
        sa.Column("signature_db", sa.Integer),
        sa.Column("scanned_at", TS),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "files",
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("updated", TS, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("owner", "id", name="files_pkey"),
        sa.ForeignKeyConstraint(["sha256"], ["contents.sha256"], name="files_sha256_fkey"),
    )
    op.create_index("files_owner_created", "files", ["owner", "created", "id"])
    op.create_index("files_owner_name", "files", ["owner", "name", "created", "id"])
    op.create_index("files_owner_type", "files", ["owner", "content_type", "created", "id"])
    op.create_index("files_sha256", "files", ["sha256", "owner"])
    op.create_table(
        "tags",
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("folded", sa.String(256), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name="tags_pkey"),
    )
    op.create_index("tags_owner_folded", "tags", ["owner", "folded"])
    op.create_table(
        "file_tags",
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("file_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("owner", "tag", "created", "file_id", name="file_tags_pkey"),
        sa.ForeignKeyConstraint(
            ["owner", "file_id"],
            ["files.owner", "files.id"],
            name="file_tags_file_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["owner", "tag"],
            ["tags.owner", "tags.name"],
            name="file_tags_tag_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("file_tags_file", "file_tags", ["owner", "file_id"])
    op.create_table(
        "doomed_objects",
        sa.Column("object_key", sa.Text, primary_key=True),
        sa.Column("not_before", TS, nullable=False),
    )
    op.create_index("doomed_objects_due", "doomed_objects", ["not_before"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("file_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("staging_key", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("expires", TS, nullable=False),
        sa.Column("lease_holder", sa.String(64)),
        sa.Column("lease_until", TS),
        sa.Column("detail", sa.Text),
    )
    op.create_index("uploads_owner", "uploads", ["owner", "created"])
    op.create_index("uploads_state", "uploads", ["state", "expires"])


def _utc(value: Any, dialect: str) -> datetime:
    """A first-release time (SQLite: ``isoformat()`` text in any offset; PostgreSQL:
    ``timestamptz``) as the new schema stores it."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.replace(tzinfo=None) if dialect == "sqlite" else when


def _copy_records() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    old = sa.table(
        "files_v1",
        *(sa.column(c) for c in ("id", "owner", "name", "content_type", "sha256", "sha1")),
        sa.column("size"),
        sa.column("created"),
    )
    contents = sa.table(
        "contents",
        *(sa.column(c) for c in ("sha256", "sha1", "size", "state", "object_key")),
        sa.column("created", TS),
    )
    files = sa.table(
        "files",
        *(sa.column(c) for c in ("owner", "id", "name", "content_type", "sha256")),
        sa.column("created", TS),
        sa.column("updated", TS),
        sa.column("meta", sa.JSON),
    )
    last = ""
    while True:
        rows = conn.execute(
            sa.select(old).where(old.c.id > last).order_by(old.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        found: dict[str, dict[str, object]] = {}
        records = []
        for row in rows:
            created = _utc(row.created, dialect)
            h = row.sha256
            found.setdefault(
                h,
                {
                    "sha256": h,
                    "sha1": bytes(row.sha1),
                    "size": row.size,
                    "state": "clean",
                    "object_key": f"sha256/{h[:2]}/{h[2:4]}/{h}",
                    "created": created,
                },
            )
            records.append(
                {
                    "owner": row.owner,
                    "id": row.id,
                    "name": row.name,
                    "content_type": row.content_type,
                    "sha256": h,
                    "created": created,
                    "updated": created,
                    "meta": {},
                }
            )
        conn.execute(sqlite.insert(contents).on_conflict_do_nothing(), list(found.values()))
        conn.execute(sa.insert(files), records)
        last = rows[-1].id


_POSTGRES_COPY = (
    # One content per sha256: the earliest record's sha1, size and time, under the key the
    # first release wrote.
    """
    INSERT INTO contents (sha256, sha1, size, state, object_key, created)
    SELECT DISTINCT ON (sha256) sha256, sha1, size, 'clean',
           'sha256/' || substr(sha256, 1, 2) || '/' || substr(sha256, 3, 2) || '/' || sha256,
           created
    FROM files_v1 ORDER BY sha256, created, id
    """,
    """
    INSERT INTO files (owner, id, name, content_type, sha256, created, updated, meta)
    SELECT owner, id, name, content_type, sha256, created, created, '{}'::json FROM files_v1
    """,
)
#: Records of one sha256 that disagree about its sha1 or size cannot all be right: the
#: content is kept, but as ``failed`` (never served, rescanned first) rather than clean.
_MARK_INCONSISTENT = """
UPDATE contents SET state = 'failed' WHERE sha256 IN (
    SELECT sha256 FROM files_v1 GROUP BY sha256
    HAVING count(DISTINCT sha1) > 1 OR count(DISTINCT size) > 1
)
"""
_EARLIEST = """
UPDATE contents SET created = (
    SELECT min(files.created) FROM files WHERE files.sha256 = contents.sha256
)
"""


def upgrade() -> None:
    op.drop_index("files_owner_sha256", table_name="files")
    op.rename_table("files", "files_v1")
    if op.get_bind().dialect.name == "postgresql":
        # The primary key's index keeps its name through a rename; the new table wants it.
        op.execute("ALTER INDEX files_pkey RENAME TO files_v1_pkey")
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRES_COPY:  # in the server: no row leaves it
            op.execute(statement)
    else:  # SQLite's times are text in any offset: rewritten row by row
        _copy_records()
        op.execute(_EARLIEST)
    op.execute(_MARK_INCONSISTENT)
    op.drop_table("files_v1")


def downgrade() -> None:
    raise NotImplementedError("the index cannot go back to the first release's schema")
