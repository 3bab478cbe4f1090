"""The fault matrix (issue 14): every dependency of an upload fails at each stage of it,
on S3 and on GCS, and each cell proves the same five things:

* nothing unscanned was promoted: the permanent bucket gains nothing but content the cell
  had scanned clean, and whatever it gains is a file's content or listed for removal;
* nothing acknowledged was lost: a file uploaded before the fault downloads byte-identical;
* nothing leaked: no staging object, no open multipart upload (S3) or resumable session
  (GCS, where a Recorder counts them), the memory budget back to zero, and the scan slot
  back (the server runs with one, so the fresh upload at the end could not get it
  otherwise);
* the answer is problem+json with a stable code (503 + Retry-After, 413), or the client's
  own disappearance;
* the server serves a fresh upload afterwards.

Faults come from ``tests/faultproxy.py``, a TCP proxy between fileshare and each real
server (clamd, SeaweedFS, fake-gcs-server, PostgreSQL): delays, stalls, cuts, resets and
refusals on the live connections, at exact byte offsets. Where a fault needs to know the
shape of a store request (a 5xx on part 2, the promotion request), the contract suite's
``Recorder`` (an HTTP proxy that can answer in the store's place) picks the request out.
What only a real process shows (SIGTERM, SIGKILL and the sweeper, a handler that is not
cancelled when its client leaves) runs against ``fileshare serve``.

Next to this module, test_faults covers the same dependencies without a proxy (a clamd
killed or absent, storage down, a silent fake clamd), test_shutdown SIGTERM on local
storage and test_recovery SIGKILL mid-body on S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import web
from botocore.retries.standard import ExponentialBackoff
from sqlalchemy import Connection, select
from yarl import URL

from fileshare.app import BUDGET, INDEX
from fileshare.config import ClamdAddress, MiB, Settings
from fileshare.index import factory as index_factory
from fileshare.index.engine import open_sql_index
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import contents, doomed_objects
from fileshare.storage.base import Storage
from fileshare.storage.factory import open_storage
from tests.contract.test_gcs_specific import Recorder, recording_proxy
from tests.e2e.conftest import ALICE, PART, Env
from tests.e2e.hostile import Live, start_live
from tests.faultproxy import FaultProxy
from tests.servers import Clamd, parse_tcp_address

pytestmark = pytest.mark.parametrize("backend", ["s3", "gcs"], indirect=True)

MakeEnv = Callable[..., Awaitable[Env]]
#: Big enough for a multipart upload / resumable session and a server-side copy.
BODY = PART + 1
#: FILESHARE_SHUTDOWN_GRACE of the SIGTERM cell, seconds.
GRACE = 1
#: The index's query bound where a cell stalls PostgreSQL (production: 10 s, no setting).
INDEX_TIMEOUT = 1.0


# --------------------------------------------------------------------------- the rig


@dataclass
class Kept:
    """A file acknowledged before the fault: it must survive it."""

    id: str
    data: bytes


@dataclass
class Rig:
    env: Env
    clamd: FaultProxy
    store: FaultProxy
    index: FaultProxy
    kept: Kept
    #: The permanent bucket once ``kept`` was stored: a fault must not add to it.
    before: list[str] = field(default_factory=list)

    @property
    def app(self) -> web.Application:
        app: web.Application = self.env.client.app
        return app

    def heal(self) -> None:
        for proxy in (self.clamd, self.store, self.index):
            proxy.heal()


def _store_upstream(backend: str, request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("seaweed" if backend == "s3" else "fake_gcs")
    return str(server.endpoint)


def _endpoint(backend: str, url: str) -> dict[str, str]:
    return {"s3_endpoint": url} if backend == "s3" else {"gcs_endpoint": url}


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _via(dsn: str, proxy: FaultProxy) -> str:
    """The same DSN, through ``proxy``."""
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    netloc[-1] = proxy.address
    return urlunsplit(parts._replace(netloc="@".join(netloc)))


@pytest.fixture(autouse=True)
def no_s3_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore waits a random 0-1 s, then 0-2 s, between the attempts of a failed call; a
    cell whose store is down for a promotion, its abort and its cleanup would spend most
    of its time there. The attempts themselves are unchanged."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


@pytest.fixture
async def clamd_proxy(clamd: Any) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(*parse_tcp_address(clamd.address)) as proxy:
        yield proxy


@pytest.fixture
async def store_proxy(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(*_host_port(_store_upstream(backend, request))) as proxy:
        yield proxy


@pytest.fixture
async def index_proxy(postgres: Any) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(postgres.host, postgres.port) as proxy:
        yield proxy


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(
    monkeypatch: pytest.MonkeyPatch,
    clamd_proxy: FaultProxy,
    store_proxy: FaultProxy,
    index_proxy: FaultProxy,
    make_env: MakeEnv,
    base_settings: Any,
    backend: str,
) -> AsyncIterator[RigFactory]:
    """A fileshare whose clamd, store and index are each reached through a FaultProxy
    (the proxies are set up before, and torn down after, the app), with one file kept."""
    rigs: list[Rig] = []

    async def make(
        *, clamd: FaultProxy | None = None, index_timeout: float | None = None, **overrides: Any
    ) -> Rig:
        """``index_timeout``: the index's query bound, which has no setting."""
        clamd = clamd or clamd_proxy
        if index_timeout is not None:
            monkeypatch.setattr(
                index_factory,
                "open_sql_index",
                partial(open_sql_index, query_timeout=index_timeout),
            )
        settings: dict[str, Any] = {
            "clamd": ClamdAddress(host="127.0.0.1", port=clamd.port),
            "index_url": _via(base_settings.index_url, index_proxy),
            # One scan slot: the fresh upload at the end of a cell gets it only if the
            # fault released it.
            "clamd_max_scans": 1,
            "clamd_verdict_timeout": 10.0,
            "storage_timeout": 5.0,
            **_endpoint(backend, store_proxy.url),
            **overrides,
        }
        env = await make_env(**settings)
        data = os.urandom(64 * 1024)
        resp = await upload(env, data)
        assert resp.status == 201, await resp.text()
        kept = Kept((await resp.json())["id"], data)
        rig = Rig(env, clamd, store_proxy, index_proxy, kept, await env.permanent_keys())
        # The rig itself: the store link may be another proxy's (a Recorder's) in a cell.
        assert clamd.connections
        assert index_proxy.connections
        rigs.append(rig)
        return rig

    yield make
    # Before the apps close (their cleanup goes through the proxies too).
    for rig in rigs:
        rig.heal()
    clamd_proxy.heal()


