"""Registering clients, their API keys and grants: what the admin API and the
``fileshare clients|keys|grants`` commands share.

Secrets are generated here, shown to the caller once and kept only as argon2 hashes.
Every change is audited, in the change's own transaction, naming who made it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from fileshare import errors
from fileshare.audit import Action, Actor
from fileshare.auth.keys import format_key, new_key_id
from fileshare.auth.principal import ROLE_SCOPES, Role, parse_scopes
from fileshare.auth.secrets import hash_secret_async, new_secret
from fileshare.auth.trust import ASYMMETRIC
from fileshare.boundary import index_call
from fileshare.index.identity import Access, ApiKey, Client, Grant, IdentityStore
from fileshare.upload_policy import (
    Unscannable,
    UploadPolicy,
    parse_types,
    parse_unscannable,
)

#: Client ids and owners: what ``?owner=`` accepts (``api.params.OWNER``), shorter.
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~@:|-]{0,127}")
#: The longest an API key may live.
MAX_KEY_LIFETIME = timedelta(days=3650)


@dataclass(frozen=True)
class NewClient:
    client: Client
    #: Shown once: None unless a secret was asked for.
    secret: str | None


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    #: ``fsk_<id>_<secret>``, shown once.
    presented: str


def _check_id(value: str, what: str) -> str:
    if not CLIENT_ID.fullmatch(value):
        raise errors.ValidationFailed(
            f"{what} must be 1-128 letters, digits and . _ ~ @ : | -, "
            "starting with a letter or digit"
        )
    return value


def _check_jwks(jwks: Any) -> dict[str, Any]:
    """A JWK Set of public, asymmetric keys (for ``private_key_jwt``)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise errors.ValidationFailed('jwks must be a JWK Set: {"keys": [...]}')
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise errors.ValidationFailed("every JWK must be an object")
        if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise errors.ValidationFailed("a JWK holds private or symmetric key material")
        if jwk.get("alg") is not None and jwk["alg"] not in ASYMMETRIC:
            raise errors.ValidationFailed(f"JWK alg {str(jwk['alg'])[:20]!r} is not asymmetric")
        try:
            jwt.PyJWK(jwk)
        except jwt.PyJWTError as exc:
            raise errors.ValidationFailed(f"a JWK cannot be used: {exc}") from None
    return {"keys": list(jwks["keys"])}


#: Leave a policy member as it is (``update_policy``).
UNCHANGED: Any = object()


def _policy_detail(policy: UploadPolicy) -> dict[str, object]:
    return {
        "allowed_types": sorted(policy.allowed_types),
        "unscannable": policy.unscannable.value if policy.unscannable else None,
    }


