"""The management API on every backend: list, PUT with client ids, PATCH, DELETE (physical),
tags and search — real storage, real clamd, SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any
from urllib.parse import quote

import pytest

from fileshare.api.openapi import document
from tests.e2e.conftest import ALICE, BOB, Env
from tests.e2e.test_upload import EICAR, content_digest, download, upload
from tests.sniff_files import png

JSON_PATCH = {"Content-Type": "application/merge-patch+json"}
#: The fields of a present, clean file: the documented File schema (``signature`` is only
#: there for infected content).
FILE_FIELDS = set(document("https://x.test")["components"]["schemas"]["File"]["properties"]) - {
    "signature"
}


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code, body
    return body


async def put(env: Env, file_id: str, data: bytes, **headers: str) -> Any:
    return await env.client.put(
        f"/v1/files/{file_id}", data=data, headers={**ALICE, **headers}, params={"name": "p.bin"}
    )


async def listing(env: Env, path: str = "/v1/files", **params: Any) -> dict[str, Any]:
    resp = await env.client.get(path, headers=ALICE, params=params)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def walk(env: Env, path: str = "/v1/files", **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = await listing(env, path, **params)
        found += page["items"]
        if "nextOffsetKey" not in page:
            return found
        assert len(page["items"]) == int(params.get("pageSize", 50))
        params["offsetKey"] = page["nextOffsetKey"]


async def referenced_keys(env: Env) -> set[str]:
    """The objects the index's records point at."""
    from fileshare.app import INDEX

    index: Any = env.client.app[INDEX]
    from sqlalchemy import select

    from fileshare.index.tables import contents

    def keys(conn: Any) -> set[str]:
        return {k for (k,) in conn.execute(select(contents.c.object_key)) if k is not None}

    found: set[str] = await index.run(keys)
    return found


# -------------------------------------------------------------------------------- shape


async def test_every_answer_has_the_same_file_shape(env: Env) -> None:
    posted = await (await upload(env, b"shape", params={"name": "s.txt"})).json()
    putted = await (await put(env, "client-id-1", b"other")).json()
    meta = await (await env.client.get(f"/v1/files/{posted['id']}/metadata", headers=ALICE)).json()
    patched = await (
        await env.client.patch(
            f"/v1/files/{posted['id']}", json={"tags": ["a"]}, headers={**ALICE, **JSON_PATCH}
        )
    ).json()
    listed = (await listing(env))["items"]
    searched = (await listing(env, "/v1/search/files", tag="a"))["items"]
    for body in (posted, putted, meta, patched, *listed, *searched):
        assert set(body) == FILE_FIELDS, body
        assert body["state"] == "clean"
        assert body["present"] is True
        assert body["attachment"]["url"] == body["url"]
    assert meta["tags"] == []
    assert patched["tags"] == ["a"]
    assert searched == [patched]


# -------------------------------------------------------------------------------- listing


async def test_list_pages_through_every_file_once(env: Env) -> None:
    ids = []
    for i in range(12):
        resp = await upload(env, b"file %d" % i, params={"name": f"f{i}.txt"})
        ids.append((await resp.json())["id"])
    await env.client.post("/v1/files", data=b"bob's", headers=BOB)
    found = await walk(env, pageSize=5)
    assert [f["id"] for f in found] == ids
    first = await listing(env, pageSize=5)
    assert len(first["items"]) == 5
    assert "nextOffsetKey" in first
    everything = await listing(env, pageSize=100)
    assert "nextOffsetKey" not in everything
    assert [f["id"] for f in everything["items"]] == ids