# --------------------------------------------------------------------------- helpers


async def upload(env: Env, body: bytes | AsyncIterator[bytes]) -> aiohttp.ClientResponse:
    return await env.client.post("/v1/files", data=body, headers=ALICE)


class Gate:
    """A body sent in two halves, the second only once the test opens the gate: the
    fault lands mid-body, after the first half went through fileshare."""

    def __init__(self, data: bytes, split: int) -> None:
        self.data = data
        self.split = split
        self.first_sent = asyncio.Event()
        self.open = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        for start in range(0, self.split, MiB):
            yield self.data[start : min(start + MiB, self.split)]
        self.first_sent.set()
        await self.open.wait()
        for start in range(self.split, len(self.data), MiB):
            yield self.data[start : start + MiB]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 20.0) -> None:
    """Poll a state that lives elsewhere (a store, another task) until it holds."""
    try:
        async with asyncio.timeout(limit):
            while not await check():  # noqa: ASYNC110 - the state lives in other processes
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def assert_problem(resp: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["code"] == code, body
    if status == 503:
        assert int(resp.headers["Retry-After"]) > 0


def gcs_open_sessions(rec: Recorder) -> list[str]:
    """Resumable sessions a Recorder saw opened and never finalised or cancelled."""

    def upload_id(url: str) -> str:
        return URL(url, encoded=True).query.get("upload_id", "") if url else ""

    opened = {
        upload_id(s.reply_headers.get("Location", ""))
        for s in rec.requests("POST", r"uploadType=resumable")
        if s.status == 200
    }
    closed = {upload_id(s.path) for s in rec.requests("PUT") if s.status in (200, 201)}
    closed |= {upload_id(s.path) for s in rec.requests("DELETE") if s.status == 499}
    return sorted(opened - closed)


async def assert_intact(
    rig: Rig, *, allowed: frozenset[str] = frozenset(), fresh_size: int = 64 * 1024
) -> None:
    """The five checks of the module docstring (the answer's is the cell's own).
    ``allowed``: sha256 hex of clean content the cell may legitimately have stored (a
    client that left after sending everything)."""
    env = rig.env
    rig.heal()

    async def settled() -> bool:
        return (
            rig.app[BUDGET].in_use == 0
            and not await env.unscanned_keys()
            and not env.open_multipart_uploads()
        )

    await eventually(settled, "the budget released and nothing staged")
    added = set(await env.permanent_keys()) - set(rig.before)
    assert {key.split("/")[-1].split(".")[0] for key in added} <= allowed, added
    # Whatever was promoted is a file's content or listed for removal: never unknown.
    known = await sql_index(rig).run(_known_keys)
    assert added <= known, added - known
    got = await env.client.get(f"/v1/files/{rig.kept.id}", headers=ALICE)
    assert got.status == 200
    assert await got.read() == rig.kept.data
    fresh = os.urandom(fresh_size)
    resp = await upload(env, fresh)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["sha256"] == hashlib.sha256(fresh).hexdigest()


# --------------------------------------------------------------------------- clamd


async def test_clamd_down_at_start(make_rig: RigFactory) -> None:
    rig = await make_rig()
    rig.clamd.refuse()
    resp = await upload(rig.env, os.urandom(BODY))
    await assert_problem(resp, 503, "scanner_unavailable")
    assert rig.clamd.refused
    await assert_intact(rig)


async def test_clamd_connection_lost_mid_scan(make_rig: RigFactory) -> None:
    """The whole stream, terminator included, reached clamd; the connection dies at the
    first byte of its verdict (clamd had scanned: the answer is lost, not refused), closed
    cleanly, then with an RST."""
    rig = await make_rig()
    proxy = rig.clamd
    for fault in (proxy.cut, proxy.reset):
        proxy.when(proxy.bytes_down, "downstream", fault)
        sent = proxy.bytes_up
        data = os.urandom(BODY)
        resp = await upload(rig.env, data)
        await assert_problem(resp, 503, "scanner_unavailable")
        assert proxy.bytes_up - sent > len(data)  # the body and its framing went through
    await assert_intact(rig)


async def test_clamd_stalled_past_the_verdict_timeout(make_rig: RigFactory) -> None:
    rig = await make_rig(clamd_verdict_timeout=1.0)
    proxy = rig.clamd
    data = os.urandom(BODY)
    # Silence from clamd as the stream ends (its last bytes held): no verdict, no close.
    proxy.when(proxy.bytes_up + len(data), "upstream", proxy.stall)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await upload(rig.env, data)
    await assert_problem(resp, 503, "scanner_unavailable")
    assert loop.time() - started < 8.0  # the verdict timeout, not a hang
    await assert_intact(rig)


@pytest.fixture
async def small_clamd(tmp_path: Any) -> AsyncIterator[FaultProxy]:
    """A real clamd with StreamMaxLength 1 MiB (as test_faults'), behind a proxy."""
    with Clamd(workdir=tmp_path / "small-clamd", max_stream=1 * MiB) as small:
        async with FaultProxy(*parse_tcp_address(small.address)) as proxy:
            yield proxy


async def test_clamd_answers_the_size_limit_error(
    make_rig: RigFactory, small_clamd: FaultProxy
) -> None:
    rig = await make_rig(clamd=small_clamd)
    resp = await upload(rig.env, os.urandom(3 * MiB))
    await assert_problem(resp, 413, "payload_too_large")
    await assert_intact(rig)


# --------------------------------------------------------------------------- the store


@contextlib.asynccontextmanager
async def recorder_for(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Recorder]:
    """The contract suite's HTTP Recorder in front of the real store."""
    async with recording_proxy(_store_upstream(backend, request)) as rec:
        yield rec


def _store_error(backend: str) -> web.Response:
    if backend == "s3":
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>'
            b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
        )
        return web.Response(status=500, body=body, content_type="application/xml")
    return web.json_response({"error": {"code": 503, "message": "injected"}}, status=503)


