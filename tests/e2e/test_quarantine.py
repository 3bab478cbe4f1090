"""Quarantine (issue 13): with ``FILESHARE_QUARANTINE_BUCKET`` the bytes clamd refused —
infected or unscannable — are kept there instead of thrown away; the upload is still
refused (422, saying so). Only an administrator sees them: listed, shown with their verdict,
released after a rescan that finds them clean (then promoted as the owner's file), handed
over as an attachment with an audited reason (never promoted), or deleted. Real clamd, real
stores; a quarantine that cannot keep the bytes refuses the upload all the same."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from fileshare.app import RESCANNER, SCANNER
from fileshare.config import ClamdAddress
from tests.e2e.conftest import ALICE, ALICE_KEY, BOB, BOB_KEY, PART, Env
from tests.e2e.test_access import ROOT, ROOT_KEY
from tests.e2e.test_operations import metric
from tests.e2e.test_rescan import (  # noqa: F401 (growing_clamd: a fixture)
    SIGNATURE,
    _audit_rows,
    _learn,
    _marker,
    growing_clamd,
)
from tests.e2e.test_upload import EICAR, download, upload
from tests.servers import Clamd
from tests.unscannable_files import encrypted_zip

KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}


@pytest.fixture(params=["local", "s3", "gcs"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _env(make_env: Any, bucket: str | None, **overrides: Any) -> Env:
    made: Env = await make_env(
        api_keys=KEYS, admins=frozenset({"root"}), quarantine_bucket=bucket, **overrides
    )
    return made


QUARANTINED = "fileshare_quarantined_total"


def _address(clamd: Clamd) -> ClamdAddress:
    return ClamdAddress(host=clamd.host, port=clamd.port)


async def _metrics(env: Env) -> str:
    return await (await env.client.get("/metrics")).text()


async def _json(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _kept(env: Env) -> dict[str, bytes]:
    """What the quarantine bucket holds, read through the store."""
    bucket = env.settings.quarantine_bucket
    assert bucket is not None
    found = {}
    for key in await env.keys(bucket):
        found[key] = b"".join([c async for c in env.storage.read(bucket, key)])
    return found


async def _refused_and_kept(env: Env, data: bytes, code: str, **params: str) -> str:
    problem = await _json(await upload(env, data, params=params), 422)
    assert problem["code"] == code
    assert problem["quarantined"] is True
    item_id: str = problem["quarantineId"]
    # Nothing of it became a file, nothing was left staged; it is in quarantine, whole.
    await env.assert_nothing_left()
    assert await _kept(env) == {f"quarantine/{item_id}": data}
    return item_id


@pytest.mark.parametrize("size", [0, 2 * PART + 3], ids=["in-memory", "staged"])
async def test_infected_bytes_are_kept_for_admins_only_and_can_be_deleted(
    make_env: Any, quarantine_bucket: str, size: int
) -> None:
    env = await _env(make_env, quarantine_bucket)
    c = env.client
    data = os.urandom(size) + EICAR
    sha = hashlib.sha256(data).hexdigest()
    item_id = await _refused_and_kept(env, data, "infected", name="invoice.pdf")

    # Listed and shown to an admin, with the upload's facts and the verdict.
    listed = await _json(await c.get("/v1/admin/quarantine", headers=ROOT), 200)
    assert [i["id"] for i in listed["items"]] == [item_id]
    item = await _json(await c.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert item["owner"] == "alice"
    assert item["createdBy"] == "alice"
    assert item["name"] == "invoice.pdf"
    assert (item["size"], item["sha256"]) == (len(data), sha)
    assert (item["state"], item["status"]) == ("infected", "held")
    assert "EICAR" in item["signature"]
    assert item["scanner"].startswith("ClamAV ")

    # Never anyone else's: not the owner's, not through a file route.
    for who in (ALICE, BOB):
        resp = await c.get(f"/v1/admin/quarantine/{item_id}", headers=who)
        assert resp.status == 403, await resp.text()
        resp = await c.get(f"/v1/admin/quarantine/{item_id}/content?reason=x", headers=who)
        assert resp.status == 403
    assert (await _json(await c.get("/v1/files", headers=ALICE), 200))["items"] == []
    assert (await download(env, item_id)).status == 404

    # A release rescans it: still infected, so it stays, and says why.
    refused = await _json(
        await c.post(f"/v1/admin/quarantine/{item_id}/release", headers=ROOT), 409
    )
    assert refused["code"] == "quarantine_still_refused"
    assert refused["state"] == "infected"
    assert refused["signature"] == item["signature"]
    await env.assert_nothing_left()
    assert list(await _kept(env)) == [f"quarantine/{item_id}"]

    # The forced release: the bytes to this admin, with a reason, audited; nothing promoted.
    for bad in ("", "?reason=", "?reason=%20", "?reason=a&reason=b", "?why=x"):
        resp = await c.get(f"/v1/admin/quarantine/{item_id}/content{bad}", headers=ROOT)
        problem = await _json(resp, 400)
        assert problem["code"] == "invalid_parameter"
    resp = await c.get(
        f"/v1/admin/quarantine/{item_id}/content?reason=incident%2042%20forensics", headers=ROOT
    )
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Content-Disposition"].startswith("attachment")
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    await env.assert_nothing_left()
    rows = await _audit_rows(env, sha)
    handed = [r for r in rows if r["action"] == "quarantine.download"]
    assert len(handed) == 1
    assert handed[0]["subject"] == "root"
    assert handed[0]["detail"]["reason"] == "incident 42 forensics"
    assert handed[0]["detail"]["quarantine_id"] == item_id
    actions = [r["action"] for r in rows]
    assert "quarantine.keep" in actions
    assert "quarantine.release" in actions  # the refused release, as denied

    # Deleted: the bytes go, the record stays with who did it.
    assert (await c.delete(f"/v1/admin/quarantine/{item_id}", headers=ROOT)).status == 204
    assert await _kept(env) == {}
    item = await _json(await c.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert (item["status"], item["deletedBy"]) == ("deleted", "root")
    for method, path in (
        ("DELETE", ""),
        ("POST", "/release"),
        ("GET", "/content?reason=again"),
    ):
        resp = await c.request(method, f"/v1/admin/quarantine/{item_id}{path}", headers=ROOT)
        assert (await _json(resp, 409))["code"] == "not_quarantined"
    assert "quarantine.delete" in [r["action"] for r in await _audit_rows(env, sha)]

    # Unknown and malformed ids are 404; bad listing parameters 400.
    for other in (uuid.uuid4().hex, "nope", "../x"):
        resp = await c.get(f"/v1/admin/quarantine/{other}", headers=ROOT)
        assert (await _json(resp, 404))["code"] == "not_found"
    for bad in (
        "?pageSize=0",
        "?pageSize=x",
        "?state=held",
        "?status=gone",
        "?status=held&status=deleted",
        "?offsetKey=not-one",
    ):
        resp = await c.get(f"/v1/admin/quarantine{bad}", headers=ROOT)
        assert (await _json(resp, 400))["code"] == "invalid_parameter"


async def test_unscannable_bytes_are_kept_too(make_env: Any, quarantine_bucket: str) -> None:
    env = await _env(make_env, quarantine_bucket)
    data = encrypted_zip()
    item_id = await _refused_and_kept(env, data, "unscannable")
    item = await _json(await env.client.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert item["state"] == "unscannable"
    assert item["signature"].startswith("Heuristics.Encrypted.Zip")
    counted = await _metrics(env)
    assert metric(counted, QUARANTINED, 'state="unscannable",trigger="upload"') == 1
    assert metric(counted, QUARANTINED, 'state="infected",trigger="upload"') == 0
    resp = await env.client.post(f"/v1/admin/quarantine/{item_id}/release", headers=ROOT)
    assert (await _json(resp, 409))["state"] == "unscannable"


async def test_newest_first_and_paged(make_env: Any, quarantine_bucket: str) -> None:
    env = await _env(make_env, quarantine_bucket)
    ids = [await _refused_and_kept_many(env, i) for i in range(6)]
    page = await _json(await env.client.get("/v1/admin/quarantine?pageSize=5", headers=ROOT), 200)
    assert [i["id"] for i in page["items"]] == ids[::-1][:5]
    rest = await _json(
        await env.client.get(
            "/v1/admin/quarantine",
            params={"pageSize": "5", "offsetKey": page["nextOffsetKey"]},
            headers=ROOT,
        ),
        200,
    )
    assert [i["id"] for i in rest["items"]] == ids[::-1][5:]
    assert "nextOffsetKey" not in rest
    # Deleted ones drop out of what is held, and are found as deleted.
    assert (await env.client.delete(f"/v1/admin/quarantine/{ids[0]}", headers=ROOT)).status == 204
    for status, expected in (("held", ids[:0:-1]), ("deleted", ids[:1]), ("released", [])):
        resp = await env.client.get(f"/v1/admin/quarantine?status={status}", headers=ROOT)
        assert [i["id"] for i in (await _json(resp, 200))["items"]] == expected, status


async def _refused_and_kept_many(env: Env, i: int) -> str:
    problem = await _json(await upload(env, str(i).encode() + EICAR), 422)
    return str(problem["quarantineId"])


@pytest.mark.parametrize("backend", ["local"])
async def test_without_a_quarantine_nothing_is_kept(make_env: Any) -> None:
    env = await _env(make_env, None)
    problem = await _json(await upload(env, EICAR), 422)
    assert problem["code"] == "infected"
    assert "quarantined" not in problem
    await env.assert_nothing_left()
    resp = await env.client.get("/v1/admin/quarantine", headers=ROOT)
    assert (await _json(resp, 404))["code"] == "not_found"


@pytest.mark.parametrize("backend", ["s3"])
async def test_a_quarantine_that_cannot_keep_still_refuses_and_leaks_nothing(
    make_env: Any, quarantine_bucket: str
) -> None:
    env = await _env(make_env, quarantine_bucket)
    env.s3.delete_bucket(Bucket=quarantine_bucket)  # every write into it now fails
    for data in (EICAR, os.urandom(2 * PART) + EICAR):
        problem = await _json(await upload(env, data), 422)
        assert problem["code"] == "infected"
        assert "quarantined" not in problem
        await env.assert_nothing_left()
    listed = await _json(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200)
    assert listed["items"] == []
    counted = await _metrics(env)
    assert metric(counted, "fileshare_quarantine_failures_total", 'trigger="upload"') == 2
    assert metric(counted, QUARANTINED, 'state="infected",trigger="upload"') == 0


async def _forget(clamd: Clamd, env: Env, marker: bytes) -> None:
    """Remove the signature ``_learn`` added and reload clamd; returns once clamd finds
    ``marker`` clean again (polled under a deadline)."""
    assert clamd.workdir is not None
    (clamd.workdir / "db" / "rescan.ndb").unlink()
    with socket.create_connection((clamd.host, clamd.port), timeout=10) as sock:
        sock.sendall(b"zRELOAD\0")
        assert sock.recv(64).startswith(b"RELOADING")
    scanner = env.client.app[SCANNER]
    deadline = time.monotonic() + 60
    while True:
        session = await scanner.open()
        await session.feed(b"probe " + marker + os.urandom(8))
        if (await session.verdict()).clean:
            return
        assert time.monotonic() < deadline, "clamd never dropped the signature"
        await _pause()


async def _pause() -> None:
    await asyncio.sleep(0.2)  # clamd reloads in the background: poll, with a deadline


@pytest.mark.parametrize("size", [1000, 2 * PART], ids=["in-memory", "staged"])
async def test_a_release_that_rescans_clean_promotes_it_as_the_owners_file(
    make_env: Any,
    quarantine_bucket: str,
    growing_clamd: Clamd,  # noqa: F811 (the fixture)
    size: int,
) -> None:
    env = await _env(make_env, quarantine_bucket, clamd=_address(growing_clamd))
    marker = _marker()
    await _learn(growing_clamd, env, marker)
    data = os.urandom(size) + marker
    resp = await env.client.put("/v1/files/report-7?name=r.bin", data=data, headers=ALICE)
    problem = await _json(resp, 422)
    item_id = problem["quarantineId"]
    await _forget(growing_clamd, env, marker)

    # Two admins release it at once: one wins, whole; the other is told it is taken (the
    # store's contract has a delete during a release).
    path = f"/v1/admin/quarantine/{item_id}"
    answers = await asyncio.gather(
        env.client.post(f"{path}/release", headers=ROOT),
        env.client.post(f"{path}/release", headers=ROOT),
    )
    assert sorted(r.status for r in answers) == [201, 409], [r.status for r in answers]
    resp = next(r for r in answers if r.status == 201)
    for lost in answers:
        if lost is not resp:
            assert (await _json(lost, 409))["code"] == "not_quarantined"
    record = await _json(resp, 201)
    assert record["id"] == "report-7"  # the id the upload asked for
    assert record["state"] == "clean"
    assert record["name"] == "r.bin"
    assert resp.headers["Location"].endswith("/v1/files/report-7?owner=alice")
    got = await download(env, "report-7")
    assert got.status == 200
    assert await got.read() == data
    assert await _kept(env) == {}
    item = await _json(await env.client.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert (item["status"], item["state"]) == ("released", "clean")
    assert (item["releasedBy"], item["releasedFileId"]) == ("root", "report-7")
    resp = await env.client.post(f"/v1/admin/quarantine/{item_id}/release", headers=ROOT)
    assert (await _json(resp, 409))["code"] == "not_quarantined"


@pytest.mark.parametrize("backend", ["s3"])
async def test_a_direct_upload_refused_is_kept_too(make_env: Any, quarantine_bucket: str) -> None:
    from tests.e2e.test_direct_uploads import complete, curl_put, intent

    env = await _env(make_env, quarantine_bucket)
    data = b"%PDF-1.4 padding " * 1000 + EICAR
    issued = await intent(env, data)
    assert curl_put(issued, data) == 200
    done = await _json(await complete(env, issued), 200)
    assert done["state"] == "infected"
    listed = await _json(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200)
    [item] = listed["items"]
    assert (item["owner"], item["fileId"]) == ("alice", issued["fileId"])
    assert item["name"] == "scan report.pdf"
    assert item["contentType"] == "application/pdf"
    assert await _kept(env) == {f"quarantine/{item['id']}": data}
    # Nothing promoted; the staged object is the direct upload's to remove, as before.
    assert await env.permanent_keys() == []


# ------------------------------------------------------------ rescans into the quarantine


async def _tainted_and_rescanned(env: Env, clamd: Clamd) -> tuple[bytes, bytes, str, str | None]:
    """Bytes stored clean as alice's ``scan-1`` (``a.bin``) and, later, bob's; a signature
    for them learnt; a rescan round that finds them. Returns the bytes, the marker the
    signature matches, their item's id, and a presigned URL of alice's record issued before
    the rescan (S3 only)."""
    marker = _marker()
    data = os.urandom(300_000) + marker
    put = await env.client.put("/v1/files/scan-1?name=a.bin", data=data, headers=ALICE)
    assert (await _json(put, 201))["state"] == "clean"
    assert (await env.client.post("/v1/files", data=data, headers=BOB)).status == 201
    url = None
    if env.backend == "s3":
        moved = await env.client.get(
            "/v1/files/scan-1", params={"redirect": "true"}, headers=ALICE, allow_redirects=False
        )
        assert moved.status == 302, await moved.text()
        url = moved.headers["Location"]
        assert await _fetch(url) == (200, data)
    await _learn(clamd, env, marker)
    report = await env.client.app[RESCANNER].run(scanned_before=datetime.now(UTC))
    sha = hashlib.sha256(data).hexdigest()
    assert (report.infected, report.failed, report.files_changed) == ([sha], [], 2)
    listed = await _json(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200)
    [item] = listed["items"]
    return data, marker, str(item["id"]), url


async def _fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as plain, plain.get(url) as got:
        return got.status, await got.read()


@pytest.mark.parametrize("backend", ["local", "s3", "gcs"])
async def test_content_a_rescan_finds_infected_moves_into_the_quarantine(
    make_env: Any,
    quarantine_bucket: str,
    growing_clamd: Clamd,  # noqa: F811 (the fixture)
) -> None:
    env = await _env(make_env, quarantine_bucket, clamd=_address(growing_clamd))
    c = env.client
    data, _, item_id, url = await _tainted_and_rescanned(env, growing_clamd)
    sha = hashlib.sha256(data).hexdigest()

    # Out of the permanent bucket: a URL issued before serves nothing any more.
    assert await env.permanent_keys() == []
    assert await _kept(env) == {f"quarantine/{item_id}": data}
    if url is not None:
        status, body = await _fetch(url)
        assert status == 404, status
        assert data not in body
    meta = await _json(await c.get("/v1/files/scan-1/metadata", headers=ALICE), 200)
    assert (meta["state"], meta["present"]) == ("infected", False)
    got = await c.get("/v1/files/scan-1", headers=ALICE)
    assert (await _json(got, 409))["code"] == "content_not_available"

    # Listed as the oldest record's, with the rescan's verdict; its keeping audited so.
    item = await _json(await c.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert (item["owner"], item["fileId"], item["name"]) == ("alice", "scan-1", "a.bin")
    assert (item["sha256"], item["size"]) == (sha, len(data))
    assert (item["state"], item["status"]) == ("infected", "held")
    assert item["signature"] == f"{SIGNATURE}.UNOFFICIAL"
    assert "createdBy" not in item
    [kept] = [r for r in await _audit_rows(env, sha) if r["action"] == "quarantine.keep"]
    assert (kept["owner"], kept["file_id"], kept["subject"]) == ("alice", "scan-1", None)
    counted = await _metrics(env)
    assert metric(counted, QUARANTINED, 'state="infected",trigger="rescan"') == 1
    assert kept["detail"] == {"quarantine_id": item_id, "state": "infected", "trigger": "rescan"}

    # Rounds do not take it again; an upload of the bytes is scanned again, and refused.
    again = await c.app[RESCANNER].run(scanned_before=datetime.now(UTC))
    assert again.scanned == again.failed == []
    problem = await _json(await upload(env, data), 422)
    assert (problem["code"], problem["quarantined"]) == ("infected", True)
    assert await env.permanent_keys() == []

    # Still refused on release; the forced release hands the bytes over; delete removes them.
    refused = await _json(
        await c.post(f"/v1/admin/quarantine/{item_id}/release", headers=ROOT), 409
    )
    assert refused["code"] == "quarantine_still_refused"
    resp = await c.get(f"/v1/admin/quarantine/{item_id}/content?reason=evidence", headers=ROOT)
    assert resp.status == 200
    assert await resp.read() == data
    assert (await c.delete(f"/v1/admin/quarantine/{item_id}", headers=ROOT)).status == 204
    assert f"quarantine/{item_id}" not in await _kept(env)
    item = await _json(await c.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
    assert item["status"] == "deleted"


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("how", ["release", "upload"])
async def test_rescan_evidence_found_clean_again_is_served_again_to_its_records(
    make_env: Any,
    quarantine_bucket: str,
    growing_clamd: Clamd,  # noqa: F811 (the fixture)
    how: str,
) -> None:
    env = await _env(make_env, quarantine_bucket, clamd=_address(growing_clamd))
    c = env.client
    data, marker, item_id, _ = await _tainted_and_rescanned(env, growing_clamd)
    await _forget(growing_clamd, env, marker)
    renamed = await c.patch(
        "/v1/files/scan-1",
        data=b'{"name": "renamed.bin"}',
        headers=ALICE | {"Content-Type": "application/merge-patch+json"},
    )
    assert renamed.status == 200, await renamed.text()

    if how == "release":
        resp = await c.post(f"/v1/admin/quarantine/{item_id}/release", headers=ROOT)
        record = await _json(resp, 201)
        # The record the bytes were taken from, as it is now: not a second one.
        assert (record["id"], record["name"], record["state"]) == ("scan-1", "renamed.bin", "clean")
        item = await _json(await c.get(f"/v1/admin/quarantine/{item_id}", headers=ROOT), 200)
        assert (item["status"], item["releasedFileId"]) == ("released", "scan-1")
        assert await _kept(env) == {}
    else:
        # A new upload of the bytes is scanned (clean now), stored and served as usual.
        assert (await _json(await upload(env, data), 201))["state"] == "clean"
    assert len(await env.permanent_keys()) == 1
    listed = await _json(await c.get("/v1/files", headers=ALICE), 200)
    assert len(listed["items"]) == (1 if how == "release" else 2)
    for file_id, who in [("scan-1", ALICE)] + [
        (i["id"], BOB) for i in (await _json(await c.get("/v1/files", headers=BOB), 200))["items"]
    ]:
        got = await c.get(f"/v1/files/{file_id}", headers=who)
        assert got.status == 200, await got.text()
        assert await got.read() == data


@pytest.mark.parametrize("backend", ["s3"])
async def test_a_rescan_that_cannot_quarantine_leaves_the_object_unserved(
    make_env: Any,
    quarantine_bucket: str,
    growing_clamd: Clamd,  # noqa: F811 (the fixture)
) -> None:
    env = await _env(make_env, quarantine_bucket, clamd=_address(growing_clamd))
    marker = _marker()
    data = os.urandom(50_000) + marker
    assert (await upload(env, data)).status == 201
    [stored] = await env.permanent_keys()
    await _learn(growing_clamd, env, marker)
    env.s3.delete_bucket(Bucket=quarantine_bucket)  # every copy into it now fails
    rescanner = env.client.app[RESCANNER]
    report = await rescanner.run(scanned_before=datetime.now(UTC))
    assert report.infected == [hashlib.sha256(data).hexdigest()]
    # Fail closed: unserved, the object where it was, nothing listed; not tried again.
    assert await env.permanent_keys() == [stored]
    listed = await _json(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200)
    assert listed["items"] == []
    counted = await _metrics(env)
    assert metric(counted, "fileshare_quarantine_failures_total", 'trigger="rescan"') == 1
    again = await rescanner.run(scanned_before=datetime.now(UTC))
    assert again.scanned == again.failed == []
    assert await env.permanent_keys() == [stored]


@pytest.mark.parametrize("backend", ["local"])
async def test_a_downloads_rescan_moves_what_it_finds_into_the_quarantine(
    make_env: Any,
    quarantine_bucket: str,
    growing_clamd: Clamd,  # noqa: F811 (the fixture)
) -> None:
    from tests.e2e.test_rescan import BOUND, _age

    env = await _env(
        make_env,
        quarantine_bucket,
        clamd=_address(growing_clamd),
        rescan_on_download=BOUND,
    )
    marker = _marker()
    data = os.urandom(20_000) + marker
    record = await _json(await upload(env, data, params={"name": "d.bin"}), 201)
    sha = hashlib.sha256(data).hexdigest()
    await _learn(growing_clamd, env, marker)
    await _age(env, sha)
    got = await download(env, record["id"])
    assert (await _json(got, 409))["code"] == "content_not_available"
    assert await env.permanent_keys() == []
    [item] = (await _json(await env.client.get("/v1/admin/quarantine", headers=ROOT), 200))["items"]
    assert (item["fileId"], item["name"], item["state"]) == (record["id"], "d.bin", "infected")
    assert await _kept(env) == {f"quarantine/{item['id']}": data}
    [kept] = [r for r in await _audit_rows(env, sha) if r["action"] == "quarantine.keep"]
    assert kept["detail"]["trigger"] == "rescan"
    assert kept["detail"]["cause"] == "download"
