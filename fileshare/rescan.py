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
            await self._one(leased[0], report)
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

    async def _withdraw(self, content: Content, report: RescanReport) -> None:
        """The content is no longer present: its records stay, none is served, and the next
        upload of its bytes stores (and scans) them again."""
        assert content.key is not None
        try:
            await index_call(self.index.lose(content.sha256, content.key))
        except errors.FileshareError as exc:
            log.warning("rescan.not_recorded", sha256=content.sha256, error=type(exc).__name__)
        report.failed.append(content.sha256)

    async def _one(self, content: Content, report: RescanReport) -> None:
        assert content.key is not None
        bound = log.bind(sha256=content.sha256)
        try:
            stored = await self.storage.head(self.permanent, content.key)
            digest, scan = await self.pipeline.scan_stored(self.permanent, stored)
        except ObjectNotFound:
            bound.error("rescan.object_missing", key=content.key)
            await self._withdraw(content, report)
            return
        except (StorageError, errors.FileshareError) as exc:
            bound.warning("rescan.failed", error=type(exc).__name__)
            report.failed.append(content.sha256)
            return
        if scan.state is ScanState.UNSCANNABLE and "MaxScanTime" in (scan.signature or ""):
            # Out of time on a busy scanner: a fact about this moment, not about the bytes,
            # which were scanned through before. A later round tries again.
            bound.warning("rescan.out_of_time")
            report.failed.append(content.sha256)
            return
        if digest.sha256 != content.sha256:
            # The stored bytes are not the ones scanned and recorded: none of its records
            # may serve them any more. The object is left where it is for an operator.
            bound.error("rescan.bytes_changed", key=content.key, found=digest.sha256)
            await self._withdraw(content, report)
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
