"""The pages for people: ``/docs`` (Swagger UI, vendored) rendered by a real headless
Chromium with every request outside the server made to fail, and the problem type pages that
every problem answer's ``type`` points at. Public, like /openapi.json."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import shutil
import signal
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fileshare.api import docs
from fileshare.api.openapi import document, error_codes
from fileshare.api.problem_types import problem_types
from tests.e2e.conftest import ALICE, Env

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

#: Kept after the run (gitignored) so a person can look at what the page showed.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: Chromium in CI runs on 2 cores; it is killed, never waited on, past this.
BROWSER_TIMEOUT = 120.0
WINDOW = (1280, 2000)
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _operations() -> set[tuple[str, str]]:
    """Every operation, and every webhook (Swagger UI draws one as its name)."""
    described = document("https://x.test")
    return {
        (method, path)
        for section in ("paths", "webhooks")
        for path, item in described[section].items()
        for method in item
        if method != "parameters"
    }


def _chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is missing: bash scripts/setup.sh installs Debian's package"
    return found


async def _render(url: str, workdir: Path, screenshot: Path) -> tuple[str, str, Path]:
    """One Chromium launch: the DOM after the page's scripts ran, its console log, its net
    log; the screenshot written to ``screenshot``."""
    net_log = workdir / "net-log.json"
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={workdir / 'profile'}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # Every name resolves to nothing but the server's address: a CDN fetch would fail,
        # and Chromium's own background requests never leave the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--enable-logging=stderr",  # console messages (CSP violations, failed loads)
        "--v=0",
        f"--log-net-log={net_log}",
        # Virtual time runs ahead while the page is idle, so this is not a wait.
        "--virtual-time-budget=20000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        _chromium(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(workdir)},
        start_new_session=True,  # its own process group: the helpers die with it
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT} s") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode(), err.decode(errors="replace"), net_log


def _page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs of the requests the page (its document, or anything it initiated) started;
    Chromium's own background requests have no page initiator."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start or "url" not in params:
            continue
        if params.get("initiator") == origin or params.get("request_type") == "main frame":
            urls.append(params["url"])
    return urls


def _check_png(data: bytes, size: tuple[int, int]) -> None:
    """A PNG whose chunks' CRCs hold, of the given size, whose pixels inflate to the size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, dict[bytes, bytes]()
    idat = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.setdefault(kind, body)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height) == size
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    assert depth == 8
    assert len(zlib.decompress(idat)) == height * (1 + width * channels)  # a filter byte a row
    assert b"IEND" in chunks


async def test_chromium_renders_every_operation_from_the_server_alone(
    env: Env, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "docs.png"
    screenshot.unlink(missing_ok=True)
    url = str(env.client.make_url(docs.DOCS_PATH))
    origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"

    dom, log, net_log = await _render(url, tmp_path, screenshot)
    (ARTIFACTS / "docs.html").write_text(dom)

    # Swagger UI read the document as OpenAPI 3.1 and drew one block per operation.
    assert "OAS 3.1" in dom, dom[-2000:]
    drawn = set(re.findall(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]*)"', dom, re.S))
    assert drawn == _operations()
    # Under the page's CSP (no inline script, nothing from elsewhere) nothing was refused
    # and nothing failed to load.
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [
        line for line in console if "Content Security Policy" in line or "Failed to load" in line
    ], console
    # Everything the page fetched came from this server, and it needed all of it.
    requested = _page_requests(net_log, origin)
    assert [u for u in requested if not u.startswith(origin + "/")] == []
    wanted = {"/docs", "/openapi.json", "/docs/static/swagger-ui-bundle.js", "/docs/static/docs.js"}
    assert wanted <= {urlsplit(u).path for u in requested}

    data = screenshot.read_bytes()
    assert len(data) > 50_000, "a blank page compresses to a few KiB"
    _check_png(data, WINDOW)


def _static_references(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page)


async def test_the_docs_page_and_its_assets_answer_without_credentials(env: Env) -> None:
    resp = await env.client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    # The page runs no inline script, and its policy would refuse one.
    assert re.findall(r"<script(?![^>]*\ssrc=)", page) == []
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "unsafe" not in csp
    assert "connect-src 'self' https://files.example.test;" in csp  # "Try it out"

    referenced = _static_references(page)
    assert {r.rsplit("/", 1)[1] for r in referenced} == set(docs.ASSETS)
    for path in referenced:
        asset = await env.client.get(path)
        assert asset.status == 200, path
        assert asset.content_type == CONTENT_TYPES[Path(path).suffix], path
        assert "max-age=" in asset.headers["Cache-Control"]
        body = await asset.read()
        assert body, path
        if path.endswith("/swagger-ui-bundle.js"):
            # Swagger UI 5 or later: the first to render OpenAPI 3.1.
            version = re.search(rb'PACKAGE_VERSION:"(\d+)\.', body)
            assert version, "no Swagger UI version in the bundle"
            assert int(version.group(1)) >= 5
            etag = asset.headers["ETag"]
            again = await env.client.get(path, headers={"If-None-Match": etag})
            assert again.status == 304

    # Only the files the page uses: the package's other files (Swagger Editor) are not served.
    for name in ("swagger-editor-bundle.js", "nothing.js"):
        missing = await env.client.get(f"/docs/static/{name}")
        assert missing.status == 404
        assert missing.content_type == "application/problem+json"


async def test_every_problem_type_has_its_page(env: Env) -> None:
    catalogue = problem_types()
    assert list(catalogue) == error_codes()
    for code, problem in catalogue.items():
        resp = await env.client.get(f"/problems/{code}")
        assert resp.status == 200, code
        assert resp.content_type == "text/html"
        page = await resp.text()
        assert f"<code>{code}</code>" in page
        assert f"<h1>{html.escape(problem.title)}</h1>" in page
        if problem.status is not None:
            assert f"<dd>{problem.status} " in page
        assert html.escape(problem.explanation.split("`", 1)[0]) in page

    unknown = await env.client.get("/problems/no_such_code")
    assert unknown.status == 404
    assert unknown.content_type == "application/problem+json"
    body = await unknown.json()
    assert body["type"] == "about:blank"
    assert body["status"] == 404


async def test_the_type_of_every_problem_answer_resolves(env: Env) -> None:
    """A domain error (401), and the framework's own (unknown route, wrong method)."""
    answers = [
        await env.client.get("/v1/files"),
        await env.client.get("/v1/no-such-route", headers=ALICE),
        await env.client.patch("/v1/tags", headers=ALICE),
    ]
    seen = []
    for resp in answers:
        problem: dict[str, Any] = await resp.json()
        assert problem["type"] == f"https://files.example.test/problems/{problem['code']}"
        page = await env.client.get(urlsplit(problem["type"]).path)
        assert page.status == 200, problem
        assert f"<code>{problem['code']}</code>" in await page.text()
        seen.append((resp.status, problem["code"]))
    assert seen == [(401, "unauthenticated"), (404, "not_found"), (405, "method_not_allowed")]
