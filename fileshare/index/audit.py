"""The audit trail in the index: append-only rows, each hash-chained to the one before.

``append`` runs inside the caller's transaction, so an upload's record and its audit row
commit together or not at all. The chain's head is one locked row: appends are ordered
(across every replica sharing the database), and each row's ``hash`` is SHA-256 over its
own fields and the previous row's hash, so an edited, deleted, inserted or re-ordered row
is found by ``verify``.

What is hashed is exactly what the databases give back: every value is put in its
canonical form *before* it is written (times in UTC at microseconds, strings within their
column's length, ``detail`` as plain JSON values), and the hash is taken over a canonical
JSON text of them (sorted keys, ASCII only, integral numbers written as integers). A row
therefore hashes the same after a round trip through SQLite or PostgreSQL, whatever the
database does to JSON key order or to ``1.0`` versus ``1``.

The chain proves that nobody changed the trail *without rewriting the rest of it*: the hash
has no key, so whoever can write the tables can also recompute every later row and the head.
Keeping copies of the head's hash outside the database (a log shipped elsewhere, a ticket)
catches that too: a rewritten chain no longer passes through them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    Connection,
    Dialect,
    RowMapping,
    String,
    bindparam,
    func,
    insert,
    select,
    update,
)

from fileshare.audit import Action, AuditEvent, AuditRecord, Result
from fileshare.index import outbox
from fileshare.index.base import Transactor
from fileshare.index.tables import audit_events, audit_head

T = TypeVar("T")

log = structlog.get_logger("fileshare.audit")

GENESIS = "0" * 64
#: The version of the canonical form below; hashed into every row, so that a later form
#: can be told apart from (and verified beside) this one.
HASH_VERSION = 1
_FIELDS = (
    "action",
    "result",
    "subject",
    "client",
    "role",
    "source",
    "owner",
    "file_id",
    "sha256",
    "request_id",
)


def _column_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for name in _FIELDS:
        kind = audit_events.c[name].type
        if isinstance(kind, String) and kind.length:
            lengths[name] = kind.length
    return lengths


#: PostgreSQL refuses a longer value (SQLite keeps it): an audit row must never fail, nor
#: differ between the two, because a client sent a long subject.
_LENGTHS = _column_lengths()


def _clip(value: str, length: int) -> str:
    """``value`` if it fits, else its start and a digest of the whole (two long values
    that share a start stay distinct)."""
    if len(value) <= length:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{value[: length - 17]}~{digest}"


def utc(at: datetime) -> datetime:
    """A time as the index gives it back: aware, UTC (naive times are taken as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _iso(at: datetime) -> str:
    return utc(at).isoformat(timespec="microseconds")


def plain(value: Any, where: str = "detail") -> Any:
    """``value`` as the JSON values a database gives back: dicts with string keys, lists,
    strings (enums as their value, times as RFC 3339 UTC), booleans, ints, finite floats,
    None. Anything else is a bug of the caller: TypeError, before anything is written."""
    if isinstance(value, enum.Enum):
        return plain(value.value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"audit {where}: {value!r} is not a JSON number")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime):
        return utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit {where}: key {key!r} is not a string")
            out[str(key)] = plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [plain(item, where) for item in value]
    raise TypeError(f"audit {where}: a {type(value).__name__} is not a JSON value")


def _hashable(value: Any) -> Any:
    """``value`` with integral floats as ints: ``1.0`` and ``1`` are one number to JSON, and a
    database (PostgreSQL's jsonb, say) may give back either."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _hashable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hashable(v) for v in value]
    return value


def chain_hash(seq: int, at: datetime, values: Mapping[str, Any], prev_hash: str) -> str:
    """The row's hash: SHA-256 over a canonical JSON text of everything the row says and
    the previous row's hash. ``values`` as stored (``canonical``) or as read back."""
    body: dict[str, Any] = {"v": HASH_VERSION, "seq": seq, "at": _iso(at), "prev": prev_hash}
    body.update({k: values.get(k) for k in _FIELDS})
    body["detail"] = _hashable(values.get("detail") or {})
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def canonical(event: AuditEvent) -> dict[str, Any]:
    """The column values of ``event``, exactly as the index will give them back."""
    values: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(event, name)
        if value is not None:
            value = str(value)  # enums, and str subclasses, as plain text
            if name in _LENGTHS:
                value = _clip(value, _LENGTHS[name])
        values[name] = value
    values["detail"] = plain(dict(event.detail))
    return values


