"""The ingest pipeline: one pass over the body.

    chunks -> size limit -> sha256 + sha1 -> staging writer (unscanned bucket)
                                        \\-> clamd INSTREAM (at the same time)
    end -> permanent has sha256?  yes -> drop staging and scan, answer
                                  no  -> verdict (a server-side copy into an invisible
                                         target runs meanwhile) -> clean: make it visible
                                         otherwise: throw everything away

Every failure path throws away what was staged: nothing unscanned is ever promoted, and
nothing is left behind but what the unscanned bucket's lifecycle rule will expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from fileshare import errors
from fileshare.budget import MemoryBudget
from fileshare.metrics import Metrics
from fileshare.models import Content, permanent_key
from fileshare.scan.base import (
    ScanError,
    Scanner,
    ScannerBusy,
    ScanSession,
    ScanSizeExceeded,
    Verdict,
)
from fileshare.storage.base import (
    ObjectExists,
    ObjectNotFound,
    PendingCopy,
    Storage,
    StorageError,
    Writer,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Chunks from the socket are small (tens of KiB); they are gathered to this size before
#: fanning out so the per-chunk overhead (a task, a thread hop for hashing) stays small.
FANOUT_CHUNK = 1024 * 1024
#: Below this, hashing inline is cheaper than a thread hop; above it hashlib releases the
#: GIL and runs beside the event loop.
THREAD_HASH_MIN = 256 * 1024


@dataclass(frozen=True)
class IngestResult:
    content: Content
    #: True when the content was already permanent (or appeared during this upload).
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
        budget: MemoryBudget,
        unscanned_bucket: str,
        permanent_bucket: str,
        max_size: int,
        per_upload_memory: int,
        budget_wait: float,
        metrics: Metrics,
    ) -> None:
        self.storage = storage
        self.scanner = scanner
        self.budget = budget
        self.unscanned = unscanned_bucket
        self.permanent = permanent_bucket
        self.max_size = max_size
        self.per_upload_memory = per_upload_memory
        self.budget_wait = budget_wait
        self.metrics = metrics
        self._cleanups: set[asyncio.Future[None]] = set()

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        declared_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> IngestResult:
        """Stream ``chunks`` through hashing, staging and scanning; promote if clean.

        ``expected_sha256`` (hex, from the client's ``Content-Digest``) lets a re-upload
        of content already held skip staging and scanning; a body that does not match it
        is refused.

        Raises ``PayloadTooLarge``, ``TruncatedBody``, ``Infected``,
        ``ScannerUnavailable`` or ``StorageUnavailable``; in every case nothing is left
        in the permanent bucket that was not scanned clean.
        """
        if declared_size is not None and declared_size > self.max_size:
            raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes")
        async with self.budget.reserve(self.per_upload_memory, wait=self.budget_wait):
            upload = _Upload(self, content_type)
            self.metrics.inflight.inc()
            try:
                result = await upload.run(chunks, declared_size, expected_sha256)
            except errors.FileshareError as exc:
                self._count_failure(exc)
                raise
            except BaseException:
                self.metrics.uploads.labels("failed").inc()
                raise
            finally:
                self.metrics.inflight.dec()
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

    def __init__(self, pipeline: Pipeline, content_type: str) -> None:
        self.p = pipeline
        self.content_type = content_type
        self.staging_key = f"staging/{uuid.uuid4().hex}"
        self.writer: Writer | None = None
        self.scan: ScanSession | None = None
        self.copy: PendingCopy | None = None
        self.staged = False  # the staging object became visible
        self.log = log.bind(staging_key=self.staging_key)

    async def run(
        self,
        chunks: AsyncIterator[bytes],
        declared_size: int | None,
        expected_sha256: str | None,
    ) -> IngestResult:
        p = self.p
        if expected_sha256 is not None and await self._exists(permanent_key(expected_sha256)):
            # The client told us the digest and we already hold those bytes clean: only
            # prove the body matches. Nothing is staged and clamd is not involved.
            content = await self._receive(chunks, declared_size, ())
            _check_digest(content, expected_sha256)
            self.log.info("upload.duplicate", sha256=content.sha256, verified_only=True)
            return IngestResult(content, duplicate=True)
        try:
            self.scan = await p.scanner.open()
        except ScannerBusy:
            raise errors.Overloaded("the virus scanner is saturated; retry later") from None
        except ScanError as exc:
            self.log.warning("scan.unavailable", error=str(exc))
            raise errors.ScannerUnavailable() from None
        self.writer = await _storage(
            "open_writer",
            p.storage.open_writer(p.unscanned, self.staging_key, content_type=self.content_type),
        )
        content = await self._receive(chunks, declared_size, (self.writer.write, self.scan.feed))
        if expected_sha256 is not None:
            _check_digest(content, expected_sha256)
        self.log = self.log.bind(sha256=content.sha256, size=content.size)
        key = permanent_key(content.sha256)
        if await self._exists(key):
            # Already clean and permanent: clamd discards an unterminated stream unscanned.
            self.log.info("upload.duplicate")
            return IngestResult(content, duplicate=True)

        verdict_task = asyncio.create_task(self._verdict())
        try:
            buffered = self.writer.buffered()
            if buffered is None:
                # Set first: a commit whose answer was lost may still have made the object.
                self.staged = True
                staged = await _storage("stage", self.writer.commit())
                self.copy = await _storage(
                    "copy",
                    p.storage.begin_copy(
                        p.unscanned,
                        self.staging_key,
                        p.permanent,
                        key,
                        size=content.size,
                        content_type=self.content_type,
                        metadata=_metadata(content),
                        # Only the bytes written (and scanned) may be promoted.
                        src_version=staged.version,
                    ),
                )
            verdict = await verdict_task
        finally:
            if not verdict_task.done():
                verdict_task.cancel()
                await asyncio.wait([verdict_task])
        if not verdict.clean:
            self.log.warning("scan.infected", signature=verdict.signature)
            raise errors.Infected(verdict.signature or "unknown")
        self.log.info("scan.clean")

        promote_started = time.perf_counter()
        try:
            if buffered is not None:
                await _storage(
                    "put",
                    p.storage.put(
                        p.permanent,
                        key,
                        buffered,
                        content_type=self.content_type,
                        metadata=_metadata(content),
                        if_absent=True,
                    ),
                    ObjectExists,
                )
            else:
                assert self.copy is not None
                await _storage("promote", self.copy.commit(), ObjectExists)
                self.copy = None
        except ObjectExists:
            # Another upload of the same bytes promoted first: same content, same answer.
            self.log.info("upload.duplicate", raced=True)
            return IngestResult(content, duplicate=True)
        p.metrics.observe_stage("promote", time.perf_counter() - promote_started)
        self.log.info("file.promoted")
        return IngestResult(content, duplicate=False)

    async def _receive(
        self,
        chunks: AsyncIterator[bytes],
        declared_size: int | None,
        consumers: tuple[Callable[[bytes], Awaitable[None]], ...],
    ) -> Content:
        """The read loop: limit, hash, and hand each chunk to every consumer."""
        p = self.p
        started = time.perf_counter()
        hashers = _Hashers()
        size = 0
        async for chunk in _regroup(chunks, FANOUT_CHUNK):
            size += len(chunk)
            p.metrics.bytes_in.inc(len(chunk))
            if size > p.max_size or (declared_size is not None and size > declared_size):
                raise errors.PayloadTooLarge(f"the limit is {p.max_size} bytes")
            await _fan_out(hashers.feed(chunk), *(consume(chunk) for consume in consumers))
        if declared_size is not None and size != declared_size:
            raise errors.TruncatedBody(f"declared {declared_size} bytes, received {size}")
        p.metrics.observe_stage("transfer", time.perf_counter() - started)
        return Content(sha256=hashers.sha256.hexdigest(), sha1=hashers.sha1.digest(), size=size)

    async def _verdict(self) -> Verdict:
        assert self.scan is not None
        started = time.perf_counter()
        try:
            return await self.scan.verdict()
        except ScanSizeExceeded:
            self.log.warning("scan.size_exceeded")
            raise errors.PayloadTooLarge("the virus scanner refused a stream this large") from None
        except ScanError as exc:
            self.log.warning("scan.failed", error=str(exc))
            raise errors.ScannerUnavailable() from None
        finally:
            self.p.metrics.observe_stage("verdict_wait", time.perf_counter() - started)

    async def _exists(self, key: str) -> bool:
        try:
            await _storage("head", self.p.storage.head(self.p.permanent, key), ObjectNotFound)
        except ObjectNotFound:
            return False
        return True

    async def cleanup(self) -> None:
        """Throw away everything this upload left; never raises."""
        if self.copy is not None:
            await self.copy.abort()
        if self.scan is not None:
            await self.scan.cancel()
        if self.writer is not None:
            await self.writer.abort()
        if self.staged:
            try:
                await self.p.storage.delete(self.p.unscanned, self.staging_key)
            except StorageError as exc:
                # The unscanned bucket's lifecycle rule expires it; say so loudly.
                self.log.error("staging.delete_failed", error=str(exc))


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
            _raise_domain(exc)


def _raise_domain(exc: BaseException) -> None:
    if isinstance(exc, ScanSizeExceeded):
        raise errors.PayloadTooLarge("the virus scanner refused a stream this large") from None
    if isinstance(exc, ScanError):
        log.warning("scan.failed", error=str(exc))
        raise errors.ScannerUnavailable() from None
    if isinstance(exc, StorageError):
        log.warning("storage.failed", operation="write", error=str(exc))
        raise errors.StorageUnavailable(operation="write") from None
    raise exc


async def _storage(
    operation: str,
    awaitable: Awaitable[T],
    expected: type[StorageError] | None = None,
) -> T:
    """Await a storage call; ``expected`` (a meaningful answer such as "not found" for a
    HEAD) passes through, any other backend failure becomes a 503."""
    try:
        return await awaitable
    except StorageError as exc:
        if expected is not None and isinstance(exc, expected):
            raise
        log.warning("storage.failed", operation=operation, error=str(exc))
        raise errors.StorageUnavailable(operation=operation) from None


def _metadata(content: Content) -> dict[str, str]:
    return {"sha256": content.sha256, "sha1": content.sha1_b64}
