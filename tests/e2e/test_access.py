"""Roles, grants, registered keys and the audit trail, through the API (issue 9).

Participants alice and bob and the admin root are bootstrap principals; a worker and a
researcher are registered through the admin API with keys of their own. SQLite (local) and
PostgreSQL (s3) indexes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fileshare.api.keys import AUDIT, IDENTITY
from fileshare.auth.keys import format_key
from fileshare.auth.secrets import hash_secret
from fileshare.index.audit import AuditQuery
from fileshare.index.identity import ApiKey
from tests.e2e.conftest import ALICE, ALICE_KEY, BOB, BOB_KEY, Env

ROOT_KEY = "root-key-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_KEY}"}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def env(make_env: Any) -> Env:
    keys = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}
    made: Env = await make_env(api_keys=keys, admins=frozenset({"root"}))
    return made


async def status(resp: Any, expected: int) -> Any:
    body = await resp.read()
    assert resp.status == expected, body
    return await resp.json() if body and resp.content_type.endswith("json") else None


async def register(env: Env, client_id: str, role: str, **extra: Any) -> dict[str, str]:
    """A registered client with an API key: its auth header."""
    c = env.client
    await status(
        await c.post(
            "/v1/admin/clients", json={"id": client_id, "role": role, **extra}, headers=ROOT
        ),
        201,
    )
    key = await status(
        await c.post(f"/v1/admin/clients/{client_id}/keys", json={}, headers=ROOT), 201
    )
    assert key["key"].startswith("fsk_")
    return {"Authorization": f"Bearer {key['key']}"}


async def upload(env: Env, headers: dict[str, str], data: bytes = b"report", **params: str) -> Any:
    return await env.client.post(
        "/v1/files", data=data, headers=headers, params={"name": "r.txt", **params}
    )


async def grant(env: Env, grantee: str, owner: str, access: str) -> None:
    await status(
        await env.client.put(
            f"/v1/admin/grants/{grantee}/{owner}", json={"access": access}, headers=ROOT
        ),
        200,
    )


async def audit_rows(env: Env, **query: Any) -> list[Any]:
    return await env.client.app[AUDIT].query(AuditQuery(limit=100, **query))


async def test_another_participants_file_is_404_everywhere_even_naming_the_owner(env: Env) -> None:
    c = env.client
    file_id = (await status(await upload(env, ALICE), 201))["id"]
    for owner in ({}, {"owner": "alice"}):
        for method, path in (
            ("GET", f"/v1/files/{file_id}"),
            ("HEAD", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/metadata"),
            ("DELETE", f"/v1/files/{file_id}"),
            ("PUT", f"/v1/files/{file_id}/tags/x"),
        ):
            resp = await c.request(method, path, headers=BOB, params=owner)
            assert resp.status == 404, (method, path, owner)
        listed = await c.get("/v1/files", headers=BOB, params=owner)
        if owner:
            assert listed.status == 404  # alice's namespace is not bob's to list
        else:
            assert (await status(listed, 200))["items"] == []
        assert (await upload(env, BOB, **owner)).status == (404 if owner else 201)
    patched = await c.patch(f"/v1/files/{file_id}", json={"name": "mine.txt"}, headers={**BOB})
    assert patched.status == 404
    # alice's file is untouched, and bob's refusals are in the audit trail
    record = await status(await c.get(f"/v1/files/{file_id}/metadata", headers=ALICE), 200)
    assert record["name"] == "r.txt"
    denied = [r for r in await audit_rows(env, subject="bob") if r.event.result == "denied"]
    assert {r.event.action for r in denied} >= {
        "file.download",
        "file.read",
        "file.update",
        "file.tag",
        "access.deny",
    }


async def test_a_worker_writes_and_reads_for_its_participants_only(env: Env) -> None:
    c = env.client
    worker = await register(env, "ward-7", "worker")
    assert (await upload(env, worker, owner="alice")).status == 404  # no grant yet
    await grant(env, "ward-7", "alice", "write")
    made = await status(await upload(env, worker, owner="alice"), 201)
    assert made["createdBy"] == "ward-7"
    # the record is alice's: she sees it, the worker finds it under her name only
    mine = await status(await c.get("/v1/files", headers=ALICE), 200)
    assert [f["id"] for f in mine["items"]] == [made["id"]]
    assert (await c.get(f"/v1/files/{made['id']}", headers=worker)).status == 404
    await status(
        await c.get(f"/v1/files/{made['id']}", headers=worker, params={"owner": "alice"}), 200
    )
    # bob is not the worker's participant; a read-only grant does not let it write
    assert (await upload(env, worker, owner="bob")).status == 404
    await grant(env, "ward-7", "bob", "read")
    resp = await upload(env, worker, owner="bob")
    assert resp.status == 403, await resp.text()
    await status(await c.get("/v1/files", headers=worker, params={"owner": "bob"}), 200)
    uploads = await audit_rows(env, subject="ward-7", action="file.upload")
    assert [(r.event.owner, r.event.result) for r in uploads] == [("alice", "success")]
    refused = await audit_rows(env, subject="ward-7", action="access.deny")
    assert [(r.event.owner, r.event.detail["status"]) for r in refused] == [
        ("bob", 403),
        ("bob", 404),
        ("alice", 404),
    ]


async def test_a_researcher_reads_what_it_is_granted_and_never_writes(env: Env) -> None:
    c = env.client
    file_id = (await status(await upload(env, ALICE), 201))["id"]
    researcher = await register(env, "study-42", "researcher")
    assert (
        await c.get(f"/v1/files/{file_id}", headers=researcher, params={"owner": "alice"})
    ).status == 404
    await grant(env, "study-42", "alice", "read")
    got = await c.get(f"/v1/files/{file_id}", headers=researcher, params={"owner": "alice"})
    assert got.status == 200
    assert await got.read() == b"report"
    # never writes: the scope is missing, so 403 before the body or the owner is looked at
    for method, path in (
        ("POST", "/v1/files"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("PATCH", f"/v1/files/{file_id}"),
        ("PUT", f"/v1/files/{file_id}/tags/x"),
    ):
        resp = await c.request(
            method, path, headers=researcher, params={"owner": "alice"}, data=b"{"
        )
        body = await status(resp, 403)
        assert body["code"] == "forbidden"
    # a researcher cannot make itself a grant either
    assert (
        await c.put("/v1/admin/grants/study-42/bob", json={"access": "read"}, headers=researcher)
    ).status == 403


async def test_checks_come_in_order_401_then_403_then_400(env: Env) -> None:
    c = env.client
    researcher = await register(env, "reader", "researcher")
    bad_body = {"data": b"{not json", "headers": {"Content-Type": "application/merge-patch+json"}}
    # no credentials, with a bad body and a bad owner: 401, naming the scheme
    resp = await c.patch("/v1/files/x", params={"owner": "!!"}, **bad_body)
    await status(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # credentials without the scope: 403, whatever the body
    resp = await c.patch(
        "/v1/files/x",
        params={"owner": "!!"},
        headers={**researcher, **bad_body["headers"]},
        data=bad_body["data"],
    )
    await status(resp, 403)
    # with the scope: the bad parameter is 400, before anything is looked up
    resp = await c.patch(
        "/v1/files/x",
        params={"owner": "!!"},
        headers={**ALICE, **bad_body["headers"]},
        data=bad_body["data"],
    )
    assert (await status(resp, 400))["code"] == "invalid_parameter"
    rows = await audit_rows(env, action="auth.fail")
    assert {r.event.detail["status"] for r in rows} >= {401, 403}


async def test_revoked_keys_and_clients_stop_working_at_once(env: Env) -> None:
    c = env.client
    worker = await register(env, "svc", "worker")
    await status(await c.get("/v1/files", headers=worker), 200)
    keys = await status(await c.get("/v1/admin/clients/svc/keys", headers=ROOT), 200)
    (key,) = keys["items"]
    assert "key" not in key  # the secret was shown once
    await status(await c.delete(f"/v1/admin/keys/{key['id']}", headers=ROOT), 204)
    await status(await c.get("/v1/files", headers=worker), 401)
    # a second key works until the client itself is revoked
    second = await status(await c.post("/v1/admin/clients/svc/keys", json={}, headers=ROOT), 201)
    header = {"Authorization": f"Bearer {second['key']}"}
    await status(await c.get("/v1/files", headers=header), 200)
    await status(await c.delete("/v1/admin/clients/svc", headers=ROOT), 204)
    await status(await c.get("/v1/files", headers=header), 401)
    client = await status(await c.get("/v1/admin/clients/svc", headers=ROOT), 200)
    assert client["active"] is False
    # the id is never reused
    resp = await c.post("/v1/admin/clients", json={"id": "svc", "role": "worker"}, headers=ROOT)
    assert (await status(resp, 409))["code"] == "already_exists"
    # nor does a client take a bootstrap principal's name or namespace
    for body in ({"id": "alice", "role": "worker"}, {"id": "x2", "role": "worker", "owner": "bob"}):
        resp = await c.post("/v1/admin/clients", json=body, headers=ROOT)
        assert (await status(resp, 409))["code"] == "already_exists"
    actions = [r.event.action for r in await audit_rows(env, subject="root")]
    assert {"client.create", "key.create", "key.revoke", "client.revoke"} <= set(actions)


async def test_an_expired_or_garbled_key_is_401(env: Env) -> None:
    c = env.client
    await register(env, "old", "participant")
    past = datetime.now(UTC) - timedelta(days=1)
    secret = "s" * 43
    expired = ApiKey("00000000000000aa", "old", hash_secret(secret), past - timedelta(days=1), past)
    await c.app[IDENTITY].create_key(expired, None)
    await status(
        await c.get(
            "/v1/files", headers={"Authorization": f"Bearer {format_key(expired.id, secret)}"}
        ),
        401,
    )
    for garbled in ("fsk_", "fsk_00000000000000aa_short", format_key("00000000000000aa", "t" * 43)):
        await status(await c.get("/v1/files", headers={"Authorization": f"Bearer {garbled}"}), 401)


async def test_admin_routes_need_the_admin_scope_and_validate(env: Env) -> None:
    c = env.client
    await status(await c.get("/v1/admin/clients", headers=ALICE), 403)
    for body in (
        {"id": "x", "role": "overlord"},
        {"id": "bad id", "role": "worker"},
        {"id": "r", "role": "researcher", "scopes": "files:write"},
        {"id": "w", "role": "worker", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
        {"role": "worker"},
        {"id": "x", "role": "worker", "color": "red"},
    ):
        resp = await c.post("/v1/admin/clients", json=body, headers=ROOT)
        assert (await status(resp, 422))["code"] == "validation_failed", body
    made = await status(
        await c.post(
            "/v1/admin/clients", json={"id": "svc2", "role": "worker", "secret": True}, headers=ROOT
        ),
        201,
    )
    assert len(made["clientSecret"]) >= 40
    listed = await status(await c.get("/v1/admin/clients", headers=ROOT), 200)
    assert "clientSecret" not in listed["items"][0]
    await status(await c.delete("/v1/admin/grants/nobody/alice", headers=ROOT), 404)
    await status(await c.delete("/v1/admin/keys/00000000000000ff", headers=ROOT), 404)
    # a change that found nothing to change is no "success" in the audit trail
    done = await audit_rows(env, subject="root")
    assert not [r for r in done if r.event.action in ("grant.delete", "key.revoke")]
    grants = await status(
        await c.get("/v1/admin/grants", headers=ROOT, params={"owner": "alice"}), 200
    )
    assert grants["items"] == []


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    settings = env.settings
    environ = {
        "PATH": os.environ["PATH"],
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY}",
        "FILESHARE_DATA_DIR": str(settings.data_dir),
        "FILESHARE_INDEX_PATH": str(settings.index_path),
        **({"FILESHARE_INDEX_URL": settings.index_url} if settings.index_url else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "fileshare", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_command_line_registers_what_the_api_then_honours(env: Env) -> None:
    c = env.client
    made = await asyncio.to_thread(_cli, env, "clients", "add", "scanner-svc", "--role", "worker")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["role"] == "worker"
    key = await asyncio.to_thread(_cli, env, "keys", "add", "scanner-svc", "--expires", "90d")
    assert key.returncode == 0, key.stderr
    presented = json.loads(key.stdout)["key"]
    header = {"Authorization": f"Bearer {presented}"}
    await status(await c.get("/v1/files", headers=header), 200)
    granted = await asyncio.to_thread(
        _cli, env, "grants", "add", "scanner-svc", "alice", "--access", "write"
    )
    assert granted.returncode == 0, granted.stderr
    await status(await upload(env, header, owner="alice"), 201)
    # refusals are one line and exit 1; the secret never reaches stderr
    again = await asyncio.to_thread(_cli, env, "clients", "add", "scanner-svc", "--role", "worker")
    assert again.returncode == 1, again.stderr
    assert again.stderr.count("\n") == 1, again.stderr
    revoked = await asyncio.to_thread(_cli, env, "keys", "revoke", json.loads(key.stdout)["id"])
    assert revoked.returncode == 0, revoked.stderr
    await status(await c.get("/v1/files", headers=header), 401)
    rows = await audit_rows(env, action="key.revoke")
    assert rows
    assert (rows[0].event.subject or "").startswith("cli:")
