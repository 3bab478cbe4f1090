"""Partner links (seed 003) on SeaweedFS with real clamd and a real JWKS endpoint: the
401/401/403/422 order, keys for awkward names, partner uploads scanned before any download
link, and upload and download links that never overlap."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from fileshare.api.keys import LINKS
from fileshare.auth.principal import Role
from fileshare.config import JwtIssuer
from tests.e2e.conftest import ALICE_KEY, Env
from tests.e2e.test_upload import EICAR
from tests.idp import Idp

AUDIENCE = "fileshare"
APP_KEY = {"X-API-Key": ALICE_KEY}


@pytest.fixture
def backend() -> str:
    return "s3"


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    async with Idp(audience=AUDIENCE) as server:
        server.add_key("ES256")
        yield server


@pytest.fixture
async def env(make_env: Any, idp: Idp, request: pytest.FixtureRequest) -> Env:
    bucket = f"contracts-{uuid.uuid4().hex[:10]}"
    request.getfixturevalue("seaweed").create_bucket(bucket)
    made: Env = await make_env(jwt_issuers=(issuer_of(idp),), links_bucket=bucket)
    return made


def issuer_of(idp: Idp) -> JwtIssuer:
    """The identity provider as a trusted issuer whose tokens may name any role."""
    return JwtIssuer(
        issuer=idp.issuer,
        jwks_url=idp.jwks_url,
        audiences=(AUDIENCE,),
        allowed_roles=frozenset(Role),
    )


def partner(idp: Idp, scope: str = "private_contracts:write") -> dict[str, str]:
    """The seed's two credentials: the application's key, a user's token."""
    token = idp.token(sub="partner-app-user", role="worker", scope=scope)
    return {**APP_KEY, "Authorization": f"Bearer {token}"}


async def link(env: Env, headers: dict[str, str], **body: Any) -> Any:
    return await env.client.post("/v1/links", json=body, headers=headers)


async def issued(env: Env, idp: Idp, action: str, rid: str, name: str) -> dict[str, Any]:
    resp = await link(env, partner(idp), action=action, resource_id=rid, resource_name=name)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    answer: dict[str, Any] = await resp.json()
    return answer


async def send(method: str, url: str, headers: dict[str, str], data: bytes = b"") -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=data or None, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def test_the_checks_come_in_the_seeds_order(env: Env, idp: Idp) -> None:
    good = {"action": "upload", "resource_id": "le-1", "resource_name": "a.pdf"}
    token = partner(idp)["Authorization"]
    cases: list[tuple[dict[str, str], dict[str, Any], int]] = [
        ({"Authorization": token}, good, 401),  # no API key
        ({"X-API-Key": "wrong-key-0123456789", "Authorization": token}, good, 401),
        (APP_KEY, good, 401),  # no token
        ({**APP_KEY, "Authorization": "Bearer not.a.token"}, good, 401),
        ({**APP_KEY, "Authorization": f"Bearer {ALICE_KEY}"}, good, 401),  # a key, not a token
        (partner(idp, scope="files:read"), good, 403),
        (partner(idp), {"action": "delete", "resource_id": "le-1", "resource_name": "a"}, 422),
        (partner(idp), {"action": "upload", "resource_id": "../x", "resource_name": "a"}, 422),
        (partner(idp), {"action": "upload", "resource_id": "le-1", "resource_name": " "}, 422),
        (partner(idp), {"action": "upload", "resource_id": "le-1"}, 422),
        # Bad credentials and a bad body: the credentials are answered first.
        ({"Authorization": token}, {"action": "nope"}, 401),
        (partner(idp, scope="files:read"), {"action": "nope"}, 403),
    ]
    for headers, body, status in cases:
        resp = await env.client.post("/v1/links", json=body, headers=headers)
        assert resp.status == status, (headers.keys(), body, await resp.text())
    # fileshare's own scope name works as well as the seed's.
    ok = await link(env, partner(idp, scope="links:write"), **good)
    assert ok.status == 201


@pytest.mark.parametrize(
    "name", ["contract 2024.pdf", "Договір №5 ✓.pdf", "a/b/../c.pdf", "100% done.pdf"]
)
async def test_an_uploaded_name_lands_under_its_percent_encoded_key(
    env: Env, idp: Idp, name: str
) -> None:
    up = await issued(env, idp, "upload", "le-42", name)
    assert up["key"] == f"le-42/{quote(name, safe='')}"
    assert "/" not in up["key"].removeprefix("le-42/")
    data = b"%PDF-1.4 " + os.urandom(5000)
    status, _ = await send(up["method"], up["url"], up["headers"], data)
    assert status == 200
    assert (
        env.s3.list_objects_v2(Bucket=env.settings.links_bucket, Prefix="le-42/")["Contents"][0][
            "Key"
        ]
        == up["key"]
    )
    # While the upload link is valid, no download link: the bytes may still change.
    busy = await link(env, partner(idp), action="download", resource_id="le-42", resource_name=name)
    assert busy.status == 409
    assert (await busy.json())["code"] == "link_busy"