async def test_list_filters(env: Env) -> None:
    a = await (await upload(env, b"a", params={"name": "x.txt"})).json()
    b = await (
        await upload(env, png(), params={"name": "y.png"}, headers={"Content-Type": "image/png"})
    ).json()
    assert [f["id"] for f in (await listing(env, name="x.txt"))["items"]] == [a["id"]]
    assert [f["id"] for f in (await listing(env, contentType="image/*"))["items"]] == [b["id"]]
    inclusive = await listing(env, **{"from": b["created"]})
    assert [f["id"] for f in inclusive["items"]] == [b["id"]]
    exclusive = await listing(env, to=b["created"])
    assert [f["id"] for f in exclusive["items"]] == [a["id"]]


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": "4"},
        {"pageSize": "101"},
        {"pageSize": "ten"},
        {"pageSize": ""},
        {"pageSize": "-5"},
        {"offsetKey": "garbage!"},
        {"offsetKey": "eyJub3QiOiAiYSBjdXJzb3IifQ"},
        {"from": "yesterday"},
        {"from": "2024-01-02", "to": "2024-01-01"},
        {"contentType": "image"},
        {"contentType": "%/%"},
        {"pagesize": "10"},
        {"tag": "x"},  # a search parameter, not a list one
        {"from": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"to": "9999-12-31T23:59:59-01:00"},  # after 9999 in UTC
        {"offsetKey": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwgIngiXQ"},  # the same, as a cursor
        {"offsetKey": base64.urlsafe_b64encode(b"[" * 5000).decode()},  # nested too deep
        {"name": "a\x00b"},
        {"name": "a\nb"},
    ],
)
async def test_bad_list_parameters_are_400(env: Env, params: dict[str, str]) -> None:
    resp = await env.client.get("/v1/files", headers=ALICE, params=params)
    await problem(resp, 400, "invalid_parameter")


async def test_hostile_parameters_are_only_values(env: Env) -> None:
    await upload(env, b"kept", params={"name": "kept.txt"})
    for name in ("x' OR '1'='1", "'; DROP TABLE files; --", "%", "_"):
        assert (await listing(env, name=name))["items"] == []
    resp = await env.client.get("/v1/files", headers=ALICE, params={"name": "a\\b"})
    await problem(resp, 400, "invalid_parameter")  # no stored name holds a backslash
    for pattern in ("%' OR 1=1 --", "a_b%"):
        resp = await env.client.get("/v1/search/files", headers=ALICE, params={"tagLike": pattern})
        assert resp.status in (200, 400)
        if resp.status == 200:
            assert (await resp.json())["items"] == []
    assert len((await listing(env))["items"]) == 1


# -------------------------------------------------------------------------------- PUT


async def test_put_creates_replaces_and_frees_the_old_bytes(env: Env) -> None:
    created = await put(env, "lab-report-7", b"version one")
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["id"] == "lab-report-7"
    assert created.headers["Location"].endswith("/v1/files/lab-report-7")
    assert created.headers["ETag"] == f'"{hashlib.sha256(b"version one").hexdigest()}"'
    old_keys = await env.permanent_keys()
    replaced = await put(env, "lab-report-7", b"version two")
    assert replaced.status == 200
    again = await replaced.json()
    assert again["created"] == body["created"]
    assert again["updated"] > body["updated"]
    assert await (await download(env, "lab-report-7")).read() == b"version two"
    # no versioning: the first bytes were nobody else's, so they are gone from the store
    keys = await env.permanent_keys()
    assert len(keys) == 1
    assert set(keys).isdisjoint(old_keys)
    assert await env.unscanned_keys() == []


async def test_put_multipart_and_the_same_id_for_two_owners(env: Env) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", b"multi", filename="m.txt", content_type="text/plain")
    mine = await env.client.put("/v1/files/shared-name", data=form, headers=ALICE)
    assert mine.status == 201, await mine.text()
    theirs = await env.client.put("/v1/files/shared-name", data=b"bob's", headers=BOB)
    assert theirs.status == 201
    assert await (await download(env, "shared-name")).read() == b"multi"


