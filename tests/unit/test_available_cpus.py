"""How many CPUs the small-body rule counts (``pipeline.available_cpus``): a pod's CPU
limit, read from the cgroup v2 file a container sees (written here), caps the node's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fileshare.pipeline import available_cpus


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000\n", 2), ("50000 100000\n", 1), ("100000 100000", 1)],
)
def test_a_quota_caps_the_count(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert available_cpus(path) == min(expected, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("cpu_max", ["max 100000\n", "garbage", None])
def test_without_a_quota_the_affinity_counts(tmp_path: Path, cpu_max: str | None) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert available_cpus(path) == len(os.sched_getaffinity(0))
