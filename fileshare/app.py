"""The composition root: the only place where backends, pipeline and API are wired."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

from fileshare.api import (
    admin,
    docs,
    edge,
    files,
    links,
    oauth,
    openapi,
    problems,
    tags,
    uploads,
)
from fileshare.api import audit as audit_api
from fileshare.api import (
    events as events_api,
)
from fileshare.api import quarantine as quarantine_api
from fileshare.api import webhooks as webhooks_api
from fileshare.api.keys import (
    AUDIT,
    AUTHENTICATION,
    DIRECT,
    DRAINING,
    EVENTS,
    IDENTITY,
    IN_FLIGHT,
    LINKS,
    METRICS,
    POLICY,
    QUARANTINE,
    QUARANTINE_STORE,
    REGISTRY,
    SERVICE,
    SETTINGS,
    TOKEN_ISSUER,
    TOKEN_KEYS,
    WEBHOOKS,
)
from fileshare.api.middleware import (
    authenticate,
    refuse_while_draining,
    request_context,
    stamp_response,
)
from fileshare.auth.base import Authentication
from fileshare.auth.issuer import TokenIssuer
from fileshare.auth.jwks import RemoteJwks, client_session
from fileshare.auth.jwt import JwtAuthenticator
from fileshare.auth.keys import BootstrapKeys, RegisteredKeys, bootstrap_principal
from fileshare.auth.policy import Policy
from fileshare.auth.principal import Scope
from fileshare.auth.registry import Registry
from fileshare.auth.signing import OVERLAP_MARGIN, PublishedKeys, Signer
from fileshare.auth.trust import TrustedIssuer
from fileshare.budget import MemoryBudget
from fileshare.config import Settings
from fileshare.direct import DirectUploads
from fileshare.events import EventDispatcher, EventSource, consume, open_sqs
from fileshare.health import InFlight, Readiness
from fileshare.index.audit import AuditStore
from fileshare.index.base import FileIndex, Transactor
from fileshare.index.factory import open_index
from fileshare.index.identity import IdentityStore
from fileshare.index.links import LinkStore
from fileshare.index.outbox import Outbox
from fileshare.index.quarantine import QuarantineStore
from fileshare.index.signing import SigningKeyStore
from fileshare.index.uploads import UploadStore
from fileshare.index.webhooks import WebhookStore
from fileshare.links import LinkService
from fileshare.metrics import CONTENT_TYPE, Metrics
from fileshare.pipeline import Pipeline, Quarantine
from fileshare.quarantine import QuarantineAdmin
from fileshare.recovery import StagingSweeper
from fileshare.rescan import Rescanner
from fileshare.scan.clamd import ClamdScanner
from fileshare.service import FileService
from fileshare.sniff import TypePolicy
from fileshare.storage.base import Storage
from fileshare.storage.factory import open_storage
from fileshare.storage.s3 import S3Storage
from fileshare.webhooks.deliver import Deliverer
from fileshare.webhooks.registry import Webhooks
from fileshare.webhooks.targets import Targets

STORAGE = web.AppKey("storage", Storage)
SCANNER = web.AppKey("scanner", ClamdScanner)
INDEX = web.AppKey("index", FileIndex)
BUDGET = web.AppKey("budget", MemoryBudget)
READINESS = web.AppKey("readiness", Readiness)
UPLOADS = web.AppKey("uploads", UploadStore)
LINK_STORE = web.AppKey("link_store", LinkStore)
#: The external token issuers of ``FILESHARE_JWT_ISSUERS``, with their JWKS sources.
TRUSTED_ISSUERS = web.AppKey("trusted_issuers", tuple[TrustedIssuer, ...])
#: The OpenAPI document, rendered once.
OPENAPI = web.AppKey("openapi", bytes)
RESCANNER = web.AppKey("rescanner", Rescanner)

log = structlog.get_logger(__name__)
#: How long shutdown waits for cancelled uploads to remove their staging data.
CLEANUP_LIMIT = 10.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, report = await request.app[READINESS].evaluate()
    return web.json_response(
        {
            "status": "ready" if ready else "not ready",
            "checks": report,
            "protection": request.app[READINESS].protection,
        },
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
            edge.refuse_unsupported,
            refuse_while_draining,
            authenticate,
        ],
        # Uploads are streamed, never read whole; this bounds only what aiohttp itself
        # would buffer (request.read/post), which fileshare never calls.
        client_max_size=1024 * 1024,
        handler_args={
            "max_line_size": settings.max_line_size,
            "max_field_size": settings.max_field_size,
            "max_headers": settings.max_headers,
            # Bodies are never inflated: every route refuses Content-Encoding (415), so a
            # refused gzip bomb is drained, if at all, as the small thing it is on the wire.
            "auto_decompress": False,
            # After an answer that left the body unread, read (and drop) what the client
            # still sends for at most this long, so the answer is not lost to a reset,
            # then close.
            "lingering_time": edge.LINGER_SECONDS,
        },
    )
    # Every answer, streamed ones included, gets its X-Request-ID as its headers go out.
    app.on_response_prepare.append(stamp_response)
    app[SETTINGS] = settings
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
    app.cleanup_ctx.append(_issuers_ctx)
    app.cleanup_ctx.append(_index_ctx)
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_webhooks_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app[OPENAPI] = json.dumps(openapi.document(settings.base_url)).encode()
    app.add_routes(docs.routes)  # /docs and /problems/{code}, for people
    app.add_routes(files.routes)
    app.add_routes(uploads.routes)
    app.add_routes(links.routes)
    app.add_routes(events_api.routes)  # POST /v1/events/seaweedfs
    app.add_routes(tags.routes)
    app.add_routes(admin.routes)
    app.add_routes(oauth.routes)
    app.add_routes(audit_api.routes)  # GET /v1/audit
    app.add_routes(webhooks_api.routes)
    app.add_routes(quarantine_api.routes)  # /v1/admin/quarantine
    edge.meet_expectations_late(app)
    return app


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_storage(app[SETTINGS]) as storage:
        app[STORAGE] = storage
        yield


async def _index_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_index(settings) as index:
        app[INDEX] = index
        app[AUDIT] = AuditStore(index)
        app[UPLOADS] = UploadStore(index)
        app[LINK_STORE] = LinkStore(index)
        app[QUARANTINE_STORE] = QuarantineStore(index)
        identity = app[IDENTITY] = IdentityStore(index)
        targets = Targets.of(settings.webhook_private_hosts, settings.plaintext_hosts)
        app[WEBHOOKS] = Webhooks(WebhookStore(index), Outbox(index), targets, _now)
        app[POLICY] = Policy(identity)
        app[REGISTRY] = Registry(
            identity,
            frozenset(settings.api_keys),
            can_quarantine=settings.quarantine_bucket is not None,
        )
        issuers: tuple[TrustedIssuer, ...] = app[TRUSTED_ISSUERS]
        own = await _token_endpoint(app, index, identity)
        bootstrap = {n: bootstrap_principal(n, settings.admins) for n in settings.api_keys}
        app[AUTHENTICATION] = Authentication(
            [
                # Before the bootstrap keys: they take any credential not shaped like a
                # registered key, JWTs included.
                JwtAuthenticator((*issuers, own), identity, bootstrap),
                BootstrapKeys(settings.api_keys, settings.admins),
                RegisteredKeys(identity),
            ]
        )
        yield


async def _token_endpoint(
    app: web.Application, index: Transactor, identity: IdentityStore
) -> TrustedIssuer:
    """fileshare's own token endpoint, and the issuer its tokens are then accepted from."""
    settings = app[SETTINGS]
    lifetime = timedelta(seconds=settings.token_lifetime)
    keys = SigningKeyStore(
        index,
        rotation=timedelta(seconds=settings.signing_key_rotation),
        overlap=lifetime + OVERLAP_MARGIN,
    )
    signer = Signer(keys)
    await signer.key()  # a key from the start: /.well-known/jwks.json is never empty
    published = app[TOKEN_KEYS] = PublishedKeys(keys)
    app[TOKEN_ISSUER] = TokenIssuer(
        issuer=settings.base_url,
        audience=settings.token_aud,
        lifetime=lifetime,
        signer=signer,
        keys=keys,
        identity=identity,
        api_keys=settings.api_keys,
        admins=settings.admins,
        audit=app[AUDIT],
    )
    return TrustedIssuer(
        issuer=settings.base_url,
        audiences=(settings.token_aud,),
        algorithms=("ES256",),
        keys=published,
        registered_clients=True,
        role_claim="role",
        scope_claim="scope",
    )


