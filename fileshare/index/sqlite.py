"""The embedded index: SQLite, driven from one dedicated thread so the event loop never
blocks on it and the connection stays on the thread that made it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from fileshare.index.base import IndexError_
from fileshare.models import FileRecord

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    sha1         BLOB NOT NULL,
    size         INTEGER NOT NULL,
    created      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_owner_sha256 ON files (owner, sha256);
"""
_INSERT = (
    "INSERT INTO files (id, owner, name, content_type, sha256, sha1, size, created) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT id, owner, name, content_type, sha256, sha1, size, created FROM files"


def _row(row: tuple[object, ...]) -> FileRecord:
    id_, owner, name, content_type, sha256, sha1, size, created = row
    return FileRecord(
        id=str(id_),
        owner=str(owner),
        name=None if name is None else str(name),
        content_type=str(content_type),
        sha256=str(sha256),
        sha1=bytes(sha1),  # type: ignore[call-overload]
        size=int(size),  # type: ignore[call-overload]
        created=datetime.fromisoformat(str(created)),
    )


class SqliteIndex:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-index")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._path, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                self._conn = conn
            return fn(self._conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise IndexError_(f"sqlite index: {exc}") from None

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def add(self, record: FileRecord) -> None:
        values = (
            record.id,
            record.owner,
            record.name,
            record.content_type,
            record.sha256,
            record.sha1,
            record.size,
            record.created.isoformat(),
        )
        await self._run(lambda c: c.execute(_INSERT, values))

    async def get(self, file_id: str) -> FileRecord | None:
        row = await self._run(lambda c: c.execute(_SELECT + " WHERE id = ?", (file_id,)).fetchone())
        return None if row is None else _row(row)

    async def find_same(
        self, owner: str, sha256: str, name: str | None, content_type: str
    ) -> FileRecord | None:
        row = await self._run(
            lambda c: c.execute(
                _SELECT + " WHERE owner = ? AND sha256 = ? AND name IS ? AND content_type = ?"
                " ORDER BY created LIMIT 1",
                (owner, sha256, name, content_type),
            ).fetchone()
        )
        return None if row is None else _row(row)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run(shut)
        self._executor.shutdown(wait=True)
