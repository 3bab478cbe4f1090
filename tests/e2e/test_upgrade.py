"""A deployment of the first release, upgraded: its index is migrated at start-up and every
file it held downloads byte-identical, lists, and deletes physically."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from fileshare.config import Settings
from fileshare.index.migrations.versions import v0001_first_release as first_release
from fileshare.models import legacy_key
from tests.e2e.conftest import ALICE, Env


async def _first_release_index(settings: Settings, row: tuple[Any, ...]) -> None:
    if settings.index_url is None:
        conn = sqlite3.connect(settings.sqlite_path)
        conn.executescript(first_release._SQLITE + ";" + first_release._INDEX)
        conn.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row[:7], row[7].isoformat())
        )
        conn.commit()
        conn.close()
        return
    pg = await asyncpg.connect(settings.index_url)
    try:
        await pg.execute(first_release._POSTGRES)
        await pg.execute(first_release._INDEX)
        await pg.execute("INSERT INTO files VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *row)
    finally:
        await pg.close()


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_a_first_release_deployment_keeps_its_files(
    make_env: Any, base_settings: Settings
) -> None:
    data = os.urandom(4096)
    sha256 = hashlib.sha256(data).hexdigest()
    file_id = uuid.uuid4().hex
    row = (
        file_id,
        "alice",
        "old.bin",
        "application/octet-stream",
        sha256,
        hashlib.sha1(data).digest(),
        len(data),
        datetime(2024, 5, 1, 8, 0, 0, tzinfo=UTC),
    )
    await _first_release_index(base_settings, row)
    env: Env = await make_env()
    # the blob, where the first release put it
    await env.storage.put(base_settings.permanent_bucket, legacy_key(sha256), data)
    got = await env.client.get(f"/v1/files/{file_id}", headers=ALICE)
    assert got.status == 200, await got.text()
    assert await got.read() == data
    listed = await (await env.client.get("/v1/files", headers=ALICE)).json()
    assert [f["id"] for f in listed["items"]] == [file_id]
    assert listed["items"][0]["created"] == "2024-05-01T08:00:00Z"
    # re-uploading the bytes finds them in the index: no new object
    again = await env.client.post("/v1/files", data=data, headers=ALICE, params={"name": "x"})
    assert again.status == 201
    assert await env.permanent_keys() == [legacy_key(sha256)]
    for fid in (file_id, (await again.json())["id"]):
        assert (await env.client.delete(f"/v1/files/{fid}", headers=ALICE)).status == 204
    assert await env.permanent_keys() == []
