"""Client upload policies (issue 13): a registered client's own type allow-list, checked
after the deployment's, and its own choice of what its unscannable uploads become (reject:
thrown away; quarantine: kept for the administrators) — refused either way. Set by the
admin API (and ``fileshare clients``), audited, read on every request. Real clamd, real
stores; SQLite (local) and PostgreSQL (s3) indexes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.conftest import ALICE_KEY, BOB_KEY, Env
from tests.e2e.test_access import ROOT, ROOT_KEY, audit_rows, register, status
from tests.e2e.test_quarantine import _kept
from tests.e2e.test_upload import EICAR
from tests.sniff_files import dicom, pdf, png
from tests.unscannable_files import encrypted_zip

KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _env(make_env: Any, **overrides: Any) -> Env:
    made: Env = await make_env(api_keys=KEYS, admins=frozenset({"root"}), **overrides)
    return made


async def _post(env: Env, headers: dict[str, str], data: bytes, content_type: str) -> Any:
    return await env.client.post(
        "/v1/files",
        data=data,
        headers={**headers, "Content-Type": content_type},
        params={"name": "attachment"},
    )


async def test_a_clients_types_narrow_the_deployments_and_can_be_changed(make_env: Any) -> None:
    env = await _env(make_env, allowed_types=frozenset({"application/*", "image/*"}))
    c = env.client
    lab = await register(
        env, "lab", "participant", allowedTypes=["Application/PDF", "image/*"], unscannable=None
    )
    shown = await status(await c.get("/v1/admin/clients/lab", headers=ROOT), 200)
    assert (shown["allowedTypes"], shown["unscannable"]) == (["application/pdf", "image/*"], None)

    # Its own list: a PDF and an image pass, DICOM (which the deployment takes) does not.
    for data, declared in ((pdf(), "application/pdf"), (png(), "image/png")):
        await status(await _post(env, lab, data, declared), 201)
    problem = await status(await _post(env, lab, dicom(), "application/dicom"), 415)
    assert problem["code"] == "type_not_allowed"
    assert "this client" in problem["detail"]
    # The deployment's list still comes first, for every client alike.
    problem = await status(await _post(env, lab, b"hello", "text/plain"), 415)
    assert problem["code"] == "type_not_allowed"
    assert "this service" in problem["detail"]
    # Nobody else is held to the lab's list.
    bob = {"Authorization": f"Bearer {BOB_KEY}"}
    await status(await _post(env, bob, dicom(), "application/dicom"), 201)
    files = await status(await c.get("/v1/files", headers=lab), 200)
    assert sorted(f["contentType"] for f in files["items"]) == ["application/pdf", "image/png"]

    # Widened by a merge patch: from its next request on, and audited with who did it.
    patched = await status(
        await c.patch(
            "/v1/admin/clients/lab",
            json={"allowedTypes": ["application/dicom"]},
            headers={**ROOT, "Content-Type": "application/merge-patch+json"},
        ),
        200,
    )
    assert patched["allowedTypes"] == ["application/dicom"]
    assert patched["unscannable"] is None
    await status(await _post(env, lab, dicom(), "application/dicom"), 201)
    problem = await status(await _post(env, lab, pdf(), "application/pdf"), 415)
    assert problem["code"] == "type_not_allowed"
    [row] = await audit_rows(env, action="client.update")
    assert row.event.subject == "root"
    # What the patch changed, only: a concurrent change of the other member stands.
    assert row.event.detail == {"client_id": "lab", "allowed_types": ["application/dicom"]}
    # null clears it: whatever the deployment takes.
    cleared = await status(
        await c.patch("/v1/admin/clients/lab", json={"allowedTypes": None}, headers=ROOT), 200
    )
    assert cleared["allowedTypes"] == []
    await status(await _post(env, lab, pdf(), "application/pdf"), 201)


async def test_bad_policies_are_refused_and_change_nothing(make_env: Any) -> None:
    env = await _env(make_env)  # no quarantine bucket
    c = env.client
    await register(env, "lab", "participant", allowedTypes=["image/*"])
    for body, word in (
        ({"allowedTypes": "image/*"}, "list"),
        ({"allowedTypes": ["images"]}, "media type"),
        ({"allowedTypes": ["*/*"]}, "media type"),
        ({"allowedTypes": [3]}, "media type"),
        ({"allowedTypes": [f"image/x{i}" for i in range(65)]}, "at most"),
        ({"unscannable": "accept"}, "reject, quarantine"),
        ({"role": "admin"}, "unknown member"),
    ):
        resp = await c.patch("/v1/admin/clients/lab", json=body, headers=ROOT)
        problem = await status(resp, 422)
        assert word in problem["detail"], (body, problem)
        if "role" not in body:  # a member of a new client's, not of a policy
            resp = await c.post(
                "/v1/admin/clients",
                json={"id": "lab2", "role": "participant", **body},
                headers=ROOT,
            )
            assert resp.status == 422, await resp.text()
    # Valid, but not here: this deployment has nowhere to keep them.
    body = {"unscannable": "quarantine"}
    problem = await status(await c.patch("/v1/admin/clients/lab", json=body, headers=ROOT), 409)
    assert problem["code"] == "no_quarantine"
    new = {"id": "lab2", "role": "participant", **body}
    problem = await status(await c.post("/v1/admin/clients", json=new, headers=ROOT), 409)
    assert problem["code"] == "no_quarantine"
    shown = await status(await c.get("/v1/admin/clients/lab", headers=ROOT), 200)
    assert (shown["allowedTypes"], shown["unscannable"]) == (["image/*"], None)
    assert (await c.get("/v1/admin/clients/lab2", headers=ROOT)).status == 404
    assert await audit_rows(env, action="client.update") == []

    # Unknown and revoked clients are 404; a participant may not change its own.
    for other in ("nobody", "lab"):
        if other == "lab":
            await status(await c.delete("/v1/admin/clients/lab", headers=ROOT), 204)
        for body in ({}, {"unscannable": "reject"}):
            resp = await c.patch(f"/v1/admin/clients/{other}", json=body, headers=ROOT)
            assert (await status(resp, 404))["code"] == "not_found"
    assert await audit_rows(env, action="client.update") == []  # a 404 changed nothing
    alice = {"Authorization": f"Bearer {ALICE_KEY}"}
    resp = await c.patch("/v1/admin/clients/lab", json={}, headers=alice)
    assert resp.status == 403


async def test_each_client_chooses_whether_its_unscannable_uploads_are_kept(
    make_env: Any, quarantine_bucket: str
) -> None:
    # The deployment keeps unscannable uploads (the default with a quarantine bucket).
    env = await _env(make_env, quarantine_bucket=quarantine_bucket)
    rejecting = await register(env, "ward", "participant", unscannable="reject")
    default = await register(env, "clinic", "participant")
    data = encrypted_zip()

    problem = await status(await _post(env, rejecting, data, "application/zip"), 422)
    assert problem["code"] == "unscannable"
    assert "quarantined" not in problem  # told: its bytes were not kept
    await env.assert_nothing_left()
    assert await _kept(env) == {}
    # Infected bytes are evidence whatever the client chose.
    problem = await status(await _post(env, rejecting, EICAR, "text/plain"), 422)
    assert (problem["code"], problem["quarantined"]) == ("infected", True)
    problem = await status(await _post(env, default, data, "application/zip"), 422)
    assert (problem["code"], problem["quarantined"]) == ("unscannable", True)
    assert len(await _kept(env)) == 2
    listed = await status(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200)
    assert sorted((i["owner"], i["state"]) for i in listed["items"]) == [
        ("clinic", "unscannable"),
        ("ward", "infected"),
    ]


@pytest.mark.parametrize("backend", ["local"])
async def test_a_deployment_that_rejects_unscannable_lets_a_client_keep_them(
    make_env: Any, quarantine_bucket: str
) -> None:
    from fileshare.upload_policy import Unscannable

    env = await _env(make_env, quarantine_bucket=quarantine_bucket, unscannable=Unscannable.REJECT)
    keeping = await register(env, "research", "participant", unscannable="quarantine")
    other = await register(env, "ward", "participant")
    problem = await status(await _post(env, other, encrypted_zip(), "application/zip"), 422)
    assert "quarantined" not in problem
    assert await _kept(env) == {}
    problem = await status(await _post(env, keeping, encrypted_zip(), "application/zip"), 422)
    assert problem["quarantined"] is True
    assert list(await _kept(env)) == [f"quarantine/{problem['quarantineId']}"]
    # Back to the deployment's choice.
    await status(
        await env.client.patch(
            "/v1/admin/clients/research", json={"unscannable": None}, headers=ROOT
        ),
        200,
    )
    problem = await status(await _post(env, keeping, encrypted_zip(), "application/zip"), 422)
    assert "quarantined" not in problem
    assert len(await _kept(env)) == 1


@pytest.mark.parametrize("backend", ["s3"])
async def test_direct_uploads_follow_the_policy_of_the_client_that_intended_them(
    make_env: Any, quarantine_bucket: str
) -> None:
    from tests.e2e.test_direct_uploads import curl_put

    env = await _env(make_env, quarantine_bucket=quarantine_bucket)
    ward = await register(
        env, "ward", "participant", allowedTypes=["application/zip"], unscannable="reject"
    )

    async def intent(data: bytes, content_type: str, expected: int) -> Any:
        body = {"name": "a.zip", "contentType": content_type, "size": len(data)}
        return await status(await env.client.post("/v1/uploads", json=body, headers=ward), expected)

    # Refused at the intent, before any URL is signed.
    problem = await intent(pdf(), "application/pdf", 415)
    assert problem["code"] == "type_not_allowed"
    data = encrypted_zip()
    issued = await intent(data, "application/zip", 201)
    # A change made after the intent does not reach it: it keeps the policy it began with.
    await status(
        await env.client.patch("/v1/admin/clients/ward", json={"unscannable": None}, headers=ROOT),
        200,
    )
    assert curl_put(issued, data) == 200
    done = await status(
        await env.client.post(f"/v1/uploads/{issued['id']}/complete", headers=ward), 200
    )
    assert done["state"] == "unscannable"
    assert await _kept(env) == {}
    assert await env.permanent_keys() == []


async def test_the_command_line_sets_the_policy_the_api_shows(make_env: Any) -> None:
    from tests.e2e.test_access import _cli

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(_cli, env, *args)

    env = await _env(make_env)
    made = await cli("clients", "add", "lab", "--role", "participant", "--allowed-types", "image/*")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["allowedTypes"] == ["image/*"]
    changed = await cli("clients", "policy", "lab", "--allowed-types", "application/pdf, image/*")
    assert changed.returncode == 0, changed.stderr
    shown = await status(await env.client.get("/v1/admin/clients/lab", headers=ROOT), 200)
    assert shown["allowedTypes"] == ["application/pdf", "image/*"]
    refused = await cli("clients", "policy", "lab", "--unscannable", "quarantine")
    assert refused.returncode == 1
    assert "quarantine bucket" in refused.stderr
    rows = await audit_rows(env, action="client.update")
    assert [r.event.detail["allowed_types"] for r in rows] == [["application/pdf", "image/*"]]
    assert (rows[0].event.subject or "").startswith("cli:")


async def test_the_policy_holds_for_the_clients_own_tokens_and_two_patches_both_stand(
    make_env: Any,
) -> None:
    from tests.e2e.test_oauth import basic

    env = await _env(make_env)
    c = env.client
    made = await status(
        await c.post(
            "/v1/admin/clients",
            json={
                "id": "gw",
                "role": "worker",
                "secret": True,
                "allowedTypes": ["application/pdf"],
            },
            headers=ROOT,
        ),
        201,
    )
    resp = await c.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic("gw", made["clientSecret"]),
    )
    token = (await status(resp, 200))["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    problem = await status(await _post(env, bearer, b"notes", "text/plain"), 415)
    assert (problem["code"], "this client" in problem["detail"]) == ("type_not_allowed", True)
    await status(await _post(env, bearer, pdf(), "application/pdf"), 201)

    # Each member is written alone, so changes of different members made at once all stand.
    await asyncio.gather(
        c.patch("/v1/admin/clients/gw", json={"allowedTypes": ["text/plain"]}, headers=ROOT),
        c.patch("/v1/admin/clients/gw", json={"unscannable": "reject"}, headers=ROOT),
    )
    shown = await status(await c.get("/v1/admin/clients/gw", headers=ROOT), 200)
    assert (shown["allowedTypes"], shown["unscannable"]) == (["text/plain"], "reject")
    # A token issued before the change is held to the new policy at once.
    await status(await _post(env, bearer, b"notes", "text/plain"), 201)
