import time

from fileshare.metrics import Metrics


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_clamd_version_gives_database_version_and_age() -> None:
    metrics = Metrics()
    metrics.record_clamd_version("ClamAV 1.4.3/27530/Mon Jan 13 09:37:02 2025")
    assert sample(metrics, "fileshare_clamav_database_version") == 27530
    age = sample(metrics, "fileshare_clamav_database_age_seconds")
    assert age is not None
    assert abs(age - (time.time() - 1736761022)) < 60


def test_a_version_without_database_sets_nothing() -> None:
    metrics = Metrics()
    metrics.record_clamd_version("ClamAV 1.4.6")
    assert sample(metrics, "fileshare_clamav_database_version") == 0