class Registry:
    """``reserved``: the bootstrap principals' names (``FILESHARE_API_KEYS``), which no
    client may take as its id or owner: it would share their namespace unseen.
    ``can_quarantine``: there is a quarantine bucket, so a client's unscannable uploads may
    be kept there."""

    def __init__(
        self,
        store: IdentityStore,
        reserved: frozenset[str] = frozenset(),
        *,
        can_quarantine: bool = False,
    ) -> None:
        self.store = store
        self.reserved = reserved
        self.can_quarantine = can_quarantine

    def _policy(self, allowed_types: object, unscannable: object) -> UploadPolicy:
        """A policy from what a request or command gave (None: not given)."""
        if allowed_types is not None and not isinstance(allowed_types, list | tuple):
            raise errors.ValidationFailed("allowedTypes must be a list of media types")
        policy = UploadPolicy(parse_types(allowed_types or ()), parse_unscannable(unscannable))
        if policy.unscannable is Unscannable.QUARANTINE and not self.can_quarantine:
            raise errors.NoQuarantine(
                "unscannable: quarantine needs a quarantine bucket (FILESHARE_QUARANTINE_BUCKET)"
            )
        return policy

    async def create_client(
        self,
        actor: Actor,
        client_id: str,
        *,
        role: str,
        scopes: str | None = None,
        owner: str | None = None,
        with_secret: bool = False,
        jwks: Any = None,
        allowed_types: object = None,
        unscannable: object = None,
    ) -> NewClient:
        _check_id(client_id, "id")
        if client_id in self.reserved or (owner is not None and owner in self.reserved):
            raise errors.AlreadyExists("the id or its owner is a bootstrap principal")
        try:
            the_role = Role(role)
        except ValueError:
            names = ", ".join(r.value for r in Role)
            raise errors.ValidationFailed(f"role must be one of {names}") from None
        allowed = ROLE_SCOPES[the_role]
        wanted = allowed if scopes is None else parse_scopes(scopes)
        if beyond := sorted(wanted - allowed):
            raise errors.ValidationFailed(
                f"a {the_role.value} cannot hold {', '.join(beyond)}; "
                f"it may hold {', '.join(sorted(allowed))}"
            )
        policy = self._policy(allowed_types, unscannable)
        secret = new_secret() if with_secret else None
        client = Client(
            id=client_id,
            role=the_role,
            scopes=frozenset(wanted),
            owner=_check_id(owner, "owner") if owner else client_id,
            created=datetime.now(UTC),
            secret_hash=await hash_secret_async(secret) if secret else None,
            jwks=_check_jwks(jwks) if jwks is not None else None,
            policy=policy,
        )
        event = actor.event(
            Action.CLIENT_CREATE,
            detail={
                "client_id": client_id,
                "role": the_role.value,
                "scopes": sorted(wanted),
                # The namespace of its own files: full access to it, like a grant.
                "owner": client.owner,
            }
            | _policy_detail(policy),
        )
        try:
            await index_call(self.store.create_client(client, event))
        except errors.Conflict:  # the id is taken (or was taken by a concurrent create)
            raise errors.AlreadyExists("a client with this id exists already") from None
        return NewClient(client, secret)

    async def client(self, client_id: str) -> Client:
        found = await index_call(self.store.client(client_id))
        if found is None:
            raise errors.NotFound("no such client")
        return found

    async def clients(self) -> list[Client]:
        return await index_call(self.store.clients())

    async def update_policy(
        self,
        actor: Actor,
        client_id: str,
        *,
        allowed_types: object = UNCHANGED,
        unscannable: object = UNCHANGED,
    ) -> Client:
        """Change what an active client's uploads are held to from its next request on
        (a direct upload already intended keeps the unscannable policy it began with). A
        member left ``UNCHANGED`` stays (it is not written: a concurrent change of the
        other member stands); None clears it (the deployment's settings). Nothing given:
        the client as it is, nothing written."""
        given = {
            name
            for name, value in (("allowed_types", allowed_types), ("unscannable", unscannable))
            if value is not UNCHANGED
        }
        policy = self._policy(
            None if allowed_types is UNCHANGED else allowed_types,
            None if unscannable is UNCHANGED else unscannable,
        )
        detail = {k: v for k, v in _policy_detail(policy).items() if k in given}
        event = actor.event(Action.CLIENT_UPDATE, detail={"client_id": client_id} | detail)
        updated = await index_call(
            self.store.set_policy(client_id, policy, frozenset(given), datetime.now(UTC), event)
        )
        if updated is None:
            raise errors.NotFound("no such active client")
        return updated

    async def revoke_client(self, actor: Actor, client_id: str) -> None:
        event = actor.event(Action.CLIENT_REVOKE, detail={"client_id": client_id})
        if not await index_call(self.store.revoke_client(client_id, datetime.now(UTC), event)):
            raise errors.NotFound("no such active client")

    async def create_key(
        self, actor: Actor, client_id: str, *, lifetime: timedelta | None = None
    ) -> NewKey:
        client = await self.client(client_id)
        if not client.active:
            raise errors.NotFound("no such active client")
        if lifetime is not None and not timedelta(0) < lifetime <= MAX_KEY_LIFETIME:
            raise errors.ValidationFailed("a key lives from 1 second to 10 years")
        now = datetime.now(UTC)
        secret = new_secret()
        key = ApiKey(
            id=new_key_id(),
            client_id=client_id,
            secret_hash=await hash_secret_async(secret),
            created=now,
            expires=None if lifetime is None else now + lifetime,
        )
        event = actor.event(Action.KEY_CREATE, detail={"client_id": client_id, "key_id": key.id})
        await index_call(self.store.create_key(key, event))
        return NewKey(key, format_key(key.id, secret))

    async def keys(self, client_id: str) -> list[ApiKey]:
        await self.client(client_id)
        return await index_call(self.store.keys(client_id))

    async def revoke_key(self, actor: Actor, key_id: str) -> None:
        event = actor.event(Action.KEY_REVOKE, detail={"key_id": key_id})
        if not await index_call(self.store.revoke_key(key_id, datetime.now(UTC), event)):
            raise errors.NotFound("no such active key")

    async def put_grant(self, actor: Actor, grantee: str, owner: str, access: str) -> Grant:
        _check_id(grantee, "grantee")
        _check_id(owner, "owner")
        if access not in (Access.READ, Access.WRITE):
            raise errors.ValidationFailed("access must be read or write")
        subject = actor.principal.subject if actor.principal else "unknown"
        grant = Grant(grantee, owner, access, datetime.now(UTC), subject)
        event = actor.event(
            Action.GRANT_CREATE, owner=owner, detail={"grantee": grantee, "access": access}
        )
        await index_call(self.store.put_grant(grant, event))
        return grant

    async def grants(self, *, grantee: str | None = None, owner: str | None = None) -> list[Grant]:
        return await index_call(self.store.grants(grantee=grantee, owner=owner))

    async def delete_grant(self, actor: Actor, grantee: str, owner: str) -> None:
        event = actor.event(Action.GRANT_DELETE, owner=owner, detail={"grantee": grantee})
        if not await index_call(self.store.delete_grant(grantee, owner, datetime.now(UTC), event)):
            raise errors.NotFound("no such grant")
