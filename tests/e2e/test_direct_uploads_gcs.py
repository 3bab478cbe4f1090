"""Direct-to-bucket uploads and download redirects on GCS (fake-gcs-server, real clamd),
signed with a service-account key made for the test. fake-gcs-server checks no signature,
so each URL fileshare hands out is verified here against the key's public half
(``tests.gcs_v4``), and then used: the PUT as curl makes it, the GET as a browser would."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from fileshare.api.keys import DIRECT
from fileshare.config import Settings
from fileshare.storage.base import DIRECT_PREFIX, Presigner
from tests.e2e.conftest import ALICE, Env
from tests.e2e.test_direct_uploads import (
    PDF,
    assert_cannot_sign,
    complete,
    curl_put,
    intent,
    status,
)
from tests.e2e.test_upload import EICAR
from tests.gcs_v4 import BadSignature, ServiceAccountKey, verify
from tests.sniff_files import pdf


@pytest.fixture
def backend() -> str:
    return "gcs"


@pytest.fixture(scope="module")
def key() -> ServiceAccountKey:
    return ServiceAccountKey()


@pytest.fixture
def base_settings(base_settings: Settings, key: ServiceAccountKey, tmp_path: Path) -> Settings:
    """conftest's GCS settings, with a signing key (FILESHARE_GCS_SIGNING_CREDENTIALS)."""
    return replace(base_settings, gcs_signing_credentials=key.write(tmp_path / "signer.json"))


def verified_put(env: Env, key: ServiceAccountKey, issued: dict[str, Any]) -> None:
    """The issued PUT is signed by the key, for the emulator's host and this very object,
    binding type and length; and no other request passes for it."""
    upload = issued["upload"]
    parts = urlsplit(upload["url"])
    assert f"{parts.scheme}://{parts.netloc}" == env.settings.gcs_endpoint
    assert parts.path == f"/{env.settings.unscanned_bucket}/{DIRECT_PREFIX}{issued['id']}"
    assert upload["headers"] == {
        "Content-Type": PDF,
        "x-goog-content-length-range": f"{issued['size']},{issued['size']}",
        "x-goog-if-generation-match": "0",
    }
    signed = verify(upload["url"], "PUT", upload["headers"], key.public)
    assert "content-type" in signed.signed_headers
    assert "x-goog-content-length-range" in signed.signed_headers
    assert signed.expires.total_seconds() == env.settings.direct_url_ttl
    with pytest.raises(BadSignature):
        verify(upload["url"], "PUT", {**upload["headers"], "Content-Type": "text/html"}, key.public)
    with pytest.raises(BadSignature):
        verify(upload["url"], "GET", upload["headers"], key.public)


async def test_a_signed_put_is_ingested_clean_and_downloadable(
    env: Env, key: ServiceAccountKey
) -> None:
    assert isinstance(env.storage, Presigner)
    data = pdf(2 * 1024 * 1024 + 5)
    issued = await intent(env, data)
    assert (issued["state"], issued["upload"]["method"]) == ("pending", "PUT")
    verified_put(env, key, issued)
    file_id = issued["fileId"]

    assert curl_put(issued, data) == 200  # fake-gcs takes the XML API's PUT /bucket/object
    staged = await env.storage.head(env.settings.unscanned_bucket, DIRECT_PREFIX + issued["id"])
    assert (staged.size, staged.content_type) == (len(data), PDF)
    # Staged, not scanned: not readable through fileshare yet.
    assert (await env.client.get(f"/v1/files/{file_id}", headers=ALICE)).status == 409

    resp = await complete(env, issued)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["state"] == "clean"
    got = await env.client.get(f"/v1/files/{file_id}", headers=ALICE)
    assert got.status == 200
    assert await got.read() == data
    meta = await (await env.client.get(f"/v1/files/{file_id}/metadata", headers=ALICE)).json()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert await env.unscanned_keys() == []
    assert len(await env.permanent_keys()) == 1


async def test_eicar_through_a_signed_put_is_infected_and_nothing_is_left(
    env: Env, key: ServiceAccountKey
) -> None:
    data = b"%PDF-1.4 padding " * 1000 + EICAR
    issued = await intent(env, data)
    verified_put(env, key, issued)
    assert curl_put(issued, data) == 200
    resp = await complete(env, issued)
    assert resp.status == 200
    done = await resp.json()
    assert (done["state"], done["code"]) == ("infected", "infected")
    assert "EICAR" in done["signature"]
    refused = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert refused.status == 409
    await env.assert_nothing_left()  # neither bucket holds anything


