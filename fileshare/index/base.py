"""The file index: records (owner, name, type, content) by opaque id."""

from __future__ import annotations

from typing import Protocol

from fileshare.models import FileRecord


class IndexError_(Exception):
    """The index could not be reached or answered an error. Fail closed."""


class FileIndex(Protocol):
    async def add(self, record: FileRecord) -> None:
        """Store a new record."""

    async def get(self, file_id: str) -> FileRecord | None:
        """The record with that id, whoever owns it (callers check ownership)."""

    async def find_same(
        self, owner: str, sha256: str, name: str | None, content_type: str
    ) -> FileRecord | None:
        """An existing record of this owner for the same bytes, name and type: a retried
        upload answers with it instead of creating a duplicate record."""

    async def ping(self) -> None:
        """Raise ``IndexError_`` unless the index answers."""

    async def close(self) -> None: ...
