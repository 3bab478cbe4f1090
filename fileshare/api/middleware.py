"""Request id, trace context and authentication, bound to every log line of the request;
HTTP request metrics.

What a request's log lines say about it is what an operator needs and nothing a patient
could be recognised by: the route template, never the path (paths carry tag names and
owners) nor the query string (file names, tags); the client acting when it is a service,
never the token's subject (a person, often). Who did what to which file is in the audit
trail, found from a log line by its ``request_id``."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from fileshare import errors
from fileshare.api.context import PRINCIPAL, REQUEST_ID
from fileshare.api.keys import AUDIT, AUTHENTICATION, DRAINING, IN_FLIGHT, METRICS, SETTINGS
from fileshare.api.routing import route_template
from fileshare.audit import Action, Actor, Result
from fileshare.auth import policy
from fileshare.auth.base import looks_like_jwt
from fileshare.auth.principal import Principal
from fileshare.metrics import METHODS
from fileshare.tracecontext import parse_traceparent

log = structlog.get_logger(__name__)

#: Paths probes and scrapers reach without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: The status line an answer went out with, recorded as its headers are sent.
_SENT_STATUS = web.RequestKey("sent_status", int)
#: The route label of a request no route matched (404, 405): one value, whatever the path.
UNMATCHED = "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    # A caller's id is propagated only if it cannot forge log structure.
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    # Several traceparent fields are joined as HTTP combines them, which the parser refuses.
    trace = parse_traceparent(",".join(request.headers.getall("traceparent", [])) or None)
    if trace is not None:
        # No span of our own is recorded anywhere, so the log lines join the caller's span.
        structlog.contextvars.bind_contextvars(trace_id=trace.trace_id, span_id=trace.parent_id)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    try:
        response = await handler(request)
        return response
    finally:
        in_flight.leave()
        seconds = time.perf_counter() - started
        if response is not None and not response.prepared and request.app[DRAINING].is_set():
            response.force_close()  # no further requests on this connection
        status = _status(request, response)
        label = "aborted" if status is None else str(status)
        route = _route(request)
        request.app[METRICS].observe_request(route, request.method, label, seconds)
        if request.path not in PUBLIC_PATHS:
            log.info(
                "request",
                method=request.method if request.method in METHODS else "other",
                route=route,
                status=status,
                seconds=round(seconds, 4),
            )


def _route(request: web.Request) -> str:
    """The route label: its template (raw paths carry file ids), or ``unmatched``."""
    return route_template(request) or UNMATCHED


def _status(request: web.Request, response: web.StreamResponse | None) -> int | None:
    """The status the client was sent: a streamed answer's is fixed once its headers are out,
    even if its handler failed later; ``None`` if the request ended without an answer."""
    if _SENT_STATUS in request:
        return request[_SENT_STATUS]
    return response.status if response is not None else None


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: runs just before the headers of every answer go out (plain,
    problem+json, and streamed downloads, whose handlers prepare them before any middleware
    sees them again), so ``X-Request-ID`` is on all of them."""
    if REQUEST_ID not in request:  # answered before the middlewares ran (an Expect: handler)
        request[REQUEST_ID] = uuid.uuid4().hex
    response.headers["X-Request-ID"] = request[REQUEST_ID]
    if (hsts := request.app[SETTINGS].hsts_header) is not None:
        response.headers["Strict-Transport-Security"] = hsts
    request[_SENT_STATUS] = response.status


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Listening has stopped, but kept-alive connections (an ingress's upstreams) can still
    bring requests: answer them 503 and close, so the client retries on another pod."""
    if request.app[DRAINING].is_set() and request.path not in PUBLIC_PATHS:
        raise errors.ShuttingDown("this instance is shutting down; retry")
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Credentials (401), then the route's scope (403), before the handler reads anything
    of the request: the order seed 003 asks for, on every route (``auth.policy``)."""
    route = route_template(request)
    if policy.is_public(request.method, route, request.path):
        return await handler(request)
    try:
        principal = await _authenticate(request, route)
    except errors.Unauthenticated as exc:
        await _audit_refusal(request, None, exc)
        raise
    request[PRINCIPAL] = principal
    structlog.contextvars.bind_contextvars(auth=principal.method)
    if (client := _loggable_client(request, principal)) is not None:
        structlog.contextvars.bind_contextvars(client=client)
    try:
        policy.authorize(principal, request.method, route)
    except errors.Forbidden as exc:
        await _audit_refusal(request, principal, exc)
        raise
    return await handler(request)


async def _authenticate(request: web.Request, route: str | None) -> Principal:
    authentication = request.app[AUTHENTICATION]
    authorization = request.headers.get("Authorization")
    api_key = request.headers.get("X-API-Key")
    if (request.method, route) not in policy.KEY_AND_TOKEN:
        return await authentication.authenticate(authorization, api_key)
    if not (api_key and api_key.strip()) or looks_like_jwt(api_key.strip()):
        raise errors.Unauthenticated("this route takes the application's API key (X-API-Key)")
    await authentication.authenticate(None, api_key)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not looks_like_jwt(token.strip()):
        raise errors.Unauthenticated("this route takes a user's token too (Authorization: Bearer)")
    return await authentication.authenticate(authorization, None)


def _loggable_client(request: web.Request, principal: Principal) -> str | None:
    """The client acting, for the logs; None when that would name a person. An external
    token without a client claim (``azp``, ``client_id``) has only its subject to name the
    caller, and that subject is often a patient's or a clinician's identifier."""
    if principal.method != "jwt" or principal.client != principal.subject:
        return principal.client
    if principal.issuer == request.app[SETTINGS].base_url:
        return principal.client  # fileshare's own tokens name its clients
    return None


async def _audit_refusal(
    request: web.Request, principal: Principal | None, exc: errors.FileshareError
) -> None:
    """An audit row for a refused request. Best effort: the refusal stands whether or not
    the row could be written (a failing index must not turn a 401 into a 503)."""
    actor = Actor(principal, None, source=request.remote, request_id=request[REQUEST_ID])
    event = actor.event(
        Action.AUTH_FAIL,
        Result.DENIED,
        detail={
            "status": exc.status,
            "route": route_template(request) or "unmatched",
            # The authenticators' fixed reasons: never the credential itself.
            "reason": exc.detail[:120],
        },
    )
    try:
        await request.app[AUDIT].record(event)
    except Exception as failure:
        log.warning("audit.write_failed", action=str(event.action), error=type(failure).__name__)
