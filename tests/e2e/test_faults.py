"""Fail closed: scanner faults, storage faults, disconnects, overload. Each leaves
nothing promoted, nothing staged, and a server that keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from fileshare.config import ClamdAddress, MiB
from tests.e2e.conftest import ALICE, PART, Env
from tests.e2e.test_upload import EICAR, upload
from tests.servers import Clamd, free_port

MakeEnv = Callable[..., Awaitable[Env]]


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 20.0) -> None:
    """Wait for an observable state (not for time): poll ``check`` until true."""
    async with asyncio.timeout(limit):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.02)


async def assert_still_serving(env: Env) -> None:
    data = os.urandom(1000)
    resp = await upload(env, data)
    assert resp.status in (200, 201), await resp.text()


async def test_clamd_down_is_503_with_retry_after(make_env: MakeEnv) -> None:
    env = await make_env(clamd=ClamdAddress(host="127.0.0.1", port=free_port()))
    resp = await upload(env, os.urandom(PART * 2))
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert (await resp.json())["code"] == "scanner_unavailable"
    await env.assert_nothing_left()
    ready = await env.client.get("/readyz")
    assert (await ready.json())["checks"]["clamd"] != "ok"


@pytest.fixture
def own_clamd(tmp_path: Any) -> Any:
    with Clamd(workdir=tmp_path / "clamd") as server:
        yield server


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_clamd_killed_mid_stream_is_503(make_env: MakeEnv, own_clamd: Any) -> None:
    env = await make_env(clamd=ClamdAddress.parse(own_clamd.address))

    async def body() -> AsyncIterator[bytes]:
        for i in range(8):
            if i == 4:
                own_clamd.kill()
            yield os.urandom(MiB)

    resp = await upload(env, body())
    assert resp.status == 503
    assert (await resp.json())["code"] == "scanner_unavailable"
    await env.assert_nothing_left()


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_clamd_killed_during_the_scan_is_503(make_env: MakeEnv, own_clamd: Any) -> None:
    """Killed after the last byte reached clamd, while it scans the spooled stream."""
    env = await make_env(clamd=ClamdAddress.parse(own_clamd.address))
    data = os.urandom(48 * MiB)
    task = asyncio.create_task(upload(env, data))

    async def spooled() -> bool:
        return any(size >= len(data) for size in own_clamd.spool_sizes())

    await eventually(spooled)
    own_clamd.kill()
    resp = await task
    assert resp.status == 503
    await env.assert_nothing_left()


async def test_scanner_size_limit_is_413(make_env: MakeEnv, tmp_path: Any) -> None:
    with Clamd(workdir=tmp_path / "small", max_stream=1 * MiB) as small:
        env = await make_env(clamd=ClamdAddress.parse(small.address))
        resp = await upload(env, os.urandom(3 * MiB))
        assert resp.status == 413
        assert (await resp.json())["code"] == "payload_too_large"
        await env.assert_nothing_left()


@contextlib.asynccontextmanager
async def fake_clamd(reply: bytes | None) -> AsyncIterator[ClamdAddress]:
    """A clamd stand-in for replies a real clamd cannot be made to give on demand
    (silence until the timeout, garbage). It reads the stream and answers ``reply``
    after the terminator, or never if ``reply`` is None."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\0")
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size == 0:
                    break
                await reader.readexactly(size)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            else:
                await reader.read()  # hold the connection open, say nothing
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ClamdAddress(host="127.0.0.1", port=port)
    finally:
        server.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    "reply", [None, b"stream: what is this\0", b"stream: Out of memory ERROR\0"]
)
async def test_silent_or_confused_scanner_fails_closed(
    make_env: MakeEnv, reply: bytes | None
) -> None:
    async with fake_clamd(reply) as address:
        env = await make_env(clamd=address, clamd_verdict_timeout=0.5)
        resp = await upload(env, os.urandom(PART + 1))
        assert resp.status == 503
        await env.assert_nothing_left()


async def test_client_disconnect_mid_upload_leaves_nothing(env: Env) -> None:
    server = env.client.server
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {ALICE['Authorization']}\r\n".encode()
        + f"Content-Length: {20 * MiB}\r\n\r\n".encode()
    )
    writer.write(os.urandom(3 * PART))
    await writer.drain()

    async def staged() -> bool:
        # Only S3 shows an upload in progress (its multipart upload); elsewhere the
        # bytes already sent are enough.
        return env.backend != "s3" or bool(env.open_multipart_uploads())

    # Make sure the upload really started before cutting it off.
    await eventually(staged)
    writer.transport.abort()

    async def clean() -> bool:
        return (
            not await env.unscanned_keys()
            and not env.open_multipart_uploads()
            and not await env.permanent_keys()
        )

    await eventually(clean)
    await assert_still_serving(env)


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_storage_credentials_rejected_is_503(make_env: MakeEnv) -> None:
    env = await make_env()
    broken = await make_env(s3_secret_key="not-the-secret-key")
    resp = await upload(broken, os.urandom(PART + 1))
    assert resp.status == 503
    assert (await resp.json())["code"] == "storage_unavailable"
    await env.assert_nothing_left()
    resp = await upload(broken, EICAR)
    assert resp.status in (422, 503)