async def test_the_sha256_gcs_does_not_check_the_ingestion_does(env: Env) -> None:
    """GCS binds no SHA-256 to a PUT: an object of the right type and length but other
    bytes (written with the store's own credentials, as a leaked URL could not but a
    misbehaving store could) is rejected by the ingestion and deleted."""
    issued = await intent(env, b"%PDF-1.4 exact")
    await env.storage.put(
        env.settings.unscanned_bucket,
        DIRECT_PREFIX + issued["id"],
        b"%PDF-1.4 other",
        content_type=PDF,
    )
    resp = await complete(env, issued)
    done = await resp.json()
    assert (done["state"], done["code"]) == ("rejected", "digest_mismatch")
    await env.assert_nothing_left()


async def test_a_download_redirects_to_a_signed_get(make_env: Any, key: ServiceAccountKey) -> None:
    env: Env = await make_env(redirect_ttl=120)
    data = pdf(100_000)
    resp = await env.client.post(
        "/v1/files",
        data=data,
        params={"name": "Röntgen 1.pdf"},
        headers={**ALICE, "Content-Type": PDF},
    )
    assert resp.status == 201, await resp.text()
    file_id = (await resp.json())["id"]
    moved = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "true"}, headers=ALICE, allow_redirects=False
    )
    assert moved.status == 302
    assert moved.headers["Cache-Control"] == "no-store"
    target = moved.headers["Location"]
    parts = urlsplit(target)
    assert f"{parts.scheme}://{parts.netloc}" == env.settings.gcs_endpoint
    assert parts.path.startswith(f"/{env.settings.permanent_bucket}/sha256/")
    signed = verify(target, "GET", {}, key.public)
    assert signed.expires.total_seconds() == 120
    assert signed.query["response-content-type"] == PDF
    assert "filename*=UTF-8''R%C3%B6ntgen%201.pdf" in signed.query["response-content-disposition"]
    async with aiohttp.ClientSession() as plain, plain.get(target) as got:
        assert got.status == 200
        assert await got.read() == data


async def test_an_upload_larger_than_one_put_goes_through_a_resumable_session(
    make_env: Any,
) -> None:
    """Past put_max, GCS gets a resumable session fileshare opened for exactly this object
    and size (S3 gets a part plan): the uploader sends the bytes in chunks to its URI."""
    env: Env = await make_env(direct_put_max=1024)
    data = pdf(3 * 256 * 1024 + 5)
    issued = await intent(env, data)
    upload = issued["upload"]
    assert upload["method"] == "PUT"
    assert "upload_id=" in upload["url"] or "uploadType=resumable" in upload["url"]
    chunk = 512 * 1024  # a multiple of 256 KiB, as the resumable protocol wants
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            end = start + len(piece) - 1
            headers = {
                **upload["headers"],
                "Content-Range": f"bytes {start}-{end}/{len(data)}",
            }
            async with http.put(upload["url"], data=piece, headers=headers) as resp:
                assert resp.status in (200, 201, 308), await resp.text()
    done = await (await complete(env, issued)).json()
    assert done["state"] == "clean"
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data
    assert await env.unscanned_keys() == []


async def test_a_session_nobody_used_is_expired_and_cancelled(make_env: Any) -> None:
    env: Env = await make_env(direct_put_max=1024)
    issued = await intent(env, pdf(4096))
    direct = env.client.app[DIRECT]
    real = direct.clock
    direct.clock = lambda: real() + timedelta(seconds=env.settings.direct_url_ttl, hours=1)
    await direct.reconcile()
    assert (await status(env, issued))["state"] == "expired"
    assert await env.unscanned_keys() == []


async def test_gcs_with_nothing_that_signs_refuses_direct_uploads(make_env: Any) -> None:
    # The emulator is anonymous: without a key file nothing signs.
    env: Env = await make_env(gcs_signing_credentials=None)
    assert not isinstance(env.storage, Presigner)
    await assert_cannot_sign(env)
