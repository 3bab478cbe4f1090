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
    #: While a replica rescans the content: until when it holds it (``lease_rescans``).
    Column("rescan_until", UtcDateTime),
    Index("contents_rescan", "state", "scanned_at"),
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
    #: The subject that created the record (seed 002); empty for the first release's.
    Column("created_by", String(OWNER_MAX)),
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
    #: ``models.UploadState``
    Column("state", String(16), nullable=False),
    Column("name", Text),
    Column("content_type", String(CONTENT_TYPE_MAX), nullable=False),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("staging_key", Text, nullable=False),
    Column("created", UtcDateTime, nullable=False),
    #: When the presigned URL stops working; an upload still awaiting its bytes a while
    #: after that is expired.
    Column("expires", UtcDateTime, nullable=False),
    Column("lease_holder", String(64)),
    Column("lease_until", UtcDateTime),
    #: Why it was refused or failed, in words (never the store's or scanner's text).
    Column("detail", Text),
    Column("created_by", String(OWNER_MAX)),
    #: Ingestions begun: a scanner or store failure is retried a bounded number of times.
    Column("attempts", Integer, nullable=False, server_default="0"),
    #: The error code it ended with (``errors``), and the signature when infected.
    Column("code", String(64)),
    Column("signature", Text),
    Column("finished", UtcDateTime),
    #: A multipart plan's: the store's upload id, and the size of every part but the last.
    Column("multipart_id", Text),
    Column("part_size", BigInteger),
    #: put | parts | form: how the bytes come (``index.uploads.Upload.kind``).
    Column("kind", String(8), nullable=False, server_default="put"),
    #: The uploading client's unscannable policy when the intent was made (NULL: the
    #: deployment's), for the ingestion, which has no principal.
    Column("unscannable", String(16)),
    Index("uploads_owner", "owner", "created"),
    Index("uploads_state", "state", "expires"),
    Index("uploads_file", "owner", "file_id"),
)

#: Objects of the partner links bucket (seed 003): the version the scanner judged and its
#: verdict, and until when an upload or a download link for the object is out. The two
#: never overlap, so what a download link serves is the version that was scanned.
links = Table(
    "links",
    metadata,
    Column("object_key", Text, primary_key=True),
    Column("resource_id", String(128), nullable=False),
    #: pending | clean | infected | unscannable (``models.ScanState``)
    Column("state", String(16), nullable=False),
    Column("version", Text),
    Column("signature", Text),
    Column("scanner", Text),
    Column("scanned_at", UtcDateTime),
    Column("upload_until", UtcDateTime),
    Column("download_until", UtcDateTime),
    Column("created", UtcDateTime, nullable=False),
)

# ------------------------------------------------------------------ identity and audit

#: Registered clients (services, workers, researchers' tools): who they are, what they may
#: do, and how they prove it. Secrets are kept only as slow hashes; ``jwks`` holds the
#: public keys a ``private_key_jwt`` client signs its assertions with.
clients = Table(
    "clients",
    metadata,
    Column("id", String(OWNER_MAX), primary_key=True),
    #: participant | worker | researcher | admin (``auth.principal.Role``)
    Column("role", String(16), nullable=False),
    #: Space-separated scopes the client may be granted (a token asks for at most these).
    Column("scopes", Text, nullable=False),
    #: The owner namespace the client's own files live in.
    Column("owner", String(OWNER_MAX), nullable=False),
    Column("secret_hash", Text),
    Column("jwks", JSON),
    Column("created", UtcDateTime, nullable=False),
    Column("revoked", UtcDateTime),
    #: Its upload policy (``upload_policy.UploadPolicy``): space-separated media types or
    #: ``type/*`` patterns (NULL: whatever the deployment accepts), and reject | quarantine
    #: (NULL: the deployment's).
    Column("allowed_types", Text),
    Column("unscannable", String(16)),
)

#: API keys of registered clients. A key is presented as ``fsk_<id>_<secret>``: the id
#: finds the row, the secret is checked against its slow hash.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("client_id", String(OWNER_MAX), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("expires", UtcDateTime),
    Column("revoked", UtcDateTime),
    ForeignKeyConstraint(["client_id"], ["clients.id"], name="api_keys_client_fkey"),
    Index("api_keys_client", "client_id"),
)

