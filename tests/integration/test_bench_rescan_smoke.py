"""The rescan benchmark (``bench/rescan.py``) in small, in CI: 6 contents behind 15 file
records, one run, on the test session's clamd, so that the benchmark cannot rot unnoticed.

Every content must have been rescanned exactly once by fileshare and by its CLI (the
benchmark refuses a round that is not), every measurement must be there, and the per-file
counterfactual must scan each record's bytes."""

from __future__ import annotations

import pytest

from bench import rescan
from tests.servers import Clamd

pytestmark = pytest.mark.timeout(90)


def test_corpus_shape_is_deterministic_and_gives_every_content_a_record() -> None:
    plan = rescan.Plan(contents=50, files=150, runs=1, zipf=1.0, seed=7)
    sizes, refs = rescan.corpus_shape(plan)
    assert (sizes, refs) == rescan.corpus_shape(plan)
    assert sum(refs) == 150
    assert min(refs) == 1
    assert all(rescan.SMALLEST <= s <= rescan.LARGEST for s in sizes)
    # Zipf: the first rank is the most referenced.
    assert refs[0] == max(refs) > 10


def test_bench_rescan_smoke_measures_every_row(clamd: Clamd) -> None:
    plan = rescan.Plan(contents=6, files=15, runs=1)
    results = rescan.run_on(plan, clamd)

    assert results["corpus"]["contents"] == 6
    assert results["corpus"]["files"] == 15
    (run,) = results["runs"]
    for key, _ in rescan.ROWS:
        assert run[key]["seconds"] > 0, key
        assert {"bench", "clamd", "others"} <= set(run[key]["cpu"]), key
    assert run["cli"]["cpu"]["fileshare"] > 0
    assert all(t > 0 for t in run["a"]["times"] + run["b"]["times"] + run["c"]["times"])
    steps = run["a"]["steps"]
    assert sum(steps[s] for s in rescan.STEPS) <= run["a"]["seconds"]
    # fileshare's own stage metrics moved: its transfer and verdict wait are in scan_stored.
    assert 0 < steps["transfer"] + steps["verdict_wait"] <= steps["scan_stored"]

    summary = results["summary"]
    assert summary["per_file"]["scans"] == 15
    assert summary["per_file"]["scans_per_content"] == 6
    assert summary["rows"]["c"]["scans_per_s"] > 0

    results["meta"] = {"cpus": 2, "clamd": "ClamAV", "commit": "x", "plan": {"runs": 1}}
    text = rescan.render(results)
    assert "(a)  fileshare Rescanner.run (--all)" in text
    assert "6 instead of 15" in text
