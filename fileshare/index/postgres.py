"""The production index: PostgreSQL through an asyncpg connection pool.

Every replica shares it, and nothing is written to the (read-only) root file system.
Records are the same as in the SQLite index; sha1 is ``bytea``, ``created`` a
``timestamptz`` (naive datetimes are taken as UTC, not as the server's local time).

DSNs carry passwords: no error message, ``repr`` or log line here ever shows one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TypeAlias, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from fileshare.index.base import IndexError_
from fileshare.models import FileRecord

T = TypeVar("T")
#: What ``Pool.acquire()`` yields (generic only in asyncpg-stubs: a string at run time).
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

#: A transaction-scoped advisory lock around the schema: replicas starting together would
#: otherwise race inside CREATE TABLE IF NOT EXISTS (a unique violation on pg_type).
_SCHEMA_LOCK = 0x66696C6573686172  # "fileshar"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    name         text,
    content_type text NOT NULL,
    sha256       text NOT NULL,
    sha1         bytea NOT NULL,
    size         bigint NOT NULL,
    created      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS files_owner_sha256 ON files (owner, sha256);
"""
_INSERT = (
    "INSERT INTO files (id, owner, name, content_type, sha256, sha1, size, created) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_SELECT = "SELECT id, owner, name, content_type, sha256, sha1, size, created FROM files"
_FIND_SAME = (
    _SELECT + " WHERE owner = $1 AND sha256 = $2 AND name IS NOT DISTINCT FROM $3"
    " AND content_type = $4 ORDER BY created, id LIMIT 1"
)

#: What asyncpg and the network raise; all become ``IndexError_``. ValueError covers a DSN
#: asyncpg cannot parse (its message may quote the DSN: it is scrubbed like every other).
_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    ValueError,
)


def _row(row: asyncpg.Record) -> FileRecord:
    return FileRecord(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        content_type=row["content_type"],
        sha256=row["sha256"],
        sha1=bytes(row["sha1"]),
        size=row["size"],
        created=row["created"],
    )


def _secrets(dsn: str) -> list[str]:
    """The passwords a DSN carries (in its user info or as ``?password=``), as written and
    percent-decoded, longest first."""
    found: set[str] = set()
    try:
        parts = urlsplit(dsn)
        netloc_password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # unparseable: hide everything after the scheme
        return [dsn.partition("://")[2] or dsn]
    if netloc_password:
        found.update({netloc_password, unquote(netloc_password)})
    found.update(value for key, value in query if key == "password" and value)
    raw_query = parts.query.split("&")
    found.update(item.partition("=")[2] for item in raw_query if item.startswith("password="))
    found.discard("")
    return sorted(found, key=len, reverse=True)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password(s) replaced by ``***``: safe for logs and messages."""
    return _scrub(dsn, _secrets(dsn))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class PostgresIndex:
    """``FileIndex`` on PostgreSQL. ``open()`` makes the pool and the schema (idempotent, safe
    for replicas starting at once); every call is bounded by ``timeout`` seconds, waiting for
    a pooled connection included."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._secrets = _secrets(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    def __repr__(self) -> str:
        return f"PostgresIndex({redact_dsn(self._dsn)!r})"

    def _error(self, action: str, exc: BaseException) -> IndexError_:
        """A neutral error whose text never contains the password."""
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self._timeout:g}s"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        message = f"postgres index ({redact_dsn(self._dsn)}): {action} failed: {detail}"
        return IndexError_(_scrub(message, self._secrets))

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,  # per connection attempt
                    command_timeout=self._timeout,
                )
        except _ERRORS as exc:
            raise self._error("connect", exc) from None
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(_SCHEMA)
        except _ERRORS as exc:
            pool.terminate()
            raise self._error("schema setup", exc) from None
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _run(self, action: str, fn: Callable[[Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise IndexError_("postgres index: not open")
        try:
            async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                return await fn(conn)
        except _ERRORS as exc:
            raise self._error(action, exc) from None

    async def add(self, record: FileRecord) -> None:
        created = record.created
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        values = (
            record.id,
            record.owner,
            record.name,
            record.content_type,
            record.sha256,
            record.sha1,
            record.size,
            created,
        )
        await self._run("add", lambda c: c.execute(_INSERT, *values))

    async def get(self, file_id: str) -> FileRecord | None:
        row = await self._run("get", lambda c: c.fetchrow(_SELECT + " WHERE id = $1", file_id))
        return None if row is None else _row(row)

    async def find_same(
        self, owner: str, sha256: str, name: str | None, content_type: str
    ) -> FileRecord | None:
        row = await self._run(
            "find_same", lambda c: c.fetchrow(_FIND_SAME, owner, sha256, name, content_type)
        )
        return None if row is None else _row(row)

    async def ping(self) -> None:
        await self._run("ping", lambda c: c.fetchval("SELECT 1"))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            # graceful: waits for connections in use to come back, but not forever
            await asyncio.wait_for(pool.close(), self._timeout)
        except _ERRORS:
            pool.terminate()  # hung or broken connections: nothing left to save
        except BaseException:
            pool.terminate()
            raise