async def _issuers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The external token issuers, their keys fetched (on first use) by one HTTP client."""
    settings = app[SETTINGS]
    if not settings.jwt_issuers:
        app[TRUSTED_ISSUERS] = ()
        yield
        return
    if settings.jwks_allow_http:
        log.warning(
            "jwks.plain_http_allowed",
            detail="FILESHARE_JWKS_ALLOW_HTTP: verification keys may be fetched over plain "
            "http, where anybody on the path can swap them; for development only",
        )
    async with client_session() as http:
        sources = [
            RemoteJwks(
                i.jwks_url, http, issuer=i.issuer, allow_http=settings.jwks_plain_http(i.jwks_url)
            )
            for i in settings.jwt_issuers
        ]
        app[TRUSTED_ISSUERS] = tuple(
            TrustedIssuer(
                issuer=i.issuer,
                audiences=i.audiences,
                algorithms=i.algorithms,
                keys=source,
                scope_claim=i.scope_claim,
                role_claim=i.role_claim,
                owner_claim=i.owner_claim,
                default_role=i.default_role,
                allowed_roles=i.allowed_roles,
                scope_aliases={settings.links_scope: Scope.LINKS_WRITE.value},
            )
            for i, source in zip(settings.jwt_issuers, sources, strict=True)
        )
        try:
            yield
        finally:
            for source in sources:
                await source.close()


async def _check_clamd(app: web.Application) -> None:
    await app[SCANNER].ping()
    app[METRICS].record_clamd_version(await app[SCANNER].version())


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    quarantine = None
    if settings.quarantine_bucket is not None:
        quarantine = Quarantine(
            settings.quarantine_bucket, app[QUARANTINE_STORE], settings.unscannable_policy
        )
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
        single_write=settings.promotion == "single-write",
        types=TypePolicy(settings.type_check, settings.allowed_types),
        quarantine=quarantine,
    )
    rescanner = app[RESCANNER] = Rescanner(
        pipeline=pipeline,
        index=app[INDEX],
        storage=app[STORAGE],
        permanent_bucket=settings.permanent_bucket,
    )
    service = app[SERVICE] = FileService(
        pipeline=pipeline,
        index=app[INDEX],
        storage=app[STORAGE],
        permanent_bucket=settings.permanent_bucket,
        audit=app[AUDIT],
        uploads=app[UPLOADS],
        redirect_ttl=settings.redirect_ttl,
        rescanner=rescanner,
        rescan_on_download=timedelta(seconds=settings.rescan_on_download),
    )
    if quarantine is not None:
        app[QUARANTINE] = QuarantineAdmin(
            store=quarantine.store,
            storage=app[STORAGE],
            bucket=quarantine.bucket,
            pipeline=pipeline,
            files=service,
        )
    direct = app[DIRECT] = DirectUploads(
        pipeline=pipeline,
        files=service,
        uploads=app[UPLOADS],
        storage=app[STORAGE],
        unscanned_bucket=settings.unscanned_bucket,
        url_ttl=settings.direct_url_ttl,
        put_max=settings.direct_put_max,
        part_size=settings.direct_part_size,
        keep_failed=timedelta(seconds=settings.staging_max_age),
        max_size=settings.max_upload_size,
        clock=service.clock,
    )
    events: list[asyncio.Task[None]] = []
    source: EventSource | None = None
    if direct.available:
        dispatcher = app[EVENTS] = EventDispatcher(
            functools.partial(direct.ingest, trigger="event"), settings.unscanned_bucket
        )
        if settings.sqs_queue_url:
            source = await open_sqs(
                settings.sqs_queue_url,
                region=settings.s3_region,
                endpoint=settings.sqs_endpoint,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
            )
            events.append(asyncio.create_task(consume(source, dispatcher)))
    storage = app[STORAGE]
    if settings.links_bucket and isinstance(storage, S3Storage):
        app[LINKS] = LinkService(
            signer=storage,
            storage=storage,
            pipeline=pipeline,
            links=app[LINK_STORE],
            files=service,
            bucket=settings.links_bucket,
            ttl=settings.direct_url_ttl,
            clock=service.clock,
        )
    app[READINESS] = Readiness(
        checks={
            "clamd": functools.partial(_check_clamd, app),
            "storage": app[STORAGE].ping,
            "index": app[INDEX].ping,
        },
        draining=app[DRAINING],
        protection={
            "atRest": settings.encryption.describe(settings.storage),
            "verified": None,
            "plaintext": sorted({p.what for p in settings.plaintext_uses()}),
        },
    )
    recovery = StagingSweeper(
        app[STORAGE],
        unscanned=settings.unscanned_bucket,
        permanent=settings.permanent_bucket,
        max_age=timedelta(seconds=settings.staging_max_age),
        clock=service.clock,
    )
    rescans = asyncio.create_task(
        _rescan_forever(rescanner, settings.rescan_interval, settings.rescan_after)
    )
    sweeper = asyncio.create_task(_sweep_forever(service, recovery, settings.sweep_interval))
    reconciler = asyncio.create_task(_reconcile_forever(direct, settings.reconcile_interval))
    yield
    sweeper.cancel()
    reconciler.cancel()
    rescans.cancel()
    for task in events:
        task.cancel()
    await asyncio.wait([sweeper, reconciler, rescans, *events])
    await rescanner.close()  # downloads' rescans nobody waits for any more
    if source is not None:
        await source.close()
    if EVENTS in app:
        await app[EVENTS].close()
    # Runs before the storage and index contexts close (cleanup_ctx unwinds in reverse).
    await pipeline.wait_for_cleanups(CLEANUP_LIMIT)


def _now() -> datetime:
    return datetime.now(UTC)


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """This replica's worker posting the webhook outbox."""
    settings = app[SETTINGS]
    webhooks = app[WEBHOOKS]
    async with Deliverer(
        webhooks.outbox,
        webhooks.targets,
        attempts=settings.webhook_attempts,
        backoff=settings.webhook_backoff,
        timeout=settings.webhook_timeout,
        metrics=app[METRICS],
        clock=_now,
    ) as deliverer:
        worker = asyncio.create_task(deliverer.forever())
        yield
        worker.cancel()
        await asyncio.wait([worker])


