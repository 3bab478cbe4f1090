"""``POST /v1/links``: partner links (seed 003). The credentials were checked in the seed's
order before this runs (the application's API key, 401; the user's token, 401; the scope,
403): the body's shape is next (422)."""

from __future__ import annotations

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import actor
from fileshare.api.body import json_members
from fileshare.api.files import timestamp
from fileshare.api.keys import LINKS
from fileshare.api.names import content_disposition
from fileshare.links import LinkAction, check_resource

routes = web.RouteTableDef()


@routes.post("/v1/links")
async def create_link(request: web.Request) -> web.Response:
    body = await json_members(request, {"action", "resource_id", "resource_name"})
    action = params.string_member(body, "action", required=True)
    if action not in {a.value for a in LinkAction}:
        raise errors.ValidationFailed("action must be upload or download")
    resource_id = params.string_member(body, "resource_id", required=True) or ""
    resource_name = params.string_member(body, "resource_name", required=True) or ""
    check_resource(resource_id, resource_name)
    service = request.app.get(LINKS)
    if service is None:
        raise errors.DirectUploadsUnavailable("no links bucket is configured here")
    acting = await actor(request, write=True)
    link = await service.issue(
        acting,
        LinkAction(action),
        resource_id,
        resource_name,
        content_disposition(resource_name),
    )
    answer = {
        "action": link.action.value,
        "resource_id": resource_id,
        "resource_name": resource_name,
        "key": link.key,
        "method": link.request.method,
        "url": link.request.url,
        "headers": link.request.headers,
        "expires": timestamp(link.request.expires),
    }
    return web.json_response(answer, status=201, headers={hdrs.CACHE_CONTROL: "no-store"})
