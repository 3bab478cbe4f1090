"""Bearer tokens end to end: the app configured with an issuer whose JWKS a real local HTTP
server serves (``tests/idp.py``), local storage and SQLite, real clamd. Checks seed 003's
order on the wire: credentials (401) before scope (403) before the request (400/422)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from fileshare.api.keys import AUDIT
from fileshare.auth import policy
from fileshare.auth.principal import ALL_SCOPES, Role, Scope
from fileshare.config import JwtIssuer
from fileshare.index.audit import AuditQuery
from tests.e2e.conftest import BOB, BOB_KEY, Env
from tests.idp import Idp

AUDIENCE = "fileshare-e2e"


@pytest.fixture
def backend() -> str:
    """Local storage and the SQLite index: what is under test here is authentication."""
    return "local"


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    async with Idp(audience=AUDIENCE) as server:
        server.add_key("ES256")
        yield server


@pytest.fixture
async def env(make_env: Any, idp: Idp) -> Env:
    issuer = JwtIssuer(
        issuer=idp.issuer,
        jwks_url=idp.jwks_url,
        audiences=(AUDIENCE,),
        owner_claim="patient",
        # These tests use admin tokens; whether an issuer may grant admin is tested below.
        allowed_roles=frozenset(Role),
    )
    # The identity provider's alice is not a bootstrap principal here: fileshare refuses a
    # token whose sub is a name it gave someone else.
    return await make_env(  # type: ignore[no-any-return]
        jwt_issuers=(issuer,), api_keys={"bob": BOB_KEY}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code, body
    return body


async def test_a_token_with_the_scope_lists_and_uploads(env: Env, idp: Idp) -> None:
    token = idp.token(sub="carol", patient="p-1", scope="files:read files:write")
    listed = await env.client.get("/v1/files", headers=bearer(token))
    assert listed.status == 200, await listed.text()
    assert (await listed.json())["items"] == []
    up = await env.client.post(
        "/v1/files", data=b"hello", params={"name": "a.txt"}, headers=bearer(token)
    )
    assert up.status == 201, await up.text()
    file_id = (await up.json())["id"]
    listed = await env.client.get("/v1/files", headers=bearer(token))
    assert [f["id"] for f in (await listed.json())["items"]] == [file_id]
    # the owner is the token's patient: another patient's token does not see it
    other = idp.token(sub="carol", patient="p-2", scope="files:read")
    assert (await env.client.get(f"/v1/files/{file_id}", headers=bearer(other))).status == 404


async def test_no_token_is_401_with_www_authenticate(env: Env, idp: Idp) -> None:
    resp = await env.client.get("/v1/files")
    await problem(resp, 401, "unauthenticated")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    expired = idp.token(iat=int(time.time()) - 700, exp=int(time.time()) - 100)
    resp = await env.client.get("/v1/files", headers=bearer(expired))
    body = await problem(resp, 401, "unauthenticated")
    assert "expired" in body["detail"]
    assert expired not in await resp.text()
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_every_route_refuses_a_token_without_its_scope(env: Env, idp: Idp) -> None:
    """An admin token holding every scope but the one a route needs: 403 on each route."""
    checked: list[str] = []
    for resource in env.client.app.router.resources():
        for route in resource:
            need = policy.requirement(route.method, resource.canonical)
            if not isinstance(need, Scope) or route.method == "HEAD":  # HEAD: as GET
                continue
            scopes = " ".join(sorted(ALL_SCOPES - {need}))
            token = idp.token(sub="root", role="admin", scope=scopes)
            path = resource.canonical.replace("{", "").replace("}", "-x")
            headers = bearer(token)
            if (route.method, resource.canonical) in policy.KEY_AND_TOKEN:
                headers["X-API-Key"] = BOB_KEY  # the application's key, then the token
            resp = await env.client.request(route.method, path, headers=headers)
            body = await problem(resp, 403, "forbidden")
            assert need.value in body["detail"]
            checked.append(f"{route.method} {resource.canonical}")
    assert "POST /v1/files" in checked
    assert "DELETE /v1/files/{file_id}" in checked
    assert "GET /v1/files" in checked
    assert "POST /v1/links" in checked


async def test_a_read_only_token_is_refused_an_upload_before_the_body_is_read(
    env: Env, idp: Idp
) -> None:
    token = idp.token(scope="files:read")
    server = env.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/files?name=a.bin HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Length: 1000000\r\n\r\n"
    )
    await writer.drain()
    # answered while not one byte of the body was sent
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"application/problem+json" in head
    await env.assert_nothing_left()


async def test_401_then_403_then_the_request_itself(env: Env, idp: Idp) -> None:
    garbage = {"Content-Type": "multipart/form-data; boundary=zz"}
    body = b"--zz\r\nthis is not a part\r\n"
    forged = idp.token(sub="carol", patient="p-1") + "x"  # signature broken
    resp = await env.client.post("/v1/files", data=body, headers=garbage | bearer(forged))
    await problem(resp, 401, "unauthenticated")
    reader = idp.token(sub="carol", patient="p-1", scope="files:read")
    resp = await env.client.post("/v1/files", data=body, headers=garbage | bearer(reader))
    await problem(resp, 403, "forbidden")
    writer = idp.token(sub="carol", patient="p-1", scope="files:write")
    resp = await env.client.post("/v1/files", data=body, headers=garbage | bearer(writer))
    assert resp.status in (400, 422), await resp.text()
    await env.assert_nothing_left()


async def test_refusals_are_in_the_audit_trail(env: Env, idp: Idp) -> None:
    bad = idp.token(aud="someone-else")
    resp = await env.client.get("/v1/files", headers=bearer(bad))
    assert resp.status == 401
    no_scope = idp.token(sub="dave", patient="p-7", scope="files:read")
    assert (await env.client.delete("/v1/files/x1", headers=bearer(no_scope))).status == 403
    rows = await env.client.app[AUDIT].query(AuditQuery(action="auth.fail"))
    by_status = {r.event.detail["status"]: r.event for r in rows}
    assert set(by_status) == {401, 403}
    unauthenticated, forbidden = by_status[401], by_status[403]
    assert unauthenticated.subject is None  # nobody was proven
    assert unauthenticated.detail["route"] == "/v1/files"
    assert forbidden.subject == "dave"
    assert forbidden.detail["route"] == "/v1/files/{file_id}"
    assert resp.headers["X-Request-ID"] in {r.event.request_id for r in rows}


async def test_an_unreachable_jwks_fails_closed(env: Env, idp: Idp) -> None:
    await idp.stop()
    resp = await env.client.get("/v1/files", headers=bearer(idp.token()))
    body = await problem(resp, 401, "unauthenticated")
    assert "cannot be reached" in body["detail"]
    # API keys keep working meanwhile
    assert (await env.client.get("/v1/files", headers=BOB)).status == 200


async def test_an_external_token_cannot_take_a_name_fileshare_gave(env: Env, idp: Idp) -> None:
    """Bootstrap principals (bob) and registered clients have their files and grants; an
    identity provider's token whose sub or owner claims one of those names is refused."""
    from fileshare.api.keys import IDENTITY
    from fileshare.index.identity import Client

    await env.client.app[IDENTITY].create_client(
        Client("ward-9", Role.WORKER, frozenset({"files:read"}), "ward-9", datetime.now(UTC)),
        None,
    )
    for claims in ({"sub": "bob"}, {"sub": "ward-9"}, {"sub": "dave", "patient": "bob"}):
        token = idp.token(scope="files:read", **claims)
        await problem(
            await env.client.get("/v1/files", headers=bearer(token)), 401, "unauthenticated"
        )
    ok = idp.token(sub="dave", patient="p-9", scope="files:read")
    assert (await env.client.get("/v1/files", headers=bearer(ok))).status == 200


async def test_an_external_admin_role_is_refused_unless_allowed(make_env: Any, idp: Idp) -> None:
    issuer = JwtIssuer(issuer=idp.issuer, jwks_url=idp.jwks_url, audiences=(AUDIENCE,))
    env = await make_env(jwt_issuers=(issuer,))
    token = idp.token(sub="eve", scope="admin files:read", role="admin")
    await problem(await env.client.get("/v1/files", headers=bearer(token)), 401, "unauthenticated")
    worker = idp.token(sub="eve", scope="files:read", role="worker")
    assert (await env.client.get("/v1/files", headers=bearer(worker))).status == 200
