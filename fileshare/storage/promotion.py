"""Promotion, the last step of an upload: make the scanned bytes permanent, or throw them
away. Built on the ``Storage`` contract, so every backend promotes the same way.

Two shapes, chosen by what the writer still holds once the body has ended:

* everything still in memory (a body smaller than one part): nothing is staged; a clean
  verdict PUTs the bytes straight to the permanent key;
* otherwise the staging object is completed and a server-side copy into an invisible
  target starts at once, inside the scan window; a clean verdict makes it visible.
"""

from __future__ import annotations

from dataclasses import dataclass

from fileshare.storage.base import ObjectInfo, PendingCopy, Storage, Writer


@dataclass(frozen=True)
class Location:
    bucket: str
    key: str


class Promotion:
    """One upload's promotion, from ``prepare`` (while the verdict is awaited) to
    ``commit`` (clean) or ``abort`` (anything else)."""

    def __init__(
        self,
        storage: Storage,
        writer: Writer | None,
        *,
        staged_version: str | None = None,
        staging: Location,
        target: Location,
        size: int,
        content_type: str,
        metadata: dict[str, str],
    ) -> None:
        self._storage = storage
        #: None: the bytes were staged by someone else (a presigned upload) under
        #: ``staged_version``; they are copied from there, and the staging object stays
        #: the caller's to delete.
        self._writer = writer
        self._staged_version = staged_version
        self.staging = staging
        self.target = target
        self._size = size
        self._content_type = content_type
        self._metadata = metadata
        self._buffered: bytes | None = None
        self._copy: PendingCopy | None = None
        #: The staging object may exist: the caller deletes it once the upload is over.
        #: Set before the staging write is completed, since a completion whose answer was
        #: lost may still have made the object.
        self.staged = False

    async def prepare(self) -> None:
        """Everything that can happen before the verdict. Raises ``StorageError``."""
        if self._writer is None:
            version = self._staged_version
        else:
            self._buffered = self._writer.buffered()
            if self._buffered is not None:
                return
            self.staged = True
            version = (await self._writer.commit()).version
        self._copy = await self._storage.begin_copy(
            self.staging.bucket,
            self.staging.key,
            self.target.bucket,
            self.target.key,
            size=self._size,
            content_type=self._content_type,
            metadata=self._metadata,
            # Only the bytes written (and scanned) may be promoted.
            src_version=version,
        )

    async def commit(self) -> ObjectInfo:
        """Make the bytes visible under the target key. Raises ``StorageError``."""
        if self._buffered is not None:
            return await self._storage.put(
                self.target.bucket,
                self.target.key,
                self._buffered,
                content_type=self._content_type,
                metadata=self._metadata,
                if_absent=True,
            )
        assert self._copy is not None, "prepare() first"
        info = await self._copy.commit()
        self._copy = None  # a failed commit is still aborted by abort()
        return info

    async def abort(self) -> None:
        """Throw away the prepared target. Idempotent, never raises."""
        self._buffered = None
        if self._copy is not None:
            copy, self._copy = self._copy, None
            await copy.abort()
