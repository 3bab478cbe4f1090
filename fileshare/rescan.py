"""Rescans (issue 13): verdicts that stay true when signatures improve.

Clean content whose verdict is old (made before a bound, or with an older signature
database than clamd's current one) is read back from the permanent bucket and scanned
again — once per unique sha256, however many records share it, oldest verdict first, one
at a time so that uploads keep the scanner's other slots. Each content is leased in the
index while it is rescanned (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so replicas share
the work. Content found infected or unscannable takes that state at once: none of its
records is served from then on, and the audit trail gets one ``scan.verdict`` row per
record (``detail.trigger = "rescan"``). Its object stays in the permanent bucket as
evidence (never served).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from fileshare import errors
from fileshare.audit import Action, AuditEvent, Result
from fileshare.boundary import index_call
from fileshare.index.base import FileIndex
from fileshare.index.sql import signature_db
from fileshare.models import Content, ScanState
from fileshare.pipeline import Pipeline
from fileshare.storage.base import ObjectNotFound, Storage, StorageError

log = structlog.get_logger(__name__)

#: How long one replica holds a content it rescans (a crash frees it after this).
LEASE = timedelta(minutes=15)
#: Contents leased per index call.
BATCH = 16


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
        taken = 0
        while limit is None or taken < limit:
            now = self.clock()
            batch = BATCH if limit is None else min(BATCH, limit - taken)
            leased = await index_call(
                self.index.lease_rescans(
                    scanned_before=scanned_before,
                    older_db=older_db,
                    now=now,
                    until=now + LEASE,
                    limit=batch,
                )
            )
            if not leased:
                break
            taken += len(leased)
            for content in leased:
                await self._one(content, report)
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

    async def _one(self, content: Content, report: RescanReport) -> None:
        assert content.key is not None
        bound = log.bind(sha256=content.sha256)
        try:
            stored = await self.storage.head(self.permanent, content.key)
            digest, scan = await self.pipeline.scan_stored(self.permanent, stored)
        except (ObjectNotFound, StorageError, errors.FileshareError) as exc:
            bound.warning("rescan.failed", error=type(exc).__name__)
            report.failed.append(content.sha256)
            return
        if digest.sha256 != content.sha256:
            # The stored bytes are not the ones scanned and recorded: say so loudly; the
            # verdict of other bytes is no verdict on these.
            bound.error("rescan.bytes_changed", found=digest.sha256)
            report.failed.append(content.sha256)
            return
        audit = AuditEvent(
            action=Action.SCAN_VERDICT,
            result=Result.SUCCESS if scan.state is ScanState.CLEAN else Result.DENIED,
            detail={
                "state": scan.state.value,
                "signature": scan.signature,
                "scanner": scan.scanner,
                "previous_scanner": content.scan.scanner,
                "trigger": "rescan",
            },
        )
        try:
            changed = await index_call(self.index.record_rescan(content, scan, audit=audit))
        except errors.FileshareError as exc:
            bound.warning("rescan.not_recorded", error=type(exc).__name__)
            report.failed.append(content.sha256)
            return
        if scan.state is ScanState.CLEAN:
            report.clean.append(content.sha256)
            return
        bound.warning(f"rescan.{scan.state.value}", signature=scan.signature, files=len(changed))
        report.files_changed += len(changed)
        if scan.state is ScanState.UNSCANNABLE:
            report.unscannable.append(content.sha256)
        else:
            report.infected.append(content.sha256)