def _is_second_part(backend: str, req: web.Request, unscanned: str) -> bool:
    """S3: UploadPart number 2 into the staging bucket; GCS: the resumable chunk that
    starts at the second part."""
    if req.method != "PUT":
        return False
    if backend == "s3":
        return (
            req.path.startswith(f"/{unscanned}/")
            and req.query.get("partNumber") == "2"
            and "x-amz-copy-source" not in req.headers
        )
    span = req.headers.get("Content-Range", "")
    return "upload_id" in req.query and span.startswith(f"bytes {PART}-")


@pytest.mark.parametrize("times", ["once", "always"])
async def test_store_5xx_on_one_part(
    make_rig: RigFactory, backend: str, request: pytest.FixtureRequest, times: str
) -> None:
    """S3 retries a failed part (botocore, three attempts): once is survived, a part that
    always fails is a 503. A GCS chunk is never retried (a resumable session would need a
    status query first): the upload fails and its session is cancelled."""
    async with recorder_for(backend, request) as rec:
        rig = await make_rig(**_endpoint(backend, rec.url))
        unscanned = rig.env.settings.unscanned_bucket
        failed: list[str] = []

        async def intercept(req: web.Request, body: bytes) -> web.StreamResponse | None:
            if _is_second_part(backend, req, unscanned) and (times == "always" or not failed):
                failed.append(req.path_qs)
                return _store_error(backend)
            return None

        rec.intercept = intercept
        data = os.urandom(2 * PART + 1)
        resp = await upload(rig.env, data)
        assert failed
        if backend == "s3" and times == "once":
            assert resp.status == 201, await resp.text()
            got = await rig.env.client.get(f"/v1/files/{(await resp.json())['id']}", headers=ALICE)
            assert await got.read() == data
            attempts = [
                seen
                for seen in rec.requests("PUT", f"^/{unscanned}/")
                if seen.query.get("partNumber") == "2"
            ]
            assert len(attempts) == 2  # the failure, then botocore's retry
            allowed = frozenset({hashlib.sha256(data).hexdigest()})
        else:
            await assert_problem(resp, 503, "storage_unavailable")
            allowed = frozenset()
        rec.intercept = None
        await assert_intact(rig, allowed=allowed)
        if backend == "gcs":
            assert gcs_open_sessions(rec) == []


