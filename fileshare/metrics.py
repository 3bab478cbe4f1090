"""Prometheus metrics, one registry per application (tests run many apps in a process)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OUTCOMES = ("clean", "duplicate", "infected", "rejected", "failed")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploads = Counter("fileshare_uploads", "Uploads by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.uploads.labels(outcome)
        self.bytes_in = Counter("fileshare_bytes_in", "Upload bytes received", registry=r)
        self.bytes_out = Counter("fileshare_bytes_out", "Download bytes sent", registry=r)
        self.stage_seconds = Histogram(
            "fileshare_stage_seconds",
            "Pipeline stage durations (transfer, verdict_wait, promote)",
            ["stage"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("fileshare_uploads_in_flight", "Uploads in progress", registry=r)
        self.budget_in_use = Gauge(
            "fileshare_memory_budget_in_use_bytes", "Upload memory reserved", registry=r
        )
        self.budget_total = Gauge(
            "fileshare_memory_budget_bytes", "Upload memory budget", registry=r
        )
        self.clamd_errors = Counter(
            "fileshare_clamd_errors", "Scans that ended without a verdict", registry=r
        )
        self.storage_errors = Counter(
            "fileshare_storage_errors", "Storage failures by operation", ["operation"], registry=r
        )
        self.signature_version = Gauge(
            "fileshare_clamav_database_version", "ClamAV signature database version", registry=r
        )
        self.signature_age = Gauge(
            "fileshare_clamav_database_age_seconds",
            "Age of the ClamAV signature database, from clamd VERSION",
            registry=r,
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def track_budget(self, in_use: Callable[[], float], total: float) -> None:
        self.budget_in_use.set_function(in_use)
        self.budget_total.set(total)

    def record_clamd_version(self, version: str) -> None:
        """clamd answers e.g. ``ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025``."""
        m = re.match(r"^ClamAV [^/]+/(\d+)/(.+)$", version.strip())
        if not m:
            return
        self.signature_version.set(int(m.group(1)))
        try:
            built = parsedate_to_datetime(m.group(2) + " +0000")
        except (TypeError, ValueError):
            return
        self.signature_age.set(max(0.0, time.time() - built.timestamp()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