async def _rescan_forever(rescanner: Rescanner, interval: float, after: float) -> None:
    """Every ``interval`` seconds (0: never): rescan clean content verdicted more than
    ``after`` seconds ago or with an older signature database than clamd's now. The first
    round waits one interval: a start-up is busy enough."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await rescanner.run(scanned_before=rescanner.clock() - timedelta(seconds=after))
        except Exception as exc:  # the index or clamd is down: next round
            log.warning("rescan.round_failed", error=type(exc).__name__)


async def _sweep_forever(service: FileService, recovery: StagingSweeper, interval: float) -> None:
    """At start-up and then every ``interval`` seconds: remove objects whose deletion
    failed earlier (the store was down), and what uploads that never finished left
    (``recovery``). A failing round is logged and retried later."""
    while True:
        try:
            removed = await service.sweep()
            if removed:
                log.info("sweep.removed", objects=removed)
        except Exception as exc:  # the store or index is down: next round
            log.warning("sweep.failed", error=str(exc))
        try:
            await recovery.sweep()
        except Exception as exc:
            log.warning("recovery.failed", error=type(exc).__name__)
        await asyncio.sleep(interval)


async def _reconcile_forever(direct: DirectUploads, interval: float) -> None:
    """Every ``interval`` seconds: ingest direct uploads whose bytes arrived but whose
    completion never came, expire those whose URL expired unused."""
    if not direct.available:
        return
    while True:
        try:
            settled = await direct.reconcile()
            if settled:
                log.info("reconcile.settled", uploads=settled)
        except Exception as exc:  # the store or index is down: next round
            log.warning("reconcile.failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
