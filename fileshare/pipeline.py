"""The ingest pipeline: one pass over the body.

    chunks -> size limit -> sha256 + sha1 -> staging writer (unscanned bucket)
                                        \\-> clamd INSTREAM (at the same time)
    end -> index knows it clean?  yes -> drop staging and scan, answer
                                  no  -> verdict (a server-side copy into an invisible
                                         target runs meanwhile) -> clean: make it visible
                                         otherwise: throw everything away (with a
                                         quarantine: copy the refused bytes there first)

Every failure path throws away what was staged: nothing unscanned is ever promoted, and
nothing is left behind but what the unscanned bucket's lifecycle rule will expire. A
quarantine (``FILESHARE_QUARANTINE_BUCKET``) keeps a copy of what clamd refused, listed in
the index for the admin API, never in the permanent bucket.

Whether bytes are already held is the index's answer (a content row, clean, with its
object key), not the bucket's: a HEAD would say yes for an object a concurrent DELETE is
about to remove. Every promotion writes a key of its own (``models.new_object_key``); the
service then records it, and the index decides which object records use.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from fileshare import errors
from fileshare.audit import Action, AuditEvent, Result
from fileshare.boundary import domain_error, index_call, storage_call
from fileshare.budget import MemoryBudget
from fileshare.index.quarantine import QUARANTINE_PREFIX, Item, QuarantineStore
from fileshare.metrics import Metrics
from fileshare.models import Content, ScanRecord, ScanState, new_object_key, new_upload_key
from fileshare.scan.base import (
    ScanError,
    Scanner,
    ScannerBusy,
    ScanSession,
    ScanSizeExceeded,
    Verdict,
)
from fileshare.sniff import HEAD_SIZE, TypePolicy
from fileshare.storage.base import STAGING_PREFIX, ObjectInfo, Storage, StorageError, Writer
from fileshare.storage.promotion import CopyPromotion, Location, Promotion, SealedPromotion
from fileshare.upload_policy import NO_POLICY, Unscannable, UploadPolicy

log = structlog.get_logger(__name__)

#: Chunks from the socket are small (tens of KiB); they are gathered to this size before
#: fanning out so the per-chunk overhead (a task, a thread hop for hashing) stays small.
FANOUT_CHUNK = 1024 * 1024
#: Below this, hashing inline is cheaper than a thread hop; above it hashlib releases the
#: GIL and runs beside the event loop.
THREAD_HASH_MIN = 256 * 1024
#: How long an object promoted by an upload waits for its commit before the sweeper may
#: remove it: far longer than any verdict wait and promotion take.
PROMOTION_GRACE = timedelta(hours=1)


class ContentCatalog(Protocol):
    """What the pipeline asks the index (``FileIndex`` is one)."""

    async def find_clean(self, sha256: str) -> Content | None:
        """The clean, stored content with that hash, or None."""

    async def claim(self, sha256: str, key: str, until: datetime) -> Content | None:
        """The clean, stored content with that hash, or None: then ``key`` is listed for
        removal from ``until`` on unless the upload's commit claims it first."""

    async def record_verdict(
        self,
        content: Content,
        *,
        released: str | None = None,
        audit: AuditEvent | None = None,
    ) -> None:
        """Remember a verdict that is not clean (and release the claimed key), with its
        audit row in the same transaction."""


@dataclass(frozen=True)
class Origin:
    """Whose upload it is, as its quarantine row records it (``FILESHARE_QUARANTINE_BUCKET``)."""

    owner: str
    file_id: str | None = None
    name: str | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Quarantine:
    """Where refused bytes are kept instead of being thrown away."""

    bucket: str
    store: QuarantineStore
    #: Whether unscannable uploads are kept too (infected ones always are), unless the
    #: uploading client's policy says otherwise (``FILESHARE_UNSCANNABLE``).
    unscannable: Unscannable = Unscannable.QUARANTINE


@dataclass(frozen=True)
class IngestResult:
    #: Clean and stored: the index's content (a duplicate), or the object just promoted.
    content: Content
    #: True when the index already held the content clean: nothing was promoted.
    duplicate: bool


