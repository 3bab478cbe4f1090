"""The index schema: one SQLAlchemy Core description for SQLite and PostgreSQL.

Migrations (``index/migrations``) create and change these tables; this module is what the
queries are written against, so the two must agree (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)

#: Longest owner (principal) name, file id, tag, content type the index accepts.
OWNER_MAX = 255
FILE_ID_MAX = 128
TAG_MAX = 64
CONTENT_TYPE_MAX = 255


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out.

    PostgreSQL keeps ``timestamptz``. SQLite has no time type: SQLAlchemy stores a
    fixed-width ``YYYY-MM-DD HH:MM:SS.ffffff`` string, which sorts in time order as long
    as every value is in one zone, so everything is converted to UTC on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive values are taken as UTC
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

#: One row per distinct sha256: where its bytes are and what the scanner said of them.
contents = Table(
    "contents",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("sha1", LargeBinary(20), nullable=False),
    Column("size", BigInteger, nullable=False),
    #: pending | clean | infected | unscannable | failed (``models.ScanState``)
    Column("state", String(16), nullable=False),
    #: The object in the permanent bucket (unique per promotion; None when not stored).
    Column("object_key", Text),
    #: The signature name when infected.
    Column("signature", Text),
    #: Provenance of the verdict: the scanner's version string (engine/database/date),
    #: the signature database version as a number (for "scanned with an older database"
    #: queries), and when.
    Column("scanner", Text),
    Column("signature_db", Integer),
    Column("scanned_at", UtcDateTime),
    Column("created", UtcDateTime, nullable=False),
)

#: One owner's record of a content. The primary key is (owner, id): ids are chosen by the
#: server (POST) or by the client (PUT) and are unique per owner only.
files = Table(
    "files",
    metadata,
    Column("owner", String(OWNER_MAX), nullable=False),
    Column("id", String(FILE_ID_MAX), nullable=False),
    Column("name", Text),
    Column("content_type", String(CONTENT_TYPE_MAX), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("updated", UtcDateTime, nullable=False),
    Column("meta", JSON, nullable=False),
    PrimaryKeyConstraint("owner", "id", name="files_pkey"),
    ForeignKeyConstraint(["sha256"], ["contents.sha256"], name="files_sha256_fkey"),
    # Listing pages in (created, id) order, with and without the common filters.
    Index("files_owner_created", "owner", "created", "id"),
    Index("files_owner_name", "owner", "name", "created", "id"),
    Index("files_owner_type", "owner", "content_type", "created", "id"),
    # References to a content: dedup of a retried upload, and "is it still used" on delete.
    Index("files_sha256", "sha256", "owner"),
)

#: An owner's tag vocabulary. ``folded`` is the case-folded name: matching searches
#: compare folded strings, which is case-insensitive for all of Unicode on both databases.
tags = Table(
    "tags",
    metadata,
    Column("owner", String(OWNER_MAX), nullable=False),
    Column("name", String(TAG_MAX), nullable=False),
    Column("folded", String(TAG_MAX * 4), nullable=False),
    Column("created", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("owner", "name", name="tags_pkey"),
    Index("tags_owner_folded", "owner", "folded"),
)

#: Which files carry which tag. The file's ``created`` is repeated here so that a search
#: by tag pages through this table's primary key in file order, however deep the page.
file_tags = Table(
    "file_tags",
    metadata,
    Column("owner", String(OWNER_MAX), nullable=False),
    Column("tag", String(TAG_MAX), nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("file_id", String(FILE_ID_MAX), nullable=False),
    PrimaryKeyConstraint("owner", "tag", "created", "file_id", name="file_tags_pkey"),
    ForeignKeyConstraint(
        ["owner", "file_id"],
        ["files.owner", "files.id"],
        name="file_tags_file_fkey",
        ondelete="CASCADE",
    ),
    ForeignKeyConstraint(
        ["owner", "tag"],
        ["tags.owner", "tags.name"],
        name="file_tags_tag_fkey",
        ondelete="CASCADE",
    ),
    Index("file_tags_file", "owner", "file_id"),
)

#: Objects of the permanent bucket that no content row names (any more, or yet): removed
#: from the store after the transaction that forgot them, and by the sweeper once
#: ``not_before`` has passed. An upload lists the object it is about to promote here with a
#: grace period, and its commit takes it off: a crash or a failed commit in between leaves
#: an object the sweeper removes, never one that nothing knows of.
doomed_objects = Table(
    "doomed_objects",
    metadata,
    Column("object_key", Text, primary_key=True),
    Column("not_before", UtcDateTime, nullable=False),
    Index("doomed_objects_due", "not_before"),
)

#: Uploads that outlive one request (presigned and resumable flows): their intent, where
#: the bytes are staged, and a lease so that one replica at a time ingests them.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(OWNER_MAX), nullable=False),
    Column("file_id", String(FILE_ID_MAX), nullable=False),
    Column("state", String(16), nullable=False),
    Column("name", Text),
    Column("content_type", String(CONTENT_TYPE_MAX), nullable=False),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("staging_key", Text, nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("expires", UtcDateTime, nullable=False),
    Column("lease_holder", String(64)),
    Column("lease_until", UtcDateTime),
    Column("detail", Text),
    Index("uploads_owner", "owner", "created"),
    Index("uploads_state", "state", "expires"),
)
