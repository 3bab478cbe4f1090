"""Single-write promotion (``FILESHARE_PROMOTION=single-write``, issue 12) through the whole
service, on every backend, real clamd: the body is streamed once, under its permanent key,
into an upload the store keeps invisible (an S3 multipart upload, a GCS resumable session
with its last chunk held back, a hidden local file); a clean verdict completes it, anything
else aborts it. The unscanned bucket is never written."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import pytest

from fileshare.app import INDEX, SERVICE
from fileshare.config import ClamdAddress
from fileshare.models import UPLOAD_KEY_PREFIX
from tests.e2e.conftest import ALICE, PART, Env
from tests.e2e.test_upload import EICAR, download, upload
from tests.faultproxy import FaultProxy
from tests.servers import parse_tcp_address


@pytest.fixture
async def env(make_env: Any) -> Env:
    return await make_env(promotion="single-write")  # type: ignore[no-any-return]


def _uploaded_bytes(env: Env) -> int:
    """What the open multipart uploads in the permanent bucket hold (S3)."""
    bucket = env.settings.permanent_bucket
    total = 0
    for u in env.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = env.s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        total += sum(p["Size"] for p in parts.get("Parts", []))
    return total


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART + 1, 3 * PART + 7])
async def test_round_trip_writes_one_object_and_nothing_unscanned(env: Env, size: int) -> None:
    data = os.urandom(size)
    resp = await upload(env, data)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    got = await download(env, body["id"])
    assert got.status == 200
    assert await got.read() == data
    keys = await env.permanent_keys()
    (key,) = keys
    assert key.startswith(UPLOAD_KEY_PREFIX)
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []


@pytest.mark.parametrize("where", ["alone", "buried"])
async def test_infected_upload_is_aborted_and_nothing_is_left(env: Env, where: str) -> None:
    data = EICAR if where == "alone" else os.urandom(2 * PART) + EICAR + os.urandom(PART)
    resp = await upload(env, data)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["code"] == "infected"
    await env.assert_nothing_left()


async def test_duplicate_is_aborted_and_the_first_object_kept(env: Env) -> None:
    data = os.urandom(2 * PART + 5)
    first = await upload(env, data, params={"name": "a.bin"})
    assert first.status == 201
    keys = await env.permanent_keys()
    again = await upload(env, data, params={"name": "b.bin"})
    assert again.status == 201  # a new record of the same content, no new object
    assert await env.permanent_keys() == keys
    assert env.open_multipart_uploads() == []
    assert await (await download(env, (await again.json())["id"])).read() == data


async def test_bytes_wait_invisible_under_the_permanent_key_until_the_verdict(
    make_env: Any, clamd: Any
) -> None:
    """clamd's answer is held back (its replies stall in a proxy): by then every byte is
    in the store (S3: the multipart upload's parts add up to the body) and yet no object
    can be listed; once clamd answers, the upload is completed, not copied."""
    data = os.urandom(3 * PART + 11)
    async with FaultProxy(*parse_tcp_address(clamd.address)) as proxy:
        env: Env = await make_env(
            promotion="single-write", clamd=ClamdAddress(host="127.0.0.1", port=proxy.port)
        )
        task = asyncio.create_task(upload(env, data))
        await proxy.wait_passed(1)
        proxy.stall("downstream")  # INSTREAM's only reply is the verdict
        await proxy.wait_passed(len(data))
        deadline = time.monotonic() + 30
        while env.s3 is not None and _uploaded_bytes(env) < len(data):
            assert time.monotonic() < deadline, "the body never reached the store"
            await asyncio.sleep(0.05)
        assert not task.done()
        assert await env.permanent_keys() == []
        assert await env.unscanned_keys() == []
        if env.s3 is not None:
            (pending,) = env.open_multipart_uploads()
            assert pending.startswith(UPLOAD_KEY_PREFIX)
        proxy.resume("downstream")
        resp = await task
    assert resp.status == 201, await resp.text()
    assert await (await download(env, (await resp.json())["id"])).read() == data
    assert len(await env.permanent_keys()) == 1
    assert env.open_multipart_uploads() == []


async def test_the_content_row_records_the_single_write_key(env: Env) -> None:
    data = os.urandom(PART + 3)
    resp = await env.client.post("/v1/files", data=data, headers=ALICE)
    assert resp.status == 201
    (key,) = await env.permanent_keys()
    content = await env.client.app[INDEX].find_clean(hashlib.sha256(data).hexdigest())
    assert content is not None
    assert content.key == key
    assert (await env.storage.head(env.settings.permanent_bucket, key)).size == len(data)


@pytest.mark.parametrize("backend", ["s3"])
@pytest.mark.parametrize("promotion", ["copy", "single-write"])
@pytest.mark.parametrize("busy", [False, True])
async def test_a_small_body_is_sealed_in_the_scan_window_only_while_few_uploads_run(
    make_env: Any, promotion: str, busy: bool
) -> None:
    """Alone, a body under one part goes up inside the scan window as the one part of an
    invisible multipart upload (a multipart ETag, ``…-1``); with more uploads in progress
    than CPUs (simulated by lowering the threshold) it is one PutObject after the verdict,
    which costs the store fewer requests."""
    env: Env = await make_env(promotion=promotion)
    if busy:
        env.client.app[SERVICE].pipeline.seal_small_up_to = 0
    data = os.urandom(PART // 2)
    resp = await upload(env, data)
    assert resp.status == 201, await resp.text()
    (key,) = await env.permanent_keys()
    etag = env.s3.head_object(Bucket=env.settings.permanent_bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-1") is not busy, etag
    assert await (await download(env, (await resp.json())["id"])).read() == data
    assert env.open_multipart_uploads() == []


async def test_switching_promotion_keeps_every_file_served_deduplicated_and_deletable(
    make_env: Any,
) -> None:
    """One deployment, restarted from copy to single-write on the same buckets and index:
    what copy promoted still downloads, dedups and deletes; new bytes get single-write keys."""
    before: Env = await make_env(promotion="copy")
    old = os.urandom(PART + 9)
    first = await (await upload(before, old)).json()
    (old_key,) = await before.permanent_keys()
    assert not old_key.startswith(UPLOAD_KEY_PREFIX)

    after: Env = await make_env(promotion="single-write")
    assert await (await download(after, first["id"])).read() == old
    again = await upload(after, old, params={"name": "again.bin"})
    assert again.status == 201
    assert await after.permanent_keys() == [old_key]  # deduplicated, no second object
    new = os.urandom(PART + 10)
    fresh = await (await upload(after, new)).json()
    (new_key,) = set(await after.permanent_keys()) - {old_key}
    assert new_key.startswith(UPLOAD_KEY_PREFIX)
    for file_id in (first["id"], (await again.json())["id"], fresh["id"]):
        assert (await after.client.delete(f"/v1/files/{file_id}", headers=ALICE)).status == 204
    assert await after.permanent_keys() == []
    assert after.open_multipart_uploads() == []
