"""File operations as the API sees them: upload into a record, look records up, list,
search, patch, tag, delete.

Ownership is enforced by the index's keys: every call names the owner, and a record of
another owner is simply not found, so its existence does not leak.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from fileshare import errors
from fileshare.boundary import index_call
from fileshare.index.base import (
    ContentGone,
    FileIndex,
    FilePatch,
    FileQuery,
    Page,
    Placement,
    PreconditionFailed,
    Tag,
    TooLarge,
)
from fileshare.models import FileRecord
from fileshare.pipeline import Pipeline
from fileshare.storage.base import ObjectNotFound, Storage, StorageError

log = structlog.get_logger(__name__)
Clock = Callable[[], datetime]
#: Objects removed per sweep of the doomed list.
SWEEP_BATCH = 200
#: An object whose removal failed is tried again after this long (so that a few that
#: always fail cannot keep the others waiting).
SWEEP_RETRY = timedelta(minutes=10)
#: The sweeper takes an object as due this long after the index says it is.
SWEEP_MARGIN = timedelta(minutes=5)
#: The most tags one file may carry.
MAX_TAGS_PER_FILE = 50


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Uploaded:
    record: FileRecord
    #: False when the record existed: the owner's retried identical POST, or a PUT that
    #: replaced a record. Whether the *content* was already held is not told: it may be
    #: another owner's, and saying so would let anyone confirm what others stored.
    created: bool


@dataclass(frozen=True)
class Target:
    """Where a PUT puts its record, and on which conditions (``If-Match`` etags as
    sha256 hex or ``*``; ``If-None-Match: *``)."""

    file_id: str
    if_match: tuple[str, ...] = ()
    if_none_match: bool = False


class FileService:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        index: FileIndex,
        storage: Storage,
        permanent_bucket: str,
        clock: Clock = utc_now,
    ) -> None:
        self.pipeline = pipeline
        self.index = index
        self.storage = storage
        self.permanent = permanent_bucket
        self.clock = clock

    # ---------------------------------------------------------------- uploads

    async def check_target(self, owner: str, target: Target) -> None:
        """Refuse a PUT whose conditions already fail, before a byte is read (the commit
        checks them again, atomically)."""
        if not (target.if_match or target.if_none_match):
            return
        current = await index_call(self.index.get(owner, target.file_id))
        _check_conditions(current, target)

    async def upload(
        self,
        owner: str,
        chunks: AsyncIterator[bytes],
        *,
        name: str | None,
        content_type: str,
        declared_size: int | None,
        sha256: str | None = None,
        target: Target | None = None,
    ) -> Uploaded:
        result = await self.pipeline.ingest(
            chunks, content_type=content_type, declared_size=declared_size, expected_sha256=sha256
        )
        placement = Placement(
            file_id=None if target is None else target.file_id,
            new_id=uuid.uuid4().hex,
            if_match=() if target is None else target.if_match,
            if_none_match=target is not None and target.if_none_match,
        )
        promoted = None if result.duplicate else result.content.key
        try:
            committed = await index_call(
                self.index.commit(
                    owner,
                    result.content,
                    name=name,
                    content_type=content_type,
                    placement=placement,
                    held=result.duplicate,
                    now=self.clock(),
                )
            )
        except (errors.Conflict, PreconditionFailed, ContentGone) as exc:
            # A definite "no": the object this upload promoted is nobody's.
            if promoted is not None:
                await self._remove_objects([promoted])
            if isinstance(exc, PreconditionFailed):
                raise errors.PreconditionFailed(str(exc)) from None
            if isinstance(exc, ContentGone):
                # Not saying why: the bytes may have been another owner's.
                raise errors.ContentChanged("the upload could not be recorded; retry") from None
            raise
        # The index may have chosen an object promoted by a concurrent upload of the same
        # bytes, or a replace may have released the old bytes: remove what nothing uses.
        await self._remove_objects(committed.doomed)
        record = committed.record
        log.info(
            "file.committed",
            file_id=record.id,
            sha256=record.content.sha256,
            created=committed.created,
            content_was_present=result.duplicate,
        )
        return Uploaded(record, created=committed.created)

    # ---------------------------------------------------------------- records

    async def get(self, owner: str, file_id: str) -> FileRecord:
        record = await index_call(self.index.get(owner, file_id))
        if record is None:
            raise errors.NotFound("no such file")
        return record

    async def list_files(self, owner: str, query: FileQuery) -> Page:
        return await index_call(self.index.list_files(owner, query))

    async def patch(self, owner: str, file_id: str, patch: FilePatch) -> FileRecord:
        try:
            return await index_call(self.index.update(owner, file_id, patch, self.clock()))
        except KeyError:
            raise errors.NotFound("no such file") from None
        except TooLarge as exc:
            raise errors.ValidationFailed(str(exc)) from None

    async def delete(self, owner: str, file_id: str) -> None:
        """Remove the record now, and its bytes from the permanent bucket when no record
        uses them any more (seed 000: a physical delete)."""
        removed = await index_call(self.index.delete(owner, file_id, self.clock()))
        if removed is None:
            raise errors.NotFound("no such file")
        log.info("file.deleted", file_id=file_id, objects_removed=len(removed.doomed))
        await self._remove_objects(removed.doomed)

    # ---------------------------------------------------------------- tags

    async def create_tag(self, owner: str, tag: str) -> bool:
        return await index_call(self.index.create_tag(owner, tag, self.clock()))

    async def list_tags(self, owner: str, after: str | None, limit: int) -> list[Tag]:
        return await index_call(self.index.list_tags(owner, after, limit))

    async def delete_tag(self, owner: str, tag: str) -> None:
        if not await index_call(self.index.delete_tag(owner, tag)):
            raise errors.NotFound("no such tag")

    async def tag_file(self, owner: str, file_id: str, tag: str, *, add: bool) -> FileRecord:
        try:
            record = await index_call(
                self.index.tag_file(
                    owner, file_id, tag, self.clock(), add=add, max_tags=MAX_TAGS_PER_FILE
                )
            )
        except TooLarge as exc:
            raise errors.ValidationFailed(str(exc)) from None
        if record is None:
            raise errors.NotFound("no such file")
        return record

    # ---------------------------------------------------------------- content

    async def open_content(
        self, record: FileRecord, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The record's bytes; the first chunk is fetched before returning so that a
        missing blob or a storage fault becomes an error before any header is sent."""
        content = record.content
        if not content.present or content.key is None:
            raise errors.ContentNotAvailable(f"the file's content is {content.state.value}")
        stream = self.storage.read(self.permanent, content.key, start=start, end=end)
        try:
            first = await anext(stream, b"")
        except ObjectNotFound:
            # Lost outside fileshare (a lifecycle rule, a hand-made delete): the one case
            # the index cannot know of. Forget the object, so that the next upload of these
            # bytes stores them again and every record of them is whole again.
            log.error("content.missing", file_id=record.id, sha256=content.sha256)
            await index_call(self.index.lose(content.sha256, content.key))
            raise errors.ContentNotAvailable(
                "the file's content is missing from storage; upload the file again"
            ) from None
        except StorageError as exc:
            log.warning("storage.failed", error=str(exc))
            raise errors.StorageUnavailable() from None
        return _prepend(first, stream)

    async def sweep(self) -> int:
        """Remove objects the index forgot but the store may still hold (a delete whose
        object removal failed). Safe on several replicas at once: keys are never reused,
        so removing one twice is harmless. Returns how many were removed."""
        # Only what has been due a while: a commit's clock (taken before it waited for a
        # connection and its retries) may run behind this one.
        due = self.clock() - SWEEP_MARGIN
        keys = await index_call(self.index.doomed(due, SWEEP_BATCH))
        return await self._remove_objects(keys)

    async def _remove_objects(self, keys: Sequence[str]) -> int:
        """Delete objects from the permanent bucket, then drop them from the doomed list.
        Never raises: what fails stays doomed, and the sweeper tries again."""
        removed: list[str] = []
        failed: list[str] = []
        for key in keys:
            try:
                await self.storage.delete(self.permanent, key)
                removed.append(key)
            except StorageError as exc:
                log.error("content.delete_failed", key=key, error=str(exc))
                failed.append(key)
        try:
            if removed:
                await self.index.forget(removed)
            if failed:
                await self.index.postpone(failed, self.clock() + SWEEP_RETRY)
        except Exception as exc:  # still listed: the sweeper deletes them again
            log.error("index.forget_failed", error=str(exc))
        return len(removed)


def _check_conditions(current: FileRecord | None, target: Target) -> None:
    if target.if_none_match and current is not None:
        raise errors.PreconditionFailed("the file exists (If-None-Match: *)")
    if target.if_match and (
        current is None
        or ("*" not in target.if_match and current.content.sha256 not in target.if_match)
    ):
        raise errors.PreconditionFailed("the file's current ETag does not match If-Match")


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
