"""Health, readiness and metrics of a running service."""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_upload import EICAR, upload


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    assert m, f"{name}{labels} missing from /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_health_and_readiness(env: Env) -> None:
    live = await env.client.get("/healthz")
    assert live.status == 200
    ready = await env.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"clamd": "ok", "storage": "ok", "index": "ok"}


async def test_metrics_count_outcomes_bytes_and_stages(env: Env) -> None:
    data = os.urandom(70_000)
    assert (await upload(env, data)).status == 201
    assert (await upload(env, data)).status == 200
    assert (await upload(env, EICAR)).status == 422
    text = await (await env.client.get("/metrics")).text()
    assert metric(text, "fileshare_uploads_total", 'outcome="clean"') == 1
    assert metric(text, "fileshare_uploads_total", 'outcome="duplicate"') == 1
    assert metric(text, "fileshare_uploads_total", 'outcome="infected"') == 1
    assert metric(text, "fileshare_bytes_in_total") == 2 * len(data) + len(EICAR)
    assert metric(text, "fileshare_stage_seconds_count", 'stage="transfer"') == 3
    assert metric(text, "fileshare_stage_seconds_count", 'stage="verdict_wait"') == 2
    assert metric(text, "fileshare_uploads_in_flight") == 0
    assert metric(text, "fileshare_memory_budget_in_use_bytes") == 0


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_api_description_needs_no_credentials(env: Env) -> None:
    resp = await env.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    spec = await resp.json()
    assert spec["openapi"] == "3.1.0"
    assert spec["servers"] == [{"url": "https://files.example.test"}]
    assert "/v1/files/{fileId}" in spec["paths"]
