"""The webhook outbox: messages written in the transaction of the change they report, and
leased, delivered and settled by the webhook worker (``webhooks.deliver``).

``audit.append`` calls ``plan`` and ``write``: every audited change that is a message
(``webhooks.messages``) gets one row per endpoint that should hear of it, committed with
the change and its audit row or not at all — a verdict is never reported that was not
recorded, and none recorded goes unreported. An endpoint hears of the files its client may
read: its own namespace's, those of the owners it holds a grant for, and those it acted
on itself (a worker uploading for a participant).
"""

from __future__ import annotations

import json
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    RowMapping,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)

from fileshare.audit import AuditEvent
from fileshare.auth.principal import Role
from fileshare.index.base import Transactor
from fileshare.index.tables import clients, grants, webhook_deliveries, webhook_endpoints
from fileshare.webhooks import messages
from fileshare.webhooks.messages import MessageType


class DeliveryState:
    PENDING = "pending"
    DELIVERED = "delivered"
    #: Given up after the last attempt; an admin may send it again.
    DEAD = "dead"


STATES = (DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.DEAD)


@dataclass(frozen=True)
class Planned:
    event: int  # its place in the transaction's events
    kind: MessageType
    endpoint_id: str


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


_e, _c = webhook_endpoints.c, clients.c
#: The endpoints that hear of an owner's files: those of the clients that may read them as
#: ``auth.policy.Policy`` decides — the owner's own, and its grantees but participants (a
#: participant reads its own files only, grant or not; a worker acting for a participant
#: holds a grant). One statement, compiled once per dialect: it runs in every upload's
#: transaction, where building and compiling a query each time cost more than the query.
_RECIPIENTS = (
    select(_e.id, _e.events)
    .join(clients, _c.id == _e.client_id)
    .where(
        _c.revoked.is_(None),
        or_(
            _c.owner == bindparam("owner"),
            and_(
                _c.id.in_(select(grants.c.grantee).where(grants.c.owner == bindparam("owner"))),
                _c.role != Role.PARTICIPANT.value,
            ),
        ),
    )
    .order_by(_e.id)
)


class _SqliteRecipients:
    """``_RECIPIENTS`` as SQLite's SQL, run on the driver (as ``audit._SqliteAppend``)."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = _RECIPIENTS.compile(dialect=dialect)
        assert compiled.positiontup is not None, "a qmark dialect"
        self.sql = compiled.string
        self.order = list(compiled.positiontup)
        #: Literals in the expression (``role != 'participant'``) are parameters too.
        self.literals = {name: bind.value for name, bind in compiled.binds.items()}

    def rows(self, conn: Connection, params: dict[str, str]) -> list[tuple[str, Any]]:
        driver: Any = conn.connection.dbapi_connection
        values = [params[n] if n in params else self.literals[n] for n in self.order]
        found = driver.execute(self.sql, values).fetchall()
        return [(str(i), None if e is None else json.loads(e)) for i, e in found]


_sqlite: weakref.WeakKeyDictionary[Dialect, _SqliteRecipients] = weakref.WeakKeyDictionary()


def _recipients(conn: Connection, owner: str) -> list[tuple[str, Any]]:
    params = {"owner": owner}
    if conn.dialect.name == "sqlite":
        fast = _sqlite.get(conn.dialect)
        if fast is None:
            fast = _sqlite[conn.dialect] = _SqliteRecipients(conn.dialect)
        return fast.rows(conn, params)
    return [(str(r.id), r.events) for r in conn.execute(_RECIPIENTS, params)]


def plan(conn: Connection, events: Sequence[AuditEvent]) -> list[Planned]:
    """The messages ``events`` make: one per event that is a message and endpoint that
    wants it. Runs before the audit head is locked: one indexed read per owner named."""
    planned: list[Planned] = []
    targets: dict[str, list[tuple[str, Any]]] = {}
    for n, event in enumerate(events):
        kind = messages.message_type(event)
        if kind is None:
            continue
        owner = event.owner
        assert owner is not None  # message_type says so
        if owner not in targets:
            targets[owner] = _recipients(conn, owner)
        planned.extend(
            Planned(n, kind, endpoint)
            for endpoint, wanted in targets[owner]
            if wanted is None or kind.value in wanted
        )
    return planned


def write(
    conn: Connection,
    planned: Sequence[Planned],
    events: Sequence[AuditEvent],
    seqs: Sequence[int],
    at: datetime,
) -> None:
    """Insert the planned messages, each naming its event's audit row."""
    if not planned:
        return
    rows = [
        {
            "id": new_message_id(),
            "endpoint_id": p.endpoint_id,
            "type": p.kind.value,
            "body": messages.body(p.kind, events[p.event], seqs[p.event], at),
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "next_attempt": at,
            "lease_until": None,
            "last_status": None,
            "last_error": None,
            "created": at,
            "delivered": None,
        }
        for p in planned
    ]
    conn.execute(webhook_deliveries.insert(), rows)


