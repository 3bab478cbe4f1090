"""The webhook outbox contract, on SQLite and PostgreSQL: a message is written with the
audit row of what it reports or not at all, to the endpoints whose clients may read the
owner's files; replicas lease disjoint messages; a settled message follows its state
(delivered, retried at its time, dead until sent again); delivered ones are pruned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import Connection, select

from fileshare.audit import Action, AuditEvent, Result
from fileshare.auth.principal import ROLE_SCOPES, Role
from fileshare.config import Settings
from fileshare.index import audit
from fileshare.index.factory import open_index
from fileshare.index.identity import Client, Grant, IdentityStore
from fileshare.index.outbox import Attempt, DeliveryState, Outbox
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import webhook_deliveries
from fileshare.index.webhooks import Endpoint, WebhookStore
from tests.contract.test_index import HOUR, NOW, settings

__all__ = ["settings"]  # the index contract's fixture: SQLite and PostgreSQL


@pytest.fixture
async def index(settings: Settings) -> AsyncIterator[SqlIndex]:
    async with open_index(settings) as opened:
        yield opened


async def client(index: SqlIndex, client_id: str, role: Role = Role.PARTICIPANT) -> None:
    made = Client(client_id, role, ROLE_SCOPES[role], client_id, NOW)
    await IdentityStore(index).create_client(made, None)


async def endpoint(index: SqlIndex, client_id: str, events: tuple[str, ...] | None = None) -> str:
    made = Endpoint(
        f"wh_{client_id}_{events}", client_id, "https://x.test/", "whsec_AA", events, NOW
    )
    await WebhookStore(index).create(made, None)
    return made.id


def verdict(owner: str, client_id: str | None = None) -> AuditEvent:
    """The row of a clean upload: a ``file.clean`` message."""
    return AuditEvent(
        action=Action.FILE_UPLOAD,
        result=Result.SUCCESS,
        client=client_id,
        owner=owner,
        file_id="f1",
    )


async def record(index: SqlIndex, *events: AuditEvent) -> None:
    await audit.AuditStore(index).record(*events, now=NOW)


async def rows(index: SqlIndex) -> list[dict[str, object]]:
    def run(conn: Connection) -> list[dict[str, object]]:
        query = select(webhook_deliveries).order_by(webhook_deliveries.c.endpoint_id)
        return [dict(m) for m in conn.execute(query).mappings()]

    return await index.run(run)


async def test_messages_go_to_the_endpoints_whose_clients_may_read_the_owners_files(
    index: SqlIndex,
) -> None:
    identity = IdentityStore(index)
    for c in ("clinic", "other", "revoked", "peer"):
        await client(index, c)
    await client(index, "reader", Role.RESEARCHER)
    await client(index, "worker", Role.WORKER)
    await client(index, "stranger", Role.WORKER)
    for grantee, access in (("reader", "read"), ("worker", "write"), ("peer", "read")):
        await identity.put_grant(Grant(grantee, "clinic", access, NOW, "t"), None)
    own = await endpoint(index, "clinic")
    picky = await endpoint(index, "clinic", ("file.deleted",))
    granted = await endpoint(index, "reader")
    acting = await endpoint(index, "worker")
    for c in ("other", "revoked", "stranger", "peer"):
        await endpoint(index, c)
    await identity.revoke_client("revoked", NOW, None)

    # Whoever acted hears of it only if it may read the owner's files (Policy's rules: a
    # participant reads only its own, grant or not; a client without a grant nothing).
    await record(index, verdict("clinic", client_id="stranger"))
    found = await rows(index)
    assert sorted(str(r["endpoint_id"]) for r in found) == sorted([own, granted, acting])
    assert picky not in {r["endpoint_id"] for r in found}
    assert {r["type"] for r in found} == {"file.clean"}
    assert {r["state"] for r in found} == {DeliveryState.PENDING}
    assert len({r["id"] for r in found}) == 3  # a message id per endpoint
    # Reads and other audited actions are no messages.
    await record(index, AuditEvent(action=Action.FILE_DOWNLOAD, owner="clinic", file_id="f1"))
    assert len(await rows(index)) == 3


async def test_a_message_is_written_with_its_change_or_not_at_all(index: SqlIndex) -> None:
    await client(index, "clinic")
    await endpoint(index, "clinic")

    def change_then_fail(conn: Connection) -> None:
        audit.append(conn, [verdict("clinic")], NOW)
        raise RuntimeError("the change failed after its audit row")

    with pytest.raises(RuntimeError):
        await index.run(change_then_fail, write=True)
    assert await rows(index) == []


async def test_replicas_lease_disjoint_messages_and_settled_ones_follow_their_state(
    settings: Settings, index: SqlIndex
) -> None:
    await client(index, "clinic")
    await endpoint(index, "clinic")
    await record(index, *(verdict("clinic") for _ in range(12)))
    async with open_index(settings) as other:
        first, second = Outbox(index), Outbox(other)
        a, b = await asyncio.gather(
            first.lease(NOW, NOW + HOUR, 8), second.lease(NOW, NOW + HOUR, 8)
        )
        leased = [m.id for m in a + b]
        assert len(leased) == len(set(leased)) == 12
    outbox = Outbox(index)
    # Held: not leased again until the lease runs out.
    assert await outbox.lease(NOW + timedelta(minutes=5), NOW + HOUR, 50) == []
    held = {m.id: m for m in a + b}
    delivered, retried, dead, *rest = held
    assert await outbox.settle(held[delivered], Attempt(True, status=204), NOW)
    retry = Attempt(False, 500, "answered 500", NOW + 2 * HOUR)
    assert await outbox.settle(held[retried], retry, NOW)
    assert await outbox.settle(held[dead], Attempt(False, None, "no connection"), NOW)
    # Settled already, or by a replica whose lease ran out: not counted twice.
    assert not await outbox.settle(held[dead], Attempt(False, None, "again"), NOW)
    assert await outbox.counts() == {DeliveryState.PENDING: 10, DeliveryState.DEAD: 1}
    later = await outbox.lease(NOW + HOUR + timedelta(seconds=1), NOW + 3 * HOUR, 50)
    assert sorted(m.id for m in later) == sorted(rest)
    # The first replica's lease ran out and the second took the message: the first's
    # settlement is refused, the second's holds.
    assert not await outbox.settle(held[rest[0]], Attempt(True, status=200), NOW + HOUR)
    # A replica stopping gives back what it has not attempted: due again at once.
    await outbox.release(later)
    again = await outbox.lease(NOW + 2 * HOUR + timedelta(seconds=1), NOW + 5 * HOUR, 50)
    assert {m.id for m in again} == {retried, *rest}  # the retry is due; the rest released
    assert all(m.attempts == (1 if m.id == retried else 0) for m in again)
    assert not any(m.revoked for m in again)

    store = WebhookStore(index)
    assert await store.retry(delivered, NOW, None) is False  # only the dead are sent again
    assert await store.retry(dead, NOW + 5 * HOUR, None) is True
    assert (await outbox.delivery(dead)).state == DeliveryState.PENDING  # type: ignore[union-attr]
    assert await outbox.prune(NOW) == 0
    assert await outbox.prune(NOW + timedelta(seconds=1)) == 1
    assert await outbox.delivery(delivered) is None


async def test_removing_an_endpoint_takes_its_waiting_messages(index: SqlIndex) -> None:
    await client(index, "clinic")
    gone = await endpoint(index, "clinic")
    kept = await endpoint(index, "clinic", ("file.clean",))
    await record(index, verdict("clinic"))
    assert await WebhookStore(index).delete(gone, NOW, None) is True
    assert await WebhookStore(index).delete(gone, NOW, None) is False
    assert [r["endpoint_id"] for r in await rows(index)] == [kept]
