"""File operations as the API sees them: upload into a record, look a record up.

Ownership is enforced here: a record of another owner is reported as not found, so its
existence does not leak.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from fileshare import errors
from fileshare.index.base import FileIndex, IndexError_
from fileshare.models import FileRecord
from fileshare.pipeline import Pipeline
from fileshare.storage.base import ObjectNotFound, Storage, StorageError

log = structlog.get_logger(__name__)
#: Record ids are uuid4 hex; anything else cannot name a record.
_FILE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Uploaded:
    record: FileRecord
    #: False when the owner already had this record (a retried upload). Whether the
    #: *content* was already held is not told: it may be another owner's, and saying so
    #: would let anyone confirm what others stored.
    created: bool


class FileService:
    def __init__(
        self, *, pipeline: Pipeline, index: FileIndex, storage: Storage, permanent_bucket: str
    ) -> None:
        self.pipeline = pipeline
        self.index = index
        self.storage = storage
        self.permanent = permanent_bucket

    async def upload(
        self,
        owner: str,
        chunks: AsyncIterator[bytes],
        *,
        name: str | None,
        content_type: str,
        declared_size: int | None,
        sha256: str | None = None,
    ) -> Uploaded:
        result = await self.pipeline.ingest(
            chunks, content_type=content_type, declared_size=declared_size, expected_sha256=sha256
        )
        content = result.content
        try:
            # A retry of the same upload (same owner, bytes, name, type) gets the same record.
            existing = await self.index.find_same(owner, content.sha256, name, content_type)
            if existing is not None:
                return Uploaded(existing, created=False)
            record = FileRecord(
                id=uuid.uuid4().hex,
                owner=owner,
                name=name,
                content_type=content_type,
                sha256=content.sha256,
                sha1=content.sha1,
                size=content.size,
                created=datetime.now(UTC).replace(microsecond=0),
            )
            await self.index.add(record)
        except IndexError_ as exc:
            log.error("index.failed", error=str(exc))
            raise errors.ServiceUnavailable("the file index failed") from None
        log.info("file.created", file_id=record.id, content_was_present=result.duplicate)
        return Uploaded(record, created=True)

    async def get(self, owner: str, file_id: str) -> FileRecord:
        if not _FILE_ID.match(file_id):
            raise errors.NotFound("no such file")  # not even worth asking the index
        try:
            record = await self.index.get(file_id)
        except IndexError_ as exc:
            log.error("index.failed", error=str(exc))
            raise errors.ServiceUnavailable("the file index failed") from None
        if record is None or record.owner != owner:
            raise errors.NotFound("no such file")
        return record

    async def open_content(
        self, record: FileRecord, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The record's bytes; the first chunk is fetched before returning so that a
        missing blob or a storage fault becomes an error before any header is sent."""
        stream = self.storage.read(self.permanent, record.key, start=start, end=end)
        try:
            first = await anext(stream, b"")
        except ObjectNotFound:
            log.error("content.missing", file_id=record.id, sha256=record.sha256)
            raise errors.StorageUnavailable("the file's content is missing") from None
        except StorageError as exc:
            log.warning("storage.failed", error=str(exc))
            raise errors.StorageUnavailable() from None
        return _prepend(first, stream)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        if first:
            yield first
        try:
            async for chunk in rest:
                yield chunk
        except StorageError as exc:
            log.warning("storage.failed", error=str(exc))
            raise errors.StorageUnavailable() from None
    finally:
        # Closing the storage stream releases its connection when the client goes away.
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
