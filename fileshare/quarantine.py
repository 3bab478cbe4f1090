"""The quarantine's administration: list what was kept, show it, release it, hand its bytes
to an administrator, delete it. Every step is audited, reads before their answer.

A release rescans the bytes with clamd now and, only if they are clean, promotes them the
way a direct upload is (``Pipeline.ingest_staged`` reading from the quarantine bucket, then
``FileService.record_ingested``): the permanent bucket never holds anything clamd did not
call clean (invariant 1). There is no forced promotion: what an administrator insists on
having is streamed to that administrator alone (``open_content``), with the reason given,
and stays in quarantine.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog

from fileshare import errors
from fileshare.audit import Action, Actor, AuditEvent, Result
from fileshare.boundary import close_stream, index_call, prepended, storage_call
from fileshare.index.base import Cursor, Placement
from fileshare.index.quarantine import Item, QuarantineStore
from fileshare.models import ScanRecord, ScanState
from fileshare.pipeline import IngestResult, Pipeline
from fileshare.service import FileService, Uploaded
from fileshare.storage.base import ObjectNotFound, Storage, StorageError

log = structlog.get_logger(__name__)

#: What a listing filters on (``GET /v1/admin/quarantine?status=``).
STATUSES = ("held", "released", "deleted")
#: How long a release holds its item: longer than the rescan of the largest upload.
RELEASE_HOLD = timedelta(hours=1)
#: Item ids are fileshare's own (uuid4 hex): anything else is no item.
ITEM_ID = re.compile(r"[0-9a-f]{32}")
#: What an administrator must say when taking quarantined bytes: at most this long, no
#: control characters, not blank. One pattern for the server and the OpenAPI document (a
#: character-class regex that Python and ECMAScript read alike).
REASON_MAX = 500
_TEXT = r"[^\u0000-\u001f\u007f-\u009f]"
_VISIBLE = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
REASON_PATTERN = f"^{_TEXT}*{_VISIBLE}{_TEXT}*$"
_REASON = re.compile(REASON_PATTERN)


def check_reason(value: str | None) -> str:
    """A forced download's reason: required, one line of text that is not blank."""
    reason = value or ""
    if len(reason) > REASON_MAX or not _REASON.fullmatch(reason):
        raise errors.InvalidParameter(
            f"reason is required: why the bytes are taken, 1-{REASON_MAX} characters of text"
        )
    return reason