def _is_promotion(backend: str, req: web.Request, permanent: str) -> bool:
    """The request that makes a scanned upload visible: S3's CompleteMultipartUpload of
    the copy assembled under the permanent key, GCS's rewrite into the permanent bucket."""
    if req.method != "POST":
        return False
    if backend == "s3":
        return req.path.startswith(f"/{permanent}/") and "uploadId" in req.query
    return f"/rewriteTo/b/{permanent}/" in req.path


@pytest.mark.parametrize("lost", ["request", "answer"])
async def test_store_unreachable_at_promotion(
    make_rig: RigFactory, backend: str, request: pytest.FixtureRequest, lost: str
) -> None:
    """The store goes away exactly as the promotion request is sent: its connection is
    reset and new ones are refused until fileshare has answered, so the upload's own
    cleanup fails too, and the sweeper removes what is left once the store is back (the
    staging object; on S3 the copy's multipart upload under the permanent key).

    ``request``: the promotion never reached the store. ``answer``: the store promoted, the
    answer was lost; the object under the permanent key is then nobody's file and is listed
    for removal (the key was listed before the promotion started)."""
    async with recorder_for(backend, request) as rec, FaultProxy(*_host_port(rec.url)) as tcp:
        rig = await make_rig(
            **_endpoint(backend, tcp.url),
            staging_max_age=2.0,
            sweep_interval=0.5,
            storage_timeout=2.0,
        )
        permanent = rig.env.settings.permanent_bucket
        promotions: list[str] = []

        async def intercept(req: web.Request, body: bytes) -> web.StreamResponse | None:
            if not _is_promotion(backend, req, permanent):
                return None
            promotions.append(req.path_qs)
            answer = await rec.forward(req, body) if lost == "answer" else None
            tcp.refuse()
            tcp.reset()  # the promotion's own connection: its answer never arrives
            return answer or _store_error(backend)

        rec.intercept = intercept
        data = os.urandom(BODY)
        resp = await upload(rig.env, data)
        await assert_problem(resp, 503, "storage_unavailable")
        assert len(promotions) == 1  # the retries found the store gone
        assert tcp.refused
        tcp.heal()
        rec.intercept = None
        sha256 = hashlib.sha256(data).hexdigest()
        added = set(await rig.env.permanent_keys()) - set(rig.before)
        if lost == "answer":
            # Promoted (and scanned clean), but no record: listed for removal.
            assert len(added) == 1
            assert sha256 in added.pop()
            doomed = await sql_index(rig).run(_doomed_keys)
            assert any(sha256 in key for key in doomed)
            listing = await rig.env.client.get("/v1/files", headers=ALICE)
            assert [f["id"] for f in (await listing.json())["items"]] == [rig.kept.id]
        else:
            assert added == set()
        await assert_intact(rig, allowed=frozenset({sha256} if lost == "answer" else ()))


def sql_index(rig: Rig) -> SqlIndex:
    """The index, to look behind the API (``SqlIndex.run``)."""
    index = rig.app[INDEX]
    assert isinstance(index, SqlIndex)
    return index


def _doomed_keys(conn: Connection) -> list[str]:
    return [str(key) for key in conn.execute(select(doomed_objects.c.object_key)).scalars()]


def _known_keys(conn: Connection) -> set[str]:
    """Permanent keys the index knows: contents' objects and those listed for removal."""
    stored = conn.execute(select(contents.c.object_key).where(contents.c.object_key.is_not(None)))
    return {str(key) for key in stored.scalars()} | set(_doomed_keys(conn))