#: Who may act for which owner (seed 000): a worker writes and reads the files of the
#: participants it serves, a researcher reads those it is granted.
grants = Table(
    "grants",
    metadata,
    Column("grantee", String(OWNER_MAX), nullable=False),
    Column("owner", String(OWNER_MAX), nullable=False),
    #: read | write (write includes read)
    Column("access", String(8), nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("created_by", String(OWNER_MAX), nullable=False),
    PrimaryKeyConstraint("grantee", "owner", name="grants_pkey"),
    Index("grants_owner", "owner"),
)

#: The token endpoint's signing keys: each signs from ``created`` until ``sign_until`` and
#: is published (and accepted) until ``verify_until``, so tokens outlive a rotation.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_pem", Text, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("created", UtcDateTime, nullable=False),
    Column("sign_until", UtcDateTime, nullable=False),
    Column("verify_until", UtcDateTime, nullable=False),
)

#: ``jti`` values of client assertions already used (RFC 7523 replay protection), kept
#: until the assertion would have expired anyway.
used_assertions = Table(
    "used_assertions",
    metadata,
    Column("client_id", String(OWNER_MAX), nullable=False),
    Column("jti", String(255), nullable=False),
    Column("expires", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("client_id", "jti", name="used_assertions_pkey"),
    Index("used_assertions_expires", "expires"),
)

#: The audit trail: append-only, one row per audited action, each carrying a hash chained
#: over the previous row's, so an edited, removed or inserted row breaks the chain.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("action", String(32), nullable=False),
    #: success | denied | failed
    Column("result", String(16), nullable=False),
    Column("subject", String(OWNER_MAX)),
    Column("client", String(OWNER_MAX)),
    Column("role", String(16)),
    Column("source", String(64)),
    Column("owner", String(OWNER_MAX)),
    Column("file_id", String(FILE_ID_MAX)),
    Column("sha256", String(64)),
    Column("request_id", String(128)),
    Column("detail", JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("audit_events_at", "at", "seq"),
    Index("audit_events_subject", "subject", "seq"),
    Index("audit_events_file", "owner", "file_id", "seq"),
    Index("audit_events_action", "action", "seq"),
)

#: The head of the audit chain: one row, locked by every append, so appends are ordered
#: and each knows the hash it chains to.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# ------------------------------------------------------------------ webhooks

#: Callback URLs a client registered (issue 13): every outcome of the files its client may
#: read is posted there, signed with ``secret`` (Standard Webhooks). The secret signs, so
#: it is kept as itself, like the signing keys' private halves.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("client_id", String(OWNER_MAX), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    #: The event types it wants (a JSON list); None: every type.
    Column("events", JSON),
    Column("created", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["client_id"], ["clients.id"], name="webhook_endpoints_client_fkey"),
    Index("webhook_endpoints_client", "client_id"),
)

#: The outbox: one row per message and endpoint, written in the transaction of the change
#: it reports (with its audit row), delivered at least once by whichever replica leases
#: it. ``body`` is the exact JSON sent, so every retry signs the same bytes.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("endpoint_id", String(40), nullable=False),
    Column("type", String(32), nullable=False),
    Column("body", Text, nullable=False),
    #: pending | delivered | dead
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime),
    #: The last attempt's HTTP status (None: no answer) and what went wrong, in words.
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created", UtcDateTime, nullable=False),
    Column("delivered", UtcDateTime),
    ForeignKeyConstraint(
        ["endpoint_id"],
        ["webhook_endpoints.id"],
        name="webhook_deliveries_endpoint_fkey",
        ondelete="CASCADE",
    ),
    Index("webhook_deliveries_due", "state", "next_attempt"),
    Index("webhook_deliveries_endpoint", "endpoint_id", "created"),
)

#: Quarantined uploads (issue 13): infected or unscannable bytes kept in the quarantine
#: bucket under ``object_key`` as evidence, with the upload's facts and the latest verdict.
#: ``object_key`` is None once the bytes are gone (released into the permanent bucket,
#: or deleted); the row stays as the record of who did which.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(OWNER_MAX), nullable=False),
    #: The id the upload asked for (PUT, a direct upload), else None.
    Column("file_id", String(FILE_ID_MAX)),
    Column("name", Text),
    Column("content_type", String(CONTENT_TYPE_MAX), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    #: infected | unscannable (``models.ScanState``)
    Column("state", String(16), nullable=False),
    Column("signature", Text),
    Column("scanner", Text),
    Column("scanned_at", UtcDateTime),
    Column("object_key", Text),
    Column("created", UtcDateTime, nullable=False),
    Column("created_by", String(OWNER_MAX)),
    #: A release that rescanned it clean: when, by whom, and the file record it became.
    Column("released", UtcDateTime),
    Column("released_by", String(OWNER_MAX)),
    Column("released_file_id", String(FILE_ID_MAX)),
    Column("deleted", UtcDateTime),
    Column("deleted_by", String(OWNER_MAX)),
    #: While a release rescans it: until when that release holds it (one at a time, and
    #: no delete meanwhile).
    Column("release_until", UtcDateTime),
    Index("quarantine_created", "created", "id"),
)
