"""The soak (``bench/soak``) in small, in CI: 8 clients for 20 s, bodies up to 8 MiB, against
a real ``fileshare serve`` on the session's SeaweedFS, PostgreSQL and clamd.

The report must show nothing lost and nothing leaked, with every kind of operation really
exercised. Then the same checks are run again after a leak has been planted in each place
they look (a staging object, an unfinished multipart upload, an object the index does not
know, a record nobody was told of) and after the ledger was made to expect what the server
does not have (other bytes, a deleted file alive): each must be reported, so a soak that
passes is one whose checks could have failed.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.soak.bodies import Body
from bench.soak.driver import Plan
from bench.soak.ledger import State
from bench.soak.probes import PostgresProbe, S3Probe
from bench.soak.run import Options, Servers, Soak, owners, render
from tests.servers import Clamd, MiB, Postgres, SeaweedS3

pytestmark = pytest.mark.timeout(120)

#: A clean content whose object is not in the bucket, and a record of it nobody was told of.
PLANTED_ROWS = """
INSERT INTO contents (sha256, sha1, size, state, object_key, created)
VALUES (repeat('0', 64), decode(repeat('00', 20), 'hex'), 1, 'clean',
        'sha256/00/00/' || repeat('0', 64) || '.planted', now());
INSERT INTO files (owner, id, name, content_type, sha256, created, updated, meta)
VALUES ('soak-a', 'planted', 'planted', 'text/plain', repeat('0', 64), now(), now(), '{}');
"""


def test_soak_smoke_loses_nothing_and_its_checks_can_fail(
    clamd: Clamd, seaweed: SeaweedS3, postgres: Postgres
) -> None:
    plan = Plan(
        clients=8, duration=20.0, max_size=8 * MiB, seed=14, owners=owners(), retry_grace=10.0
    )
    servers = Servers(clamd=clamd, backend="s3", seaweed=seaweed, postgres=postgres)
    with Soak(plan, servers, Options(settle_deadline=15.0)) as soak:
        report = soak.run()
        assert report["ok"], render(report)
        assert report["losses_total"] == report["leaks_total"] == 0
        outcomes = report["outcomes"]
        for outcome in (
            "ok_201_created",
            "ok_200_same_record",
            "refused_infected",
            "deleted",
            "read_ok",
        ):
            assert outcomes.get(outcome, 0) > 0, (outcome, outcomes)
        assert outcomes.get("aborted_close", 0) + outcomes.get("aborted_reset", 0) > 0
        assert report["uploads"]["acknowledged"] >= 50, report["uploads"]
        assert report["rss"]["peak"] <= report["rss"]["limit"]
        assert report["checks"]["verified"]["downloaded_files"] > 0

        # Leftovers planted where the checks look, behind the server's back.
        store = soak.store
        assert isinstance(store, S3Probe)
        assert isinstance(soak.index, PostgresProbe)
        store.plant(soak.unscanned, "staging/planted-by-the-test")
        unfinished = store.plant_unfinished(soak.permanent, "sha256/00/00/planted-upload")
        store.plant(soak.permanent, "sha256/00/00/planted-orphan")
        postgres.psql(PLANTED_ROWS, database=soak.database)
        # And a ledger that expects what the server does not have.
        live = [r for r in soak.ledger.records.values() if r.state is State.LIVE]
        deleted = [r for r in soak.ledger.records.values() if r.state is State.DELETED]
        wrong_bytes, resurrected = live[0], deleted[0]
        wrong_bytes.body = dataclasses.replace(wrong_bytes.body, seed=wrong_bytes.body.seed + 1)
        wrong_bytes.sha256 = Body(wrong_bytes.body.seed, wrong_bytes.body.size).sha256
        resurrected.state = State.LIVE

        found = soak.recheck([wrong_bytes, resurrected], deadline=1.0)
        try:
            assert found.leaks["staging object left"] == 1, found.details
            assert found.leaks["unfinished upload left"] == 1, found.details
            assert found.leaks["permanent object the index does not know"] == 1, found.details
            assert found.leaks["record never acknowledged"] == 1, found.details
            assert found.losses["downloaded other bytes"] == 1, found.details
            assert found.losses["acknowledged file not served"] == 1, found.details
            assert found.losses["record names other bytes"] == 1, found.details
            assert found.losses["content object missing from the permanent bucket"] == 1
        finally:
            store.abort(soak.permanent, "sha256/00/00/planted-upload", unfinished)
