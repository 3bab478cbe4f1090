"""Graceful drain, with real signals against a real ``fileshare serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE, ALICE_KEY, BOB_KEY
from tests.servers import free_port


@pytest.fixture
def serve(tmp_path: Path, clamd: Any) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(grace: float) -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        data = tmp_path / f"data-{port}"
        env = {
            **os.environ,
            "FILESHARE_STORAGE": "local",
            "FILESHARE_DATA_DIR": str(data),
            "FILESHARE_CLAMD": clamd.address,
            "FILESHARE_PORT": str(port),
            "FILESHARE_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
            "FILESHARE_SHUTDOWN_GRACE": str(grace),
            "FILESHARE_LOG_FORMAT": "json",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "fileshare", "serve"], env=env, stderr=subprocess.PIPE
        )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while not _accepts(port):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "fileshare did not start"
            time.sleep(0.05)
        return proc, port, data

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _begin_upload(port: int, total: int, first: bytes) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: {ALICE['Authorization']}\r\nContent-Length: {total}\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    return reader, writer


async def _wait_in_flight(port: int) -> None:
    """Until the server is handling the upload (headers parsed, body streaming)."""
    async with asyncio.timeout(20):
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = (await reader.read()).decode()
            writer.close()
            if "fileshare_uploads_in_flight 1.0" in text:
                return
            await asyncio.sleep(0.02)


async def _wait_refusing(port: int) -> None:
    async with asyncio.timeout(20):
        while _accepts(port):  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.02)


def _staged(data: Path) -> list[Path]:
    return [p for p in data.rglob("*") if p.is_file() and "unscanned" in p.parts]


async def test_in_flight_upload_finishes_after_sigterm(serve: Any) -> None:
    proc, port, _data = serve(grace=30)
    body = os.urandom(3 * 1024 * 1024)
    reader, writer = await _begin_upload(port, len(body), body[: 1024 * 1024])
    await _wait_in_flight(port)
    proc.send_signal(signal.SIGTERM)
    await _wait_refusing(port)  # no new connections while draining
    writer.write(body[1024 * 1024 :])
    await writer.drain()
    answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["size"] == len(body)
    assert proc.wait(timeout=20) == 0
    # Production logs: one JSON object a line, requests bound to their id and client.
    lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines()]
    requests = [e for e in lines if e["event"] == "request" and e["route"] == "/v1/files"]
    assert requests
    assert requests[0]["client"] == "alice"
    assert requests[0]["request_id"]
    promoted = [e for e in lines if e["event"] == "file.promoted"]
    assert promoted[0]["request_id"] == requests[0]["request_id"]
    assert not any(ALICE_KEY in json.dumps(e) for e in lines)


async def test_upload_still_running_at_the_end_of_grace_is_aborted_cleanly(serve: Any) -> None:
    proc, port, data = serve(grace=1)
    _reader, writer = await _begin_upload(port, 10 * 1024 * 1024, os.urandom(1024 * 1024))
    await _wait_in_flight(port)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    writer.close()
    assert _staged(data) == []
    permanent = [p for p in data.rglob("*") if p.is_file() and "permanent" in p.parts]
    assert permanent == []
    logs = proc.stderr.read().decode() if proc.stderr else ""
    assert "server.draining" in logs
    assert ALICE_KEY not in logs
