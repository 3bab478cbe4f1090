"""Upload intents (direct-to-bucket uploads) in the index, and the lease that lets one
worker at a time ingest each.

A lease is a conditional ``UPDATE``: it is taken only from a row that is ``pending`` and
whose lease is free or has run out, so two replicas (or a completion call, an event and the
reconciler) racing on one upload get it once. Each lease has a token of its own
(``holder``): ``finish`` and ``release`` are fenced on it, so a worker whose lease was taken
over changes nothing. A failed attempt releases the lease with a ``lease_until`` in the
future: the backoff before the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, or_, select, update

from fileshare.audit import AuditEvent
from fileshare.index import audit
from fileshare.index.base import Cursor, Transactor
from fileshare.index.tables import uploads
from fileshare.models import UploadState
from fileshare.upload_policy import Unscannable


@dataclass(frozen=True)
class Upload:
    id: str
    owner: str
    #: The id the file gets once the upload is clean.
    file_id: str
    state: UploadState
    name: str | None
    content_type: str
    size: int
    sha256: str | None
    staging_key: str
    created: datetime
    expires: datetime
    created_by: str | None = None
    attempts: int = 0
    code: str | None = None
    detail: str | None = None
    signature: str | None = None
    finished: datetime | None = None
    #: A multipart plan's: the store's upload id and the size of every part but the last.
    multipart_id: str | None = None
    part_size: int | None = None
    #: ``put``, ``parts`` or ``form`` (a POST policy: the one flow that can replace the
    #: staged object, so its object is copied away before it is read).
    kind: str = "put"
    #: The uploading client's unscannable policy when the intent was made (None: the
    #: deployment's): the ingestion has no principal to ask.
    unscannable: Unscannable | None = None

    @property
    def part_sizes(self) -> list[int]:
        """The planned parts' sizes (empty for a single PUT)."""
        if self.part_size is None:
            return []
        full, rest = divmod(self.size, self.part_size)
        return [self.part_size] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Outcome:
    """How an ingestion ended."""

    state: UploadState
    code: str | None = None
    detail: str | None = None
    signature: str | None = None


def _upload(m: RowMapping) -> Upload:
    return Upload(
        id=m["id"],
        owner=m["owner"],
        file_id=m["file_id"],
        state=UploadState(m["state"]),
        name=m["name"],
        content_type=m["content_type"],
        size=m["size"],
        sha256=m["sha256"],
        staging_key=m["staging_key"],
        created=m["created"],
        expires=m["expires"],
        created_by=m["created_by"],
        attempts=m["attempts"],
        code=m["code"],
        detail=m["detail"],
        signature=m["signature"],
        finished=m["finished"],
        multipart_id=m["multipart_id"],
        part_size=m["part_size"],
        kind=m["kind"],
        unscannable=Unscannable(m["unscannable"]) if m["unscannable"] else None,
    )


def _free(now: datetime) -> Any:
    """A pending row nobody holds (or whose holder's lease ran out)."""
    t = uploads.c
    return and_(
        t.state == UploadState.PENDING.value,
        or_(t.lease_until.is_(None), t.lease_until < now),
    )