async def test_storage_down_is_503_and_nothing_is_written(make_env: MakeEnv) -> None:
    env = await make_env()
    dead = f"http://127.0.0.1:{free_port()}"
    if env.backend == "local":
        # Turn the permanent bucket's directory into a file: every write there fails.
        path = env.settings.data_dir / env.settings.permanent_bucket
        shutil.rmtree(path)
        path.write_bytes(b"")
        broken = env
    elif env.backend == "s3":
        broken = await make_env(s3_endpoint=dead, storage_timeout=2.0)
    else:
        broken = await make_env(gcs_endpoint=dead, storage_timeout=2.0)
    resp = await upload(broken, os.urandom(PART + 1))
    assert resp.status == 503
    problem = await resp.json()
    assert problem["code"] == "storage_unavailable"
    assert "Traceback" not in problem["detail"]
    assert await env.unscanned_keys() == []
    assert env.open_multipart_uploads() == []
    ready = await broken.client.get("/readyz")
    assert (await ready.json())["checks"]["storage"] != "ok"


async def assert_second_upload_is_overloaded(
    env: Env, holding: Callable[[], Awaitable[bool]] | None = None
) -> None:
    """Hold one upload open mid-body, then show that a second one is refused with
    503 ``overloaded`` while the first still completes."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(1000)
        started.set()
        await release.wait()
        yield os.urandom(1000)

    first = asyncio.create_task(upload(env, slow()))
    await started.wait()
    if holding is not None:
        await eventually(holding)
    second = await upload(env, os.urandom(1000))
    assert second.status == 503
    assert (await second.json())["code"] == "overloaded"
    assert second.headers["Retry-After"]
    release.set()
    assert (await first).status == 201
    await assert_still_serving(env)


async def test_memory_budget_pushes_back_with_503(make_env: MakeEnv, base_settings: Any) -> None:
    one = replace(base_settings).per_upload_memory
    env = await make_env(memory_budget=one, budget_wait=0.2)
    await assert_second_upload_is_overloaded(env, lambda: _true_after_budget(env, one))


async def _true_after_budget(env: Env, amount: int) -> bool:
    from fileshare.app import BUDGET

    return env.client.app[BUDGET].in_use >= amount


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_no_local_disk_writes_during_a_large_upload(env: Env) -> None:
    def written() -> int:
        with open(f"/proc/{os.getpid()}/io") as io:
            fields = dict(line.split(": ") for line in io.read().splitlines())
        return int(fields["write_bytes"])

    data = os.urandom(64 * MiB)
    before = written()
    resp = await upload(env, data)
    assert resp.status == 201
    # The S3 setup keeps its index in PostgreSQL (another process): nothing of the 64 MiB
    # body, and nothing else of the upload, is written to this process's disk.
    assert written() - before < 1 * MiB


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_saturated_scanner_sheds_load_with_503(make_env: MakeEnv) -> None:
    # One scan slot, held by the first upload; the second waits 0.5 s for it, then 503.
    env = await make_env(clamd_max_scans=1, clamd_verdict_timeout=0.5)
    await assert_second_upload_is_overloaded(env)


async def test_draining_refuses_new_requests_on_open_connections(env: Env) -> None:
    from fileshare.api.keys import DRAINING

    env.client.app[DRAINING].set()
    resp = await upload(env, os.urandom(100))
    assert resp.status == 503
    assert (await resp.json())["code"] == "shutting_down"
    assert resp.headers["Connection"].lower() == "close"
    ready = await env.client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["server"] == "draining"
    await env.assert_nothing_left()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_shutdown_during_the_scan_window_still_cleans_up(make_env: MakeEnv) -> None:
    """The app closes (as on SIGTERM after the grace period) while an upload waits for a
    verdict that never comes: once it has closed, the staging object and the promotion
    copy are gone. (The race this guards, cleanup against the storage client closing,
    is not forced here: the S3 calls are usually fast enough either way.)"""
    async with fake_clamd(None) as silent:
        env = await make_env(clamd=silent, clamd_verdict_timeout=60)
        task = asyncio.create_task(upload(env, os.urandom(2 * PART + 1)))

        async def staged() -> bool:
            return bool(await env.unscanned_keys())

        await eventually(staged)
        await env.client.close()  # cancels the handler, then runs the app's cleanup
        with contextlib.suppress(Exception):
            await task
    listing = env.s3.list_objects_v2(Bucket=env.settings.unscanned_bucket)
    assert listing.get("KeyCount", 0) == 0
    assert env.open_multipart_uploads() == []
    permanent = env.s3.list_objects_v2(Bucket=env.settings.permanent_bucket)
    assert permanent.get("KeyCount", 0) == 0


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_index_down_fails_closed_and_recovers(make_env: MakeEnv, tmp_path: Any) -> None:
    from tests.servers import Postgres

    with Postgres(dir=tmp_path) as server:
        env = await make_env(index_url=server.dsn)
        kept = await (await upload(env, os.urandom(2000))).json()
        before = await env.permanent_keys()
        server.kill()
        for data in (os.urandom(1000), os.urandom(PART * 2)):
            resp = await upload(env, data)
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["code"] == "index_unavailable"
            assert resp.headers["Retry-After"]
        for method, path in (
            ("GET", f"/v1/files/{kept['id']}"),
            ("GET", f"/v1/files/{kept['id']}/metadata"),
            ("GET", "/v1/files"),
            ("GET", "/v1/search/files"),
            ("DELETE", f"/v1/files/{kept['id']}"),
            ("PUT", f"/v1/files/{kept['id']}/tags/x"),
        ):
            resp = await env.client.request(method, path, headers=ALICE)
            assert resp.status == 503, (method, path, resp.status)
            body = await resp.json()
            assert body["code"] == "index_unavailable"
            assert "postgres" not in body["detail"]  # the index's own text stays in the log
        # nothing was promoted for the refused uploads, nothing stays staged
        assert await env.permanent_keys() == before
        assert await env.unscanned_keys() == []
        assert env.open_multipart_uploads() == []
        server.restart()
        got = await env.client.get(f"/v1/files/{kept['id']}", headers=ALICE)
        assert got.status == 200
        await assert_still_serving(env)
