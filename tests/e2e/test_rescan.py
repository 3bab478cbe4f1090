"""Rescans (issue 13) through the whole service against a real clamd whose signature
database grows: content scanned clean, then matched by a signature added later (a new
``.ndb`` and clamd's ``RELOAD``), is found by a rescan — once per sha256, however many
records share it — and from then on none of its records is served; the audit trail has a
row per record. Two replicas rescanning at once (PostgreSQL) share the work. With
FILESHARE_RESCAN_ON_DOWNLOAD a download of an old verdict rescans it first, and serves
nothing it cannot rescan; content migration 0002 left failed is rescanned and served again."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from fileshare.app import INDEX, RESCANNER, SCANNER
from fileshare.config import ClamdAddress
from fileshare.index.tables import audit_events, contents
from tests.e2e.conftest import ALICE, BOB, Env
from tests.e2e.test_upload import download, upload
from tests.faultproxy import FaultProxy
from tests.servers import Clamd, parse_tcp_address

SIGNATURE = "Fileshare.Test.Rescan"  # clamd reports it with ".UNOFFICIAL" appended


@pytest.fixture
def growing_clamd(tmp_path: Path) -> Iterator[Clamd]:
    with Clamd(workdir=tmp_path / "clamd") as server:
        yield server


def _marker() -> bytes:
    return b"fileshare-rescan-marker-" + os.urandom(8).hex().encode()


async def _learn(clamd: Clamd, env: Env, marker: bytes) -> None:
    """Add a signature for ``marker`` to clamd's database and reload it; returns once
    clamd finds it (polled with the app's own scanner, under a deadline)."""
    assert clamd.workdir is not None
    (clamd.workdir / "db" / "rescan.ndb").write_text(f"{SIGNATURE}:0:*:{marker.hex()}\n")
    with socket.create_connection((clamd.host, clamd.port), timeout=10) as sock:
        sock.sendall(b"zRELOAD\0")
        assert sock.recv(64).startswith(b"RELOADING")
    scanner = env.client.app[SCANNER]
    deadline = time.monotonic() + 60
    while True:
        session = await scanner.open()
        await session.feed(b"probe " + marker)
        if not (await session.verdict()).clean:
            return
        assert time.monotonic() < deadline, "clamd never loaded the new signature"
        await asyncio.sleep(0.2)  # clamd reloads in the background: poll, with a deadline


async def _audit_rows(env: Env, sha256: str) -> list[dict[str, Any]]:
    def rows(conn: Any) -> list[dict[str, Any]]:
        query = select(audit_events).where(audit_events.c.sha256 == sha256)
        return [dict(r) for r in conn.execute(query.order_by(audit_events.c.seq)).mappings()]

    found: list[dict[str, Any]] = await env.client.app[INDEX].run(rows)  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_content_matched_by_a_later_signature_is_found_and_never_served_again(
    make_env: Any, growing_clamd: Clamd
) -> None:
    env: Env = await make_env(clamd=ClamdAddress(host=growing_clamd.host, port=growing_clamd.port))
    marker = _marker()
    tainted = os.urandom(300_000) + marker + os.urandom(1000)
    mine = await (await upload(env, tainted, params={"name": "a.bin"})).json()
    theirs = await (await env.client.post("/v1/files", data=tainted, headers=BOB)).json()
    other = os.urandom(50_000)
    untouched = await (await upload(env, other)).json()
    assert mine["state"] == theirs["state"] == "clean"

    await _learn(growing_clamd, env, marker)
    rescanner = env.client.app[RESCANNER]
    started = datetime.now(UTC)
    report = await rescanner.run(scanned_before=started)
    sha = hashlib.sha256(tainted).hexdigest()
    assert report.infected == [sha]  # once, for the two records that share it
    assert report.clean == [hashlib.sha256(other).hexdigest()]
    assert report.files_changed == 2
    assert report.failed == []
    # Without a quarantine the object stays where it is, as evidence (never served).
    assert len(await env.permanent_keys()) == 2
    metrics = await (await env.client.get("/metrics")).text()
    assert 'fileshare_rescans_total{outcome="infected"} 1.0' in metrics
    assert 'fileshare_rescans_total{outcome="clean"} 1.0' in metrics

    for file_id, who in ((mine["id"], ALICE), (theirs["id"], BOB)):
        got = await env.client.get(f"/v1/files/{file_id}", headers=who)
        assert got.status == 409, await got.text()
        assert (await got.json())["code"] == "content_not_available"
        meta = await (await env.client.get(f"/v1/files/{file_id}/metadata", headers=who)).json()
        assert meta["state"] == "infected"
        assert meta["present"] is False
    assert await (await download(env, untouched["id"])).read() == other

    rows = [r for r in await _audit_rows(env, sha) if r["detail"].get("trigger") == "rescan"]
    assert {(r["owner"], r["file_id"]) for r in rows} == {
        ("alice", mine["id"]),
        ("bob", theirs["id"]),
    }
    assert all(r["action"] == "scan.verdict" and r["result"] == "denied" for r in rows)
    assert {r["detail"]["signature"] for r in rows} == {f"{SIGNATURE}.UNOFFICIAL"}

    # Every verdict is newer than the round's start now: the same round again finds none.
    again = await rescanner.run(scanned_before=started)
    assert again.scanned == []
    refused = await upload(env, tainted)
    assert refused.status == 422
    assert (await refused.json())["code"] == "infected"


@pytest.mark.parametrize("backend", ["s3"])
async def test_two_replicas_rescanning_at_once_never_scan_a_sha256_twice(
    make_env: Any,
) -> None:
    first: Env = await make_env()
    second: Env = await make_env()  # the same index (PostgreSQL), buckets and clamd
    shas = set()
    for _ in range(24):
        data = os.urandom(20_000)
        assert (await upload(first, data)).status == 201
        shas.add(hashlib.sha256(data).hexdigest())
    now = datetime.now(UTC)
    a, b = await asyncio.gather(
        first.client.app[RESCANNER].run(scanned_before=now),
        second.client.app[RESCANNER].run(scanned_before=now),
    )
    assert a.failed == b.failed == []
    assert set(a.scanned).isdisjoint(b.scanned)
    assert sorted(a.scanned + b.scanned) == sorted(shas)
    assert a.scanned, "the second replica did all the work"
    assert b.scanned, "the first replica did all the work"


# ------------------------------------------------------------------- rescan on download


async def _file_rows(env: Env, *file_ids: str) -> list[dict[str, Any]]:
    def rows(conn: Any) -> list[dict[str, Any]]:
        query = select(audit_events).where(audit_events.c.file_id.in_(file_ids))
        return [dict(r) for r in conn.execute(query.order_by(audit_events.c.seq)).mappings()]

    found: list[dict[str, Any]] = await env.client.app[INDEX].run(rows)  # type: ignore[attr-defined]
    return found


#: FILESHARE_RESCAN_ON_DOWNLOAD in these tests: an upload's verdict is fresh, an aged one not.
BOUND = 3600.0


async def _rescans(env: Env) -> dict[str, float]:
    """``fileshare_rescans_total`` by outcome."""
    text = await (await env.client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        if family.name == "fileshare_rescans":
            return {
                s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")
            }
    raise AssertionError("fileshare_rescans_total missing from /metrics")


async def _age(env: Env, sha256: str, **values: object) -> None:
    """Make the content's verdict two bounds old (or set ``values`` on its row)."""
    values = values or {"scanned_at": datetime.now(UTC) - timedelta(seconds=2 * BOUND)}

    def run(conn: Any) -> None:
        conn.execute(update(contents).where(contents.c.sha256 == sha256).values(**values))

    await env.client.app[INDEX].run(run, write=True)  # type: ignore[attr-defined]


async def _get(env: Env, file_id: str, who: dict[str, str] = ALICE) -> Any:
    """A download; on S3 it asks for the presigned redirect (no URL may be issued either)."""
    query = {"redirect": "true"} if env.backend == "s3" else {}
    return await env.client.get(
        f"/v1/files/{file_id}", params=query, headers=who, allow_redirects=False
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_download_of_an_old_verdict_rescans_it_first(
    make_env: Any, growing_clamd: Clamd
) -> None:
    env: Env = await make_env(
        clamd=ClamdAddress(host=growing_clamd.host, port=growing_clamd.port),
        rescan_on_download=BOUND,
    )
    marker = _marker()
    tainted = os.urandom(300_000) + marker + os.urandom(1000)
    mine = await (await upload(env, tainted, params={"name": "a.bin"})).json()
    theirs = await (await env.client.post("/v1/files", data=tainted, headers=BOB)).json()
    sha = hashlib.sha256(tainted).hexdigest()
    await _learn(growing_clamd, env, marker)
    before = await _rescans(env)

    # A verdict younger than the bound is served as it stands: clamd would find the
    # signature now, so these bytes prove that no rescan happened.
    fresh = await _get(env, mine["id"])
    if env.backend == "s3":
        assert fresh.status == 302, await fresh.text()
    else:
        assert fresh.status == 200, await fresh.text()
        assert await fresh.read() == tainted
    assert await _rescans(env) == before
    assert not [r for r in await _audit_rows(env, sha) if r["detail"].get("trigger")]

    await _age(env, sha)
    refused = await _get(env, mine["id"], ALICE | {"Range": "bytes=0-9"})
    assert refused.status == 409, await refused.text()
    assert (await refused.json())["code"] == "content_not_available"
    after = await _rescans(env)
    assert after["infected"] == before["infected"] + 1
    assert sum(after.values()) == sum(before.values()) + 1
    # Recorded as a round records it: the content is infected, every record of it refused
    # (without another rescan), one verdict row per record.
    for file_id, who in ((mine["id"], ALICE), (theirs["id"], BOB)):
        meta = await (await env.client.get(f"/v1/files/{file_id}/metadata", headers=who)).json()
        assert (meta["state"], meta["present"]) == ("infected", False)
    again = await _get(env, theirs["id"], BOB)
    assert again.status == 409
    assert await _rescans(env) == after
    rows = await _audit_rows(env, sha)
    verdicts = [r for r in rows if r["detail"].get("trigger") == "rescan"]
    assert {(r["owner"], r["file_id"]) for r in verdicts} == {
        ("alice", mine["id"]),
        ("bob", theirs["id"]),
    }
    assert all(r["action"] == "scan.verdict" and r["result"] == "denied" for r in verdicts)
    assert {r["detail"]["cause"] for r in verdicts} == {"download"}
    assert {r["detail"]["signature"] for r in verdicts} == {f"{SIGNATURE}.UNOFFICIAL"}
    # The downloads are audited as refused, after the verdict; no URL was issued.
    first = max(r["seq"] for r in verdicts)
    later = [r for r in await _file_rows(env, mine["id"], theirs["id"]) if r["seq"] > first]
    assert [(r["action"], r["file_id"], r["result"]) for r in later] == [
        ("file.download", mine["id"], "denied"),
        ("file.read", mine["id"], "success"),
        ("file.read", theirs["id"], "success"),
        ("file.download", theirs["id"], "denied"),
    ]


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_download_that_cannot_be_rescanned_is_refused_not_served(
    make_env: Any, clamd: Clamd
) -> None:
    async with FaultProxy(*parse_tcp_address(clamd.address)) as proxy:
        env: Env = await make_env(
            clamd=ClamdAddress(host="127.0.0.1", port=proxy.port), rescan_on_download=BOUND
        )
        data = os.urandom(200_000)
        made = await upload(env, data)
        file_id, etag = (await made.json())["id"], made.headers["ETag"]
        sha = hashlib.sha256(data).hexdigest()
        await _age(env, sha)
        before = await _rescans(env)

        proxy.refuse()  # clamd is down
        down = await _get(env, file_id)
        assert down.status == 503, await down.text()
        assert down.content_type == "application/problem+json"
        assert (await down.json())["code"] == "scanner_unavailable"
        # Nor is the file said to be there, or unchanged.
        head = await env.client.head(f"/v1/files/{file_id}", headers=ALICE)
        cached = await env.client.get(
            f"/v1/files/{file_id}", headers=ALICE | {"If-None-Match": etag}
        )
        assert (head.status, cached.status) == (503, 503)
        assert (await _rescans(env))["failed"] == before["failed"] + 3
        rows = await _file_rows(env, file_id)
        assert [(r["action"], r["result"]) for r in rows][-1] == ("file.download", "failed")
        assert rows[-1]["detail"]["code"] == "scanner_unavailable"
        assert not [r for r in rows if r["action"] == "url.issue"]

        proxy.admit()  # back: the rescan finds it clean, and it is served
        back = await _get(env, file_id)
        if env.backend == "s3":
            assert back.status == 302, await back.text()
        else:
            assert back.status == 200, await back.text()
            assert await back.read() == data
        assert (await _rescans(env))["clean"] == before["clean"] + 1
        # Verdicted just now: the next download is served without a rescan.
        assert (await _get(env, file_id)).status in (200, 302)
        assert (await _rescans(env))["clean"] == before["clean"] + 1


@pytest.mark.parametrize("backend", ["local"])
async def test_downloads_of_one_stale_content_at_once_share_one_rescan(env: Env) -> None:
    data = os.urandom(100_000)
    file_id = (await (await upload(env, data)).json())["id"]
    record = await env.client.app[INDEX].get("alice", file_id)
    before = await _rescans(env)
    rescanner = env.client.app[RESCANNER]
    # Started together, so each is waiting before the first scan can have ended.
    await asyncio.gather(*(rescanner.verify(record.content) for _ in range(4)))
    after = await _rescans(env)
    assert after["clean"] == before["clean"] + 1
    assert sum(after.values()) == sum(before.values()) + 1
    # One after the other, each scans.
    await rescanner.verify(record.content)
    assert (await _rescans(env))["clean"] == before["clean"] + 2


# ------------------------------------------------------------- failed by migration 0002


@pytest.mark.parametrize("backend", ["local"])
async def test_content_left_failed_by_the_migration_is_rescanned_and_served_again(
    env: Env,
) -> None:
    """First-release records of one sha256 that disagreed about its sha1 or size: migration
    0002 kept the content, failed. A round rescans it, whatever its age; the bytes read
    back settle its sha1 and size, and a clean verdict serves it again."""
    data = os.urandom(80_000)
    made = await (await upload(env, data)).json()
    sha = hashlib.sha256(data).hexdigest()
    await _age(env, sha, state="failed", sha1=bytes(20), size=5, scanner=None, scanned_at=None)
    refused = await download(env, made["id"])
    assert refused.status == 409
    meta = await (await env.client.get(f"/v1/files/{made['id']}/metadata", headers=ALICE)).json()
    assert (meta["state"], meta["size"]) == ("failed", 5)

    # Even a round that takes no clean verdict by age takes it, first.
    report = await env.client.app[RESCANNER].run(
        scanned_before=datetime(2000, 1, 1, tzinfo=UTC), by_database=False
    )
    assert report.clean == [sha]
    assert (report.failed, report.files_changed) == ([], 0)
    served = await download(env, made["id"])
    assert served.status == 200
    assert await served.read() == data
    meta = await (await env.client.get(f"/v1/files/{made['id']}/metadata", headers=ALICE)).json()
    assert (meta["state"], meta["size"]) == ("clean", len(data))
    assert meta["attachment"]["hash"] == made["attachment"]["hash"]
    rows = [r for r in await _audit_rows(env, sha) if r["detail"].get("trigger") == "rescan"]
    assert [(r["file_id"], r["result"], r["detail"]["previous_state"]) for r in rows] == [
        (made["id"], "success", "failed")
    ]
