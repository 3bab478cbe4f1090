"""``GET /v1/audit`` end to end: the whole service with the SQLite index (local storage) and
the PostgreSQL index (S3), real clamd; every answer checked against the OpenAPI document."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle as FhirBundle

from fileshare.audit import Action
from fileshare.index.audit import GENESIS, chain_hash
from tests.e2e.conftest import ALICE, ALICE_KEY, BOB_KEY, Env
from tests.e2e.test_upload import upload
from tests.unit.test_audit_fhir import check_audit_event

AUDITOR_KEY = "auditor-key-0123456789abcdef"
AUDITOR = {"Authorization": f"Bearer {AUDITOR_KEY}"}
BASE = "https://files.example.test"
FHIR = {**AUDITOR, "Accept": "application/fhir+json"}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite (local) and PostgreSQL (s3): the trail's query and JSON on both databases."""
    return str(request.param)


@pytest.fixture
async def env(make_env: Any) -> Env:
    keys = {"alice": ALICE_KEY, "bob": BOB_KEY, "auditor": AUDITOR_KEY}
    made: Env = await make_env(api_keys=keys, admins=frozenset({"auditor"}))
    return made


async def trail(env: Env, **params: Any) -> dict[str, Any]:
    resp = await env.client.get("/v1/audit", headers=AUDITOR, params=params)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    return body


async def walk(env: Env, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = await trail(env, **params)
        found += page["items"]
        if "nextPageToken" not in page:
            return found
        assert len(page["items"]) == int(params.get("pageSize", 50))
        params["pageToken"] = page["nextPageToken"]


async def refused(env: Env, n: int) -> list[str]:
    """``n`` requests with a wrong key: n auth.fail rows; their request ids."""
    ids = []
    for i in range(n):
        rid = f"refused-{i}-{os.urandom(4).hex()}"
        resp = await env.client.get(
            "/v1/files", headers={"X-API-Key": "not-a-key", "X-Request-ID": rid}
        )
        assert resp.status == 401
        ids.append(rid)
    return ids


async def test_the_trail_needs_audit_read_and_refusals_are_in_it(env: Env) -> None:
    anonymous = await env.client.get("/v1/audit", headers={"X-Request-ID": "anon-1"})
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    participant = await env.client.get("/v1/audit", headers={**ALICE, "X-Request-ID": "alice-1"})
    assert participant.status == 403
    assert (await participant.json())["code"] == "forbidden"

    items = (await trail(env, action="auth.fail"))["items"]
    assert [i["requestId"] for i in items] == ["alice-1", "anon-1"]
    alice, anon = items
    assert alice["seq"] > anon["seq"]
    assert alice["detail"].items() >= {"status": 403, "route": "/v1/audit"}.items()
    assert alice | {"seq": 0, "at": "", "hash": "", "prevHash": "", "detail": {}} == {
        "seq": 0,
        "at": "",
        "action": "auth.fail",
        "result": "denied",
        "subject": "alice",
        "client": "alice",
        "role": "participant",
        "source": "127.0.0.1",
        "owner": None,
        "fileId": None,
        "sha256": None,
        "requestId": "alice-1",
        "detail": {},
        "prevHash": "",
        "hash": "",
    }
    assert anon["subject"] is None
    assert anon["detail"].items() >= {"status": 401, "route": "/v1/audit"}.items()


async def test_every_page_read_is_audited(env: Env) -> None:
    first = await env.client.get(
        "/v1/audit", headers={**AUDITOR, "X-Request-ID": "read-1"}, params={"action": "audit.read"}
    )
    assert (await first.json())["items"] == []
    (row,) = (await trail(env, action="audit.read"))["items"]
    assert row["requestId"] == "read-1"
    assert row["subject"] == "auditor"
    assert row["role"] == "admin"
    assert row["detail"] == {"action": "audit.read", "rows": 0, "format": "json"}
    # A refused read (400) answers nothing, and leaves no audit.read row.
    bad = await env.client.get("/v1/audit", headers=AUDITOR, params={"pageSize": "4"})
    assert bad.status == 400
    assert len((await trail(env, action="audit.read"))["items"]) == 2


async def test_an_upload_and_its_reads_are_in_the_files_trail(env: Env) -> None:
    resp = await upload(env, b"a scanned report", params={"name": "r.pdf"})
    assert resp.status == 201, await resp.text()
    file = await resp.json()
    got = await env.client.get(f"/v1/files/{file['id']}", headers=ALICE)
    assert got.status == 200
    await got.read()

    items = (await trail(env, owner="alice", fileId=file["id"]))["items"]
    actions = [i["action"] for i in items]
    assert actions[0] == "file.download"
    assert {"file.upload", "scan.verdict"} <= set(actions)
    for item in items:
        assert (item["owner"], item["fileId"], item["subject"]) == ("alice", file["id"], "alice")
        assert item["sha256"] == file["sha256"]
    # The read of the file's trail is itself in the file's trail.
    again = (await trail(env, owner="alice", fileId=file["id"], action="audit.read"))["items"]
    assert [i["subject"] for i in again] == ["auditor"]


async def test_filters_and_keyset_pages(env: Env) -> None:
    ids = await refused(env, 12)
    every = await walk(env, action="auth.fail", pageSize=5)
    assert [i["requestId"] for i in every] == list(reversed(ids))
    seqs = [i["seq"] for i in every]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 12

    stamps = [datetime.fromisoformat(i["at"]) for i in every]
    since, until = every[8]["at"], every[2]["at"]
    expected = [
        i["requestId"]
        for i, at in zip(every, stamps, strict=True)
        if datetime.fromisoformat(since) <= at < datetime.fromisoformat(until)
    ]
    window = await walk(env, action="auth.fail", since=since, until=until, pageSize=5)
    assert [i["requestId"] for i in window] == expected
    assert every[8]["requestId"] in expected
    assert every[2]["requestId"] not in expected

    await env.client.get("/v1/audit", headers=ALICE)  # alice's refusal
    mine = await walk(env, subject="alice")
    assert [i["action"] for i in mine] == ["auth.fail"]
    assert await walk(env, subject="nobody") == []


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": "4"},
        {"pageSize": "101"},
        {"action": "file.explode"},
        {"pageToken": "garbage!"},
        {"since": "yesterday"},
        {"since": "2024-05-02", "until": "2024-05-01"},
        {"fileId": "../x"},
        {"owner": " spaced"},
        {"_format": "xml"},
        {"colour": "blue"},
    ],
)
async def test_bad_parameters_are_400(env: Env, params: dict[str, str]) -> None:
    resp = await env.client.get("/v1/audit", headers=AUDITOR, params=params)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] == "invalid_parameter"


