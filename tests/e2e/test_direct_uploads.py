"""Direct-to-bucket uploads on SeaweedFS (which checks SigV4 signatures) and real clamd:
an intent, a presigned PUT made with curl, ingestion by completion or by the reconciler,
refusals by the store and by fileshare, replicas racing, and downloads by redirect."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from fileshare import errors
from fileshare.api.keys import AUDIT, DIRECT
from fileshare.audit import Action
from fileshare.config import ClamdAddress
from fileshare.index.audit import AuditQuery
from fileshare.storage.base import DIRECT_PREFIX
from tests.e2e.conftest import ALICE, BOB, Env
from tests.e2e.test_upload import EICAR
from tests.servers import free_port
from tests.sniff_files import pdf

PDF = "application/pdf"


@pytest.fixture
def backend() -> str:
    return "s3"


async def intent(env: Env, data: bytes, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "scan report.pdf",
        "contentType": PDF,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    resp = await env.client.post("/v1/uploads", json=body, headers=ALICE)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    answer: dict[str, Any] = await resp.json()
    assert resp.headers["Location"] == answer["status"]
    return answer


def curl_put(issued: dict[str, Any], data: bytes, **headers: str) -> int:
    """The PUT as any HTTP client would make it: curl, the URL and headers as issued."""
    upload = issued["upload"]
    sent = {**upload["headers"], **headers}
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", upload["method"]]
    for name, value in sent.items():
        args += ["-H", f"{name}: {value}"]
    args += ["--data-binary", "@-", upload["url"]]
    done = subprocess.run(args, input=data, capture_output=True, check=True, timeout=60)
    return int(done.stdout)


async def complete(env: Env, issued: dict[str, Any], headers: dict[str, str] = ALICE) -> Any:
    return await env.client.post(f"/v1/uploads/{issued['id']}/complete", headers=headers)


async def status(env: Env, issued: dict[str, Any]) -> dict[str, Any]:
    resp = await env.client.get(f"/v1/uploads/{issued['id']}", headers=ALICE)
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def settled(env: Env, issued: dict[str, Any]) -> dict[str, Any]:
    """The upload's status once it has an outcome (another worker may still be at it)."""
    deadline = time.monotonic() + 60
    while (answer := await status(env, issued))["state"] == "pending":
        assert time.monotonic() < deadline, "the upload was never ingested"
        await asyncio.sleep(0.05)  # polling the index, for a worker this test does not own
    return answer


async def file_uploads(env: Env, file_id: str) -> int:
    rows = await env.client.app[AUDIT].query(AuditQuery(action=str(Action.FILE_UPLOAD)))
    return sum(1 for r in rows if r.event.file_id == file_id and r.event.result == "success")


# ------------------------------------------------------------------ the flow


async def test_a_curl_put_to_the_presigned_url_is_ingested_clean_and_downloadable(
    env: Env,
) -> None:
    data = pdf(3 * 1024 * 1024 + 17)
    issued = await intent(env, data)
    assert issued["state"] == "pending"
    assert issued["upload"]["method"] == "PUT"
    # Write-only into the unscanned bucket, under a key fileshare chose.
    assert (
        f"/{env.settings.unscanned_bucket}/{DIRECT_PREFIX}{issued['id']}?"
        in (issued["upload"]["url"])
    )
    file_id = issued["fileId"]

    # Before the bytes are in, the owner is told the file is pending; anybody else: 404.
    early = await env.client.get(f"/v1/files/{file_id}", headers=ALICE)
    assert early.status == 409
    assert (await early.json())["code"] == "content_pending"
    other = await env.client.get(f"/v1/files/{file_id}", headers=BOB)
    assert other.status == 404
    assert (await env.client.get(f"/v1/uploads/{issued['id']}", headers=BOB)).status == 404

    assert curl_put(issued, data) == 200
    # Staged but not scanned: still not readable through fileshare.
    assert (await env.client.get(f"/v1/files/{file_id}", headers=ALICE)).status == 409

    resp = await complete(env, issued)
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["state"] == "clean"
    assert done["file"] == f"https://files.example.test/v1/files/{file_id}"

    got = await env.client.get(f"/v1/files/{file_id}", headers=ALICE)
    assert got.status == 200
    assert await got.read() == data
    meta = await (await env.client.get(f"/v1/files/{file_id}/metadata", headers=ALICE)).json()
    assert (meta["name"], meta["state"], meta["present"]) == ("scan report.pdf", "clean", True)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    # The staging object is gone; completing again changes nothing.
    assert await env.unscanned_keys() == []
    again = await complete(env, issued)
    assert again.status == 200
    assert (await again.json())["state"] == "clean"
    assert await file_uploads(env, file_id) == 1
    issued_rows = await env.client.app[AUDIT].query(AuditQuery(action=str(Action.URL_ISSUE)))
    assert [r.event.file_id for r in issued_rows] == [file_id]


