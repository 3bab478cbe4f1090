"""Promotion, the last step of an upload: make the scanned bytes permanent, or throw them
away. Built on the ``Storage`` contract, so every backend promotes the same way.

Every promotion has the same three steps: ``prepare`` inside the scan window, then
``commit`` on a clean verdict or ``abort`` on anything else. Two strategies
(``FILESHARE_PROMOTION``):

* ``CopyPromotion`` (``copy``, the design card's flow): the staging object in the
  unscanned bucket is completed and a server-side copy into an invisible target under the
  permanent key starts at once; a clean verdict makes it visible. Every byte is written
  twice, and the unscanned bucket holds an auditable trace with its own retention.
* ``SealedPromotion`` (``single-write``): the body was streamed into an upload the store
  keeps invisible under the permanent key (``Writer.seal``); a clean verdict completes it
  and no data moves. Every byte is written once.

A body smaller than one part never reaches the unscanned bucket in either. With
``seal_small`` its bytes go into a sealed write under the permanent key inside the scan
window, so that what follows the verdict is a completion, not the upload: quicker alone,
but two store requests more (S3: create and part, then complete, against one PutObject),
which a busy machine pays in throughput. Without it, a clean verdict is followed by one
write of the bytes to the permanent key. The pipeline chooses per upload (``pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fileshare.storage.base import ObjectInfo, PendingCopy, Storage, Writer


class Promotion(Protocol):
    #: The staging object may exist: the caller deletes it once the upload is over.
    staged: bool

    async def prepare(self) -> None:
        """Everything that can happen before the verdict. Raises ``StorageError``."""

    async def commit(self) -> ObjectInfo:
        """Make the bytes visible under the target key. Raises ``StorageError``."""

    async def abort(self) -> None:
        """Throw away the prepared target. Idempotent, never raises."""


@dataclass(frozen=True)
class Location:
    bucket: str
    key: str


class CopyPromotion:
    """The staging object, copied server-side into an invisible target."""

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
        seal_small: bool = True,
    ) -> None:
        self._storage = storage
        self._seal_small = seal_small
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
        self._small: SealedPromotion | None = None
        self._copy: PendingCopy | None = None
        #: The staging object may exist: the caller deletes it once the upload is over.
        #: Set before the staging write is completed, since a completion whose answer was
        #: lost may still have made the object.
        self.staged = False
        #: The version of the staging object this promotion completed (quarantine copies
        #: exactly those bytes).
        self.staged_version: str | None = None

    async def prepare(self) -> None:
        """Everything that can happen before the verdict. Raises ``StorageError``."""
        if self._writer is None:
            version = self._staged_version
        else:
            buffered = self._writer.buffered()
            if buffered is not None and not self._seal_small:
                self._buffered = buffered  # written by commit, in one request
                return
            if buffered is not None:
                # Nothing was staged: the bytes go under the target key now, sealed, so
                # that a clean verdict is followed by a completion, not by the upload.
                self._small = await sealed_small(
                    self._storage,
                    buffered,
                    self.target,
                    content_type=self._content_type,
                    metadata=self._metadata,
                )
                await self._small.prepare()
                return
            self.staged = True
            version = (await self._writer.commit()).version
            self.staged_version = version
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
        if self._small is not None:
            return await self._small.commit()
        assert self._copy is not None, "prepare() first"
        info = await self._copy.commit()
        self._copy = None  # a failed commit is still aborted by abort()
        return info

    async def abort(self) -> None:
        """Throw away the prepared target. Idempotent, never raises."""
        self._buffered = None
        if self._small is not None:
            small, self._small = self._small, None
            await small.abort()
        if self._copy is not None:
            copy, self._copy = self._copy, None
            await copy.abort()


class SealedPromotion:
    """A write already under the target key, sealed inside the scan window and completed
    on a clean verdict (single-write)."""

    staged = False

    def __init__(self, writer: Writer, *, seal_small: bool = True) -> None:
        self._writer = writer
        self._seal_small = seal_small

    async def prepare(self) -> None:
        if self._seal_small or self._writer.buffered() is None:
            await self._writer.seal()
        # else: a body still all in memory is written by commit, in one request.

    async def commit(self) -> ObjectInfo:
        return await self._writer.commit()

    async def abort(self) -> None:
        await self._writer.abort()


async def sealed_small(
    storage: Storage,
    data: bytes,
    target: Location,
    *,
    content_type: str,
    metadata: dict[str, str],
) -> SealedPromotion:
    """A body that is all in memory, as a sealed write under ``target`` (``prepare``
    sends it). Raises ``StorageError``."""
    writer = await storage.open_writer(
        target.bucket, target.key, content_type=content_type, metadata=metadata
    )
    try:
        await writer.write(data)
    except BaseException:
        await writer.abort()
        raise
    return SealedPromotion(writer)
