"""Webhook endpoints in the index: a client's callback URLs, each with its signing secret.
Every change is one transaction with its audit row (``webhook.create`` / ``webhook.delete``
/ ``webhook.retry``), as the identity store's are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, delete, func, select, update

from fileshare.audit import AuditEvent
from fileshare.index import audit
from fileshare.index.base import Conflict, Transactor
from fileshare.index.outbox import DeliveryState
from fileshare.index.tables import clients, webhook_deliveries, webhook_endpoints

#: Endpoints one client may have: enough for a receiver per environment, not a fan-out
#: engine.
ENDPOINTS_PER_CLIENT = 10


@dataclass(frozen=True)
class Endpoint:
    id: str
    client_id: str
    url: str
    secret: str
    #: The message types it wants; None: all.
    events: tuple[str, ...] | None
    created: datetime


def _endpoint(m: RowMapping) -> Endpoint:
    events = m["events"]
    return Endpoint(
        id=m["id"],
        client_id=m["client_id"],
        url=m["url"],
        secret=m["secret"],
        events=None if events is None else tuple(events),
        created=m["created"],
    )


class WebhookStore:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def _write(self, action: str, fn: Any, event: AuditEvent | None, now: datetime) -> Any:
        return await audit.audited(self._db, action, fn, event, now)

    async def create(self, endpoint: Endpoint, event: AuditEvent | None) -> None:
        """Raises ``Conflict`` when the client has its fill of endpoints, and ``LookupError``
        when it is not an active registered client."""
        e = webhook_endpoints.c

        def run(conn: Connection) -> None:
            client = conn.execute(
                select(clients.c.revoked).where(clients.c.id == endpoint.client_id)
            ).first()
            if client is None or client.revoked is not None:
                raise LookupError(endpoint.client_id)
            held = conn.execute(
                select(func.count()).where(e.client_id == endpoint.client_id)
            ).scalar_one()
            if held >= ENDPOINTS_PER_CLIENT:
                raise Conflict(f"a client has at most {ENDPOINTS_PER_CLIENT} webhooks")
            conn.execute(
                webhook_endpoints.insert().values(
                    id=endpoint.id,
                    client_id=endpoint.client_id,
                    url=endpoint.url,
                    secret=endpoint.secret,
                    events=None if endpoint.events is None else list(endpoint.events),
                    created=endpoint.created,
                )
            )

        await self._write("create webhook", run, event, endpoint.created)

    async def endpoints(self, client_id: str | None) -> list[Endpoint]:
        """A client's endpoints, or everybody's (None)."""
        e = webhook_endpoints.c
        query = select(webhook_endpoints).order_by(e.created, e.id)
        if client_id is not None:
            query = query.where(e.client_id == client_id)

        def run(conn: Connection) -> list[Endpoint]:
            return [_endpoint(m) for m in conn.execute(query).mappings()]

        return await self._db.transact("list webhooks", run, write=False)

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        query = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)

        def run(conn: Connection) -> Endpoint | None:
            m = conn.execute(query).mappings().first()
            return _endpoint(m) if m else None

        result: Endpoint | None = await self._db.transact("read webhook", run, write=False)
        return result

    async def delete(self, endpoint_id: str, now: datetime, event: AuditEvent | None) -> bool:
        """Remove it and every message still waiting for it; False when it was not there."""

        def run(conn: Connection) -> bool:
            d = webhook_deliveries.c
            conn.execute(delete(webhook_deliveries).where(d.endpoint_id == endpoint_id))
            gone = conn.execute(
                delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
            )
            return bool(gone.rowcount)

        return bool(await self._write("delete webhook", run, event, now))

    async def retry(self, message_id: str, now: datetime, event: AuditEvent | None) -> bool:
        """Send a dead message again, from its first attempt; False unless it was dead."""
        d = webhook_deliveries.c
        stmt = (
            update(webhook_deliveries)
            .where(d.id == message_id, d.state == DeliveryState.DEAD)
            .values(state=DeliveryState.PENDING, attempts=0, next_attempt=now, lease_until=None)
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._write("retry webhook", run, event, now))