async def test_store_slow_memory_stays_bounded(make_rig: RigFactory) -> None:
    """A store slower than the client: back-pressure, not buffering. While 64 MiB go up
    through a store link that waits before every 64 KiB, the budget's reservation stays
    within its bound and what the whole process allocates (traced) stays within twice one
    upload's reservation, half the body."""
    rig = await make_rig()
    budget = rig.app[BUDGET]
    per_upload = rig.env.settings.per_upload_memory
    rig.store.delay(0.001, "upstream")  # at most 64 MB/s: slower than the client
    size = 64 * MiB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            yield chunk

    reserved: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            reserved.append(budget.in_use)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    await done.wait()

    sampler = asyncio.create_task(sample())
    tracemalloc.start()
    try:
        started = rig.store.bytes_up
        resp = await upload(rig.env, body())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        await sampler
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["sha256"] == digest.hexdigest()
    assert rig.store.bytes_up - started >= size  # it all went through the slow link
    assert max(reserved) == per_upload <= rig.env.settings.memory_budget
    # Measured: 23.5-24.3 MiB on S3 (three 5 MiB parts as BytesIO, their growth slack,
    # the 1 MiB fan-out chunk, the test's own client and proxies), 17.5 MiB on GCS. The
    # body would be all of 64 MiB if anything buffered ahead of the store.
    assert peak < 2 * per_upload, f"peak {peak / MiB:.1f} MiB"
    await assert_intact(rig, allowed=frozenset({digest.hexdigest()}))


# --------------------------------------------------------------------------- the index


@pytest.mark.parametrize("fault", ["cut", "down", "stalled"])
async def test_index_fails_mid_upload(make_rig: RigFactory, fault: str) -> None:
    """PostgreSQL's connections fail while the body streams in; the index is next asked
    at the end of the body (to claim the content's key). ``cut``: the connections are
    closed but the server is there: the pool reconnects and the upload succeeds.
    ``down``: closed and refused; ``stalled``: silent past the query bound. Both are a 503
    before anything is promoted, and the index serves again once it is back."""
    rig = await make_rig(index_timeout=INDEX_TIMEOUT)
    data = os.urandom(BODY)
    gate = Gate(data, PART)
    task = asyncio.create_task(upload(rig.env, gate.body()))
    await gate.first_sent.wait()
    if fault == "stalled":
        rig.index.stall()
    else:
        rig.index.cut()
        if fault == "down":
            rig.index.refuse()
    loop = asyncio.get_running_loop()
    started = loop.time()
    gate.open.set()
    resp = await task
    # Two index calls fail (the claim, then the refusal's audit row), each taking about
    # twice the bound against a silent server: once the query is cancelled, SQLAlchemy
    # closes its connection gracefully, and that waits on the same silence (measured).
    assert loop.time() - started < 4 * INDEX_TIMEOUT + 3.0
    sha256 = hashlib.sha256(data).hexdigest()
    if fault == "cut":
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["sha256"] == sha256
    else:
        await assert_problem(resp, 503, "index_unavailable")
        assert await rig.env.permanent_keys() == rig.before
    await assert_intact(rig, allowed=frozenset({sha256} if fault == "cut" else ()))


async def test_index_down_at_commit(make_rig: RigFactory) -> None:
    """The index goes down after it listed the key to promote under and before the record
    is committed: the object promoted meanwhile is nobody's file, and it is listed for
    removal (so the sweeper will remove it), not left unknown."""
    rig = await make_rig()
    rig.clamd.stall("downstream")  # hold the verdict
    data = os.urandom(BODY)
    task = asyncio.create_task(upload(rig.env, data))

    async def staged() -> bool:  # the staging object exists once the key was claimed
        return bool(await rig.env.unscanned_keys())

    await eventually(staged, "the staging object")
    rig.index.cut()
    rig.index.refuse()
    rig.clamd.resume()
    resp = await task
    await assert_problem(resp, 503, "index_unavailable")
    rig.heal()
    sha256 = hashlib.sha256(data).hexdigest()
    added = set(await rig.env.permanent_keys()) - set(rig.before)
    assert len(added) == 1
    assert sha256 in next(iter(added))
    assert next(iter(added)) in await sql_index(rig).run(_doomed_keys)
    listing = await rig.env.client.get("/v1/files", headers=ALICE)
    assert [f["id"] for f in (await listing.json())["items"]] == [rig.kept.id]
    await assert_intact(rig, allowed=frozenset({sha256}))


# --------------------------------------------------------------------------- the client


async def _open_upload(env: Env, total: int) -> asyncio.StreamWriter:
    """A raw upload whose headers are sent: the test decides when the client vanishes."""
    server = env.client.server
    assert server.port is not None
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {ALICE['Authorization']}\r\n".encode()
        + f"Content-Length: {total}\r\n\r\n".encode()
    )
    await writer.drain()
    return writer