async def test_eicar_through_a_presigned_put_is_infected_and_nothing_is_promoted(
    env: Env,
) -> None:
    data = b"%PDF-1.4 padding " * 1000 + EICAR
    issued = await intent(env, data)
    assert curl_put(issued, data) == 200
    resp = await complete(env, issued)
    assert resp.status == 200
    done = await resp.json()
    assert done["state"] == "infected"
    assert done["code"] == "infected"
    assert "EICAR" in done["signature"]
    refused = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert refused.status == 409
    assert (await refused.json())["code"] == "content_not_available"
    await env.assert_nothing_left()
    verdicts = await env.client.app[AUDIT].query(AuditQuery(action=str(Action.SCAN_VERDICT)))
    assert [r.event.detail["state"] for r in verdicts] == ["infected"]


async def test_completing_before_the_bytes_are_there_is_a_409_and_loses_nothing(
    env: Env,
) -> None:
    data = b"%PDF-1.4 not yet"
    issued = await intent(env, data)
    resp = await complete(env, issued)
    assert resp.status == 409
    assert (await resp.json())["code"] == "upload_incomplete"
    assert (await status(env, issued))["state"] == "pending"
    assert curl_put(issued, data) == 200
    assert (await (await complete(env, issued)).json())["state"] == "clean"


# ------------------------------------------------------------------ what the store refuses


async def test_the_store_refuses_a_tampered_wrong_or_oversized_request(env: Env) -> None:
    data = b"exactly these bytes"
    issued = await intent(env, data)
    url = issued["upload"]["url"]
    signature_at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if url[signature_at] != "0" else "1"
    tampered = {
        **issued,
        "upload": {
            **issued["upload"],
            "url": url[:signature_at] + flipped + url[signature_at + 1 :],
        },
    }
    assert curl_put(tampered, data) == 403
    assert curl_put(issued, data, **{"Content-Type": "text/html"}) == 403
    assert curl_put(issued, data + b"!") == 403  # Content-Length is signed
    wrong_method = {**issued, "upload": {**issued["upload"], "method": "GET"}}
    assert curl_put(wrong_method, b"") == 403  # write-only: the URL does not read
    assert await env.unscanned_keys() == []
    assert curl_put(issued, data) == 200


async def test_the_url_expires(make_env: Any) -> None:
    env: Env = await make_env(direct_url_ttl=1)
    data = b"too late"
    issued = await intent(env, data)
    deadline = time.monotonic() + 30
    while (code := curl_put(issued, data)) == 200:
        await env.storage.delete(env.settings.unscanned_bucket, DIRECT_PREFIX + issued["id"])
        assert time.monotonic() < deadline, "the URL did not expire"
        await asyncio.sleep(0.2)  # polling the store's clock, not synchronising
    assert code == 403


# ------------------------------------------------------------------ what fileshare refuses


