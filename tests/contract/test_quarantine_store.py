"""The quarantine store contract, on SQLite and PostgreSQL: a kept item reads back whole
with its audit row; listing is newest first and bounded; a rescan, a release and a delete
each change only an item whose bytes are still held, so that two admins racing cannot both
win, and the row stays once the bytes are gone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import Connection, select

from fileshare.audit import Action, AuditEvent
from fileshare.config import Settings
from fileshare.index.factory import open_index
from fileshare.index.quarantine import Item, QuarantineStore
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import audit_events
from fileshare.models import ScanRecord, ScanState
from tests.contract.test_index import NOW, settings

__all__ = ["settings"]  # the index contract's fixture: SQLite and PostgreSQL

INFECTED = ScanRecord(ScanState.INFECTED, "Eicar-Test", "ClamAV 1.4.6", NOW)


@pytest.fixture
async def index(settings: Settings) -> AsyncIterator[SqlIndex]:
    async with open_index(settings) as opened:
        yield opened


def item(minutes: int = 0, **changes: object) -> Item:
    item_id = uuid.uuid4().hex
    fields: dict[str, object] = {
        "id": item_id,
        "owner": "alice",
        "file_id": None,
        "name": "r.pdf",
        "content_type": "application/pdf",
        "sha256": "ab" * 32,
        "size": 68,
        "scan": INFECTED,
        "object_key": f"quarantine/{item_id}",
        "created": NOW + timedelta(minutes=minutes),
        "created_by": "alice",
    }
    fields.update(changes)
    return Item(**fields)  # type: ignore[arg-type]


def event(action: Action) -> AuditEvent:
    return AuditEvent(action=action, subject="root", owner="alice")


async def actions(index: SqlIndex) -> list[str]:
    def run(conn: Connection) -> list[str]:
        query = select(audit_events.c.action).order_by(audit_events.c.seq)
        return [r for (r,) in conn.execute(query)]

    return await index.run(run)


async def test_kept_items_read_back_newest_first(index: SqlIndex) -> None:
    store = QuarantineStore(index)
    kept = [item(minutes=i) for i in range(7)]
    for one in kept:
        await store.add(one, event(Action.QUARANTINE_KEEP))
    assert await store.get(kept[0].id) == kept[0]
    assert await store.get(uuid.uuid4().hex) is None
    first, more = await store.page(5)
    assert [i.id for i in first] == [i.id for i in kept[::-1][:5]]
    assert more is not None
    rest, last = await store.page(5, before=more)
    assert [i.id for i in rest] == [i.id for i in kept[::-1][5:]]
    assert last is None
    # Two items of one instant are told apart by their ids: none is skipped or repeated.
    twins = [item(minutes=9), item(minutes=9)]
    for one in twins:
        await store.add(one, None)
    pages: list[str] = []
    cursor = None
    while True:
        found, cursor = await store.page(1, before=cursor)
        pages += [i.id for i in found]
        if cursor is None:
            break
    assert sorted(pages) == sorted(i.id for i in kept + twins)
    assert len(pages) == len(set(pages)) == 9
    assert await actions(index) == ["quarantine.keep"] * 7


async def test_a_listing_can_take_only_the_held_the_released_or_the_deleted(
    index: SqlIndex,
) -> None:
    store = QuarantineStore(index)
    held, gone = item(), item(minutes=1)
    for one in (held, gone):
        await store.add(one, None)
    assert await store.deleted(gone.id, "root", NOW, None)
    for status, expected in (("held", [held]), ("deleted", [gone]), ("released", [])):
        found, _ = await store.page(10, status=status)
        assert [i.id for i in found] == [i.id for i in expected], status


async def test_only_a_held_item_is_rescanned_released_or_deleted(index: SqlIndex) -> None:
    store = QuarantineStore(index)
    one, two = item(), item(minutes=1)
    await store.add(one, None)
    await store.add(two, None)
    later = NOW + timedelta(hours=1)
    unscannable = ScanRecord(ScanState.UNSCANNABLE, "Heuristics.Encrypted.Zip", "ClamAV 2", later)
    assert await store.rescanned(one.id, unscannable, later, event(Action.QUARANTINE_RELEASE))
    assert (await store.get(one.id)).scan == unscannable  # type: ignore[union-attr]

    clean = ScanRecord(ScanState.CLEAN, None, "ClamAV 2", later)
    assert await store.released(
        one.id, clean, "f9", "root", later, event(Action.QUARANTINE_RELEASE)
    )
    # The loser of a race changes nothing, and writes no audit row.
    assert not await store.released(one.id, clean, "f10", "bob", later, None)
    assert not await store.deleted(one.id, "bob", later, event(Action.QUARANTINE_DELETE))
    assert not await store.rescanned(one.id, INFECTED, later, None)
    released = await store.get(one.id)
    assert released is not None
    assert not released.held
    assert (released.released, released.released_by, released.released_file_id) == (
        later,
        "root",
        "f9",
    )
    assert released.scan == clean

    assert await store.deleted(two.id, "root", later, event(Action.QUARANTINE_DELETE))
    assert not await store.released(two.id, clean, "f11", "root", later, None)
    deleted = await store.get(two.id)
    assert deleted is not None
    assert deleted.object_key is None
    assert (deleted.deleted, deleted.deleted_by, deleted.released) == (later, "root", None)
    assert await actions(index) == [
        "quarantine.release",
        "quarantine.release",
        "quarantine.delete",
    ]


async def test_one_release_at_a_time_holds_an_item_and_no_delete_meanwhile(
    index: SqlIndex,
) -> None:
    store = QuarantineStore(index)
    one = item()
    await store.add(one, None)
    hold = NOW + timedelta(hours=1)
    assert await store.claim(one.id, NOW, hold)
    # A second release, and a delete, while the first holds it: refused.
    assert not await store.claim(one.id, NOW + timedelta(minutes=5), hold)
    assert not await store.deleted(one.id, "bob", NOW + timedelta(minutes=5), None)
    # The first fails and lets go: the next may try; a stale token lets go of nothing.
    await store.unclaim(one.id, hold)
    second = NOW + timedelta(hours=2)
    assert await store.claim(one.id, NOW + timedelta(minutes=6), second)
    await store.unclaim(one.id, hold)
    assert not await store.claim(one.id, NOW + timedelta(minutes=7), second)
    # A hold that ran out (its replica died) is taken over.
    assert await store.claim(one.id, second + timedelta(seconds=1), second + timedelta(hours=1))
    # A release whose hold was taken over records nothing; the holder's clears its hold
    # with the bytes: nothing is left to claim or delete.
    clean = ScanRecord(ScanState.CLEAN, None, "ClamAV 2", second)
    assert not await store.released(one.id, clean, "f0", "bob", second, None, held=second)
    assert not await store.rescanned(one.id, INFECTED, second, None, held=second)
    took = second + timedelta(hours=1)
    assert await store.released(one.id, clean, "f1", "root", second, None, held=took)
    assert not await store.claim(one.id, second + timedelta(hours=3), second + timedelta(hours=4))
