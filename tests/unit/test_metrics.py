import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fileshare.metrics import Metrics

#: Counts of things and a version number are the gauges Prometheus lets go without a unit.
UNITLESS_GAUGES = {
    "fileshare_uploads_in_flight",
    "fileshare_clamav_database_version",
    "fileshare_webhook_outbox_messages",
    "process_open_fds",
    "process_max_fds",
}
BASE_UNITS = ("seconds", "bytes", "ratio")
#: Units Prometheus asks to express in base units instead.
NOT_BASE_UNITS = {"ms", "milliseconds", "minutes", "hours", "kb", "mb", "kib", "mib", "percent"}


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def types(metrics: Metrics) -> dict[str, str]:
    """Every ``# TYPE`` line of the text /metrics serves: what Prometheus will see."""
    text = metrics.render().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def busy_metrics() -> Metrics:
    """Every family with a sample: labelled ones appear only once used."""
    metrics = Metrics(clock=lambda: 1736761022.0 + 3600)
    metrics.record_clamd_version("ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025")
    metrics.observe_stage("transfer", 0.5)
    metrics.observe_request("/v1/files/{file_id}", "GET", "200", 0.01)
    metrics.storage_errors.labels("put").inc()
    return metrics


def test_every_name_ends_with_its_unit_or_total() -> None:
    found = types(busy_metrics())
    assert len(found) > 20
    for name, kind in found.items():
        words = name.split("_")
        assert not NOT_BASE_UNITS & set(words), name
        if kind == "counter":
            assert name.endswith("_total"), name
            words = words[:-1]
        elif kind in ("histogram", "summary"):
            assert words[-1] in BASE_UNITS, name
        elif kind == "gauge":
            assert words[-1] in BASE_UNITS or words[-1] == "info" or name in UNITLESS_GAUGES, name
        # A unit is last (before _total): fileshare_bytes_in would have been caught here.
        for unit in BASE_UNITS:
            assert unit not in words[:-1], name


def test_no_created_series() -> None:
    assert not [n for n in types(busy_metrics()) if n.endswith("_created")]


def test_the_renamed_families_are_there() -> None:
    found = types(busy_metrics())
    for name in (
        "fileshare_uploads_total",
        "fileshare_upload_received_bytes_total",
        "fileshare_download_sent_bytes_total",
        "fileshare_upload_stage_duration_seconds",
        "fileshare_http_requests_total",
        "fileshare_http_request_duration_seconds",
        "fileshare_clamd_errors_total",
        "fileshare_storage_errors_total",
    ):
        assert name in found, name


def test_standard_collectors_on_every_apps_registry() -> None:
    # Tests (and a process hosting several apps) build many registries: each gets its own
    # collectors, none of them the global registry's.
    first, second = Metrics(), Metrics()
    for metrics in (first, second):
        rss = sample(metrics, "process_resident_memory_bytes")
        assert rss is not None
        assert rss > 1024 * 1024
        assert sample(metrics, "python_gc_collections_total", {"generation": "0"}) is not None
        assert "python_info" in types(metrics)


def test_clamav_database_is_absent_until_clamd_has_told_us() -> None:
    metrics = Metrics()
    names = {f.name for f in text_string_to_metric_families(metrics.render().decode())}
    assert "fileshare_clamav_database_version" not in names
    assert "fileshare_clamav_database_age_seconds" not in names
    assert b"fileshare_clamav" not in metrics.render()


def test_clamd_version_gives_database_version_and_age() -> None:
    now = [1736761022.0 + 3 * 86400]
    metrics = Metrics(clock=lambda: now[0])
    metrics.record_clamd_version("ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025")
    assert sample(metrics, "fileshare_clamav_database_version") == 27530
    assert sample(metrics, "fileshare_clamav_database_age_seconds") == 3 * 86400
    # The age is the database's, at scrape time: it grows without clamd being asked again.
    now[0] += 60
    assert sample(metrics, "fileshare_clamav_database_age_seconds") == 3 * 86400 + 60


def test_a_version_without_database_sets_nothing() -> None:
    metrics = Metrics()
    metrics.record_clamd_version("ClamAV 1.4.6")
    assert sample(metrics, "fileshare_clamav_database_version") is None
    assert sample(metrics, "fileshare_clamav_database_age_seconds") is None


def test_a_database_of_unknown_date_has_no_age_not_the_previous_one() -> None:
    metrics = Metrics(clock=lambda: 1736761022.0)
    metrics.record_clamd_version("ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025")
    metrics.record_clamd_version("ClamAV 1.4.3/27531/not a date")
    assert sample(metrics, "fileshare_clamav_database_version") == 27531
    assert sample(metrics, "fileshare_clamav_database_age_seconds") is None


@pytest.mark.parametrize(("method", "label"), [("GET", "GET"), ("BREW", "other"), ("get", "other")])
def test_request_methods_are_bounded(method: str, label: str) -> None:
    metrics = Metrics()
    metrics.observe_request("/v1/files", method, "201", 0.2)
    labels = {"route": "/v1/files", "method": label}
    assert sample(metrics, "fileshare_http_requests_total", labels | {"status": "201"}) == 1
    assert sample(metrics, "fileshare_http_request_duration_seconds_count", labels) == 1
    assert sample(metrics, "fileshare_http_request_duration_seconds_sum", labels) == 0.2
