"""The token endpoint and what describes it: ``POST /oauth/token`` (RFC 6749 §4.4),
``GET /.well-known/jwks.json`` (the signing keys) and
``GET /.well-known/oauth-authorization-server`` (RFC 8414 metadata).

All three are public (``auth.policy``): the token endpoint authenticates its clients itself
(``auth.issuer``). Its answers are RFC 6749's JSON, success and errors alike, never cached.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from fileshare import errors
from fileshare.api.context import REQUEST_ID
from fileshare.api.edge import continue_if_expected
from fileshare.api.keys import SETTINGS, TOKEN_ISSUER, TOKEN_KEYS
from fileshare.auth.issuer import (
    AUTH_METHODS,
    GRANT_CLIENT_CREDENTIALS,
    OAuthError,
    TokenRequest,
    invalid_request,
)
from fileshare.auth.principal import Scope
from fileshare.auth.trust import ASYMMETRIC, KeysUnavailable

TOKEN_PATH = "/oauth/token"  # noqa: S105 (a path, not a secret)
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
FORM = "application/x-www-form-urlencoded"
#: The largest token request taken: a client assertion signed with a certificate chain in
#: its header is a few KiB; nothing legitimate comes near this.
MAX_FORM = 16 * 1024
#: Parameters that must never travel in a URL (where logs and proxies keep them).
_SECRET_PARAMETERS = ("client_secret", "client_assertion")
#: RFC 6749 §5.1: "Cache-Control: no-store" on every answer that carries a token (and on
#: its errors: nothing of a credential exchange belongs in a cache).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: The signing keys: cacheable briefly (verifiers refresh on an unknown kid anyway; the
#: next key is published well before it signs).
JWKS_MAX_AGE = 300

routes = web.RouteTableDef()


def _json(body: dict[str, Any], *, status: int = 200, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


async def _form(request: web.Request) -> list[tuple[str, str]]:
    """The body's parameters, read in bounded chunks (never more than ``MAX_FORM``)."""
    if request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        raise invalid_request("send the form uncompressed")
    if request.content_type != FORM:
        raise invalid_request(f"send the parameters as {FORM}")
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise invalid_request(f"the request body is over {MAX_FORM} bytes")
    parts: list[bytes] = []
    size = 0
    await continue_if_expected(request)
    try:
        while chunk := await request.content.read(MAX_FORM):
            size += len(chunk)
            if size > MAX_FORM:
                raise invalid_request(f"the request body is over {MAX_FORM} bytes")
            parts.append(chunk)
    except (web.RequestPayloadError, ConnectionError):
        raise invalid_request("the request body could not be read") from None
    try:
        text = b"".join(parts).decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except ValueError:  # UnicodeDecodeError included
        raise invalid_request("the form is not UTF-8 application/x-www-form-urlencoded") from None


@routes.post(TOKEN_PATH)
async def token(request: web.Request) -> web.Response:
    try:
        if any(name in request.query for name in _SECRET_PARAMETERS):
            raise invalid_request("client credentials go in the body, never in the URL")
        form = await _form(request)
        issued = await request.app[TOKEN_ISSUER].issue(
            TokenRequest(
                form=form,
                authorization=request.headers.get("Authorization"),
                source=request.remote,
                request_id=request[REQUEST_ID],
            )
        )
    except OAuthError as exc:
        return _json(exc.body(), status=exc.status, headers=NO_STORE | exc.headers)
    return _json(issued.body(), headers=NO_STORE)


@routes.get(JWKS_PATH)
async def jwks(request: web.Request) -> web.Response:
    try:
        document = await request.app[TOKEN_KEYS].jwks()
    except KeysUnavailable:
        raise errors.IndexUnavailable() from None  # never read, and the index is down
    return _json(document, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})


def metadata_document(issuer: str) -> dict[str, Any]:
    """RFC 8414 §2, for a server that has only a token endpoint: no authorization endpoint,
    so no response types (the member is required, hence an empty list)."""
    return {
        "issuer": issuer,
        "token_endpoint": issuer + TOKEN_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "grant_types_supported": [GRANT_CLIENT_CREDENTIALS],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": sorted(ASYMMETRIC),
        "scopes_supported": [s.value for s in Scope],
        "service_documentation": issuer + "/docs",
    }


@routes.get(METADATA_PATH)
async def metadata(request: web.Request) -> web.Response:
    document = metadata_document(request.app[SETTINGS].base_url)
    return _json(document, headers={"Cache-Control": "public, max-age=3600"})