#: The statements of an append, built once: building an expression costs SQLAlchemy more
#: than running it, and every audited transaction runs these.
_LOCK_HEAD = (
    select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
)
_INSERT_ROW = insert(audit_events)
_ROW_KEYS = [c.name for c in audit_events.columns]
_MOVE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)


class _SqliteAppend:
    """The three statements on SQLite, compiled once by SQLAlchemy (its SQL, its
    conversions of times and JSON) and run straight on the driver, inside the transaction
    the driver holds: SQLAlchemy's execution machinery costs more than SQLite itself, on
    the index's thread, while the event loop wants the GIL (``index.sql`` does the same for
    the upload path's other statements). SQLite has one writer at a time anyway: the write
    lock the transaction began with is the head's lock."""

    def __init__(self, dialect: Dialect) -> None:
        from fileshare.index.sql import _DriverStatement  # index.sql imports this module

        self.lock_sql = str(_LOCK_HEAD.compile(dialect=dialect))
        self.insert = _DriverStatement(_INSERT_ROW, dialect, _ROW_KEYS)
        self.move = _DriverStatement(_MOVE_HEAD, dialect)


_sqlite: weakref.WeakKeyDictionary[Dialect, _SqliteAppend] = weakref.WeakKeyDictionary()


def _chain(
    prepared: Sequence[dict[str, Any]], at: datetime, seq: int, prev: str
) -> list[dict[str, Any]]:
    """The rows of ``prepared`` numbered from ``seq + 1`` on, each hashed over the one before."""
    rows: list[dict[str, Any]] = []
    for values in prepared:
        seq += 1
        digest = chain_hash(seq, at, values, prev)
        rows.append({**values, "seq": seq, "at": at, "prev_hash": prev, "hash": digest})
        prev = digest
    return rows


def append(conn: Connection, events: Sequence[AuditEvent], now: datetime) -> list[int]:
    """Append ``events`` to the chain within ``conn``'s transaction (a write transaction);
    their ``seq``s.

    Call it last in a transaction: the head row stays locked until commit, and every
    audited transaction queues on it for that long.

    The events that are webhook messages are put in the outbox here too (``outbox``):
    every audited change passes through, so none can be recorded and not reported."""
    if not events:
        return []
    at = utc(now)
    # Before the lock: a detail that is not JSON fails here, holding nothing; and who is
    # to hear of these events is read here, not while every audited transaction waits.
    prepared = [canonical(e) for e in events]
    planned = outbox.plan(conn, events)
    if conn.dialect.name == "sqlite":
        fast = _sqlite.get(conn.dialect)
        if fast is None:
            fast = _sqlite[conn.dialect] = _SqliteAppend(conn.dialect)
        driver: Any = conn.connection.dbapi_connection
        seq, prev = driver.execute(fast.lock_sql, (1,)).fetchone()
        rows = _chain(prepared, at, int(seq), str(prev))
        for row in rows:
            fast.insert.run(conn, row)
        fast.move.run(conn, {"head_seq": rows[-1]["seq"], "head_hash": rows[-1]["hash"]})
    else:
        head = conn.execute(_LOCK_HEAD).one()
        rows = _chain(prepared, at, int(head.seq), str(head.hash))
        conn.execute(_INSERT_ROW, rows)
        conn.execute(_MOVE_HEAD, {"head_seq": rows[-1]["seq"], "head_hash": rows[-1]["hash"]})
    seqs = [r["seq"] for r in rows]
    outbox.write(conn, planned, events, seqs, at)
    return seqs


