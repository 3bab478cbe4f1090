"""``/v1/webhooks``: a client's callback URLs and what was sent to them; and
``/v1/admin/webhooks``: every endpoint, every dead message. Thin: parse, call
``webhooks.registry``, render. A secret appears in an answer once, at creation."""

from __future__ import annotations

import json

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import unscoped
from fileshare.api.body import json_members
from fileshare.api.context import PRINCIPAL
from fileshare.api.files import timestamp
from fileshare.api.keys import SETTINGS, WEBHOOKS
from fileshare.index.outbox import Delivery, DeliveryState
from fileshare.index.webhooks import Endpoint

routes = web.RouteTableDef()
_NO_STORE = {hdrs.CACHE_CONTROL: "no-store"}


def render_endpoint(e: Endpoint) -> dict[str, object]:
    body: dict[str, object] = {
        "id": e.id,
        "clientId": e.client_id,
        "url": e.url,
        "created": timestamp(e.created),
    }
    if e.events is not None:
        body["events"] = list(e.events)
    return body


def render_delivery(d: Delivery) -> dict[str, object]:
    body: dict[str, object] = {
        "id": d.id,
        "webhookId": d.endpoint_id,
        "type": d.type,
        "state": d.state,
        "attempts": d.attempts,
        "created": timestamp(d.created),
        "payload": json.loads(d.body),
    }
    if d.state == DeliveryState.PENDING:
        body["nextAttempt"] = timestamp(d.next_attempt)
    if d.delivered is not None:
        body["delivered"] = timestamp(d.delivered)
    if d.last_status is not None:
        body["lastStatus"] = d.last_status
    if d.last_error is not None:
        body["lastError"] = d.last_error
    return body


def _listing(request: web.Request) -> tuple[str | None, int]:
    if set(request.query) - {"state", "pageSize"}:
        raise errors.InvalidParameter("unknown parameter; this route takes state, pageSize")
    states = request.query.getall("state", [])
    if len(states) > 1:
        raise errors.InvalidParameter("state may be given once")
    return (states[0] if states else None), params.page_size(request.query)


@routes.get("/v1/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    found = await request.app[WEBHOOKS].endpoints(request[PRINCIPAL])
    return web.json_response({"items": [render_endpoint(e) for e in found]})


@routes.post("/v1/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    body = await json_members(request, {"url", "events"})
    url = params.string_member(body, "url", required=True) or ""
    made = await request.app[WEBHOOKS].register(
        unscoped(request), request[PRINCIPAL], url, body.get("events")
    )
    answer = render_endpoint(made.endpoint) | {"secret": made.secret}
    location = f"{request.app[SETTINGS].base_url}/v1/webhooks/{made.endpoint.id}"
    return web.json_response(answer, status=201, headers={hdrs.LOCATION: location, **_NO_STORE})


@routes.get("/v1/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    found = await request.app[WEBHOOKS].endpoint(
        request[PRINCIPAL], request.match_info["webhook_id"]
    )
    return web.json_response(render_endpoint(found))


@routes.delete("/v1/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    await request.app[WEBHOOKS].delete(
        unscoped(request), request[PRINCIPAL], request.match_info["webhook_id"]
    )
    return web.Response(status=204)


@routes.get("/v1/webhooks/{webhook_id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    state, limit = _listing(request)
    found = await request.app[WEBHOOKS].deliveries(
        request[PRINCIPAL], request.match_info["webhook_id"], state, limit
    )
    return web.json_response({"items": [render_delivery(d) for d in found]})


@routes.post("/v1/webhooks/{webhook_id}/deliveries/{message_id}/retry")
async def retry_delivery(request: web.Request) -> web.Response:
    await request.app[WEBHOOKS].retry(
        unscoped(request),
        request[PRINCIPAL],
        request.match_info["webhook_id"],
        request.match_info["message_id"],
    )
    return web.Response(status=202)


@routes.get("/v1/admin/webhooks")
async def list_all_webhooks(request: web.Request) -> web.Response:
    found = await request.app[WEBHOOKS].all_endpoints()
    return web.json_response({"items": [render_endpoint(e) for e in found]})


@routes.get("/v1/admin/webhooks/deliveries")
async def list_all_deliveries(request: web.Request) -> web.Response:
    state, limit = _listing(request)
    found = await request.app[WEBHOOKS].deliveries(request[PRINCIPAL], None, state, limit)
    return web.json_response({"items": [render_delivery(d) for d in found]})
