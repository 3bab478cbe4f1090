"""Request id and authentication, bound to every log line of the request."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from fileshare import errors
from fileshare.api.context import PRINCIPAL, REQUEST_ID
from fileshare.api.keys import AUTHENTICATOR, DRAINING, IN_FLIGHT

log = structlog.get_logger(__name__)

#: Paths probes and scrapers reach without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    # A caller's id is propagated only if it cannot forge log structure.
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    try:
        response = await handler(request)
        return response
    finally:
        in_flight.leave()
        if response is not None and not response.prepared:
            response.headers["X-Request-ID"] = request_id
            if request.app[DRAINING].is_set():
                response.force_close()  # no further requests on this connection
        if request.path not in PUBLIC_PATHS:
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=response.status if response is not None else None,
                seconds=round(time.perf_counter() - started, 4),
            )


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Listening has stopped, but kept-alive connections (an ingress's upstreams) can still
    bring requests: answer them 503 and close, so the client retries on another pod."""
    if request.app[DRAINING].is_set() and request.path not in PUBLIC_PATHS:
        raise errors.ShuttingDown("this instance is shutting down; retry")
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        principal = request.app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization"), request.headers.get("X-API-Key")
        )
        request[PRINCIPAL] = principal
        structlog.contextvars.bind_contextvars(principal=principal)
    return await handler(request)
