"""The index on SQLAlchemy Core: one set of queries for SQLite and PostgreSQL.

How a physical DELETE and an upload of the same bytes stay safe together:

* Every promotion writes an object key of its own (``models.new_object_key``); keys are
  never reused. A content row names the one object its records use.
* A record is added only in a transaction that holds the content row's lock and sees it
  clean (``commit``). A record is removed, and its content forgotten when it was the last,
  in a transaction that holds the same lock (``delete``, and ``commit`` when a PUT
  replaces bytes). The forgotten object is listed in ``doomed_objects`` in that same
  transaction and deleted from the store only after it committed.
* So an upload deduplicated onto the content either commits before the delete (the delete
  then sees its record and keeps the content) or after it (it finds the row gone and fails
  with ``ContentGone``: nothing to point at). An upload that promoted its own object never
  loses it: nobody else knows its key.

SQLite has no row locks: its transactions start with ``BEGIN IMMEDIATE`` (see
``index.engine``), which serialises every writer on the file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import EllipsisType, MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    RowMapping,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    literal,
    not_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fileshare.index.base import (
    Committed,
    Conflict,
    ContentGone,
    Cursor,
    FilePatch,
    FileQuery,
    IndexError_,
    IndexUnavailable,
    Page,
    Placement,
    PreconditionFailed,
    Removed,
    Tag,
    TooLarge,
)
from fileshare.index.tables import (
    UtcDateTime,
    contents,
    doomed_objects,
    file_tags,
    files,
    tags,
)
from fileshare.models import Content, FileRecord, ScanRecord, ScanState

T = TypeVar("T")
Scrub = Callable[[str], str]

_RECORD_COLUMNS = (
    files.c.owner,
    files.c.id,
    files.c.name,
    files.c.content_type,
    files.c.created,
    files.c.updated,
    files.c.meta,
    contents.c.sha256,
    contents.c.sha1,
    contents.c.size,
    contents.c.state,
    contents.c.object_key,
    contents.c.signature,
    contents.c.scanner,
    contents.c.scanned_at,
)
_RECORDS = files.join(contents, files.c.sha256 == contents.c.sha256)


def signature_db(scanner: str | None) -> int | None:
    """The signature database version in clamd's ``ClamAV 1.4.6/27000/<date>``."""
    if scanner is None:
        return None
    parts = scanner.split("/")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _content(m: RowMapping) -> Content:
    return Content(
        sha256=m["sha256"],
        sha1=bytes(m["sha1"]),
        size=m["size"],
        key=m["object_key"],
        scan=ScanRecord(
            state=ScanState(m["state"]),
            signature=m["signature"],
            scanner=m["scanner"],
            scanned_at=m["scanned_at"],
        ),
    )


def _record(m: RowMapping, tag_names: Iterable[str] = ()) -> FileRecord:
    return FileRecord(
        owner=m["owner"],
        id=m["id"],
        name=m["name"],
        content_type=m["content_type"],
        content=_content(m),
        created=m["created"],
        updated=m["updated"],
        metadata=MappingProxyType(dict(m["meta"] or {})),
        tags=tuple(tag_names),
    )


def _content_values(content: Content) -> dict[str, object]:
    scan = content.scan
    return {
        "sha256": content.sha256,
        "sha1": content.sha1,
        "size": content.size,
        "state": scan.state.value,
        "object_key": content.key,
        "signature": scan.signature,
        "scanner": scan.scanner,
        "signature_db": signature_db(scan.scanner),
        "scanned_at": scan.scanned_at,
    }


def like_pattern(pattern: str) -> str:
    """A user's ``%`` pattern as a LIKE pattern with ``\\`` as the escape: ``%`` stays a
    wildcard, ``_`` and ``\\`` are literal. Folded, like the column it is compared to."""
    return pattern.casefold().replace("\\", "\\\\").replace("_", "\\_")


