"""The direct-upload benchmark (``bench/direct.py``) in small, in CI: one run at 1 MiB and
one round of 4 staged objects, on the test session's SeaweedFS and clamd, with a real
``fileshare serve``, so that the benchmark cannot rot unnoticed.

Every scenario must have been measured, every completion must have read its object
exactly once (fileshare's received-bytes counter) and left no staging object behind."""

from __future__ import annotations

import pytest

from bench import direct
from bench.run import Results
from tests.servers import Clamd, MiB, SeaweedS3

pytestmark = pytest.mark.timeout(90)


def test_bench_direct_smoke_measures_every_scenario(clamd: Clamd, seaweed: SeaweedS3) -> None:
    plan = direct.Plan(
        sizes=[1 * MiB],
        runs={1 * MiB: 1},
        concurrent=4,
        concurrent_size=1 * MiB,
        concurrent_rounds=1,
        warm_up=False,
    )
    results = Results()
    checks = direct.run_on(plan, clamd, seaweed, results)

    # 1 direct flow + 4 staged objects, each ingested clean, each read once, none left.
    assert checks == {"ingested": 5}, checks
    runs = results.runs[direct.SECTION]["1 MiB"]
    assert set(runs) == {key for key, _ in direct.SCENARIOS}
    for key, measured in runs.items():
        assert len(measured) == 1, key
        assert measured[0]["seconds"] > 0, key
        assert set(direct.PROCESSES) <= set(measured[0]["cpu"]), key
    (ingest,) = runs["i"]
    assert ingest["read_bytes"] == 1 * MiB
    assert ingest["server_stages"]["verdict_wait_s"] > 0
    total = runs["t"][0]["seconds"]
    parts = sum(runs[k][0]["seconds"] for k in ("n", "p", "i"))
    assert total == pytest.approx(parts, abs=1e-3)

    (found,) = results.concurrency["rounds"]
    for phase in ("put", "floor", "ingest"):
        assert found[phase]["objects_per_s"] > 0, phase
    assert found["ingest"]["read_bytes"] == 4 * MiB

    results.summary = direct.summarize(results)
    assert "ingestion (i) / floor (r) at 1 MiB" in results.summary["ratios"]
    text = direct.render(results, plan)
    assert "4 completions -> clean" in text
    assert "(i)  ingestion: POST complete -> clean" in text