#: The details a log line may repeat: codes, counts, states and the ids of files, clients,
#: keys and tokens. Not the subjects and owners of filters and grants (people, patients):
#: those stay in the trail. A key not listed here is left out of the log, so that a detail
#: added later is kept out until someone decides it may go in.
LOGGED_DETAIL = frozenset(
    {
        "access",
        "action",
        "before",
        "client_id",
        "code",
        "content_removed",
        "count",
        "created",
        "error",
        "format",
        "jti",
        "key_id",
        "message_id",
        "method",
        "reason",
        "role",
        "route",
        "rows",
        "scanner",
        "scope",
        "scopes",
        "signature",
        "since",
        "state",
        "status",
        "trigger",
        "until",
        "upload_id",
        "webhook_id",
        "write",
    }
)


def logged(events: Sequence[AuditEvent]) -> None:
    """The structlog side of the trail: one named event per row, ids and codes only. The
    row's subject and owner are not repeated (a token's subject is often a person, an owner
    a patient); the request's log context names its client, and ``request_id`` leads to the
    row itself."""
    for e in events:
        log.info(
            str(e.action),
            audit=True,
            result=str(e.result),
            role=e.role,
            file_id=e.file_id,
            sha256=e.sha256,
            **{f"detail_{k}": v for k, v in e.detail.items() if k in LOGGED_DETAIL},
        )


async def audited(
    db: Transactor,
    action: str,
    fn: Callable[[Connection], T],
    event: AuditEvent | None,
    now: datetime,
) -> T:
    """Run ``fn`` and append ``event`` in the same write transaction — unless ``fn`` answered
    ``False`` (nothing was there to change): a no-op is no ``success`` row. The row is
    logged once the transaction committed."""
    wrote: list[AuditEvent] = []

    def run(conn: Connection) -> T:
        wrote.clear()  # a retried transaction starts over: one row, not one per attempt
        result = fn(conn)
        if event is not None and result is not False:
            wrote.append(event)
            append(conn, wrote, now)
        return result

    result = await db.transact(action, run, write=True)
    logged(wrote)
    return result


def _record(m: RowMapping) -> AuditRecord:
    event = AuditEvent(
        action=Action(m["action"]),
        result=Result(m["result"]),
        subject=m["subject"],
        client=m["client"],
        role=m["role"],
        source=m["source"],
        owner=m["owner"],
        file_id=m["file_id"],
        sha256=m["sha256"],
        request_id=m["request_id"],
        detail=dict(m["detail"] or {}),
    )
    return AuditRecord(
        seq=int(m["seq"]), at=utc(m["at"]), event=event, prev_hash=m["prev_hash"], hash=m["hash"]
    )


@dataclass(frozen=True)
class AuditQuery:
    """A page of the trail, newest first. Every filter narrows; none is required."""

    #: ``at >= since`` (inclusive) and ``at < until`` (exclusive).
    since: datetime | None = None
    until: datetime | None = None
    subject: str | None = None
    owner: str | None = None
    file_id: str | None = None
    action: str | None = None
    #: Keyset paging, newest first: rows with ``seq`` below this.
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True)
class Broken:
    """Where ``verify`` found the chain broken (the first row that is missing, changed,
    out of place or unknown to the head), and how."""

    seq: int
    reason: str


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    #: The highest ``seq`` in the table, read in the same statement (one snapshot).
    last: int


