"""Clients, their API keys and grants, in the index.

Every change is one transaction with its audit row. Reads that authenticate a request
(``key``, ``client``) are single primary-key lookups, made on every request so that a
revocation takes effect at once on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, RowMapping, delete, select, update

from fileshare.audit import AuditEvent
from fileshare.auth.principal import Role, parse_scopes, scope_text
from fileshare.index import audit
from fileshare.index.base import Conflict, Transactor
from fileshare.index.tables import api_keys, clients, grants
from fileshare.upload_policy import NO_POLICY, Unscannable, UploadPolicy


@dataclass(frozen=True)
class Client:
    id: str
    role: Role
    scopes: frozenset[str]
    owner: str
    created: datetime
    secret_hash: str | None = None
    #: Public keys (a JWK Set) for ``private_key_jwt``.
    jwks: dict[str, Any] | None = None
    revoked: datetime | None = None
    #: What its uploads are held to beyond the deployment's settings.
    policy: UploadPolicy = NO_POLICY

    @property
    def active(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True)
class ApiKey:
    id: str
    client_id: str
    secret_hash: str
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


class Access:
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Grant:
    grantee: str
    owner: str
    access: str
    created: datetime
    created_by: str


def _client(m: RowMapping) -> Client:
    return Client(
        id=m["id"],
        role=Role(m["role"]),
        scopes=parse_scopes(m["scopes"]),
        owner=m["owner"],
        created=m["created"],
        secret_hash=m["secret_hash"],
        jwks=m["jwks"],
        revoked=m["revoked"],
        policy=UploadPolicy(
            allowed_types=frozenset((m["allowed_types"] or "").split()),
            unscannable=Unscannable(m["unscannable"]) if m["unscannable"] else None,
        ),
    )


def _policy_values(policy: UploadPolicy) -> dict[str, str | None]:
    return {
        "allowed_types": " ".join(sorted(policy.allowed_types)) or None,
        "unscannable": policy.unscannable.value if policy.unscannable else None,
    }


def _key(m: RowMapping) -> ApiKey:
    return ApiKey(
        id=m["id"],
        client_id=m["client_id"],
        secret_hash=m["secret_hash"],
        created=m["created"],
        expires=m["expires"],
        revoked=m["revoked"],
    )


def _grant(m: RowMapping) -> Grant:
    return Grant(m["grantee"], m["owner"], m["access"], m["created"], m["created_by"])


class IdentityStore:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def _write(self, action: str, fn: Any, event: AuditEvent | None, now: datetime) -> Any:
        return await audit.audited(self._db, action, fn, event, now)

    # ----------------------------------------------------------------- clients

    async def create_client(self, client: Client, event: AuditEvent | None) -> None:
        """Raises ``Conflict`` when the id is taken (revoked ids are never reused)."""

        def run(conn: Connection) -> None:
            if conn.execute(select(clients.c.id).where(clients.c.id == client.id)).first():
                raise Conflict(f"a client {client.id!r} exists already")
            conn.execute(
                clients.insert().values(
                    id=client.id,
                    role=client.role.value,
                    scopes=scope_text(client.scopes),
                    owner=client.owner,
                    secret_hash=client.secret_hash,
                    jwks=client.jwks,
                    created=client.created,
                    revoked=None,
                    **_policy_values(client.policy),
                )
            )

        await self._write("create client", run, event, client.created)

    async def client(self, client_id: str) -> Client | None:
        def run(conn: Connection) -> Client | None:
            m = conn.execute(select(clients).where(clients.c.id == client_id)).mappings().first()
            return _client(m) if m else None

        result: Client | None = await self._db.transact("read client", run, write=False)
        return result

    async def clients(self) -> list[Client]:
        def run(conn: Connection) -> list[Client]:
            rows = conn.execute(select(clients).order_by(clients.c.id)).mappings()
            return [_client(m) for m in rows]

        return await self._db.transact("list clients", run, write=False)

    async def set_policy(
        self,
        client_id: str,
        policy: UploadPolicy,
        members: frozenset[str],
        now: datetime,
        event: AuditEvent | None,
    ) -> Client | None:
        """Write ``members`` (``allowed_types``, ``unscannable``) of an active client's
        upload policy from ``policy``, the others left as they are, in one statement; the
        client as it is then, or None (and no audit row) if there is no active client. No
        members: nothing is written or audited."""
        active = [clients.c.id == client_id, clients.c.revoked.is_(None)]
        values = {k: v for k, v in _policy_values(policy).items() if k in members}

        def read(conn: Connection) -> Client | None:
            m = conn.execute(select(clients).where(*active)).mappings().first()
            return _client(m) if m else None

        if not values:
            found: Client | None = await self._db.transact("read client", read, write=False)
            return found

        def run(conn: Connection) -> Client | Literal[False]:
            if not conn.execute(update(clients).where(*active).values(**values)).rowcount:
                return False
            return read(conn) or False

        result: Client | Literal[False] = await self._write("update client", run, event, now)
        return result or None

    async def revoke_client(self, client_id: str, now: datetime, event: AuditEvent | None) -> bool:
        """Revoke the client and every key of it; False if there is no active client."""

        def run(conn: Connection) -> bool:
            done = conn.execute(
                update(clients)
                .where(clients.c.id == client_id, clients.c.revoked.is_(None))
                .values(revoked=now)
            ).rowcount
            conn.execute(
                update(api_keys)
                .where(api_keys.c.client_id == client_id, api_keys.c.revoked.is_(None))
                .values(revoked=now)
            )
            return bool(done)

        return bool(await self._write("revoke client", run, event, now))

    # ---------------------------------------------------------------- API keys

    async def create_key(self, key: ApiKey, event: AuditEvent | None) -> None:
        def run(conn: Connection) -> None:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    client_id=key.client_id,
                    secret_hash=key.secret_hash,
                    created=key.created,
                    expires=key.expires,
                    revoked=None,
                )
            )

        await self._write("create key", run, event, key.created)

    async def key(self, key_id: str) -> tuple[ApiKey, Client] | None:
        """The key and its client, in one lookup (every request with a registered key)."""

        def run(conn: Connection) -> tuple[ApiKey, Client] | None:
            k = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
            if k is None:
                return None
            c = conn.execute(select(clients).where(clients.c.id == k["client_id"])).mappings().one()
            return _key(k), _client(c)

        result: tuple[ApiKey, Client] | None = await self._db.transact("read key", run, write=False)
        return result

    async def keys(self, client_id: str) -> list[ApiKey]:
        def run(conn: Connection) -> list[ApiKey]:
            stmt = (
                select(api_keys)
                .where(api_keys.c.client_id == client_id)
                .order_by(api_keys.c.created, api_keys.c.id)
            )
            return [_key(m) for m in conn.execute(stmt).mappings()]

        return await self._db.transact("list keys", run, write=False)

    async def revoke_key(self, key_id: str, now: datetime, event: AuditEvent | None) -> bool:
        def run(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id, api_keys.c.revoked.is_(None))
                    .values(revoked=now)
                ).rowcount
            )

        return bool(await self._write("revoke key", run, event, now))

    # ------------------------------------------------------------------ grants

    async def put_grant(self, grant: Grant, event: AuditEvent | None) -> None:
        """Create the grant, or change its access."""

        def run(conn: Connection) -> None:
            conn.execute(
                delete(grants).where(
                    grants.c.grantee == grant.grantee, grants.c.owner == grant.owner
                )
            )
            conn.execute(
                grants.insert().values(
                    grantee=grant.grantee,
                    owner=grant.owner,
                    access=grant.access,
                    created=grant.created,
                    created_by=grant.created_by,
                )
            )

        await self._write("grant", run, event, grant.created)

    async def delete_grant(
        self, grantee: str, owner: str, now: datetime, event: AuditEvent | None
    ) -> bool:
        def run(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    delete(grants).where(grants.c.grantee == grantee, grants.c.owner == owner)
                ).rowcount
            )

        return bool(await self._write("remove grant", run, event, now))

    async def grants(self, *, grantee: str | None = None, owner: str | None = None) -> list[Grant]:
        stmt = select(grants).order_by(grants.c.grantee, grants.c.owner)
        if grantee is not None:
            stmt = stmt.where(grants.c.grantee == grantee)
        if owner is not None:
            stmt = stmt.where(grants.c.owner == owner)

        def run(conn: Connection) -> list[Grant]:
            return [_grant(m) for m in conn.execute(stmt).mappings()]

        return await self._db.transact("list grants", run, write=False)

    async def access(self, grantee: str, owner: str) -> str | None:
        """``read``, ``write`` or None: what ``grantee`` may do with ``owner``'s files."""

        def run(conn: Connection) -> str | None:
            value = conn.execute(
                select(grants.c.access).where(grants.c.grantee == grantee, grants.c.owner == owner)
            ).scalar()
            return str(value) if value is not None else None

        result: str | None = await self._db.transact("read grant", run, write=False)
        return result
