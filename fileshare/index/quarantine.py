"""Quarantined uploads in the index: one row per refused upload whose bytes were kept in
the quarantine bucket. Every change is one transaction with its audit row
(``quarantine.keep`` / ``.release`` / ``.delete``, and the verdict of a rescan), as the
webhook store's are. A row outlives its bytes: released or deleted, it records who did it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, RowMapping, and_, or_, select, update

from fileshare.audit import AuditEvent
from fileshare.index import audit
from fileshare.index.base import Cursor, Transactor
from fileshare.index.tables import quarantine
from fileshare.models import ScanRecord, ScanState

#: Where quarantined objects live in the quarantine bucket.
QUARANTINE_PREFIX = "quarantine/"


@dataclass(frozen=True)
class Item:
    id: str
    owner: str
    file_id: str | None
    name: str | None
    content_type: str
    sha256: str
    size: int
    scan: ScanRecord
    #: The object in the quarantine bucket; None once released or deleted.
    object_key: str | None
    created: datetime
    created_by: str | None
    released: datetime | None = None
    released_by: str | None = None
    released_file_id: str | None = None
    deleted: datetime | None = None
    deleted_by: str | None = None

    @property
    def held(self) -> bool:
        """Its bytes are still in quarantine."""
        return self.object_key is not None


def _item(m: RowMapping) -> Item:
    return Item(
        id=m["id"],
        owner=m["owner"],
        file_id=m["file_id"],
        name=m["name"],
        content_type=m["content_type"],
        sha256=m["sha256"],
        size=m["size"],
        scan=ScanRecord(
            state=ScanState(m["state"]),
            signature=m["signature"],
            scanner=m["scanner"],
            scanned_at=m["scanned_at"],
        ),
        object_key=m["object_key"],
        created=m["created"],
        created_by=m["created_by"],
        released=m["released"],
        released_by=m["released_by"],
        released_file_id=m["released_file_id"],
        deleted=m["deleted"],
        deleted_by=m["deleted_by"],
    )


def _holding(held: datetime | None) -> list[ColumnElement[bool]]:
    """The condition that the claim ``held`` (its ``until``) still holds the item."""
    return [] if held is None else [quarantine.c.release_until == held]


class QuarantineStore:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def _write(self, action: str, fn: Any, event: AuditEvent | None, now: datetime) -> Any:
        return await audit.audited(self._db, action, fn, event, now)

    async def add(self, item: Item, event: AuditEvent | None) -> None:
        q = item.scan

        def run(conn: Connection) -> None:
            conn.execute(
                quarantine.insert().values(
                    id=item.id,
                    owner=item.owner,
                    file_id=item.file_id,
                    name=item.name,
                    content_type=item.content_type,
                    sha256=item.sha256,
                    size=item.size,
                    state=q.state.value,
                    signature=q.signature,
                    scanner=q.scanner,
                    scanned_at=q.scanned_at,
                    object_key=item.object_key,
                    created=item.created,
                    created_by=item.created_by,
                )
            )

        await self._write("quarantine upload", run, event, item.created)

    async def get(self, item_id: str) -> Item | None:
        query = select(quarantine).where(quarantine.c.id == item_id)

        def run(conn: Connection) -> Item | None:
            m = conn.execute(query).mappings().first()
            return _item(m) if m else None

        found: Item | None = await self._db.transact("read quarantine", run, write=False)
        return found

    async def page(
        self, limit: int, *, before: Cursor | None = None, status: str | None = None
    ) -> tuple[list[Item], Cursor | None]:
        """``limit`` items, newest first, older than ``before``; with ``status`` (held,
        released, deleted) only those; and where the next page starts (None: the last)."""
        c = quarantine.c
        query = select(quarantine)
        if before is not None:
            query = query.where(
                or_(c.created < before.created, and_(c.created == before.created, c.id < before.id))
            )
        if status == "held":
            query = query.where(c.object_key.is_not(None))
        elif status == "released":
            query = query.where(c.released.is_not(None))
        elif status == "deleted":
            query = query.where(c.deleted.is_not(None))
        query = query.order_by(c.created.desc(), c.id.desc()).limit(limit + 1)

        def run(conn: Connection) -> tuple[list[Item], Cursor | None]:
            found = [_item(m) for m in conn.execute(query).mappings()]
            more = len(found) > limit
            found = found[:limit]
            return found, Cursor(found[-1].created, found[-1].id) if more else None

        page: tuple[list[Item], Cursor | None] = await self._db.transact(
            "list quarantine", run, write=False
        )
        return page

    async def claim(self, item_id: str, now: datetime, until: datetime) -> bool:
        """Hold a held item for one release until ``until``; False when it is not held or
        another release holds it."""
        c = quarantine.c
        stmt = (
            update(quarantine)
            .where(
                c.id == item_id,
                c.object_key.is_not(None),
                or_(c.release_until.is_(None), c.release_until < now),
            )
            .values(release_until=until)
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._db.transact("claim quarantine", run, write=True))

    async def unclaim(self, item_id: str, until: datetime) -> None:
        """Let go of a release that did not end (the claim's ``until`` is its token)."""
        c = quarantine.c
        stmt = (
            update(quarantine)
            .where(c.id == item_id, c.release_until == until)
            .values(release_until=None)
        )

        def run(conn: Connection) -> None:
            conn.execute(stmt)

        await self._db.transact("unclaim quarantine", run, write=True)

    async def rescanned(
        self,
        item_id: str,
        scan: ScanRecord,
        now: datetime,
        event: AuditEvent | None,
        *,
        held: datetime | None = None,
    ) -> bool:
        """A rescan's verdict that is still not clean; False if the item is gone (or, with
        ``held``, no longer held by that claim)."""
        c = quarantine.c
        stmt = (
            update(quarantine)
            .where(c.id == item_id, c.object_key.is_not(None), *_holding(held))
            .values(
                state=scan.state.value,
                signature=scan.signature,
                scanner=scan.scanner,
                scanned_at=scan.scanned_at,
                release_until=None,
            )
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._write("rescan quarantine", run, event, now))

    async def released(
        self,
        item_id: str,
        scan: ScanRecord,
        file_id: str,
        by: str | None,
        now: datetime,
        event: AuditEvent | None,
        *,
        held: datetime | None = None,
    ) -> bool:
        """Rescanned clean and recorded as ``file_id``: the bytes leave quarantine. False
        when another release or a delete got there first (with ``held``: when that claim
        no longer holds the item)."""
        c = quarantine.c
        stmt = (
            update(quarantine)
            .where(c.id == item_id, c.object_key.is_not(None), *_holding(held))
            .values(
                object_key=None,
                state=scan.state.value,
                signature=scan.signature,
                scanner=scan.scanner,
                scanned_at=scan.scanned_at,
                released=now,
                released_by=by,
                released_file_id=file_id,
                release_until=None,
            )
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._write("release quarantine", run, event, now))

    async def deleted(
        self, item_id: str, by: str | None, now: datetime, event: AuditEvent | None
    ) -> bool:
        """The bytes are being removed; the row stays. False unless they were held and no
        release holds them."""
        c = quarantine.c
        stmt = (
            update(quarantine)
            .where(
                c.id == item_id,
                c.object_key.is_not(None),
                or_(c.release_until.is_(None), c.release_until < now),
            )
            .values(object_key=None, deleted=now, deleted_by=by)
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return bool(await self._write("delete quarantine", run, event, now))
