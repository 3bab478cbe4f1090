"""Build the configured file index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileshare.config import Settings
from fileshare.index.engine import open_sql_index
from fileshare.index.sql import SqlIndex


@asynccontextmanager
async def open_index(settings: Settings) -> AsyncIterator[SqlIndex]:
    """The opened and migrated index: PostgreSQL when ``settings.index_url`` names one
    (production, shared by every replica), else the embedded SQLite file at
    ``settings.sqlite_path``. Raises ``IndexUnavailable`` when it cannot be opened; closes
    it on exit."""
    index = await open_sql_index(url=settings.index_url, sqlite_path=settings.sqlite_path)
    try:
        yield index
    finally:
        await index.close()
