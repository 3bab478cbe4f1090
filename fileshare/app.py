"""The composition root: the only place where backends, pipeline and API are wired."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from fileshare.api import files, openapi, problems, tags
from fileshare.api.auth import ApiKeyAuthenticator
from fileshare.api.keys import AUTHENTICATOR, DRAINING, IN_FLIGHT, METRICS, SERVICE, SETTINGS
from fileshare.api.middleware import authenticate, refuse_while_draining, request_context
from fileshare.budget import MemoryBudget
from fileshare.config import Settings
from fileshare.health import InFlight, Readiness
from fileshare.index.base import FileIndex
from fileshare.index.factory import open_index
from fileshare.metrics import CONTENT_TYPE, Metrics
from fileshare.pipeline import Pipeline
from fileshare.scan.clamd import ClamdScanner
from fileshare.service import FileService
from fileshare.storage.base import Storage
from fileshare.storage.factory import open_storage

STORAGE = web.AppKey("storage", Storage)
SCANNER = web.AppKey("scanner", ClamdScanner)
INDEX = web.AppKey("index", FileIndex)
BUDGET = web.AppKey("budget", MemoryBudget)
READINESS = web.AppKey("readiness", Readiness)
#: The OpenAPI document, rendered once.
OPENAPI = web.AppKey("openapi", bytes)

log = structlog.get_logger(__name__)
#: How long shutdown waits for cancelled uploads to remove their staging data.
CLEANUP_LIMIT = 10.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, report = await request.app[READINESS].evaluate()
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": report},
        status=200 if ready else 503,
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            request_context,
            problems.problems_middleware,
            refuse_while_draining,
            authenticate,
        ],
        # Uploads are streamed, never read whole; this bounds only what aiohttp itself
        # would buffer (request.read/post), which fileshare never calls.
        client_max_size=1024 * 1024,
    )
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = ApiKeyAuthenticator(settings.api_keys)
    app[BUDGET] = MemoryBudget(settings.memory_budget)
    app[METRICS] = Metrics()
    app[IN_FLIGHT] = InFlight()
    app[DRAINING] = asyncio.Event()
    app[METRICS].track_budget(lambda: app[BUDGET].in_use, settings.memory_budget)
    app[SCANNER] = ClamdScanner(
        settings.clamd,
        connect_timeout=settings.clamd_connect_timeout,
        idle_timeout=settings.clamd_idle_timeout,
        verdict_timeout=settings.clamd_verdict_timeout,
        max_scans=settings.clamd_max_scans,
    )
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_index_ctx)
    app.cleanup_ctx.append(_service_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app[OPENAPI] = json.dumps(openapi.document(settings.base_url)).encode()
    app.add_routes(files.routes)
    app.add_routes(tags.routes)
    return app


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_storage(app[SETTINGS]) as storage:
        app[STORAGE] = storage
        yield


async def _index_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_index(app[SETTINGS]) as index:
        app[INDEX] = index
        yield


async def _check_clamd(app: web.Application) -> None:
    await app[SCANNER].ping()
    app[METRICS].record_clamd_version(await app[SCANNER].version())


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pipeline = Pipeline(
        storage=app[STORAGE],
        scanner=app[SCANNER],
        catalog=app[INDEX],
        budget=app[BUDGET],
        unscanned_bucket=settings.unscanned_bucket,
        permanent_bucket=settings.permanent_bucket,
        max_size=settings.max_upload_size,
        per_upload_memory=settings.per_upload_memory,
        budget_wait=settings.budget_wait,
        metrics=app[METRICS],
    )
    service = app[SERVICE] = FileService(
        pipeline=pipeline,
        index=app[INDEX],
        storage=app[STORAGE],
        permanent_bucket=settings.permanent_bucket,
    )
    app[READINESS] = Readiness(
        checks={
            "clamd": functools.partial(_check_clamd, app),
            "storage": app[STORAGE].ping,
            "index": app[INDEX].ping,
        },
        draining=app[DRAINING],
    )
    sweeper = asyncio.create_task(_sweep_forever(service, settings.sweep_interval))
    yield
    sweeper.cancel()
    await asyncio.wait([sweeper])
    # Runs before the storage and index contexts close (cleanup_ctx unwinds in reverse).
    await pipeline.wait_for_cleanups(CLEANUP_LIMIT)


async def _sweep_forever(service: FileService, interval: float) -> None:
    """Remove objects whose deletion failed earlier (the store was down), at start-up
    and then every ``interval`` seconds; a failing round is logged and retried later."""
    while True:
        try:
            removed = await service.sweep()
            if removed:
                log.info("sweep.removed", objects=removed)
        except Exception as exc:  # the store or index is down: next round
            log.warning("sweep.failed", error=str(exc))
        await asyncio.sleep(interval)