@pytest.mark.parametrize("stage", ["headers", "mid-body", "verdict", "promotion"])
async def test_client_gone(
    make_rig: RigFactory, backend: str, request: pytest.FixtureRequest, stage: str
) -> None:
    """The client's connection is aborted after its headers, in the middle of its body,
    while fileshare awaits clamd's verdict (held by a stalled clamd link), and while the
    store's promotion request is held. Nothing is kept before the end of the body. After
    it, the in-process server cancels the handler (aiohttp's TestServer runs with
    ``handler_cancellation``; ``fileshare serve`` does not, and completes the upload): a
    promotion that still lands is listed for removal, and the client's retry makes exactly
    one file."""
    async with recorder_for(backend, request) as rec:
        rig = await make_rig(**_endpoint(backend, rec.url))
        env, budget = rig.env, rig.app[BUDGET]
        # Mid-body needs a body longer than the two parts sent before the client leaves.
        data = os.urandom(3 * PART if stage == "mid-body" else BODY)
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_promotion(req: web.Request, body: bytes) -> web.StreamResponse | None:
            if _is_promotion(backend, req, env.settings.permanent_bucket):
                held.set()
                await release.wait()
            return None

        async def began() -> bool:  # the upload reserved its memory: it is in the pipeline
            return budget.in_use > 0

        async def staged() -> bool:  # the body ended, the key was claimed, the copy prepared
            return bool(await env.unscanned_keys())

        if stage == "verdict":
            rig.clamd.stall("downstream")
        if stage == "promotion":
            rec.intercept = hold_promotion
        writer = await _open_upload(env, len(data))
        try:
            if stage == "headers":
                await eventually(began, "the upload to start")
            elif stage == "mid-body":
                # Two parts' worth: the first is flushed once more bytes follow it.
                writer.write(data[: 2 * PART])
                await writer.drain()
                await eventually(lambda: _first_part_stored(rec, PART), "the first part stored")
            else:
                writer.write(data)
                await writer.drain()
                if stage == "verdict":
                    await eventually(staged, "the verdict wait")
                else:
                    await held.wait()
        finally:
            writer.transport.abort()
        rig.clamd.resume()
        release.set()
        rec.intercept = None

        async def finished() -> bool:
            return budget.in_use == 0

        await eventually(finished, "the upload to end")
        sha256 = hashlib.sha256(data).hexdigest()
        complete = stage in ("verdict", "promotion")
        await assert_intact(rig, allowed=frozenset({sha256} if complete else ()))
        if complete:
            retry = await upload(env, data)
            assert retry.status in (200, 201), await retry.text()
            listing = await (await env.client.get("/v1/files", headers=ALICE)).json()
            assert [f["sha256"] for f in listing["items"]].count(sha256) == 1
        if backend == "gcs":
            assert gcs_open_sessions(rec) == []


async def _first_part_stored(rec: Recorder, part: int) -> bool:
    """The store answered a part of ``part`` bytes (S3 UploadPart, GCS resumable chunk)."""
    return any(
        seen.method == "PUT" and len(seen.body) >= part and seen.status in (200, 308)
        for seen in rec.seen
    )


# --------------------------------------------------------------------------- overload


async def test_memory_budget_exhausted_by_concurrent_uploads(make_rig: RigFactory) -> None:
    """Ten uploads at once against a budget of four: the four that reserved it finish,
    the other six are told 503 overloaded with Retry-After once the budget wait is over,
    and nothing else (no other 5xx, no hang)."""
    rig = await make_rig(clamd_max_scans=8, budget_wait=0.3)
    settings = rig.env.settings
    slots = settings.memory_budget // settings.per_upload_memory
    assert slots == 4
    budget = rig.app[BUDGET]
    release = asyncio.Event()
    bodies = [os.urandom(1000) for _ in range(10)]

    async def held(data: bytes) -> AsyncIterator[bytes]:
        yield data[:500]
        await release.wait()
        yield data[500:]

    tasks = [asyncio.create_task(upload(rig.env, held(data))) for data in bodies]

    async def refused() -> bool:
        return sum(t.done() for t in tasks) == len(tasks) - slots

    await eventually(refused, "the uploads beyond the budget to be refused")
    assert budget.in_use == slots * settings.per_upload_memory == budget.total
    release.set()
    answers = await asyncio.gather(*tasks)
    statuses = sorted(resp.status for resp in answers)
    assert statuses == [201] * slots + [503] * (len(tasks) - slots)
    for resp in answers:
        if resp.status == 503:
            await assert_problem(resp, 503, "overloaded")
    await assert_intact(rig, allowed=frozenset(hashlib.sha256(b).hexdigest() for b in bodies))