async def test_put_conditions(env: Env) -> None:
    etag = f'"{hashlib.sha256(b"one").hexdigest()}"'
    await problem(await put(env, "cond", b"one", **{"If-Match": etag}), 412, "precondition_failed")
    assert (await put(env, "cond", b"one", **{"If-None-Match": "*"})).status == 201
    before = await env.permanent_keys()
    await problem(
        await put(env, "cond", b"two", **{"If-None-Match": "*"}), 412, "precondition_failed"
    )
    await problem(
        await put(env, "cond", b"two", **{"If-Match": '"' + "0" * 64 + '"'}),
        412,
        "precondition_failed",
    )
    assert await env.permanent_keys() == before  # refused before a byte was stored
    assert await env.unscanned_keys() == []
    ok = await put(env, "cond", b"two", **{"If-Match": f'"{"0" * 64}", {etag}'})
    assert ok.status == 200
    await problem(await put(env, "cond", b"x", **{"If-None-Match": etag}), 400, "bad_request")
    # A request its headers show to be bad is that, whatever its preconditions (RFC 9110
    # section 13.2.1): the name, then the media type.
    named = await env.client.put(
        "/v1/files/cond", data=b"x", headers={**ALICE, "If-None-Match": "*"}, params={"name": ""}
    )
    await problem(named, 400, "invalid_file_name")
    typed = await put(env, "cond", b"x", **{"If-None-Match": "*", "Content-Type": "nonsense"})
    await problem(typed, 415, "unsupported_media_type")


@pytest.mark.parametrize("bad", ["-starts-with-dash", "a" * 129, "sp ace", "ü", ".hidden", "a%2Fb"])
async def test_put_with_an_invalid_id_is_400(env: Env, bad: str) -> None:
    resp = await env.client.put(f"/v1/files/{quote(bad, safe='%')}", data=b"x", headers=ALICE)
    await problem(resp, 400, "invalid_file_id")
    await env.assert_nothing_left()


async def test_infected_put_leaves_the_record_alone(env: Env) -> None:
    assert (await put(env, "keep-me", b"clean bytes")).status == 201
    await problem(await put(env, "keep-me", EICAR), 422, "infected")
    assert await (await download(env, "keep-me")).read() == b"clean bytes"


# -------------------------------------------------------------------------------- PATCH


async def test_patch_name_metadata_and_tags(env: Env) -> None:
    fid = (await (await upload(env, b"p", params={"name": "old.txt"})).json())["id"]
    url = f"/v1/files/{fid}"
    headers = {**ALICE, **JSON_PATCH}
    resp = await env.client.patch(
        url, json={"name": "new.txt", "metadata": {"study": "S1", "n": 3}}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "new.txt"
    assert body["attachment"]["title"] == "new.txt"
    assert body["metadata"] == {"study": "S1", "n": 3}
    body = await (
        await env.client.patch(url, json={"metadata": {"n": None}, "tags": ["x"]}, headers=headers)
    ).json()
    assert body["metadata"] == {"study": "S1"}
    assert body["tags"] == ["x"]
    got = await download(env, fid)
    assert 'filename="new.txt"' in got.headers["Content-Disposition"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/merge-patch+json", 400, "invalid_json"),
        (b"[1, 2]", "application/merge-patch+json", 400, "invalid_json"),
        (b'{"size": 5}', "application/merge-patch+json", 422, "validation_failed"),
        (b'{"name": 5}', "application/merge-patch+json", 422, "validation_failed"),
        (b'{"metadata": [1]}', "application/merge-patch+json", 422, "validation_failed"),
        (b'{"tags": ["bad tag"]}', "application/merge-patch+json", 422, "validation_failed"),
        (b'{"tags": "x"}', "application/merge-patch+json", 422, "validation_failed"),
        (b'{"name": "a/b\\u0000"}', "application/json", 400, "invalid_file_name"),
        (
            b'{"metadata": {"big": "' + b"x" * 17000 + b'"}}',
            "application/json",
            422,
            "validation_failed",
        ),
        (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b"[" * 5000, "application/json", 400, "invalid_json"),
        (b'{"metadata": {"a": "\\ud800"}}', "application/json", 422, "validation_failed"),
        (b"{" + b" " * 70000 + b"}", "application/json", 413, "payload_too_large"),
    ],
)
async def test_bad_patches_are_refused_and_change_nothing(
    env: Env, body: bytes, content_type: str, status: int, code: str
) -> None:
    before = await (await upload(env, b"p", params={"name": "same.txt"})).json()
    resp = await env.client.patch(
        f"/v1/files/{before['id']}", data=body, headers={**ALICE, "Content-Type": content_type}
    )
    await problem(resp, status, code)
    after = await (await env.client.get(f"/v1/files/{before['id']}/metadata", headers=ALICE)).json()
    assert after == before


