"""Authentication: every request (but health and metrics) names a principal.

API keys are compared in constant time against every configured key, so neither the
match nor its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from fileshare import errors


class ApiKeyAuthenticator:
    def __init__(self, keys: Mapping[str, str]) -> None:
        # Digests have a fixed length, so compare_digest never short-cuts on length.
        self._keys = [
            (principal, hashlib.sha256(key.encode()).digest()) for principal, key in keys.items()
        ]

    def authenticate(self, authorization: str | None, api_key: str | None) -> str:
        presented: str | None = None
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise errors.Unauthenticated("use 'Authorization: Bearer <api key>'")
            presented = credentials.strip()
        elif api_key:
            presented = api_key.strip()
        if not presented:
            raise errors.Unauthenticated("no credentials were presented")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for principal, expected in self._keys:
            if hmac.compare_digest(digest, expected):
                found = principal
        if found is None:
            raise errors.Unauthenticated("the credentials are not valid")
        return found