async def test_a_download_link_serves_only_bytes_scanned_clean(
    make_env: Any, idp: Idp, request: pytest.FixtureRequest
) -> None:
    bucket = f"contracts-{uuid.uuid4().hex[:10]}"
    request.getfixturevalue("seaweed").create_bucket(bucket)
    env: Env = await make_env(jwt_issuers=(issuer_of(idp),), links_bucket=bucket, direct_url_ttl=5)
    clean, infected = b"%PDF-1.4 clean " + os.urandom(3000), b"%PDF-1.4 " + EICAR
    for name, data in (("clean.pdf", clean), ("bad.pdf", infected)):
        up = await issued(env, idp, "upload", "le-7", name)
        assert (await send("PUT", up["url"], up["headers"], data))[0] == 200

    async def download(name: str) -> Any:
        return await link(
            env, partner(idp), action="download", resource_id="le-7", resource_name=name
        )

    async def once_uploads_expire(name: str) -> Any:
        """The upload links (5 s: room for the PUTs on a busy machine) expire; until then a
        download link is refused."""
        deadline = time.monotonic() + 30
        while (resp := await download(name)).status == 409:
            assert (await resp.json())["code"] == "link_busy"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)  # polling the links' expiry
        return resp

    resp = await once_uploads_expire("clean.pdf")
    assert resp.status == 201, await resp.text()
    got = await resp.json()
    status, body = await send("GET", got["url"], got["headers"])
    assert (status, body) == (200, clean)
    refused = await once_uploads_expire("bad.pdf")
    assert refused.status == 422
    assert (await refused.json())["code"] == "infected"
    keys = [o["Key"] for o in env.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["le-7/clean.pdf"]  # the infected upload is gone
    assert (await download("bad.pdf")).status == 404
    # While the download link is valid, no upload link can replace what it serves.
    again = await link(
        env, partner(idp), action="upload", resource_id="le-7", resource_name="clean.pdf"
    )
    assert again.status == 409
    assert (await download("nothing.pdf")).status == 404


async def test_without_a_links_bucket_links_are_501(make_env: Any, idp: Idp) -> None:
    env: Env = await make_env(jwt_issuers=(issuer_of(idp),))
    resp = await link(env, partner(idp), action="upload", resource_id="x", resource_name="a")
    assert resp.status == 501


async def test_an_upload_link_issued_while_a_scan_runs_voids_its_verdict(
    make_env: Any, idp: Idp, request: pytest.FixtureRequest
) -> None:
    """A scan that outlives another upload link (a long clamd wait, patched in: a real one
    cannot be made to last on cue) must not make its verdict the new bytes': no download
    link from it, and the next request scans what is there now."""
    bucket = f"contracts-{uuid.uuid4().hex[:10]}"
    request.getfixturevalue("seaweed").create_bucket(bucket)
    env: Env = await make_env(jwt_issuers=(issuer_of(idp),), links_bucket=bucket, direct_url_ttl=2)
    clean = b"%PDF-1.4 clean " + os.urandom(3000)
    first = await issued(env, idp, "upload", "le-9", "c.pdf")
    assert (await send("PUT", first["url"], first["headers"], clean))[0] == 200
    await until_past(first["expires"])
    service = env.client.app[LINKS]
    real = service.pipeline.scan_stored
    scanned, release = asyncio.Event(), asyncio.Event()

    async def slow_scan(bucket: str, stored: Any) -> Any:
        found = await real(bucket, stored)  # the real read and verdict of the clean bytes
        scanned.set()
        await release.wait()
        return found

    service.pipeline.scan_stored = slow_scan  # type: ignore[method-assign]
    download = asyncio.create_task(
        link(env, partner(idp), action="download", resource_id="le-9", resource_name="c.pdf")
    )
    await asyncio.wait_for(scanned.wait(), 30)
    second = await issued(env, idp, "upload", "le-9", "c.pdf")  # no download link is out yet
    assert (await send("PUT", second["url"], second["headers"], b"%PDF " + EICAR))[0] == 200
    await until_past(second["expires"])
    release.set()
    voided = await download
    assert voided.status == 409
    assert (await voided.json())["code"] == "link_busy"
    service.pipeline.scan_stored = real  # type: ignore[method-assign]
    again = await link(
        env, partner(idp), action="download", resource_id="le-9", resource_name="c.pdf"
    )
    assert again.status == 422  # what is there now was scanned: the EICAR upload
    assert (await again.json())["code"] == "infected"


async def until_past(stamp: str) -> None:
    """Poll the clock until an expiry the service gave has passed."""
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    deadline = time.monotonic() + 30
    # The answer states the expiry to the second; the index holds it to the microsecond.
    while datetime.now(UTC) <= when + timedelta(seconds=1.1):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # waiting for the clock, not for another task
