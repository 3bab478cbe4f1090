"""The storage contract every backend (local, S3, GCS) implements.

Backends speak in buckets and keys chosen by fileshare, never by clients. SDK
exceptions never leave a backend: they become the neutral errors below, so the
pipeline and the API see one vocabulary whatever the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

#: Where uploads stage in the unscanned bucket (keys ``staging/<uuid>``).
STAGING_PREFIX = "staging/"
#: Where objects uploaded straight to the store (presigned URLs) stage: keys
#: ``staging/direct/<upload id>``, so that the reconciler can tell which upload an object is.
DIRECT_PREFIX = f"{STAGING_PREFIX}direct/"
#: Where ``Storage.verify_encryption`` writes its (empty, at once deleted) probe objects:
#: under the staging prefix, which the IAM policy and the lifecycle rule already cover.
PROBE_PREFIX = f"{STAGING_PREFIX}probe-"


class StorageError(Exception):
    """A backend operation failed (network, server, permission). Fail closed."""


class ObjectNotFound(StorageError):
    """The object (or bucket) does not exist."""


class NotAsPlanned(StorageError):
    """A multipart upload's parts are not those of its plan (a size, a number)."""


class ObjectExists(StorageError):
    """A conditional create found the key already present."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    #: Backend-specific opaque version marker (ETag, generation, mtime_ns...).
    version: str
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


class Writer(Protocol):
    """A streaming write of one object, invisible until ``commit``.

    Memory is bounded: a backend holds at most its part buffer plus the parts it is
    sending (``parts_in_flight``). ``write`` applies back-pressure by not returning
    until the data fits that bound.
    """

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``. May raise ``StorageError``; the writer is then unusable and
        the caller must still call ``abort``."""

    def buffered(self) -> bytes | None:
        """Everything written so far, if it is all still in memory (nothing sent to the
        backend yet); otherwise ``None``. Lets small uploads skip staging."""

    async def seal(self) -> None:
        """Send what is written, leaving only the step that makes the object visible to
        ``commit``: S3 completes its multipart upload, GCS sends the last piece of its
        resumable session (held back: under 256 KiB, or nothing for a body that small,
        which ``commit`` writes in one request), the local store renames its hidden file.
        Until then the object cannot be read, listed or completed by anyone without the
        writer (single-write promotion seals inside the scan window and commits on a clean
        verdict). No ``write`` may follow. Raises ``StorageError``; then only ``abort``."""

    async def commit(self) -> ObjectInfo:
        """Make the object visible under its key and return its info."""

    async def abort(self) -> None:
        """Discard everything: nothing is left visible nor billed (multipart uploads
        aborted, resumable sessions cancelled, temp files removed). Idempotent, never
        raises, safe after a failed ``write`` or ``commit``."""


class PendingCopy(Protocol):
    """A server-side copy prepared into an invisible target; see ``Storage.begin_copy``."""

    async def commit(self) -> ObjectInfo:
        """Make the target visible. Raises ``ObjectExists`` if the target appeared
        meanwhile and the backend could tell (the caller treats that as a dedup hit)."""

    async def abort(self) -> None:
        """Discard the prepared target. Idempotent, never raises."""


@dataclass(frozen=True)
class Presigned:
    """A request anyone holding it may make to the store, without fileshare, until it
    expires: the method, the URL and the headers that must be sent as they are (the
    signature covers them)."""

    method: str
    url: str
    headers: dict[str, str]
    expires: datetime


@runtime_checkable
class Presigner(Protocol):
    """A store that can hand out presigned requests (S3); the others cannot, and
    fileshare then refuses the direct-to-bucket flows rather than proxy them."""

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size: int,
        sha256: str | None,
        expires: int,
    ) -> Presigned:
        """A write-only PUT of exactly this object: the signature binds the type, the
        length, the encryption headers and, when given, the sha256 checksum (hex), so
        that an upload with any other is refused by the store. It creates the object only
        if there is none (``If-None-Match: *``, GCS ``x-goog-if-generation-match: 0``): a
        second PUT cannot replace bytes an ingestion is reading — their version is an ETag,
        an MD5 on most stores, and MD5 collisions are cheap."""

    async def presign_download(
        self, bucket: str, key: str, *, content_type: str, disposition: str, expires: int
    ) -> Presigned:
        """A GET of the object whose answer carries this type and Content-Disposition."""


@dataclass(frozen=True)
class PresignedForm:
    """An HTML form upload (S3 POST policy): POST ``url`` as multipart/form-data with
    ``fields`` first, as they are, and the file last."""

    url: str
    fields: dict[str, str]
    expires: datetime


