"""Data protection through the whole service (issue 15): every object fileshare writes on
S3 is encrypted — staged uploads, promoted copies, multipart results — and every answer
over an https base URL carries HSTS."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ALICE, PART, Env
from tests.e2e.test_upload import download, upload


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_every_object_written_through_the_api_is_encrypted(env: Env) -> None:
    assert env.s3 is not None
    # (The staging objects are written by the same writer, which the contract suite checks:
    # they are gone by the time an upload is answered.)
    sizes = [0, 1000, PART - 1, 3 * PART + 7]  # PutObject, CopyObject, multipart + part copy
    bodies = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    ids = []
    for body in bodies:
        resp = await upload(env, body)
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    keys = await env.permanent_keys()
    assert len(keys) == len(sizes)
    for key in keys:
        head = env.s3.head_object(Bucket=env.settings.permanent_bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
    for file_id, body in zip(ids, bodies, strict=True):
        got = await download(env, file_id)
        assert got.status == 200
        assert await got.read() == body
    ranged = await download(env, ids[-1], headers={"Range": f"bytes={PART - 2}-{PART + 1}"})
    assert ranged.status == 206
    assert await ranged.read() == bodies[-1][PART - 2 : PART + 2]
    assert await env.unscanned_keys() == []


async def test_answers_over_https_carry_hsts(env: Env) -> None:
    assert env.settings.base_url.startswith("https://")
    for path, headers in (("/healthz", {}), ("/v1/files", ALICE), ("/v1/files/nope", ALICE)):
        resp = await env.client.get(path, headers=headers)
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000", path


async def test_readiness_reports_the_protection(env: Env) -> None:
    resp = await env.client.get("/readyz")
    protection = (await resp.json())["protection"]
    assert protection["atRest"] == env.settings.encryption.describe(env.backend)
    assert protection["verified"] is None  # the probe is `serve`'s (tests/integration)
    assert protection["plaintext"] == []
