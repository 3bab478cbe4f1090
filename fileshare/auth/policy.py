"""Authorization: which scope each route needs, and whose files a principal may reach.

Every route is listed here, once, with the scope it needs (or as public); a route missing
from the table is refused to everybody (a test keeps the table and the router in step).
The checks run in seed 003's order: credentials (401) before scope (403) before the
request itself (400/422) before existence (404). Files of an owner a principal may not
reach are "not found" — never "forbidden", which would confirm that they exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from fileshare import errors
from fileshare.auth.principal import Principal, Role, Scope
from fileshare.boundary import index_call


class Public:
    """Routes anyone may call: probes, the API description, the token endpoint (which
    authenticates its clients itself), the signing keys."""


PUBLIC = Public()
#: (method, route template) -> what it needs. HEAD is checked as GET.
ROUTES: Mapping[tuple[str, str], Scope | Public] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/static/{asset}"): PUBLIC,
    ("GET", "/problems/{code}"): PUBLIC,
    ("POST", "/oauth/token"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/.well-known/oauth-authorization-server"): PUBLIC,
    # SeaweedFS's filer webhook: its own bearer token, checked by the route
    ("POST", "/v1/events/seaweedfs"): PUBLIC,
    # files
    ("POST", "/v1/files"): Scope.FILES_WRITE,
    ("GET", "/v1/files"): Scope.FILES_READ,
    ("GET", "/v1/search/files"): Scope.FILES_READ,
    ("GET", "/v1/files/{file_id}"): Scope.FILES_READ,
    ("PUT", "/v1/files/{file_id}"): Scope.FILES_WRITE,
    ("PATCH", "/v1/files/{file_id}"): Scope.FILES_WRITE,
    ("DELETE", "/v1/files/{file_id}"): Scope.FILES_DELETE,
    ("GET", "/v1/files/{file_id}/metadata"): Scope.FILES_READ,
    ("PUT", "/v1/files/{file_id}/tags/{tag}"): Scope.TAGS_WRITE,
    ("DELETE", "/v1/files/{file_id}/tags/{tag}"): Scope.TAGS_WRITE,
    # direct-to-bucket uploads
    ("POST", "/v1/uploads"): Scope.FILES_WRITE,
    ("GET", "/v1/uploads"): Scope.FILES_READ,
    ("GET", "/v1/uploads/{upload_id}"): Scope.FILES_READ,
    ("POST", "/v1/uploads/{upload_id}/complete"): Scope.FILES_WRITE,
    # partner links (seed 003)
    ("POST", "/v1/links"): Scope.LINKS_WRITE,
    # tags
    ("POST", "/v1/tags"): Scope.TAGS_WRITE,
    ("GET", "/v1/tags"): Scope.FILES_READ,
    ("DELETE", "/v1/tags/{tag}"): Scope.TAGS_WRITE,
    # the audit trail
    ("GET", "/v1/audit"): Scope.AUDIT_READ,
    # webhooks: whoever may read files may hear of them (each client of its own endpoints)
    ("GET", "/v1/webhooks"): Scope.FILES_READ,
    ("POST", "/v1/webhooks"): Scope.FILES_READ,
    ("GET", "/v1/webhooks/{webhook_id}"): Scope.FILES_READ,
    ("DELETE", "/v1/webhooks/{webhook_id}"): Scope.FILES_READ,
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Scope.FILES_READ,
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{message_id}/retry"): Scope.FILES_READ,
    # administration: clients, their keys, grants
    ("GET", "/v1/admin/clients"): Scope.ADMIN,
    ("POST", "/v1/admin/clients"): Scope.ADMIN,
    ("GET", "/v1/admin/clients/{client_id}"): Scope.ADMIN,
    ("PATCH", "/v1/admin/clients/{client_id}"): Scope.ADMIN,
    ("DELETE", "/v1/admin/clients/{client_id}"): Scope.ADMIN,
    ("GET", "/v1/admin/clients/{client_id}/keys"): Scope.ADMIN,
    ("POST", "/v1/admin/clients/{client_id}/keys"): Scope.ADMIN,
    ("DELETE", "/v1/admin/keys/{key_id}"): Scope.ADMIN,
    ("GET", "/v1/admin/grants"): Scope.ADMIN,
    ("PUT", "/v1/admin/grants/{grantee}/{owner}"): Scope.ADMIN,
    ("DELETE", "/v1/admin/grants/{grantee}/{owner}"): Scope.ADMIN,
    ("GET", "/v1/admin/webhooks"): Scope.ADMIN,
    ("GET", "/v1/admin/webhooks/deliveries"): Scope.ADMIN,
    # the quarantine: what the scanner refused, kept as evidence
    ("GET", "/v1/admin/quarantine"): Scope.ADMIN,
    ("GET", "/v1/admin/quarantine/{item_id}"): Scope.ADMIN,
    ("DELETE", "/v1/admin/quarantine/{item_id}"): Scope.ADMIN,
    ("POST", "/v1/admin/quarantine/{item_id}/release"): Scope.ADMIN,
    ("GET", "/v1/admin/quarantine/{item_id}/content"): Scope.ADMIN,
}


#: Routes that take two credentials, checked in this order (seed 003): the calling
#: application's API key (``X-API-Key``), then the user's token (``Authorization: Bearer``,
#: a JWT), whose principal the request acts as.
KEY_AND_TOKEN: frozenset[tuple[str, str]] = frozenset({("POST", "/v1/links")})


def requirement(method: str, route: str | None) -> Scope | Public | None:
    """What a route needs; None when it is not listed (refused) or not a route at all."""
    if route is None:
        return None
    return ROUTES.get(("GET" if method == "HEAD" else method, route))


#: The paths of public routes, as patterns: a request to one of them with a method the
#: route does not take is answered 405 without credentials, as the route itself would be.
_PUBLIC_PATHS = [
    re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route)))
    for (_, route), need in ROUTES.items()
    if isinstance(need, Public)
]


def is_public(method: str, route: str | None, path: str = "") -> bool:
    """Whether the request needs no credentials: its route is public, or no route matched
    and its path is a public route's (a 405 there reveals nothing)."""
    if route is None:
        return any(p.fullmatch(path) for p in _PUBLIC_PATHS)
    return isinstance(requirement(method, route), Public)


