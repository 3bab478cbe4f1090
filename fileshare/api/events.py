"""``POST /v1/events/seaweedfs``: SeaweedFS's filer webhook, pushing storage events (the local
stand-in for S3 event notifications). It authenticates with its own bearer token
(``FILESHARE_EVENTS_TOKEN``), compared in constant time, not as a client: without one the
route is off (every request 401). An event only hints which upload to look at (``events``),
so the answer is given at once and the ingestion runs behind it."""

from __future__ import annotations

import hmac

from aiohttp import web

from fileshare import errors
from fileshare.api.body import read_json
from fileshare.api.keys import EVENTS, SETTINGS
from fileshare.events import seaweed_event

routes = web.RouteTableDef()


@routes.post("/v1/events/seaweedfs")
async def seaweed_webhook(request: web.Request) -> web.Response:
    expected = request.app[SETTINGS].events_token
    dispatcher = request.app.get(EVENTS)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if expected is None or dispatcher is None:
        # Off: no token is valid (the route's existence is in the OpenAPI document anyway).
        raise errors.Unauthenticated("the webhook is off here (no FILESHARE_EVENTS_TOKEN)")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"), expected.encode()
    ):
        raise errors.Unauthenticated("the webhook's bearer token is not valid")
    body = await read_json(request, media_types=("application/json",))
    dispatcher.offer(seaweed_event(body))
    return web.Response(status=204)