@pytest.mark.parametrize(
    ("stored", "content_type", "code"),
    [
        (b"%PDF-1.4 exact!", PDF, "size_mismatch"),
        (b"%PDF-1.4 other", PDF, "digest_mismatch"),
        (b"%PDF-1.4 exact", "text/html", "type_mismatch"),
    ],
)
async def test_an_object_that_is_not_the_intents_is_rejected_and_deleted(
    env: Env, stored: bytes, content_type: str, code: str
) -> None:
    """Written around the URL (with the store's own credentials), as a misbehaving store
    or a leaked key could: the ingestion checks size, type and checksum itself."""
    issued = await intent(env, b"%PDF-1.4 exact")
    env.s3.put_object(
        Bucket=env.settings.unscanned_bucket,
        Key=DIRECT_PREFIX + issued["id"],
        Body=stored,
        ContentType=content_type,
    )
    resp = await complete(env, issued)
    assert resp.status == 200
    done = await resp.json()
    assert (done["state"], done["code"]) == ("rejected", code)
    await env.assert_nothing_left()
    assert (await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)).status == 409


async def test_a_bad_intent_is_a_422_and_records_nothing(env: Env) -> None:
    for body in (
        {"contentType": PDF},
        {"contentType": PDF, "size": -1},
        {"contentType": PDF, "size": "12"},
        {"contentType": "not a type", "size": 1},
        {"contentType": PDF, "size": 1, "sha256": "ABC"},
        {"contentType": PDF, "size": 1, "name": "../x"},
        {"contentType": PDF, "size": 1, "extra": True},
    ):
        resp = await env.client.post("/v1/uploads", json=body, headers=ALICE)
        assert resp.status == 422, (body, await resp.text())
    big = {"contentType": PDF, "size": env.settings.max_upload_size + 1}
    resp = await env.client.post("/v1/uploads", json=big, headers=ALICE)
    assert resp.status == 413
    issued = await env.client.app[AUDIT].query(AuditQuery(action=str(Action.URL_ISSUE)))
    assert all(r.event.result != "success" for r in issued)


# ------------------------------------------------------------------ triggers and races


async def test_the_reconciler_ingests_an_upload_nobody_completed(env: Env) -> None:
    data = pdf(70_000)
    issued = await intent(env, data)
    assert curl_put(issued, data) == 200
    # An object under the prefix that no intent handed out is removed, not ingested.
    env.s3.put_object(
        Bucket=env.settings.unscanned_bucket, Key=f"{DIRECT_PREFIX}{'f' * 32}", Body=b"stray"
    )
    # (The app's own reconciler may be at it too, from its first round at start-up.)
    await env.client.app[DIRECT].reconcile()
    assert (await settled(env, issued))["state"] == "clean"
    assert await file_uploads(env, issued["fileId"]) == 1
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data
    assert await env.unscanned_keys() == []


async def test_an_upload_whose_url_expired_unused_is_expired(env: Env) -> None:
    issued = await intent(env, b"never sent")
    direct = env.client.app[DIRECT]
    assert await direct.reconcile() == 0  # not yet expired: left alone
    real = direct.clock
    direct.clock = lambda: real() + timedelta(seconds=env.settings.direct_url_ttl, hours=1)
    await direct.reconcile()
    done = await status(env, issued)
    assert (done["state"], done["code"]) == ("expired", "expired")
    # A PUT that still arrives is no upload any more: the next round removes it.
    assert curl_put(issued, b"never sent") == 200
    await direct.reconcile()
    assert await env.unscanned_keys() == []


async def test_two_replicas_completing_one_upload_ingest_it_once(make_env: Any) -> None:
    first: Env = await make_env()
    second: Env = await make_env()  # same index, same buckets: another replica
    data = pdf(9 * 1024 * 1024)
    issued = await intent(first, data)
    assert curl_put(issued, data) == 200
    answers = await asyncio.gather(
        complete(first, issued),
        complete(second, issued),
        first.client.app[DIRECT].reconcile(),
        second.client.app[DIRECT].reconcile(),
    )
    for resp in answers[:2]:
        assert resp.status in (200, 202), await resp.text()
    assert (await settled(first, issued))["state"] == "clean"
    assert await file_uploads(first, issued["fileId"]) == 1
    verdict_rows = await first.client.app[AUDIT].query(AuditQuery(action=str(Action.FILE_UPLOAD)))
    assert len([r for r in verdict_rows if r.event.file_id == issued["fileId"]]) == 1
    assert len(await first.permanent_keys()) == 1
    assert await first.unscanned_keys() == []


