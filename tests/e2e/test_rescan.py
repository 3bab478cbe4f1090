"""Rescans (issue 13) through the whole service against a real clamd whose signature
database grows: content scanned clean, then matched by a signature added later (a new
``.ndb`` and clamd's ``RELOAD``), is found by a rescan — once per sha256, however many
records share it — and from then on none of its records is served; the audit trail has a
row per record. Two replicas rescanning at once (PostgreSQL) share the work."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fileshare.app import INDEX, RESCANNER, SCANNER
from fileshare.config import ClamdAddress
from fileshare.index.tables import audit_events
from tests.e2e.conftest import ALICE, BOB, Env
from tests.e2e.test_upload import download, upload
from tests.servers import Clamd

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