async def test_the_json_pages_verify_offline(env: Env) -> None:
    """An exported page holds everything its hashes were taken over."""
    await refused(env, 3)
    await trail(env)
    rows = sorted(await walk(env, pageSize=5), key=lambda i: i["seq"])
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    prev = GENESIS
    for r in rows:
        assert r["prevHash"] == prev
        values = {
            "action": r["action"],
            "result": r["result"],
            "subject": r["subject"],
            "client": r["client"],
            "role": r["role"],
            "source": r["source"],
            "owner": r["owner"],
            "file_id": r["fileId"],
            "sha256": r["sha256"],
            "request_id": r["requestId"],
            "detail": r["detail"],
        }
        assert chain_hash(r["seq"], datetime.fromisoformat(r["at"]), values, prev) == r["hash"]
        prev = r["hash"]


async def test_the_fhir_export_is_a_bundle_of_audit_events(env: Env) -> None:
    await refused(env, 7)
    resp = await env.client.get("/v1/audit", headers=FHIR, params={"pageSize": "5"})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/fhir+json"
    assert resp.headers["Vary"] == "Accept"
    body = await resp.json(content_type=None)
    FhirBundle.model_validate(body)
    assert (body["resourceType"], body["type"]) == ("Bundle", "searchset")
    assert len(body["entry"]) == 5
    for entry in body["entry"]:
        check_audit_event(entry["resource"])
    links = {link["relation"]: link["url"] for link in body["link"]}
    assert links["self"] == f"{BASE}/v1/audit?pageSize=5"
    first_ids = [e["resource"]["id"] for e in body["entry"]]
    assert [int(i) for i in first_ids] == sorted((int(i) for i in first_ids), reverse=True)

    # The next link, followed as a FHIR client would (on the test server's address).
    nxt = urlsplit(links["next"])
    assert f"{nxt.scheme}://{nxt.netloc}" == BASE
    resp = await env.client.get(f"{nxt.path}?{nxt.query}", headers=FHIR)
    second = await resp.json(content_type=None)
    second_ids = [e["resource"]["id"] for e in second["entry"]]
    assert second_ids
    assert int(second_ids[0]) < int(first_ids[-1])

    refusal = next(
        e["resource"] for e in body["entry"] if e["resource"]["type"]["code"] == "110114"
    )
    assert refusal["outcome"] == "4"
    assert refusal["agent"][0]["network"] == {"address": "127.0.0.1", "type": "2"}
    # ?_format=fhir without Accept; q-values that prefer JSON get JSON.
    by_param = await env.client.get("/v1/audit", headers=AUDITOR, params={"_format": "fhir"})
    assert by_param.content_type == "application/fhir+json"
    assert (await by_param.json(content_type=None))["resourceType"] == "Bundle"
    prefers_json = await env.client.get(
        "/v1/audit",
        headers={**AUDITOR, "Accept": "application/json, application/fhir+json;q=0.5"},
    )
    assert prefers_json.content_type == "application/json"
    assert "items" in await prefers_json.json()
    # Each export is audited with its format.
    (read,) = (await trail(env, action=Action.AUDIT_READ.value, pageSize=5))["items"][-1:]
    assert read["detail"]["format"] == "fhir"