async def _regroup(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Gather small socket chunks into chunks of about ``size`` bytes (one copy each)."""
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in chunks:
        if not pending and len(chunk) >= size:
            yield chunk
            continue
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= size:
            yield b"".join(pending)
            pending.clear()
            pending_size = 0
    if pending:
        yield b"".join(pending)


class _Hashers:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1(usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.sha1.update(chunk)

    async def feed(self, chunk: bytes) -> None:
        if len(chunk) >= THREAD_HASH_MIN:
            await asyncio.to_thread(self.update, chunk)
        else:
            self.update(chunk)


class Pipeline:
    def __init__(
        self,
        *,
        storage: Storage,
        scanner: Scanner,
        catalog: ContentCatalog,
        budget: MemoryBudget,
        unscanned_bucket: str,
        permanent_bucket: str,
        max_size: int,
        per_upload_memory: int,
        budget_wait: float,
        metrics: Metrics,
        single_write: bool = False,
        types: TypePolicy | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.storage = storage
        self.scanner = scanner
        self.catalog = catalog
        self.budget = budget
        self.unscanned = unscanned_bucket
        self.permanent = permanent_bucket
        self.max_size = max_size
        self.per_upload_memory = per_upload_memory
        self.budget_wait = budget_wait
        self.metrics = metrics
        #: ``FILESHARE_PROMOTION=single-write``: bodies are streamed under the permanent
        #: key (``SealedPromotion``), not into the unscanned bucket.
        self.single_write = single_write
        #: Content-Type checks (``sniff``) on bodies fileshare is handed to keep.
        self.types = types or TypePolicy()
        #: Unset: refused bytes are thrown away like every other leftover.
        self.quarantine = quarantine
        self._cleanups: set[asyncio.Future[Any]] = set()
        #: Uploads in progress (``seal_small``).
        self.active = 0
        #: See ``seal_small``; a test may lower it.
        self.seal_small_up_to = available_cpus()

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        declared_size: int | None = None,
        expected_sha256: str | None = None,
        audit: AuditEvent | None = None,
        origin: Origin | None = None,
        policy: UploadPolicy = NO_POLICY,
    ) -> IngestResult:
        """Stream ``chunks`` through hashing, staging and scanning; promote if clean.

        ``expected_sha256`` (hex, from the client's ``Content-Digest``) lets a re-upload
        of content already held skip staging and scanning; a body that does not match it
        is refused. ``audit``: the upload's audit event, from which the row of a verdict
        that is not clean is made. ``origin``: whose upload it is; with a quarantine
        configured, bytes refused by the scanner are kept for it (None: never).
        ``policy``: the uploading client's (its types; whether its unscannable bytes are
        kept).

        Raises ``PayloadTooLarge``, ``TruncatedBody``, ``Infected``, ``Unscannable``,
        ``ScannerUnavailable`` or ``StorageUnavailable``; in every case nothing is left
        in the permanent bucket that was not scanned clean.
        """
        if declared_size is not None and declared_size > self.max_size:
            raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes")
        upload = _Upload(self, content_type, audit, origin=origin, policy=policy)
        return await self._run(upload, lambda: upload.run(chunks, declared_size, expected_sha256))

    async def ingest_staged(
        self,
        staged: ObjectInfo,
        *,
        content_type: str,
        expected_sha256: str | None = None,
        audit: AuditEvent | None = None,
        origin: Origin | None = None,
        bucket: str | None = None,
        policy: UploadPolicy = NO_POLICY,
    ) -> IngestResult:
        """Ingest an object that was uploaded straight into the unscanned bucket (or is in
        ``bucket``: a quarantined one released): read it back once (pinned to
        ``staged.version``) through the hashers and clamd, then dedup and promote exactly
        as ``ingest`` does. The staged object is the caller's to delete once the outcome
        is recorded. Raises what ``ingest`` raises."""
        if staged.size > self.max_size:
            raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes")
        upload = _Upload(
            self,
            content_type,
            audit,
            staging_key=staged.key,
            origin=origin,
            source_bucket=bucket,
            policy=policy,
        )
        return await self._run(upload, lambda: upload.run_staged(staged, expected_sha256))

    async def scan_stored(self, bucket: str, stored: ObjectInfo) -> tuple[Content, ScanRecord]:
        """Read an object where it is (pinned to ``stored.version``) through the hashers
        and clamd, and say what they found: nothing is promoted or written. For stores
        that are their objects' final place (partner links). Raises ``PayloadTooLarge``
        (over the limit, or clamd's), ``ScannerUnavailable``, ``StorageUnavailable``,
        ``Overloaded``."""
        if stored.size > self.max_size:
            raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes")
        upload = _Upload(self, stored.content_type, None, staging_key=stored.key)
        async with self.budget.reserve(self.per_upload_memory, wait=self.budget_wait):
            try:
                upload.scan = await upload._open_scan()
                chunks = self.storage.read(bucket, stored.key, version=stored.version)
                try:
                    digest = await upload._receive(chunks, stored.size, (upload.scan.feed,))
                except StorageError as exc:
                    log.warning("storage.failed", operation="read_stored", error=str(exc))
                    raise errors.StorageUnavailable(operation="read_stored") from None
                return digest, await upload._verdict()
            finally:
                await asyncio.shield(upload.cleanup())

    def seal_small(self) -> bool:
        """Whether a body that fits in memory is sealed inside the scan window (see
        ``storage.promotion``). Only while no more uploads are in progress than there are
        CPUs: then latency is what counts and the two extra store requests are free
        (bench, 2 cores, 1 MiB: 40 -> 33 ms alone); under load they cost throughput
        (16 clients: 46 -> 43 uploads/s), and the bytes are written after the verdict."""
        return self.active <= self.seal_small_up_to

    async def _run(
        self, upload: _Upload, work: Callable[[], Awaitable[IngestResult]]
    ) -> IngestResult:
        async with self.budget.reserve(self.per_upload_memory, wait=self.budget_wait):
            self.metrics.inflight.inc()
            self.active += 1
            try:
                result = await work()
            except errors.FileshareError as exc:
                self._count_failure(exc)
                raise
            except BaseException:
                self.metrics.uploads.labels("failed").inc()
                raise
            finally:
                self.metrics.inflight.dec()
                self.active -= 1
                # Shielded, and tracked: a cancelled request (shutdown) must still clean
                # up, and shutdown waits for that before it closes the storage client.
                cleanup = asyncio.ensure_future(upload.cleanup())
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                await asyncio.shield(cleanup)
        self.metrics.uploads.labels("duplicate" if result.duplicate else "clean").inc()
        return result

    async def wait_for_cleanups(self, limit: float) -> None:
        """Let the cleanup of cancelled uploads finish (bounded) before the storage and
        scanner clients they need are closed."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=limit)

    def _count_failure(self, exc: errors.FileshareError) -> None:
        m = self.metrics
        if isinstance(exc, errors.Infected):
            m.uploads.labels("infected").inc()
        elif isinstance(exc, errors.Unscannable):
            m.uploads.labels("unscannable").inc()
        elif exc.status < 500:
            m.uploads.labels("rejected").inc()
        else:
            m.uploads.labels("failed").inc()
        if isinstance(exc, errors.ScannerUnavailable):
            m.clamd_errors.inc()
        if isinstance(exc, errors.StorageUnavailable):
            m.storage_errors.labels(exc.operation or "unknown").inc()


class _Upload:
    """The state of one upload, so that cleanup knows what exists."""

    def __init__(
        self,
        pipeline: Pipeline,
        content_type: str,
        audit: AuditEvent | None,
        *,
        staging_key: str | None = None,
        origin: Origin | None = None,
        source_bucket: str | None = None,
        policy: UploadPolicy = NO_POLICY,
    ) -> None:
        self.p = pipeline
        self.content_type = content_type
        self.audit = audit
        self.origin = origin
        self.policy = policy
        #: Where the staged bytes are: the unscanned bucket, unless a release reads them
        #: from the quarantine bucket.
        self.source_bucket = source_bucket or pipeline.unscanned
        self.staging_key = staging_key or f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.writer: Writer | None = None
        #: The permanent key the writer streams under (single-write), else None.
        self.sealed_key: str | None = None
        self.scan: ScanSession | None = None
        self.promotion: Promotion | None = None
        #: Keeping refused bytes in the quarantine bucket, once begun.
        self.keeping: asyncio.Future[str | None] | None = None
        self.log = log.bind(staging_key=self.staging_key)

    async def run(
        self,
        chunks: AsyncIterator[bytes],
        declared_size: int | None,
        expected_sha256: str | None,
    ) -> IngestResult:
        p = self.p
        self._check_declared()
        if expected_sha256 is not None:
            held = await index_call(p.catalog.find_clean(expected_sha256))
            if held is not None:
                # The client told us the digest and we already hold those bytes clean:
                # only prove the body matches. Nothing is staged, clamd is not involved.
                digest = await self._receive(chunks, declared_size, (), head_check=self._check_head)
                _check_digest(digest, expected_sha256)
                self.log.info("upload.duplicate", sha256=digest.sha256, verified_only=True)
                return IngestResult(held, duplicate=True)
        self.scan = await self._open_scan()
        if p.single_write:
            # The key is chosen before the bytes are known, so it cannot be named after
            # their hash; the index maps hash to key either way.
            self.sealed_key = new_upload_key()
            bucket, key = p.permanent, self.sealed_key
        else:
            bucket, key = p.unscanned, self.staging_key
        self.writer = await storage_call(
            "open_writer", p.storage.open_writer(bucket, key, content_type=self.content_type)
        )
        digest = await self._receive(
            chunks, declared_size, (self.writer.write, self.scan.feed), head_check=self._check_head
        )
        if expected_sha256 is not None:
            _check_digest(digest, expected_sha256)
        return await self._settle(digest, None)

    async def run_staged(self, staged: ObjectInfo, expected_sha256: str | None) -> IngestResult:
        """The bytes are in the unscanned bucket already: read them once, scan, settle."""
        p = self.p
        self._check_declared()
        self.scan = await self._open_scan()
        chunks = p.storage.read(self.source_bucket, staged.key, version=staged.version)
        try:
            digest = await self._receive(
                chunks, staged.size, (self.scan.feed,), head_check=self._check_head
            )
        except StorageError as exc:
            self.log.warning("storage.failed", operation="read_staged", error=str(exc))
            raise errors.StorageUnavailable(operation="read_staged") from None
        if expected_sha256 is not None:
            _check_digest(digest, expected_sha256)
        return await self._settle(digest, staged.version)

    def _check_declared(self) -> None:
        # An allow-list is always enforced, whatever the mode: the deployment's, then the
        # client's.
        self._apply(self.p.types.check_declared(self.content_type), enforce=True)
        self._apply(self.policy.check_type(self.content_type), enforce=True)

    def _check_head(self, head: bytes) -> None:
        refusal = self.p.types.check_head(head, self.content_type)
        self._apply(refusal, enforce=self.p.types.mode == "enforce")

    def _apply(self, refusal: errors.FileshareError | None, *, enforce: bool) -> None:
        if refusal is None:
            return
        if enforce:
            self.log.warning("type.refused", code=refusal.code, detail=refusal.detail)
            raise refusal
        self.log.warning("type.reported", code=refusal.code, detail=refusal.detail)

    async def _open_scan(self) -> ScanSession:
        try:
            return await self.p.scanner.open()
        except ScannerBusy:
            raise errors.Overloaded("the virus scanner is saturated; retry later") from None
        except ScanError as exc:
            self.log.warning("scan.unavailable", error=str(exc))
            raise errors.ScannerUnavailable() from None

    async def _settle(self, digest: Content, staged_version: str | None) -> IngestResult:
        """After the last byte: dedup, or promote (a copy prepared inside the scan
        window) once the verdict is clean. ``staged_version``: the bytes were not written
        by this upload but found staged under that version (the copy is pinned to it)."""
        p = self.p
        self.log = self.log.bind(sha256=digest.sha256, size=digest.size)
        # One index call: held already (a dedup hit), or the key to promote under is listed
        # before the object exists, so that no crash or failed commit between promotion
        # and the index can leave an object nothing knows of.
        key = self.sealed_key or new_object_key(digest.sha256)
        until = datetime.now(UTC) + PROMOTION_GRACE
        held = await index_call(p.catalog.claim(digest.sha256, key, until))
        if held is not None:
            # Already clean and stored: clamd discards an unterminated stream unscanned.
            self.log.info("upload.duplicate")
            return IngestResult(held, duplicate=True)

        verdict_task = asyncio.create_task(self._verdict())
        try:
            self.promotion = self._promotion(digest, key, staged_version)
            await storage_call("prepare_promotion", self.promotion.prepare())
            scan = await verdict_task
        finally:
            if not verdict_task.done():
                verdict_task.cancel()
                await asyncio.wait([verdict_task])
        if scan.state is not ScanState.CLEAN:
            self.log.warning(f"scan.{scan.state.value}", signature=scan.signature)
            await self._remember(replace(digest, scan=scan), released=key)
            # Shielded: a client leaving (or a shutdown) while its bytes are being kept
            # must not leave a copy in the quarantine bucket that no row lists; and the
            # cleanup, which removes the staged object the copy reads, waits for it.
            keeping = self.keeping = asyncio.ensure_future(
                self._quarantine(replace(digest, scan=scan), staged_version)
            )
            p._cleanups.add(keeping)
            keeping.add_done_callback(p._cleanups.discard)
            raise refusal(scan, await asyncio.shield(keeping))
        self.log.info("scan.clean")

        promote_started = time.perf_counter()
        await storage_call("promote", self.promotion.commit())
        p.metrics.observe_stage("promote", time.perf_counter() - promote_started)
        self.log.info("file.promoted", key=key)
        return IngestResult(replace(digest, key=key, scan=scan), duplicate=False)

    def _promotion(self, digest: Content, key: str, staged_version: str | None) -> Promotion:
        p = self.p
        if self.sealed_key is not None:
            assert self.writer is not None
            return SealedPromotion(self.writer, seal_small=p.seal_small())
        return CopyPromotion(
            p.storage,
            self.writer,
            staged_version=staged_version,
            staging=Location(self.source_bucket, self.staging_key),
            target=Location(p.permanent, key),
            size=digest.size,
            content_type=self.content_type,
            metadata=_metadata(digest),
            seal_small=p.seal_small(),
        )

    async def _remember(self, content: Content, *, released: str) -> None:
        """Record a verdict that is not clean; the upload is refused whatever happens."""
        try:
            event = None
            if self.audit is not None:
                scan = content.scan
                event = self.audit.but(
                    action=Action.SCAN_VERDICT,
                    result=Result.DENIED,
                    sha256=content.sha256,
                    detail={
                        "state": scan.state.value,
                        "signature": scan.signature,
                        "scanner": scan.scanner,
                    },
                )
            await self.p.catalog.record_verdict(content, released=released, audit=event)
        except Exception as exc:  # the answer stays the verdict, not an index error
            self.log.error("index.verdict_not_recorded", error=str(exc))

    async def _quarantine(self, content: Content, staged_version: str | None) -> str | None:
        """Keep refused bytes in the quarantine bucket and list them; the item's id, or None
        when there is no quarantine or keeping them failed (logged: the upload is refused
        exactly as it would be without one)."""
        p = self.p
        q = p.quarantine
        if q is None or self.origin is None:
            return None
        if content.scan.state is ScanState.UNSCANNABLE and not self.policy.keeps_unscannable(
            q.unscannable
        ):
            self.log.info("quarantine.unscannable_rejected")
            return None
        item_id = uuid.uuid4().hex
        key = f"{QUARANTINE_PREFIX}{item_id}"
        o = self.origin
        item = Item(
            id=item_id,
            owner=o.owner,
            file_id=o.file_id,
            name=o.name,
            content_type=self.content_type,
            sha256=content.sha256,
            size=content.size,
            scan=content.scan,
            object_key=key,
            created=datetime.now(UTC),
            created_by=o.created_by,
        )
        event = None
        if self.audit is not None:
            event = self.audit.but(
                action=Action.QUARANTINE_KEEP,
                result=Result.SUCCESS,
                sha256=content.sha256,
                detail={"quarantine_id": item_id, "state": content.scan.state.value},
            )
        write = self._keep(q.bucket, key, content, staged_version)
        kept = await keep(p.storage, q, item, write, event, self.log, p.metrics, trigger="upload")
        return item_id if kept else None

    async def _keep(
        self, bucket: str, key: str, content: Content, staged_version: str | None
    ) -> None:
        """The refused bytes into ``bucket``: written from memory when they never left it,
        else a server-side copy of the staged object (pinned to the version scanned)."""
        storage = self.p.storage
        buffered = self.writer.buffered() if self.writer is not None else None
        if buffered is not None:
            await storage.put(
                bucket,
                key,
                buffered,
                content_type=self.content_type,
                metadata=_metadata(content),
                if_absent=True,
            )
            return
        version = staged_version
        if self.writer is not None:
            assert isinstance(self.promotion, CopyPromotion)
            assert self.promotion.staged
            version = self.promotion.staged_version
        await copy_object(
            storage,
            Location(self.source_bucket, self.staging_key),
            Location(bucket, key),
            content,
            content_type=self.content_type,
            version=version,
        )

    async def _receive(
        self,
        chunks: AsyncIterator[bytes],
        declared_size: int | None,
        consumers: tuple[Callable[[bytes], Awaitable[None]], ...],
        head_check: Callable[[bytes], None] | None = None,
    ) -> Content:
        """The read loop: limit, hash, and hand each chunk to every consumer.
        ``head_check`` sees the first chunk (``sniff.HEAD_SIZE`` bytes or more, unless the
        body is shorter) before any consumer does, and may refuse it."""
        p = self.p
        started = time.perf_counter()
        hashers = _Hashers()
        size = 0
        async for chunk in _regroup(chunks, FANOUT_CHUNK):
            if size == 0 and head_check is not None:
                head_check(chunk[:HEAD_SIZE])
            size += len(chunk)
            p.metrics.bytes_in.inc(len(chunk))
            if size > p.max_size or (declared_size is not None and size > declared_size):
                raise errors.PayloadTooLarge(f"the limit is {p.max_size} bytes")
            await _fan_out(hashers.feed(chunk), *(consume(chunk) for consume in consumers))
        if size == 0 and head_check is not None:
            head_check(b"")
        if declared_size is not None and size != declared_size:
            raise errors.TruncatedBody(f"declared {declared_size} bytes, received {size}")
        p.metrics.observe_stage("transfer", time.perf_counter() - started)
        return Content(sha256=hashers.sha256.hexdigest(), sha1=hashers.sha1.digest(), size=size)

    async def _verdict(self) -> ScanRecord:
        assert self.scan is not None
        started = time.perf_counter()
        try:
            verdict = await self.scan.verdict()
            return ScanRecord(
                state=_state(verdict),
                signature=verdict.signature,
                scanner=await self.p.scanner.provenance(),
                scanned_at=datetime.now(UTC),
            )
        except ScanSizeExceeded:
            self.log.warning("scan.size_exceeded")
            raise errors.PayloadTooLarge("the virus scanner refused a stream this large") from None
        except ScanError as exc:
            self.log.warning("scan.failed", error=str(exc))
            raise errors.ScannerUnavailable() from None
        finally:
            self.p.metrics.observe_stage("verdict_wait", time.perf_counter() - started)

    async def cleanup(self) -> None:
        """Throw away everything this upload left; never raises."""
        if self.keeping is not None:
            await asyncio.wait([self.keeping])  # it copies from what is removed below
        if self.promotion is not None:
            await self.promotion.abort()
        if self.scan is not None:
            await self.scan.cancel()
        if self.writer is not None:
            await self.writer.abort()
        if self.promotion is not None and self.promotion.staged:
            try:
                await self.p.storage.delete(self.p.unscanned, self.staging_key)
            except StorageError as exc:
                # The unscanned bucket's lifecycle rule expires it; say so loudly.
                self.log.error("staging.delete_failed", error=str(exc))


async def keep(
    storage: Storage,
    quarantine: Quarantine,
    item: Item,
    write: Awaitable[None],
    event: AuditEvent | None,
    bound: Any,
    metrics: Metrics,
    *,
    trigger: str,
) -> bool:
    """Keep bytes in the quarantine: ``write`` puts them under ``item.object_key``, then the
    item is listed with ``event`` (its ``quarantine.keep`` row). False when either failed,
    logged on ``bound``: nothing is left behind, and the caller goes on as it would without
    a quarantine (fail closed). ``trigger``: upload or rescan, for the metrics."""
    assert item.object_key is not None
    counted = metrics.quarantined.labels(trigger, item.scan.state.value)
    try:
        await write
    except Exception as exc:
        bound.error("quarantine.copy_failed", error=str(exc))
        # A write whose answer was lost may have landed.
        await _unkeep(storage, quarantine.bucket, item.object_key, bound)
        metrics.quarantine_failures.labels(trigger).inc()
        return False
    try:
        await quarantine.store.add(item, event)
    except Exception as exc:
        bound.error("quarantine.not_recorded", error=str(exc))
        await _unkeep(storage, quarantine.bucket, item.object_key, bound)
        metrics.quarantine_failures.labels(trigger).inc()
        return False
    bound.warning("quarantine.kept", quarantine_id=item.id)
    counted.inc()
    return True


async def _unkeep(storage: Storage, bucket: str, key: str, bound: Any) -> None:
    try:
        await storage.delete(bucket, key)
    except Exception as gone:  # the refusal stands whatever this does
        # Nothing lists it: the quarantine bucket's retention rule expires it.
        bound.error("quarantine.delete_failed", key=key, error=str(gone))


async def copy_object(
    storage: Storage,
    source: Location,
    target: Location,
    content: Content,
    *,
    content_type: str,
    version: str | None,
) -> None:
    """A server-side copy of ``content``'s object, pinned to ``version`` (the one scanned),
    visible once this returns; nothing of it is left if it fails."""
    copy = await storage.begin_copy(
        source.bucket,
        source.key,
        target.bucket,
        target.key,
        size=content.size,
        content_type=content_type,
        metadata=_metadata(content),
        src_version=version,
    )
    try:
        await copy.commit()
    except BaseException:
        await copy.abort()
        raise


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's quota (a pod's
    CPU limit), which ``os.cpu_count()`` does not see (it counts the node's)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    cpus = cpus or os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return cpus


def _state(verdict: Verdict) -> ScanState:
    if verdict.clean:
        return ScanState.CLEAN
    return ScanState.UNSCANNABLE if verdict.unscannable else ScanState.INFECTED


def refusal(scan: ScanRecord, quarantine_id: str | None = None) -> errors.FileshareError:
    """The answer to bytes whose verdict is not clean: malware, or not scannable (and kept
    in quarantine as ``quarantine_id``)."""
    if scan.state is ScanState.UNSCANNABLE:
        return errors.Unscannable(scan.signature or "unknown", quarantine_id)
    return errors.Infected(scan.signature or "unknown", quarantine_id)


def _check_digest(content: Content, expected_sha256: str) -> None:
    if content.sha256 != expected_sha256:
        raise errors.DigestMismatch("the body does not match the sha-256 digest sent with it")


async def _fan_out(*steps: Awaitable[None]) -> None:
    """Run one chunk's consumers together; the slowest paces the read (back-pressure).
    The first failure wins and the others are cancelled."""
    tasks = [asyncio.ensure_future(s) for s in steps]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    for t in tasks:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise domain_error(exc) from None


def _metadata(content: Content) -> dict[str, str]:
    return {"sha256": content.sha256, "sha1": content.sha1_b64}
