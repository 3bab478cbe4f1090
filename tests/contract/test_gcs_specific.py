"""GCS-only behaviour of ``GcsStorage``, against a real fake-gcs-server.

The backend talks to the emulator through ``Recorder``, a small reverse proxy that
logs every request (so a test can see the chunks, the session cancel, the rewrite
rounds) and can answer in the emulator's place to inject what fake-gcs-server cannot
produce: failures, partial persistence, multi-round rewrites, 401s.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from google.auth import credentials as ga_credentials
from google.auth import exceptions as ga_exceptions
from multidict import CIMultiDictProxy
from yarl import URL

from fileshare.storage.base import ObjectExists, ObjectNotFound, StorageError
from fileshare.storage.gcs import CHUNK_QUANTUM, IO_SLICE, GcsStorage, GcsWriter
from tests.servers import FakeGcs

MiB = 1024 * 1024
Q = CHUNK_QUANTUM
PART = 2 * Q  # small parts keep the emulator fast; the logic is the same at 8 MiB


# --------------------------------------------------------------------------- proxy


@dataclass
class Seen:
    method: str
    path: str  # raw, still percent-encoded, with the query
    headers: CIMultiDictProxy[str]
    body: bytes
    status: int = 0
    reply_headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> URL:
        return URL(self.path, encoded=True)

    @property
    def query(self) -> dict[str, str]:
        return dict(self.url.query)


Intercept = Callable[[web.Request, bytes], Awaitable[web.StreamResponse | None]]


@dataclass
class Recorder:
    """A logging, fault-injecting reverse proxy in front of the emulator."""

    upstream: str
    http: aiohttp.ClientSession
    seen: list[Seen] = field(default_factory=list)
    intercept: Intercept | None = None
    url: str = ""
    puts_in_flight: int = 0
    max_puts_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.method, request.raw_path, request.headers, body)
        self.seen.append(seen)
        is_put = request.method == "PUT"
        if is_put:
            self.puts_in_flight += 1
            self.max_puts_in_flight = max(self.max_puts_in_flight, self.puts_in_flight)
        try:
            if self.intercept is not None:
                answer = await self.intercept(request, body)
                if answer is not None:
                    seen.status = answer.status
                    return answer
            return await self.forward(request, body, seen)
        finally:
            if is_put:
                self.puts_in_flight -= 1

    async def forward(
        self,
        request: web.Request,
        body: bytes,
        seen: Seen | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        fwd = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length",)}
        fwd.update(headers or {})
        async with self.http.request(
            request.method,
            URL(self.upstream + request.raw_path, encoded=True),
            headers=fwd,
            data=io.BytesIO(body),  # aiohttp warns about large raw bytes bodies
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding")
            }
            if seen is not None:
                seen.status = resp.status
                seen.reply_headers = out
            return web.Response(status=resp.status, body=data, headers=out)

    def requests(self, method: str, pattern: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and re.search(pattern, s.path)]

    def chunk_puts(self) -> list[Seen]:
        return self.requests("PUT", r"upload_id=")

    def open_sessions(self, bucket: str, key: str) -> list[str]:
        """Resumable sessions for ``bucket/key`` neither finalised nor cancelled: what GCS
        would keep (invisible, for a week). GCS cannot list them, so the proxy counts."""

        def upload_id(url: str | URL) -> str:
            return URL(url, encoded=True).query.get("upload_id", "") if url else ""

        opened = {
            upload_id(s.reply_headers.get("Location", ""))
            for s in self.requests("POST", r"uploadType=resumable")
            if s.status == 200
            and s.url.path.split("/")[-2] == bucket
            and (s.query.get("name") or _json_name(s.body)) == key
        }
        closed = {upload_id(s.path) for s in self.requests("PUT") if s.status in (200, 201)}
        closed |= {upload_id(s.path) for s in self.requests("DELETE") if s.status == 499}
        return sorted(opened - closed)


def _json_name(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["name"])
    except (ValueError, KeyError, TypeError):
        return None


@asynccontextmanager
async def recording_proxy(upstream: str) -> AsyncIterator[Recorder]:
    """Start a ``Recorder`` on 127.0.0.1 in front of ``upstream``."""
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        rec = Recorder(upstream=upstream.rstrip("/"), http=http)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", rec.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield rec
        finally:
            await runner.cleanup()


@pytest.fixture
async def recorder(fake_gcs: FakeGcs) -> AsyncIterator[Recorder]:
    async with recording_proxy(fake_gcs.endpoint) as rec:
        yield rec


@dataclass
class Env:
    storage: GcsStorage
    rec: Recorder
    bucket: str
    other: str


@pytest.fixture
async def env(fake_gcs: FakeGcs, recorder: Recorder) -> AsyncIterator[Env]:
    tag = uuid.uuid4().hex[:10]
    bucket, other = f"gcs-a-{tag}", f"gcs-b-{tag}"
    for name in (bucket, other):
        fake_gcs.create_bucket(name)
    storage = await GcsStorage.create(
        endpoint=recorder.url, buckets=(bucket, other), part_size=PART, timeout=10.0
    )
    try:
        yield Env(storage, recorder, bucket, other)
    finally:
        await storage.close()


async def _read_all(storage: GcsStorage, bucket: str, key: str, **kw: Any) -> bytes:
    return b"".join([c async for c in storage.read(bucket, key, **kw)])


async def _write(writer: GcsWriter, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        await writer.write(data[i : i + piece])


def _content_range(seen: Seen) -> tuple[int | None, int | None, int | None]:
    m = re.fullmatch(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)", seen.headers["Content-Range"])
    assert m, seen.headers["Content-Range"]
    start = int(m.group(2)) if m.group(2) else None
    end = int(m.group(3)) if m.group(3) else None
    total = None if m.group(4) == "*" else int(m.group(4))
    return start, end, total


# --------------------------------------------------------------------- streaming


SIZES = [0, 1, Q - 1, Q, Q + 1, PART - 1, PART, PART + 1, 3 * PART + Q + 7]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [100_003, 3 * PART + 1])
async def test_chunk_boundaries(env: Env, size: int, piece: int) -> None:
    data = os.urandom(size)
    key = f"sizes/{size}/{piece}"
    writer = await env.storage.open_writer(
        env.bucket, key, content_type="image/png", metadata={"owner": "alice"}
    )
    await _write(writer, data, piece)
    # Nothing left memory while the object fits one part: small uploads skip staging.
    assert writer.buffered() == (data if size <= PART else None)
    info = await writer.commit()

    assert (info.key, info.size, info.content_type) == (key, size, "image/png")
    assert info.metadata == {"owner": "alice"}
    assert info.version.isdigit()  # the generation
    assert await env.storage.head(env.bucket, key) == info
    assert await _read_all(env.storage, env.bucket, key) == data

    puts = env.rec.chunk_puts()
    sessions = env.rec.requests("POST", r"uploadType=resumable")
    multipart = env.rec.requests("POST", r"uploadType=multipart")
    if size <= PART:
        assert (len(multipart), sessions, puts) == (1, [], [])
        return
    assert (multipart, len(sessions)) == ([], 1)
    assert env.rec.max_puts_in_flight == 1  # chunks of a session are sequential
    offset = 0
    for put in puts[:-1]:  # middle chunks: whole parts, total unknown
        start, end, total = _content_range(put)
        assert (start, total) == (offset, None)
        assert start is not None
        assert end is not None
        assert end - start + 1 == PART == len(put.body)
        offset = end + 1
    start, end, total = _content_range(puts[-1])  # the last one names the total
    assert total == size
    assert (start, end) == ((offset, size - 1) if size > offset else (None, None))
    assert len(puts) == -(-size // PART)
    assert not any(p.headers["Content-Range"] == "bytes */*" for p in puts)


async def test_session_opens_only_when_a_part_must_leave_memory(env: Env) -> None:
    writer = await env.storage.open_writer(env.bucket, "lazy")
    await writer.write(b"x" * PART)
    assert env.rec.seen == []
    assert writer.buffered() == b"x" * PART
    await writer.write(b"y")  # the buffer is full and more follows: send the part
    assert writer.buffered() is None
    assert len(env.rec.requests("POST", r"uploadType=resumable")) == 1
    await writer.abort()


async def test_abort_cancels_the_session(env: Env) -> None:
    writer = await env.storage.open_writer(env.bucket, "aborted/obj")
    await _write(writer, os.urandom(2 * PART + 5), 64 * 1024)
    await writer.abort()

    assert len(env.rec.requests("POST", r"uploadType=resumable")) == 1
    location = URL(env.rec.chunk_puts()[0].path, encoded=True)
    assert env.rec.open_sessions(env.bucket, "aborted/obj") == []
    (cancel,) = env.rec.requests("DELETE", r"upload_id=")
    assert cancel.url == location
    assert cancel.status == 499
    with pytest.raises(ObjectNotFound):
        await env.storage.head(env.bucket, "aborted/obj")
    assert [k async for k in env.storage.list_keys(env.bucket)] == []
    # Cancelling again is harmless; GCS answers 499 (the emulator too) or 404/410.
    async with env.rec.http.delete(URL(env.rec.upstream + cancel.path, encoded=True)) as resp:
        assert resp.status in (404, 410, 499)
    # abort is idempotent: no second cancel.
    await writer.abort()
    assert len(env.rec.requests("DELETE")) == 1
    with pytest.raises(StorageError):
        await writer.write(b"more")


async def test_abort_before_any_request_sends_nothing(env: Env) -> None:
    writer = await env.storage.open_writer(env.bucket, "tiny")
    await writer.write(b"abc")
    await writer.abort()
    await writer.abort()
    assert env.rec.seen == []


@pytest.mark.parametrize("fail_put", [1, 2, 3])  # a middle chunk, the second, the last
async def test_failed_chunk_cancels_the_session(env: Env, fail_put: int) -> None:
    calls = 0

    async def fail_nth(request: web.Request, body: bytes) -> web.Response | None:
        nonlocal calls
        if request.method == "PUT":
            calls += 1
            if calls == fail_put:
                return web.json_response({"error": {"message": "backend error"}}, status=503)
        return None

    env.rec.intercept = fail_nth
    writer = await env.storage.open_writer(env.bucket, "failing")

    async def upload() -> None:
        await _write(writer, os.urandom(2 * PART + 5), PART // 2)
        await writer.commit()

    with pytest.raises(StorageError) as caught:
        await upload()
    assert "503" in str(caught.value)
    assert "upload_id" not in str(caught.value)  # the session URI is a credential
    (cancel,) = env.rec.requests("DELETE", r"upload_id=")
    assert cancel.status == 499
    await writer.abort()  # still safe, and nothing more to cancel
    assert len(env.rec.requests("DELETE")) == 1
    with pytest.raises(ObjectNotFound):
        await env.storage.head(env.bucket, "failing")


async def test_cancelled_write_leaves_no_session(env: Env) -> None:
    """The pipeline cancels a write when the scanner fails; abort then cancels the session."""
    release = asyncio.Event()

    async def stall_second_put(request: web.Request, body: bytes) -> web.Response | None:
        if request.method == "PUT" and len(env.rec.chunk_puts()) == 2:
            await release.wait()
        return None

    env.rec.intercept = stall_second_put
    writer = await env.storage.open_writer(env.bucket, "cancelled")
    task = asyncio.create_task(_write(writer, os.urandom(4 * PART), PART))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(env.rec.chunk_puts()) == 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.abort()
    release.set()
    assert len(env.rec.requests("DELETE", r"upload_id=")) == 1
    with pytest.raises(ObjectNotFound):
        await env.storage.head(env.bucket, "cancelled")


async def test_bytes_gcs_did_not_persist_are_sent_again(env: Env) -> None:
    """GCS may keep only part of a chunk (308 with a shorter Range): resend the rest."""
    truncated = False

    async def keep_half(request: web.Request, body: bytes) -> web.Response | None:
        nonlocal truncated
        if request.method == "PUT" and not truncated:
            truncated = True
            return await env.rec.forward(
                request, body[:Q], headers={"Content-Range": f"bytes 0-{Q - 1}/*"}
            )
        return None

    env.rec.intercept = keep_half
    data = os.urandom(2 * PART + 3)
    writer = await env.storage.open_writer(env.bucket, "resend")
    await _write(writer, data, 50_000)
    info = await writer.commit()
    assert info.size == len(data)
    assert await _read_all(env.storage, env.bucket, "resend") == data
    ranges = [p.headers["Content-Range"] for p in env.rec.chunk_puts()]
    assert ranges[:3] == [
        f"bytes 0-{PART - 1}/*",
        f"bytes {Q}-{PART - 1}/*",  # the half it did not keep
        f"bytes {PART}-{2 * PART - 1}/*",
    ]


# ----------------------------------------------------------------- put and copy


async def test_put_if_absent_is_a_generation_precondition(env: Env) -> None:
    first = await env.storage.put(env.bucket, "once", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        await env.storage.put(env.bucket, "once", b"second", if_absent=True)
    assert await env.storage.head(env.bucket, "once") == first
    assert await _read_all(env.storage, env.bucket, "once") == b"first"
    posts = env.rec.requests("POST", r"uploadType=multipart")
    assert [p.query.get("ifGenerationMatch") for p in posts] == ["0", "0"]
    assert [p.status for p in posts] == [200, 412]
    replaced = await env.storage.put(env.bucket, "once", b"third")
    assert replaced.version != first.version
    assert "ifGenerationMatch" not in env.rec.requests("POST", r"multipart")[-1].query


async def test_copy_runs_at_commit_and_abort_does_nothing(env: Env) -> None:
    data = os.urandom(PART + 1)
    await env.storage.put(env.bucket, "src", data, metadata={"a": "1"})
    copy = await env.storage.begin_copy(
        env.bucket, "src", env.other, "dst", size=len(data), content_type="text/plain"
    )
    await copy.abort()
    await copy.abort()
    assert env.rec.requests("POST", r"/rewriteTo/") == []
    with pytest.raises(ObjectNotFound):
        await env.storage.head(env.other, "dst")

    copy = await env.storage.begin_copy(
        env.bucket,
        "src",
        env.other,
        "dst",
        size=len(data),
        content_type="text/plain",
        metadata={"sha256": "ab"},
    )
    assert env.rec.requests("POST", r"/rewriteTo/") == []  # nothing visible before commit
    info = await copy.commit()
    assert (info.key, info.size, info.content_type) == ("dst", len(data), "text/plain")
    assert info.metadata == {"sha256": "ab"}
    assert await _read_all(env.storage, env.other, "dst") == data
    (rewrite,) = env.rec.requests("POST", r"/rewriteTo/")
    assert rewrite.query["ifGenerationMatch"] == "0"


async def test_copy_onto_an_existing_object_raises_object_exists(env: Env) -> None:
    await env.storage.put(env.bucket, "src", b"new bytes")
    existing = await env.storage.put(env.other, "dst", b"old bytes")
    copy = await env.storage.begin_copy(env.bucket, "src", env.other, "dst", size=9)
    with pytest.raises(ObjectExists):
        await copy.commit()
    assert await env.storage.head(env.other, "dst") == existing
    assert await _read_all(env.storage, env.other, "dst") == b"old bytes"


async def test_rewrite_412_is_object_exists(env: Env) -> None:
    """Real GCS enforces ifGenerationMatch=0 on the rewrite itself (a racing promotion)."""

    async def precondition_failed(request: web.Request, body: bytes) -> web.Response | None:
        if "/rewriteTo/" in request.raw_path:
            assert request.query["ifGenerationMatch"] == "0"
            return web.json_response({"error": {"code": 412}}, status=412)
        return None

    env.rec.intercept = precondition_failed
    await env.storage.put(env.bucket, "src", b"abc")
    copy = await env.storage.begin_copy(env.bucket, "src", env.other, "dst", size=3)
    with pytest.raises(ObjectExists):
        await copy.commit()


async def test_rewrite_is_pinned_to_the_source_generation(env: Env) -> None:
    """Real GCS answers 412 when ifSourceGenerationMatch no longer holds (the emulator
    ignores it): the pin is sent, and a 412 while the target is absent means the source
    changed, a storage failure, never a dedup hit."""
    sent: list[str | None] = []

    async def source_changed(request: web.Request, body: bytes) -> web.Response | None:
        if "/rewriteTo/" in request.raw_path:
            sent.append(request.query.get("ifSourceGenerationMatch"))
            return web.json_response({"error": {"code": 412}}, status=412)
        return None

    info = await env.storage.put(env.bucket, "src", b"abc")
    env.rec.intercept = source_changed
    copy = await env.storage.begin_copy(
        env.bucket, "src", env.other, "dst", size=3, src_version=info.version
    )
    with pytest.raises(StorageError) as caught:
        await copy.commit()
    assert not isinstance(caught.value, ObjectExists)
    assert sent == [info.version]


async def test_rewrite_loops_on_the_rewrite_token(fake_gcs: FakeGcs, recorder: Recorder) -> None:
    """GCS copies big or cross-location objects in rounds; the emulator always finishes
    in one, so the proxy plays the first rounds and checks each request."""
    tag = uuid.uuid4().hex[:10]
    bucket = f"gcs-rw-{tag}"
    fake_gcs.create_bucket(bucket)
    storage = await GcsStorage.create(
        endpoint=recorder.url, buckets=(bucket,), part_size=PART, max_bytes_rewritten_per_call=MiB
    )
    rounds: list[dict[str, str]] = []

    async def in_rounds(request: web.Request, body: bytes) -> web.Response | None:
        if "/rewriteTo/" not in request.raw_path:
            return None
        rounds.append(dict(request.query))
        if len(rounds) <= 3:
            return web.json_response(
                {
                    "kind": "storage#rewriteResponse",
                    "done": False,
                    "rewriteToken": f"token-{len(rounds)}",
                    "totalBytesRewritten": str(len(rounds) * MiB),
                    "objectSize": str(4 * MiB),
                }
            )
        return None

    recorder.intercept = in_rounds
    try:
        data = os.urandom(4 * MiB)
        await storage.put(bucket, "big", data)
        copy = await storage.begin_copy(bucket, "big", bucket, "big-copy", size=len(data))
        info = await copy.commit()
        assert info.size == len(data)
        assert await _read_all(storage, bucket, "big-copy") == data
    finally:
        await storage.close()
    assert [r.get("rewriteToken") for r in rounds] == [None, "token-1", "token-2", "token-3"]
    assert all(r["ifGenerationMatch"] == "0" for r in rounds)
    assert all(r["maxBytesRewrittenPerCall"] == str(MiB) for r in rounds)


# ----------------------------------------------------------------- names, reads


NAMES = ["a/b/c", "with space", "percent%2Fsign", "q?x=1#frag", "plus+and&", "ünï/çødé", "a//b"]


async def test_object_names_are_percent_encoded(env: Env) -> None:
    for i, name in enumerate(NAMES):
        data = f"{i}".encode() * (i + 1)
        await env.storage.put(env.bucket, name, data, metadata={"n": str(i)})
        assert (await env.storage.head(env.bucket, name)).size == len(data)
        assert await _read_all(env.storage, env.bucket, name) == data
        copy = await env.storage.begin_copy(env.bucket, name, env.other, name, size=len(data))
        await copy.commit()
    assert sorted([k async for k in env.storage.list_keys(env.bucket)]) == sorted(NAMES)
    assert sorted([k async for k in env.storage.list_keys(env.other)]) == sorted(NAMES)
    gets = env.rec.requests("GET", r"/o/a%2Fb%2Fc")
    assert gets
    assert all("/o/a/b" not in g.path for g in env.rec.seen)
    for name in NAMES:
        await env.storage.delete(env.bucket, name)
    assert [k async for k in env.storage.list_keys(env.bucket)] == []


async def test_list_is_paginated_and_prefixed(env: Env) -> None:
    keys = [f"p/{i:04d}" for i in range(1005)] + ["q/0", "p"]
    await asyncio.gather(*(env.storage.put(env.bucket, k, b"") for k in keys))
    listed = [k async for k in env.storage.list_keys(env.bucket, "p/")]
    assert listed == sorted(k for k in keys if k.startswith("p/"))
    lists = env.rec.requests("GET", r"/o\?")
    assert len(lists) == 2
    assert "pageToken" in lists[1].query


async def test_ranged_reads(env: Env) -> None:
    data = os.urandom(3 * IO_SLICE + 11)
    await env.storage.put(env.bucket, "r", data)
    cases = [(0, None), (5, None), (0, 0), (7, 7), (IO_SLICE - 1, IO_SLICE + 1), (10, 10**9)]
    for start, end in cases:
        chunks = [c async for c in env.storage.read(env.bucket, "r", start=start, end=end)]
        assert b"".join(chunks) == data[start : None if end is None else end + 1]
        assert all(len(c) <= IO_SLICE for c in chunks)
    with pytest.raises(StorageError):
        await _read_all(env.storage, env.bucket, "r", start=len(data))
    with pytest.raises(StorageError):
        await _read_all(env.storage, env.bucket, "r", start=9, end=3)
    await env.storage.put(env.bucket, "empty", b"")
    assert await _read_all(env.storage, env.bucket, "empty") == b""
    with pytest.raises(ObjectNotFound):
        await _read_all(env.storage, env.bucket, "missing")


async def test_ping(env: Env, fake_gcs: FakeGcs) -> None:
    await env.storage.ping()
    missing = await GcsStorage.create(endpoint=fake_gcs.endpoint, buckets=("no-such-bucket-x",))
    try:
        with pytest.raises(StorageError):
            await missing.ping()
    finally:
        await missing.close()


async def test_transport_errors_become_storage_errors() -> None:
    storage = await GcsStorage.create(endpoint="http://127.0.0.1:9", buckets=("b",), timeout=2)
    try:
        for call in (
            storage.ping(),
            storage.head("b", "k"),
            storage.put("b", "k", b"x"),
            storage.delete("b", "k"),
            _read_all(storage, "b", "k"),
        ):
            with pytest.raises(StorageError) as caught:
                await call
            assert not isinstance(caught.value, ObjectNotFound)
            assert isinstance(caught.value.__cause__, aiohttp.ClientError)
        writer = await storage.open_writer("b", "k")
        await writer.write(b"x" * 100)
        with pytest.raises(StorageError):
            await writer.commit()
        await writer.abort()
    finally:
        await storage.close()
    with pytest.raises(StorageError):
        await storage.head("b", "k")


@pytest.mark.parametrize("failures", [1, 2, 3])
async def test_transient_errors_are_retried_on_safe_requests(env: Env, failures: int) -> None:
    await env.storage.put(env.bucket, "k", b"x")
    left = failures

    async def unavailable(request: web.Request, body: bytes) -> web.Response | None:
        nonlocal left
        if left:
            left -= 1
            return web.json_response({"error": {"message": "backend error"}}, status=503)
        return None

    env.rec.seen.clear()
    env.rec.intercept = unavailable
    if failures < 3:
        assert (await env.storage.head(env.bucket, "k")).size == 1
    else:
        with pytest.raises(StorageError, match="503"):
            await env.storage.head(env.bucket, "k")
    assert len(env.rec.seen) == min(failures + 1, 3)


async def test_a_retried_upload_sends_its_body_again(env: Env) -> None:
    failed = False

    async def unavailable_once(request: web.Request, body: bytes) -> web.Response | None:
        nonlocal failed
        if request.method == "POST" and not failed:
            failed = True
            return web.json_response({"error": {"message": "backend error"}}, status=503)
        return None

    env.rec.intercept = unavailable_once
    data = os.urandom(PART)
    info = await env.storage.put(env.bucket, "retried", data, if_absent=True)
    assert info.size == len(data)
    assert await _read_all(env.storage, env.bucket, "retried") == data
    first, second = env.rec.requests("POST", r"uploadType=multipart")
    assert (first.status, second.status) == (503, 200)
    assert first.body == second.body


async def test_emulator_requests_are_anonymous(env: Env) -> None:
    await env.storage.put(env.bucket, "anon", b"x")
    assert env.rec.seen
    assert all("Authorization" not in s.headers for s in env.rec.seen)


# ---------------------------------------------------------------- credentials


class SlowCredentials(ga_credentials.Credentials):
    """Real google-auth credentials whose refresh blocks like a metadata-server call."""

    def __init__(self, lifetime: float = 3600.0, fail: Exception | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.refreshes = 0
        self.lifetime = lifetime
        self.fail = fail

    def refresh(self, request: Any) -> None:
        time.sleep(0.3)  # blocking, as google-auth's transports are
        if self.fail is not None:
            raise self.fail
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"
        self.expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(
            seconds=self.lifetime
        )


async def _max_loop_lag(work: Callable[[], Awaitable[Any]]) -> float:
    """Run ``work()`` while a ticker measures how late the loop wakes it up."""
    lag = 0.0
    done = False
    ticking = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = max(lag, time.perf_counter() - before - 0.005)
            ticking.set()

    tick = asyncio.create_task(ticker())
    await ticking.wait()
    try:
        await work()
    finally:
        done = True
        await tick
    return lag


async def test_tokens_refresh_off_the_loop_once_and_are_cached(env: Env) -> None:
    creds = SlowCredentials()
    storage = await GcsStorage.create(
        endpoint=env.rec.url, buckets=(env.bucket,), credentials=creds
    )
    try:
        await env.storage.put(env.bucket, "k", b"x")
        env.rec.seen.clear()

        async def heads() -> None:
            await asyncio.gather(*(storage.head(env.bucket, "k") for _ in range(20)))

        assert await _max_loop_lag(heads) < 0.15  # the 0.3 s refresh ran in a thread
        assert creds.refreshes == 1
        assert {s.headers["Authorization"] for s in env.rec.seen} == {"Bearer token-1"}

        # A 401 (revoked token) drops the cache; the call is retried with a new token.
        async def unauthorized_once(request: web.Request, body: bytes) -> web.Response | None:
            env.rec.intercept = None
            return web.json_response({"error": {"message": "expired"}}, status=401)

        env.rec.intercept = unauthorized_once
        env.rec.seen.clear()
        await storage.head(env.bucket, "k")
        assert creds.refreshes == 2
        assert [(s.status, s.headers["Authorization"]) for s in env.rec.seen] == [
            (401, "Bearer token-1"),
            (200, "Bearer token-2"),
        ]
    finally:
        await storage.close()


async def test_a_token_near_expiry_is_refreshed(env: Env) -> None:
    creds = SlowCredentials(lifetime=0.4)  # used for half its life
    storage = await GcsStorage.create(
        endpoint=env.rec.url, buckets=(env.bucket,), credentials=creds
    )
    try:
        await storage.ping()
        await storage.ping()
        assert creds.refreshes == 1
        await asyncio.sleep(0.25)
        await storage.ping()
        assert creds.refreshes == 2
    finally:
        await storage.close()


async def test_credential_errors_are_neutral_and_quiet(env: Env) -> None:
    error = ga_exceptions.RefreshError("invalid_grant: ya29.SECRET")  # type: ignore[no-untyped-call]
    creds = SlowCredentials(fail=error)
    storage = await GcsStorage.create(
        endpoint=env.rec.url, buckets=(env.bucket,), credentials=creds
    )
    try:
        with pytest.raises(StorageError) as caught:
            await storage.ping()
        assert "SECRET" not in str(caught.value)
        assert isinstance(caught.value.__cause__, ga_exceptions.RefreshError)
        assert env.rec.seen == []
    finally:
        await storage.close()


# ------------------------------------------------------------------ the loop


async def test_a_large_upload_never_blocks_the_loop(fake_gcs: FakeGcs) -> None:
    bucket = f"gcs-big-{uuid.uuid4().hex[:10]}"
    fake_gcs.create_bucket(bucket)
    storage = await GcsStorage.create(endpoint=fake_gcs.endpoint, buckets=(bucket,))
    data = os.urandom(32 * MiB)

    async def upload_and_read() -> None:
        writer = await storage.open_writer(bucket, "big")
        await _write(writer, data, 64 * 1024)
        await writer.commit()
        got = bytearray()
        async for chunk in storage.read(bucket, "big"):
            got += chunk
        assert got == data

    try:
        assert await _max_loop_lag(upload_and_read) < 0.2
    finally:
        await storage.close()


async def test_a_sealed_write_whose_commit_failed_cannot_be_committed_again(env: Env) -> None:
    """The last piece's PUT answers 503 (the Recorder answers in the emulator's place: a
    real emulator does not fail on demand): the writer is failed, so a second commit is
    refused instead of publishing what is left of it (nothing)."""
    writer = await env.storage.open_writer(env.bucket, "sealed-then-failed")
    await _write(writer, os.urandom(PART + 5), PART // 2)
    await writer.seal()

    async def fail_puts(request: web.Request, body: bytes) -> web.Response | None:
        if request.method == "PUT":
            return web.json_response({"error": {"message": "backend error"}}, status=503)
        return None

    env.rec.intercept = fail_puts
    with pytest.raises(StorageError):
        await writer.commit()
    env.rec.intercept = None
    with pytest.raises(StorageError, match="failed"):
        await writer.commit()
    assert [k async for k in env.storage.list_keys(env.bucket)] == []