class UploadStore:
    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def _write(self, action: str, fn: Any, event: AuditEvent | None, now: datetime) -> Any:
        return await audit.audited(self._db, action, fn, event, now)

    async def create(self, upload: Upload, event: AuditEvent | None) -> None:
        """Record a new intent (its URL is handed out only after this committed)."""

        def run(conn: Connection) -> bool:
            conn.execute(
                uploads.insert().values(
                    id=upload.id,
                    owner=upload.owner,
                    file_id=upload.file_id,
                    state=upload.state.value,
                    name=upload.name,
                    content_type=upload.content_type,
                    size=upload.size,
                    sha256=upload.sha256,
                    staging_key=upload.staging_key,
                    created=upload.created,
                    expires=upload.expires,
                    created_by=upload.created_by,
                    attempts=0,
                    multipart_id=upload.multipart_id,
                    part_size=upload.part_size,
                    kind=upload.kind,
                    unscannable=upload.unscannable.value if upload.unscannable else None,
                )
            )
            return True

        await self._write("create upload", run, event, upload.created)

    async def get(self, upload_id: str, owner: str | None = None) -> Upload | None:
        """The upload (of ``owner`` only, when given), or None."""

        def run(conn: Connection) -> Upload | None:
            stmt = select(uploads).where(uploads.c.id == upload_id)
            if owner is not None:
                stmt = stmt.where(uploads.c.owner == owner)
            row = conn.execute(stmt).mappings().first()
            return None if row is None else _upload(row)

        return await self._db.transact("read upload", run, write=False)

    async def page(
        self, owner: str, *, state: UploadState | None, after: Cursor | None, limit: int
    ) -> tuple[list[Upload], Cursor | None]:
        """A page of the owner's uploads in (created, id) order, and where the next starts."""

        def run(conn: Connection) -> tuple[list[Upload], Cursor | None]:
            t = uploads.c
            stmt = select(uploads).where(t.owner == owner)
            if state is not None:
                stmt = stmt.where(t.state == state.value)
            if after is not None:
                stmt = stmt.where(
                    or_(
                        t.created > after.created, and_(t.created == after.created, t.id > after.id)
                    )
                )
            rows = conn.execute(stmt.order_by(t.created, t.id).limit(limit + 1)).mappings()
            found = [_upload(r) for r in rows]
            more = len(found) > limit
            found = found[:limit]
            return found, Cursor(found[-1].created, found[-1].id) if more else None

        return await self._db.transact("list uploads", run, write=False)

    async def for_file(self, owner: str, file_id: str) -> Upload | None:
        """The newest upload meant to become this file, or None."""

        def run(conn: Connection) -> Upload | None:
            t = uploads.c
            row = (
                conn.execute(
                    select(uploads)
                    .where(t.owner == owner, t.file_id == file_id)
                    .order_by(t.created.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            return None if row is None else _upload(row)

        return await self._db.transact("read upload", run, write=False)

    async def lease(
        self, upload_id: str, holder: str, now: datetime, until: datetime
    ) -> Upload | None:
        """Take the ingestion of a pending upload until ``until``; None when it is not
        pending, another worker holds it, or it is waiting out a backoff."""

        def run(conn: Connection) -> Upload | None:
            t = uploads.c
            taken = conn.execute(
                update(uploads)
                .where(t.id == upload_id, _free(now))
                .values(lease_holder=holder, lease_until=until)
            ).rowcount
            if taken != 1:
                return None
            row = conn.execute(select(uploads).where(t.id == upload_id)).mappings().one()
            return _upload(row)

        return await self._db.transact("lease upload", run, write=True)

    async def release(self, upload_id: str, holder: str, *, attempts: int, until: datetime) -> None:
        """Give the lease back without an outcome (no bytes yet; a transient failure),
        with the attempts counted so far; no worker takes it again before ``until``."""

        def run(conn: Connection) -> None:
            t = uploads.c
            conn.execute(
                update(uploads)
                .where(t.id == upload_id, t.lease_holder == holder)
                .values(lease_holder=None, lease_until=until, attempts=attempts)
            )

        await self._db.transact("release upload", run, write=True)

    async def finish(
        self,
        upload_id: str,
        holder: str | None,
        outcome: Outcome,
        now: datetime,
        event: AuditEvent | None = None,
    ) -> bool:
        """Record the outcome of a pending upload (held by ``holder``; None: expiring one
        nobody holds). False when it was not this caller's to finish."""

        def run(conn: Connection) -> bool:
            t = uploads.c
            held = t.lease_holder == holder if holder is not None else _free(now)
            done = conn.execute(
                update(uploads)
                .where(t.id == upload_id, t.state == UploadState.PENDING.value, held)
                .values(
                    state=outcome.state.value,
                    code=outcome.code,
                    detail=outcome.detail,
                    signature=outcome.signature,
                    finished=now,
                    lease_holder=None,
                    lease_until=None,
                )
            ).rowcount
            return done == 1

        return bool(await self._write("finish upload", run, event, now))

    async def overdue(self, before: datetime, limit: int) -> list[Upload]:
        """Pending uploads nobody holds whose URL expired before ``before``."""

        def run(conn: Connection) -> list[Upload]:
            t = uploads.c
            rows = conn.execute(
                select(uploads)
                .where(_free(before), t.expires < before)
                .order_by(t.expires)
                .limit(limit)
            ).mappings()
            return [_upload(r) for r in rows]

        return await self._db.transact("read uploads", run, write=False)