class QuarantineAdmin:
    def __init__(
        self,
        *,
        store: QuarantineStore,
        storage: Storage,
        bucket: str,
        pipeline: Pipeline,
        files: FileService,
    ) -> None:
        self.store = store
        self.storage = storage
        self.bucket = bucket
        self.pipeline = pipeline
        self.files = files

    def _now(self) -> datetime:
        return self.files.clock()

    async def page(
        self, actor: Actor, limit: int, *, before: Cursor | None = None, status: str | None = None
    ) -> tuple[list[Item], Cursor | None]:
        found, more = await index_call(self.store.page(limit, before=before, status=status))
        await self.files.audit_read(
            actor.event(Action.QUARANTINE_LIST, owner=None, detail={"count": len(found)})
        )
        return found, more

    async def get(self, actor: Actor, item_id: str) -> Item:
        item = await self._item(item_id)
        await self.files.audit_read(self._event(actor, Action.QUARANTINE_READ, item))
        return item

    async def _item(self, item_id: str) -> Item:
        item = None
        if ITEM_ID.fullmatch(item_id):
            item = await index_call(self.store.get(item_id))
        if item is None:
            raise errors.NotFound("no such quarantined item")
        return item

    async def _held(self, item_id: str) -> tuple[Item, str]:
        item = await self._item(item_id)
        if item.object_key is None:
            raise errors.NotQuarantined(
                "the item was released" if item.released else "the item was deleted"
            )
        return item, item.object_key

    def _event(self, actor: Actor, action: Action, item: Item, **detail: object) -> AuditEvent:
        return actor.event(
            action,
            owner=item.owner,
            file_id=item.file_id,
            sha256=item.sha256,
            detail={"quarantine_id": item.id, **detail},
        )

    async def release(self, actor: Actor, item_id: str) -> Uploaded:
        """Rescan; clean: promote and record the owner's file as the upload would have been.
        Raises ``StillRefused`` (the new verdict recorded) otherwise. One release of an
        item at a time, and no delete while it runs: each holds the item first."""
        item, key = await self._held(item_id)
        # Shielded whole: a client leaving mid-release must not cut it between the file's
        # record and the item's release, nor let go of the hold while either runs.
        return await asyncio.shield(asyncio.ensure_future(self._held_release(actor, item, key)))

    async def _held_release(self, actor: Actor, item: Item, key: str) -> Uploaded:
        now = self._now()
        until = now + RELEASE_HOLD
        try:
            claimed = await index_call(self.store.claim(item.id, now, until))
        except errors.FileshareError:
            await self._unclaim(item.id, until)  # its commit may have happened
            raise
        if not claimed:
            raise errors.NotQuarantined("the item is being released, or was released or deleted")
        try:
            return await self._release(actor, item, key, until)
        finally:
            # A release that ended holds nothing any more (released, rescanned clear it):
            # this lets go of one that failed, so that the next may try.
            await self._unclaim(item.id, until)

    async def _unclaim(self, item_id: str, until: datetime) -> None:
        try:
            await index_call(self.store.unclaim(item_id, until))
        except errors.FileshareError as exc:  # the hold runs out instead
            log.warning("quarantine.unclaim_failed", error=type(exc).__name__)

    async def _release(self, actor: Actor, item: Item, key: str, until: datetime) -> Uploaded:
        admin = self._event(actor, Action.QUARANTINE_RELEASE, item)
        try:
            info = await storage_call(
                "head_quarantined", self.storage.head(self.bucket, key), ObjectNotFound
            )
        except ObjectNotFound:
            raise errors.NotQuarantined("the bytes expired from the quarantine bucket") from None
        placement, target = await self._placement(item)
        by = actor.principal.subject if actor.principal else None
        # The file is the uploader's: its rows name the uploader, and the admin who let it in.
        upload = AuditEvent(
            action=Action.FILE_UPLOAD,
            subject=item.created_by,
            source="quarantine.release",
            owner=item.owner,
            file_id=item.file_id,
            request_id=actor.request_id,
            detail={"quarantine_id": item.id, "released_by": by},
        )
        try:
            result = await self.pipeline.ingest_staged(
                info,
                content_type=item.content_type,
                expected_sha256=item.sha256,  # the very bytes that were kept
                audit=upload,
                bucket=self.bucket,
            )
        except (errors.Infected, errors.Unscannable) as exc:
            state = (
                ScanState.UNSCANNABLE if isinstance(exc, errors.Unscannable) else ScanState.INFECTED
            )
            try:
                scanner: str | None = await self.pipeline.scanner.provenance()
            except Exception:  # the verdict stands; only its provenance is unknown
                scanner = None
            scan = ScanRecord(
                state=state,
                signature=exc.signature,
                scanner=scanner,
                scanned_at=datetime.now(UTC),
            )
            refused = admin.but(
                result=Result.DENIED,
                detail={**admin.detail, "state": state.value, "signature": exc.signature},
            )
            await index_call(self.store.rescanned(item.id, scan, self._now(), refused, held=until))
            raise errors.StillRefused(
                f"rescanned: still {state.value} ({exc.signature}); it stays in quarantine",
                state=state.value,
                signature=exc.signature,
            ) from None
        except errors.FileshareError as exc:
            await self.files.audit_refusal(admin, exc)
            raise
        if self._now() >= until:
            # Another release may hold it now: this one must not make a file too.
            raise errors.NotQuarantined("the rescan took longer than a release may hold")
        return await self._record(admin, target, key, until, result, upload, placement, by)

    async def _placement(self, item: Item) -> tuple[Placement, Item]:
        """Where a release records its file, and the item as recorded. The owner's record
        under the item's id that still names its bytes (a rescan took them from it, or a
        ``PUT`` of bytes a rescan had refused) is served again as it is now: its name and
        type kept, as every other record of those bytes is once they are clean and stored.
        Otherwise a new record, as the upload would have made it."""
        current = None
        if item.file_id is not None:
            current = await index_call(self.files.index.get(item.owner, item.file_id))
        if current is not None and current.content.sha256 == item.sha256:
            placement = Placement(file_id=item.file_id, if_match=(item.sha256,))
            return placement, replace(item, name=current.name, content_type=current.content_type)
        placement = Placement(
            file_id=item.file_id,
            new_id=uuid.uuid4().hex,
            # Never over a record the owner made meanwhile under the id it asked for.
            if_none_match=item.file_id is not None,
        )
        return placement, item

    async def _record(
        self,
        admin: AuditEvent,
        item: Item,
        key: str,
        until: datetime,
        result: IngestResult,
        upload: AuditEvent,
        placement: Placement,
        by: str | None,
    ) -> Uploaded:
        try:
            uploaded = await self.files.record_ingested(
                item.owner,
                result,
                upload,
                item.name,
                item.content_type,
                placement,
                created_by=item.created_by,
            )
        except errors.FileshareError as exc:  # 412: the owner took the id meanwhile...
            await self.files.audit_refusal(admin, exc)
            raise
        admin = admin.but(detail={**admin.detail, "released_file_id": uploaded.record.id})
        released = await index_call(
            self.store.released(
                item.id, result.content.scan, uploaded.record.id, by, self._now(), admin, held=until
            )
        )
        if not released:  # the hold ran out and another release or a delete came first
            log.error("quarantine.release_overtaken", quarantine_id=item.id)
            return uploaded
        await self._remove(key)
        return uploaded

    async def open_content(
        self, actor: Actor, item_id: str, reason: str
    ) -> tuple[Item, AsyncIterator[bytes]]:
        """The forced release: the quarantined bytes, for this administrator only, audited
        (who, and why) before the first byte. Nothing is promoted; the item stays."""
        item, key = await self._held(item_id)
        stream = self.storage.read(self.bucket, key)
        try:
            first = await anext(stream, b"")
        except ObjectNotFound:
            raise errors.NotQuarantined("the bytes expired from the quarantine bucket") from None
        except StorageError as exc:
            log.warning("storage.failed", operation="read_quarantined", error=str(exc))
            raise errors.StorageUnavailable(operation="read_quarantined") from None
        try:
            await self.files.audit_read(
                self._event(actor, Action.QUARANTINE_DOWNLOAD, item, reason=reason)
            )
        except BaseException:
            await close_stream(stream)
            raise
        log.warning("quarantine.handed_out", quarantine_id=item.id)
        return item, prepended(first, stream)

    async def delete(self, actor: Actor, item_id: str) -> None:
        item, key = await self._held(item_id)
        by = actor.principal.subject if actor.principal else None
        event = self._event(actor, Action.QUARANTINE_DELETE, item)
        if not await index_call(self.store.deleted(item.id, by, self._now(), event)):
            raise errors.NotQuarantined("the item was released or deleted meanwhile")
        await self._remove(key)

    async def _remove(self, key: str) -> None:
        try:
            await self.storage.delete(self.bucket, key)
        except StorageError as exc:
            # Listed nowhere any more: the quarantine bucket's retention rule expires it.
            log.error("quarantine.delete_failed", key=key, error=str(exc))
