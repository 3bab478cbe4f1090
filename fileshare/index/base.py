"""The file index contract: records per owner, the contents they share, tags.

The index is the source of truth. A content row says whether clean bytes exist and under
which key; a file row points at a content. Every method is one transaction; none leaves a
file pointing at content that is not (or will not stay) in the permanent bucket.

Errors: ``IndexUnavailable`` for any failure of the database (fail closed); the other
exceptions below are answers, not failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import EllipsisType
from typing import Protocol, TypeVar

from sqlalchemy import Connection

from fileshare.audit import AuditEvent
from fileshare.models import Content, FileRecord, ScanRecord, ScanState


class IndexError_(Exception):
    """Base of everything the index raises."""


class IndexUnavailable(IndexError_):
    """The index could not be reached or answered an error. Fail closed."""


class PreconditionFailed(IndexError_):
    """``If-Match`` / ``If-None-Match`` did not hold for the current record."""


class ContentGone(IndexError_):
    """The clean content an upload was deduplicated onto was deleted meanwhile; the upload
    holds no bytes of its own to promote and must be retried."""


class VerdictStands(IndexError_):
    """A commit of bytes scanned clean, while the index holds a verdict that they are not
    (infected or unscannable) made with a newer signature database: that verdict stands."""

    def __init__(self, state: ScanState, signature: str) -> None:
        super().__init__(f"a newer verdict stands: {state.value} ({signature})")
        self.state = state
        self.signature = signature


class TooLarge(IndexError_):
    """A patch would make the record's metadata larger than its limit."""


class Conflict(IndexError_):
    """A concurrent change made this one impossible (a record created at the same moment
    under the same id); retrying decides."""


@dataclass(frozen=True)
class Cursor:
    """A position in the (created, id) order every listing uses."""

    created: datetime
    id: str


@dataclass(frozen=True)
class FileQuery:
    """A page of one owner's files. Every filter narrows; none is required."""

    page_size: int = 50
    after: Cursor | None = None
    name: str | None = None
    #: ``type/subtype``, or ``type/*`` for every subtype.
    content_type: str | None = None
    #: ``created >= created_from`` (inclusive) and ``created < created_to`` (exclusive).
    created_from: datetime | None = None
    created_to: datetime | None = None
    #: Every one of these tags, exactly (case-sensitive).
    tags: tuple[str, ...] = ()
    #: A tag matching this pattern: ``%`` is any run of characters, everything else is
    #: literal (``_`` included); compared case-insensitively.
    tag_like: str | None = None
    #: Only files whose content is clean and stored (True), or only those that are not.
    present: bool | None = None


@dataclass(frozen=True)
class Page:
    items: Sequence[FileRecord]
    #: Where the next page starts; None on the last page.
    next: Cursor | None


@dataclass(frozen=True)
class Placement:
    """Where an upload's record goes, and under which conditions."""

    #: The client's id (PUT: create or replace); None lets the index reuse the owner's
    #: record of the same bytes, name and type (a retried POST) or take ``new_id``.
    file_id: str | None = None
    new_id: str = ""
    #: PUT only: the sha256 the current record must have (``If-Match``).
    if_match: tuple[str, ...] = ()
    #: PUT only: the record must not exist yet (``If-None-Match: *``).
    if_none_match: bool = False


@dataclass(frozen=True)
class Committed:
    record: FileRecord
    #: False when the record existed: a retried POST, or a replacing PUT.
    created: bool
    #: Permanent objects nothing references any more: delete them, then ``forget``.
    doomed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removed:
    doomed: tuple[str, ...]
    #: The content the record named.
    sha256: str | None = None


@dataclass(frozen=True)
class FilePatch:
    """RFC 7396 merge patch of a record: absent fields (``...``) are left alone."""

    name: str | EllipsisType | None = ...
    #: Merged into the metadata (keys set to None are removed); None empties it.
    metadata: Mapping[str, object] | EllipsisType | None = ...
    tags: tuple[str, ...] | EllipsisType = ...
    #: The largest the metadata may become, as compact JSON (UTF-8 bytes).
    metadata_limit: int = 16 * 1024


@dataclass(frozen=True)
class Tag:
    name: str
    created: datetime


T = TypeVar("T")


class Transactor(Protocol):
    """What the stores of the index's other aggregates (identity, audit) run on: one
    transaction per call, retried when it lost a race, failures mapped to
    ``IndexUnavailable`` / ``Conflict`` without secrets."""

    @property
    def dialect(self) -> str: ...

    async def transact(self, action: str, fn: Callable[[Connection], T], *, write: bool) -> T: ...


