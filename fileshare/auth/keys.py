"""API keys: the bootstrap keys of ``FILESHARE_API_KEYS`` and keys registered for clients.

Bootstrap keys are compared in constant time against every configured key (as digests of
one length), so neither a match nor its position leaks through timing. Registered keys have
the form ``fsk_<id>_<secret>``: the id finds the row, the secret is checked against its
argon2 hash, and the key's and its client's revocation and expiry are read on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from fileshare import errors
from fileshare.auth.principal import ROLE_SCOPES, Principal, Role, capped
from fileshare.auth.secrets import Verified
from fileshare.boundary import index_call
from fileshare.index.identity import IdentityStore

PREFIX = "fsk_"
_REGISTERED = re.compile(r"^fsk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")


def new_key_id() -> str:
    return secrets.token_hex(8)


def format_key(key_id: str, secret: str) -> str:
    return f"{PREFIX}{key_id}_{secret}"


def bootstrap_principal(name: str, admins: Collection[str]) -> Principal:
    """A ``FILESHARE_API_KEYS`` principal: its own namespace, named after it, with every
    scope of its role (admin for the names in ``FILESHARE_ADMINS``, else participant —
    what the first releases' keys could do)."""
    role = Role.ADMIN if name in admins else Role.PARTICIPANT
    return Principal(
        subject=name,
        client=name,
        role=role,
        scopes=frozenset(ROLE_SCOPES[role]),
        owner=name,
        method="api_key",
    )


class BootstrapKeys:
    def __init__(self, keys: Mapping[str, str], admins: Collection[str] = ()) -> None:
        # Digests have a fixed length, so compare_digest never short-cuts on length.
        self._keys = [
            (bootstrap_principal(name, admins), hashlib.sha256(key.encode()).digest())
            for name, key in keys.items()
        ]

    def accepts(self, credential: str) -> bool:
        return not credential.startswith(PREFIX)

    def match(self, credential: str) -> Principal | None:
        """The principal whose key ``credential`` is (constant time over every key)."""
        digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for principal, expected in self._keys:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    async def authenticate(self, credential: str) -> Principal:
        found = self.match(credential)
        if found is None:
            raise errors.Unauthenticated("the credentials are not valid")
        return found


class RegisteredKeys:
    def __init__(self, store: IdentityStore, verified: Verified | None = None) -> None:
        self._store = store
        self._verified = verified or Verified()

    def accepts(self, credential: str) -> bool:
        return credential.startswith(PREFIX)

    async def authenticate(self, credential: str) -> Principal:
        m = _REGISTERED.fullmatch(credential)
        if m is None:
            raise errors.Unauthenticated("the credentials are not valid")
        key_id, secret = m.groups()
        found = await index_call(self._store.key(key_id))
        now = datetime.now(UTC)
        if found is None:
            raise errors.Unauthenticated("the credentials are not valid")
        key, client = found
        if not await self._verified.check(key.id, key.secret_hash, secret):
            raise errors.Unauthenticated("the credentials are not valid")
        # Checked after the secret, so a revoked or expired key is not told apart from a
        # wrong one by anybody who does not hold it.
        if not key.usable(now) or not client.active:
            raise errors.Unauthenticated("the API key is revoked or expired")
        return Principal(
            subject=client.id,
            client=client.id,
            role=client.role,
            scopes=capped(client.role, client.scopes),
            owner=client.owner,
            method="api_key",
            registered=True,
            policy=client.policy,
        )
