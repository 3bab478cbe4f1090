"""Rescans (issue 13): verdicts that stay true when signatures improve.

Clean content whose verdict is old (made before a bound, or with an older signature
database than clamd's current one) is read back from the permanent bucket and scanned
again — once per unique sha256, however many records share it, oldest verdict first, one
at a time so that uploads keep the scanner's other slots; stored content left ``failed``
(migration 0002: records that disagreed about its sha1 or size) comes before it. Each
content is leased in the index while it is rescanned (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so replicas share the work. Content found infected or unscannable takes that
state at once: none of its records is served from then on, and the audit trail gets one
``scan.verdict`` row per record (``detail.trigger = "rescan"``). Without a quarantine its
object stays in the permanent bucket as evidence (never served). With one
(``FILESHARE_QUARANTINE_BUCKET``), once an infected verdict is recorded the object is
copied there (pinned to the version scanned) and listed as a quarantine item of the oldest record's
(``quarantine.keep``, ``detail.trigger = "rescan"``), and only then removed from the
permanent bucket and forgotten by the index (``lose``): presigned URLs issued before stop
serving it, and a later upload of the bytes is scanned again. One attempt: if the copy or the
item fails, the object stays as without a quarantine (logged); content judged so is never
leased again.

With ``FILESHARE_RESCAN_ON_DOWNLOAD`` a download of content whose verdict is older than
that bound rescans it first, the same way (``verify``), and is served only if it is still
clean.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from fileshare import errors
from fileshare.audit import Action, AuditEvent, Result
from fileshare.boundary import index_call
from fileshare.index.base import FileIndex
from fileshare.index.quarantine import QUARANTINE_PREFIX, Item
from fileshare.index.sql import signature_db
from fileshare.models import Content, FileRecord, ScanRecord, ScanState
from fileshare.pipeline import Pipeline, copy_object, keep
from fileshare.storage.base import ObjectInfo, ObjectNotFound, Storage, StorageError
from fileshare.storage.promotion import Location

log = structlog.get_logger(__name__)

#: How long one replica holds the content it rescans: longer than the largest upload's
#: transfer and scan take (a crash frees it after this). A content that could not be
#: rescanned keeps its lease, so a round does not take it again at once.
LEASE = timedelta(hours=1)


@dataclass
class RescanReport:
    """What one round did: per outcome, the sha256 of each content rescanned."""

    clean: list[str] = field(default_factory=list)
    infected: list[str] = field(default_factory=list)
    unscannable: list[str] = field(default_factory=list)
    #: Not rescanned this time (scanner, store or index failed; the bytes changed): their
    #: lease runs out and a later round tries again.
    failed: list[str] = field(default_factory=list)
    #: Records whose content is no longer served.
    files_changed: int = 0

    @property
    def scanned(self) -> list[str]:
        return self.clean + self.infected + self.unscannable


@dataclass(frozen=True)
class Rescanned:
    """What the rescan of one content came to."""

    #: ``clean``, ``infected``, ``unscannable``, or ``failed``: not rescanned.
    outcome: str
    #: Records of it no longer served.
    files: int = 0
    #: Why a download of it is refused now (``failed``): its object is gone or holds other
    #: bytes (409), or the scanner, the store or the index failed (503).
    error: errors.FileshareError | None = None


class Rescanner:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        index: FileIndex,
        storage: Storage,
        permanent_bucket: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pipeline = pipeline
        self.index = index
        self.storage = storage
        self.permanent = permanent_bucket
        self.clock = clock
        #: The rescans downloads are waiting for, by sha256: one each, however many wait.
        self._checks: dict[str, asyncio.Task[Rescanned]] = {}

    async def run(
        self, *, scanned_before: datetime, by_database: bool = True, limit: int | None = None
    ) -> RescanReport:
        """One round: every clean content verdicted before ``scanned_before`` (and, with
        ``by_database``, any verdicted with an older signature database than clamd's now),
        until none is due or ``limit`` were taken. Raises ``errors.IndexUnavailable`` if the
        index cannot give work; a content that fails is counted and left for a later round."""
        report = RescanReport()
        older_db = None
        if by_database:
            older_db = signature_db(await self.pipeline.scanner.provenance())
        started = self.clock()
        taken = 0
        while limit is None or taken < limit:
            # One at a time, each leased just before its scan: a lease never runs out on a
            # content still waiting its turn (another replica would take it too).
            now = self.clock()
            leased = await index_call(
                self.index.lease_rescans(
                    scanned_before=scanned_before,
                    older_db=older_db,
                    round_started=started,
                    now=now,
                    until=now + LEASE,
                    limit=1,
                )
            )
            if not leased:
                break
            taken += 1
            done = await self._one(leased[0], trigger="round")
            getattr(report, done.outcome).append(leased[0].sha256)
            report.files_changed += done.files
        metrics = self.pipeline.metrics
        for outcome in ("clean", "infected", "unscannable", "failed"):
            if found := len(getattr(report, outcome)):
                metrics.rescans.labels(outcome).inc(found)
        if report.scanned or report.failed:
            log.info(
                "rescan.round",
                clean=len(report.clean),
                infected=len(report.infected),
                unscannable=len(report.unscannable),
                failed=len(report.failed),
                files_changed=report.files_changed,
            )
        return report

    async def verify(self, content: Content) -> None:
        """Rescan ``content`` (clean and stored) now, for a download of it
        (``FILESHARE_RESCAN_ON_DOWNLOAD``), recorded as a round records it. Returns if it is
        still clean; raises ``errors.ContentNotAvailable`` if it is not (or its object is
        gone), a ``errors.ServiceUnavailable`` if it could not be rescanned: never served
        unscanned. Concurrent calls for one sha256 share one scan, which runs to its end
        even if every download waiting for it has gone."""
        task = self._checks.get(content.sha256)
        if task is None:
            task = asyncio.ensure_future(self._check(content))
            self._checks[content.sha256] = task
            task.add_done_callback(lambda _: self._checks.pop(content.sha256, None))
        done = await asyncio.shield(task)
        if done.error is not None:
            raise copy.copy(done.error)  # one instance per waiter: each has its traceback
        if done.outcome != "clean":
            raise errors.ContentNotAvailable(f"the file's content is {done.outcome}")

    async def _check(self, content: Content) -> Rescanned:
        done = await self._one(content, trigger="download")
        self.pipeline.metrics.rescans.labels(done.outcome).inc()
        return done

    async def close(self) -> None:
        """Stop the rescans no download waits for any more (at shutdown)."""
        for task in list(self._checks.values()):
            task.cancel()
        if self._checks:
            await asyncio.wait(list(self._checks.values()))

    async def _withdraw(self, content: Content, why: str) -> Rescanned:
        """The content is no longer present: its records stay, none is served, and the next
        upload of its bytes stores (and scans) them again."""
        assert content.key is not None
        try:
            await index_call(self.index.lose(content.sha256, content.key))
        except errors.FileshareError as exc:
            log.warning("rescan.not_recorded", sha256=content.sha256, error=type(exc).__name__)
            return Rescanned("failed", error=exc)
        return Rescanned("failed", error=errors.ContentNotAvailable(why))

    async def _one(self, content: Content, *, trigger: str) -> Rescanned:
        """Rescan one content (as ``lease_rescans`` gives it) and record the verdict."""
        assert content.key is not None
        bound = log.bind(sha256=content.sha256, trigger=trigger)
        try:
            stored = await self.storage.head(self.permanent, content.key)
            digest, scan = await self.pipeline.scan_stored(self.permanent, stored)
        except ObjectNotFound:
            bound.error("rescan.object_missing", key=content.key)
            return await self._withdraw(
                content, "the file's content is missing from storage; upload the file again"
            )
        except StorageError as exc:
            bound.warning("rescan.failed", error=type(exc).__name__)
            return Rescanned("failed", error=errors.StorageUnavailable(operation="rescan"))
        except errors.FileshareError as exc:
            bound.warning("rescan.failed", error=type(exc).__name__)
            if not isinstance(exc, errors.ServiceUnavailable):  # over a size limit now
                exc = errors.ScannerUnavailable("the file could not be scanned again")
            return Rescanned("failed", error=exc)
        if scan.state is ScanState.UNSCANNABLE and "MaxScanTime" in (scan.signature or ""):
            # Out of time on a busy scanner: a fact about this moment, not about the bytes,
            # which were scanned through before. A later round tries again.
            bound.warning("rescan.out_of_time")
            return Rescanned("failed", error=errors.ScannerUnavailable("the scan ran out of time"))
        if digest.sha256 != content.sha256:
            # The stored bytes are not the ones scanned and recorded: none of its records
            # may serve them any more. The object is left where it is for an operator.
            bound.error("rescan.bytes_changed", key=content.key, found=digest.sha256)
            return await self._withdraw(content, "the file's stored content changed")
        audit = AuditEvent(
            action=Action.SCAN_VERDICT,
            result=Result.SUCCESS if scan.state is ScanState.CLEAN else Result.DENIED,
            detail={
                "state": scan.state.value,
                "signature": scan.signature,
                "scanner": scan.scanner,
                "previous_state": content.scan.state.value,
                "previous_scanner": content.scan.scanner,
                "trigger": "rescan",
            }
            | ({"cause": "download"} if trigger == "download" else {}),
        )
        # The sha1 and size of the bytes just hashed: those of a content left failed
        # because its records disagreed about them (migration 0002) are settled so.
        hashed = replace(content, sha1=digest.sha1, size=digest.size)
        try:
            changed = await index_call(self.index.record_rescan(hashed, scan, audit=audit))
        except errors.FileshareError as exc:
            bound.warning("rescan.not_recorded", error=type(exc).__name__)
            return Rescanned("failed", error=exc)
        if scan.state is ScanState.CLEAN:
            if changed:  # failed before: served again
                bound.info("rescan.restored", files=len(changed))
            return Rescanned("clean")
        bound.warning(f"rescan.{scan.state.value}", signature=scan.signature, files=len(changed))
        if changed and scan.state is ScanState.INFECTED and self.pipeline.quarantine is not None:
            # Only now, the verdict recorded: no download is answered from the object any more.
            # Only malware moves: an unscannable rescan is often about clamd (a limit lowered,
            # a newer engine), not the bytes, and the quarantine's retention rule would expire
            # them; they stay in the permanent bucket, unserved, as without a quarantine.
            await self._quarantine(hashed, stored, scan, changed, trigger, bound)
        return Rescanned(scan.state.value, files=len(changed))

    async def _quarantine(
        self,
        content: Content,
        stored: ObjectInfo,
        scan: ScanRecord,
        changed: list[tuple[str, str]],
        trigger: str,
        bound: Any,
    ) -> None:
        """Move the evidence into the quarantine: a copy (pinned to the version scanned),
        its item (the oldest record's owner, id, name and type), and only then the permanent
        object removed and forgotten, which ends presigned URLs issued before. Tried once:
        content this rescan judged is never leased again, so a failure (logged) leaves the
        object where it is, unserved, exactly as without a quarantine."""
        q = self.pipeline.quarantine
        assert q is not None
        assert content.key is not None
        try:
            record = await self._oldest(changed, content.sha256)
        except errors.FileshareError as exc:
            bound.error("rescan.not_quarantined", error=type(exc).__name__)
            return
        owner, file_id = changed[0]
        item_id = uuid.uuid4().hex
        key = f"{QUARANTINE_PREFIX}{item_id}"
        content_type = stored.content_type if record is None else record.content_type
        item = Item(
            id=item_id,
            owner=owner if record is None else record.owner,
            file_id=file_id if record is None else record.id,
            name=None if record is None else record.name,
            content_type=content_type,
            sha256=content.sha256,
            size=content.size,
            scan=scan,
            object_key=key,
            created=self.clock(),
            created_by=None,  # no one uploaded it: a rescan kept it (its audit row says so)
        )
        event = AuditEvent(
            action=Action.QUARANTINE_KEEP,
            owner=item.owner,
            file_id=item.file_id,
            sha256=content.sha256,
            detail={"quarantine_id": item_id, "state": scan.state.value, "trigger": "rescan"}
            | ({"cause": "download"} if trigger == "download" else {}),
        )
        write = copy_object(
            self.storage,
            Location(self.permanent, content.key),
            Location(q.bucket, key),
            content,
            content_type=content_type,
            version=stored.version,
        )
        kept = await keep(
            self.storage, q, item, write, event, bound, self.pipeline.metrics, trigger="rescan"
        )
        if not kept:
            return
        try:
            await self.storage.delete(self.permanent, content.key)
        except StorageError as exc:
            # Kept twice: still unserved, and the index still names it, so a clean upload
            # of these bytes or the deletion of their records removes it.
            bound.error("rescan.evidence_not_removed", key=content.key, error=str(exc))
            return
        try:
            await index_call(self.index.lose(content.sha256, content.key))
        except errors.FileshareError as exc:
            # The row names an object that is gone: unserved all the same, and a clean
            # upload of these bytes or the deletion of their records drops the name.
            bound.error("rescan.not_forgotten", key=content.key, error=type(exc).__name__)

    async def _oldest(self, changed: list[tuple[str, str]], sha256: str) -> FileRecord | None:
        """The oldest record of those the verdict changed that still exists and still holds
        these bytes (a PUT may have replaced one meanwhile)."""
        for owner, file_id in changed:
            record = await index_call(self.index.get(owner, file_id))
            if record is not None and record.content.sha256 == sha256:
                return record
        return None