@dataclass(frozen=True)
class Due:
    """A message leased for one attempt."""

    id: str
    endpoint_id: str
    url: str
    secret: str
    type: str
    body: str
    attempts: int
    #: Until when this replica holds it: the token its settlement must present.
    held: datetime
    #: Its client was revoked since it was written: it is given up, not sent.
    revoked: bool


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: delivered, or what went wrong and when to try again (None:
    never — the message is dead)."""

    delivered: bool
    status: int | None = None
    error: str | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    type: str
    state: str
    attempts: int
    next_attempt: datetime
    created: datetime
    last_status: int | None
    last_error: str | None
    delivered: datetime | None
    body: str


def _delivery(m: RowMapping) -> Delivery:
    return Delivery(**{k: v for k, v in m.items() if k != "lease_until"})


class Outbox:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def lease(self, now: datetime, until: datetime, limit: int) -> list[Due]:
        """Messages due now, oldest first, held until ``until`` for this replica: another
        replica's lease is skipped (``SKIP LOCKED`` while it takes it, ``lease_until``
        after), so each attempt is made by one."""
        d, e = webhook_deliveries.c, webhook_endpoints.c
        revoked = clients.c.revoked.is_not(None).label("revoked")
        query = (
            select(d.id, d.endpoint_id, e.url, e.secret, d.type, d.body, d.attempts, revoked)
            .join(webhook_endpoints, e.id == d.endpoint_id)
            .join(clients, clients.c.id == e.client_id)
            .where(
                d.state == DeliveryState.PENDING,
                d.next_attempt <= now,
                or_(d.lease_until.is_(None), d.lease_until < now),
            )
            .order_by(d.next_attempt, d.id)
            .limit(limit)
            .with_for_update(of=webhook_deliveries, skip_locked=True)
        )

        def run(conn: Connection) -> list[Due]:
            due = [Due(**row._mapping, held=until) for row in conn.execute(query)]
            if due:
                conn.execute(
                    update(webhook_deliveries)
                    .where(d.id.in_([x.id for x in due]))
                    .values(lease_until=until)
                )
            return due

        return await self._db.transact("lease webhooks", run, write=True)

    async def settle(self, message: Due, attempt: Attempt, now: datetime) -> bool:
        """Record an attempt; False when the lease had run out and another replica holds
        the message now (its own attempt counts, not this one)."""
        d = webhook_deliveries.c
        values: dict[str, object] = {
            "attempts": d.attempts + 1,
            "lease_until": None,
            "last_status": attempt.status,
            "last_error": attempt.error,
        }
        if attempt.delivered:
            values |= {"state": DeliveryState.DELIVERED, "delivered": now}
        elif attempt.retry_at is None:
            values |= {"state": DeliveryState.DEAD}
        else:
            values |= {"next_attempt": attempt.retry_at}
        stmt = (
            update(webhook_deliveries)
            .where(
                d.id == message.id,
                d.state == DeliveryState.PENDING,
                d.lease_until == message.held,
            )
            .values(values)
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._db.transact("settle webhook", run, write=True))

    async def release(self, held: Sequence[Due]) -> None:
        """Give leased messages back unattempted (a replica stopping): due again at once."""
        d = webhook_deliveries.c

        def run(conn: Connection) -> None:
            for message in held:
                conn.execute(
                    update(webhook_deliveries)
                    .where(d.id == message.id, d.lease_until == message.held)
                    .values(lease_until=None)
                )

        await self._db.transact("release webhooks", run, write=True)

    async def deliveries(
        self, *, endpoint_id: str | None, state: str | None, limit: int
    ) -> list[Delivery]:
        """Newest first."""
        d = webhook_deliveries.c
        query = select(webhook_deliveries)
        if endpoint_id is not None:
            query = query.where(d.endpoint_id == endpoint_id)
        if state is not None:
            query = query.where(d.state == state)
        query = query.order_by(d.created.desc(), d.id.desc()).limit(limit)

        def run(conn: Connection) -> list[Delivery]:
            return [_delivery(m) for m in conn.execute(query).mappings()]

        return await self._db.transact("list webhook deliveries", run, write=False)

    async def delivery(self, message_id: str) -> Delivery | None:
        query = select(webhook_deliveries).where(webhook_deliveries.c.id == message_id)

        def run(conn: Connection) -> Delivery | None:
            m = conn.execute(query).mappings().first()
            return _delivery(m) if m else None

        found: Delivery | None = await self._db.transact("read delivery", run, write=False)
        return found

    async def counts(self) -> dict[str, int]:
        """Messages waiting and given up (delivered ones are not counted: they pile up)."""
        d = webhook_deliveries.c
        query = (
            select(d.state, func.count())
            .where(d.state.in_([DeliveryState.PENDING, DeliveryState.DEAD]))
            .group_by(d.state)
        )

        def run(conn: Connection) -> dict[str, int]:
            found = {str(state): int(n) for state, n in conn.execute(query)}
            return {DeliveryState.PENDING: 0, DeliveryState.DEAD: 0} | found

        return await self._db.transact("count webhooks", run, write=False)

    async def prune(self, delivered_before: datetime) -> int:
        """Forget messages delivered before then."""
        d = webhook_deliveries.c
        stmt = delete(webhook_deliveries).where(
            and_(d.state == DeliveryState.DELIVERED, d.delivered < delivered_before)
        )

        def run(conn: Connection) -> int:
            return int(conn.execute(stmt).rowcount)

        return await self._db.transact("prune webhooks", run, write=True)