# -------------------------------------------------------------------------------- DELETE


async def test_delete_is_physical_and_frees_shared_bytes_last(env: Env) -> None:
    data = os.urandom(3000)
    mine = await (await upload(env, data)).json()
    theirs = await (await env.client.post("/v1/files", data=data, headers=BOB)).json()
    assert len(await env.permanent_keys()) == 1
    resp = await env.client.delete(f"/v1/files/{mine['id']}", headers=ALICE)
    assert resp.status == 204
    await problem(await download(env, mine["id"]), 404, "not_found")
    await problem(
        await env.client.delete(f"/v1/files/{mine['id']}", headers=ALICE), 404, "not_found"
    )
    # bob's record still uses the bytes
    assert len(await env.permanent_keys()) == 1
    got = await env.client.get(f"/v1/files/{theirs['id']}", headers=BOB)
    assert await got.read() == data
    assert (await env.client.delete(f"/v1/files/{theirs['id']}", headers=BOB)).status == 204
    assert await env.permanent_keys() == []
    assert await referenced_keys(env) == set()
    # uploading the bytes again after they were deleted stores them anew
    again = await upload(env, data)
    assert again.status == 201
    assert await (await download(env, (await again.json())["id"])).read() == data


async def test_delete_and_upload_of_the_same_bytes_race_safely(env: Env) -> None:
    """Every round, alice deletes the only record of some bytes while bob uploads the same
    bytes. Bob either gets a record whose content is really there, or a clean 503 to retry
    — never a record pointing at a deleted object."""
    outcomes: dict[int, int] = {}
    for round_ in range(30):
        # Sizes from 1 KiB to 1.5 MiB move bob's last byte (where dedup is decided)
        # before, around and after the delete; every third upload declares its digest
        # (decided before the first byte); the order of the two requests alternates.
        data = os.urandom(1024 + (round_ * 52_429) % (1536 * 1024))
        headers = dict(BOB)
        if round_ % 3 == 0:
            headers |= content_digest(data)
        fid = (await (await upload(env, data)).json())["id"]
        remove = env.client.delete(f"/v1/files/{fid}", headers=ALICE)
        add = env.client.post("/v1/files", data=data, headers=headers)
        if round_ % 2:
            uploaded, deleted = await asyncio.gather(add, remove)
        else:
            deleted, uploaded = await asyncio.gather(remove, add)
        assert deleted.status == 204
        outcomes[uploaded.status] = outcomes.get(uploaded.status, 0) + 1
        if uploaded.status == 201:
            bob_id = (await uploaded.json())["id"]
            got = await env.client.get(f"/v1/files/{bob_id}", headers=BOB)
            assert got.status == 200, f"round {round_}: {await got.text()}"
            assert await got.read() == data
            assert (await env.client.delete(f"/v1/files/{bob_id}", headers=BOB)).status == 204
        else:
            await problem(uploaded, 503, "content_changed")
    assert set(outcomes) <= {201, 503}
    # and nothing is left behind: no object, no reference
    assert await env.permanent_keys() == []
    assert await referenced_keys(env) == set()
    assert await env.unscanned_keys() == []


async def test_concurrent_uploads_of_the_same_new_bytes_keep_one_object(env: Env) -> None:
    data = os.urandom(5000)
    answers = await asyncio.gather(
        *(env.client.post("/v1/files", data=data, headers=h) for h in (ALICE, BOB) * 3)
    )
    assert all(a.status in (200, 201) for a in answers)
    assert len(await env.permanent_keys()) == 1
    assert await referenced_keys(env) == set(await env.permanent_keys())