# ------------------------------------------------------------------ downloads by redirect


async def test_a_download_redirects_to_a_presigned_get_that_works_and_expires(
    make_env: Any,
) -> None:
    env: Env = await make_env(redirect_ttl=2)
    data = pdf(200_000)
    resp = await env.client.post(
        "/v1/files",
        data=data,
        params={"name": "Röntgen 1.pdf"},
        headers={**ALICE, "Content-Type": PDF},
    )
    file_id = (await resp.json())["id"]
    streamed = await env.client.get(f"/v1/files/{file_id}", headers=ALICE)
    assert streamed.status == 200  # streaming stays the default
    moved = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "true"}, headers=ALICE, allow_redirects=False
    )
    assert moved.status == 302
    assert moved.headers["Cache-Control"] == "no-store"
    target = moved.headers["Location"]
    assert target.startswith(env.settings.s3_endpoint or "")
    async with aiohttp.ClientSession() as plain:
        async with plain.get(target) as got:
            assert got.status == 200
            assert await got.read() == data
            assert got.headers["Content-Type"] == PDF
            assert "filename*=UTF-8''R%C3%B6ntgen%201.pdf" in got.headers["Content-Disposition"]
        deadline = time.monotonic() + 30
        while True:
            async with plain.get(target) as late:
                if late.status == 403:
                    break
            assert time.monotonic() < deadline, "the presigned GET did not expire"
            await asyncio.sleep(0.25)  # polling the store's clock
    # Somebody else's file is still not found, redirect or not.
    other = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "true"}, headers=BOB, allow_redirects=False
    )
    assert other.status == 404
    bad = await env.client.get(f"/v1/files/{file_id}", params={"redirect": "yes"}, headers=ALICE)
    assert bad.status == 400


async def test_the_deployment_can_make_redirects_the_default(make_env: Any) -> None:
    env: Env = await make_env(download_redirect=True)
    resp = await env.client.post("/v1/files", data=b"hello", headers=ALICE)
    file_id = (await resp.json())["id"]
    moved = await env.client.get(f"/v1/files/{file_id}", headers=ALICE, allow_redirects=False)
    assert moved.status == 302
    streamed = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "false"}, headers=ALICE
    )
    assert await streamed.read() == b"hello"


async def test_storage_that_cannot_sign_refuses_direct_uploads(make_env: Any) -> None:
    env: Env = await make_env(storage="local", s3_endpoint=None)
    await assert_cannot_sign(env)


async def assert_cannot_sign(env: Env) -> None:
    """A store that cannot sign: no direct uploads (501), and downloads are streamed even
    when a redirect is asked for."""
    resp = await env.client.post("/v1/uploads", json={"contentType": PDF, "size": 3}, headers=ALICE)
    assert resp.status == 501
    assert (await resp.json())["code"] == "direct_uploads_unavailable"
    up = await env.client.post("/v1/files", data=b"abc", headers=ALICE)
    file_id = (await up.json())["id"]
    streamed = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "true"}, headers=ALICE, allow_redirects=False
    )
    assert streamed.status == 200  # nothing to sign with: streamed
    assert await streamed.read() == b"abc"


# ------------------------------------------------------------------ multipart plans

MiB = 1024 * 1024


@pytest.fixture
async def multipart_env(make_env: Any) -> Env:
    env: Env = await make_env(direct_put_max=MiB, direct_part_size=5 * MiB)
    return env


async def put_part(part: dict[str, Any], data: bytes) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.put(part["url"], data=data, headers=part["headers"]) as resp,
    ):
        return resp.status


