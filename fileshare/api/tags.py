"""``/v1/tags``: an owner's tag vocabulary (seed 002). Tags are put on files through
``/v1/files/{id}/tags/{tag}`` or a PATCH; putting one on a file adds it here too."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import actor
from fileshare.api.body import read_json
from fileshare.api.files import timestamp
from fileshare.api.keys import SERVICE, SETTINGS

routes = web.RouteTableDef()


def _tag_url(request: web.Request, name: str) -> str:
    return f"{request.app[SETTINGS].base_url}/v1/tags/{quote(name, safe='')}"


def _encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode("ascii")


def _decode(value: str) -> str:
    try:
        return params.tag(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError, errors.InvalidTag):
        raise errors.InvalidParameter(
            "offsetKey is not one this service gave out: pass nextOffsetKey as it came"
        ) from None


@routes.post("/v1/tags")
async def create_tag(request: web.Request) -> web.Response:
    # Who acts (and may write) first: a refused client is not invited to send the body.
    acting = await actor(request, write=True)
    body = params.json_object(
        await read_json(request, media_types=("application/json",)), "the body"
    )
    if set(body) != {"name"}:
        raise errors.ValidationFailed('the body is {"name": "<tag>"}')
    try:
        name = params.tag(body["name"])
    except errors.InvalidTag as exc:
        raise errors.ValidationFailed(exc.detail) from None
    created = await request.app[SERVICE].create_tag(acting, name)
    return web.json_response(
        {"name": name},
        status=201 if created else 200,
        headers={hdrs.LOCATION: _tag_url(request, name)},
    )


@routes.get("/v1/tags")
async def list_tags(request: web.Request) -> web.Response:
    if set(request.query) - {"offsetKey", "pageSize", "owner"}:
        known = "offsetKey, pageSize, owner"
        raise errors.InvalidParameter(f"unknown parameter; this route takes {known}")
    size = params.page_size(request.query)
    after = request.query.get("offsetKey")
    found = await request.app[SERVICE].list_tags(
        await actor(request, write=False), None if after is None else _decode(after), size + 1
    )
    body: dict[str, object] = {
        "items": [{"name": t.name, "created": timestamp(t.created)} for t in found[:size]]
    }
    if len(found) > size:
        body["nextOffsetKey"] = _encode(found[size - 1].name)
    return web.json_response(body)


@routes.delete("/v1/tags/{tag}")
async def delete_tag(request: web.Request) -> web.Response:
    try:
        name = params.tag(request.match_info["tag"])
    except errors.InvalidTag:
        raise errors.NotFound("no such tag") from None
    await request.app[SERVICE].delete_tag(await actor(request, write=True), name)
    return web.Response(status=204)
