"""How a credential becomes a principal.

A request presents one credential (``Authorization: Bearer …`` or ``X-API-Key``). Each
``Authenticator`` knows one form of credential; ``Authentication`` asks the one whose form
the credential has. Every failure is ``errors.Unauthenticated`` (401) with a reason for the
audit trail that is never the credential itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from fileshare import errors
from fileshare.auth.principal import Principal

#: A compact JWS: three base64url segments, the first a JSON header (``{"…`` is ``eyJ``).
_JWT_FORM = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def looks_like_jwt(credential: str) -> bool:
    return _JWT_FORM.fullmatch(credential) is not None


class Authenticator(Protocol):
    """One form of credential.

    ``accepts`` says, from the credential's form alone, whether this authenticator is the
    one to judge it (no I/O, no secret comparison). ``authenticate`` returns the principal
    the credential proves, or raises ``errors.Unauthenticated`` — expired, revoked,
    unknown, a bad signature — and ``errors.ServiceUnavailable``-style errors when what it
    needs to decide (the index, a JWKS endpoint never reached) is down: it fails closed,
    never open."""

    def accepts(self, credential: str) -> bool: ...

    async def authenticate(self, credential: str) -> Principal: ...


class Authentication:
    """The authenticators of a deployment, asked in order."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self._authenticators = list(authenticators)

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        credential = presented(authorization, api_key)
        for authenticator in self._authenticators:
            if authenticator.accepts(credential):
                return await authenticator.authenticate(credential)
        raise errors.Unauthenticated("the credentials are not valid")


def presented(authorization: str | None, api_key: str | None) -> str:
    """The one credential of a request, from ``Authorization: Bearer`` or ``X-API-Key``."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise errors.Unauthenticated("use 'Authorization: Bearer <api key or token>'")
        return credentials.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    raise errors.Unauthenticated("no credentials were presented")
