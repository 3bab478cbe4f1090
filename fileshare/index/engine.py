"""Opening the index: the engine for SQLite or PostgreSQL, and its schema migrated.

Migrations run at start-up, in one transaction that holds a lock: PostgreSQL's
transaction-scoped advisory lock (replicas starting together queue behind it, and the
second finds nothing left to do), SQLite's write lock (``BEGIN IMMEDIATE``). Running them
at start-up keeps the embedded default and a fresh deployment at zero steps; ``fileshare
migrate`` runs the same code on its own, for operators who upgrade the schema before they
roll out the replicas that need it.

DSNs carry passwords: no message, ``repr`` or log line made here ever shows one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Dialect, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from fileshare.index.base import IndexUnavailable
from fileshare.index.sql import CommitOutcomeUnknown, SqlIndex

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"
#: Held around migrations on PostgreSQL (a transaction-scoped advisory lock).
_MIGRATION_LOCK = 0x66696C6573686172  # "fileshar"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: At most this long for migrations (a lock wait included): a first-release index of
#: millions of records is copied in minutes.
MIGRATION_TIMEOUT = 3600.0


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


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_dsn(dsn: str) -> str:
    """The DSN with its password(s) replaced by ``***``: safe for logs and messages."""
    return _scrub(dsn, _secrets(dsn))


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


class PostgresRunner:
    """Transactions through the async engine: each one's function runs in SQLAlchemy's
    greenlet bridge (``run_sync``) over asyncpg, so the event loop never blocks."""

    dialect = "postgresql"

    def __init__(self, dsn: str, *, pool_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout

        async def connect() -> Any:
            # asyncpg parses the DSN itself (sslmode, passwords in the query...): what the
            # first release accepted keeps working.
            return await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)

        # No pre-ping (a round trip per transaction): a connection the server dropped is
        # invalidated by the failing statement, and SqlIndex runs that transaction again.
        self.engine: AsyncEngine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=connect,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout,
            # Every transaction ends in COMMIT or ROLLBACK already: the ROLLBACK the pool
            # sends when a connection comes back would be one more round trip each.
            pool_reset_on_return=None,
        )

    @property
    def sa_dialect(self) -> Dialect:
        return self.engine.dialect

    async def run(
        self, fn: Callable[[Connection], T], *, write: bool, autocommit: bool = False
    ) -> T:
        async with self.engine.connect() as conn:
            if autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await conn.run_sync(fn)
            await conn.begin()
            try:
                result = await conn.run_sync(fn)
            except BaseException:
                await conn.rollback()
                raise
            try:
                await conn.commit()
            except (SQLAlchemyError, OSError) as exc:
                # The server may have committed before the answer was lost: never retried.
                raise CommitOutcomeUnknown() from exc
            return result

    async def migrate(self) -> None:
        # A connection of its own, without the per-statement timeout of the pool's: waiting
        # for the lock while another replica migrates, or copying a large first-release
        # table, takes longer than any query should.
        async def connect() -> Any:
            return await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=None)

        engine = create_async_engine(
            "postgresql+asyncpg://", async_creator=connect, poolclass=NullPool
        )
        try:
            async with asyncio.timeout(MIGRATION_TIMEOUT), engine.begin() as conn:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
                await conn.run_sync(_upgrade)
        finally:
            await engine.dispose()

    async def close(self) -> None:
        await self.engine.dispose()


class SqliteRunner:
    """Transactions on one thread of their own, with the plain sqlite3 driver: one hop
    off the event loop per transaction (not per statement), one connection (SQLite has one
    writer at a time anyway, and one connection never waits on a lock another connection
    of this process holds).

    Writers start with ``BEGIN IMMEDIATE``: they take the file's write lock at once, so two
    processes sharing the file queue on ``busy_timeout`` instead of deadlocking on a lock
    upgrade; readers start a plain (deferred) ``BEGIN``."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, timeout: float) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-index")
        #: The one connection, kept open on the index's thread between transactions
        #: (a checkout per transaction would cost a pool round and a reset ROLLBACK).
        self._conn: Connection | None = None
        self.engine: Engine = create_engine(
            f"sqlite:///{path}",
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout,
            pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK
            connect_args={"check_same_thread": False, "timeout": timeout},
        )

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling is off: _call starts them.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "journal_mode=WAL",
                "synchronous=NORMAL",
                "foreign_keys=ON",
                f"busy_timeout={int(timeout * 1000)}",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

    @property
    def sa_dialect(self) -> Dialect:
        return self.engine.dialect

    def _call(self, fn: Callable[[Connection], T], write: bool, autocommit: bool) -> T:
        """The transaction is the driver's, begun and ended here; SQLAlchemy's own (begun
        by its first statement, a no-op for this driver) only follows it. A transaction
        made of the upload path's driver statements thus costs no SQLAlchemy machinery.
        The driver's own errors are wrapped as SQLAlchemy would have (so they are index
        failures, not crashes)."""
        try:
            conn = self._conn
            if conn is None or conn.closed or conn.invalidated:
                conn = self._conn = self.engine.connect()
            driver: Any = conn.connection.dbapi_connection
            if driver.in_transaction:  # a COMMIT that failed left one open
                driver.rollback()
            if not autocommit:
                driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn)
            except BaseException:
                if conn.in_transaction():
                    conn.rollback()
                elif driver.in_transaction:
                    driver.rollback()
                raise
        except sqlite3.Error as exc:
            raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
        try:
            if conn.in_transaction():
                conn.commit()
            elif driver.in_transaction:
                driver.commit()
        except (sqlite3.Error, SQLAlchemyError) as exc:
            raise CommitOutcomeUnknown() from exc
        return result

    def _dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()

    async def run(
        self, fn: Callable[[Connection], T], *, write: bool, autocommit: bool = False
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, fn, write, autocommit)

    async def migrate(self) -> None:
        def upgrade(conn: Connection) -> None:
            # A transaction SQLAlchemy knows of, so that Alembic runs every migration
            # inside it (it commits one it began itself after the first migration): the
            # whole upgrade is one transaction, under the write lock, or nothing.
            conn.begin()
            _upgrade(conn)

        await self.run(upgrade, write=True)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._dispose)
        self._thread.shutdown(wait=True)


