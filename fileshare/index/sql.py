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
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import EllipsisType, MappingProxyType
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import (
    ClauseElement,
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Executable,
    Row,
    RowMapping,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    literal,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    ProgrammingError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.sql.compiler import SQLCompiler

from fileshare.audit import Action, AuditEvent
from fileshare.index import audit as audit_trail
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
    VerdictStands,
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
#: How often a transaction that lost a race runs (see ``SqlIndex._tx``).
TX_ATTEMPTS = 4


class CommitOutcomeUnknown(Exception):
    """Raised by a runner when COMMIT itself failed: the server may have committed. Never
    run again (the work would be done twice, or misjudged on its second run)."""


class _RunAgain(Exception):
    """Raised inside a transaction that saw a concurrent change it cannot decide on: it
    rolls back and runs again."""


class Runner(Protocol):
    """Runs one transaction: ``fn`` on a connection inside BEGIN ... COMMIT (ROLLBACK when
    it raises). ``write=False`` may let the database run it beside writers.
    ``autocommit=True``: no transaction around ``fn``, whose every statement is atomic
    on its own and consistent with any interleaving of others (two round trips less)."""

    dialect: str

    @property
    def sa_dialect(self) -> Dialect: ...

    async def run(
        self, fn: Callable[[Connection], T], *, write: bool, autocommit: bool = False
    ) -> T: ...

    async def close(self) -> None: ...


_RECORD_COLUMNS = (
    files.c.owner,
    files.c.id,
    files.c.name,
    files.c.content_type,
    files.c.created,
    files.c.updated,
    files.c.meta,
    files.c.created_by,
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
# The statements every upload runs, built once (SQLAlchemy then only looks their compiled
# form up in its cache).
_FIND_CLEAN = select(contents).where(
    contents.c.sha256 == bindparam("sha256"),
    contents.c.state == ScanState.CLEAN.value,
    contents.c.object_key.is_not(None),
)
_LOCK_CONTENT = select(contents).where(contents.c.sha256 == bindparam("sha256")).with_for_update()
_UNRESERVE = delete(doomed_objects).where(
    doomed_objects.c.object_key == bindparam("key"),
    doomed_objects.c.not_before > bindparam("now", type_=UtcDateTime()),
)
_INSERT_FILE = insert(files)
_FILE_KEYS = (
    "owner",
    "id",
    "name",
    "content_type",
    "sha256",
    "created",
    "updated",
    "meta",
    "created_by",
)
_RESERVE_UNLESS_HELD = insert(doomed_objects).from_select(
    ["object_key", "not_before"],
    select(bindparam("key", type_=Text()), bindparam("until", type_=UtcDateTime())).where(
        ~exists().where(
            contents.c.sha256 == bindparam("sha256"),
            contents.c.state == ScanState.CLEAN.value,
            contents.c.object_key.is_not(None),
        )
    ),
)
_GET = (
    select(*_RECORD_COLUMNS)
    .select_from(_RECORDS)
    .where(files.c.owner == bindparam("owner"), files.c.id == bindparam("id"))
)


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
        created_by=m["created_by"],
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


class _DriverStatement:
    """A statement compiled once by SQLAlchemy, run straight on the driver's cursor.

    For the few statements every upload runs on SQLite, SQLAlchemy's execution machinery
    (an execution context, events, result set-up: ~70 us a statement) costs more than
    SQLite itself, and it runs on the index's thread while the event loop wants the GIL.
    The SQL and the parameters' conversions (times to UTC text, JSON) are still
    SQLAlchemy's, from the same expressions PostgreSQL runs: one set of queries."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect, keys: Sequence[str] = ()) -> None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, column_keys=list(keys) or None))
        assert compiled.positiontup is not None, "a qmark dialect"
        self.sql = compiled.string
        self._order = list(compiled.positiontup)
        # dialect_impl: the conversions SQLAlchemy itself applies for this dialect (times as
        # fixed-width text); a type's generic bind_processor would leave a time to the
        # driver, which drops a zero fraction and breaks the text order.
        self._convert = [
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self._order
        ]
        #: Literals in the expression (``state = 'clean'``) are parameters with a value.
        self._literals = {name: bind.value for name, bind in compiled.binds.items()}

    def run(self, conn: Connection, params: Mapping[str, object]) -> int:
        """Execute in ``conn``'s transaction; the number of rows it changed."""
        literals = self._literals
        values = [
            value if convert is None else convert(value)
            for value, convert in zip(
                (params[n] if n in params else literals[n] for n in self._order),
                self._convert,
                strict=True,
            )
        ]
        driver: Any = conn.connection.dbapi_connection
        cursor = driver.execute(self.sql, values)
        return int(cursor.rowcount)


class SqlIndex:
    """``FileIndex`` on SQLAlchemy Core (made and migrated by ``index.engine``).

    Every call is one transaction, written as a plain function of a ``Connection`` and run
    by a ``Runner``: on PostgreSQL through the async engine (asyncpg, ``run_sync``), on
    SQLite on one thread of its own (a hop per transaction, not per statement). Each is
    bounded by ``timeout`` seconds, waiting for a pooled connection included. Messages never
    carry a password: ``scrub`` removes it."""

    def __init__(self, runner: Runner, *, timeout: float, name: str, scrub: Scrub) -> None:
        self._runner = runner
        self._timeout = timeout
        self._name = name
        self._scrub = scrub
        self._insert = postgresql.insert if runner.dialect == "postgresql" else sqlite.insert
        # The upload path's dialect-specific statements, built once: SQLAlchemy's cost per
        # statement is mostly building the expression, not running it.
        doom = self._insert(doomed_objects)
        self._doom_stmt = doom.on_conflict_do_update(
            index_elements=[doomed_objects.c.object_key],
            set_={"not_before": doom.excluded.not_before},
        )
        self._insert_content = self._insert(contents).on_conflict_do_nothing(
            index_elements=[contents.c.sha256]
        )
        self._fast: dict[str, _DriverStatement] = {}
        if runner.dialect == "sqlite":
            # The engine's own dialect: the same JSON serializer as SQLAlchemy's path.
            dialect = runner.sa_dialect
            # Every column an upload writes (a lease is never set on insert).
            content_keys = [c.name for c in contents.columns if c.name != "rescan_until"]
            self._fast = {
                "reserve": _DriverStatement(_RESERVE_UNLESS_HELD, dialect),
                "unreserve": _DriverStatement(_UNRESERVE, dialect),
                "insert_content": _DriverStatement(self._insert_content, dialect, content_keys),
                "insert_file": _DriverStatement(_INSERT_FILE, dialect, _FILE_KEYS),
            }

    def __repr__(self) -> str:
        return f"SqlIndex({self._name})"

    def _dml(
        self, conn: Connection, name: str, stmt: Executable, params: Mapping[str, object]
    ) -> int:
        """Run one of the upload path's statements; the number of rows it changed."""
        fast = self._fast.get(name)
        if fast is not None:
            return fast.run(conn, params)
        return int(conn.execute(stmt, dict(params)).rowcount)

    @property
    def dialect(self) -> str:
        return self._runner.dialect

    async def _tx(
        self,
        action: str,
        fn: Callable[[Connection], T],
        *,
        write: bool = True,
        autocommit: bool = False,
    ) -> T:
        """Run ``fn`` in a transaction. A transaction that lost a race (a deadlock, a
        serialization failure, a constraint a concurrent commit broke: a tag deleted under
        a new tagging, an id created twice) rolled back whole and runs again, up to
        ``TX_ATTEMPTS`` times, re-reading what it decides on; so does one whose connection
        the server dropped (a restart: the pool replaces it)."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._runner.run(fn, write=write, autocommit=autocommit)
            except IndexError_:
                raise
            except CommitOutcomeUnknown as exc:
                cause = exc.__cause__ or exc
                raise self._unavailable(
                    f"{action} (its commit's outcome is unknown)", cause
                ) from None
            except _RunAgain:
                if attempt < TX_ATTEMPTS:
                    continue
                raise Conflict(f"{action}: a concurrent change conflicted") from None
            except DBAPIError as exc:
                retry = attempt < TX_ATTEMPTS
                if (isinstance(exc, IntegrityError) or _is_conflict(exc)) and retry:
                    continue
                if isinstance(exc, IntegrityError) or _is_conflict(exc):
                    raise Conflict(f"{action}: a concurrent change conflicted") from None
                if exc.connection_invalidated and retry:
                    continue
                raise self._unavailable(action, exc) from None
            except (SQLAlchemyError, OSError, TimeoutError, ValueError) as exc:
                raise self._unavailable(action, exc) from None
        raise AssertionError("unreachable")

    async def _audited_tx(
        self,
        action: str,
        fn: Callable[[Connection], T],
        events: Callable[[T], Sequence[AuditEvent]],
        now: datetime,
    ) -> T:
        """``_tx`` with the audit rows ``events`` makes of the result appended last in the
        same transaction: the change and its record commit together or not at all."""
        made: list[AuditEvent] = []

        def run(conn: Connection) -> T:
            result = fn(conn)
            made[:] = events(result)
            audit_trail.append(conn, made, now)
            return result

        result = await self._tx(action, run)
        audit_trail.logged(made)
        return result

    async def run(self, fn: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run ``fn`` in a transaction of its own: for maintenance, benchmarks and tests
        that look behind the contract."""
        return await self._tx("run", fn, write=write)

    async def transact(self, action: str, fn: Callable[[Connection], T], *, write: bool) -> T:
        """Run ``fn`` in a transaction, with the retries and error mapping of every index
        call: the stores of other aggregates (identity, audit) share the connection pool
        and its rules this way. ``action`` names it in errors."""
        return await self._tx(action, fn, write=write)

    def _unavailable(self, action: str, exc: BaseException) -> IndexError_:
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self._timeout:g}s"
        else:
            detail = f"{type(exc).__name__}: {_first_line(exc)}"
        return IndexUnavailable(self._scrub(f"{self._name} index: {action} failed: {detail}"))

    # ---------------------------------------------------------------- contents

    async def find_clean(self, sha256: str) -> Content | None:
        return await self._tx("find_clean", lambda c: _find_clean(c, sha256), write=False)

    async def claim(self, sha256: str, key: str, until: datetime) -> Content | None:
        def run(conn: Connection) -> Content | None:
            # New bytes, most often: one statement lists the key unless the content is
            # held clean; only a dedup hit reads the content.
            params = {"sha256": sha256, "key": key, "until": until}
            if self._dml(conn, "reserve", _RESERVE_UNLESS_HELD, params) == 1:
                return None
            held = _find_clean(conn, sha256)
            if held is None:  # no longer clean since the first statement: list it after all
                self._doom(conn, key, until)
            return held

        # Each statement stands alone: a content deleted or added between them changes
        # only which answer is given, and either is right at its moment.
        return await self._tx("claim", run, autocommit=True)

    async def record_verdict(
        self,
        content: Content,
        *,
        released: str | None = None,
        audit: AuditEvent | None = None,
    ) -> None:
        created = content.scan.scanned_at or datetime.now(UTC)
        values = _content_values(content) | {"object_key": None, "created": created}
        stmt = self._insert(contents).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[contents.c.sha256],
            # The object key stays: a rescan that found stored bytes infected keeps them as
            # evidence, and only a later commit (or the records' deletion) may drop them.
            set_={
                k: stmt.excluded[k] for k in values if k not in ("sha256", "created", "object_key")
            },
            # Never over a clean row; and an infected verdict is not weakened to another.
            where=and_(
                contents.c.state != ScanState.CLEAN.value,
                or_(
                    contents.c.state != ScanState.INFECTED.value,
                    stmt.excluded.state == ScanState.INFECTED.value,
                ),
            ),
        )

        def run(conn: Connection) -> None:
            conn.execute(stmt)
            if released is not None:  # nothing was promoted under it
                conn.execute(delete(doomed_objects).where(doomed_objects.c.object_key == released))

        await self._audited_tx("record_verdict", run, lambda _: [audit] if audit else [], created)

    async def lease_rescans(
        self,
        *,
        scanned_before: datetime,
        older_db: int | None,
        round_started: datetime,
        now: datetime,
        until: datetime,
        limit: int,
    ) -> list[Content]:
        c = contents.c
        # A verdict of unknown time (the first release's) is the oldest of all.
        stale: list[ColumnElement[bool]] = [c.scanned_at < scanned_before, c.scanned_at.is_(None)]
        if older_db is not None:
            # Only verdicts made before this round: one made in it with a database that
            # went back (a sidecar restarted on an older one) is not due again at once.
            stale.append(and_(c.signature_db < older_db, c.scanned_at < round_started))
        free = [c.object_key.is_not(None), or_(c.rescan_until.is_(None), c.rescan_until < now)]
        # Stored content left failed (migration 0002: its records disagreed about its sha1
        # or size) has no verdict at all: always due, before any clean one.
        failed = select(contents).where(c.state == ScanState.FAILED.value, *free)
        due = select(contents).where(c.state == ScanState.CLEAN.value, *free, or_(*stale))

        def query(candidates: Select[Any], n: int) -> Select[Any]:
            # Oldest verdict first; skip rows another replica's transaction holds right now.
            # No tie-break: ``contents_rescan`` (state, scanned_at) then gives the order
            # without a sort, where one of every row with the oldest time (all the first
            # release's contents have none) cost each lease 85 ms at 100k such rows.
            return (
                candidates.order_by(c.scanned_at.asc().nulls_first())
                .limit(n)
                .with_for_update(skip_locked=True)
            )

        def run(conn: Connection) -> list[Content]:
            leased = [_content(row._mapping) for row in conn.execute(query(failed, limit))]
            if len(leased) < limit:
                rows = conn.execute(query(due, limit - len(leased)))
                leased += [_content(row._mapping) for row in rows]
            if leased:
                conn.execute(
                    update(contents)
                    .where(c.sha256.in_([x.sha256 for x in leased]))
                    .values(rescan_until=until)
                )
            return leased

        return await self._tx("lease_rescans", run)

    async def record_rescan(
        self, content: Content, scan: ScanRecord, *, audit: AuditEvent
    ) -> list[tuple[str, str]]:
        c = contents.c
        now = scan.scanned_at or datetime.now(UTC)
        changed: list[tuple[str, str]] = []

        def run(conn: Connection) -> list[tuple[str, str]]:
            changed.clear()
            row = _lock_content(conn, content.sha256)
            if (
                row is None
                or row._mapping["object_key"] != content.key
                or row._mapping["state"] != content.state.value
                or content.state not in (ScanState.CLEAN, ScanState.FAILED)
            ):
                return []  # deleted, promoted again or judged meanwhile: not this verdict's
            values: dict[str, object] = {
                "scanned_at": scan.scanned_at,
                "rescan_until": None,
                # What the rescan hashed under this sha256 (a failed content's records
                # disagreed about them).
                "sha1": content.sha1,
                "size": content.size,
            }
            if scan.scanner is not None:  # otherwise the old provenance is the better one
                values |= {"scanner": scan.scanner, "signature_db": signature_db(scan.scanner)}
            if scan.state is not content.state:
                values |= {"state": scan.state.value, "signature": scan.signature}
                held = (
                    select(files.c.owner, files.c.id)
                    .where(files.c.sha256 == content.sha256)
                    .order_by(files.c.created, files.c.owner, files.c.id)  # oldest first
                )
                changed.extend((owner, file_id) for owner, file_id in conn.execute(held))
            conn.execute(update(contents).where(c.sha256 == content.sha256).values(values))
            return list(changed)

        def events(records: list[tuple[str, str]]) -> list[AuditEvent]:
            return [
                audit.but(owner=owner, file_id=file_id, sha256=content.sha256)
                for owner, file_id in records
            ]

        return await self._audited_tx("record_rescan", run, events, now)

    def _release(self, conn: Connection, sha256: str, now: datetime) -> list[str]:
        """Forget the content if no record uses it any more; its object becomes doomed."""
        row = _lock_content(conn, sha256)
        if row is None:
            return []
        used = conn.execute(select(files.c.id).where(files.c.sha256 == sha256).limit(1))
        if used.first() is not None:
            return []
        conn.execute(delete(contents).where(contents.c.sha256 == sha256))
        key = row._mapping["object_key"]
        if key is None:
            return []
        self._doom(conn, key, now)
        return [key]

    def _doom(self, conn: Connection, key: str, not_before: datetime) -> None:
        conn.execute(self._doom_stmt, {"object_key": key, "not_before": not_before})

    def _settle_content(
        self, conn: Connection, content: Content, *, held: bool, now: datetime
    ) -> tuple[Content, bool, list[str]]:
        """Lock the content row, clean. Returns the content records use, whether this
        transaction created it (then no record can use it yet), and the objects this
        upload made redundant."""
        if held:
            row = _lock_content(conn, content.sha256)
            stored = None if row is None else _content(row._mapping)
            if stored is None or not stored.present:
                raise ContentGone(f"content {content.sha256} was removed during the upload")
            return stored, False, []
        assert content.key is not None
        # The object this upload promoted must still be its own: listed by ``claim``, and
        # not yet due for the sweeper (which may be removing it right now).
        if self._dml(conn, "unreserve", _UNRESERVE, {"key": content.key, "now": now}) != 1:
            raise ContentGone(f"the reservation of {content.key} expired before the commit")
        # New bytes, most often: the insert is the lock. Otherwise (PostgreSQL waited for
        # a concurrent insert to commit) lock the row that is there.
        values = _content_values(content) | {"created": now}
        if self._dml(conn, "insert_content", self._insert_content, values) == 1:
            return content, True, []
        row = _lock_content(conn, content.sha256)
        if row is None:  # inserted and deleted again meanwhile
            raise _RunAgain()
        stored = _content(row._mapping)
        if stored.present:
            if stored.key != content.key:
                # Same bytes promoted by someone else first: theirs is the one records
                # use; ours is doomed now (still listed, so the sweeper removes it if the
                # removal after this transaction fails).
                self._doom(conn, content.key, now)
                return stored, False, [content.key]
            return stored, False, []
        # A stale verdict (infected or failed before, now scanned clean), or an object
        # found lost: ours is the one records use from now on — unless the verdict that is
        # not clean was made with a newer signature database than ours (replicas' clamd
        # databases differ for hours): then it stands, and this upload is refused.
        if stored.scan.state in (ScanState.INFECTED, ScanState.UNSCANNABLE):
            theirs, ours = row._mapping["signature_db"], signature_db(content.scan.scanner)
            if theirs is not None and (ours is None or ours < theirs):
                raise VerdictStands(stored.scan.state, stored.scan.signature or "unknown")
        conn.execute(
            update(contents)
            .where(contents.c.sha256 == content.sha256)
            .values(_content_values(content) | {"rescan_until": None})
        )
        if stored.key is not None and stored.key != content.key:
            # The object a rescan found infected and kept as evidence: redundant now.
            self._doom(conn, stored.key, now)
            return content, False, [stored.key]
        return content, False, []

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
        created_by: str | None = None,
        audit: AuditEvent | None = None,
    ) -> Committed:
        def events(c: Committed) -> list[AuditEvent]:
            if audit is None:
                return []
            record = c.record
            made = [
                audit.but(
                    file_id=record.id,
                    sha256=record.content.sha256,
                    detail={**audit.detail, "created": c.created},
                )
            ]
            if not held:
                # These bytes were scanned by this upload: the verdict is audited too.
                scan = content.scan
                verdict = {"state": scan.state.value, "scanner": scan.scanner}
                made.insert(
                    0,
                    audit.but(
                        action=Action.SCAN_VERDICT,
                        file_id=record.id,
                        sha256=content.sha256,
                        detail=verdict,
                    ),
                )
            return made

        def run(conn: Connection) -> Committed:
            current: str | None = None
            if placement.file_id is not None:
                # Locks in one order everywhere: the file row, then content rows by sha256
                # (delete takes the same order; two PUTs swapping bytes cannot deadlock).
                current = _lock_file(conn, owner, placement.file_id, files.c.sha256)
                if placement.if_none_match and current is not None:
                    raise PreconditionFailed("the file exists (If-None-Match: *)")
                if placement.if_match and (
                    current is None
                    or ("*" not in placement.if_match and current not in placement.if_match)
                ):
                    raise PreconditionFailed("the file's current ETag does not match If-Match")
                if current is not None and current != content.sha256:
                    conn.execute(
                        select(contents.c.sha256)
                        .where(contents.c.sha256.in_(sorted({current, content.sha256})))
                        .order_by(contents.c.sha256)
                        .with_for_update()
                    )
            stored, fresh, doomed = self._settle_content(conn, content, held=held, now=now)
            if placement.file_id is None:
                # A retried POST gets its record back; a content this transaction created
                # has no records yet, so there is nothing to look for.
                existing = None if fresh else _same_record(conn, owner, stored, name, content_type)
                if existing is not None:
                    record = _get(conn, owner, existing)
                    assert record is not None
                    return Committed(record, created=False, doomed=tuple(doomed))
                file_id = placement.new_id
            else:
                file_id = placement.file_id
            if current is None:
                self._dml(
                    conn,
                    "insert_file",
                    _INSERT_FILE,
                    {
                        "owner": owner,
                        "id": file_id,
                        "name": name,
                        "content_type": content_type,
                        "sha256": stored.sha256,
                        "created": now,
                        "updated": now,
                        "meta": {},
                        "created_by": created_by,
                    },
                )
                record = FileRecord(
                    owner=owner,
                    id=file_id,
                    name=name,
                    content_type=content_type,
                    content=stored,
                    created=now,
                    updated=now,
                    created_by=created_by,
                )
                return Committed(record, created=True, doomed=tuple(doomed))
            # No versioning: the record now names the new bytes, keeping its id, creation
            # time, tags and metadata; the old bytes go if nobody uses them.
            conn.execute(
                update(files)
                .where(files.c.owner == owner, files.c.id == file_id)
                .values(name=name, content_type=content_type, sha256=stored.sha256, updated=now)
            )
            if current != stored.sha256:
                doomed += self._release(conn, current, now)
            record = _get(conn, owner, file_id)
            assert record is not None
            return Committed(record, created=False, doomed=tuple(doomed))

        return await self._audited_tx("commit", run, events, now)

    # ---------------------------------------------------------------- records

    async def get(self, owner: str, file_id: str) -> FileRecord | None:
        return await self._tx("get", lambda conn: _get(conn, owner, file_id), write=False)

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

        def run(conn: Connection) -> Page:
            rows = (conn.execute(stmt)).all()
            more = len(rows) > query.page_size
            rows = rows[: query.page_size]
            found = _tags_of(conn, owner, [r._mapping["id"] for r in rows])
            items = [_record(r._mapping, found[r._mapping["id"]]) for r in rows]
            last = items[-1] if more else None
            return Page(items, None if last is None else Cursor(last.created, last.id))

        return await self._tx("list_files", run, write=False)

    async def update(
        self,
        owner: str,
        file_id: str,
        patch: FilePatch,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> FileRecord:
        def run(conn: Connection) -> FileRecord:
            found = conn.execute(
                select(files.c.meta, files.c.created)
                .where(files.c.owner == owner, files.c.id == file_id)
                .with_for_update()
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
                # Measured as it is stored (SQLAlchemy's JSON: ASCII, \u escapes).
                encoded = json.dumps(merged, separators=(",", ":"))
                if len(encoded) > patch.metadata_limit:
                    raise TooLarge(f"metadata is limited to {patch.metadata_limit} bytes of JSON")
                values["meta"] = merged
            conn.execute(
                update(files).where(files.c.owner == owner, files.c.id == file_id).values(values)
            )
            if isinstance(patch.tags, tuple):
                conn.execute(
                    delete(file_tags).where(
                        file_tags.c.owner == owner, file_tags.c.file_id == file_id
                    )
                )
                for tag in dict.fromkeys(patch.tags):
                    self._attach(conn, owner, file_id, found.created, tag, now)
            record = _get(conn, owner, file_id)
            assert record is not None
            return record

        return await self._audited_tx("update", run, _event_for(audit), now)

    async def delete(
        self, owner: str, file_id: str, now: datetime, audit: AuditEvent | None = None
    ) -> Removed | None:
        def run(conn: Connection) -> Removed | None:
            sha256 = _lock_file(conn, owner, file_id, files.c.sha256)
            if sha256 is None:
                return None
            conn.execute(
                delete(file_tags).where(file_tags.c.owner == owner, file_tags.c.file_id == file_id)
            )
            conn.execute(delete(files).where(files.c.owner == owner, files.c.id == file_id))
            return Removed(tuple(self._release(conn, sha256, now)), sha256=sha256)

        def events(removed: Removed | None) -> list[AuditEvent]:
            if audit is None or removed is None:
                return []
            detail = {**audit.detail, "content_removed": bool(removed.doomed)}
            return [audit.but(file_id=file_id, sha256=removed.sha256, detail=detail)]

        return await self._audited_tx("delete", run, events, now)

    # ---------------------------------------------------------------- tags

    def _ensure_tag(self, conn: Connection, owner: str, tag: str, now: datetime) -> bool:
        result = conn.execute(
            self._insert(tags)
            .values(owner=owner, name=tag, folded=tag.casefold(), created=now)
            .on_conflict_do_nothing(index_elements=[tags.c.owner, tags.c.name])
        )
        return bool(result.rowcount)

    def _attach(
        self,
        conn: Connection,
        owner: str,
        file_id: str,
        created: datetime,
        tag: str,
        now: datetime,
    ) -> None:
        self._ensure_tag(conn, owner, tag, now)
        conn.execute(
            self._insert(file_tags)
            .values(owner=owner, tag=tag, created=created, file_id=file_id)
            .on_conflict_do_nothing()
        )

    async def create_tag(
        self, owner: str, tag: str, now: datetime, audit: AuditEvent | None = None
    ) -> bool:
        def events(created: bool) -> list[AuditEvent]:
            return [audit] if audit is not None and created else []

        return await self._audited_tx(
            "create_tag", lambda conn: self._ensure_tag(conn, owner, tag, now), events, now
        )

    async def list_tags(self, owner: str, after: str | None, limit: int) -> list[Tag]:
        stmt = select(tags.c.name, tags.c.created).where(tags.c.owner == owner)
        if after is not None:
            stmt = stmt.where(tags.c.name > after)
        stmt = stmt.order_by(tags.c.name).limit(limit)

        def run(conn: Connection) -> list[Tag]:
            return [Tag(name, created) for name, created in conn.execute(stmt)]

        return await self._tx("list_tags", run, write=False)

    async def delete_tag(
        self, owner: str, tag: str, now: datetime | None = None, audit: AuditEvent | None = None
    ) -> bool:
        def run(conn: Connection) -> bool:
            conn.execute(
                delete(file_tags).where(file_tags.c.owner == owner, file_tags.c.tag == tag)
            )
            result = conn.execute(delete(tags).where(tags.c.owner == owner, tags.c.name == tag))
            return bool(result.rowcount)

        def events(deleted: bool) -> list[AuditEvent]:
            return [audit] if audit is not None and deleted else []

        return await self._audited_tx("delete_tag", run, events, now or datetime.now(UTC))

    async def tag_file(
        self,
        owner: str,
        file_id: str,
        tag: str,
        now: datetime,
        *,
        add: bool,
        max_tags: int,
        audit: AuditEvent | None = None,
    ) -> FileRecord | None:
        def run(conn: Connection) -> FileRecord | None:
            created = _lock_file(conn, owner, file_id, files.c.created)
            if created is None:
                return None
            if add:
                carried = _tags_of(conn, owner, [file_id])[file_id]
                if tag not in carried and len(carried) >= max_tags:
                    raise TooLarge(f"a file carries at most {max_tags} tags")
                self._attach(conn, owner, file_id, created, tag, now)
            else:
                conn.execute(
                    delete(file_tags).where(
                        file_tags.c.owner == owner,
                        file_tags.c.file_id == file_id,
                        file_tags.c.tag == tag,
                    )
                )
            return _get(conn, owner, file_id)

        return await self._audited_tx("tag_file", run, _event_for(audit), now)

    # ---------------------------------------------------------------- maintenance

    async def doomed(self, now: datetime, limit: int) -> list[str]:
        stmt = (
            select(doomed_objects.c.object_key)
            .where(doomed_objects.c.not_before <= literal(now, UtcDateTime()))
            .order_by(doomed_objects.c.not_before, doomed_objects.c.object_key)
            .limit(limit)
        )

        def run(conn: Connection) -> list[str]:
            return list((conn.execute(stmt)).scalars())

        return await self._tx("doomed", run, write=False)

    async def forget(self, keys: Sequence[str]) -> None:
        if not keys:
            return

        def run(conn: Connection) -> None:
            conn.execute(delete(doomed_objects).where(doomed_objects.c.object_key.in_(list(keys))))

        await self._tx("forget", run)

    async def postpone(self, keys: Sequence[str], until: datetime) -> None:
        if not keys:
            return

        def run(conn: Connection) -> None:
            conn.execute(
                update(doomed_objects)
                .where(doomed_objects.c.object_key.in_(list(keys)))
                .values(not_before=until)
            )

        await self._tx("postpone", run)

    async def lose(self, sha256: str, key: str) -> None:
        def run(conn: Connection) -> None:
            conn.execute(
                update(contents)
                .where(contents.c.sha256 == sha256, contents.c.object_key == key)
                .values(object_key=None)
            )

        await self._tx("lose", run)

    async def ping(self) -> None:
        def run(conn: Connection) -> None:
            conn.execute(select(literal(1)))

        await self._tx("ping", run, write=False)

    async def close(self) -> None:
        await self._runner.close()


def _event_for(
    audit: AuditEvent | None,
) -> Callable[[FileRecord | None], list[AuditEvent]]:
    """The audit row of a change to one record, completed with what the record holds."""

    def events(record: FileRecord | None) -> list[AuditEvent]:
        if audit is None or record is None:
            return []
        return [audit.but(file_id=record.id, sha256=record.content.sha256)]

    return events


def _find_clean(conn: Connection, sha256: str) -> Content | None:
    row = conn.execute(_FIND_CLEAN, {"sha256": sha256}).first()
    return None if row is None else _content(row._mapping)


def _lock_file(conn: Connection, owner: str, file_id: str, column: Column[Any]) -> Any:
    """Lock the owner's file row (always before any content row: one lock order) and
    read one of its columns; None when there is no such file."""
    return conn.execute(
        select(column).where(files.c.owner == owner, files.c.id == file_id).with_for_update()
    ).scalar()


def _lock_content(conn: Connection, sha256: str) -> Row[Any] | None:
    return conn.execute(_LOCK_CONTENT, {"sha256": sha256}).first()


def _same_record(
    conn: Connection, owner: str, content: Content, name: str | None, content_type: str
) -> str | None:
    """The owner's record of the same bytes, name and type (a retried upload)."""
    found = conn.execute(
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
    return found.scalar()


def _tags_of(conn: Connection, owner: str, ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {i: [] for i in ids}
    if not ids:
        return found
    rows = conn.execute(
        select(file_tags.c.file_id, file_tags.c.tag)
        .where(file_tags.c.owner == owner, file_tags.c.file_id.in_(ids))
        .order_by(file_tags.c.tag)
    )
    for file_id, tag in rows:
        found[file_id].append(tag)
    return found


def _get(conn: Connection, owner: str, file_id: str) -> FileRecord | None:
    row = conn.execute(_GET, {"owner": owner, "id": file_id}).first()
    if row is None:
        return None
    return _record(row._mapping, _tags_of(conn, owner, [file_id])[file_id])


def _is_conflict(exc: BaseException) -> bool:
    """PostgreSQL's deadlock and serialization failures: a retry decides them."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate in ("40001", "40P01")


def _first_line(exc: BaseException) -> str:
    """What a failure says, for the log. Errors about the data (a value out of range, a
    constraint) can quote the values, which may be patient data: only their kind and
    SQLSTATE are kept; connection and server errors keep their first line."""
    orig = getattr(exc, "orig", None)
    about_data = isinstance(exc, DataError | IntegrityError | ProgrammingError) or (
        isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
    )
    if about_data:
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return f"{type(orig or exc).__name__} (SQLSTATE {sqlstate or 'unknown'})"
    text = str(orig or exc)
    return text.splitlines()[0] if text else type(exc).__name__
