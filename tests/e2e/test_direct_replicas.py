"""Two real ``fileshare serve`` processes, one PostgreSQL index, one SeaweedFS: completing one
direct upload on both at once ingests it once (the lease in the index)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import ALICE, BOB
from tests.e2e.test_cli import _start, _stop
from tests.e2e.test_direct_uploads import curl_put
from tests.servers import Postgres, SeaweedS3
from tests.sniff_files import pdf


async def test_two_server_processes_racing_on_one_upload_ingest_it_once(
    tmp_path: Path, clamd: Any, seaweed: SeaweedS3, postgres: Postgres
) -> None:
    tag = uuid.uuid4().hex[:10]
    settings = {
        **seaweed.fileshare_env(f"race-u-{tag}", f"race-p-{tag}"),
        "FILESHARE_INDEX_URL": postgres.create_database(f"race_{tag}"),
        "FILESHARE_RECONCILE_INTERVAL": "3600",
        "FILESHARE_ADMINS": "bob",  # reads the audit trail below
    }
    first = await asyncio.to_thread(_start, tmp_path, clamd, **settings)
    try:
        second = await asyncio.to_thread(_start, tmp_path, clamd, **settings)
        try:
            data = pdf(6 * 1024 * 1024)
            async with aiohttp.ClientSession(headers=ALICE) as http:
                body = {
                    "contentType": "application/pdf",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
                async with http.post(f"{first.url}/v1/uploads", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    issued = await resp.json()
                assert await asyncio.to_thread(curl_put, issued, data) == 200
                path = f"/v1/uploads/{issued['id']}/complete"

                async def complete(base: str) -> int:
                    async with http.post(base + path) as resp:
                        return resp.status

                answers = await asyncio.gather(*(complete(s.url) for s in (first, second) * 2))
                assert sorted(set(answers)) in ([200], [200, 202]), answers
                async with http.get(f"{second.url}/v1/uploads/{issued['id']}") as resp:
                    assert (await resp.json())["state"] == "clean"
                async with http.get(f"{first.url}/v1/files/{issued['fileId']}") as resp:
                    assert await resp.read() == data
                query = {"action": "file.upload", "owner": "alice", "fileId": issued["fileId"]}
                async with http.get(f"{second.url}/v1/audit", params=query, headers=BOB) as resp:
                    assert resp.status == 200, await resp.text()
                    rows = (await resp.json())["items"]
            # One ingestion: one record written, one object promoted.
            assert [r["result"] for r in rows] == ["success"]
            keys = seaweed.client().list_objects_v2(Bucket=f"race-p-{tag}").get("Contents", [])
            assert len(keys) == 1
        finally:
            await asyncio.to_thread(_stop, second)
    finally:
        await asyncio.to_thread(_stop, first)
