"""Prometheus metrics, one registry per application (tests run many apps in a process).

Names follow Prometheus conventions: a counter is named by what it counts and rendered with
``_total`` last; a quantity carries its base unit last (``_bytes``, ``_seconds``, before
``_total`` for a counter); a value fileshare does not know yet is absent, never ``0``, so
that an ``absent()`` alert can fire and an age alert is never fooled.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Most requests take milliseconds; uploads take as long as their transfer and scan.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OUTCOMES = ("clean", "duplicate", "infected", "unscannable", "rejected", "failed")
#: The methods a label may name; anything else a client invents is ``other`` (bounded
#: cardinality, whatever arrives on the wire).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_CLAMAV_VERSION = "fileshare_clamav_database_version"
_CLAMAV_AGE = "fileshare_clamav_database_age_seconds"


class _ClamavDatabase(Collector):
    """The signature database clamd last reported. Until clamd has answered VERSION there
    is no sample at all: a ``0`` would read as "fresh" to ``age > 2d`` and would hide the
    never-known case from ``absent()``. The age is computed at scrape time from the
    database's build date, so it keeps growing between readiness checks, as the database
    it describes gets older."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.version: int | None = None
        self.built: float | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Lets the registry reserve both names while no sample exists.
        return [
            GaugeMetricFamily(_CLAMAV_VERSION, "ClamAV signature database version"),
            GaugeMetricFamily(_CLAMAV_AGE, "Age of the ClamAV signature database"),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if self.version is not None:
            yield GaugeMetricFamily(
                _CLAMAV_VERSION, "ClamAV signature database version", value=self.version
            )
        if self.built is not None:
            yield GaugeMetricFamily(
                _CLAMAV_AGE,
                "Age of the ClamAV signature database, from its build date in clamd VERSION",
                value=max(0.0, self._clock() - self.built),
            )


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # In the text format /metrics serves, prometheus_client's ``*_created`` samples are
        # separate unitless gauge series that double every counter and histogram; Prometheus
        # has no use for them there. (A process-wide switch; fileshare is the only exporter.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The standard process and Python collectors, each a new instance on this registry
        # (the module-level ones are bound to the global registry, which fileshare does not
        # serve): process_resident_memory_bytes is how an operator sees the bounded-memory
        # promise hold.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.uploads = Counter("fileshare_uploads", "Uploads by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.uploads.labels(outcome)
        self.bytes_in = Counter(
            "fileshare_upload_received_bytes", "Upload body bytes received", registry=r
        )
        self.bytes_out = Counter(
            "fileshare_download_sent_bytes", "Download body bytes sent", registry=r
        )
        self.stage_seconds = Histogram(
            "fileshare_upload_stage_duration_seconds",
            "Upload pipeline stage durations (transfer, verdict_wait, promote)",
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
        self.rescans = Counter(
            "fileshare_rescans",
            "Contents scanned again (rescan.py: rounds, downloads of old verdicts), by "
            "outcome; failed: not rescanned (a round retries later, a download is refused)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("clean", "infected", "unscannable", "failed"):
            self.rescans.labels(outcome)
        self.webhooks = Counter(
            "fileshare_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered; retry: to be tried again; dead: "
            "given up after the last attempt)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("delivered", "retry", "dead"):
            self.webhooks.labels(outcome)
        self.webhook_outbox = Gauge(
            "fileshare_webhook_outbox_messages",
            "Webhook messages in the outbox, by state (pending, dead), as last counted",
            ["state"],
            registry=r,
        )
        for state in ("pending", "dead"):
            self.webhook_outbox.labels(state)
        self.quarantined = Counter(
            "fileshare_quarantined",
            "Refused bytes kept in the quarantine bucket, by what found them (upload, rescan) "
            "and their state (infected, unscannable)",
            ["trigger", "state"],
            registry=r,
        )
        self.quarantine_failures = Counter(
            "fileshare_quarantine_failures",
            "Refused bytes that could not be kept in the quarantine (copy or index row "
            "failed; refused all the same), by what found them",
            ["trigger"],
            registry=r,
        )
        for trigger in ("upload", "rescan"):
            self.quarantine_failures.labels(trigger)
            for state in ("infected", "unscannable"):
                self.quarantined.labels(trigger, state)
        self.clamd_errors = Counter(
            "fileshare_clamd_errors", "Scans that ended without a verdict", registry=r
        )
        self.storage_errors = Counter(
            "fileshare_storage_errors", "Storage failures by operation", ["operation"], registry=r
        )
        self.http_requests = Counter(
            "fileshare_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "fileshare_http_request_duration_seconds",
            "Time from a request's arrival until its handler returned (the whole body, for a "
            "streamed answer)",
            ["route", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self._clamav = _ClamavDatabase(clock)
        r.register(self._clamav)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_request(self, route: str, method: str, status: str, seconds: float) -> None:
        """``route`` is a route *template* (``/v1/files/{file_id}``), never a raw path:
        paths hold file ids, which are unbounded and too close to patient data for a label."""
        method = method if method in METHODS else "other"
        self.http_requests.labels(route, method, status).inc()
        self.http_duration.labels(route, method).observe(seconds)

    def track_budget(self, in_use: Callable[[], float], total: float) -> None:
        self.budget_in_use.set_function(in_use)
        self.budget_total.set(total)

    def record_clamd_version(self, version: str) -> None:
        """clamd answers e.g. ``ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025``; an answer
        without the database part leaves what was known before."""
        m = re.match(r"^ClamAV [^/]+/(\d+)/(.+)$", version.strip())
        if not m:
            return
        self._clamav.version = int(m.group(1))
        try:
            built: float | None = parsedate_to_datetime(m.group(2) + " +0000").timestamp()
        except (TypeError, ValueError):
            built = None  # a new database of unknown date: its age is unknown, not the old one's
        self._clamav.built = built

    def render(self) -> bytes:
        return generate_latest(self.registry)