def authorize(principal: Principal, method: str, route: str | None) -> None:
    """Raise ``Forbidden`` unless ``principal`` holds the route's scope. Called after
    authentication and before the request is read. Requests no route matched pass: the
    router answers them 404/405, after authentication, so nothing is learnt before it."""
    if route is None:
        return
    need = requirement(method, route)
    if need is None:
        raise errors.Forbidden("this route is not open to any client")
    if isinstance(need, Public):
        return
    if not principal.has(need):
        raise errors.Forbidden(f"the {need.value!r} scope is needed")


class Grants(Protocol):
    async def access(self, grantee: str, owner: str) -> str | None:
        """``read``, ``write`` or None."""
        ...


class Policy:
    """Whose files a principal may reach: its own; any, for an admin; otherwise those of
    the owners a grant names (a worker's participants, a researcher's)."""

    def __init__(self, grants: Grants) -> None:
        self._grants = grants

    async def owner_for(self, principal: Principal, requested: str | None, *, write: bool) -> str:
        if requested is None or requested == principal.owner:
            return principal.owner
        if principal.role is Role.ADMIN:
            return requested
        if principal.role is Role.PARTICIPANT:
            raise errors.NotFound("no such file")
        access = await index_call(self._grants.access(principal.subject, requested))
        if access is None:
            raise errors.NotFound("no such file")
        if write and (access != "write" or principal.role is Role.RESEARCHER):
            # The grant shows the owner exists to this principal already: say why.
            raise errors.Forbidden("your grant for this owner is read-only")
        return requested
