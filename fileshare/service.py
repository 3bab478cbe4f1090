"""File operations as the API sees them: upload into a record, look records up, list,
search, patch, tag, delete.

Ownership is enforced by the index's keys: every call names its ``Actor``, whose owner the
policy has already settled, and a record of another owner is simply not found, so its
existence does not leak. Every operation leaves its row in the audit trail: a change in the
change's own transaction, a read before its answer is given (no row, no answer: the trail
fails closed), a refusal best effort.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from fileshare import errors
from fileshare.audit import Action, Actor, AuditEvent, Result
from fileshare.boundary import index_call, prepended, storage_call
from fileshare.index.audit import AuditStore
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
    VerdictStands,
)
from fileshare.index.uploads import UploadStore
from fileshare.models import FileRecord, ScanState, UploadState
from fileshare.pipeline import IngestResult, Origin, Pipeline
from fileshare.rescan import Rescanner
from fileshare.storage.base import ObjectNotFound, Presigned, Presigner, Storage, StorageError
from fileshare.upload_policy import NO_POLICY

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
        audit: AuditStore,
        uploads: UploadStore | None = None,
        redirect_ttl: int = 300,
        rescanner: Rescanner | None = None,
        rescan_on_download: timedelta | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.pipeline = pipeline
        #: A download of content verdicted longer ago than ``rescan_on_download`` has it
        #: rescanned first (``FILESHARE_RESCAN_ON_DOWNLOAD``).
        self.rescanner = rescanner if rescan_on_download else None
        self.rescan_on_download = rescan_on_download
        #: Direct uploads, so that a file still on its way is "pending", not "not found".
        self.uploads = uploads
        self.presigner = storage if isinstance(storage, Presigner) else None
        self.redirect_ttl = redirect_ttl
        self.index = index
        self.audit = audit
        self.storage = storage
        self.permanent = permanent_bucket
        self.clock = clock

    # ---------------------------------------------------------------- uploads

    async def check_target(self, actor: Actor, target: Target) -> None:
        """Refuse a PUT whose conditions already fail, before a byte is read (the commit
        checks them again, atomically)."""
        if not (target.if_match or target.if_none_match):
            return
        current = await index_call(self.index.get(_owner(actor), target.file_id))
        try:
            _check_conditions(current, target)
        except errors.FileshareError as exc:
            await self.audit_refusal(actor.event(Action.FILE_REPLACE, file_id=target.file_id), exc)
            raise

    async def upload(
        self,
        actor: Actor,
        chunks: AsyncIterator[bytes],
        *,
        name: str | None,
        content_type: str,
        declared_size: int | None,
        sha256: str | None = None,
        target: Target | None = None,
    ) -> Uploaded:
        action = Action.FILE_UPLOAD if target is None else Action.FILE_REPLACE
        event = actor.event(action, file_id=None if target is None else target.file_id)
        try:
            return await self._upload(
                actor, event, chunks, name, content_type, declared_size, sha256, target
            )
        except errors.FileshareError as exc:
            await self.audit_refusal(event, exc)
            raise

    async def _upload(
        self,
        actor: Actor,
        event: AuditEvent,
        chunks: AsyncIterator[bytes],
        name: str | None,
        content_type: str,
        declared_size: int | None,
        sha256: str | None,
        target: Target | None,
    ) -> Uploaded:
        owner = _owner(actor)
        created_by = actor.principal.subject if actor.principal else None
        origin = Origin(
            owner,
            file_id=None if target is None else target.file_id,
            name=name,
            created_by=created_by,
        )
        result = await self.pipeline.ingest(
            chunks,
            content_type=content_type,
            declared_size=declared_size,
            expected_sha256=sha256,
            audit=event,
            origin=origin,
            policy=actor.principal.policy if actor.principal else NO_POLICY,
        )
        placement = Placement(
            file_id=None if target is None else target.file_id,
            new_id=uuid.uuid4().hex,
            if_match=() if target is None else target.if_match,
            if_none_match=target is not None and target.if_none_match,
        )
        return await self.record_ingested(
            owner, result, event, name, content_type, placement, created_by=created_by
        )

    async def record_ingested(
        self,
        owner: str,
        result: IngestResult,
        event: AuditEvent,
        name: str | None,
        content_type: str,
        placement: Placement,
        *,
        created_by: str | None,
    ) -> Uploaded:
        """Record ingested bytes as the owner's file (after a streamed upload, or the
        ingestion of a presigned one); what the commit leaves unused is removed."""
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
                    created_by=created_by,
                    audit=event,
                )
            )
        except (errors.Conflict, PreconditionFailed, ContentGone, VerdictStands) as exc:
            # A definite "no": the object this upload promoted is nobody's.
            if promoted is not None:
                await self._remove_objects([promoted])
            if isinstance(exc, PreconditionFailed):
                raise errors.PreconditionFailed(str(exc)) from None
            if isinstance(exc, VerdictStands):
                # A newer signature database said so (this replica's clamd lags behind).
                log.warning("upload.newer_verdict_stands", state=exc.state.value)
                if exc.state is ScanState.UNSCANNABLE:
                    raise errors.Unscannable(exc.signature) from None
                raise errors.Infected(exc.signature) from None
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

    async def get(
        self,
        actor: Actor,
        file_id: str,
        action: Action | None = None,
        *,
        refused_as: Action | None = None,
        present: bool = False,
    ) -> FileRecord:
        """The record, or ``NotFound``; with ``present``, ``ContentNotAvailable`` unless its
        content is clean and stored (and, its verdict older than ``rescan_on_download``,
        still clean when rescanned now; a 503 if it cannot be). ``action`` (a read:
        metadata, a download) is audited before the record is returned. Without it the
        lookup is a first step of another operation (``refused_as``), which is audited
        itself when it goes ahead, and here when it is refused."""
        record = await index_call(self.index.get(_owner(actor), file_id))
        exc: errors.FileshareError | None = None
        if record is None:
            exc = await self._not_recorded(_owner(actor), file_id)
        elif present and not record.content.present:
            exc = errors.ContentNotAvailable(f"the file's content is {record.content.state.value}")
        elif present and self._verdict_too_old(record):
            assert self.rescanner is not None
            try:
                await self.rescanner.verify(record.content)
                # Read again: a verdict another replica recorded while this one scanned
                # (with newer signatures, or a delete) wins over the clean one seen here.
                record = await index_call(self.index.get(_owner(actor), file_id))
                if record is None:
                    exc = errors.NotFound("no such file")
                elif not record.content.present:
                    state = record.content.state.value
                    exc = errors.ContentNotAvailable(f"the file's content is {state}")
            except errors.FileshareError as no:
                exc = no
        refused = action or refused_as
        if exc is not None:
            if refused is not None:
                await self.audit_refusal(actor.event(refused, file_id=file_id), exc)
            raise exc
        assert record is not None
        if action is not None:
            await self.audit_read(
                actor.event(action, file_id=record.id, sha256=record.content.sha256)
            )
        return record

    def _verdict_too_old(self, record: FileRecord) -> bool:
        if self.rescanner is None or self.rescan_on_download is None:
            return False
        scanned = record.content.scan.scanned_at  # None: unknown, the oldest
        return scanned is None or scanned < self.clock() - self.rescan_on_download

    async def _not_recorded(self, owner: str, file_id: str) -> errors.FileshareError:
        """Why there is no record: none (404), or the owner's direct upload that is to
        become it is still pending (409 ``content_pending``) or ended without a file."""
        upload = None
        if self.uploads is not None:
            upload = await index_call(self.uploads.for_file(owner, file_id))
        if upload is None or upload.state is UploadState.CLEAN:
            return errors.NotFound("no such file")
        if upload.state is UploadState.PENDING:
            return errors.ContentPending("the upload is not ingested yet; see its status")
        return errors.ContentNotAvailable(f"the upload ended {upload.state.value}")

    async def redirect(
        self, actor: Actor, record: FileRecord, disposition: str
    ) -> Presigned | None:
        """A short-lived presigned GET of the record's object whose answer carries the
        record's type and ``disposition``, where the store can sign one (None elsewhere:
        the download is streamed)."""
        if self.presigner is None or record.content.key is None:
            return None
        presigned = await storage_call(
            "presign",
            self.presigner.presign_download(
                self.permanent,
                record.content.key,
                content_type=record.content_type,
                disposition=disposition,
                expires=self.redirect_ttl,
            ),
        )
        # The URL is a credential of its own: its issue is audited (never the URL itself).
        await self.audit_read(
            actor.event(
                Action.URL_ISSUE,
                file_id=record.id,
                sha256=record.content.sha256,
                detail={"action": "download", "until": presigned.expires.isoformat()},
            )
        )
        return presigned

    async def list_files(self, actor: Actor, query: FileQuery, *, search: bool = False) -> Page:
        page = await index_call(self.index.list_files(_owner(actor), query))
        action = Action.FILE_SEARCH if search else Action.FILE_LIST
        await self.audit_read(actor.event(action, detail={"count": len(page.items)}))
        return page

    async def patch(self, actor: Actor, file_id: str, patch: FilePatch) -> FileRecord:
        event = actor.event(Action.FILE_UPDATE, file_id=file_id)
        try:
            return await index_call(
                self.index.update(_owner(actor), file_id, patch, self.clock(), audit=event)
            )
        except KeyError:
            exc: errors.FileshareError = errors.NotFound("no such file")
        except TooLarge as too_large:
            exc = errors.ValidationFailed(str(too_large))
        await self.audit_refusal(event, exc)
        raise exc

    async def delete(self, actor: Actor, file_id: str) -> None:
        """Remove the record now, and its bytes from the permanent bucket when no record
        uses them any more (seed 000: a physical delete)."""
        event = actor.event(Action.FILE_DELETE, file_id=file_id)
        removed = await index_call(
            self.index.delete(_owner(actor), file_id, self.clock(), audit=event)
        )
        if removed is None:
            exc = errors.NotFound("no such file")
            await self.audit_refusal(event, exc)
            raise exc
        log.info("file.deleted", file_id=file_id, objects_removed=len(removed.doomed))
        await self._remove_objects(removed.doomed)

    # ---------------------------------------------------------------- tags

    async def create_tag(self, actor: Actor, tag: str) -> bool:
        event = actor.event(Action.TAG_CREATE)
        return await index_call(
            self.index.create_tag(_owner(actor), tag, self.clock(), audit=event)
        )

    async def list_tags(self, actor: Actor, after: str | None, limit: int) -> list[Tag]:
        found = await index_call(self.index.list_tags(_owner(actor), after, limit))
        await self.audit_read(actor.event(Action.TAG_LIST, detail={"count": len(found)}))
        return found

    async def delete_tag(self, actor: Actor, tag: str) -> None:
        event = actor.event(Action.TAG_DELETE)
        if not await index_call(
            self.index.delete_tag(_owner(actor), tag, self.clock(), audit=event)
        ):
            exc = errors.NotFound("no such tag")
            await self.audit_refusal(event, exc)
            raise exc

    async def tag_file(self, actor: Actor, file_id: str, tag: str, *, add: bool) -> FileRecord:
        event = actor.event(Action.FILE_TAG if add else Action.FILE_UNTAG, file_id=file_id)
        try:
            record = await index_call(
                self.index.tag_file(
                    _owner(actor),
                    file_id,
                    tag,
                    self.clock(),
                    add=add,
                    max_tags=MAX_TAGS_PER_FILE,
                    audit=event,
                )
            )
        except TooLarge as exc:
            refused = errors.ValidationFailed(str(exc))
            await self.audit_refusal(event, refused)
            raise refused from None
        if record is None:
            missing = errors.NotFound("no such file")
            await self.audit_refusal(event, missing)
            raise missing
        return record

    # ---------------------------------------------------------------- audit

    async def audit_read(self, event: AuditEvent) -> None:
        """The audit row of a read, written before the answer: if it cannot be written,
        the read is refused (503), never served unrecorded."""
        await index_call(self.audit.record(event, now=self.clock()))

    async def audit_refusal(self, event: AuditEvent, exc: errors.FileshareError) -> None:
        """The audit row of a refused or failed operation. Best effort: the answer stays
        the refusal, whether or not the row could be written."""
        result = Result.DENIED if exc.status < 500 else Result.FAILED
        try:
            await self.audit.record(
                event.but(result=result, detail={**event.detail, "code": exc.code}),
                now=self.clock(),
            )
        except Exception as failure:
            log.warning("audit.write_failed", action=str(event.action), error=str(failure))

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
        return prepended(first, stream)

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


def _owner(actor: Actor) -> str:
    if actor.owner is None:
        raise AssertionError("an actor without an owner reached the file service")
    return actor.owner


def _check_conditions(current: FileRecord | None, target: Target) -> None:
    if target.if_none_match and current is not None:
        raise errors.PreconditionFailed("the file exists (If-None-Match: *)")
    if target.if_match and (
        current is None
        or ("*" not in target.if_match and current.content.sha256 not in target.if_match)
    ):
        raise errors.PreconditionFailed("the file's current ETag does not match If-Match")
