"""Health, readiness and metrics of a running service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fileshare.app import SCANNER
from tests.e2e.conftest import ALICE, Env
from tests.e2e.test_shutdown import serve  # noqa: F401 - the real `fileshare serve` fixture
from tests.e2e.test_upload import EICAR, download, upload


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    assert m, f"{name}{labels} missing from /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_health_and_readiness(env: Env) -> None:
    # Unknown until clamd has answered VERSION (the readiness check asks): absent, not 0.
    before = await (await env.client.get("/metrics")).text()
    assert "fileshare_clamav_database" not in before
    live = await env.client.get("/healthz")
    assert live.status == 200
    ready = await env.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"clamd": "ok", "storage": "ok", "index": "ok"}
    # The test clamd has only the suite's own signatures, no official database, and answers
    # VERSION with a bare "ClamAV 1.4.6": still unknown, so still absent (a 0 would tell an
    # age alert the database is fresh). The dated case is in tests/unit/test_metrics.py.
    version = await env.client.app[SCANNER].version()
    assert "/" not in version
    after = await (await env.client.get("/metrics")).text()
    assert "fileshare_clamav_database" not in after
    assert metric(after, "process_resident_memory_bytes") > 0


async def test_metrics_count_outcomes_bytes_and_stages(env: Env) -> None:
    data = os.urandom(70_000)
    assert (await upload(env, data)).status == 201
    assert (await upload(env, data)).status == 200
    assert (await upload(env, EICAR)).status == 422
    text = await (await env.client.get("/metrics")).text()
    assert metric(text, "fileshare_uploads_total", 'outcome="clean"') == 1
    assert metric(text, "fileshare_uploads_total", 'outcome="duplicate"') == 1
    assert metric(text, "fileshare_uploads_total", 'outcome="infected"') == 1
    assert metric(text, "fileshare_upload_received_bytes_total") == 2 * len(data) + len(EICAR)
    assert metric(text, "fileshare_upload_stage_duration_seconds_count", 'stage="transfer"') == 3
    assert (
        metric(text, "fileshare_upload_stage_duration_seconds_count", 'stage="verdict_wait"') == 2
    )
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


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples called ``name`` in /metrics, keyed by their labels (order-free)."""
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_every_download_answer_carries_a_request_id(env: Env) -> None:
    data = os.urandom(10_000)
    file_id = (await (await upload(env, data)).json())["id"]
    full = await download(env, file_id)
    ranged = await download(env, file_id, {"Range": "bytes=10-19"})
    head = await env.client.head(f"/v1/files/{file_id}", headers=ALICE)
    assert (full.status, ranged.status, head.status) == (200, 206, 200)
    assert await full.read() == data
    assert await ranged.read() == data[10:20]
    ids = [resp.headers.get("X-Request-ID", "") for resp in (full, ranged, head)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len(set(ids)) == 3
    # The caller's own (safe) id comes back on streamed answers too.
    for extra in ({}, {"Range": "bytes=0-0"}):
        mine = {"X-Request-ID": f"caller-{uuid.uuid4().hex[:8]}:1.2"}
        resp = await download(env, file_id, {**mine, **extra})
        await resp.read()
        assert resp.headers["X-Request-ID"] == mine["X-Request-ID"]
    mine = {"X-Request-ID": "caller-head.1"}
    resp = await env.client.head(f"/v1/files/{file_id}", headers={**ALICE, **mine})
    assert resp.headers["X-Request-ID"] == "caller-head.1"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_http_requests_are_counted_by_route_template_never_by_path(env: Env) -> None:
    data = os.urandom(5_000)
    file_id = (await (await upload(env, data)).json())["id"]
    await (await download(env, file_id)).read()
    await (await download(env, file_id, {"Range": "bytes=1-2"})).read()
    await env.client.head(f"/v1/files/{file_id}", headers=ALICE)
    assert (await env.client.get(f"/v1/files/{file_id}/metadata", headers=ALICE)).status == 200
    stray = uuid.uuid4().hex
    assert (await env.client.get(f"/v1/nowhere/{stray}", headers=ALICE)).status == 404
    assert (await env.client.request("PROPFIND", "/v1/files", headers=ALICE)).status == 405
    text = await (await env.client.get("/metrics")).text()
    counts = samples(text, "fileshare_http_requests_total")
    one = "/v1/files/{file_id}"
    assert counts[labels(route="/v1/files", method="POST", status="201")] == 1
    assert counts[labels(route=one, method="GET", status="200")] == 1
    assert counts[labels(route=one, method="GET", status="206")] == 1
    assert counts[labels(route=one, method="HEAD", status="200")] == 1
    assert counts[labels(route=one + "/metadata", method="GET", status="200")] == 1
    assert counts[labels(route="unmatched", method="GET", status="404")] == 1
    assert counts[labels(route="unmatched", method="other", status="405")] == 1
    durations = samples(text, "fileshare_http_request_duration_seconds_count")
    assert durations[labels(route=one, method="GET")] == 2
    templates = {r.canonical for r in env.client.app.router.resources()}
    assert {dict(k)["route"] for k in counts} <= templates | {"unmatched"}
    # Ids are PHI-adjacent and unbounded: no label, no sample holds one.
    assert file_id not in text
    assert stray not in text


async def test_a_valid_traceparent_binds_its_trace_in_the_logs(serve: Any) -> None:  # noqa: F811
    proc, port, _data = serve(grace=1)
    valid_trace, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    bad_traces = [uuid.uuid4().hex for _ in range(3)]
    sent = {
        "valid": f"00-{valid_trace}-{parent}-01",
        "upper": f"00-{bad_traces[0].upper()}-{parent}-01",
        "zero-parent": f"00-{bad_traces[1]}-{'0' * 16}-01",
        "version-ff": f"ff-{bad_traces[2]}-{parent}-01",
    }
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        for name, value in sent.items():
            headers = {**ALICE, "traceparent": value, "X-Request-ID": f"trace-{name}"}
            async with http.get("/v1/no-such-route", headers=headers) as resp:
                assert resp.status == 404
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert proc.stderr is not None
    logs = proc.stderr.read().decode()
    lines = [json.loads(line) for line in logs.splitlines()]
    requests = {e["request_id"]: e for e in lines if e["event"] == "request"}
    assert requests["trace-valid"]["trace_id"] == valid_trace
    assert requests["trace-valid"]["span_id"] == parent
    for name in ("upper", "zero-parent", "version-ff"):
        assert "trace_id" not in requests[f"trace-{name}"], name
        assert "span_id" not in requests[f"trace-{name}"], name
    for trace in bad_traces:
        assert trace not in logs.lower()
