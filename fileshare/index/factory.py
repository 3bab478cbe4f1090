"""Build the configured file index (the only place that knows all of them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileshare.config import Settings
from fileshare.index.base import FileIndex

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@asynccontextmanager
async def open_index(settings: Settings) -> AsyncIterator[FileIndex]:
    """The opened index: PostgreSQL when ``settings.index_url`` names one (production, shared
    by every replica), else the embedded SQLite file at ``settings.sqlite_path``.

    Raises ``IndexError_`` when it cannot be opened; closes it on exit."""
    index: FileIndex
    url = settings.index_url
    if url is not None and url.lower().startswith(_POSTGRES_SCHEMES):
        from fileshare.index.postgres import PostgresIndex

        pg = PostgresIndex(url)
        await pg.open()
        index = pg
    else:
        from fileshare.index.sqlite import SqliteIndex

        sqlite = SqliteIndex(settings.sqlite_path)
        try:
            await sqlite.open()
        except BaseException:
            await sqlite.close()  # its worker thread
            raise
        index = sqlite
    try:
        yield index
    finally:
        await index.close()
