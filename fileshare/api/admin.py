"""``/v1/admin``: clients, their API keys, grants (scope ``admin``). Thin: parse, call the
registry, render. Secrets appear in an answer once, at creation."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

from aiohttp import hdrs, web

from fileshare import errors
from fileshare.api import params
from fileshare.api.acting import unscoped
from fileshare.api.body import json_members
from fileshare.api.files import MERGE_PATCH, timestamp
from fileshare.api.keys import REGISTRY, SETTINGS
from fileshare.auth.principal import scope_text
from fileshare.index.identity import ApiKey, Client, Grant

routes = web.RouteTableDef()
#: No-store: answers may hold a secret shown once.
_NO_STORE = {hdrs.CACHE_CONTROL: "no-store"}


def render_client(c: Client) -> dict[str, object]:
    body: dict[str, object] = {
        "id": c.id,
        "role": c.role.value,
        "scopes": scope_text(c.scopes),
        "owner": c.owner,
        "created": timestamp(c.created),
        "hasSecret": c.secret_hash is not None,
        "hasJwks": c.jwks is not None,
        "active": c.active,
        "allowedTypes": sorted(c.policy.allowed_types),
        "unscannable": c.policy.unscannable.value if c.policy.unscannable else None,
    }
    if c.revoked is not None:
        body["revoked"] = timestamp(c.revoked)
    return body


def render_key(k: ApiKey) -> dict[str, object]:
    body: dict[str, object] = {
        "id": k.id,
        "clientId": k.client_id,
        "created": timestamp(k.created),
        "active": k.revoked is None,
    }
    if k.expires is not None:
        body["expires"] = timestamp(k.expires)
    if k.revoked is not None:
        body["revoked"] = timestamp(k.revoked)
    return body


def render_grant(g: Grant) -> dict[str, object]:
    return {
        "grantee": g.grantee,
        "owner": g.owner,
        "access": g.access,
        "created": timestamp(g.created),
        "createdBy": g.created_by,
    }


@routes.get("/v1/admin/clients")
async def list_clients(request: web.Request) -> web.Response:
    found = await request.app[REGISTRY].clients()
    return web.json_response({"items": [render_client(c) for c in found]})


@routes.post("/v1/admin/clients")
async def create_client(request: web.Request) -> web.Response:
    body = await json_members(
        request,
        {"id", "role", "scopes", "owner", "secret", "jwks", "allowedTypes", "unscannable"},
    )
    with_secret = body.get("secret", False)
    if not isinstance(with_secret, bool):
        raise errors.ValidationFailed("secret must be true or false")
    made = await request.app[REGISTRY].create_client(
        unscoped(request),
        params.string_member(body, "id", required=True) or "",
        role=params.string_member(body, "role", required=True) or "",
        scopes=params.string_member(body, "scopes"),
        owner=params.string_member(body, "owner"),
        with_secret=with_secret,
        jwks=body.get("jwks"),
        allowed_types=body.get("allowedTypes"),
        unscannable=body.get("unscannable"),
    )
    answer = render_client(made.client)
    if made.secret is not None:
        answer["clientSecret"] = made.secret
    base = request.app[SETTINGS].base_url
    # A client id may hold characters a URI may not (``|``): encoded in the Location.
    location = f"{base}/v1/admin/clients/{quote(made.client.id, safe='')}"
    headers = {hdrs.LOCATION: location, **_NO_STORE}
    return web.json_response(answer, status=201, headers=headers)


@routes.get("/v1/admin/clients/{client_id}")
async def get_client(request: web.Request) -> web.Response:
    found = await request.app[REGISTRY].client(request.match_info["client_id"])
    return web.json_response(render_client(found))


@routes.patch("/v1/admin/clients/{client_id}")
async def update_client(request: web.Request) -> web.Response:
    """A JSON merge patch (RFC 7396) of the client's upload policy: a member given replaces
    it, null clears it."""
    body = await json_members(request, {"allowedTypes", "unscannable"}, media_types=MERGE_PATCH)
    updated = await request.app[REGISTRY].update_policy(
        unscoped(request),
        request.match_info["client_id"],
        **{
            name: body[member]
            for member, name in (("allowedTypes", "allowed_types"), ("unscannable", "unscannable"))
            if member in body
        },
    )
    return web.json_response(render_client(updated))


@routes.delete("/v1/admin/clients/{client_id}")
async def revoke_client(request: web.Request) -> web.Response:
    await request.app[REGISTRY].revoke_client(unscoped(request), request.match_info["client_id"])
    return web.Response(status=204)


@routes.get("/v1/admin/clients/{client_id}/keys")
async def list_keys(request: web.Request) -> web.Response:
    found = await request.app[REGISTRY].keys(request.match_info["client_id"])
    return web.json_response({"items": [render_key(k) for k in found]})


@routes.post("/v1/admin/clients/{client_id}/keys")
async def create_key(request: web.Request) -> web.Response:
    body = await json_members(request, {"expiresIn"})
    expires_in = body.get("expiresIn")
    lifetime = None
    if isinstance(expires_in, float) and expires_in.is_integer():
        expires_in = int(expires_in)  # 3600.0 is a whole number too (JSON has one number type)
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise errors.ValidationFailed("expiresIn is a whole number of seconds")
        try:
            lifetime = timedelta(seconds=expires_in)
        except OverflowError:  # past timedelta's range: past any lifetime allowed too
            raise errors.ValidationFailed("expiresIn is longer than a key may live") from None
    made = await request.app[REGISTRY].create_key(
        unscoped(request), request.match_info["client_id"], lifetime=lifetime
    )
    answer = render_key(made.key) | {"key": made.presented}
    return web.json_response(answer, status=201, headers=_NO_STORE)


@routes.delete("/v1/admin/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    await request.app[REGISTRY].revoke_key(unscoped(request), request.match_info["key_id"])
    return web.Response(status=204)


@routes.get("/v1/admin/grants")
async def list_grants(request: web.Request) -> web.Response:
    if set(request.query) - {"grantee", "owner"}:
        raise errors.InvalidParameter("unknown parameter; this route takes grantee, owner")
    found = await request.app[REGISTRY].grants(
        grantee=request.query.get("grantee"), owner=request.query.get("owner")
    )
    return web.json_response({"items": [render_grant(g) for g in found]})


@routes.put("/v1/admin/grants/{grantee}/{owner}")
async def put_grant(request: web.Request) -> web.Response:
    body = await json_members(request, {"access"})
    access = params.string_member(body, "access", required=True) or ""
    grant = await request.app[REGISTRY].put_grant(
        unscoped(request), request.match_info["grantee"], request.match_info["owner"], access
    )
    return web.json_response(render_grant(grant))


@routes.delete("/v1/admin/grants/{grantee}/{owner}")
async def delete_grant(request: web.Request) -> web.Response:
    await request.app[REGISTRY].delete_grant(
        unscoped(request), request.match_info["grantee"], request.match_info["owner"]
    )
    return web.Response(status=204)
