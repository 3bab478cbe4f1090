"""Direct-to-bucket uploads: an intent, a presigned PUT into the unscanned bucket, and the
ingestion of what arrived there, whatever tells fileshare that it did.

    POST /v1/uploads -> intent row (pending) + a presigned PUT of staging/direct/<upload id>
    the client PUTs the bytes to the store, not to fileshare
    a trigger -> lease the row -> HEAD the object: the intent's size and type? -> read it
      once through the hashers and clamd (``Pipeline.ingest_staged``) -> dedup or promote
      -> the file record -> the outcome on the row -> the staging object deleted

Triggers: the completion call, the reconciler (which sweeps the staging prefix, so that a
lost event never loses an upload) and, later, storage events; every one goes through
``ingest``, which only the lease holder gets past, so an upload is ingested once however
many of them fire, on however many replicas. Until then nothing of it is readable through
fileshare, and nothing of it is in the permanent bucket.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from fileshare import errors
from fileshare.audit import Action, Actor, AuditEvent, Result
from fileshare.boundary import index_call, storage_call
from fileshare.index.base import Cursor, Placement
from fileshare.index.uploads import Outcome, Upload, UploadStore
from fileshare.models import UploadState
from fileshare.pipeline import Origin, Pipeline
from fileshare.service import FileService
from fileshare.storage.base import (
    DIRECT_PREFIX,
    STAGING_PREFIX,
    FormPresigner,
    MultipartPresigner,
    NotAsPlanned,
    ObjectInfo,
    ObjectNotFound,
    PartPlan,
    Presigned,
    PresignedForm,
    Presigner,
    SessionStarter,
    Storage,
    StorageError,
)
from fileshare.upload_policy import NO_POLICY, UploadPolicy

log = structlog.get_logger(__name__)
Clock = Callable[[], datetime]

#: How long one ingestion may hold an upload before another worker may take it over:
#: far longer than reading the largest upload back through clamd takes.
LEASE = timedelta(minutes=30)
#: Scanner, store and index failures are retried this many times in all, each after a
#: backoff doubling from ``RETRY_BASE`` (30 s, 1, 2, 4 min: about 8 minutes of outage), then
#: the upload fails. Saturation (``overloaded``) and a shutdown are not counted.
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=30)
#: A pending upload is expired this long after its URL expired (a PUT begun just before
#: the expiry may still be arriving): at least 5 minutes, and its size at 1 MiB/s.
EXPIRY_GRACE = timedelta(minutes=5)
#: Where a form upload's object is copied before it is read (``_set_aside``).
SET_ASIDE_PREFIX = f"{STAGING_PREFIX}ingest/"
#: Uploads the reconciler ingests at once, and staging keys it looks at per round.
RECONCILE_CONCURRENCY = 4
RECONCILE_BATCH = 200


@dataclass(frozen=True)
class Intent:
    name: str | None
    content_type: str
    size: int
    sha256: str | None = None
    #: A browser form's POST policy instead of a PUT (one request, so ``put_max`` at most).
    form: bool = False


@dataclass(frozen=True)
class Issued:
    upload: Upload
    #: One PUT, or (larger than ``put_max``) a PUT per part.
    request: Presigned | None = None
    parts: tuple[PartPlan, ...] = ()
    form: PresignedForm | None = None


#: The most parts an S3 multipart upload may have.
MAX_PARTS = 10_000


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class DirectUploads:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        files: FileService,
        uploads: UploadStore,
        storage: Storage,
        unscanned_bucket: str,
        url_ttl: int,
        put_max: int,
        part_size: int,
        max_size: int,
        clock: Clock,
        keep_failed: timedelta = timedelta(days=1),
    ) -> None:
        self.pipeline = pipeline
        self.files = files
        self.uploads = uploads
        self.storage = storage
        self.presigner = storage if isinstance(storage, Presigner) else None
        self.multipart = storage if isinstance(storage, MultipartPresigner) else None
        self.forms = storage if isinstance(storage, FormPresigner) else None
        self.sessions = storage if isinstance(storage, SessionStarter) else None
        self.part_size = part_size
        #: How long a failed upload's staged bytes are kept (the staging max age).
        self.keep_failed = keep_failed
        self.unscanned = unscanned_bucket
        self.url_ttl = url_ttl
        self.put_max = put_max
        self.max_size = max_size
        self.clock = clock

    @property
    def available(self) -> bool:
        return self.presigner is not None

    # ---------------------------------------------------------------- the API

    async def create(self, actor: Actor, intent: Intent) -> Issued:
        """Record an intent and sign the PUT its bytes go to."""
        owner = _owner(actor)
        event = actor.event(Action.URL_ISSUE, detail={"action": "upload"})
        try:
            if self.presigner is None:
                raise errors.DirectUploadsUnavailable(
                    "this deployment's storage cannot sign upload URLs"
                )
            if intent.size > self.max_size:
                raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes")
            # The allow-list before any URL: not after the client has sent every byte.
            policy = actor.principal.policy if actor.principal else NO_POLICY
            for refusal in (
                self.pipeline.types.check_declared(intent.content_type),
                policy.check_type(intent.content_type),
            ):
                if refusal is not None:
                    raise refusal
            multipart = intent.size > self.put_max
            if intent.form and (multipart or self.forms is None):
                raise errors.ValidationFailed(
                    f"a form upload takes at most {self.put_max} bytes, on S3"
                )
            if multipart and self.multipart is None and self.sessions is None:
                raise errors.PayloadTooLarge(
                    f"a direct upload takes at most {self.put_max} bytes in one PUT here"
                )
            upload_id = uuid.uuid4().hex
            now = self.clock()
            upload = Upload(
                id=upload_id,
                owner=owner,
                file_id=uuid.uuid4().hex,
                state=UploadState.PENDING,
                name=intent.name,
                content_type=intent.content_type,
                size=intent.size,
                sha256=intent.sha256,
                staging_key=f"{DIRECT_PREFIX}{upload_id}",
                created=now,
                expires=now + timedelta(seconds=self.url_ttl),
                created_by=actor.principal.subject if actor.principal else None,
                unscannable=policy.unscannable,
            )
            if multipart and self.multipart is None and self.sessions is not None:
                session = await storage_call(
                    "start_session",
                    self.sessions.start_direct_session(
                        self.unscanned,
                        upload.staging_key,
                        content_type=intent.content_type,
                        size=intent.size,
                    ),
                )
                # Kept to cancel it when the intent ends without it: a credential, like
                # the other secrets of the index, never in an answer but its owner's.
                upload = replace(upload, kind="session", multipart_id=session.url)
                issued = Issued(upload, request=replace(session, expires=upload.expires))
            elif multipart:
                issued = await self._plan(upload)
                upload = issued.upload
            elif intent.form and self.forms is not None:
                form = await storage_call(
                    "presign",
                    self.forms.presign_form(
                        self.unscanned,
                        upload.staging_key,
                        content_type=intent.content_type,
                        size=intent.size,
                        expires=self.url_ttl,
                    ),
                )
                issued = Issued(replace(upload, kind="form"), form=form)
                upload = issued.upload
            else:
                request = await storage_call(
                    "presign",
                    self.presigner.presign_upload(
                        self.unscanned,
                        upload.staging_key,
                        content_type=intent.content_type,
                        size=intent.size,
                        sha256=intent.sha256,
                        expires=self.url_ttl,
                    ),
                )
                issued = Issued(upload, request)
            # The row before the URL leaves: an object under the prefix without one was
            # never handed out, and the reconciler removes it.
            event = event.but(
                file_id=upload.file_id, detail={**event.detail, "upload_id": upload_id}
            )
            try:
                await index_call(self.uploads.create(upload, event))
            except BaseException:
                if upload.multipart_id is not None:
                    await self._abort_parts(upload)
                raise
        except errors.FileshareError as exc:
            await self.files.audit_refusal(event, exc)
            raise
        log.info(
            "upload.intent",
            upload_id=upload_id,
            file_id=upload.file_id,
            size=intent.size,
            parts=len(issued.parts),
        )
        return issued

    async def _plan(self, upload: Upload) -> Issued:
        """A multipart upload under the staging key, and a presigned PUT per part."""
        assert self.multipart is not None
        part_size = max(self.part_size, -(-upload.size // MAX_PARTS))
        planned = replace(upload, part_size=part_size)
        upload_id, parts = await storage_call(
            "presign",
            self.multipart.presign_multipart(
                self.unscanned,
                upload.staging_key,
                content_type=upload.content_type,
                part_sizes=planned.part_sizes,
                expires=self.url_ttl,
            ),
        )
        planned = replace(planned, multipart_id=upload_id, kind="parts")
        return Issued(planned, parts=tuple(parts))

    async def _abort_parts(self, upload: Upload) -> None:
        if upload.multipart_id is None:
            return
        if upload.kind == "session" and self.sessions is not None:
            await self.sessions.cancel_direct_session(upload.multipart_id)
        elif self.multipart is not None:
            await self.multipart.abort_multipart(
                self.unscanned, upload.staging_key, upload.multipart_id
            )

    async def page(
        self, actor: Actor, *, state: UploadState | None, after: Cursor | None, limit: int
    ) -> tuple[list[Upload], Cursor | None]:
        """The owner's uploads, pending and ended, with their states."""
        found, more = await index_call(
            self.uploads.page(_owner(actor), state=state, after=after, limit=limit)
        )
        await self.files.audit_read(actor.event(Action.UPLOAD_READ, detail={"count": len(found)}))
        return found, more

    async def status(self, actor: Actor, upload_id: str) -> Upload:
        upload = await self._owned(actor, upload_id, Action.UPLOAD_READ)
        await self.files.audit_read(
            actor.event(Action.UPLOAD_READ, file_id=upload.file_id, detail={"upload_id": upload_id})
        )
        return upload

    async def complete(self, actor: Actor, upload_id: str) -> Upload:
        """Ingest the upload now (or wait for the worker that is ingesting it) and return
        where it stands. ``UploadIncomplete`` when nothing is at its URL yet."""
        upload = await self._owned(actor, upload_id, Action.UPLOAD_COMPLETE)
        event = actor.event(
            Action.UPLOAD_COMPLETE, file_id=upload.file_id, detail={"upload_id": upload_id}
        )
        if upload.state is UploadState.PENDING:
            try:
                found = await self.ingest(upload_id, trigger="complete")
            except errors.FileshareError as exc:
                await self.files.audit_refusal(event, exc)
                raise
            if found is False:
                incomplete = errors.UploadIncomplete("no object has been uploaded to the URL yet")
                await self.files.audit_refusal(event, incomplete)
                raise incomplete
        await self.files.audit_read(event)
        current = await index_call(self.uploads.get(upload_id))
        assert current is not None
        return current

    async def pending_file(self, owner: str, file_id: str) -> Upload | None:
        """The direct upload that is to become this (not yet recorded) file, if any."""
        return await index_call(self.uploads.for_file(owner, file_id))

    async def _owned(self, actor: Actor, upload_id: str, action: Action) -> Upload:
        upload = await index_call(self.uploads.get(upload_id, _owner(actor)))
        if upload is None:
            # Another owner's upload is not found either: ids cannot be probed.
            exc = errors.NotFound("no such upload")
            await self.files.audit_refusal(
                actor.event(action, detail={"upload_id": upload_id}), exc
            )
            raise exc
        return upload

    # ---------------------------------------------------------------- ingestion

    async def ingest(self, upload_id: str, *, trigger: str) -> bool | None:
        """Ingest the upload if it is pending and nobody else is at it (nor is it waiting
        out a backoff after a failure).

        True: it has an outcome now (or had one); None: another worker holds it; False:
        nothing is staged yet. Raises the transient failure (scanner, store, index) that
        left it pending, to be tried again after a backoff."""
        now = self.clock()
        # A token per lease, not per process: two workers of one replica fence each other.
        holder = uuid.uuid4().hex
        upload = await index_call(self.uploads.lease(upload_id, holder, now, now + LEASE))
        if upload is None:
            current = await index_call(self.uploads.get(upload_id))
            return None if current is not None and current.state is UploadState.PENDING else True
        bound = log.bind(upload_id=upload_id, trigger=trigger)
        try:
            outcome = await self._ingest(upload, trigger)
        except errors.ServiceUnavailable as exc:
            counted = not isinstance(exc, errors.Overloaded | errors.ShuttingDown)
            attempts = upload.attempts + counted
            if attempts < MAX_ATTEMPTS:
                # Saturation and shutdown are no failures of this upload: not counted.
                wait = RETRY_BASE * 2 ** max(attempts - 1, 0)
                await self._release(upload, holder, attempts, wait)
                bound.warning("upload.retry_later", code=exc.code, attempt=attempts)
                raise
            outcome = Outcome(UploadState.FAILED, exc.code, f"gave up after {attempts} attempts")
        except BaseException:
            await asyncio.shield(self._release(upload, holder, upload.attempts, timedelta()))
            raise
        if outcome is None:
            await self._release(upload, holder, upload.attempts, timedelta())
            return False
        try:
            await self._finish(upload, outcome, holder, trigger)
        except BaseException:
            # The outcome is not recorded: let the next trigger find it again at once
            # rather than wait out the lease (a clean file's record is kept; see _ingest).
            await asyncio.shield(self._release(upload, holder, upload.attempts, timedelta()))
            raise
        bound.info("upload.ingested", state=outcome.state.value, code=outcome.code)
        return True

    async def _assemble(self, upload: Upload) -> Outcome | bool:
        """A multipart plan's upload completed by fileshare: True when it is (or was
        already) assembled, False while parts are missing, a rejection when the parts are
        not the plan's."""
        assert self.multipart is not None
        assert upload.multipart_id is not None
        try:
            return await self.multipart.complete_multipart(
                self.unscanned, upload.staging_key, upload.multipart_id, upload.part_sizes
            )
        except ObjectNotFound:
            return True  # completed by an earlier attempt (or aborted: the HEAD tells)
        except NotAsPlanned as exc:
            log.warning("upload.parts_not_as_planned", upload_id=upload.id, error=str(exc))
            return Outcome(
                UploadState.REJECTED, "parts_mismatch", "the parts uploaded are not the plan's"
            )
        except StorageError as exc:
            log.warning("storage.failed", operation="complete_parts", error=str(exc))
            raise errors.StorageUnavailable(operation="complete_parts") from None

    async def _ingest(self, upload: Upload, trigger: str) -> Outcome | None:
        if upload.kind == "parts" and self.multipart is not None:
            assembled = await self._assemble(upload)
            if assembled is False:
                return None
            if isinstance(assembled, Outcome):
                return assembled
        try:
            staged = await self.storage.head(self.unscanned, upload.staging_key)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            log.warning("storage.failed", operation="head_staged", error=str(exc))
            raise errors.StorageUnavailable(operation="head_staged") from None
        if (refused := self._refusal(upload, staged)) is not None:
            return refused
        if upload.kind == "form":
            # A form's policy cannot say "create only": another POST could replace the
            # object between its read and its promotion under an equal ETag (an MD5). Its
            # bytes are read and promoted from a copy under a key no URL can write.
            staged = await self._set_aside(upload, staged)
        event = AuditEvent(
            action=Action.FILE_UPLOAD,
            subject=upload.created_by,
            source=trigger,
            owner=upload.owner,
            file_id=upload.file_id,
            detail={"upload_id": upload.id, "trigger": trigger},
        )
        try:
            result = await self.pipeline.ingest_staged(
                staged,
                content_type=upload.content_type,
                expected_sha256=upload.sha256,
                audit=event,
                origin=Origin(upload.owner, upload.file_id, upload.name, upload.created_by),
                policy=UploadPolicy(unscannable=upload.unscannable),
            )
        except errors.DigestMismatch:
            return Outcome(
                UploadState.REJECTED, "digest_mismatch", "the object's sha-256 is not the intent's"
            )
        except errors.Infected as exc:
            return Outcome(UploadState.INFECTED, "infected", exc.detail, signature=exc.signature)
        except (errors.TypeMismatch, errors.TypeNotAllowed, errors.DicomPolyglot) as exc:
            return Outcome(UploadState.REJECTED, exc.code, exc.detail)
        except errors.Unscannable as exc:
            return Outcome(
                UploadState.UNSCANNABLE, "unscannable", exc.detail, signature=exc.signature
            )
        except errors.PayloadTooLarge as exc:
            # The size was checked against the limit before: this is the scanner's limit.
            return Outcome(UploadState.UNSCANNABLE, "unscannable", exc.detail)
        placement = Placement(file_id=upload.file_id, if_none_match=True)
        try:
            await self.files.record_ingested(
                upload.owner,
                result,
                event,
                upload.name,
                upload.content_type,
                placement,
                created_by=upload.created_by,
            )
        except errors.PreconditionFailed:
            # A record under the id exists: this ingestion's, recorded by an earlier attempt
            # whose outcome was lost, if it holds these bytes; otherwise the owner put
            # another file under the id meanwhile.
            current = await index_call(self.files.index.get(upload.owner, upload.file_id))
            if current is None or current.content.sha256 != result.content.sha256:
                return Outcome(
                    UploadState.REJECTED,
                    "file_id_taken",
                    "another file was put under the upload's file id meanwhile",
                )
        return Outcome(UploadState.CLEAN)

    async def _set_aside(self, upload: Upload, staged: ObjectInfo) -> ObjectInfo:
        key = f"{SET_ASIDE_PREFIX}{upload.id}"
        try:
            # An earlier attempt's copy may be there: a copy never replaces an object.
            await self.storage.delete(self.unscanned, key)
            copy = await self.storage.begin_copy(
                self.unscanned,
                staged.key,
                self.unscanned,
                key,
                size=staged.size,
                content_type=staged.content_type,
            )
            try:
                return await copy.commit()
            except BaseException:
                await copy.abort()
                raise
        except StorageError as exc:
            log.warning("storage.failed", operation="set_aside", error=str(exc))
            raise errors.StorageUnavailable(operation="set_aside") from None

    def _refusal(self, upload: Upload, staged: ObjectInfo) -> Outcome | None:
        if staged.size != upload.size:
            return Outcome(
                UploadState.REJECTED,
                "size_mismatch",
                f"the intent declared {upload.size} bytes; {staged.size} were uploaded",
            )
        if _media_type(staged.content_type) != _media_type(upload.content_type):
            return Outcome(
                UploadState.REJECTED,
                "type_mismatch",
                "the object's Content-Type is not the intent's",
            )
        return None

    async def _finish(
        self, upload: Upload, outcome: Outcome, holder: str | None, trigger: str
    ) -> bool:
        """Record the outcome, then remove the staging object (whatever the outcome: the
        bytes are promoted, or refused and never to be served). False when the upload was
        not ``holder``'s to finish (None: nobody's; it was leased meanwhile)."""
        event = None
        if outcome.state not in (UploadState.CLEAN, UploadState.INFECTED, UploadState.UNSCANNABLE):
            # A verdict has its rows already (file.upload, scan.verdict).
            event = AuditEvent(
                action=Action.UPLOAD_FINISH,
                result=Result.FAILED if outcome.state is UploadState.FAILED else Result.DENIED,
                subject=upload.created_by,
                source=trigger,
                owner=upload.owner,
                file_id=upload.file_id,
                detail={"upload_id": upload.id, "state": outcome.state.value, "code": outcome.code},
            )
        finished = await index_call(
            self.uploads.finish(upload.id, holder, outcome, self.clock(), event)
        )
        if finished and (upload.kind != "session" or outcome.state is UploadState.EXPIRED):
            await self._abort_parts(upload)  # a no-op once completed (a finalized session
            # holds nothing to cancel: it is left alone)
        if finished:
            if upload.kind == "form":
                await self._remove_staged(f"{SET_ASIDE_PREFIX}{upload.id}")
            if outcome.state is not UploadState.FAILED:
                # Failed: the bytes stay for ``keep_failed`` (the staging max age), so that
                # nothing a client was told was uploaded is lost to a scanner outage.
                await self._remove_staged(upload.staging_key)
        return finished

    async def _release(self, upload: Upload, holder: str, attempts: int, wait: timedelta) -> None:
        try:
            await self.uploads.release(
                upload.id, holder, attempts=attempts, until=self.clock() + wait
            )
        except Exception as exc:  # the lease runs out by itself
            log.warning("upload.release_failed", upload_id=upload.id, error=str(exc))

    async def _remove_staged(self, key: str) -> None:
        try:
            await self.storage.delete(self.unscanned, key)
        except StorageError as exc:
            # The reconciler (or the staging lifecycle rule) removes it later.
            log.warning("staging.delete_failed", key=key, error=str(exc))

    # ---------------------------------------------------------------- the reconciler

    async def reconcile(self) -> int:
        """Ingest what is staged but was never completed (a lost event, a client that
        never called back), remove staged objects no pending upload owns, expire
        uploads whose URL expired with nothing uploaded. Returns how many uploads got an
        outcome. Safe on several replicas at once (the leases decide)."""
        if self.presigner is None:
            return 0
        pending: list[str] = []
        async for key in self.storage.list_keys(self.unscanned, DIRECT_PREFIX):
            upload_id = key[len(DIRECT_PREFIX) :]
            upload = await index_call(self.uploads.get(upload_id))
            if upload is not None and upload.state is UploadState.FAILED:
                if upload.finished is None or self.clock() - upload.finished < self.keep_failed:
                    continue  # a failed upload's bytes stay a while (see _finish)
                await self._remove_staged(key)
            elif upload is None or upload.state is not UploadState.PENDING:
                # Never handed out, or finished (a second PUT to a URL still valid).
                await self._remove_staged(key)
            else:
                pending.append(upload_id)
            if len(pending) >= RECONCILE_BATCH:
                break
        done = 0
        gate = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def one(upload_id: str) -> None:
            nonlocal done
            async with gate:
                try:
                    if await self.ingest(upload_id, trigger="reconcile"):
                        done += 1
                except errors.FileshareError as exc:
                    log.warning("reconcile.retry_later", upload_id=upload_id, code=exc.code)

        await asyncio.gather(*(one(u) for u in pending))
        done += await self._expire()
        return done

    async def _expire(self) -> int:
        overdue = await index_call(
            self.uploads.overdue(self.clock() - EXPIRY_GRACE, RECONCILE_BATCH)
        )
        expired = 0
        outcome = Outcome(
            UploadState.EXPIRED, "expired", "nothing was uploaded before the URL expired"
        )
        for upload in overdue:
            grace = max(EXPIRY_GRACE, timedelta(seconds=upload.size / (1024 * 1024)))
            if self.clock() < upload.expires + grace:
                continue  # a large PUT begun before the expiry may still be arriving
            if upload.multipart_id is not None:
                # Its object exists only once fileshare completes it: every part may be
                # there without anybody having called for the completion.
                try:
                    found = await self.ingest(upload.id, trigger="reconcile")
                except errors.FileshareError:
                    continue  # transient: a later round
                if found is not False:
                    expired += 0 if found is None else 1
                    continue
            try:
                await self.storage.head(self.unscanned, upload.staging_key)
                continue  # it did arrive: ingested by a later round, not expired
            except ObjectNotFound:
                pass
            except StorageError:
                continue  # cannot tell now
            if await self._finish(upload, outcome, None, "reconcile"):
                expired += 1
        return expired


def _owner(actor: Actor) -> str:
    if actor.owner is None:
        raise AssertionError("an actor without an owner reached the upload service")
    return actor.owner


def utc_now() -> datetime:
    return datetime.now(UTC)