async def open_sql_index(
    *,
    url: str | None,
    sqlite_path: Path,
    query_timeout: float = 10.0,
    pool_size: int = 10,
    migrate: bool = True,
) -> SqlIndex:
    """The index at ``url`` (PostgreSQL) or in the SQLite file, migrated to the current
    schema; every query is bounded by ``query_timeout`` seconds. Raises
    ``IndexUnavailable`` (without the password) when it cannot be opened."""
    timeout = query_timeout
    runner: PostgresRunner | SqliteRunner
    if url is not None and url.lower().startswith(POSTGRES_SCHEMES):
        secrets = _secrets(url)
        name = f"postgres ({redact_dsn(url)})"
        runner = PostgresRunner(url, pool_size=pool_size, timeout=timeout)
    else:
        secrets = []
        name = f"sqlite ({sqlite_path})"
        try:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexUnavailable(f"{name} index: {exc.strerror}") from None
        runner = SqliteRunner(sqlite_path, timeout=timeout)
    index = SqlIndex(runner, timeout=timeout, name=name, scrub=lambda s: _scrub(s, secrets))
    try:
        if migrate:
            await runner.migrate()
        else:
            await index.ping()
    except (SQLAlchemyError, OSError, TimeoutError, ValueError) as exc:
        await runner.close()
        detail = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else exc
        message = f"{name} index: connect and migrate failed: {type(exc).__name__}: {detail}"
        raise IndexUnavailable(_scrub(str(message).splitlines()[0], secrets)) from None
    except BaseException:
        await runner.close()
        raise
    return index
