"""No PHI in the logs or the metrics of a live ``fileshare serve`` (issue 15).

One server process (local storage, SQLite, the test clamd, an external token issuer) logs
at DEBUG in JSON to a file while every kind of route is driven with patient-like names,
tags, metadata values, a person's token subject and a patient's owner id: in query
strings, paths, multipart and Content-Disposition file names, JSON bodies, refused and
infected uploads. Afterwards neither the log file nor ``/metrics`` may hold any of them,
in any spelling a request carries them (as sent, percent-encoded, ``+`` for spaces, JSON
escaped). File ids and sha256s are opaque ids and may be logged; the test's ids are bland.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from yarl import URL

from tests.e2e.conftest import ALICE, ALICE_KEY, BOB, BOB_KEY
from tests.idp import Idp
from tests.servers import EICAR, free_port
from tests.sniff_files import png

AUDIENCE = "fileshare-phi"

# The markers: nothing of these may reach a log line or a metric.
NAME = "Jane-Doe-MRN-4471-biopsy.pdf"
SPACED_NAME = "Jane Doe MRN 4471 ultrasound.png"
ACCENTED_NAME = "Zoë Müller HIV-Befund.pdf"
PATCHED_NAME = "Richard-Roe-psychiatric-eval.pdf"
INFECTED_NAME = "Mary-Major-lab-results.pdf"
TOKEN_NAME = "John-Q-Public-xray.dcm"
TAG = "dx-hiv-positive"
OTHER_TAG = "pt-jane-doe-4471"
BAD_TAG = "dx hiv/positive stage"  # a space and a slash: refused
BAD_NAME = "Roe/Richard-path-trick.pdf"  # a slash: refused
SECOND = png(2000)  # an image, as its type says
META_KEY = "next-of-kin-Richard-Roe"
META = {"patient": "Jane Doe", "mrn": "MRN-88231-Q", "dx": "Stage IV carcinoma", META_KEY: "x"}
SUBJECT = "jane.doe@example.org"  # a person, as an identity provider's ``sub``
OWNER = "patient-55190-Doe"  # a patient's namespace, from the token's owner claim
UNAUTH_NAME = "Peter-Parker-oncology.pdf"
STRAY = "Jane-Doe-no-such-route"
MARKERS = (
    NAME,
    SPACED_NAME,
    ACCENTED_NAME,
    PATCHED_NAME,
    INFECTED_NAME,
    TOKEN_NAME,
    TAG,
    OTHER_TAG,
    BAD_TAG,
    BAD_NAME,
    META_KEY,
    *(v for k, v in META.items() if k != META_KEY),
    SUBJECT,
    OWNER,
    UNAUTH_NAME,
    STRAY,
)
#: Client-chosen file ids: opaque ids, which logs may name (the README says so).
PUT_ID = "report-2024-05"


def spellings(marker: str) -> set[str]:
    """How a marker can appear in a log line, lower-cased: as sent, in a URL (either space
    encoding, either case of hex), and inside a JSON string (``ensure_ascii`` escapes)."""
    forms = {
        marker,
        quote(marker, safe=""),
        quote(marker, safe="/"),
        quote_plus(marker),
        json.dumps(marker)[1:-1],
    }
    return {f.lower() for f in forms}


@dataclass
class Server:
    base: str
    proc: asyncio.subprocess.Process
    log: Path


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    async with Idp(audience=AUDIENCE) as server:
        server.add_key("ES256")
        yield server


@pytest.fixture
async def server(tmp_path: Path, clamd: Any, idp: Idp) -> AsyncIterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuer = {
        "issuer": idp.issuer,
        "jwks_url": idp.jwks_url,
        "audience": AUDIENCE,
        "owner_claim": "patient",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")},
        "FILESHARE_STORAGE": "local",
        "FILESHARE_DATA_DIR": str(tmp_path / "data"),
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_PORT": str(port),
        "FILESHARE_PUBLIC_BASE_URL": base,
        "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "FILESHARE_ADMINS": "bob",
        "FILESHARE_JWT_ISSUERS": json.dumps([issuer]),
        "FILESHARE_LOG_FORMAT": "json",
        "FILESHARE_LOG_LEVEL": "DEBUG",
        "FILESHARE_SHUTDOWN_GRACE": "1",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fileshare", "serve", env=env, stdout=log, stderr=log
        )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while await _status(http, f"{base}/readyz") != 200:
                assert proc.returncode is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "fileshare did not become ready"
                await asyncio.sleep(0.05)
        yield Server(base, proc, log_path)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _expect(resp: aiohttp.ClientResponse, status: int) -> Any:
    async with resp:
        body = await resp.read()
        assert resp.status == status, body[:500]
        return json.loads(body) if body and "json" in resp.content_type else body


async def _drive(http: aiohttp.ClientSession, idp: Idp) -> str:
    """Every kind of route, with the markers wherever a client may put them; the metrics
    text at the end."""
    # Uploads: the name in the query, in a multipart part, in Content-Disposition (RFC 6266
    # extended form, for the non-ASCII one), and under a client-chosen id.
    first = await _expect(
        await http.post("/v1/files", params={"name": NAME}, data=b"first", headers=ALICE), 201
    )
    form = aiohttp.FormData()
    form.add_field("file", SECOND, filename=SPACED_NAME, content_type="image/png")
    second = await _expect(await http.post("/v1/files", data=form, headers=ALICE), 201)
    disposition = f"attachment; filename*=UTF-8''{quote(ACCENTED_NAME)}"
    await _expect(
        await http.post(
            "/v1/files",
            data=b"third",
            headers={**ALICE, "Content-Disposition": disposition},
        ),
        201,
    )
    await _expect(
        await http.put(f"/v1/files/{PUT_ID}", params={"name": NAME}, data=b"put", headers=ALICE),
        201,
    )
    # Tags: created, attached, searched (exact and wildcard), listed, detached, deleted.
    for tag in (TAG, OTHER_TAG):
        await _expect(await http.post("/v1/tags", json={"name": tag}, headers=ALICE), 201)
    await _expect(await http.put(f"/v1/files/{PUT_ID}/tags/{TAG}", headers=ALICE), 200)
    await _expect(await http.put(f"/v1/files/{first['id']}/tags/{OTHER_TAG}", headers=ALICE), 200)
    found = await _expect(
        await http.get("/v1/search/files", params={"tag": TAG, "name": NAME}, headers=ALICE),
        200,
    )
    assert [f["id"] for f in found["items"]] == [PUT_ID]
    found = await _expect(
        await http.get("/v1/search/files", params={"tagLike": "pt-jane%"}, headers=ALICE), 200
    )
    assert [f["id"] for f in found["items"]] == [first["id"]]
    await _expect(await http.get("/v1/files", params={"name": SPACED_NAME}, headers=ALICE), 200)
    await _expect(await http.get("/v1/tags", headers=ALICE), 200)
    # Metadata: patched (name, tags, metadata), read back; the file read whole and in part.
    patch = {"name": PATCHED_NAME, "metadata": META, "tags": [TAG, OTHER_TAG]}
    await _expect(
        await http.patch(
            f"/v1/files/{second['id']}",
            data=json.dumps(patch),
            headers={**ALICE, "Content-Type": "application/merge-patch+json"},
        ),
        200,
    )
    meta = await _expect(await http.get(f"/v1/files/{second['id']}/metadata", headers=ALICE), 200)
    assert meta["metadata"] == META
    assert await _expect(await http.get(f"/v1/files/{second['id']}", headers=ALICE), 200) == (
        SECOND
    )
    ranged = await http.get(f"/v1/files/{second['id']}", headers={**ALICE, "Range": "bytes=1-2"})
    assert await _expect(ranged, 206) == SECOND[1:3]
    await _expect(await http.head(f"/v1/files/{PUT_ID}", headers=ALICE), 200)
    await _expect(await http.delete(f"/v1/files/{PUT_ID}/tags/{TAG}", headers=ALICE), 200)
    await _expect(await http.delete(f"/v1/tags/{OTHER_TAG}", headers=ALICE), 204)
    # Refusals whose answers may echo the input back to its sender, never into a log.
    bad_tag = URL(f"/v1/files/{PUT_ID}/tags/{quote(BAD_TAG, safe='')}", encoded=True)
    await _expect(await http.put(bad_tag, headers=ALICE), 400)
    await _expect(
        await http.post("/v1/files", params={"name": BAD_NAME}, data=b"x", headers=ALICE), 400
    )
    await _expect(await http.get("/v1/files", params={UNAUTH_NAME: "1"}, headers=ALICE), 400)
    await _expect(await http.post("/v1/tags", json={"name": BAD_TAG}, headers=ALICE), 422)
    await _expect(await http.get(f"/v1/nowhere/{STRAY}", headers=ALICE), 404)
    await _expect(await http.get(f"/v1/nowhere/{STRAY}"), 401)
    await _expect(await http.get("/v1/files", params={"name": UNAUTH_NAME}), 401)
    wrong = {"Authorization": "Bearer not-a-key-0123456789"}
    await _expect(await http.get("/v1/files", params={"name": UNAUTH_NAME}, headers=wrong), 401)
    # The infected path: refused with a verdict, which is logged and audited.
    infected = await _expect(
        await http.post("/v1/files", params={"name": INFECTED_NAME}, data=EICAR, headers=ALICE),
        422,
    )
    assert infected["code"] == "infected"
    # A person's token (no client claim: its subject is all that names the caller), acting
    # for a patient's namespace; an administrator looking at that namespace and its trail.
    token = idp.token(sub=SUBJECT, patient=OWNER, scope="files:read files:write")
    person = {"Authorization": f"Bearer {token}"}
    mine = await _expect(
        await http.post("/v1/files", params={"name": TOKEN_NAME}, data=b"mine", headers=person),
        201,
    )
    await _expect(await http.get("/v1/files", headers=person), 200)
    listed = await _expect(await http.get("/v1/files", params={"owner": OWNER}, headers=BOB), 200)
    assert [f["id"] for f in listed["items"]] == [mine["id"]]
    grant = URL(f"/v1/admin/grants/alice/{quote(OWNER)}", encoded=True)
    await _expect(await http.put(grant, json={"access": "read"}, headers=BOB), 200)
    await _expect(await http.get("/v1/admin/grants", params={"owner": OWNER}, headers=BOB), 200)
    trail = await _expect(
        await http.get("/v1/audit", params={"subject": SUBJECT, "owner": OWNER}, headers=BOB),
        200,
    )
    assert trail["items"], "the trail names the person: that is where identities belong"
    await _expect(await http.delete(grant, headers=BOB), 204)
    # Deletes, the last change to each record.
    for file_id in (PUT_ID, first["id"], second["id"]):
        await _expect(await http.delete(f"/v1/files/{file_id}", headers=ALICE), 204)
    metrics = await _expect(await http.get("/metrics"), 200)
    assert isinstance(metrics, bytes)
    return metrics.decode()


async def test_no_phi_reaches_the_logs_or_the_metrics(server: Server, idp: Idp) -> None:
    sent: list[str] = []

    async def count(_session: object, _context: object, params: Any) -> None:
        sent.append(params.url.path)

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(count)
    async with aiohttp.ClientSession(server.base, trace_configs=[tracing]) as http:
        metrics = await _drive(http, idp)
    server.proc.terminate()
    assert await asyncio.wait_for(server.proc.wait(), 20) == 0
    text = server.log.read_text(encoding="utf-8")
    lines = text.splitlines()
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]}")
    # The scan below must have something to scan: the run was logged, request by request,
    # with the ids and outcomes an operator needs.
    requests = [e for e in events if e["event"] == "request"]
    # One line per request (``/metrics`` is left out of the request log).
    assert len(requests) == len([p for p in sent if p != "/metrics"])
    assert any(e["event"] == "scan.infected" for e in events)
    assert any(e.get("file_id") == PUT_ID for e in events)
    assert any(e.get("audit") for e in events)
    leaks = []
    for marker in MARKERS:
        for form in spellings(marker):
            for where, haystack in (("log", text.lower()), ("metrics", metrics.lower())):
                if form in haystack:
                    at = haystack.index(form)
                    leaks.append(
                        f"{marker!r} in the {where} as {form!r}: {haystack[at - 200 : at + 60]}"
                    )
    assert not leaks, "\n".join(leaks)
    # Requests are named by their route, and by the client acting when it is a service.
    assert any(e.get("route") == "/v1/files/{file_id}/tags/{tag}" for e in requests)
    assert {e.get("client") for e in requests} >= {"alice", "bob"}