class FileIndex(Protocol):
    async def find_clean(self, sha256: str) -> Content | None:
        """The content with that hash if it is clean and stored (a dedup hit), else None."""

    async def claim(self, sha256: str, key: str, until: datetime) -> Content | None:
        """At an upload's last byte: the clean, stored content with that hash (a dedup hit),
        or None, and then ``key`` (the object the upload is about to promote) is doomed
        from ``until`` on unless a ``commit`` claims it first, so that a crash or a failed
        commit cannot leak it."""

    async def record_verdict(
        self,
        content: Content,
        *,
        released: str | None = None,
        audit: AuditEvent | None = None,
    ) -> None:
        """Remember a verdict that is not clean (infected, unscannable, failed) for bytes
        that are not stored; a clean content row is never downgraded here. ``released``:
        the key ``claim`` doomed, which no object will be promoted under after all.
        ``audit``: the row recording the verdict, written in the same transaction.

        Every method below that changes something takes such an ``audit`` event too: it is
        completed with what the change touched (file id, sha256) and appended to the audit
        trail in the change's own transaction, and only when something changed."""

    async def lease_rescans(
        self,
        *,
        scanned_before: datetime,
        older_db: int | None,
        round_started: datetime,
        now: datetime,
        until: datetime,
        limit: int,
    ) -> list[Content]:
        """Up to ``limit`` stored contents to scan again: first every one left ``failed``
        (migration 0002), then clean ones, oldest verdict first: those
        scanned before ``scanned_before``, or (``older_db``) with a signature database
        older than that version and made before ``round_started`` (a verdict of unknown
        database is due by age only; one of unknown time, the first release's, always).
        A verdict made in this round is never due again in it, so a round ends. Each is leased until
        ``until`` in the same transaction; one leased by another replica (its lease not
        past at ``now``) is skipped (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so replicas
        rescanning at once take disjoint sets and no sha256 is scanned twice."""

    async def record_rescan(
        self, content: Content, scan: ScanRecord, *, audit: AuditEvent
    ) -> list[tuple[str, str]]:
        """The verdict of a rescan of ``content`` (as ``lease_rescans`` gave it, with the
        sha1 and size the rescan hashed), and its lease released; its sha1 and size are
        recorded too. The same state (clean again): the provenance is brought up to date.
        Otherwise the content takes the new state at once — infected or unscannable: no
        record of it is served from then on, the object stays (as evidence, or until the
        rescanner moves it into the quarantine and ``lose``s it); a ``failed`` content
        found clean is served again — and one ``audit`` row per record of it (owner, file
        id) is written in the same transaction. Nothing changes if the content moved
        meanwhile (deleted, promoted again, judged). Returns the (owner, file id) of the
        records it changed, oldest record first."""

    async def commit(
        self,
        owner: str,
        content: Content,
        *,
        name: str | None,
        content_type: str,
        placement: Placement,
        held: bool,
        now: datetime,
        created_by: str | None = None,
        audit: AuditEvent | None = None,
    ) -> Committed:
        """Record an upload: make ``content`` (clean, stored under ``content.key``) known
        and point the owner's record at it, in one transaction.

        ``held``: the content was ``find_clean``'s answer (no bytes were promoted); raises
        ``ContentGone`` if it is no longer clean. Otherwise ``content.key`` is a fresh
        object this upload promoted: if the content became known meanwhile under another
        key, the record uses that one and this object is returned as doomed.

        Raises ``PreconditionFailed`` when the placement's conditions do not hold,
        ``Conflict`` when a concurrent create took the id. ``created_by`` names the subject
        of a new record; for bytes scanned by this upload (not ``held``) a ``scan.verdict``
        row precedes ``audit``'s."""

    async def get(self, owner: str, file_id: str) -> FileRecord | None:
        """The owner's record, or None."""

    async def list_files(self, owner: str, query: FileQuery) -> Page:
        """A page of the owner's records in (created, id) order."""

    async def update(
        self,
        owner: str,
        file_id: str,
        patch: FilePatch,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> FileRecord:
        """Apply ``patch``; raises ``KeyError`` when there is no such record and
        ``TooLarge`` when the merged metadata would pass ``patch.metadata_limit``."""

    async def delete(
        self, owner: str, file_id: str, now: datetime, audit: AuditEvent | None = None
    ) -> Removed | None:
        """Remove the record; if it was the last one of its content, forget the content
        too and return its object as doomed. None when there was no such record."""

    async def create_tag(
        self, owner: str, tag: str, now: datetime, audit: AuditEvent | None = None
    ) -> bool:
        """Add a tag to the owner's vocabulary; False if it was there already."""

    async def list_tags(self, owner: str, after: str | None, limit: int) -> list[Tag]:
        """The owner's tags in name order, after ``after``."""

    async def delete_tag(
        self, owner: str, tag: str, now: datetime | None = None, audit: AuditEvent | None = None
    ) -> bool:
        """Remove the tag from the vocabulary and from every file; False if unknown."""

    async def tag_file(
        self,
        owner: str,
        file_id: str,
        tag: str,
        now: datetime,
        *,
        add: bool,
        max_tags: int,
        audit: AuditEvent | None = None,
    ) -> FileRecord | None:
        """Put the tag on the file (creating it in the vocabulary) or take it off; None
        when there is no such record, ``TooLarge`` when the file has ``max_tags``."""

    async def lose(self, sha256: str, key: str) -> None:
        """The object was found missing from the store (or a rescan moved it into the
        quarantine): the content is no longer present (its records and state stay), and
        the next upload of its bytes is scanned and, clean, stores them again."""

    async def doomed(self, now: datetime, limit: int) -> list[str]:
        """Objects due for deletion from the permanent bucket at ``now``, oldest first."""

    async def forget(self, keys: Sequence[str]) -> None:
        """The objects are gone from the store: drop them from the doomed list."""

    async def postpone(self, keys: Sequence[str], until: datetime) -> None:
        """Removing these failed: not due again before ``until``."""

    async def ping(self) -> None:
        """Raise ``IndexUnavailable`` unless the index answers."""

    async def close(self) -> None: ...