# --------------------------------------------------------------------------- processes


@dataclass
class Served:
    """A real ``fileshare serve`` on the cell's buckets and index, started (and stopped)
    in a thread: its readiness checks reach clamd through this loop's proxy."""

    tmp: Path
    settings: Settings
    backend: str
    store: str
    clamd: FaultProxy
    runs: list[Generator[Live, None, None]] = field(default_factory=list)

    def environment(self, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            "FILESHARE_STORAGE": self.backend,
            "FILESHARE_UNSCANNED_BUCKET": s.unscanned_bucket,
            "FILESHARE_PERMANENT_BUCKET": s.permanent_bucket,
            "FILESHARE_INDEX_URL": str(s.index_url),
            "FILESHARE_PART_SIZE": "5MiB",
            "FILESHARE_MAX_UPLOAD_SIZE": "64MiB",
            "FILESHARE_LOG_LEVEL": "INFO",
        }
        if self.backend == "s3":
            env |= {
                "FILESHARE_S3_ENDPOINT": self.store,
                "FILESHARE_S3_REGION": s.s3_region,
                "FILESHARE_S3_ACCESS_KEY": str(s.s3_access_key),
                "FILESHARE_S3_SECRET_KEY": str(s.s3_secret_key),
            }
        else:
            env |= {"FILESHARE_GCS_ENDPOINT": self.store, "FILESHARE_GCS_PROJECT": "test"}
        return env | extra

    async def start(self, **extra: str) -> Live:
        run = cast(
            Generator[Live, None, None],
            start_live(self.tmp, f"tcp://{self.clamd.address}", **self.environment(**extra)),
        )
        self.runs.append(run)
        return await asyncio.to_thread(next, run)

    async def stop(self) -> None:
        for run in self.runs:
            await asyncio.to_thread(run.close)


@pytest.fixture
async def served(
    tmp_path: Path, base_settings: Settings, backend: str, clamd_proxy: FaultProxy
) -> AsyncIterator[Callable[[str], Served]]:
    made: list[Served] = []

    def make(store: str) -> Served:
        made.append(Served(tmp_path, base_settings, backend, store, clamd_proxy))
        return made[-1]

    yield make
    clamd_proxy.heal()
    for one in made:
        await one.stop()


@contextlib.asynccontextmanager
async def looking(settings: Settings) -> AsyncIterator[Storage]:
    """The test's own view of the cell's buckets (fileshare's backend, straight to the
    store)."""
    async with open_storage(settings) as storage:
        yield storage


async def _keys(storage: Storage, bucket: str) -> list[str]:
    return [key async for key in storage.list_keys(bucket)]


def _multipart(seaweed: Any, *buckets: str) -> list[str]:
    s3 = seaweed.client()
    return [
        u["Key"] for b in buckets for u in s3.list_multipart_uploads(Bucket=b).get("Uploads", [])
    ]


async def _post(live: Live, data: bytes) -> tuple[int, dict[str, Any]]:
    url = f"{live.base}/v1/files"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=ALICE) as resp:
        return resp.status, await resp.json(content_type=None)


async def _get(live: Live, file_id: str) -> bytes:
    url = f"{live.base}/v1/files/{file_id}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=ALICE) as resp:
        assert resp.status == 200
        return await resp.read()


async def _begin(live: Live, total: int, first: bytes) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {ALICE['Authorization']}\r\nContent-Length: {total}\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    return writer


async def test_sigterm_mid_upload(
    served: Callable[[str], Served],
    backend: str,
    request: pytest.FixtureRequest,
    base_settings: Settings,
) -> None:
    """SIGTERM while an upload streams in (its client idle) and the grace period runs out:
    the upload is cancelled then, and the process exits 0 once it cleaned up: no staging
    object, no open multipart upload (S3) or resumable session (GCS, counted by the
    Recorder), nothing promoted."""
    async with recorder_for(backend, request) as rec, looking(base_settings) as store:
        server = served(rec.url)
        live = await server.start(FILESHARE_SHUTDOWN_GRACE=str(GRACE))
        status, _kept = await _post(live, os.urandom(64 * 1024))
        assert status == 201
        before = await _keys(store, base_settings.permanent_bucket)
        writer = await _begin(live, 20 * MiB, os.urandom(2 * PART + MiB))
        try:
            await eventually(lambda: _first_part_stored(rec, PART), "the first part stored")
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            live.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(live.proc.wait, 30) == 0
            # The grace period, then the cancelled upload's cleanup (a delete, an abort):
            # not a second wait of aiohttp's own shutdown timeout on top.
            assert loop.time() - signalled < GRACE + 5.0
        finally:
            writer.transport.abort()
        assert await _keys(store, base_settings.unscanned_bucket) == []
        assert await _keys(store, base_settings.permanent_bucket) == before
        if backend == "s3":
            buckets = (base_settings.unscanned_bucket, base_settings.permanent_bucket)
            assert _multipart(request.getfixturevalue("seaweed"), *buckets) == []
        else:
            assert gcs_open_sessions(rec) == []
        assert "server.draining" in live.log.read_text()