@runtime_checkable
class FormPresigner(Protocol):
    """A store that can sign a POST policy, for uploads from a browser's form."""

    async def presign_form(
        self, bucket: str, key: str, *, content_type: str, size: int, expires: int
    ) -> PresignedForm:
        """A policy for exactly this key and type, with ``content-length-range`` holding
        the size: the store refuses any other file."""


@runtime_checkable
class SessionStarter(Protocol):
    """A store whose large uploads go through a session fileshare opens (a GCS resumable
    upload): its URI is the uploader's one-time credential for exactly one object."""

    async def start_direct_session(
        self, bucket: str, key: str, *, content_type: str, size: int
    ) -> Presigned:
        """Open a resumable upload of exactly ``size`` bytes that creates ``key`` (never
        replaces it); the request to send the bytes with (ranges as the store's resumable
        protocol has them). The URI works until the store drops the session (a week)."""

    async def cancel_direct_session(self, url: str) -> None:
        """Drop the session and what was sent to it. Never raises."""


@dataclass(frozen=True)
class PartPlan:
    """One part of a presigned multipart upload: its number (from 1), exact size and
    request."""

    number: int
    size: int
    request: Presigned


@runtime_checkable
class MultipartPresigner(Protocol):
    """A store that can also hand out a multipart upload part by part (S3), for uploads
    larger than one PUT takes. The upload stays invisible (no object under its key) until
    fileshare completes it."""

    async def presign_multipart(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str,
        part_sizes: list[int],
        expires: int,
    ) -> tuple[str, list[PartPlan]]:
        """Begin a multipart upload of ``key`` and presign a PUT of each part (its length
        signed); the store's upload id and the plan."""

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, part_sizes: list[int]
    ) -> bool:
        """Complete the upload if every part is there with its planned size; False (and
        nothing changed) when parts are missing. Raises ``ObjectNotFound`` when there is no
        such upload (completed or aborted already), ``NotAsPlanned`` when a part has another
        size than planned, ``StorageError`` when the store fails."""

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts. Idempotent, never raises."""


class Storage(Protocol):
    """Object storage, as fileshare needs it."""

    async def open_writer(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> Writer:
        """Start a streaming write; nothing is visible until ``Writer.commit``."""

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Write a small object in one request. With ``if_absent``, raise
        ``ObjectExists`` rather than replace an existing object."""

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """Return the object's info or raise ``ObjectNotFound``."""

    def read(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        version: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Stream bytes ``start`` to ``end`` inclusive (``None``: to the end). Raises
        ``ObjectNotFound`` on first iteration if the object is missing. Chunks are
        bounded (no whole-object buffers). ``version`` (an ``ObjectInfo.version``) pins
        the object: if it is another version by now, the read fails with
        ``StorageError`` rather than stream bytes other than those the caller saw."""

    async def begin_copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        size: int,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        src_version: str | None = None,
    ) -> PendingCopy:
        """Start a server-side copy whose result stays invisible until
        ``PendingCopy.commit``: the copy can run while a scan verdict is awaited, and be
        thrown away if the verdict is not clean. Never downloads and re-uploads.

        ``src_version`` (the ``ObjectInfo.version`` the staging write returned) pins the
        source: if the object under ``src_key`` is no longer that version, the copy fails
        with ``StorageError`` rather than promote bytes that were not the ones scanned."""

    async def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    def list_keys(self, bucket: str, prefix: str = "") -> AsyncIterator[str]:
        """Yield the keys under ``prefix`` (for maintenance and tests)."""

    def list_stale(self, bucket: str, prefix: str, before: datetime) -> AsyncIterator[str]:
        """Yield the keys under ``prefix`` whose object was written before ``before``
        (leftovers of uploads that never finished, for the crash-recovery sweeper)."""

    async def abort_stale_uploads(self, bucket: str, prefix: str, before: datetime) -> int:
        """Abort the unfinished writes under ``prefix`` begun before ``before`` (S3
        multipart uploads; local partial writes, whatever their key) and return how many.
        GCS cannot list resumable sessions: 0 (an abandoned one expires after a week)."""

    async def ping(self) -> None:
        """Check that both buckets are reachable; raise ``StorageError`` if not."""

    async def verify_encryption(self) -> str:
        """Check, once at start-up, that what fileshare writes is encrypted at rest as
        configured (``storage.encryption``), with a probe where the store can show it;
        return one line saying what was found. Raises ``StorageError`` when the store
        does not encrypt as asked: fail closed, before any upload."""

    async def close(self) -> None:
        """Release clients and connections."""