class AuditStore:
    """Appends (outside a change of the file index) and reads of the audit trail."""

    def __init__(self, db: Transactor) -> None:
        self._db = db

    async def record(self, *events: AuditEvent, now: datetime | None = None) -> list[int]:
        """Append ``events`` in a transaction of their own (reads, refusals, tokens); their
        ``seq``s."""
        when = now or datetime.now(UTC)
        seqs = await self._db.transact("audit", lambda c: append(c, events, when), write=True)
        logged(events)
        return seqs

    async def query(self, q: AuditQuery) -> list[AuditRecord]:
        t = audit_events.c
        stmt = select(audit_events)
        if q.since is not None:
            stmt = stmt.where(t.at >= utc(q.since))
        if q.until is not None:
            stmt = stmt.where(t.at < utc(q.until))
        # Compared as stored: a long value was clipped on the way in, and so is its filter.
        if q.subject is not None:
            stmt = stmt.where(t.subject == _clip(q.subject, _LENGTHS["subject"]))
        if q.owner is not None:
            stmt = stmt.where(t.owner == _clip(q.owner, _LENGTHS["owner"]))
        if q.file_id is not None:
            stmt = stmt.where(t.file_id == _clip(q.file_id, _LENGTHS["file_id"]))
        if q.action is not None:
            stmt = stmt.where(t.action == q.action)
        if q.before is not None:
            stmt = stmt.where(t.seq < q.before)
        stmt = stmt.order_by(t.seq.desc()).limit(q.limit)

        def run(conn: Connection) -> list[AuditRecord]:
            return [_record(m) for m in conn.execute(stmt).mappings()]

        return await self._db.transact("audit query", run, write=False)

    async def _head(self) -> _Head:
        # One statement: PostgreSQL reads it from one snapshot even at READ COMMITTED, so a
        # row appended meanwhile is never mistaken for one written past the head.
        last = select(func.coalesce(func.max(audit_events.c.seq), 0)).scalar_subquery()
        stmt = select(audit_head.c.seq, audit_head.c.hash, last.label("last")).where(
            audit_head.c.id == 1
        )

        def run(conn: Connection) -> _Head:
            m = conn.execute(stmt).mappings().one()
            return _Head(seq=int(m["seq"]), hash=str(m["hash"]), last=int(m["last"]))

        return await self._db.transact("audit verify", run, write=False)

    async def verify(self, batch: int = 5000) -> tuple[int, Broken | None]:
        """Walk the chain from its start to the head: how many rows were checked, and the
        first break, or None.

        Breaks, each at the first row it concerns: a row that does not hold its own hash
        (a field was changed), one that does not link to the row before (one was inserted
        or moved before it), a missing ``seq`` (a row was deleted), a head that names rows
        that are not there (the last rows were deleted), a row beyond the head (one was
        added outside ``append``). Rows appended while it runs are left for the next run:
        the walk ends at the head it read first."""
        head = await self._head()
        if head.last > head.seq:
            # Found before the walk: a walk that stops at the head would never see it.
            at = head.seq + 1
            return 0, Broken(at, f"row {at} is beyond the chain's head (row {head.seq})")
        checked = 0
        prev, expected = GENESIS, 1
        while expected <= head.seq:
            after, until = expected - 1, head.seq

            def page(conn: Connection, after: int = after, until: int = until) -> list[RowMapping]:
                t = audit_events.c
                stmt = (
                    select(audit_events)
                    .where(t.seq > after, t.seq <= until)
                    .order_by(t.seq)
                    .limit(batch)
                )
                return list(conn.execute(stmt).mappings())

            rows = await self._db.transact("audit verify", page, write=False)
            if not rows:
                break
            for m in rows:
                seq = int(m["seq"])
                if seq != expected:
                    return checked, Broken(expected, f"row {expected} is missing")
                if m["prev_hash"] != prev:
                    return checked, Broken(seq, "it does not link to the row before it")
                values = {k: m[k] for k in _FIELDS}
                values["detail"] = m["detail"]
                if chain_hash(seq, m["at"], values, prev) != m["hash"]:
                    return checked, Broken(seq, "it was changed after it was written")
                prev = m["hash"]
                expected += 1
                checked += 1
        if expected <= head.seq:
            return checked, Broken(
                expected, f"row {expected} is missing (the chain's head names row {head.seq})"
            )
        if head.hash != prev:
            return checked, Broken(head.seq, "the chain's head does not name this row's hash")
        return checked, None
