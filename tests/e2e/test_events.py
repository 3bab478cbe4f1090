"""Storage events as the third trigger of direct uploads' ingestion: SeaweedFS's own filer
webhook (a dedicated SeaweedFS whose filer pushes its events to fileshare), and S3 event
notifications consumed from an SQS queue (moto's SQS server: no real SQS is reachable here).
An event delivered twice, early, forged or for something else changes nothing it should not."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from fileshare.app import create_app
from fileshare.config import Settings
from fileshare.storage.base import DIRECT_PREFIX
from tests.e2e.conftest import ALICE, Env
from tests.e2e.openapi_check import Contracts, ValidatingClient
from tests.e2e.test_direct_uploads import curl_put, file_uploads, intent, settled, status
from tests.servers import SeaweedS3, free_port
from tests.sniff_files import pdf

TOKEN = "events-token-0123456789abcdef"


@pytest.fixture
def backend() -> str:
    return "s3"


async def served(
    aiohttp_client: AiohttpClient, settings: Settings, contracts: Contracts, port: int | None = None
) -> Env:
    kwargs = {} if port is None else {"server_kwargs": {"port": port}}
    client = await aiohttp_client(create_app(settings), **kwargs)
    assert isinstance(client, ValidatingClient)
    client.contract = contracts.get(await (await client.get("/openapi.json")).read())
    return Env(client=client, settings=settings, backend="s3")


# ------------------------------------------------------------------ SeaweedFS's webhook


@pytest.fixture
def pushing_seaweed(tmp_path: Path) -> Iterator[tuple[SeaweedS3, int]]:
    """A SeaweedFS of its own whose filer pushes file events to a port fileshare will
    listen on (the session's SeaweedFS pushes nothing)."""
    port = free_port()
    home = tmp_path / "weed-home"
    (home / ".seaweedfs").mkdir(parents=True)
    (home / ".seaweedfs" / "notification.toml").write_text(
        "[notification.webhook]\n"
        "enabled = true\n"
        f'endpoint = "http://127.0.0.1:{port}/v1/events/seaweedfs"\n'
        f'bearer_token = "{TOKEN}"\n'
        "timeout_seconds = 5\nmax_retries = 3\nbackoff_seconds = 1\nmax_backoff_seconds = 2\n"
        'event_types = ["create", "update"]\n'
    )
    with SeaweedS3(workdir=home) as server:
        yield server, port


async def test_seaweedfs_pushes_the_event_and_the_upload_is_ingested(
    aiohttp_client: AiohttpClient,
    base_settings: Settings,
    api_contracts: Contracts,
    pushing_seaweed: tuple[SeaweedS3, int],
) -> None:
    seaweed, port = pushing_seaweed
    for bucket in (base_settings.unscanned_bucket, base_settings.permanent_bucket):
        seaweed.create_bucket(bucket)
    settings = replace(
        base_settings,
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.access_key,
        s3_secret_key=seaweed.secret_key,
        events_token=TOKEN,
        reconcile_interval=3600.0,  # not the reconciler: the event
    )
    env = await served(aiohttp_client, settings, api_contracts, port)
    data = pdf(50_000)
    issued = await intent(env, data)
    # An event before the bytes are there (out of order, or forged): nothing happens.
    early = {
        "event_type": "create",
        "key": f"/buckets/{settings.unscanned_bucket}/{DIRECT_PREFIX}{issued['id']}",
        "message": {"new_entry": {"name": issued["id"]}},
    }
    hook = "/v1/events/seaweedfs"
    resp = await env.client.post(hook, json=early, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 204
    assert (await status(env, issued))["state"] == "pending"
    # Nobody calls for the completion: SeaweedFS's own event starts the ingestion.
    assert await asyncio.to_thread(curl_put, issued, data) == 200
    done = await settled(env, issued)
    assert done["state"] == "clean"
    got = await env.client.get(f"/v1/files/{issued['fileId']}", headers=ALICE)
    assert await got.read() == data
    # The same event again (a redelivery): nothing more happens.
    resp = await env.client.post(hook, json=early, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 204
    assert await file_uploads(env, issued["fileId"]) == 1
    # A forged one is refused.
    forged = await env.client.post(hook, json=early, headers={"Authorization": "Bearer nope"})
    assert forged.status == 401


async def test_without_a_token_the_webhook_is_off(make_env: Any) -> None:
    env: Env = await make_env()
    resp = await env.client.post(
        "/v1/events/seaweedfs", json={}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 401


# ------------------------------------------------------------------ SQS


@pytest.fixture(scope="module")
def sqs() -> Iterator[str]:
    """moto's SQS server (a stand-in: no real SQS is reachable from CI)."""
    port = free_port()
    log = open(os.devnull, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _sqs_client(endpoint).list_queues()
                break
            except Exception:
                assert proc.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)  # polling a process's readiness
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _sqs_client(endpoint: str) -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def notification(bucket: str, key: str, event: str = "ObjectCreated:Put") -> str:
    """An S3 event notification message as S3 sends it (keys URL-encoded)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
    }
    return json.dumps({"Records": [record]})


async def test_s3_notifications_from_sqs_start_the_ingestion(make_env: Any, sqs: str) -> None:
    queue = _sqs_client(sqs).create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    env: Env = await make_env(sqs_queue_url=queue, sqs_endpoint=sqs, reconcile_interval=3600.0)
    data = pdf(30_000)
    issued = await intent(env, data)
    assert await asyncio.to_thread(curl_put, issued, data) == 200
    key = DIRECT_PREFIX + issued["id"]
    client = _sqs_client(sqs)
    for body in (
        '{"Service":"Amazon S3","Event":"s3:TestEvent"}',  # S3's first message: ignored
        "not json at all",
        notification("another-bucket", key),
        notification(env.settings.unscanned_bucket, key, "ObjectRemoved:Delete"),
        notification(env.settings.unscanned_bucket, key),
        notification(env.settings.unscanned_bucket, key),  # delivered twice
    ):
        client.send_message(QueueUrl=queue, MessageBody=body)
    assert (await settled(env, issued))["state"] == "clean"
    assert await file_uploads(env, issued["fileId"]) == 1
    deadline = time.monotonic() + 30
    while int(
        client.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
    ):
        assert time.monotonic() < deadline, "messages were not acknowledged"
        await asyncio.sleep(0.1)  # polling the queue, which a background task drains