def slices(issued: dict[str, Any], data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    found, start = [], 0
    for part in issued["parts"]:
        found.append((part, data[start : start + part["size"]]))
        start += part["size"]
    assert start == len(data)
    return found


async def test_a_large_upload_gets_a_part_plan_fileshare_completes(multipart_env: Env) -> None:
    env = multipart_env
    data = pdf(11 * MiB + 3)
    issued = await intent(env, data)
    assert "upload" not in issued
    assert [p["size"] for p in issued["parts"]] == [5 * MiB, 5 * MiB, MiB + 3]
    assert issued["partSize"] == 5 * MiB
    parts = slices(issued, data)
    first, first_bytes = parts[0]
    assert await put_part(first, first_bytes[:-1]) == 403  # each part's length is signed
    for part, chunk in reversed(parts[1:]):  # any order
        assert await put_part(part, chunk) == 200
    early = await complete(env, issued)
    assert early.status == 409
    assert (await early.json())["code"] == "upload_incomplete"
    assert await put_part(first, first_bytes) == 200
    resp = await complete(env, issued)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["state"] == "clean"
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []


async def test_eicar_buried_in_a_part_is_infected_and_nothing_is_left(multipart_env: Env) -> None:
    env = multipart_env
    data = bytearray(pdf(10 * MiB + 100))
    data[5 * MiB + 1000 : 5 * MiB + 1000 + len(EICAR)] = EICAR  # inside part 2
    issued = await intent(env, bytes(data))
    for part, chunk in slices(issued, bytes(data)):
        assert await put_part(part, chunk) == 200
    done = await (await complete(env, issued)).json()
    assert done["state"] == "infected"
    assert "EICAR" in done["signature"]
    await env.assert_nothing_left()


async def test_the_reconciler_completes_or_expires_a_part_plan(multipart_env: Env) -> None:
    env = multipart_env
    whole = pdf(6 * MiB)
    finished = await intent(env, whole)
    for part, chunk in slices(finished, whole):
        assert await put_part(part, chunk) == 200
    partial_data = pdf(6 * MiB)
    partial = await intent(env, partial_data)
    part, chunk = slices(partial, partial_data)[0]
    assert await put_part(part, chunk) == 200
    direct = env.client.app[DIRECT]
    real = direct.clock
    direct.clock = lambda: real() + timedelta(seconds=env.settings.direct_url_ttl, hours=1)
    await direct.reconcile()
    # Every part was there: completed and ingested, though nobody called for it.
    assert (await settled(env, finished))["state"] == "clean"
    got = await env.client.get(f"/v1/files/{finished['fileId']}", headers=ALICE)
    assert await got.read() == whole
    # Parts missing: expired, and its parts are gone with it.
    assert (await settled(env, partial))["state"] == "expired"
    assert env.open_multipart_uploads() == []
    assert await env.unscanned_keys() == []


# ------------------------------------------------------------------ browser forms


async def post_form(issued: dict[str, Any], data: bytes, **changed: str) -> int:
    form = aiohttp.FormData()
    for name, value in {**issued["form"]["fields"], **changed}.items():
        form.add_field(name, value)
    form.add_field("file", data, filename="scan.pdf", content_type=PDF)
    async with (
        aiohttp.ClientSession() as http,
        http.post(issued["form"]["url"], data=form) as resp,
    ):
        return resp.status


async def test_a_browser_form_posts_under_the_policy_and_is_ingested(env: Env) -> None:
    data = pdf(40_000)
    issued = await intent(env, data, form=True)
    assert "upload" not in issued
    assert issued["form"]["method"] == "POST"
    assert await post_form(issued, data + b"x") in (400, 403)  # content-length-range
    assert await post_form(issued, data[:-1]) in (400, 403)
    assert await post_form(issued, data, key=f"{DIRECT_PREFIX}{'e' * 32}") == 403
    assert await env.unscanned_keys() == []
    assert await post_form(issued, data) in (200, 201, 204)
    done = await (await complete(env, issued)).json()
    assert done["state"] == "clean"
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data


# ------------------------------------------------------------------ what is read is what is promoted

#: Two blocks with one MD5 (Wang and Yu's collision, 2004): an ETag cannot tell them apart.
MD5_A = bytes.fromhex(
    "d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f89"
    "55ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5b"
    "d8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0"
    "e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70"
)
MD5_B = bytes.fromhex(
    "d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f89"
    "55ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5b"
    "d8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0"
    "e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70"
)


@pytest.mark.parametrize("form", [False, True])
async def test_bytes_swapped_under_the_same_etag_are_never_promoted(env: Env, form: bool) -> None:
    """The staged object's version is its ETag, an MD5. Another upload to the same URL with
    other bytes of that MD5, after they were read and before they are copied, must not put
    unscanned bytes in the permanent bucket: the PUT cannot replace an object (If-None-Match),
    and a form's object is copied to a key nobody can write before it is read."""
    suffix = b" padding " * 1000
    scanned, swapped = MD5_A + suffix, MD5_B + suffix
    assert hashlib.md5(scanned).digest() == hashlib.md5(swapped).digest()
    # Collision blocks are no PDF: declared as what they are, raw bytes.
    issued = await intent(
        env, scanned, sha256=None, form=form, contentType="application/octet-stream"
    )
    send = post_form if form else (lambda i, d: asyncio.to_thread(curl_put, i, d))
    assert await send(issued, scanned) in (200, 204)
    storage = env.storage
    real = storage.begin_copy
    second: list[int] = []

    async def swap_then_copy(*args: Any, **kwargs: Any) -> Any:
        if args[2] == env.settings.permanent_bucket:  # the promotion, after the read
            second.append(await send(issued, swapped))
        return await real(*args, **kwargs)

    storage.begin_copy = swap_then_copy  # type: ignore[method-assign]
    done = await (await complete(env, issued)).json()
    assert second, "the swap was never attempted"
    if not form:
        assert second == [412]  # the store refused to replace the object
    assert done["state"] == "clean"
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    body = await got.read()
    meta = await (
        await env.client.get(f"/v1/files/{issued['fileId']}/metadata", headers=ALICE)
    ).json()
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()  # what is served is what was hashed
    assert body == scanned


# ------------------------------------------------------------------ retries and their budget


async def test_early_completions_cost_no_attempt_and_a_scanner_outage_backs_off(
    make_env: Any,
) -> None:
    """Nothing listens where clamd should be: every ingestion fails closed. Completions
    before the bytes were there are not attempts; each failure waits out a doubling backoff;
    after the last attempt the upload is failed and its bytes are kept (the staging
    lifecycle rule's), never promoted."""
    env: Env = await make_env(clamd=ClamdAddress(host="127.0.0.1", port=free_port()))
    data = pdf(20_000)
    issued = await intent(env, data)
    for _ in range(3):
        assert (await complete(env, issued)).status == 409  # upload_incomplete: no attempt
    assert curl_put(issued, data) == 200
    first = await complete(env, issued)
    assert first.status == 503
    assert (await first.json())["code"] == "scanner_unavailable"
    # Backing off: the next completion finds nobody may take it yet.
    waiting = await complete(env, issued)
    assert waiting.status == 202
    direct = env.client.app[DIRECT]
    real = direct.clock
    for minutes in (1, 3, 7, 15):
        direct.clock = lambda m=minutes: real() + timedelta(minutes=m)
        await direct.reconcile()
    done = await status(env, issued)
    assert (done["state"], done["code"]) == ("failed", "scanner_unavailable")
    assert "5 attempts" in done["detail"]
    assert await env.permanent_keys() == []
    assert await env.unscanned_keys() == [DIRECT_PREFIX + issued["id"]]  # kept, not lost
    await direct.reconcile()  # the next round keeps them too...
    assert await env.unscanned_keys() == [DIRECT_PREFIX + issued["id"]]
    keep = env.settings.staging_max_age
    direct.clock = lambda: real() + timedelta(minutes=16, seconds=keep)
    await direct.reconcile()  # ...until the staging max age has passed
    assert await env.unscanned_keys() == []


async def test_a_form_upload_is_ingested_after_a_failed_attempt(env: Env) -> None:
    """The first attempt's set-aside copy is still there when the second one runs (a
    scanner failure patched in after the copy: a real one cannot be timed to fall there)."""
    data = pdf(40_000)
    issued = await intent(env, data, form=True)
    assert await post_form(issued, data) in (200, 201, 204)
    direct = env.client.app[DIRECT]
    real_ingest = direct.pipeline.ingest_staged
    attempts: list[int] = []

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise errors.ScannerUnavailable()
        return await real_ingest(*args, **kwargs)

    direct.pipeline.ingest_staged = failing_once  # type: ignore[method-assign]
    assert (await complete(env, issued)).status == 503
    real = direct.clock
    direct.clock = lambda: real() + timedelta(minutes=2)  # past the backoff
    done = await (await complete(env, issued)).json()
    assert (done["state"], len(attempts)) == ("clean", 2)
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data
    assert await env.unscanned_keys() == []  # neither the object nor its copy is left


async def test_a_file_put_under_the_future_id_meanwhile_makes_the_upload_rejected(
    env: Env,
) -> None:
    data = pdf(10_000)
    issued = await intent(env, data)
    other = b"the owner's own bytes"
    put = await env.client.put(f"/v1/files/{issued['fileId']}", data=other, headers=ALICE)
    assert put.status == 201
    assert curl_put(issued, data) == 200
    done = await (await complete(env, issued)).json()
    assert (done["state"], done["code"]) == ("rejected", "file_id_taken")
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == other
    assert len(await env.permanent_keys()) == 1  # the ingestion's promoted copy is removed
    assert await env.unscanned_keys() == []


async def test_a_redirect_is_audited_as_a_url_issued(env: Env) -> None:
    resp = await env.client.post("/v1/files", data=b"hello", headers=ALICE)
    file_id = (await resp.json())["id"]
    moved = await env.client.get(
        f"/v1/files/{file_id}", params={"redirect": "true"}, headers=ALICE, allow_redirects=False
    )
    assert moved.status == 302
    rows = await env.client.app[AUDIT].query(AuditQuery(action=str(Action.URL_ISSUE)))
    [row] = [r for r in rows if r.event.file_id == file_id]
    assert row.event.detail["action"] == "download"
    assert moved.headers["Location"] not in str(row.event.detail)


async def test_the_owner_lists_their_uploads_with_their_states(env: Env) -> None:
    clean = pdf(2000)
    first = await intent(env, clean)
    assert curl_put(first, clean) == 200
    assert (await (await complete(env, first)).json())["state"] == "clean"
    waiting = await intent(env, b"still to come")
    more = [await intent(env, b"and more %d" % i) for i in range(3)]
    infected = b"%PDF " + EICAR
    bad = await intent(env, infected)
    assert curl_put(bad, infected) == 200
    assert (await (await complete(env, bad)).json())["state"] == "infected"
    resp = await env.client.get("/v1/uploads", params={"pageSize": "5"}, headers=ALICE)
    page = await resp.json()
    assert [u["id"] for u in page["items"]] == [first["id"], waiting["id"]] + [
        m["id"] for m in more
    ]
    rest = await env.client.get(
        "/v1/uploads", params={"offsetKey": page["nextOffsetKey"]}, headers=ALICE
    )
    [last] = (await rest.json())["items"]
    assert (last["id"], last["state"]) == (bad["id"], "infected")
    assert "EICAR" in last["signature"]
    pending = await env.client.get("/v1/uploads", params={"state": "pending"}, headers=ALICE)
    assert [u["id"] for u in (await pending.json())["items"]] == [waiting["id"]] + [
        m["id"] for m in more
    ]
    others = await env.client.get("/v1/uploads", headers=BOB)
    assert (await others.json())["items"] == []  # another owner's are not theirs
    bad_query = await env.client.get("/v1/uploads", params={"state": "done"}, headers=ALICE)
    assert bad_query.status == 400
