"""Upload and download through the whole service, on every backend, real clamd."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path

import aiohttp
import pytest

from fileshare.config import ClamdAddress
from tests.e2e.conftest import ALICE, BOB, MAX_UPLOAD, PART, Env
from tests.servers import free_port
from tests.sniff_files import dicom, pdf

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TESTFILES = Path("/usr/share/clamav-testfiles")


async def upload(env: Env, data: bytes, **kwargs: object) -> aiohttp.ClientResponse:
    headers = dict(ALICE)
    headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
    return await env.client.post("/v1/files", data=data, headers=headers, **kwargs)  # type: ignore[arg-type]


async def download(
    env: Env, file_id: str, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    return await env.client.get(f"/v1/files/{file_id}", headers={**ALICE, **(headers or {})})


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
async def test_raw_round_trip_is_byte_identical(env: Env, size: int) -> None:
    # A DICOM file where one fits (its preamble and "DICM" are checked); raw bytes below.
    ctype = "application/dicom" if size >= 200 else "application/octet-stream"
    data = dicom(size) if size >= 200 else os.urandom(size)
    resp = await upload(env, data, headers={"Content-Type": ctype}, params={"name": "scan.dcm"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["size"] == size
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["contentType"] == ctype
    assert body["name"] == "scan.dcm"
    assert body["url"] == f"https://files.example.test/v1/files/{body['id']}"
    assert resp.headers["Location"] == body["url"]
    attachment = body["attachment"]
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert attachment == {
        "contentType": ctype,
        "url": body["url"],
        "size": size,
        "hash": attachment["hash"],
        "title": "scan.dcm",
        "creation": body["created"],
    }
    got = await download(env, body["id"])
    assert got.status == 200
    assert await got.read() == data
    assert got.headers["Content-Type"] == ctype
    assert got.headers["ETag"] == f'"{body["sha256"]}"'
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert 'filename="scan.dcm"' in got.headers["Content-Disposition"]
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []


async def test_large_upload_round_trip(env: Env) -> None:
    data = os.urandom(64 * 1024 * 1024)
    resp = await upload(env, data)
    assert resp.status == 201, await resp.text()
    file_id = (await resp.json())["id"]
    got = await download(env, file_id)
    assert hashlib.sha256(await got.read()).digest() == hashlib.sha256(data).digest()
    assert await env.unscanned_keys() == []


async def test_multipart_form_round_trip(env: Env) -> None:
    data = pdf(PART + 12345)
    # Raw UTF-8 in the quoted filename, as browsers send it.
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("note", "ignored")
    form.add_field("file", data, filename="été report.pdf", content_type="application/pdf")
    resp = await env.client.post("/v1/files", data=form, headers=ALICE)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["name"], body["contentType"], body["size"]) == (
        "été report.pdf",
        "application/pdf",
        len(data),
    )
    got = await download(env, body["id"])
    assert await got.read() == data
    assert "filename*=UTF-8''%C3%A9t%C3%A9%20report.pdf" in got.headers["Content-Disposition"]


async def test_streamed_body_without_length(env: Env) -> None:
    data = os.urandom(2 * PART + 3)

    async def gen() -> object:
        for i in range(0, len(data), 300_000):
            yield data[i : i + 300_000]

    resp = await upload(env, gen())  # type: ignore[arg-type]
    assert resp.status == 201, await resp.text()
    assert await (await download(env, (await resp.json())["id"])).read() == data


async def test_reupload_is_deduplicated_without_a_second_promotion(env: Env) -> None:
    data = os.urandom(PART + 1)
    first = await upload(env, data, params={"name": "a.bin"})
    assert first.status == 201
    key = (await env.permanent_keys())[0]
    before = await env.storage.head(env.settings.permanent_bucket, key)
    again = await upload(env, data, params={"name": "a.bin"})
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]  # a retry, same record
    renamed = await upload(env, data, params={"name": "b.bin"})
    assert renamed.status == 201  # a new record of the same content
    assert (await renamed.json())["id"] != (await first.json())["id"]
    after = await env.storage.head(env.settings.permanent_bucket, key)
    assert after.version == before.version  # not rewritten
    assert await env.permanent_keys() == [key]
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []


async def test_two_owners_share_one_blob_but_not_records(env: Env) -> None:
    data = os.urandom(1000)
    mine = await (await upload(env, data)).json()
    theirs = await env.client.post("/v1/files", data=data, headers=BOB)
    # 201 for bob too: answering 200 would tell him that someone already stored these bytes.
    assert theirs.status == 201
    assert (await theirs.json())["id"] != mine["id"]
    assert len(await env.permanent_keys()) == 1
    assert (await env.client.get(f"/v1/files/{mine['id']}", headers=BOB)).status == 404
    assert (await env.client.get(f"/v1/files/{mine['id']}/metadata", headers=BOB)).status == 404


@pytest.mark.parametrize("where", ["alone", "buried"])
async def test_eicar_is_rejected_and_nothing_is_left(env: Env, where: str) -> None:
    if where == "alone":
        data = EICAR
    else:
        rng = random.Random(7)
        noise = os.urandom(20 * 1024 * 1024)
        at = rng.randrange(len(noise))
        data = noise[:at] + EICAR + noise[at:]
    resp = await upload(env, data)
    assert resp.status == 422
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = await resp.json()
    assert problem["code"] == "infected"
    assert problem["signature"]
    assert problem["signature"] in problem["detail"]
    await env.assert_nothing_left()


@pytest.mark.parametrize("name", ["clam.zip", "clam.7z", "clam.tar.gz", "clam.pdf"])
async def test_clamav_testfiles_are_rejected(env: Env, name: str) -> None:
    resp = await upload(env, (TESTFILES / name).read_bytes())
    assert resp.status == 422
    await env.assert_nothing_left()


async def test_download_ranges_and_conditionals(env: Env) -> None:
    data = os.urandom(10_000)
    body = await (await upload(env, data)).json()
    part = await download(env, body["id"], {"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes 100-199/10000"
    assert await part.read() == data[100:200]
    tail = await download(env, body["id"], {"Range": "bytes=-10"})
    assert await tail.read() == data[-10:]
    bad = await download(env, body["id"], {"Range": "bytes=10000-"})
    assert bad.status == 416
    assert bad.headers["Content-Range"] == "bytes */10000"
    assert (await bad.json())["code"] == "range_not_satisfiable"
    cached = await download(env, body["id"], {"If-None-Match": f'"{body["sha256"]}"'})
    assert cached.status == 304
    stale = await download(env, body["id"], {"Range": "bytes=0-0", "If-Range": '"other"'})
    assert stale.status == 200
    assert await stale.read() == data
    head = await env.client.head(f"/v1/files/{body['id']}", headers=ALICE)
    assert head.status == 200
    assert head.headers["Content-Length"] == "10000"
    meta = await env.client.get(f"/v1/files/{body['id']}/metadata", headers=ALICE)
    assert (await meta.json())["sha256"] == body["sha256"]


async def test_over_limit_content_length_is_refused_before_reading(env: Env) -> None:
    reader, writer = await _raw_connection(env)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {ALICE['Authorization']}\r\n".encode()
        + f"Content-Length: {MAX_UPLOAD + 1}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")  # answered with no body byte sent
    assert head.startswith(b"HTTP/1.1 413")
    assert b"application/problem+json" in head
    writer.close()
    await env.assert_nothing_left()


async def test_body_over_the_limit_without_length_is_refused(make_env: object) -> None:
    env = await make_env(max_upload_size=PART)  # type: ignore[operator]

    async def gen() -> object:
        for _ in range(3):
            yield os.urandom(PART // 2 + 1)

    resp = await upload(env, gen())  # type: ignore[arg-type]
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"
    await env.assert_nothing_left()


async def test_malformed_multipart_is_400(env: Env) -> None:
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
    resp = await upload(env, body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert resp.status == 400
    assert (await resp.json())["code"] == "malformed_multipart"
    no_boundary = await upload(env, b"abc", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status == 400
    await env.assert_nothing_left()


async def test_two_file_parts_are_refused(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"one", filename="one.txt")
    form.add_field("other", b"two", filename="two.txt")
    resp = await env.client.post("/v1/files", data=form, headers=ALICE)
    assert resp.status == 400
    await env.assert_nothing_left()


@pytest.mark.parametrize(
    "params_or_header",
    [
        {"params": {"name": "../../etc/passwd"}},
        {"params": {"name": "a\x00b"}},
        {"params": {"name": "x" * 300}},
        {"headers": {"Content-Disposition": "attachment; filename*=UTF-8''%FF.bin"}},
    ],
)
async def test_bad_names_are_400_and_nothing_is_stored(
    env: Env, params_or_header: dict[str, dict[str, str]]
) -> None:
    resp = await upload(env, b"data", **params_or_header)  # type: ignore[arg-type]
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_file_name"
    await env.assert_nothing_left()


async def test_authentication_is_required(env: Env) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": "Basic eA=="},
    ):
        resp = await env.client.post("/v1/files", data=b"x", headers=headers)
        assert resp.status == 401
        problem = await resp.json()
        assert problem["code"] == "unauthenticated"
        assert problem["requestId"]
        assert "WWW-Authenticate" in resp.headers
    await env.assert_nothing_left()


async def test_unknown_ids_and_routes_are_problem_json(env: Env) -> None:
    resp = await download(env, "does-not-exist")
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"
    other = await env.client.get("/v2/nothing", headers=ALICE)
    assert other.status == 404
    assert other.headers["Content-Type"].startswith("application/problem+json")
    method = await env.client.delete("/healthz")
    assert method.status == 405


async def test_request_id_is_propagated(env: Env) -> None:
    resp = await env.client.get("/v1/files/nope", headers={**ALICE, "X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    assert (await resp.json())["requestId"] == "abc-123"


async def _raw_connection(env: Env) -> tuple[object, object]:
    import asyncio

    server = env.client.server
    return await asyncio.open_connection(server.host, server.port)  # type: ignore[return-value]


def content_digest(data: bytes) -> dict[str, str]:
    return {
        "Content-Digest": f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
    }


async def test_declared_digest_lets_a_reupload_skip_staging_and_scanning(make_env: object) -> None:
    env = await make_env()  # type: ignore[operator]
    data = os.urandom(PART + 99)
    first = await upload(env, data, headers=content_digest(data))
    assert first.status == 201
    # Same buckets and index, but no scanner at all: a verified re-upload never needs one.
    blind = await make_env(clamd=ClamdAddress(host="127.0.0.1", port=free_port()))  # type: ignore[operator]
    again = await upload(blind, data, headers=content_digest(data))
    assert again.status == 200, await again.text()
    assert (await again.json())["sha256"] == (await first.json())["sha256"]
    # Without the digest the same upload must be scanned, and the scanner is down.
    unverified = await upload(blind, data)
    assert unverified.status == 503
    assert await env.unscanned_keys() == []
    assert len(await env.permanent_keys()) == 1


@pytest.mark.parametrize("existing", [False, True])
async def test_body_not_matching_its_digest_is_refused(env: Env, existing: bool) -> None:
    claimed = os.urandom(PART + 5)
    if existing:
        assert (await upload(env, claimed)).status == 201
    before = await env.permanent_keys()
    resp = await upload(env, os.urandom(PART + 5), headers=content_digest(claimed))
    assert resp.status == 400
    assert (await resp.json())["code"] == "digest_mismatch"
    assert await env.permanent_keys() == before
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []


@pytest.mark.parametrize(
    "header", ["sha-256=abc", "sha-256=:not base64!:", "sha-256=:AAAA:", "garbage"]
)
async def test_malformed_digest_is_400(env: Env, header: str) -> None:
    resp = await upload(env, b"data", headers={"Content-Digest": header})
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_digest"
    await env.assert_nothing_left()


async def test_more_bad_input_is_a_clear_4xx(env: Env) -> None:
    import gzip

    data = os.urandom(5000)
    body = await (await upload(env, data)).json()
    huge = await download(env, body["id"], {"Range": "bytes=" + "9" * 5000 + "-"})
    assert huge.status == 200  # a range no file can have is ignored, as RFC 9110 allows
    assert await huge.read() == data
    packed = await upload(env, gzip.compress(b"x" * 1000), headers={"Content-Encoding": "gzip"})
    assert packed.status == 415
    assert (await packed.json())["code"] == "unsupported_content_encoding"
    bidi = await upload(env, b"x", params={"name": "invoice\u202efdp.exe"})
    assert bidi.status == 400
    assert (await bidi.json())["code"] == "invalid_file_name"
    for bad_id in ("a%00b", "%ED%A0%80", "../" + body["id"], body["id"].upper()):
        resp = await env.client.get(f"/v1/files/{bad_id}", headers=ALICE)
        assert resp.status == 404, bad_id
        assert (await resp.json())["code"] == "not_found"
    assert len(await env.permanent_keys()) == 1
