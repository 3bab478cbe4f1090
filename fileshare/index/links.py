"""Partner links in the index: which version of each object of the links bucket the scanner
judged, and until when upload and download links for it are out.

An upload link and a download link for one object are never valid at once: while a
download link is out, nobody can replace the bytes it serves, and a download link is
issued only for the version that was scanned clean (``open_download``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from fileshare.audit import AuditEvent
from fileshare.index import audit
from fileshare.index.base import Transactor
from fileshare.index.tables import links
from fileshare.models import ScanRecord, ScanState


class Opened(enum.Enum):
    OK = "ok"
    #: The other kind of link is out until ``busy_until``.
    BUSY = "busy"
    #: Download: the object's current version has no clean verdict yet (or none at all).
    UNSCANNED = "unscanned"
    #: Download: the scanner found it not clean.
    REFUSED = "refused"


class LinkStore:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def open_upload(
        self, key: str, resource_id: str, now: datetime, until: datetime, event: AuditEvent
    ) -> tuple[Opened, datetime | None]:
        """Record an upload link out until ``until`` (the object's verdict is void from
        now on), unless a download link is out: then ``BUSY`` and when it expires."""

        def run(conn: Connection) -> tuple[Opened, datetime | None]:
            row = _locked(conn, key)
            if row is not None and row["download_until"] and row["download_until"] > now:
                return Opened.BUSY, row["download_until"]
            values = {
                "state": ScanState.PENDING.value,
                "version": None,
                "signature": None,
                "scanner": None,
                "scanned_at": None,
                "upload_until": until,
            }
            _put(conn, row, key, resource_id, now, values)
            audit.append(conn, [event], now)
            return Opened.OK, None

        found: tuple[Opened, datetime | None] = await self._db.transact(
            "open upload link", run, write=True
        )
        if found[0] is Opened.OK:
            audit.logged([event])
        return found

    async def open_download(
        self, key: str, version: str, now: datetime, until: datetime, event: AuditEvent
    ) -> tuple[Opened, datetime | None]:
        """Record a download link out until ``until`` if ``version`` (the object's, now)
        was scanned clean and no upload link is out."""

        def run(conn: Connection) -> tuple[Opened, datetime | None]:
            row = _locked(conn, key)
            if row is None:
                return Opened.UNSCANNED, None
            if row["upload_until"] and row["upload_until"] > now:
                return Opened.BUSY, row["upload_until"]
            if row["version"] != version:
                # With the last upload link's expiry: the scan's verdict is recorded only
                # if no upload link went out while it ran (``record_scan``'s ``since``).
                return Opened.UNSCANNED, row["upload_until"]
            if row["state"] != ScanState.CLEAN.value:
                return Opened.REFUSED, None
            current = row["download_until"]
            conn.execute(
                links.update()
                .where(links.c.object_key == key)
                .values(download_until=until if current is None else max(current, until))
            )
            audit.append(conn, [event], now)
            return Opened.OK, None

        found: tuple[Opened, datetime | None] = await self._db.transact(
            "open download link", run, write=True
        )
        if found[0] is Opened.OK:
            audit.logged([event])
        return found

    async def record_scan(
        self,
        key: str,
        resource_id: str,
        version: str,
        scan: ScanRecord,
        now: datetime,
        event: AuditEvent,
        *,
        since: datetime | None,
    ) -> bool:
        """Remember the verdict on ``version``, unless an upload link went out since the
        scan began (``since``: the last upload link's expiry ``open_download`` saw): the
        verdict may then be about bytes already replaced — under an equal ETag, an MD5, if
        the partner wished — and False."""

        def run(conn: Connection) -> bool:
            row = _locked(conn, key)
            if (None if row is None else row["upload_until"]) != since:
                return False
            values = {
                "state": scan.state.value,
                "version": version,
                "signature": scan.signature,
                "scanner": scan.scanner,
                "scanned_at": scan.scanned_at,
            }
            _put(conn, row, key, resource_id, now, values)
            audit.append(conn, [event], now)
            return True

        recorded: bool = await self._db.transact("record link scan", run, write=True)
        if recorded:
            audit.logged([event])
        return recorded


def _locked(conn: Connection, key: str) -> dict[str, Any] | None:
    stmt = select(links).where(links.c.object_key == key)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return None if row is None else dict(row)


def _put(
    conn: Connection,
    row: dict[str, Any] | None,
    key: str,
    resource_id: str,
    now: datetime,
    values: dict[str, Any],
) -> None:
    """Insert the object's row with ``values``, or update the one ``_locked`` found."""
    if row is None:
        conn.execute(
            links.insert().values(object_key=key, resource_id=resource_id, created=now, **values)
        )
    else:
        conn.execute(links.update().where(links.c.object_key == key).values(**values))