# -------------------------------------------------------------------------------- tags


async def test_tag_routes(env: Env) -> None:
    resp = await env.client.post("/v1/tags", json={"name": "radiology"}, headers=ALICE)
    assert resp.status == 201, await resp.text()
    assert (
        await env.client.post("/v1/tags", json={"name": "radiology"}, headers=ALICE)
    ).status == 200
    for bad in (
        {"name": "has space"},
        {"name": ""},
        {"name": "x" * 65},
        {"other": 1},
        {"name": 5},
        {"name": ".."},
        {"name": "[" * 10},
    ):
        await problem(
            await env.client.post("/v1/tags", json=bad, headers=ALICE), 422, "validation_failed"
        )
    unicode_tag = await env.client.post("/v1/tags", json={"name": "Röntgen"}, headers=ALICE)
    assert unicode_tag.headers["Location"].endswith("/v1/tags/R%C3%B6ntgen")
    await env.client.delete("/v1/tags/R%C3%B6ntgen", headers=ALICE)
    fid = (await (await upload(env, b"t")).json())["id"]
    tag = "Befund-Ärzte"
    resp = await env.client.put(f"/v1/files/{fid}/tags/{quote(tag)}", headers=ALICE)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["tags"] == [tag]
    names = [t["name"] for t in (await listing(env, "/v1/tags"))["items"]]
    assert names == sorted(["radiology", tag])
    bobs = await env.client.get("/v1/tags", headers=BOB)
    assert (await bobs.json())["items"] == []
    await problem(
        await env.client.put(f"/v1/files/{fid}/tags/bad%25tag", headers=ALICE), 400, "invalid_tag"
    )
    resp = await env.client.delete(f"/v1/files/{fid}/tags/{quote(tag)}", headers=ALICE)
    assert (await resp.json())["tags"] == []
    assert (await env.client.delete("/v1/tags/radiology", headers=ALICE)).status == 204
    await problem(await env.client.delete("/v1/tags/radiology", headers=ALICE), 404, "not_found")


async def test_tag_list_pages(env: Env) -> None:
    for i in range(7):
        await env.client.post("/v1/tags", json={"name": f"t{i}"}, headers=ALICE)
    found = await walk(env, "/v1/tags", pageSize=5)
    assert [t["name"] for t in found] == [f"t{i}" for i in range(7)]
    await problem(
        await env.client.get("/v1/tags", headers=ALICE, params={"offsetKey": "!!"}),
        400,
        "invalid_parameter",
    )


async def test_search(env: Env) -> None:
    ids = {}
    for tags in (["a_b"], ["axb", "ct"], ["CT-Scan"], []):
        name = "+".join(tags) or "none"
        body = await (await upload(env, name.encode(), params={"name": name})).json()
        for tag in tags:
            await env.client.put(f"/v1/files/{body['id']}/tags/{quote(tag)}", headers=ALICE)
        ids[name] = body["id"]

    async def found(**params: str) -> list[str]:
        return [f["id"] for f in (await listing(env, "/v1/search/files", **params))["items"]]

    assert await found(tag="a_b") == [ids["a_b"]]
    assert await found(tagLike="a_b") == [ids["a_b"]]  # "_" is not a wildcard
    assert await found(tagLike="a%b") == [ids["a_b"], ids["axb+ct"]]
    assert await found(tagLike="ct%") == [ids["axb+ct"], ids["CT-Scan"]]  # case-insensitive
    assert await found(tag="ct") == [ids["axb+ct"]]  # exact is exact
    assert await found(present="true") == list(ids.values())
    assert await found(present="false") == []
    assert await found(tag="ct", name="nope") == []
    await problem(
        await env.client.get("/v1/search/files", headers=ALICE, params={"present": "yes"}),
        400,
        "invalid_parameter",
    )
    await problem(
        await env.client.get("/v1/search/files", headers=ALICE, params={"tagLike": "a b"}),
        400,
        "invalid_parameter",
    )