def merge_patch(target: Mapping[str, object], patch: Mapping[str, object]) -> dict[str, object]:
    """RFC 7396 applied to a JSON object."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            current = result.get(key)
            result[key] = merge_patch(current if isinstance(current, Mapping) else {}, value)
        else:
            result[key] = value
    return result


class SqlIndex:
    """``FileIndex`` on an ``AsyncEngine`` (made and migrated by ``index.engine``).

    Every call is one transaction bounded by ``timeout`` seconds, waiting for a pooled
    connection included. Messages never carry a password: ``scrub`` removes it."""

    def __init__(self, engine: AsyncEngine, *, timeout: float, name: str, scrub: Scrub) -> None:
        self._engine = engine
        self._timeout = timeout
        self._name = name
        self._scrub = scrub
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def __repr__(self) -> str:
        return f"SqlIndex({self._name})"

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def _tx(self, action: str, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout), self._engine.begin() as conn:
                return await fn(conn)
        except IndexError_:
            raise
        except IntegrityError:
            raise Conflict(f"{action}: a concurrent change conflicted") from None
        except (SQLAlchemyError, OSError, TimeoutError, ValueError) as exc:
            if _is_conflict(exc):
                raise Conflict(f"{action}: a concurrent change conflicted") from None
            if isinstance(exc, TimeoutError):
                detail = f"no answer within {self._timeout:g}s"
            else:
                detail = f"{type(exc).__name__}: {_first_line(exc)}"
            message = f"{self._name} index: {action} failed: {detail}"
            raise IndexUnavailable(self._scrub(message)) from None

    # ---------------------------------------------------------------- contents

    async def find_clean(self, sha256: str) -> Content | None:
        query = select(contents).where(
            contents.c.sha256 == sha256,
            contents.c.state == ScanState.CLEAN.value,
            contents.c.object_key.is_not(None),
        )

        async def run(conn: AsyncConnection) -> Content | None:
            row = (await conn.execute(query)).first()
            return None if row is None else _content(row._mapping)

        return await self._tx("find_clean", run)

    async def record_verdict(self, content: Content) -> None:
        created = content.scan.scanned_at or datetime.now(UTC)
        values = _content_values(content) | {"object_key": None, "created": created}
        stmt = self._insert(contents).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[contents.c.sha256],
            set_={k: stmt.excluded[k] for k in values if k not in ("sha256", "created")},
            where=contents.c.state != ScanState.CLEAN.value,
        )

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._tx("record_verdict", run)

    async def _lock_content(self, conn: AsyncConnection, sha256: str) -> Row[Any] | None:
        query = select(contents).where(contents.c.sha256 == sha256).with_for_update()
        return (await conn.execute(query)).first()

    async def _release(self, conn: AsyncConnection, sha256: str, now: datetime) -> list[str]:
        """Forget the content if no record uses it any more; its object becomes doomed."""
        row = await self._lock_content(conn, sha256)
        if row is None:
            return []
        used = await conn.execute(select(files.c.id).where(files.c.sha256 == sha256).limit(1))
        if used.first() is not None:
            return []
        await conn.execute(delete(contents).where(contents.c.sha256 == sha256))
        key = row._mapping["object_key"]
        if key is None:
            return []
        await self._doom(conn, key, now)
        return [key]

    async def _doom(self, conn: AsyncConnection, key: str, not_before: datetime) -> None:
        stmt = self._insert(doomed_objects).values(object_key=key, not_before=not_before)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[doomed_objects.c.object_key],
                set_={"not_before": stmt.excluded.not_before},
            )
        )

    async def reserve(self, key: str, until: datetime) -> None:
        async def run(conn: AsyncConnection) -> None:
            await self._doom(conn, key, until)

        await self._tx("reserve", run)

    async def _settle_content(
        self, conn: AsyncConnection, content: Content, *, held: bool, now: datetime
    ) -> tuple[str, list[str]]:
        """Lock the content row as clean; returns the object key records use and the
        objects this upload made redundant."""
        if not held:
            values = _content_values(content) | {"created": now}
            await conn.execute(
                self._insert(contents)
                .values(values)
                .on_conflict_do_nothing(index_elements=[contents.c.sha256])
            )
        row = await self._lock_content(conn, content.sha256)
        stored = None if row is None else _content(row._mapping)
        if not held:
            # The object this upload promoted is claimed (kept) or doomed now (below).
            await conn.execute(
                delete(doomed_objects).where(doomed_objects.c.object_key == content.key)
            )
        if stored is not None and stored.present:
            if not held and stored.key != content.key:
                # Same bytes promoted by someone else first: theirs is the one records
                # use, and ours is doomed (listed, so the sweeper removes it if the
                # removal after this transaction fails).
                assert content.key is not None
                await self._doom(conn, content.key, now)
                return stored.key or "", [content.key]
            return stored.key or "", []
        if held:
            raise ContentGone(f"content {content.sha256} was removed during the upload")
        # A stale verdict (infected or failed before, now scanned clean): ours wins.
        values = _content_values(content)
        await conn.execute(
            update(contents).where(contents.c.sha256 == content.sha256).values(values)
        )
        return content.key or "", []

    async def commit(
        self,
        owner: str,
        content: Content,
        *,
        name: str | None,
        content_type: str,
        placement: Placement,
        held: bool,
        now: datetime,
    ) -> Committed:
        async def run(conn: AsyncConnection) -> Committed:
            _, doomed = await self._settle_content(conn, content, held=held, now=now)
            if placement.file_id is None:
                same = await conn.execute(
                    select(files.c.id)
                    .where(
                        files.c.owner == owner,
                        files.c.sha256 == content.sha256,
                        files.c.name.is_not_distinct_from(name),
                        files.c.content_type == content_type,
                    )
                    .order_by(files.c.created, files.c.id)
                    .limit(1)
                )
                existing = same.scalar()
                if existing is not None:
                    record = await self._get(conn, owner, existing)
                    assert record is not None
                    return Committed(record, created=False, doomed=tuple(doomed))
                file_id, current = placement.new_id, None
            else:
                file_id = placement.file_id
                found = await conn.execute(
                    select(files.c.sha256)
                    .where(files.c.owner == owner, files.c.id == file_id)
                    .with_for_update()
                )
                current = found.scalar()
                if placement.if_none_match and current is not None:
                    raise PreconditionFailed("the file exists (If-None-Match: *)")
                if placement.if_match and (
                    current is None
                    or ("*" not in placement.if_match and current not in placement.if_match)
                ):
                    raise PreconditionFailed("the file's current ETag does not match If-Match")
            if current is None:
                await conn.execute(
                    insert(files).values(
                        owner=owner,
                        id=file_id,
                        name=name,
                        content_type=content_type,
                        sha256=content.sha256,
                        created=now,
                        updated=now,
                        meta={},
                    )
                )
            else:
                # No versioning: the record now names the new bytes, keeping its id,
                # creation time, tags and metadata; the old bytes go if nobody uses them.
                await conn.execute(
                    update(files)
                    .where(files.c.owner == owner, files.c.id == file_id)
                    .values(
                        name=name, content_type=content_type, sha256=content.sha256, updated=now
                    )
                )
                if current != content.sha256:
                    doomed += await self._release(conn, current, now)
            record = await self._get(conn, owner, file_id)
            assert record is not None
            return Committed(record, created=current is None, doomed=tuple(doomed))

        return await self._tx("commit", run)

    # ---------------------------------------------------------------- records

    async def _tags_of(
        self, conn: AsyncConnection, owner: str, ids: Sequence[str]
    ) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {i: [] for i in ids}
        if not ids:
            return found
        rows = await conn.execute(
            select(file_tags.c.file_id, file_tags.c.tag)
            .where(file_tags.c.owner == owner, file_tags.c.file_id.in_(ids))
            .order_by(file_tags.c.tag)
        )
        for file_id, tag in rows:
            found[file_id].append(tag)
        return found

    async def _get(self, conn: AsyncConnection, owner: str, file_id: str) -> FileRecord | None:
        row = (
            await conn.execute(
                select(*_RECORD_COLUMNS)
                .select_from(_RECORDS)
                .where(files.c.owner == owner, files.c.id == file_id)
            )
        ).first()
        if row is None:
            return None
        return _record(row._mapping, (await self._tags_of(conn, owner, [file_id]))[file_id])

    async def get(self, owner: str, file_id: str) -> FileRecord | None:
        return await self._tx("get", lambda conn: self._get(conn, owner, file_id))

    async def list_files(self, owner: str, query: FileQuery) -> Page:
        conditions: list[ColumnElement[bool]] = []
        if query.tags:
            # Driven by the first tag's rows: a range of file_tags' primary key in
            # (created, id) order, so a deep page costs what the first one does.
            first = file_tags.alias("t0")
            source = first.join(
                _RECORDS, and_(files.c.owner == first.c.owner, files.c.id == first.c.file_id)
            )
            created_col, id_col = first.c.created, first.c.file_id
            conditions += [first.c.owner == owner, first.c.tag == query.tags[0]]
            for tag in query.tags[1:]:
                conditions.append(
                    exists().where(
                        file_tags.c.owner == owner,
                        file_tags.c.file_id == files.c.id,
                        file_tags.c.tag == tag,
                    )
                )
        else:
            source = _RECORDS
            created_col, id_col = files.c.created, files.c.id
            conditions.append(files.c.owner == owner)
        if query.tag_like is not None:
            matching = file_tags.join(
                tags, and_(tags.c.owner == file_tags.c.owner, tags.c.name == file_tags.c.tag)
            )
            conditions.append(
                exists(
                    select(literal(1))
                    .select_from(matching)
                    .where(
                        file_tags.c.owner == owner,
                        file_tags.c.file_id == files.c.id,
                        # The pattern is written into the statement, not bound: with a
                        # parameter PostgreSQL may settle on a generic plan that cannot
                        # estimate the match and aggregates every tagged file (seconds at
                        # a million records). Tag patterns hold no quotes (api.params).
                        tags.c.folded.like(
                            bindparam(
                                "tag_like", like_pattern(query.tag_like), literal_execute=True
                            ),
                            escape="\\",
                        ),
                    )
                )
            )
        if query.name is not None:
            conditions.append(files.c.name == query.name)
        if query.content_type is not None:
            if query.content_type.endswith("/*"):
                prefix = query.content_type[:-1].replace("\\", "\\\\").replace("_", "\\_")
                conditions.append(files.c.content_type.like(prefix + "%", escape="\\"))
            else:
                conditions.append(files.c.content_type == query.content_type)
        if query.created_from is not None:
            conditions.append(created_col >= literal(query.created_from, UtcDateTime()))
        if query.created_to is not None:
            conditions.append(created_col < literal(query.created_to, UtcDateTime()))
        if query.present is not None:
            present = and_(
                contents.c.state == ScanState.CLEAN.value, contents.c.object_key.is_not(None)
            )
            conditions.append(present if query.present else not_(present))
        if query.after is not None:
            after = query.after
            conditions.append(
                tuple_(created_col, id_col)
                > tuple_(literal(after.created, UtcDateTime()), literal(after.id))
            )
        stmt = (
            select(*_RECORD_COLUMNS)
            .select_from(source)
            .where(*conditions)
            .order_by(created_col, id_col)
            .limit(query.page_size + 1)
        )

        async def run(conn: AsyncConnection) -> Page:
            rows = (await conn.execute(stmt)).all()
            more = len(rows) > query.page_size
            rows = rows[: query.page_size]
            found = await self._tags_of(conn, owner, [r._mapping["id"] for r in rows])
            items = [_record(r._mapping, found[r._mapping["id"]]) for r in rows]
            last = items[-1] if more else None
            return Page(items, None if last is None else Cursor(last.created, last.id))

        return await self._tx("list_files", run)

    async def update(self, owner: str, file_id: str, patch: FilePatch, now: datetime) -> FileRecord:
        async def run(conn: AsyncConnection) -> FileRecord:
            found = (
                await conn.execute(
                    select(files.c.meta, files.c.created)
                    .where(files.c.owner == owner, files.c.id == file_id)
                    .with_for_update()
                )
            ).first()
            if found is None:
                raise KeyError(file_id)
            values: dict[str, object] = {"updated": now}
            if not isinstance(patch.name, EllipsisType):
                values["name"] = patch.name
            if patch.metadata is None or isinstance(patch.metadata, Mapping):
                merged = merge_patch(found.meta or {}, patch.metadata or {})
                if patch.metadata is None:
                    merged = {}
                encoded = json.dumps(merged, separators=(",", ":"), ensure_ascii=False)
                if len(encoded.encode()) > patch.metadata_limit:
                    raise TooLarge(f"metadata is limited to {patch.metadata_limit} bytes of JSON")
                values["meta"] = merged
            await conn.execute(
                update(files).where(files.c.owner == owner, files.c.id == file_id).values(values)
            )
            if isinstance(patch.tags, tuple):
                await conn.execute(
                    delete(file_tags).where(
                        file_tags.c.owner == owner, file_tags.c.file_id == file_id
                    )
                )
                for tag in dict.fromkeys(patch.tags):
                    await self._attach(conn, owner, file_id, found.created, tag, now)
            record = await self._get(conn, owner, file_id)
            assert record is not None
            return record

        return await self._tx("update", run)

    async def delete(self, owner: str, file_id: str, now: datetime) -> Removed | None:
        async def run(conn: AsyncConnection) -> Removed | None:
            found = await conn.execute(
                select(files.c.sha256)
                .where(files.c.owner == owner, files.c.id == file_id)
                .with_for_update()
            )
            sha256 = found.scalar()
            if sha256 is None:
                return None
            await conn.execute(
                delete(file_tags).where(file_tags.c.owner == owner, file_tags.c.file_id == file_id)
            )
            await conn.execute(delete(files).where(files.c.owner == owner, files.c.id == file_id))
            return Removed(tuple(await self._release(conn, sha256, now)))

        return await self._tx("delete", run)

    # ---------------------------------------------------------------- tags

    async def _ensure_tag(self, conn: AsyncConnection, owner: str, tag: str, now: datetime) -> bool:
        result = await conn.execute(
            self._insert(tags)
            .values(owner=owner, name=tag, folded=tag.casefold(), created=now)
            .on_conflict_do_nothing(index_elements=[tags.c.owner, tags.c.name])
        )
        return bool(result.rowcount)

    async def _attach(
        self,
        conn: AsyncConnection,
        owner: str,
        file_id: str,
        created: datetime,
        tag: str,
        now: datetime,
    ) -> None:
        await self._ensure_tag(conn, owner, tag, now)
        await conn.execute(
            self._insert(file_tags)
            .values(owner=owner, tag=tag, created=created, file_id=file_id)
            .on_conflict_do_nothing()
        )

    async def create_tag(self, owner: str, tag: str, now: datetime) -> bool:
        return await self._tx("create_tag", lambda conn: self._ensure_tag(conn, owner, tag, now))

    async def list_tags(self, owner: str, after: str | None, limit: int) -> list[Tag]:
        stmt = select(tags.c.name, tags.c.created).where(tags.c.owner == owner)
        if after is not None:
            stmt = stmt.where(tags.c.name > after)
        stmt = stmt.order_by(tags.c.name).limit(limit)

        async def run(conn: AsyncConnection) -> list[Tag]:
            return [Tag(name, created) for name, created in await conn.execute(stmt)]

        return await self._tx("list_tags", run)

    async def delete_tag(self, owner: str, tag: str) -> bool:
        async def run(conn: AsyncConnection) -> bool:
            await conn.execute(
                delete(file_tags).where(file_tags.c.owner == owner, file_tags.c.tag == tag)
            )
            result = await conn.execute(
                delete(tags).where(tags.c.owner == owner, tags.c.name == tag)
            )
            return bool(result.rowcount)

        return await self._tx("delete_tag", run)

    async def tag_file(
        self, owner: str, file_id: str, tag: str, now: datetime, *, add: bool
    ) -> FileRecord | None:
        async def run(conn: AsyncConnection) -> FileRecord | None:
            found = await conn.execute(
                select(files.c.created)
                .where(files.c.owner == owner, files.c.id == file_id)
                .with_for_update()
            )
            created = found.scalar()
            if created is None:
                return None
            if add:
                await self._attach(conn, owner, file_id, created, tag, now)
            else:
                await conn.execute(
                    delete(file_tags).where(
                        file_tags.c.owner == owner,
                        file_tags.c.file_id == file_id,
                        file_tags.c.tag == tag,
                    )
                )
            return await self._get(conn, owner, file_id)

        return await self._tx("tag_file", run)

    # ---------------------------------------------------------------- maintenance

    async def doomed(self, now: datetime, limit: int) -> list[str]:
        stmt = (
            select(doomed_objects.c.object_key)
            .where(doomed_objects.c.not_before <= literal(now, UtcDateTime()))
            .order_by(doomed_objects.c.not_before, doomed_objects.c.object_key)
            .limit(limit)
        )

        async def run(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(stmt)).scalars())

        return await self._tx("doomed", run)

    async def forget(self, keys: Sequence[str]) -> None:
        if not keys:
            return

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(
                delete(doomed_objects).where(doomed_objects.c.object_key.in_(list(keys)))
            )

        await self._tx("forget", run)

    async def ping(self) -> None:
        async def run(conn: AsyncConnection) -> None:
            await conn.execute(select(literal(1)))

        await self._tx("ping", run)

    async def close(self) -> None:
        await self._engine.dispose()


def _is_conflict(exc: BaseException) -> bool:
    """PostgreSQL's deadlock and serialization failures: a retry decides them."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate in ("40001", "40P01")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