async def test_client_gone_awaiting_the_verdict_on_fileshare_serve(
    served: Callable[[str], Served],
    backend: str,
    request: pytest.FixtureRequest,
    base_settings: Settings,
    clamd_proxy: FaultProxy,
) -> None:
    """The production server does not cancel a handler whose client left (the in-process
    cells above run on aiohttp's TestServer, which does): an upload whose client vanished
    while clamd's verdict was held completes once the verdict comes, and the client's retry
    finds the file (200, the same record), with nothing staged left."""
    u, p = base_settings.unscanned_bucket, base_settings.permanent_bucket
    async with looking(base_settings) as store:
        live = await served(_store_upstream(backend, request)).start()
        clamd_proxy.stall("downstream")
        data = os.urandom(BODY)
        writer = await _begin(live, len(data), data)
        try:

            async def staged() -> bool:
                return bool(await _keys(store, u))

            await eventually(staged, "the verdict wait")
        finally:
            writer.transport.abort()
        clamd_proxy.resume()

        sha256 = hashlib.sha256(data).hexdigest()

        async def committed() -> bool:
            url = f"{live.base}/v1/files"
            async with aiohttp.ClientSession() as http, http.get(url, headers=ALICE) as resp:
                return sha256 in [f["sha256"] for f in (await resp.json())["items"]]

        await eventually(committed, "the upload to complete")
        assert await _keys(store, u) == []
        status, answer = await _post(live, data)
        assert status == 200, answer
        assert answer["sha256"] == sha256
        assert len(await _keys(store, p)) == 1  # no second promotion either


async def test_sigkill_awaiting_the_verdict_then_restart(
    served: Callable[[str], Served],
    backend: str,
    request: pytest.FixtureRequest,
    base_settings: Settings,
    clamd_proxy: FaultProxy,
) -> None:
    """SIGKILL while an upload awaits its verdict (clamd's answer held): its staging object
    is complete and, on S3, the promotion copy's multipart upload is open under the
    permanent key. The restarted process's sweeper removes both once they are older than
    FILESHARE_STAGING_MAX_AGE (GCS resumable sessions cannot be listed: the staging object
    is what it can see), nothing reaches the permanent bucket, and the file acknowledged
    before the crash is still served, byte-identical."""
    upstream = _store_upstream(backend, request)
    u, p = base_settings.unscanned_bucket, base_settings.permanent_bucket

    def open_uploads() -> list[str]:
        return _multipart(request.getfixturevalue("seaweed"), u, p) if backend == "s3" else []

    async with looking(base_settings) as store:
        server = served(upstream)
        live = await server.start()
        kept_data = os.urandom(64 * 1024)
        status, kept = await _post(live, kept_data)
        assert status == 201
        before = await _keys(store, p)
        clamd_proxy.stall("downstream")
        data = os.urandom(BODY)
        writer = await _begin(live, len(data), data)
        try:

            async def awaiting_verdict() -> bool:
                staged = await _keys(store, u)
                return bool(staged) and (backend != "s3" or len(open_uploads()) == 1)

            await eventually(awaiting_verdict, "the upload to await its verdict")
            live.proc.kill()
            await asyncio.to_thread(live.proc.wait)
        finally:
            writer.transport.abort()
        assert await _keys(store, u) != []  # what a crash leaves behind
        clamd_proxy.heal()

        restarted = await server.start(
            FILESHARE_STAGING_MAX_AGE="1", FILESHARE_SWEEP_INTERVAL="0.5"
        )

        async def swept() -> bool:
            return await _keys(store, u) == [] and open_uploads() == []

        await eventually(swept, "the sweeper")
        assert await _keys(store, p) == before
        assert await _get(restarted, kept["id"]) == kept_data
        fresh = os.urandom(PART + 1)
        status, answer = await _post(restarted, fresh)
        assert status == 201
        assert answer["sha256"] == hashlib.sha256(fresh).hexdigest()
        assert "recovery.swept" in restarted.log.read_text()