# -------------------------------------------------------------------------------- ownership


async def test_another_owners_file_is_404_on_every_route(env: Env) -> None:
    fid = (await (await upload(env, b"alice's")).json())["id"]
    await env.client.put(f"/v1/files/{fid}/tags/mine", headers=ALICE)
    base = f"/v1/files/{fid}"
    calls = [
        ("GET", base, {}),
        ("HEAD", base, {}),
        ("GET", base + "/metadata", {}),
        ("PATCH", base, {"json": {"name": "stolen"}}),
        ("DELETE", base, {}),
        ("PUT", base + "/tags/x", {}),
        ("DELETE", base + "/tags/mine", {}),
    ]
    for method, path, kwargs in calls:
        resp = await env.client.request(method, path, headers=BOB, **kwargs)
        assert resp.status == 404, (method, path, resp.status)
    found = await env.client.get("/v1/search/files", headers=BOB, params={"tag": "mine"})
    assert (await found.json())["items"] == []
    # bob's PUT on that id makes bob's own file, alice's is untouched
    assert (await env.client.put(base, data=b"bob's", headers=BOB)).status == 201
    assert await (await download(env, fid)).read() == b"alice's"
    meta = await (await env.client.get(base + "/metadata", headers=ALICE)).json()
    assert meta["tags"] == ["mine"]


async def test_the_sweeper_removes_objects_no_commit_claimed(env: Env) -> None:
    """An upload that promoted its object and then crashed (or lost its commit) left an
    object only the doomed list knows: the sweeper removes it once the grace has passed."""
    from datetime import UTC, datetime, timedelta

    from fileshare.api.keys import SERVICE
    from fileshare.app import INDEX
    from fileshare.models import new_object_key
    from fileshare.pipeline import PROMOTION_GRACE
    from fileshare.service import SWEEP_MARGIN

    kept = await (await upload(env, b"kept")).json()
    index, service = env.client.app[INDEX], env.client.app[SERVICE]
    key = new_object_key("cd" * 32)
    now = datetime.now(UTC)
    assert await index.claim("cd" * 32, key, now + PROMOTION_GRACE) is None
    await env.storage.put(env.settings.permanent_bucket, key, b"orphan")
    assert key in await env.permanent_keys()
    assert await service.sweep() == 0  # its upload may still be waiting for a verdict
    service.clock = lambda: now + PROMOTION_GRACE + SWEEP_MARGIN + timedelta(seconds=1)
    assert await service.sweep() == 1
    assert key not in await env.permanent_keys()
    assert await index.doomed(now + timedelta(days=1), 10) == []
    assert await (await download(env, kept["id"])).read() == b"kept"


async def test_a_file_carries_at_most_50_tags(env: Env) -> None:
    fid = (await (await upload(env, b"tagged")).json())["id"]
    for i in range(50):
        resp = await env.client.put(f"/v1/files/{fid}/tags/t{i}", headers=ALICE)
        assert resp.status == 200
    await problem(
        await env.client.put(f"/v1/files/{fid}/tags/one-more", headers=ALICE),
        422,
        "validation_failed",
    )
    assert (await env.client.put(f"/v1/files/{fid}/tags/t7", headers=ALICE)).status == 200


async def test_content_lost_outside_fileshare_is_stored_again(env: Env) -> None:
    """A blob deleted behind fileshare's back: the one case the index cannot know. The
    download says so (409), and the next upload of those bytes makes the record whole."""
    data = os.urandom(3000)
    body = await (await upload(env, data)).json()
    [key] = await env.permanent_keys()
    await env.storage.delete(env.settings.permanent_bucket, key)
    await problem(await download(env, body["id"]), 409, "content_not_available")
    meta = await (await env.client.get(f"/v1/files/{body['id']}/metadata", headers=ALICE)).json()
    assert meta["present"] is False
    assert "url" not in meta
    again = await env.client.post("/v1/files", data=data, headers=BOB)
    assert again.status == 201
    assert await (await download(env, body["id"])).read() == data
